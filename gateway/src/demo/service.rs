//! `meshgate demo service`: the small HTTP/1.1 application behind each
//! demo sidecar.
//!
//! It answers every request with JSON saying which service, version and
//! instance answered and what the mesh told it (the user the gateway
//! verified, the caller identity the sidecar verified), so each tour step
//! can be read off the answers. With an upstream (order-processing) it
//! calls that service through its own sidecar first and embeds the
//! answer. `POST /demo/flaky?percent=N` makes the instance fail on purpose,
//! which is how the demo shows retries and ejection without a real outage.
//!
//! It is deliberately not a proxy and has no retries, timeouts beyond one
//! overall limit, or balancing of its own: all of that is the sidecar's job.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{DemoError, error_chain};

/// The header the gateway puts the verified `sub` claim in.
pub(crate) const USER_HEADER: &str = "x-user-id";
/// The header the inbound sidecar puts the caller's SPIFFE ID in.
pub(crate) const PEER_HEADER: &str = "x-meshgate-peer-identity";
/// The seed's split override header; copied onto upstream calls so a
/// tester's choice reaches product-catalog through order-processing.
pub(crate) const CANARY_HEADER: &str = "x-canary";
/// The demo switch's path.
pub(crate) const FLAKY_PATH: &str = "/demo/flaky";
/// Longest wait for the upstream call, retries by the sidecar included.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `meshgate demo service`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServiceArgs {
    /// Service name, reported as `service`.
    #[arg(long, value_name = "NAME")]
    pub(crate) name: String,
    /// Version, reported as `version` (the sidecar's `version` label).
    #[arg(long, value_name = "V")]
    pub(crate) version: String,
    /// Instance id, reported as `instance`.
    #[arg(long, value_name = "ID")]
    pub(crate) instance: String,
    /// Address to listen on (HTTP/1.1).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Service to call for every request, through `--outbound`; its answer
    /// is embedded as `catalog`.
    #[arg(long, value_name = "NAME", requires = "outbound")]
    pub(crate) upstream_service: Option<String>,
    /// The local sidecar's outbound address.
    #[arg(long, value_name = "ADDR", requires = "upstream_service")]
    pub(crate) outbound: Option<SocketAddr>,
}

/// The demo switch: answer 503 to a share of the requests.
///
/// Failures are spread evenly rather than drawn at random: with `percent`
/// N, exactly N of every 100 consecutive requests fail. A demo run then
/// behaves the same every time, and the tour can tell a failure it caused
/// from one it did not.
#[derive(Debug, Default)]
pub(crate) struct Flaky {
    state: Mutex<FlakyState>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlakyState {
    /// Share of requests answered 503, 0 to 100.
    pub(crate) percent: u32,
    /// Requests since the switch was last set.
    pub(crate) requests: u64,
    /// Of those, answered 503 by the switch.
    pub(crate) failed: u64,
}

impl Flaky {
    /// Sets the share and restarts the counts.
    pub(crate) fn set(&self, percent: u32) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = FlakyState {
            percent: percent.min(100),
            ..FlakyState::default()
        };
    }

    /// Counts one request; true when it must fail.
    pub(crate) fn next_fails(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.requests;
        let p = u64::from(s.percent);
        s.requests += 1;
        // Request n fails when the running count of failures owed,
        // floor(n * p / 100), steps up at n + 1.
        let fails = (n + 1) * p / 100 > n * p / 100;
        if fails {
            s.failed += 1;
        }
        fails
    }

    pub(crate) fn state(&self) -> FlakyState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One running demo service.
#[derive(Debug)]
struct App {
    args: ServiceArgs,
    flaky: Flaky,
    client: reqwest::Client,
}

/// Runs the service until SIGTERM or SIGINT.
pub(crate) fn run(args: ServiceArgs) -> Result<(), DemoError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?;
    rt.block_on(serve(args))
}

async fn serve(args: ServiceArgs) -> Result<(), DemoError> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| DemoError::Bind {
            addr: args.listen,
            what: format!("demo service {}", args.instance),
            source,
        })?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(UPSTREAM_TIMEOUT)
        .build()
        .map_err(DemoError::Client)?;
    let app = Arc::new(App {
        args,
        flaky: Flaky::default(),
        client,
    });
    eprintln!("listening on {}", app.args.listen);
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            signal = &mut shutdown => {
                eprintln!("{signal}: exiting");
                return Ok(());
            }
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or similar: keep serving the
                        // connections we have.
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let app = app.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.handle(req).await) }
                    });
                    // A client that goes away mid-request is not news.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

fn header_text(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The `percent` query parameter of a demo switch request.
pub(crate) fn percent_param(query: Option<&str>) -> Option<u32> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("percent="))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|p| *p <= 100)
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let resp = if path == FLAKY_PATH {
            self.switch(&req)
        } else {
            self.answer(&req).await
        };
        eprintln!(
            "{} {} -> {}",
            req.method(),
            req.uri(),
            resp.status().as_u16()
        );
        resp
    }

    fn identity(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("service".into(), self.args.name.clone().into());
        m.insert("version".into(), self.args.version.clone().into());
        m.insert("instance".into(), self.args.instance.clone().into());
        m
    }

    fn switch(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let mut body = self.identity();
        match *req.method() {
            Method::GET => {}
            Method::POST => match percent_param(req.uri().query()) {
                Some(p) => self.flaky.set(p),
                None => {
                    body.insert(
                        "error".into(),
                        "give the share of requests to fail as ?percent=0..100".into(),
                    );
                    return json_response(StatusCode::BAD_REQUEST, &body.into());
                }
            },
            _ => {
                body.insert("error".into(), "use GET or POST".into());
                return json_response(StatusCode::METHOD_NOT_ALLOWED, &body.into());
            }
        }
        let s = self.flaky.state();
        body.insert("flaky_percent".into(), s.percent.into());
        body.insert("requests".into(), s.requests.into());
        body.insert("failed".into(), s.failed.into());
        json_response(StatusCode::OK, &body.into())
    }

    async fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let mut body = self.identity();
        let path = req.uri().path().to_owned();
        let user = header_text(req, USER_HEADER);
        body.insert("path".into(), path.clone().into());
        body.insert("user".into(), user.clone().into());
        body.insert("caller".into(), header_text(req, PEER_HEADER).into());
        if self.flaky.next_fails() {
            body.insert("error".into(), "failing on purpose (demo switch)".into());
            return json_response(StatusCode::SERVICE_UNAVAILABLE, &body.into());
        }
        let (Some(service), Some(outbound)) = (&self.args.upstream_service, self.args.outbound)
        else {
            return json_response(StatusCode::OK, &body.into());
        };
        let target = upstream_path(&path);
        let mut call = self
            .client
            .get(format!("http://{outbound}{target}"))
            // The sidecar routes by Host: the service's name.
            .header(header::HOST, service.as_str());
        // Copying the user id keeps the canary sticky past this hop.
        if let Some(u) = &user {
            call = call.header(USER_HEADER, u.as_str());
        }
        if let Some(c) = header_text(req, CANARY_HEADER) {
            call = call.header(CANARY_HEADER, c);
        }
        // Copying the trace context makes this call part of the caller's
        // trace, as an application in a mesh must (the sidecars cannot
        // tell which incoming request an outgoing call belongs to).
        for h in ["traceparent", "tracestate"] {
            if let Some(v) = header_text(req, h) {
                call = call.header(h, v);
            }
        }
        let answer = match call.send().await {
            Ok(r) => r,
            Err(e) => {
                body.insert(
                    "error".into(),
                    format!("calling {service} through {outbound}: {}", error_chain(&e)).into(),
                );
                return json_response(StatusCode::BAD_GATEWAY, &body.into());
            }
        };
        let status = answer.status();
        let reason = answer
            .headers()
            .get("x-meshgate-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let upstream_body = match answer.bytes().await {
            Ok(b) => serde_json::from_slice::<Value>(&b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
            Err(e) => {
                body.insert(
                    "error".into(),
                    format!("reading {service}'s answer: {}", error_chain(&e)).into(),
                );
                return json_response(StatusCode::BAD_GATEWAY, &body.into());
            }
        };
        let mut embedded = serde_json::Map::new();
        embedded.insert("status".into(), status.as_u16().into());
        if let Some(r) = reason {
            embedded.insert("reason".into(), r.into());
        }
        embedded.insert("body".into(), upstream_body);
        body.insert("catalog".into(), embedded.into());
        if status.is_success() {
            json_response(StatusCode::OK, &body.into())
        } else {
            body.insert(
                "error".into(),
                format!("{service} answered {}", status.as_u16()).into(),
            );
            json_response(StatusCode::BAD_GATEWAY, &body.into())
        }
    }
}

/// The catalog path order-processing asks for: `/items` followed by its
/// own path, so `/orders/42` at the gateway becomes `/42` here and
/// `/items/42` at product-catalog.
pub(crate) fn upstream_path(path: &str) -> String {
    match path {
        "" | "/" => "/items".to_owned(),
        p => format!("/items{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaky_fails_exactly_the_share_asked_for() {
        let f = Flaky::default();
        for p in 0..=100u32 {
            f.set(p);
            let failed = (0..200).filter(|_| f.next_fails()).count();
            assert_eq!(failed, 2 * p as usize, "percent {p}");
            let s = f.state();
            assert_eq!(
                (s.percent, s.requests, s.failed),
                (p, 200, 2 * u64::from(p))
            );
        }
    }

    #[test]
    fn flaky_spreads_failures_out() {
        let f = Flaky::default();
        f.set(50);
        let pattern: Vec<bool> = (0..6).map(|_| f.next_fails()).collect();
        assert_eq!(pattern, [false, true, false, true, false, true]);
        f.set(20);
        let fails: Vec<usize> = (0..20).filter(|_| f.next_fails()).collect();
        assert_eq!(fails, [4, 9, 14, 19]);
    }

    #[test]
    fn flaky_off_and_full() {
        let f = Flaky::default();
        assert!((0..1000).all(|_| !f.next_fails()));
        f.set(100);
        assert!((0..1000).all(|_| f.next_fails()));
        f.set(0);
        assert!(!f.next_fails());
        assert_eq!(f.state().failed, 0);
    }

    #[test]
    fn percent_parameter() {
        assert_eq!(percent_param(Some("percent=30")), Some(30));
        assert_eq!(percent_param(Some("x=1&percent=0")), Some(0));
        assert_eq!(percent_param(Some("percent=101")), None);
        assert_eq!(percent_param(Some("percent=-1")), None);
        assert_eq!(percent_param(Some("pct=5")), None);
        assert_eq!(percent_param(None), None);
    }

    #[test]
    fn order_paths_map_to_catalog_items() {
        assert_eq!(upstream_path("/"), "/items");
        assert_eq!(upstream_path("/42"), "/items/42");
    }
}
