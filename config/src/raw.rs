//! The TOML schema exactly as a user writes it.
//!
//! These structs only give the file its shape: unknown keys are refused
//! (`deny_unknown_fields`) and values whose meaning needs checking (durations,
//! addresses, enumerated words, references to other sections) stay spanned
//! strings here, so that [`crate::validate`] can report every problem with
//! its line and column in one pass instead of stopping at the first.
//!
//! Every key is documented, with unit and default, in `config/README.md`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A spanned string: the value and where it sits in the file.
pub(crate) type S = Spanned<String>;
/// A spanned integer.
pub(crate) type N = Spanned<i64>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub admin: Option<Spanned<RawAdmin>>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "jwt_provider")]
    pub jwt_providers: Vec<Spanned<RawJwtProvider>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
    pub mesh: Option<Spanned<RawMesh>>,
    pub observability: Option<RawObservability>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub address: Option<S>,
    pub token: Option<S>,
    pub token_file: Option<S>,
    pub token_env: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: S,
    pub address: S,
    pub protocols: Option<Spanned<Vec<S>>>,
    pub tls: Option<Spanned<RawTls>>,
    pub limits: Option<RawListenerLimits>,
    pub http3: Option<Spanned<RawHttp3>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp3 {
    pub max_concurrent_streams: Option<N>,
    pub stream_receive_window: Option<N>,
    pub receive_window: Option<N>,
    pub idle_timeout: Option<S>,
    pub retry_threshold: Option<N>,
    pub early_data: Option<bool>,
    pub alt_svc_max_age: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    #[serde(default)]
    pub certificates: Vec<Spanned<RawCertificate>>,
    pub min_version: Option<S>,
    pub client_auth: Option<Spanned<RawClientAuth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: S,
    pub key: S,
    pub server_names: Option<Vec<S>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientAuth {
    pub mode: S,
    pub ca: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerLimits {
    pub max_header_bytes: Option<N>,
    pub max_headers: Option<N>,
    pub max_connections: Option<N>,
    pub max_request_body_bytes: Option<N>,
    pub header_read_timeout: Option<S>,
    pub idle_timeout: Option<S>,
    pub drain_timeout: Option<S>,
    pub read_buffer_bytes: Option<N>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwtProvider {
    pub name: S,
    pub issuer: S,
    #[serde(default)]
    pub audiences: Vec<S>,
    pub algorithms: Spanned<Vec<S>>,
    pub jwks_file: Option<S>,
    pub jwks_url: Option<S>,
    pub secret_file: Option<S>,
    pub refresh_interval: Option<S>,
    pub leeway: Option<S>,
    pub from_header: Option<S>,
    pub from_cookie: Option<S>,
    pub forward_token: Option<bool>,
    pub forward_claims: Option<BTreeMap<String, S>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: S,
    pub listeners: Option<Vec<S>>,
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<RawMatch>>,
    pub service: Option<S>,
    pub redirect: Option<Spanned<RawRedirect>>,
    pub respond: Option<Spanned<RawRespond>>,
    pub rewrite: Option<Spanned<RawRewrite>>,
    pub timeout: Option<S>,
    pub retry: Option<Spanned<RawRetry>>,
    pub auth: Option<Spanned<RawAuth>>,
    pub request_headers: Option<RawHeaderRules>,
    pub response_headers: Option<RawHeaderRules>,
    pub mirror: Option<Spanned<RawMirror>>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub hosts: Option<Vec<S>>,
    pub path: Option<S>,
    pub path_prefix: Option<S>,
    pub path_regex: Option<S>,
    pub methods: Option<Vec<S>>,
    #[serde(default)]
    pub headers: Vec<Spanned<RawValueMatch>>,
    #[serde(default)]
    pub query: Vec<Spanned<RawValueMatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawValueMatch {
    pub name: S,
    pub exact: Option<S>,
    pub regex: Option<S>,
    pub present: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub status: Option<N>,
    pub scheme: Option<S>,
    pub host: Option<S>,
    pub path: Option<S>,
    pub path_prefix: Option<S>,
    pub strip_query: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    pub status: Option<N>,
    pub body: Option<String>,
    pub builtin: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRewrite {
    pub path: Option<S>,
    pub path_prefix: Option<S>,
    pub host: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub max_retries: Option<N>,
    pub on: Option<Vec<S>>,
    pub per_try_timeout: Option<S>,
    pub backoff_base: Option<S>,
    pub backoff_max: Option<S>,
    pub retry_non_idempotent: Option<bool>,
    pub honor_retry_after: Option<bool>,
    pub max_retry_after: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub provider: S,
    #[serde(default)]
    pub require: Vec<Spanned<RawClaimRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClaimRule {
    pub claim: S,
    pub equals: Option<S>,
    pub one_of: Option<Vec<S>>,
    pub contains: Option<S>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderRules {
    #[serde(default)]
    pub set: BTreeMap<String, S>,
    #[serde(default)]
    pub add: BTreeMap<String, S>,
    #[serde(default)]
    pub remove: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMirror {
    pub service: S,
    pub percent: Option<N>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: S,
    pub discovery: Option<S>,
    #[serde(default)]
    pub endpoints: Vec<Spanned<RawEndpoint>>,
    #[serde(default, rename = "subset")]
    pub subsets: Vec<Spanned<RawSubset>>,
    pub split: Option<Spanned<RawSplit>>,
    pub lb: Option<S>,
    pub hash_on: Option<Spanned<RawKeySource>>,
    pub protocol: Option<S>,
    pub tls: Option<S>,
    pub connect_timeout: Option<S>,
    pub idle_timeout: Option<S>,
    pub max_idle_per_endpoint: Option<N>,
    pub preserve_header_case: Option<bool>,
    pub circuit_breaker: Option<RawLimits>,
    pub outlier_detection: Option<Spanned<RawOutlier>>,
    pub retry_budget: Option<Spanned<RawRetryBudget>>,
    pub calls: Option<RawCalls>,
}

/// `[service.calls]`: how sidecars call the service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCalls {
    pub timeout: Option<S>,
    pub retry: Option<Spanned<RawRetry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub address: S,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub weight: Option<N>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubset {
    pub name: S,
    pub labels: Spanned<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSplit {
    pub targets: Spanned<Vec<Spanned<RawSplitTarget>>>,
    pub sticky: Option<Spanned<RawKeySource>>,
    pub override_header: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSplitTarget {
    pub subset: S,
    pub weight: N,
}

/// Where a per-request key comes from (sticky splits, consistent hashing).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeySource {
    pub header: Option<S>,
    pub claim: Option<S>,
    pub cookie: Option<S>,
    pub source_ip: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_connections: Option<N>,
    pub max_pending_requests: Option<N>,
    pub max_requests: Option<N>,
    pub max_retries: Option<N>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<N>,
    pub failure_rate_percent: Option<N>,
    pub min_requests: Option<N>,
    pub window: Option<S>,
    pub base_ejection: Option<S>,
    pub max_ejection: Option<S>,
    pub max_ejected_percent: Option<N>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetryBudget {
    pub ratio_percent: Option<N>,
    pub min_retries_per_second: Option<N>,
    pub ttl: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMesh {
    pub trust_domain: Option<S>,
    pub workload_cert_ttl: Option<S>,
    pub mode: Option<S>,
    pub control_plane_address: Option<S>,
    pub ca_cert_file: Option<S>,
    pub ca_key_file: Option<S>,
    pub state_dir: Option<S>,
    pub join_token_file: Option<S>,
    #[serde(default)]
    pub authorization: Vec<Spanned<RawAuthorization>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthorization {
    pub service: S,
    pub allow: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawObservability {
    pub log_level: Option<S>,
    pub metrics: Option<RawMetrics>,
    pub access_log: Option<RawAccessLog>,
    pub tracing: Option<Spanned<RawTracing>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub enabled: Option<bool>,
    pub path: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub format: Option<S>,
    pub path: Option<S>,
    pub sample_percent: Option<N>,
    pub user_claim: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    pub otlp_endpoint: Option<S>,
    /// A number from 0.0 to 1.0; an integer (`0`, `1`) is accepted too,
    /// so it stays a TOML value until validation.
    pub sampling_ratio: Option<Spanned<toml::Value>>,
    pub service_name: Option<S>,
    pub batch_size: Option<N>,
    pub flush_interval: Option<S>,
    pub queue_capacity: Option<N>,
    pub export_timeout: Option<S>,
}
