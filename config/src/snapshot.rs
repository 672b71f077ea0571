//! The compiled configuration: one immutable, versioned snapshot.
//!
//! A request takes an `Arc<Snapshot>` once when it starts and uses it to the
//! end, so it sees either the old or the new config, never a mix. Every
//! value here is already checked and typed; the data path never re-parses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderName;
use meshgate_policy::authz::IdentityPolicy;
use meshgate_policy::breaker::{Limits, OutlierConfig};
use meshgate_policy::lb::{Algorithm, EwmaConfig};
use meshgate_policy::retry::{RetryBudgetConfig, RetryPolicy};
use meshgate_policy::route::RouteTable;
use meshgate_policy::split::Split;

/// A secret value (token, key). Never printed by `Debug` or dumps.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for comparison or use. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole compiled configuration.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases by one on every applied change; 0 before the store
    /// applies it.
    pub version: u64,
    /// Hex digest of the source text, to tell whether a file changed
    /// (and, in a store with discovered endpoints, of those endpoints).
    pub digest: String,
    /// The digest of the source text and files alone.
    pub(crate) source_digest: String,
    /// Where it came from: a file path or `<embedded default>`.
    pub origin: String,
    /// The config text it was compiled from (secrets such as `[admin]
    /// token` included: redact before showing it).
    pub source_text: Arc<str>,
    /// When it was compiled.
    pub loaded_at: SystemTime,
    /// The admin API.
    pub admin: AdminSpec,
    /// Listeners, in file order.
    pub listeners: Vec<ListenerSpec>,
    /// JWT providers by name.
    pub jwt_providers: BTreeMap<String, Arc<JwtProviderSpec>>,
    /// Services, in file order.
    pub services: Vec<Arc<ServiceSpec>>,
    pub(crate) service_index: HashMap<String, usize>,
    /// Every route once, for listings and diffs.
    pub routes: Vec<RouteSummary>,
    /// The mesh: trust domain, CA, authorization.
    pub mesh: MeshSpec,
    /// Metrics, logs, traces.
    pub observability: ObservabilitySpec,
}

impl Snapshot {
    /// The digest of the source text and referenced files alone, without
    /// discovered endpoints: changes only when the operator's config does.
    pub fn source_digest(&self) -> &str {
        &self.source_digest
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceSpec>> {
        self.service_index
            .get(name)
            .and_then(|&i| self.services.get(i))
    }

    /// A listener by name.
    pub fn listener(&self, name: &str) -> Option<&ListenerSpec> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// The admin HTTP API.
#[derive(Debug, Clone)]
pub struct AdminSpec {
    /// Whether the config has an `[admin]` table: the admin API runs only
    /// when asked for, so that configs without one never contend for its
    /// port.
    pub enabled: bool,
    /// Bind address. Default `127.0.0.1:9901`.
    pub address: SocketAddr,
    /// Bearer token required for writes (and for everything when bound
    /// beyond loopback).
    pub token: Option<Secret>,
}

/// Application protocols a listener accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protocols {
    /// HTTP/1.1 (and 1.0).
    pub http1: bool,
    /// HTTP/2 over TLS, negotiated with ALPN `h2`.
    pub http2: bool,
    /// HTTP/2 over plaintext TCP, prior knowledge.
    pub h2c: bool,
    /// HTTP/3 over QUIC on the same port (UDP).
    pub http3: bool,
}

impl Protocols {
    /// The configured words, in canonical order.
    pub fn words(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (on, w) in [
            (self.http1, "http1"),
            (self.http2, "http2"),
            (self.h2c, "h2c"),
            (self.http3, "http3"),
        ] {
            if on {
                out.push(w);
            }
        }
        out
    }
}

/// One listener and the routes it serves.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Unique name, used by routes and in metrics.
    pub name: String,
    /// Bind address (TCP; UDP too when `http3` is on).
    pub address: SocketAddr,
    /// Protocols accepted.
    pub protocols: Protocols,
    /// TLS settings; `None` = plaintext.
    pub tls: Option<TlsSpec>,
    /// Limits and timeouts.
    pub limits: ListenerLimits,
    /// QUIC transport settings, used when `protocols.http3` is on.
    pub http3: Http3Spec,
    /// The routes bound to this listener, compiled.
    pub routes: Arc<RouteTable>,
}

/// HTTP/3 (QUIC) transport settings of a listener: `[listener.http3]`.
/// The listener's `max_connections` caps QUIC connections too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http3Spec {
    /// Concurrent request streams a client may open on one connection.
    /// Default 100.
    pub max_concurrent_streams: u32,
    /// Flow-control window of one request body, in bytes. Default 1 MiB.
    pub stream_receive_window: u32,
    /// Flow-control window of a whole connection, in bytes. Default 8 MiB.
    pub receive_window: u32,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Once more than this many handshakes are in progress, new clients
    /// must prove their address with a retry token first (one extra round
    /// trip). 0 asks every client. Default 64.
    pub retry_threshold: u32,
    /// Accept 0-RTT early data (replayable; only safe methods are served
    /// from it, others get 425 Too Early). Default off.
    pub early_data: bool,
    /// `max-age` of the `Alt-Svc` header advertising HTTP/3 on TCP
    /// responses; zero sends no header. Default 24 h.
    pub alt_svc_max_age: Duration,
}

impl Default for Http3Spec {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            stream_receive_window: 1 << 20,
            receive_window: 8 << 20,
            idle_timeout: Duration::from_secs(30),
            retry_threshold: 64,
            early_data: false,
            alt_svc_max_age: Duration::from_secs(86_400),
        }
    }
}

/// TLS termination settings.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// Certificates; the first is the default when SNI matches none.
    pub certificates: Vec<CertSpec>,
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// Client certificate requirement.
    pub client_auth: ClientAuth,
}

/// A certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// SNI names it serves; empty = taken from nothing, only the default.
    pub server_names: Vec<String>,
}

/// TLS protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// Client certificate verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// Asked for and verified if sent.
    Optional {
        /// Trusted CA bundle.
        ca: PathBuf,
    },
    /// Required and verified.
    Require {
        /// Trusted CA bundle.
        ca: PathBuf,
    },
}

/// The largest `max_header_bytes` a listener may set (1 MiB).
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Listener limits and timeouts.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Largest request head (request line and headers). Default 32 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in one request. Default 100.
    pub max_headers: usize,
    /// Most concurrent connections. Default 10 000.
    pub max_connections: u32,
    /// Largest request body; `None` = unlimited (streamed).
    pub max_request_body_bytes: Option<u64>,
    /// Time allowed to receive the request head. Default 10 s.
    pub header_read_timeout: Duration,
    /// Idle keep-alive connection lifetime. Default 60 s.
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests. Default 30 s.
    pub drain_timeout: Duration,
    /// Read buffer kept per client connection in front of TLS and the
    /// HTTP parsers, in bytes; 0 = none (reads go straight to the socket).
    /// Default 0: an idle connection then holds no large buffer.
    pub read_buffer_bytes: usize,
}

impl Default for ListenerLimits {
    /// The documented defaults: what a listener without `limits` gets.
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_request_body_bytes: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            read_buffer_bytes: 0,
        }
    }
}

/// JWT signature algorithms we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
    /// HMAC SHA-256 (shared secret; only when configured explicitly).
    Hs256,
    /// HMAC SHA-384.
    Hs384,
    /// HMAC SHA-512.
    Hs512,
}

impl JwtAlgorithm {
    /// All algorithms with their JOSE names.
    pub const ALL: [(&'static str, JwtAlgorithm); 12] = [
        ("RS256", JwtAlgorithm::Rs256),
        ("RS384", JwtAlgorithm::Rs384),
        ("RS512", JwtAlgorithm::Rs512),
        ("PS256", JwtAlgorithm::Ps256),
        ("PS384", JwtAlgorithm::Ps384),
        ("PS512", JwtAlgorithm::Ps512),
        ("ES256", JwtAlgorithm::Es256),
        ("ES384", JwtAlgorithm::Es384),
        ("EdDSA", JwtAlgorithm::EdDsa),
        ("HS256", JwtAlgorithm::Hs256),
        ("HS384", JwtAlgorithm::Hs384),
        ("HS512", JwtAlgorithm::Hs512),
    ];

    /// The JOSE name (`RS256`).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }

    /// Shared-secret (HMAC) algorithm?
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::Hs256 | JwtAlgorithm::Hs384 | JwtAlgorithm::Hs512
        )
    }
}

/// Where a JWT provider's verification keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeySource {
    /// A JWKS document on disk, re-read on reload.
    JwksFile(PathBuf),
    /// A JWKS document fetched over HTTPS (HTTP only on loopback).
    JwksUrl(String),
    /// An HMAC secret on disk (HS* algorithms only).
    SecretFile(PathBuf),
}

/// One JWT issuer we trust.
#[derive(Debug, Clone)]
pub struct JwtProviderSpec {
    /// Name routes refer to.
    pub name: String,
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values; the token must carry one of them.
    pub audiences: Vec<String>,
    /// Accepted algorithms (pinned; the token's `alg` must be one).
    pub algorithms: Vec<JwtAlgorithm>,
    /// Key source.
    pub keys: JwtKeySource,
    /// How often a JWKS URL is refreshed. Default 5 min.
    pub refresh_interval: Duration,
    /// Clock skew allowed on `exp`/`nbf`. Default 30 s.
    pub leeway: Duration,
    /// Header the token is read from (as `Bearer <token>`). Default
    /// `authorization`.
    pub from_header: HeaderName,
    /// Cookie the token may be read from instead.
    pub from_cookie: Option<String>,
    /// Pass the token on to the upstream. Default false.
    pub forward_token: bool,
    /// Claims copied into request headers: (claim, header).
    pub forward_claims: Vec<(String, HeaderName)>,
}

/// Where a per-request key (sticky split, consistent hash) is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKey {
    /// A request header.
    Header(HeaderName),
    /// A verified JWT claim.
    Claim(String),
    /// A cookie.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

impl RequestKey {
    /// This request's key, borrowed from the request where it can be.
    /// `claims` are the verified JWT claims (none on routes without
    /// `auth`, so a claim key is then absent); `client` is the peer address.
    /// Shared by every listener, so one user gets the same key whichever
    /// protocol they arrive on.
    pub fn value<'a>(
        &self,
        headers: &'a http::HeaderMap,
        client: Option<std::net::IpAddr>,
        claims: Option<&serde_json::Value>,
    ) -> Option<std::borrow::Cow<'a, [u8]>> {
        use std::borrow::Cow;
        match self {
            RequestKey::Header(h) => headers.get(h).map(|v| Cow::Borrowed(v.as_bytes())),
            RequestKey::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then_some(Cow::Borrowed(v.as_bytes()))
                }),
            RequestKey::SourceIp => client.map(|ip| Cow::Owned(ip.to_string().into_bytes())),
            RequestKey::Claim(name) => claims
                .and_then(|c| meshgate_policy::authz::claim_at(c, name))
                .filter(|v| !v.is_null())
                .map(|v| Cow::Owned(meshgate_policy::authz::claim_as_header_text(v).into_bytes())),
        }
    }
}

/// How a service's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Listed in the config.
    Static,
    /// Registered by sidecars with the control plane.
    Mesh,
}

/// Protocol spoken to upstream endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (over TLS when `tls` is on, else prior knowledge).
    Http2,
}

/// Transport security towards upstream endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plaintext (only for endpoints outside the mesh).
    None,
    /// Server-authenticated TLS (public endpoints).
    Tls,
    /// Mesh mTLS with SPIFFE identities.
    Mesh,
}

/// One static endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Address.
    pub address: SocketAddr,
    /// Labels (`version = "v2"`) that subsets select on.
    pub labels: BTreeMap<String, String>,
    /// Relative weight for balancing. Default 1.
    pub weight: u32,
}

/// A named group of endpoints selected by labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetSpec {
    /// Name split targets refer to.
    pub name: String,
    /// All of these labels must be on an endpoint.
    pub labels: BTreeMap<String, String>,
}

impl SubsetSpec {
    /// Does an endpoint with these labels belong here?
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A weighted split over subsets.
#[derive(Debug, Clone)]
pub struct SplitSpec {
    /// Targets are subset names; weights are percentages summing to 100.
    pub split: Split,
    /// For each split target, its index in the service's `subsets`
    /// (resolved at load, so a request never looks subsets up by name).
    pub target_subsets: Vec<usize>,
    /// Key that makes the choice sticky per user.
    pub sticky: Option<RequestKey>,
    /// Header whose value names a subset to force (for testers).
    pub override_header: Option<HeaderName>,
}

/// The shortest idle lifetime a pooled upstream connection may be given:
/// a service's `idle_timeout`, and a sidecar's `--app-idle-timeout`.
pub const POOL_IDLE_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// The longest, for the same two.
pub const POOL_IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(86_400);

/// One upstream service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Name routes and splits refer to.
    pub name: String,
    /// How endpoints are found.
    pub discovery: Discovery,
    /// Static endpoints.
    pub endpoints: Vec<EndpointSpec>,
    /// Subsets by labels.
    pub subsets: Vec<SubsetSpec>,
    /// Weighted split over subsets.
    pub split: Option<SplitSpec>,
    /// Load-balancing algorithm. Default peak-EWMA.
    pub lb: Algorithm,
    /// EWMA parameters for peak-EWMA.
    pub ewma: EwmaConfig,
    /// Key for consistent hashing.
    pub hash_on: Option<RequestKey>,
    /// Protocol to the endpoints. Default http1.
    pub protocol: UpstreamProtocol,
    /// Transport security. Default mesh for mesh services, none for static.
    pub tls: UpstreamTls,
    /// TCP+TLS connect timeout. Default 1 s.
    pub connect_timeout: Duration,
    /// Idle pooled connection lifetime. Default 60 s.
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per endpoint. Default 128.
    pub max_idle_per_endpoint: u32,
    /// Whether HTTP/1.1 requests forwarded to its endpoints keep the case
    /// of header names their client sent. Default false: names go out in
    /// the header map's own (mostly lower) case.
    pub preserve_header_case: bool,
    /// Circuit-breaker limits.
    pub limits: Limits,
    /// Outlier detection.
    pub outlier: OutlierConfig,
    /// Retry budget shared by the service's routes.
    pub retry_budget: RetryBudgetConfig,
    /// How sidecars call it (`[service.calls]`).
    pub calls: CallsSpec,
    /// Which mesh identities may call it.
    pub callers: IdentityPolicy,
}

impl ServiceSpec {
    /// Whether requests reach its endpoints with header names spelled as
    /// their HTTP/1.1 client wrote them: only with `preserve_header_case`,
    /// and only over HTTP/1.1 (HTTP/2 names are lower case on the wire).
    pub fn keeps_header_case(&self) -> bool {
        self.preserve_header_case && self.protocol == UpstreamProtocol::Http1
    }
}

/// How sidecars call a service: the route each sidecar's outbound side
/// gets for it (the control plane renders it from `[service.calls]`).
#[derive(Debug, Clone)]
pub struct CallsSpec {
    /// Overall deadline per call. Default 15 s.
    pub timeout: Duration,
    /// Retry policy; `None` means the default (two retries on
    /// connect-failure, reset and gateway-error, idempotent requests only).
    pub retry: Option<Arc<RetryPolicy>>,
}

impl Default for CallsSpec {
    fn default() -> Self {
        CallsSpec {
            timeout: Duration::from_secs(15),
            retry: None,
        }
    }
}

/// Mesh enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshMode {
    /// Inbound ports take mTLS only.
    Strict,
    /// Inbound ports also take plaintext (migration only).
    Permissive,
}

/// Where the mesh CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// Generated on first start and kept under the state directory.
    Generated,
    /// Supplied by the operator.
    Files {
        /// Root (or intermediate) certificate, PEM.
        cert: PathBuf,
        /// Its key, PEM.
        key: PathBuf,
    },
}

/// The mesh.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// SPIFFE trust domain. Default `meshgate.local`.
    pub trust_domain: String,
    /// Workload certificate lifetime. Default 24 h.
    pub workload_cert_ttl: Duration,
    /// Enforcement mode. Default strict.
    pub mode: MeshMode,
    /// Where sidecars reach the control plane. Default `127.0.0.1:15012`.
    pub control_plane_address: SocketAddr,
    /// CA.
    pub ca: CaSource,
    /// State directory (CA, issued certificates). Default
    /// `/var/lib/meshgate`.
    pub state_dir: PathBuf,
    /// Token sidecars present to join.
    pub join_token: Option<Secret>,
}

/// Access log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// One readable line per request: the request line, status, bytes
    /// and duration first, as in the Apache/nginx combined format, then
    /// meshgate's fields as `key=value`.
    Combined,
    /// No access log.
    Off,
}

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Appended to a file.
    File(PathBuf),
}

/// `[observability.tracing]`: W3C trace context is propagated (and
/// created when a request has none) whatever this says; spans are
/// exported only with an `otlp_endpoint`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSpec {
    /// OTLP/HTTP (protobuf) traces URL of the collector, e.g.
    /// `http://127.0.0.1:4318/v1/traces`. `None`: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled when the caller did not decide, 0.0-1.0.
    /// Default 1.0.
    pub sampling_ratio: f64,
    /// `service.name` of exported spans; `None`: `meshgate` on the
    /// appliance, the service's name on a sidecar.
    pub service_name: Option<String>,
    /// Most spans sent in one export request. Default 512.
    pub batch_size: usize,
    /// Longest a finished span waits before it is sent. Default 5 s.
    pub flush_interval: Duration,
    /// Most finished spans waiting for export; more are dropped and
    /// counted. Default 2048.
    pub queue_capacity: usize,
    /// Limit on one export request. Default 10 s.
    pub export_timeout: Duration,
}

impl Default for TracingSpec {
    fn default() -> Self {
        TracingSpec {
            otlp_endpoint: None,
            sampling_ratio: 1.0,
            service_name: None,
            batch_size: 512,
            flush_interval: Duration::from_secs(5),
            queue_capacity: 2048,
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// Metrics, logs and traces.
#[derive(Debug, Clone)]
pub struct ObservabilitySpec {
    /// Default log filter (`info`, `debug`, `meshgate=debug,warn`).
    pub log_level: String,
    /// Prometheus metrics on the admin API.
    pub metrics_enabled: bool,
    /// Path of the metrics endpoint. Default `/metrics`.
    pub metrics_path: String,
    /// Access log format. Default json.
    pub access_log_format: AccessLogFormat,
    /// Access log target. Default stdout.
    pub access_log_target: LogTarget,
    /// Share of successful requests logged, 0-100. Default 100. Requests
    /// that failed (5xx, no response, or a proxy reason) are always logged.
    pub access_log_sample_percent: u8,
    /// JWT claim logged as the request's `user` on routes with `auth`;
    /// `None` (the default) logs no user.
    pub access_log_user_claim: Option<String>,
    /// Routes with `access_log = false`: never logged.
    pub access_log_off: BTreeSet<String>,
    /// Distributed tracing (`[observability.tracing]`).
    pub tracing: Arc<TracingSpec>,
}

/// A route as listed by the admin API and `check --diff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSummary {
    /// Route name.
    pub name: String,
    /// Host patterns as written.
    pub hosts: Vec<String>,
    /// Listener names it is bound to.
    pub listeners: Vec<String>,
    /// A one-line description of what it matches and does.
    pub description: String,
    /// Whether its requests go to the access log (`access_log`, default
    /// true).
    pub access_log: bool,
}

#[cfg(test)]
mod tests {
    use super::RequestKey;
    use http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn request_keys_come_from_headers_cookies_claims_and_the_peer() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("u-1"));
        h.append("cookie", HeaderValue::from_static("a=1; session=abc"));
        let claims = serde_json::json!({"sub": "alice", "n": null});
        let ip = Some("10.1.2.3".parse().expect("ip"));
        let key = |k: RequestKey| k.value(&h, ip, Some(&claims)).map(|v| v.into_owned());
        assert_eq!(
            key(RequestKey::Header(HeaderName::from_static("x-user-id"))),
            Some(b"u-1".to_vec())
        );
        assert_eq!(
            key(RequestKey::Cookie("session".into())),
            Some(b"abc".to_vec())
        );
        assert_eq!(key(RequestKey::Cookie("missing".into())), None);
        assert_eq!(
            key(RequestKey::Claim("sub".into())),
            Some(b"alice".to_vec())
        );
        assert_eq!(key(RequestKey::Claim("n".into())), None);
        assert_eq!(key(RequestKey::SourceIp), Some(b"10.1.2.3".to_vec()));
        assert_eq!(RequestKey::Claim("sub".into()).value(&h, ip, None), None);
    }
}
