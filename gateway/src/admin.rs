//! The admin API: what runs on `[admin] address` (the appliance) or
//! `--admin` (a sidecar). Plain HTTP/1.1, JSON answers:
//!
//! - `GET /healthz`: liveness, 200 while the process runs;
//! - `GET /readyz` (and its alias `GET /ready`): 200 once every listener
//!   accepts connections, 503 before and while draining (SIGTERM or `POST /drain`);
//! - `GET /metrics`: Prometheus text format ([`crate::metrics`]), at
//!   `[observability.metrics] path` when metrics are enabled;
//! - `GET /config`: the effective config text, secrets redacted, with its
//!   version, digest, origin and load time;
//! - `PUT /config`: validate and apply a new config text (token needed);
//! - `GET /routes`, `GET /services`, `GET /certificates`: what the data
//!   path is working with, including live endpoint health;
//! - `PUT /log-level`: replace the log filter (token needed);
//! - `PUT /services/{name}/split`: set a split's weights at run time, an
//!   override kept over reloads until `DELETE /services/{name}/split`
//!   (token needed; see [`meshgate_config::SplitOverrides`]);
//! - `POST /drain`: `/readyz` turns 503 and HTTP/1.1 keep-alive
//!   connections close after their current request, while new requests
//!   are still served until the process is stopped (token needed).
//!
//! It runs on its own thread and tokio runtime, apart from the pingora
//! workers, so a busy data path cannot starve it.
//!
//! Tokens: every write needs `authorization: Bearer <token>`; with no
//! token configured writes are refused (403), so an unconfigured admin
//! port can look but never touch. Reads need the token only when one is
//! configured and the address is not loopback (the config refuses a
//! non-loopback address without a token).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use meshgate_config::{ConfigStore, Discovery, ReloadOutcome, Snapshot};
use meshgate_policy::breaker::Health;
use serde_json::{Value, json};

use crate::mesh::MeshTls;
use crate::runtime::Runtimes;
use crate::tls::LiveCerts;

/// The largest `PUT` body taken in.
const MAX_BODY: usize = 4 << 20;

/// What the endpoint serves.
#[derive(Debug, Clone)]
pub(crate) struct AdminOptions {
    pub(crate) address: SocketAddr,
    /// Path of the metrics; `None` turns them off.
    pub(crate) metrics_path: Option<String>,
    /// Bearer token for writes (and for reads off loopback).
    pub(crate) token: Option<String>,
    /// The live config.
    pub(crate) store: Arc<ConfigStore>,
    /// Live per-service state (endpoint health, budgets).
    pub(crate) runtimes: Arc<Runtimes>,
    /// This process's mesh identity.
    pub(crate) mesh: Arc<MeshTls>,
    /// Addresses that must accept connections before `/readyz` says yes.
    pub(crate) ready_when: Vec<SocketAddr>,
    /// Live certificates of each TLS listener, swapped after `PUT /config`
    /// as after a file reload.
    pub(crate) certs: HashMap<String, Arc<LiveCerts>>,
    /// Whether `PUT /config` may replace the config; a sidecar's comes
    /// from the control plane.
    pub(crate) config_writes: bool,
}

/// Binds now (a taken port is a start-up error) and serves on a thread.
pub(crate) fn start(opts: AdminOptions) -> Result<(), String> {
    let std_listener = std::net::TcpListener::bind(opts.address)
        .map_err(|e| format!("admin API cannot bind {}: {e}", opts.address))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("admin API socket: {e}"))?;
    let address = opts.address;
    let opts = Arc::new(opts);
    crate::server::spawn_runtime("admin", async move {
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin socket");
                return;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let opts = opts.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let opts = opts.clone();
                    async move { Ok::<_, Infallible>(handle(&opts, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })?;
    tracing::info!(%address, "admin API listening");
    Ok(())
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    let mut s = serde_json::to_string_pretty(body).unwrap_or_default();
    s.push('\n');
    text(status, "application/json", s)
}

fn error(status: StatusCode, message: &str) -> Resp {
    json_resp(status, &json!({ "error": message }))
}

/// Whether the request carries the token (compared without stopping at
/// the first difference).
fn has_token(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|p| {
            p.len() == token.len()
                && p.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

fn unauthorized() -> Resp {
    let mut r = error(StatusCode::UNAUTHORIZED, "admin token required");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"meshgate-admin\""),
    );
    r
}

/// Whether a request may go on, from what it is and what is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Allowed,
    /// 401: a token is configured and this request needs it.
    NeedsToken,
    /// 403: a write, with no token configured.
    WritesDisabled,
}

/// `token` is `None` with no token configured, else whether the request
/// presented the right one.
fn access(write: bool, token: Option<bool>, loopback: bool) -> Access {
    match token {
        Some(false) if write || !loopback => Access::NeedsToken,
        None if write => Access::WritesDisabled,
        _ => Access::Allowed,
    }
}

async fn handle(opts: &AdminOptions, req: Request<Incoming>) -> Resp {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let token = opts.token.as_deref().map(|t| has_token(&req, t));
    match access(write, token, opts.address.ip().is_loopback()) {
        Access::Allowed => {}
        Access::NeedsToken => return unauthorized(),
        Access::WritesDisabled => {
            return error(
                StatusCode::FORBIDDEN,
                "admin writes are disabled: configure [admin] token, token_file or token_env to enable them",
            );
        }
    }
    let path = req.uri().path().to_owned();
    if !write && opts.metrics_path.as_deref() == Some(path.as_str()) {
        // Read at scrape time: a sidecar's config also changes by push.
        let snap = opts.store.current();
        crate::metrics::config_version(snap.version);
        crate::metrics::endpoint_states(&snap, &opts.runtimes);
        return text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(),
        );
    }
    let method = req.method().clone();
    match (path.as_str(), write) {
        ("/healthz", false) => json_resp(StatusCode::OK, &json!({ "status": "alive" })),
        ("/readyz" | "/ready", false) => readyz(opts).await,
        ("/config", false) => json_resp(StatusCode::OK, &config_json(&opts.store.current())),
        ("/routes", false) => json_resp(StatusCode::OK, &routes_json(&opts.store.current())),
        ("/services", false) => json_resp(StatusCode::OK, &services_json(opts)),
        ("/certificates", false) => json_resp(StatusCode::OK, &certificates_json(&opts.mesh)),
        ("/config", true) if method == Method::PUT && !opts.config_writes => error(
            StatusCode::CONFLICT,
            "this sidecar's config comes from the control plane: change it on the appliance",
        ),
        ("/config", true) if method == Method::PUT => match body_text(req).await {
            Ok(body) => put_config(opts, &body),
            Err(r) => r,
        },
        ("/drain", true) if method == Method::POST => drain(),
        (p, true) if split_path(p).is_some() && method == Method::PUT => {
            let service = split_path(p).unwrap_or_default().to_owned();
            match body_text(req).await {
                Ok(body) => put_split(opts, &service, &body),
                Err(r) => r,
            }
        }
        (p, true) if split_path(p).is_some() && method == Method::DELETE => {
            delete_split(opts, split_path(p).unwrap_or_default())
        }
        ("/log-level", true) if method == Method::PUT => match body_text(req).await {
            Ok(body) => put_log_level(&body),
            Err(r) => r,
        },
        (
            "/healthz" | "/readyz" | "/ready" | "/config" | "/routes" | "/services"
            | "/certificates" | "/log-level" | "/drain",
            _,
        ) => method_not_allowed(match path.as_str() {
            "/config" => "GET, HEAD, PUT",
            "/log-level" => "PUT",
            "/drain" => "POST",
            _ => "GET, HEAD",
        }),
        (p, _) if split_path(p).is_some() => method_not_allowed("PUT, DELETE"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

/// The service of `/services/{name}/split`.
fn split_path(path: &str) -> Option<&str> {
    path.strip_prefix("/services/")?
        .strip_suffix("/split")
        .filter(|s| !s.is_empty() && !s.contains('/'))
}

/// The body of `PUT /services/{name}/split`: the shape of `[service.split]
/// targets` and of the split in `GET /services`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    targets: Vec<SplitBodyTarget>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBodyTarget {
    subset: String,
    weight: u32,
}

fn put_split(opts: &AdminOptions, service: &str, body: &str) -> Resp {
    let parsed: SplitBody = match serde_json::from_str(body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body is not a split: {e}; send {{\"targets\": [{{\"subset\": \"v1\", \"weight\": 90}}, ...]}}"
                ),
            );
        }
    };
    let targets = parsed
        .targets
        .into_iter()
        .map(|t| meshgate_policy::split::SplitTarget {
            name: t.subset,
            weight: t.weight,
        })
        .collect();
    match opts.store.set_split(service, targets) {
        Ok(outcome) => {
            let version = reload_outcome(&outcome, "split override");
            split_answer(opts, service, version)
        }
        Err(e @ meshgate_config::SplitOverrideError::UnknownService(_)) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn delete_split(opts: &AdminOptions, service: &str) -> Resp {
    match opts.store.clear_split(service) {
        Some(outcome) => {
            let version = reload_outcome(&outcome, "split override cleared");
            split_answer(opts, service, version)
        }
        None => error(
            StatusCode::NOT_FOUND,
            &format!("service \"{service}\" has no split override"),
        ),
    }
}

/// Counts and logs a change made through the admin API; the version
/// serving afterwards.
fn reload_outcome(outcome: &ReloadOutcome, what: &str) -> u64 {
    match outcome {
        ReloadOutcome::Unchanged { version } => {
            crate::metrics::config_reload("unchanged", *version);
            *version
        }
        ReloadOutcome::Applied { version, diff } => {
            crate::metrics::config_reload("applied", *version);
            tracing::info!(version, trigger = "admin API", "{what} applied:\n{diff}");
            *version
        }
    }
}

/// The service's split as `GET /services` shows it, with the version.
fn split_answer(opts: &AdminOptions, service: &str, version: u64) -> Resp {
    let snap = opts.store.current();
    let overrides = opts.store.split_overrides();
    let configured = opts.store.configured();
    let split = snap.service(service).map(|s| {
        split_json(
            s,
            configured.service(service),
            overrides.contains_key(service),
        )
    });
    json_resp(
        StatusCode::OK,
        &json!({ "version": version, "service": service, "split": split }),
    )
}

fn split_json(
    spec: &meshgate_config::ServiceSpec,
    configured: Option<&Arc<meshgate_config::ServiceSpec>>,
    overridden: bool,
) -> Option<Value> {
    let targets = |sp: &meshgate_config::SplitSpec| -> Vec<Value> {
        let total = sp.split.total_weight().max(1);
        sp.split
            .targets()
            .iter()
            .map(|t| {
                json!({
                    "subset": t.name,
                    "weight": t.weight,
                    "percent": (u64::from(t.weight) * 10_000 / total) as f64 / 100.0,
                })
            })
            .collect()
    };
    let s = spec.split.as_ref()?;
    let mut out = json!({ "targets": targets(s), "override": overridden });
    if overridden {
        out["configured_targets"] = configured
            .and_then(|c| c.split.as_ref())
            .map_or(Value::Null, |c| Value::Array(targets(c)));
    }
    Some(out)
}

/// Starts draining: `/readyz` answers 503 from now on, keep-alive
/// connections close after their current request and idle ones at once.
/// Serving goes on until the process is stopped (SIGTERM then waits only
/// for what is in flight).
fn drain() -> Resp {
    let already = crate::server::start_drain();
    if !already {
        tracing::info!(
            trigger = "admin API",
            "draining: readyz is 503, keep-alive connections close"
        );
    }
    json_resp(
        StatusCode::OK,
        &json!({
            "status": "draining",
            "in_flight": crate::edge::IN_FLIGHT.load(Ordering::Relaxed),
        }),
    )
}

async fn body_text(req: Request<Incoming>) -> Result<String, Resp> {
    let collected = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            )
        })?;
    String::from_utf8(collected.to_bytes().to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the body is not UTF-8"))
}

/// Whether every listener has accepted a probe connection once; they stay
/// bound until exit, so probing stops there (no stray connections on the
/// data path for every readiness check).
static LISTENERS_UP: AtomicBool = AtomicBool::new(false);

async fn readyz(opts: &AdminOptions) -> Resp {
    if crate::server::DRAINING.load(Ordering::Relaxed) {
        return json_resp(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "draining" }),
        );
    }
    if LISTENERS_UP.load(Ordering::Relaxed) {
        return json_resp(StatusCode::OK, &json!({ "status": "ready" }));
    }
    let mut waiting = Vec::new();
    for addr in &opts.ready_when {
        // A wildcard bind is reached through loopback.
        let mut probe = *addr;
        if probe.ip().is_unspecified() {
            probe.set_ip(if probe.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let ok = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(probe),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !ok {
            waiting.push(addr.to_string());
        }
    }
    if waiting.is_empty() {
        LISTENERS_UP.store(true, Ordering::Relaxed);
        json_resp(StatusCode::OK, &json!({ "status": "ready" }))
    } else {
        json_resp(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "starting", "waiting_for": waiting }),
        )
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn config_json(snap: &Snapshot) -> Value {
    json!({
        "version": snap.version,
        "digest": snap.digest,
        "origin": snap.origin,
        "loaded_at": rfc3339(snap.loaded_at),
        "text": redact(&snap.source_text),
    })
}

/// Keys whose values never leave the process.
fn secret_key(key: &str) -> bool {
    let k = key.trim().trim_matches('"').to_ascii_lowercase();
    (k.ends_with("token") || k.ends_with("secret") || k.ends_with("password"))
        && !k.ends_with("_file")
}

/// Replaces the quoted value of every secret key (`token = "..."`, also
/// inside inline tables) with `"<redacted>"`. TOML bare keys are ASCII
/// letters, digits, `_` and `-`, which is all this needs to recognise.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(&redact_line(line));
    }
    out
}

fn redact_line(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] == b'#' {
            break;
        }
        if bytes[i] != b'=' {
            i += 1;
            continue;
        }
        // The key is the run of key characters before the `=`.
        let before = line[..i].trim_end();
        let key_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '"'))
            .map_or(0, |p| p + 1);
        let key = &before[key_start..];
        let mut j = i + 1;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        if secret_key(key) && j < bytes.len() && (bytes[j] == b'"' || bytes[j] == b'\'') {
            let quote = bytes[j];
            let mut k = j + 1;
            while k < bytes.len() && bytes[k] != quote {
                if bytes[k] == b'\\' && quote == b'"' {
                    k += 1;
                }
                k += 1;
            }
            out.push_str(&line[copied..j]);
            out.push_str("\"<redacted>\"");
            copied = (k + 1).min(bytes.len());
            i = copied;
            continue;
        }
        i += 1;
    }
    out.push_str(&line[copied..]);
    out
}

fn put_config(opts: &AdminOptions, body: &str) -> Resp {
    let running = opts.store.current().version;
    match opts.store.apply_text(body, "<PUT /config>") {
        Ok(ReloadOutcome::Unchanged { version }) => {
            crate::metrics::config_reload("unchanged", version);
            tracing::info!(version, trigger = "admin API", "config unchanged");
            json_resp(
                StatusCode::OK,
                &json!({ "outcome": "unchanged", "version": version, "diff": "" }),
            )
        }
        Ok(ReloadOutcome::Applied { version, diff }) => {
            crate::metrics::config_reload("applied", version);
            tracing::info!(version, trigger = "admin API", "config applied:\n{diff}");
            crate::reload::reload_certificates(&opts.store, &opts.certs);
            let restart: Vec<String> = diff
                .needs_restart()
                .iter()
                .map(|c| format!("{} \"{}\"", c.section, c.name))
                .collect();
            json_resp(
                StatusCode::OK,
                &json!({
                    "outcome": "applied",
                    "version": version,
                    "diff": diff.to_string(),
                    "needs_restart": restart,
                }),
            )
        }
        Err(diags) => {
            crate::metrics::config_reload("rejected", running);
            tracing::error!(
                running_version = running,
                trigger = "admin API",
                "config rejected, still serving version {running}:\n{diags}"
            );
            text(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{diags}"),
            )
        }
    }
}

fn put_log_level(body: &str) -> Resp {
    let filter = body.trim();
    match crate::server::set_log_filter(filter) {
        Ok(()) => {
            tracing::info!(filter, "log level changed");
            json_resp(StatusCode::OK, &json!({ "log_level": filter }))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

fn routes_json(snap: &Snapshot) -> Value {
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|r| {
            // No `listeners` key means every listener.
            let listeners: Vec<&str> = if r.listeners.is_empty() {
                snap.listeners.iter().map(|l| l.name.as_str()).collect()
            } else {
                r.listeners.iter().map(String::as_str).collect()
            };
            json!({
                "name": r.name,
                "hosts": r.hosts,
                "listeners": listeners,
                "description": r.description,
                "access_log": r.access_log,
            })
        })
        .collect();
    json!({ "version": snap.version, "routes": routes })
}

fn services_json(opts: &AdminOptions) -> Value {
    let snap = opts.store.current();
    let overrides = opts.store.split_overrides();
    let configured = opts.store.configured();
    let now = Instant::now();
    let services: Vec<Value> = snap
        .services
        .iter()
        .map(|spec| {
            let state = opts.runtimes.service(&snap, spec);
            let endpoints: Vec<Value> = state
                .endpoints
                .iter()
                .map(|e| {
                    let subsets: Vec<&str> = spec
                        .subsets
                        .iter()
                        .filter(|s| s.selects(&e.spec.labels))
                        .map(|s| s.name.as_str())
                        .collect();
                    let health = match e.outlier.health(now) {
                        Health::Healthy => json!({ "state": "healthy" }),
                        Health::HalfOpen => json!({ "state": "half_open" }),
                        Health::Ejected { until } => json!({
                            "state": "ejected",
                            "ejected_for_ms": until.saturating_duration_since(now).as_millis() as u64,
                        }),
                    };
                    json!({
                        "address": e.spec.address.to_string(),
                        "labels": e.spec.labels,
                        "weight": e.spec.weight,
                        "subsets": subsets,
                        "health": health,
                        "ejections": e.outlier.ejection_count(),
                    })
                })
                .collect();
            let split = split_json(
                spec,
                configured.service(&spec.name),
                overrides.contains_key(&spec.name),
            );
            json!({
                "name": spec.name,
                "discovery": match spec.discovery {
                    Discovery::Static => "static",
                    Discovery::Mesh => "mesh",
                },
                "subsets": spec.subsets.iter().map(|s| json!({"name": s.name, "labels": s.labels})).collect::<Vec<_>>(),
                "split": split,
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "version": snap.version, "services": services })
}

fn certificates_json(mesh: &MeshTls) -> Value {
    match mesh.material() {
        None => json!({ "mesh": null }),
        Some(m) => json!({
            "mesh": {
                "identity": m.id,
                "not_before": rfc3339(m.not_before),
                "not_after": rfc3339(m.not_after),
                "not_after_unix": unix(m.not_after),
                "trust_bundle_roots": m.bundle.len(),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{Access, access, redact};

    #[test]
    fn writes_need_a_token_and_reads_need_one_off_loopback() {
        use Access::*;
        // (write, token: None = none configured, Some(the right one shown), loopback)
        let cases = [
            (false, None, true, Allowed),
            (false, None, false, Allowed),
            (true, None, true, WritesDisabled),
            (true, None, false, WritesDisabled),
            (false, Some(false), true, Allowed),
            (false, Some(false), false, NeedsToken),
            (false, Some(true), false, Allowed),
            (true, Some(false), true, NeedsToken),
            (true, Some(true), true, Allowed),
            (true, Some(true), false, Allowed),
        ];
        for (write, token, loopback, want) in cases {
            assert_eq!(
                access(write, token, loopback),
                want,
                "{write} {token:?} {loopback}"
            );
        }
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let t = "[admin]\ntoken = \"s3cr\\\"et\" # keep\naddress = \"127.0.0.1:1\"\n\
                 x = { join_token = 'abc', name = \"n\" }\ntoken_file = \"/etc/t\"\n";
        let r = redact(t);
        assert!(!r.contains("s3cr"), "{r}");
        assert!(!r.contains("abc"), "{r}");
        assert!(r.contains("token = \"<redacted>\" # keep"), "{r}");
        assert!(r.contains("name = \"n\""), "{r}");
        assert!(r.contains("token_file = \"/etc/t\""), "{r}");
        assert!(r.contains("address = \"127.0.0.1:1\""), "{r}");
    }
}
