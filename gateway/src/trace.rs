//! Distributed tracing for every proxy hop: the gateway's listeners, a
//! sidecar's outbound listener and its inbound mTLS side.
//!
//! Each request gets a [`Hop`] when its config snapshot is taken. The hop
//! continues the caller's trace (W3C `traceparent`, or B3 when there is no
//! `traceparent`) or starts one, and decides sampling: the caller's
//! decision when it made one, otherwise `sampling_ratio` applied to the
//! trace id (the same answer in every process for the same trace).
//!
//! A hop is one SERVER span for the request as received and one CLIENT
//! span per try upstream (retries are separate tries); the upstream
//! receives a `traceparent` whose parent is the current try's span, so
//! the next hop's SERVER span hangs under it. Trace context is propagated
//! whether or not anything is exported; spans are recorded only when the
//! hop is sampled and the config names an `otlp_endpoint`, and then leave
//! through the exporter's bounded queue ([`export`]).
//!
//! Not here: spans inside the application (it must copy `traceparent`
//! from its request onto the calls it makes), span events, links, and
//! OTLP over gRPC (OTLP/HTTP with protobuf bodies only).

mod context;
mod export;

pub(crate) use export::flush;
mod otlp;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use meshgate_config::TracingSpec;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use context::{Format, SpanId};
pub(crate) use context::{TraceId, push_hex};
use otlp::{Kind, SpanRecord, Status, Value};

/// A header value that is new on every request (a span's `traceparent`,
/// a generated `x-request-id`), marked so that HTTP/2 sends it as a
/// never-indexed literal (RFC 7541 6.2.3). Indexed, each request would
/// push one entry into both ends' HPACK tables, evicting the entries of
/// the values that do repeat, and never be referenced again.
pub(crate) fn unindexed(value: String) -> pingora::Result<http::HeaderValue> {
    let mut v = http::HeaderValue::try_from(value).map_err(|_| {
        pingora::Error::explain(pingora::ErrorType::InternalError, "invalid id header value")
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// What this process is, for span resources.
#[derive(Debug)]
struct Process {
    /// `service.name` when the config does not set one.
    default_service: String,
    /// `gateway` or `sidecar` (resource attribute `meshgate.proxy`).
    role: &'static str,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

/// Marks this process as the sidecar of `service`: its spans are reported
/// under that service's name unless the config names another. Call before
/// the first request.
pub(crate) fn set_sidecar(service: &str) {
    let _ = PROCESS.set(Process {
        default_service: service.to_owned(),
        role: "sidecar",
    });
}

fn process() -> &'static Process {
    PROCESS.get_or_init(|| Process {
        default_service: "meshgate".to_owned(),
        role: "gateway",
    })
}

fn service_name(spec: &TracingSpec) -> &str {
    spec.service_name
        .as_deref()
        .unwrap_or(&process().default_service)
}

/// The trace state of one request at one proxy.
#[derive(Debug)]
pub(crate) struct Hop {
    /// The tracing settings of the request's snapshot.
    spec: Arc<TracingSpec>,
    trace_id: TraceId,
    /// This hop's SERVER span.
    span_id: SpanId,
    /// The caller's span, when the trace came with the request.
    parent: Option<SpanId>,
    sampled: bool,
    tracestate: Option<String>,
    format: Format,
    start: SystemTime,
    /// The try upstream in progress.
    current: Option<Try>,
    /// Tries that ended, kept only when recording.
    ended: Vec<Ended>,
    tries: u32,
}

#[derive(Debug)]
struct Try {
    span_id: SpanId,
    start: SystemTime,
    peer: SocketAddr,
    /// The response status, once a response header came (0 before).
    status: u16,
    /// 0 for the first try, then the retry count.
    index: u32,
}

#[derive(Debug)]
struct Ended {
    try_: Try,
    end: SystemTime,
    reason: Option<&'static str>,
}

/// What the proxy knows about a finished request, for its spans.
pub(crate) struct Facts<'a> {
    pub(crate) session: &'a Session,
    /// `http` or `https`, as the request arrived.
    pub(crate) scheme: &'static str,
    pub(crate) listener: &'a str,
    /// A sidecar's inbound (mTLS) side.
    pub(crate) inbound: bool,
    /// The status sent to the client; 0 when none was.
    pub(crate) status: u16,
    pub(crate) reason: Option<&'a str>,
    pub(crate) route: Option<&'a str>,
    pub(crate) service: Option<&'a str>,
    pub(crate) subset: Option<&'a str>,
    /// The caller's verified SPIFFE ID (inbound).
    pub(crate) peer_identity: Option<&'a str>,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Hop {
    /// Reads the request's trace context and decides sampling.
    /// `started` is when the request arrived.
    pub(crate) fn start(headers: &HeaderMap, spec: &Arc<TracingSpec>, started: Instant) -> Hop {
        let incoming = context::extract(headers);
        let (trace_id, parent) = match incoming.parent {
            Some((t, s)) => (t, Some(s)),
            None => (TraceId::random(), None),
        };
        let sampled = incoming
            .sampled
            .unwrap_or_else(|| trace_id.sampled_at(spec.sampling_ratio));
        let now = SystemTime::now();
        Hop {
            spec: spec.clone(),
            trace_id,
            span_id: SpanId::random(),
            parent,
            sampled,
            tracestate: incoming.tracestate,
            format: incoming.format,
            start: now.checked_sub(started.elapsed()).unwrap_or(now),
            current: None,
            ended: Vec::new(),
            tries: 0,
        }
    }

    /// The trace this request belongs to (for the access log).
    pub(crate) fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// Whether spans of this hop are recorded and exported.
    fn recording(&self) -> bool {
        self.sampled && self.spec.otlp_endpoint.is_some()
    }

    /// A try upstream to `peer` begins (a CLIENT span); one still open
    /// ends first.
    pub(crate) fn begin_try(&mut self, peer: SocketAddr) {
        self.end_try(None);
        self.current = Some(Try {
            span_id: SpanId::random(),
            start: SystemTime::now(),
            peer,
            status: 0,
            index: self.tries,
        });
        self.tries += 1;
    }

    /// The current try got a response header with `status`.
    pub(crate) fn try_status(&mut self, status: u16) {
        if let Some(t) = &mut self.current {
            t.status = status;
        }
    }

    /// The current try ended, with the proxy's reason when it failed.
    pub(crate) fn end_try(&mut self, reason: Option<&'static str>) {
        let Some(t) = self.current.take() else {
            return;
        };
        if self.recording() {
            self.ended.push(Ended {
                try_: t,
                end: SystemTime::now(),
                reason,
            });
        }
    }

    /// Writes the trace context for the current try (or, before any try,
    /// for this hop's span) into the upstream request: always
    /// `traceparent` (and the caller's `tracestate`), and B3 in the form
    /// the caller used. Stale copies of every trace header are replaced.
    pub(crate) fn inject(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        use context::*;
        let span = self.current.as_ref().map_or(self.span_id, |t| t.span_id);
        req.insert_header(
            TRACEPARENT,
            unindexed(traceparent(self.trace_id, span, self.sampled))?,
        )?;
        // One pass over the names finds stale copies to remove; most
        // requests have none, and each removal is a hashed lookup.
        let (mut stale_state, mut stale_b3) = (false, false);
        for name in req.headers.keys() {
            stale_state |= name.as_str() == TRACESTATE;
            stale_b3 |= is_b3_header(name.as_str());
        }
        match &self.tracestate {
            Some(ts) => req.insert_header(TRACESTATE, ts.as_str())?,
            None if stale_state => {
                req.remove_header(TRACESTATE);
            }
            None => {}
        }
        if stale_b3 {
            for h in B3_HEADERS {
                req.remove_header(h);
            }
        }
        match self.format {
            Format::B3Single => req.insert_header(
                B3,
                unindexed(b3_single(self.trace_id, span, self.sampled, self.span_id))?,
            )?,
            Format::B3Multi => {
                req.insert_header(B3_TRACE_ID, unindexed(self.trace_id.to_string())?)?;
                req.insert_header(B3_SPAN_ID, unindexed(span.to_string())?)?;
                req.insert_header(B3_PARENT_SPAN_ID, unindexed(self.span_id.to_string())?)?;
                req.insert_header(B3_SAMPLED, if self.sampled { "1" } else { "0" })?;
            }
            Format::W3c | Format::New => {}
        }
        Ok(())
    }

    /// The request is over: ends the open try and this hop's span, and
    /// queues the spans for export when recording.
    pub(crate) fn finish(&mut self, f: &Facts<'_>) {
        self.end_try(None);
        if !self.recording() {
            return;
        }
        let end = SystemTime::now();
        let req = f.session.req_header();
        let method = req.method.as_str();
        let mut spans = Vec::with_capacity(1 + self.ended.len());

        let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(16);
        attrs.push(("http.request.method", method.into()));
        attrs.push(("url.path", req.uri.path().into()));
        attrs.push(("url.scheme", f.scheme.into()));
        if let Some(a) =
            crate::edge::authority(req).and_then(|a| a.parse::<http::uri::Authority>().ok())
        {
            attrs.push(("server.address", a.host().into()));
            if let Some(p) = a.port_u16() {
                attrs.push(("server.port", i64::from(p).into()));
            }
        }
        attrs.push((
            "network.protocol.version",
            protocol_version(req.version).into(),
        ));
        if let Some(ip) = f.session.client_addr().and_then(|a| a.as_inet()) {
            attrs.push(("client.address", ip.ip().to_string().into()));
        }
        if let Some(ua) = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attrs.push(("user_agent.original", ua.into()));
        }
        if f.status > 0 {
            attrs.push(("http.response.status_code", i64::from(f.status).into()));
        }
        attrs.push(("meshgate.listener", f.listener.into()));
        attrs.push((
            "meshgate.direction",
            if f.inbound { "inbound" } else { "outbound" }.into(),
        ));
        let labels = [
            ("meshgate.route", f.route),
            ("meshgate.service", f.service),
            ("meshgate.subset", f.subset),
            ("meshgate.reason", f.reason),
            ("meshgate.peer.identity", f.peer_identity),
        ];
        for (k, v) in labels {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                attrs.push((k, v.into()));
            }
        }
        if self.tries > 1 {
            attrs.push(("meshgate.retries", i64::from(self.tries - 1).into()));
        }
        let failed = f.status >= 500 || (f.status == 0 && f.reason != Some("downstream-closed"));
        let status = if failed {
            let what = f
                .reason
                .map_or_else(|| format!("HTTP {}", f.status), str::to_owned);
            attrs.push(("error.type", error_type(f.status, f.reason).into()));
            Status::Error(what)
        } else {
            Status::Unset
        };
        let what = f.route.or(f.service).unwrap_or(f.listener);
        spans.push(SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            parent_is_remote: self.parent.is_some(),
            tracestate: self.tracestate.clone(),
            name: format!("{method} {what}"),
            kind: Kind::Server,
            start_unix_nanos: unix_nanos(self.start),
            end_unix_nanos: unix_nanos(end),
            attributes: attrs,
            status,
        });

        for e in self.ended.drain(..) {
            let t = &e.try_;
            let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(10);
            attrs.push(("http.request.method", method.into()));
            attrs.push(("server.address", t.peer.ip().to_string().into()));
            attrs.push(("server.port", i64::from(t.peer.port()).into()));
            attrs.push(("network.peer.address", t.peer.ip().to_string().into()));
            attrs.push(("network.peer.port", i64::from(t.peer.port()).into()));
            if t.status > 0 {
                attrs.push(("http.response.status_code", i64::from(t.status).into()));
            }
            if t.index > 0 {
                attrs.push(("http.request.resend_count", i64::from(t.index).into()));
            }
            for (k, v) in [
                ("meshgate.service", f.service),
                ("meshgate.subset", f.subset),
            ] {
                if let Some(v) = v.filter(|v| !v.is_empty()) {
                    attrs.push((k, v.into()));
                }
            }
            // A client span fails on 4xx too (HTTP semantic conventions):
            // the request did not get what it asked for; and when the try
            // broke off after its response header (a reset body).
            let status = if t.status >= 400 || t.status == 0 || e.reason.is_some() {
                attrs.push(("error.type", error_type(t.status, e.reason).into()));
                Status::Error(e.reason.map_or_else(
                    || {
                        if t.status == 0 {
                            "no response".to_owned()
                        } else {
                            format!("HTTP {}", t.status)
                        }
                    },
                    str::to_owned,
                ))
            } else {
                Status::Unset
            };
            let target = f.service.unwrap_or("upstream");
            spans.push(SpanRecord {
                trace_id: self.trace_id,
                span_id: t.span_id,
                parent: Some(self.span_id),
                parent_is_remote: false,
                tracestate: self.tracestate.clone(),
                name: format!("{method} {target}"),
                kind: Kind::Client,
                start_unix_nanos: unix_nanos(t.start),
                end_unix_nanos: unix_nanos(e.end),
                attributes: attrs,
                status,
            });
        }
        export::submit(&self.spec, spans);
    }
}

/// `error.type`: the proxy's reason when it has one, else the status code.
fn error_type(status: u16, reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.is_empty() && r != "upstream-status" => r.to_owned(),
        _ if status > 0 => status.to_string(),
        _ => "_OTHER".to_owned(),
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
