//! The access log: one line per finished request, written the same way by
//! the edge pipeline (the appliance's listeners and a sidecar's outbound
//! side) and by a sidecar's inbound side.
//!
//! Each side asks [`sampled`] in its `logging` phase whether the request
//! is logged at all (the `[observability.access_log]` format, the route's
//! `access_log` switch, sampling), then fills an [`Entry`] and calls
//! [`record`], which renders it as JSON or as one human-readable line.
//!
//! Requests refused before the pipeline sees them (an HTTP/1.1 head that
//! timed out or grew too large, a malformed or too-early HTTP/3 request)
//! are counted and logged through [`Refusals`], always, as the responses
//! the proxy produces itself are.
//!
//! What is logged is bounded by what the proxy decided (route, service,
//! reason) plus the request line; values from the client (path,
//! authority, user) are escaped, never interpreted, so a crafted request
//! cannot forge a second line.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use meshgate_config::{AccessLogFormat, ConfigStore, LogTarget, ObservabilitySpec, Snapshot};
use serde::Serialize;

/// One finished request, as both sides report it.
#[derive(Debug, Default)]
pub(crate) struct Entry<'a> {
    /// Listener name (`inbound` for a sidecar's mTLS side).
    pub(crate) listener: &'a str,
    /// `http1`, `http2`, `http3` or `grpc` ([`crate::metrics::protocol_of`]).
    pub(crate) protocol: &'static str,
    /// The downstream peer's address.
    pub(crate) client: Option<SocketAddr>,
    pub(crate) method: &'a str,
    pub(crate) authority: Option<&'a str>,
    pub(crate) path: &'a str,
    /// The status sent to the client; 0 when none was.
    pub(crate) status: u16,
    /// The proxy's reason for a response it produced (`no-route`,
    /// `upstream-timeout`...).
    pub(crate) reason: Option<&'a str>,
    pub(crate) route: Option<&'a str>,
    pub(crate) service: Option<&'a str>,
    pub(crate) subset: Option<&'a str>,
    /// The endpoint the last try went to.
    pub(crate) endpoint: Option<SocketAddr>,
    /// From the request's arrival to the log line.
    pub(crate) duration: Duration,
    /// Of the last try: request sent upstream to response header.
    pub(crate) upstream_header: Option<Duration>,
    /// Of the last try: request sent upstream to the response's end.
    pub(crate) upstream: Option<Duration>,
    pub(crate) bytes_in: usize,
    pub(crate) bytes_out: usize,
    /// The request's W3C trace id. The place where tracing hands it over.
    pub(crate) trace_id: Option<&'a str>,
    /// The authenticated user (the configured JWT claim), if logged.
    pub(crate) user: Option<&'a str>,
    /// Inbound: the caller's verified SPIFFE ID. Outbound: the mesh
    /// identity the upstream was verified against, for mesh services.
    pub(crate) peer_identity: Option<&'a str>,
    pub(crate) retries: u32,
    /// Why retrying stopped, when it did.
    pub(crate) retry_stop: Option<&'a str>,
    /// The error that ended the request, if any.
    pub(crate) error: Option<String>,
}

impl<'a> Entry<'a> {
    /// The fields every side takes from the downstream session alike
    /// (the request line, the client, the protocol, the byte counts);
    /// the caller fills in what the proxy decided.
    pub(crate) fn of_session(session: &'a pingora::proxy::Session, listener: &'a str) -> Self {
        let req = session.req_header();
        Entry {
            listener,
            protocol: crate::metrics::protocol_of(session),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            method: req.method.as_str(),
            authority: crate::edge::authority(req),
            path: req.uri.path(),
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            ..Entry::default()
        }
    }
}

/// Upstream timing points of the current try, set from the proxy phases.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UpstreamTimes {
    /// The request head went upstream (`upstream_request_filter`).
    pub(crate) sent: Option<std::time::Instant>,
    /// The response head came back (`upstream_response_filter`).
    pub(crate) header: Option<std::time::Instant>,
    /// The response's last byte came back.
    pub(crate) end: Option<std::time::Instant>,
}

impl UpstreamTimes {
    /// A new try starts: earlier points belong to a failed try.
    pub(crate) fn sending(&mut self, now: std::time::Instant) {
        *self = UpstreamTimes {
            sent: Some(now),
            ..UpstreamTimes::default()
        };
    }

    /// (to the header, to the end); an unfinished body ends at `now`.
    pub(crate) fn durations(
        &self,
        now: std::time::Instant,
    ) -> (Option<Duration>, Option<Duration>) {
        let Some(sent) = self.sent else {
            return (None, None);
        };
        let header = self.header.map(|h| h.saturating_duration_since(sent));
        let end = self
            .header
            .map(|_| self.end.unwrap_or(now).saturating_duration_since(sent));
        (header, end)
    }
}

/// How a request ended, as far as the logging decision goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome<'a> {
    pub(crate) route: Option<&'a str>,
    pub(crate) status: u16,
    /// The proxy's reason for a response it produced.
    pub(crate) reason: Option<&'a str>,
    /// An error ended the request.
    pub(crate) failed: bool,
}

/// Whether a request that ended so is always logged, sampling or not: a
/// server error, no response at all, an error, or a response the proxy
/// produced for a reason of its own (no route, unauthenticated, breaker
/// open...).
fn always(o: &Outcome<'_>) -> bool {
    o.status >= 500 || o.status == 0 || o.reason.is_some() || o.failed
}

/// Whether `o` is logged under `spec`; `draw` is a uniform number in
/// `0..100` (only taken when sampling decides).
fn wanted(spec: &ObservabilitySpec, o: &Outcome<'_>, draw: impl FnOnce() -> u64) -> bool {
    if spec.access_log_format == AccessLogFormat::Off {
        return false;
    }
    if let Some(r) = o.route
        && !spec.access_log_off.is_empty()
        && spec.access_log_off.contains(r)
    {
        return false;
    }
    always(o)
        || spec.access_log_sample_percent >= 100
        || draw() < u64::from(spec.access_log_sample_percent)
}

/// Whether the request that ended as `o` goes to the access log: the
/// format, the route's switch and sampling decide. Asked before building
/// an [`Entry`], so a sampled-out request costs no allocation.
pub(crate) fn sampled(snap: &Snapshot, o: &Outcome<'_>) -> bool {
    wanted(&snap.observability, o, || crate::runtime::below(100))
}

/// Where a listener counts and logs the requests it refuses before the
/// proxy pipeline sees them, and so before any `logging` phase.
#[derive(Debug, Clone)]
pub(crate) struct Refusals {
    pub(crate) listener: String,
    /// A sidecar's inbound side (the `direction` label).
    pub(crate) inbound: bool,
    pub(crate) store: Arc<ConfigStore>,
}

impl Refusals {
    /// Counts a refused request in `meshgate_requests_total` and writes
    /// its access-log line (a reason of the proxy's own is always
    /// logged). `e` holds what is known of the request when it was
    /// refused: its protocol, client, status (0 when no response was
    /// sent), reason and duration, and the request line if it was parsed;
    /// the listener is this one's.
    pub(crate) fn record(&self, e: Entry<'_>) {
        let reason = e.reason.unwrap_or_default();
        crate::metrics::finished(&crate::metrics::Finished {
            listener: &self.listener,
            route: "",
            service: "",
            subset: "",
            status: e.status,
            reason,
            protocol: e.protocol,
            inbound: self.inbound,
            source_identity: "",
            elapsed: e.duration,
            bytes_in: 0,
            bytes_out: 0,
        });
        let snap = self.store.current();
        let outcome = Outcome {
            route: None,
            status: e.status,
            reason: e.reason,
            failed: false,
        };
        if sampled(&snap, &outcome) {
            record(
                &snap,
                &Entry {
                    listener: &self.listener,
                    ..e
                },
            );
        }
    }
}

/// The user to log for verified `claims`, when the config asks for one.
pub(crate) fn user<'c>(snap: &Snapshot, claims: Option<&'c serde_json::Value>) -> Option<&'c str> {
    let claim = snap.observability.access_log_user_claim.as_deref()?;
    claims?.get(claim)?.as_str()
}

/// Writes `e` in the configured format (after [`sampled`] said yes).
pub(crate) fn record(snap: &Snapshot, e: &Entry<'_>) {
    let line = match snap.observability.access_log_format {
        AccessLogFormat::Off => return,
        AccessLogFormat::Combined => text_line(e, SystemTime::now()),
        AccessLogFormat::Json => json_line(e, SystemTime::now()),
    };
    write_line(&line);
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Serialize)]
struct Json<'a> {
    timestamp: String,
    listener: &'a str,
    proto: &'a str,
    client: Option<String>,
    method: &'a str,
    authority: Option<&'a str>,
    path: &'a str,
    status: u16,
    reason: Option<&'a str>,
    route: Option<&'a str>,
    service: Option<&'a str>,
    subset: Option<&'a str>,
    upstream: Option<String>,
    duration_ms: f64,
    upstream_header_ms: Option<f64>,
    upstream_ms: Option<f64>,
    bytes_in: usize,
    bytes_out: usize,
    trace_id: Option<&'a str>,
    user: Option<&'a str>,
    peer_identity: Option<&'a str>,
    retries: u32,
    retry_stop: Option<&'a str>,
    error: Option<&'a str>,
}

fn json_line(e: &Entry<'_>, now: SystemTime) -> String {
    let j = Json {
        timestamp: humantime::format_rfc3339_millis(now).to_string(),
        listener: e.listener,
        proto: e.protocol,
        client: e.client.map(|a| a.to_string()),
        method: e.method,
        authority: e.authority,
        path: e.path,
        status: e.status,
        reason: e.reason,
        route: e.route,
        service: e.service,
        subset: e.subset,
        upstream: e.endpoint.map(|a| a.to_string()),
        duration_ms: millis(e.duration),
        upstream_header_ms: e.upstream_header.map(millis),
        upstream_ms: e.upstream.map(millis),
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        trace_id: e.trace_id,
        user: e.user,
        peer_identity: e.peer_identity,
        retries: e.retries,
        retry_stop: e.retry_stop,
        error: e.error.as_deref(),
    };
    serde_json::to_string(&j).unwrap_or_default()
}

/// Appends `v` with anything that could break the line or its quoting
/// (quotes, backslashes, control and non-ASCII characters) escaped.
fn push_escaped(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
    }
}

/// `key=value`, the value escaped and quoted when it holds a space.
fn push_field(out: &mut String, key: &str, v: Option<&str>) {
    out.push(' ');
    out.push_str(key);
    out.push('=');
    match v {
        None | Some("") => out.push('-'),
        Some(v) if v.contains(' ') || v.contains('"') => {
            out.push('"');
            push_escaped(out, v);
            out.push('"');
        }
        Some(v) => push_escaped(out, v),
    }
}

/// The human format: what a combined log line starts with (client,
/// user, time, request line, status, bytes), then the duration and
/// meshgate's fields as `key=value`, `-` for none:
///
/// ```text
/// 127.0.0.1:50312 - alice [2026-11-24T16:27:35.123Z] "GET api.example.com/items HTTP/1.1" 200 0 512 3.412ms listener=web route=items service=catalog subset=v2 upstream=10.0.0.5:8080 upstream_header=3.101ms upstream_time=3.290ms reason=- retries=0 retry_stop=- peer=- trace=-
/// ```
fn text_line(e: &Entry<'_>, now: SystemTime) -> String {
    let mut out = String::with_capacity(256);
    match e.client {
        Some(c) => {
            let _ = write!(out, "{c}");
        }
        None => out.push('-'),
    }
    out.push_str(" - ");
    match e.user {
        Some(u) if !u.is_empty() => push_escaped(&mut out, &u.replace(' ', "_")),
        _ => out.push('-'),
    }
    let _ = write!(out, " [{}] \"", humantime::format_rfc3339_millis(now));
    push_escaped(&mut out, e.method);
    out.push(' ');
    if let Some(a) = e.authority {
        push_escaped(&mut out, a);
    }
    push_escaped(&mut out, e.path);
    let _ = write!(
        out,
        " {}\" {} {} {} {:.3}ms",
        match e.protocol {
            "http1" => "HTTP/1.1",
            "http2" => "HTTP/2",
            "http3" => "HTTP/3",
            other => other,
        },
        e.status,
        e.bytes_in,
        e.bytes_out,
        millis(e.duration)
    );
    let endpoint = e.endpoint.map(|a| a.to_string());
    let ms = |d: Option<Duration>| d.map(|d| format!("{:.3}ms", millis(d)));
    let header = ms(e.upstream_header);
    let upstream = ms(e.upstream);
    let retries = e.retries.to_string();
    for (k, v) in [
        ("listener", Some(e.listener)),
        ("proto", Some(e.protocol)),
        ("route", e.route),
        ("service", e.service),
        ("subset", e.subset),
        ("upstream", endpoint.as_deref()),
        ("upstream_header", header.as_deref()),
        ("upstream_time", upstream.as_deref()),
        ("reason", e.reason),
        ("retries", Some(&retries)),
        ("retry_stop", e.retry_stop),
        ("peer", e.peer_identity),
        ("trace", e.trace_id),
        ("error", e.error.as_deref()),
    ] {
        push_field(&mut out, k, v);
    }
    out
}

type Sink = Mutex<Box<dyn Write + Send>>;
static SINK: OnceLock<Sink> = OnceLock::new();

/// Opens the configured target (once per process: the target is fixed at
/// start, a reload changes format and sampling only).
pub(crate) fn init(snap: &Snapshot) -> std::io::Result<()> {
    let sink: Box<dyn Write + Send> = match &snap.observability.access_log_target {
        LogTarget::Stdout => Box::new(std::io::stdout()),
        LogTarget::Stderr => Box::new(std::io::stderr()),
        LogTarget::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
    };
    let _ = SINK.set(Mutex::new(sink));
    Ok(())
}

fn write_line(line: &str) {
    if let Some(sink) = SINK.get() {
        let mut w = sink.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(w, "{line}");
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The observability settings of a config with this access log table
    /// and a route `r` with `access_log = off_route`.
    fn spec(access_log: &str, off_route: bool) -> ObservabilitySpec {
        let text = format!(
            "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\n\n\
             [observability.access_log]\n{access_log}\n\n[[route]]\nname = \"r\"\n\
             access_log = {}\nrespond = {{ status = 200 }}\n",
            !off_route
        );
        match meshgate_config::load_str(&text, "<test>", std::path::Path::new("/")) {
            Ok(s) => s.observability,
            Err(d) => panic!("{d}"),
        }
    }

    fn ok_entry() -> Entry<'static> {
        Entry {
            listener: "web",
            protocol: "http1",
            method: "GET",
            path: "/a",
            status: 200,
            route: Some("r"),
            ..Entry::default()
        }
    }

    fn ok() -> Outcome<'static> {
        Outcome {
            route: Some("r"),
            status: 200,
            reason: None,
            failed: false,
        }
    }

    #[test]
    fn sampling_spares_failures_and_routes_can_opt_out() {
        let e = ok();
        let none = spec("sample_percent = 0", false);
        assert!(!wanted(&none, &e, || 0), "0% logs no success");
        let half = spec("sample_percent = 50", false);
        assert!(wanted(&half, &e, || 49));
        assert!(!wanted(&half, &e, || 50));
        let all = spec("", false);
        assert!(wanted(&all, &e, || unreachable!("no draw at 100%")));
        for failed in [
            Outcome {
                status: 503,
                ..ok()
            },
            Outcome { status: 0, ..ok() },
            Outcome {
                status: 404,
                reason: Some("no-route"),
                ..ok()
            },
            Outcome {
                failed: true,
                ..ok()
            },
        ] {
            assert!(wanted(&none, &failed, || 99), "{failed:?}");
        }
        let quiet = spec("", true);
        assert!(!wanted(&quiet, &e, || 0));
        let err = Outcome {
            status: 502,
            ..ok()
        };
        assert!(!wanted(&quiet, &err, || 0), "route off is off");
        let off = spec("format = \"off\"", false);
        assert!(!wanted(&off, &err, || 0));
    }

    #[test]
    fn lines_carry_every_field_and_escape_client_text() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let e = Entry {
            client: Some("127.0.0.1:5000".parse().expect("addr")),
            authority: Some("h.example"),
            path: "/a\"b\n c",
            service: Some("svc"),
            subset: Some("v2"),
            endpoint: Some("10.0.0.1:80".parse().expect("addr")),
            duration: Duration::from_micros(3412),
            upstream_header: Some(Duration::from_micros(1000)),
            upstream: Some(Duration::from_micros(2000)),
            bytes_out: 12,
            user: Some("alice smith"),
            trace_id: Some("0af7651916cd43dd8448eb211c80319c"),
            ..ok_entry()
        };
        let j: serde_json::Value = serde_json::from_str(&json_line(&e, now)).expect("json");
        assert_eq!(j["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(j["path"], "/a\"b\n c");
        assert_eq!(j["upstream"], "10.0.0.1:80");
        assert_eq!(j["duration_ms"], 3.412);
        assert_eq!(j["upstream_header_ms"], 1.0);
        assert_eq!(j["user"], "alice smith");
        assert_eq!(j["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(j["reason"], serde_json::Value::Null);

        let t = text_line(&e, now);
        assert!(!t.contains('\n'), "{t}");
        assert!(
            t.starts_with(
                "127.0.0.1:5000 - alice_smith [2023-11-14T22:13:20.123Z] \
                 \"GET h.example/a\\\"b\\x0a c HTTP/1.1\" 200 0 12 3.412ms listener=web"
            ),
            "{t}"
        );
        for part in [
            " route=r ",
            " service=svc ",
            " subset=v2 ",
            " upstream=10.0.0.1:80 ",
            " upstream_header=1.000ms ",
            " upstream_time=2.000ms ",
            " reason=- ",
            " trace=0af7651916cd43dd8448eb211c80319c ",
        ] {
            assert!(t.contains(part), "{part} in {t}");
        }
    }

    #[test]
    fn upstream_durations_follow_the_last_try() {
        let t0 = std::time::Instant::now();
        let mut u = UpstreamTimes::default();
        assert_eq!(u.durations(t0), (None, None));
        u.sending(t0);
        u.header = Some(t0 + Duration::from_millis(5));
        u.sending(t0 + Duration::from_millis(10));
        assert_eq!(u.durations(t0 + Duration::from_millis(20)), (None, None));
        u.header = Some(t0 + Duration::from_millis(12));
        assert_eq!(
            u.durations(t0 + Duration::from_millis(20)),
            (
                Some(Duration::from_millis(2)),
                Some(Duration::from_millis(10))
            )
        );
        u.end = Some(t0 + Duration::from_millis(15));
        assert_eq!(
            u.durations(t0 + Duration::from_millis(20)).1,
            Some(Duration::from_millis(5))
        );
    }
}
