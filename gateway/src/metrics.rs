//! Prometheus metrics, one registry per process, served by the admin
//! endpoint (`admin.rs`).
//!
//! Every family is registered once at first use and updated from the
//! request path with label values that come from the config (listener,
//! route and service names) or from small fixed sets (status codes, the
//! proxy's reasons), so cardinality stays bounded by the config, never by
//! what clients send.

use std::sync::OnceLock;
use std::time::SystemTime;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metric families.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests answered, by listener, route, service, status, reason,
    /// protocol (`http1`, `http2`, `http3`, `grpc`) and direction (`outbound` for edge and
    /// sidecar outbound listeners, `inbound` for a sidecar's mTLS side).
    pub(crate) requests: IntCounterVec,
    /// Request duration from first byte in to the log line, by listener
    /// and route.
    pub(crate) duration: HistogramVec,
    /// Retries sent, by service.
    pub(crate) retries: IntCounterVec,
    /// Endpoints ejected by outlier detection, by service.
    pub(crate) ejections: IntCounterVec,
    /// When this process's mesh certificate expires (Unix seconds), by
    /// identity. Alert on `... - time() < 3600`.
    pub(crate) cert_expiry: GaugeVec,
    /// Registered instances per mesh service (the appliance only).
    pub(crate) mesh_endpoints: IntGaugeVec,
    /// Request body bytes received from clients, by listener and route.
    pub(crate) request_bytes: IntCounterVec,
    /// Response body bytes sent to clients, by listener and route.
    pub(crate) response_bytes: IntCounterVec,
    /// JWT checks by provider and outcome (`valid`, `missing`,
    /// `malformed`, `invalid`, `forbidden`).
    pub(crate) jwt: IntCounterVec,
    /// Retries not sent because the service's retry budget was spent.
    pub(crate) budget_exhausted: IntCounterVec,
    /// Mirrored copies by service and result (`sent`, `failed`,
    /// `skipped`).
    pub(crate) mirrored: IntCounterVec,
    /// Requests being served now, by listener (`inbound` for a sidecar's
    /// mTLS listener).
    pub(crate) in_flight: IntGaugeVec,
    /// The version of the config serving now.
    pub(crate) config_version: IntGauge,
    /// Reload attempts by outcome: applied, unchanged, rejected.
    pub(crate) config_reloads: IntCounterVec,
    /// Upstream connections used, by direction, service and whether the
    /// pool supplied it (`reused="true"`) or it was opened for the try.
    pub(crate) upstream_connections: IntCounterVec,
    /// Each endpoint's outlier (breaker) state, 1 for the state it is in:
    /// `healthy`, `half_open` or `ejected`. Set at scrape time.
    pub(crate) endpoint_state: IntGaugeVec,
    /// JWKS fetches by provider and outcome (`ok`, `error`).
    pub(crate) jwks_fetches: IntCounterVec,
    /// When each provider's JWKS was last fetched successfully (Unix
    /// seconds); key age is `time() - this`.
    pub(crate) jwks_last_success: GaugeVec,
    /// Keys in each provider's current key set.
    pub(crate) jwks_keys: IntGaugeVec,
    /// Downstream TLS handshakes by listener and outcome: `started` (the
    /// ClientHello reached certificate selection), `completed`.
    pub(crate) tls_handshakes: IntCounterVec,
    /// Downstream TLS handshake failures whose reason is known, by
    /// listener and reason.
    pub(crate) tls_failures: IntCounterVec,
    /// QUIC connections offered to HTTP/3 listeners, by outcome.
    pub(crate) http3_connections: IntCounterVec,
    /// TCP connections on configured listeners, by listener and outcome.
    pub(crate) tcp_connections: IntCounterVec,
    /// Plaintext connections a TLS listener took (permissive mesh mode).
    pub(crate) plaintext_connections: IntCounterVec,
    /// Spans the collector accepted.
    pub(crate) trace_spans_exported: IntCounter,
    /// Spans dropped, by reason: `queue_full` (the export queue was at
    /// `queue_capacity`), `export_failed` (the collector failed or refused).
    pub(crate) trace_spans_dropped: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new("meshgate_requests_total", "Requests answered."),
        &[
            "listener",
            "route",
            "service",
            "subset",
            "status",
            "reason",
            "protocol",
            "direction",
            "source_identity",
        ],
    )?;
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "meshgate_request_duration_seconds",
            "Time from the request's arrival to its last byte.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["listener", "route"],
    )?;
    let retries = IntCounterVec::new(
        Opts::new("meshgate_upstream_retries_total", "Retries sent upstream."),
        &["service"],
    )?;
    let ejections = IntCounterVec::new(
        Opts::new(
            "meshgate_endpoint_ejections_total",
            "Endpoints ejected by outlier detection.",
        ),
        &["service"],
    )?;
    let cert_expiry = GaugeVec::new(
        Opts::new(
            "meshgate_mesh_certificate_expiration_timestamp_seconds",
            "When this process's mesh workload certificate expires (Unix time).",
        ),
        &["identity"],
    )?;
    let mesh_endpoints = IntGaugeVec::new(
        Opts::new(
            "meshgate_mesh_endpoints",
            "Instances registered with the control plane, by service.",
        ),
        &["service"],
    )?;
    let in_flight = IntGaugeVec::new(
        Opts::new(
            "meshgate_requests_in_flight",
            "Requests being served now, by listener.",
        ),
        &["listener"],
    )?;
    let config_version = IntGauge::new(
        "meshgate_config_version",
        "Version of the config serving now (1 at start, +1 per applied change).",
    )?;
    let config_reloads = IntCounterVec::new(
        Opts::new(
            "meshgate_config_reloads_total",
            "Config reload attempts (SIGHUP, file change, PUT /config), by outcome.",
        ),
        &["outcome"],
    )?;
    for outcome in ["applied", "unchanged", "rejected"] {
        config_reloads.with_label_values(&[outcome]);
    }
    let request_bytes = IntCounterVec::new(
        Opts::new(
            "meshgate_request_bytes_total",
            "Request body bytes received from clients.",
        ),
        &["listener", "route"],
    )?;
    let response_bytes = IntCounterVec::new(
        Opts::new(
            "meshgate_response_bytes_total",
            "Response body bytes sent to clients.",
        ),
        &["listener", "route"],
    )?;
    let jwt = IntCounterVec::new(
        Opts::new(
            "meshgate_jwt_validations_total",
            "JWT checks on routes with auth, by provider and outcome.",
        ),
        &["provider", "outcome"],
    )?;
    let budget_exhausted = IntCounterVec::new(
        Opts::new(
            "meshgate_retry_budget_exhausted_total",
            "Retries not sent because the service's retry budget was spent.",
        ),
        &["service"],
    )?;
    let mirrored = IntCounterVec::new(
        Opts::new(
            "meshgate_mirror_requests_total",
            "Copies of requests sent to a route's mirror service, by result: sent (answered), \
             failed (no answer), skipped (no endpoint or identity, or a body too long to copy).",
        ),
        &["service", "result"],
    )?;
    let upstream_connections = IntCounterVec::new(
        Opts::new(
            "meshgate_upstream_connections_total",
            "Upstream connections used per try, new or reused from the pool.",
        ),
        &["direction", "service", "reused"],
    )?;
    let endpoint_state = IntGaugeVec::new(
        Opts::new(
            "meshgate_endpoint_state",
            "Outlier-detection (breaker) state of each endpoint: 1 for its state.",
        ),
        &["service", "endpoint", "state"],
    )?;
    let jwks_fetches = IntCounterVec::new(
        Opts::new(
            "meshgate_jwks_fetches_total",
            "JWKS fetches from a provider's jwks_url, by outcome.",
        ),
        &["provider", "outcome"],
    )?;
    let jwks_last_success = GaugeVec::new(
        Opts::new(
            "meshgate_jwks_last_success_timestamp_seconds",
            "When the provider's JWKS was last fetched successfully (Unix time).",
        ),
        &["provider"],
    )?;
    let jwks_keys = IntGaugeVec::new(
        Opts::new("meshgate_jwks_keys", "Keys in the provider's current JWKS."),
        &["provider"],
    )?;
    let tls_handshakes = IntCounterVec::new(
        Opts::new(
            "meshgate_tls_handshakes_total",
            "Downstream TLS handshakes, by listener and outcome (started, completed).",
        ),
        &["listener", "outcome"],
    )?;
    let tls_failures = IntCounterVec::new(
        Opts::new(
            "meshgate_tls_handshake_failures_total",
            "Downstream TLS handshakes refused for a known reason, by listener and reason.",
        ),
        &["listener", "reason"],
    )?;
    registry.register(Box::new(tls_handshakes.clone()))?;
    registry.register(Box::new(tls_failures.clone()))?;
    registry.register(Box::new(upstream_connections.clone()))?;
    registry.register(Box::new(endpoint_state.clone()))?;
    registry.register(Box::new(jwks_fetches.clone()))?;
    registry.register(Box::new(jwks_last_success.clone()))?;
    registry.register(Box::new(jwks_keys.clone()))?;
    let http3_connections = IntCounterVec::new(
        Opts::new(
            "meshgate_http3_connections_total",
            "QUIC connection attempts on HTTP/3 listeners, by outcome: ok, \
             retry (asked to prove its address first), refused (connection \
             limit), timeout, protocol-error, closed.",
        ),
        &["outcome"],
    )?;
    registry.register(Box::new(http3_connections.clone()))?;
    let tcp_connections = IntCounterVec::new(
        Opts::new(
            "meshgate_tcp_connections_total",
            "TCP connections on configured listeners, by outcome: accepted, \
             refused (the listener's max_connections reached).",
        ),
        &["listener", "outcome"],
    )?;
    registry.register(Box::new(tcp_connections.clone()))?;
    let plaintext_connections = IntCounterVec::new(
        Opts::new(
            "meshgate_plaintext_connections_total",
            "Connections that a TLS listener took in plaintext: a sidecar's \
             inbound port in permissive mesh mode.",
        ),
        &["listener"],
    )?;
    registry.register(Box::new(plaintext_connections.clone()))?;
    let trace_spans_exported = IntCounter::new(
        "meshgate_trace_spans_exported_total",
        "Spans sent to the trace collector and accepted.",
    )?;
    let trace_spans_dropped = IntCounterVec::new(
        Opts::new(
            "meshgate_trace_spans_dropped_total",
            "Spans not exported: queue_full (export queue at capacity) or export_failed (collector error).",
        ),
        &["reason"],
    )?;
    for reason in ["queue_full", "export_failed"] {
        trace_spans_dropped.with_label_values(&[reason]);
    }
    registry.register(Box::new(trace_spans_exported.clone()))?;
    registry.register(Box::new(trace_spans_dropped.clone()))?;
    registry.register(Box::new(jwt.clone()))?;
    registry.register(Box::new(budget_exhausted.clone()))?;
    registry.register(Box::new(mirrored.clone()))?;
    registry.register(Box::new(request_bytes.clone()))?;
    registry.register(Box::new(response_bytes.clone()))?;
    registry.register(Box::new(in_flight.clone()))?;
    registry.register(Box::new(config_version.clone()))?;
    registry.register(Box::new(config_reloads.clone()))?;
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(duration.clone()))?;
    registry.register(Box::new(retries.clone()))?;
    registry.register(Box::new(ejections.clone()))?;
    registry.register(Box::new(cert_expiry.clone()))?;
    registry.register(Box::new(mesh_endpoints.clone()))?;
    Ok(Metrics {
        registry,
        requests,
        duration,
        retries,
        ejections,
        cert_expiry,
        mesh_endpoints,
        request_bytes,
        response_bytes,
        jwt,
        budget_exhausted,
        mirrored,
        in_flight,
        config_version,
        config_reloads,
        upstream_connections,
        endpoint_state,
        jwks_fetches,
        jwks_last_success,
        jwks_keys,
        tls_handshakes,
        tls_failures,
        http3_connections,
        tcp_connections,
        plaintext_connections,
        trace_spans_exported,
        trace_spans_dropped,
    })
}

/// The metrics, or `None` if they could not be registered (a build
/// defect, logged once; the data path runs on without them).
pub(crate) fn metrics() -> Option<&'static Metrics> {
    static M: OnceLock<Option<Metrics>> = OnceLock::new();
    M.get_or_init(|| match build() {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(error = %e, "metrics unavailable");
            None
        }
    })
    .as_ref()
}

/// Records a certificate's expiry.
pub(crate) fn certificate(identity: &str, not_after: SystemTime) {
    if let Some(m) = metrics() {
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.cert_expiry.with_label_values(&[identity]).set(secs);
    }
}

/// The Prometheus text exposition of every family.
pub(crate) fn render() -> String {
    let Some(m) = metrics() else {
        return String::new();
    };
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Records a config reload attempt (`applied`, `unchanged`, `rejected`)
/// and the version serving afterwards.
pub(crate) fn config_reload(outcome: &'static str, version: u64) {
    if let Some(m) = metrics() {
        m.config_reloads.with_label_values(&[outcome]).inc();
        m.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}

/// Records how a QUIC connection attempt on an HTTP/3 listener ended.
pub(crate) fn http3_connection(outcome: &'static str) {
    if let Some(m) = metrics() {
        m.http3_connections.with_label_values(&[outcome]).inc();
    }
}

/// Records a TCP connection on a configured listener: `accepted` or
/// `refused`.
pub(crate) fn tcp_connection(listener: &str, outcome: &'static str) {
    if let Some(m) = metrics() {
        m.tcp_connections
            .with_label_values(&[listener, outcome])
            .inc();
    }
}

/// Records a plaintext connection on a TLS listener (permissive mode).
pub(crate) fn plaintext_connection(listener: &str) {
    if let Some(m) = metrics() {
        m.plaintext_connections.with_label_values(&[listener]).inc();
    }
}

/// Sets the version of the config serving now.
pub(crate) fn config_version(version: u64) {
    if let Some(m) = metrics() {
        m.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}

/// One request in flight on `listener`, counted until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Option<prometheus::IntGauge>);

impl InFlight {
    /// The in-flight gauge of `listener`, looked up once per listener
    /// rather than once per request.
    pub(crate) fn gauge(listener: &str) -> Option<prometheus::IntGauge> {
        metrics().map(|m| m.in_flight.with_label_values(&[listener]))
    }

    /// One more request in flight on the listener of `gauge`.
    pub(crate) fn start(gauge: Option<&prometheus::IntGauge>) -> Self {
        crate::memory::request_started();
        let g = gauge.cloned();
        if let Some(g) = &g {
            g.inc();
        }
        Self(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// One finished request, as both the edge pipeline and a sidecar's
/// inbound side report it.
#[derive(Debug)]
pub(crate) struct Finished<'a> {
    pub(crate) listener: &'a str,
    pub(crate) route: &'a str,
    pub(crate) service: &'a str,
    /// The split's subset; empty without a split.
    pub(crate) subset: &'a str,
    pub(crate) status: u16,
    pub(crate) reason: &'a str,
    /// `http1`, `http2`, `http3` or `grpc`, from [`protocol_of`].
    pub(crate) protocol: &'static str,
    pub(crate) inbound: bool,
    /// Inbound: the caller's SPIFFE ID (bounded by the mesh's services);
    /// empty otherwise.
    pub(crate) source_identity: &'a str,
    pub(crate) elapsed: std::time::Duration,
    pub(crate) bytes_in: usize,
    pub(crate) bytes_out: usize,
}

/// Whether a request is a gRPC call (`application/grpc`, `+proto` and the
/// other codecs).
pub(crate) fn is_grpc(req: &pingora::http::RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `protocol` label of a downstream request: `grpc` for a gRPC call
/// (whatever carries it), otherwise the HTTP version it arrived over;
/// HTTP/3 requests reach the pipeline as pingora custom sessions.
pub(crate) fn protocol_of(session: &pingora::proxy::Session) -> &'static str {
    if is_grpc(session.req_header()) {
        "grpc"
    } else if session.downstream_session.is_custom() {
        "http3"
    } else if session.is_http2() {
        "http2"
    } else {
        "http1"
    }
}

/// Records a finished request in the request, duration and byte families.
pub(crate) fn finished(f: &Finished<'_>) {
    let Some(m) = metrics() else { return };
    let mut digits = [0u8; 3];
    m.requests
        .with_label_values(&[
            f.listener,
            f.route,
            f.service,
            f.subset,
            status_text(f.status, &mut digits),
            f.reason,
            f.protocol,
            if f.inbound { "inbound" } else { "outbound" },
            f.source_identity,
        ])
        .inc();
    let labels = [f.listener, f.route];
    m.duration
        .with_label_values(&labels)
        .observe(f.elapsed.as_secs_f64());
    m.request_bytes
        .with_label_values(&labels)
        .inc_by(f.bytes_in as u64);
    m.response_bytes
        .with_label_values(&labels)
        .inc_by(f.bytes_out as u64);
}

/// A status code as label text without allocating: `0` (no response) or
/// three digits.
fn status_text(code: u16, buf: &mut [u8; 3]) -> &str {
    if code == 0 || code > 999 {
        return "0";
    }
    buf[0] = b'0' + (code / 100) as u8;
    buf[1] = b'0' + (code / 10 % 10) as u8;
    buf[2] = b'0' + (code % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("0")
}

/// Counts one JWT check on a route of `provider`.
pub(crate) fn jwt_validation(provider: &str, outcome: &'static str) {
    if let Some(m) = metrics() {
        m.jwt.with_label_values(&[provider, outcome]).inc();
    }
}

/// Counts one retry not sent for want of budget.
pub(crate) fn retry_budget_exhausted(service: &str) {
    if let Some(m) = metrics() {
        m.budget_exhausted.with_label_values(&[service]).inc();
    }
}

/// Counts one upstream connection a try used.
pub(crate) fn upstream_connection(inbound: bool, service: &str, reused: bool) {
    if let Some(m) = metrics() {
        m.upstream_connections
            .with_label_values(&[
                if inbound { "inbound" } else { "outbound" },
                service,
                if reused { "true" } else { "false" },
            ])
            .inc();
    }
}

/// Records one JWKS fetch; a success also records when and how many keys.
pub(crate) fn jwks_fetch(provider: &str, keys: Option<usize>) {
    let Some(m) = metrics() else { return };
    let outcome = if keys.is_some() { "ok" } else { "error" };
    m.jwks_fetches.with_label_values(&[provider, outcome]).inc();
    if let Some(n) = keys {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.jwks_last_success.with_label_values(&[provider]).set(now);
        m.jwks_keys
            .with_label_values(&[provider])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Sets the endpoint-state gauge from the live state of every service of
/// the running config (called at scrape time, so removed endpoints go),
/// and gives every service its per-service counters.
pub(crate) fn endpoint_states(
    snap: &meshgate_config::Snapshot,
    runtimes: &crate::runtime::Runtimes,
) {
    use meshgate_policy::breaker::Health;
    let Some(m) = metrics() else { return };
    m.endpoint_state.reset();
    let now = std::time::Instant::now();
    for spec in &snap.services {
        // Per-service counters exist from the start (at 0), so rates and
        // increases over them are 0 rather than absent.
        m.ejections.with_label_values(&[spec.name.as_str()]);
        m.retries.with_label_values(&[spec.name.as_str()]);
        m.budget_exhausted.with_label_values(&[spec.name.as_str()]);
        let state = runtimes.service(snap, spec);
        for e in &state.endpoints {
            let current = match e.outlier.health(now) {
                Health::Healthy => "healthy",
                Health::HalfOpen => "half_open",
                Health::Ejected { .. } => "ejected",
            };
            for s in ["healthy", "half_open", "ejected"] {
                m.endpoint_state
                    .with_label_values(&[spec.name.as_str(), e.key.as_str(), s])
                    .set(i64::from(s == current));
            }
        }
    }
}

// ---- downstream TLS handshakes ------------------------------------------
//
// pingora builds the rustls server config and runs the handshake itself; it
// reports a failed handshake only in its log. What we supply to it — the
// certificate resolver, the client-certificate verifier and the
// post-handshake callback — sees each handshake at three points, so these
// wrappers count there: `started` when a ClientHello reaches certificate
// selection, `completed` after the handshake, and a reason when our side
// refuses (no certificate to offer, a client certificate rejected).
// `started - completed` is every failure after the ClientHello, whoever
// gave up (a client refusing our certificate, a missing client
// certificate, a timeout); ClientHellos rustls refuses before selection
// (no shared protocol version or cipher suite) are not seen.

fn tls_counter(listener: &str, outcome: &str) -> Option<prometheus::IntCounter> {
    metrics().map(|m| m.tls_handshakes.with_label_values(&[listener, outcome]))
}

fn tls_failure(listener: &str, reason: &str) {
    if let Some(m) = metrics() {
        m.tls_failures.with_label_values(&[listener, reason]).inc();
    }
}

/// A certificate resolver that counts handshakes reaching it.
#[derive(Debug)]
pub(crate) struct CountingResolver {
    listener: String,
    started: Option<prometheus::IntCounter>,
    inner: std::sync::Arc<dyn rustls::server::ResolvesServerCert>,
}

impl CountingResolver {
    pub(crate) fn new(
        listener: &str,
        inner: std::sync::Arc<dyn rustls::server::ResolvesServerCert>,
    ) -> Self {
        // The completed series exists from the start too, so the
        // difference is defined before the first success.
        let _ = tls_counter(listener, "completed");
        CountingResolver {
            listener: listener.to_owned(),
            started: tls_counter(listener, "started"),
            inner,
        }
    }
}

impl rustls::server::ResolvesServerCert for CountingResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        if let Some(c) = &self.started {
            c.inc();
        }
        let key = self.inner.resolve(hello);
        if key.is_none() {
            tls_failure(&self.listener, "no-certificate");
        }
        key
    }
}

/// Counts a listener's completed handshakes.
#[derive(Debug)]
pub(crate) struct HandshakeCount {
    completed: Option<prometheus::IntCounter>,
}

impl HandshakeCount {
    pub(crate) fn new(listener: &str) -> Self {
        HandshakeCount {
            completed: tls_counter(listener, "completed"),
        }
    }

    pub(crate) fn completed(&self) {
        if let Some(c) = &self.completed {
            c.inc();
        }
    }
}

/// A client-certificate verifier that counts the certificates it rejects,
/// by why.
#[derive(Debug)]
pub(crate) struct CountingVerifier {
    listener: String,
    inner: std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl CountingVerifier {
    pub(crate) fn new(
        listener: &str,
        inner: std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Self {
        CountingVerifier {
            listener: listener.to_owned(),
            inner,
        }
    }
}

/// The `reason` label of a rejected client certificate.
fn client_cert_reason(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "client-cert-unknown-ca",
            C::Expired | C::ExpiredContext { .. } => "client-cert-expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "client-cert-not-yet-valid",
            C::Revoked => "client-cert-revoked",
            C::BadSignature => "client-cert-bad-signature",
            _ => "client-cert-invalid",
        },
        _ => "client-cert-invalid",
    }
}

impl rustls::server::danger::ClientCertVerifier for CountingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| tls_failure(&self.listener, client_cert_reason(e)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// Counts spans the collector accepted.
pub(crate) fn trace_spans_exported(n: usize) {
    if let Some(m) = metrics() {
        m.trace_spans_exported.inc_by(n as u64);
    }
}

/// Counts spans dropped for `reason` (`queue_full`, `export_failed`).
pub(crate) fn trace_spans_dropped(reason: &'static str, n: usize) {
    if let Some(m) = metrics() {
        m.trace_spans_dropped
            .with_label_values(&[reason])
            .inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::status_text;

    #[test]
    fn status_codes_render_as_three_digits_or_zero() {
        let mut b = [0u8; 3];
        assert_eq!(status_text(200, &mut b), "200");
        assert_eq!(status_text(503, &mut b), "503");
        assert_eq!(status_text(101, &mut b), "101");
        assert_eq!(status_text(0, &mut b), "0");
    }
}
