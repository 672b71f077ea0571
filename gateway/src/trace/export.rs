//! Span export: finished spans go into a bounded queue that one
//! background task (its own thread and runtime, apart from pingora's
//! workers) drains in batches to the collector over OTLP/HTTP with
//! protobuf bodies.
//!
//! The request path only ever appends to the queue: when the queue is
//! full the spans are dropped and counted
//! (`meshgate_trace_spans_dropped_total{reason="queue_full"}`), never
//! waited for. A collector that is down, slow or refusing costs the
//! exporter a timeout and a rate-limited warning, and the batch is
//! dropped and counted (`reason="export_failed"`); requests never notice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meshgate_config::TracingSpec;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::otlp::{Resource, SpanRecord, Value, export_request};

/// At most one warning about failed exports per this interval.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// How long connecting to the collector may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The spans of one finished request, and the settings of the snapshot
/// that request ran on.
struct Pending {
    spec: Arc<TracingSpec>,
    spans: Vec<SpanRecord>,
}

/// What the exporter task is sent.
enum Msg {
    /// A finished request's spans.
    Spans(Pending),
    /// Send everything waiting now, then say so (the shutdown drain).
    Flush(std::sync::mpsc::Sender<()>),
}

struct Queue {
    tx: mpsc::UnboundedSender<Msg>,
    /// Spans sent to the channel and not yet taken by the exporter; the
    /// channel is unbounded so that the cap can follow config reloads.
    queued: Arc<AtomicUsize>,
}

static QUEUE: OnceLock<Option<Queue>> = OnceLock::new();

/// The queue, with the exporter started on first use (a process that
/// never samples a span never starts it).
fn queue() -> Option<&'static Queue> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicUsize::new(0));
            match crate::server::spawn_runtime("trace-export", run(rx, queued.clone())) {
                Ok(()) => Some(Queue { tx, queued }),
                Err(e) => {
                    tracing::error!(error = %e, "span exporter unavailable; spans are dropped");
                    None
                }
            }
        })
        .as_ref()
}

/// Queues `spans` for export to `spec.otlp_endpoint`, or drops and
/// counts them when the queue is full. Never blocks.
pub(crate) fn submit(spec: &Arc<TracingSpec>, spans: Vec<SpanRecord>) {
    let n = spans.len();
    if n == 0 {
        return;
    }
    let Some(q) = queue() else {
        crate::metrics::trace_spans_dropped("queue_full", n);
        return;
    };
    let before = q.queued.fetch_add(n, Ordering::Relaxed);
    if before + n > spec.queue_capacity {
        q.queued.fetch_sub(n, Ordering::Relaxed);
        crate::metrics::trace_spans_dropped("queue_full", n);
        return;
    }
    let pending = Pending {
        spec: spec.clone(),
        spans,
    };
    if q.tx.send(Msg::Spans(pending)).is_err() {
        q.queued.fetch_sub(n, Ordering::Relaxed);
        crate::metrics::trace_spans_dropped("queue_full", n);
    }
}

/// Exports every span still waiting, for at most `limit`: the last call
/// before the process exits, so the spans of the final requests are not
/// lost. Returns at once when no span was ever queued.
pub(crate) fn flush(limit: Duration) {
    let Some(Some(q)) = QUEUE.get() else { return };
    let (done, wait) = std::sync::mpsc::channel();
    if q.tx.send(Msg::Flush(done)).is_ok() && wait.recv_timeout(limit).is_err() {
        tracing::warn!(?limit, "spans still unexported at exit");
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Msg>, queued: Arc<AtomicUsize>) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the span exporter's HTTP client");
            // Keep draining so the queue empties and drops are counted.
            while let Some(m) = rx.recv().await {
                match m {
                    Msg::Spans(p) => {
                        queued.fetch_sub(p.spans.len(), Ordering::Relaxed);
                        crate::metrics::trace_spans_dropped("export_failed", p.spans.len());
                    }
                    Msg::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
            return;
        }
    };
    let mut exporter = Exporter {
        client,
        batch: Vec::new(),
        warned_at: None,
        failures_since_warning: 0,
    };
    let mut due: Option<Instant> = None;
    loop {
        let next = match due {
            Some(at) => tokio::select! {
                p = rx.recv() => Some(p),
                _ = tokio::time::sleep_until(at) => None,
            },
            None => Some(rx.recv().await),
        };
        match next {
            // The oldest waiting span has waited flush_interval.
            None => {
                exporter.flush().await;
                due = None;
            }
            Some(None) => {
                exporter.flush().await;
                return;
            }
            Some(Some(Msg::Flush(done))) => {
                exporter.flush().await;
                due = None;
                let _ = done.send(());
            }
            Some(Some(Msg::Spans(p))) => {
                queued.fetch_sub(p.spans.len(), Ordering::Relaxed);
                let limit = p.spec.batch_size;
                if due.is_none() {
                    due = Some(Instant::now() + p.spec.flush_interval);
                }
                let spec = p.spec;
                exporter
                    .batch
                    .extend(p.spans.into_iter().map(|s| (spec.clone(), s)));
                if exporter.batch.len() >= limit {
                    exporter.flush().await;
                    due = None;
                }
            }
        }
    }
}

/// The HTTP client: rustls on ring (as the rest of the process), no proxy.
fn client() -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a bundled crypto provider; make ring the
    // process default unless something already chose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .no_proxy()
        .user_agent(concat!("meshgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

struct Exporter {
    client: reqwest::Client,
    batch: Vec<(Arc<TracingSpec>, SpanRecord)>,
    warned_at: Option<Instant>,
    failures_since_warning: u64,
}

impl Exporter {
    /// Sends everything waiting: one request per collector and service
    /// name (they change only with a reload), in chunks of `batch_size`.
    async fn flush(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        while let Some((spec, _)) = batch.first() {
            let spec = spec.clone();
            let name = super::service_name(&spec).to_owned();
            let (mine, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(s, _)| {
                s.otlp_endpoint == spec.otlp_endpoint && super::service_name(s) == name
            });
            batch = rest;
            let Some(endpoint) = spec.otlp_endpoint.clone() else {
                continue;
            };
            let resource = resource(&name);
            let spans: Vec<SpanRecord> = mine.into_iter().map(|(_, s)| s).collect();
            for chunk in spans.chunks(spec.batch_size.max(1)) {
                let body = export_request(&resource, chunk);
                self.send(&endpoint, &spec, body, chunk.len()).await;
            }
        }
    }

    async fn send(&mut self, endpoint: &str, spec: &TracingSpec, body: Vec<u8>, n: usize) {
        let result = self
            .client
            .post(endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .timeout(spec.export_timeout)
            .body(body)
            .send()
            .await;
        let problem = match result {
            Ok(r) if r.status().is_success() => {
                crate::metrics::trace_spans_exported(n);
                return;
            }
            Ok(r) => format!("the collector answered {}", r.status()),
            Err(e) => crate::error_chain(&e),
        };
        crate::metrics::trace_spans_dropped("export_failed", n);
        let now = Instant::now();
        if self
            .warned_at
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            tracing::warn!(
                endpoint,
                spans = n,
                earlier_failures = self.failures_since_warning,
                "span export failed: {problem}; the spans are dropped"
            );
            self.warned_at = Some(now);
            self.failures_since_warning = 0;
        } else {
            self.failures_since_warning += 1;
        }
    }
}

/// The resource every span of this process is reported under.
fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            ("service.name", Value::from(service_name)),
            ("meshgate.proxy", Value::from(super::process().role)),
            ("telemetry.sdk.name", Value::from("meshgate")),
            ("telemetry.sdk.language", Value::from("rust")),
            (
                "telemetry.sdk.version",
                Value::from(env!("CARGO_PKG_VERSION")),
            ),
        ],
    }
}
