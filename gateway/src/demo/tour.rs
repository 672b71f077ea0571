//! The tour: requests through the running demo that show, one feature at a
//! time, what the mesh did, each followed by a check of what came back.
//!
//! Everything is read off real answers (the demo services report who
//! answered and what the mesh told them) and the gateway's access log;
//! nothing is assumed. A check that does not hold is printed as `FAIL` and
//! counted, so `meshgate demo --exit-after-tour` doubles as an end-to-end
//! test of the seed example. Observations that depend on timing (which
//! instance the balancer chose, when an instance was ejected) are printed
//! but not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use super::issuer::Issuer;
use super::service::{CANARY_HEADER, FLAKY_PATH};
use super::setup::Layout;
use super::supervisor::accepts;
use super::{Appliance, DemoError, INSTANCES, Instance, error_chain};

/// Time allowed for one tour request, retries in the mesh included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Users in the canary step.
const CANARY_USERS: usize = 200;
/// The most users v2 may get out of [`CANARY_USERS`] at 5%: 15%.
const CANARY_MAX_V2: usize = CANARY_USERS * 15 / 100;
/// Orders sent while an instance is flaky, and how many at a time.
const FLAKY_ORDERS: usize = 80;
const FLAKY_PARALLEL: usize = 4;
/// The share of requests the flaky instance fails: clearly above the
/// seed's `failure_rate_percent` (50), so outlier detection has a case to
/// judge, while retries still find a healthy instance for every request.
const FLAKY_PERCENT: u32 = 60;
/// Concurrent requests per readiness probe: with several in flight, peak
/// EWMA also tries the instance it would not pick for one request alone.
const PROBE_BURST: usize = 6;

/// Who a request is from.
#[derive(Debug, Clone, Copy)]
enum As<'u> {
    Anonymous,
    /// A token for this user with the `orders` scope.
    User(&'u str),
    /// A token for this user with another scope.
    Scoped(&'u str, &'u str),
}

/// An answer, its body parsed as JSON when it is JSON.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn text(&self, path: &[&str]) -> Option<&str> {
        at(&self.body, path).and_then(Value::as_str)
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

fn at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// `1.1` or `2`, as curl's `%{http_version}` prints them.
fn version_text(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "?",
    }
}

async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    bearer: Option<String>,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut req = client.request(method, url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(|e| error_chain(&e))?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).trim().to_owned()));
    Ok(Answer {
        status,
        version,
        headers,
        body,
    })
}

/// GET over HTTP/2 with prior knowledge (h2c), which reqwest is not built
/// for here.
async fn h2c_get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Version), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok((resp.status(), resp.version()))
}

fn heading(title: &str) {
    println!();
    println!("== {title}");
}

/// The tour, and the readiness probes that run before it.
#[derive(Debug)]
pub(crate) struct Tour<'a> {
    a: &'a Appliance,
    layout: &'a Layout,
    issuer: &'a Issuer,
    /// Plain HTTP, no proxy.
    http: reqwest::Client,
    /// HTTPS trusting only the demo's CA.
    https: reqwest::Client,
    /// The demo's CA, PEM, for the HTTP/3 client.
    ca_pem: Vec<u8>,
    /// Failed checks so far.
    failed: usize,
    /// Readiness: `gateway -> INSTANCE` and `order-processing -> INSTANCE`
    /// paths seen answering.
    reached: BTreeSet<String>,
    /// Whether the admin API served metrics during the tour.
    metrics_served: bool,
    /// The product-catalog instance the flaky step breaks.
    victim: &'static Instance,
}

impl<'a> Tour<'a> {
    pub(crate) fn new(
        a: &'a Appliance,
        layout: &'a Layout,
        issuer: &'a Issuer,
    ) -> Result<Tour<'a>, DemoError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(DemoError::Client)?;
        let ca_path = layout.ca();
        let ca_pem = std::fs::read(&ca_path).map_err(|source| DemoError::File {
            action: "cannot read",
            path: ca_path.clone(),
            source,
        })?;
        let ca = reqwest::Certificate::from_pem(&ca_pem).map_err(DemoError::Client)?;
        let ca_for_h3 = ca_pem.clone();
        let https = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .tls_certs_only([ca])
            .build()
            .map_err(DemoError::Client)?;
        Ok(Tour {
            a,
            layout,
            issuer,
            http,
            https,
            ca_pem: ca_for_h3,
            failed: 0,
            reached: BTreeSet::new(),
            metrics_served: false,
            victim: &INSTANCES[2],
        })
    }

    fn check(&mut self, ok: bool, what: impl Display) {
        if ok {
            println!("   ok    {what}");
        } else {
            self.failed += 1;
            println!("   FAIL  {what}");
        }
    }

    fn bearer(&self, who: As<'_>) -> Option<String> {
        let (user, scope) = match who {
            As::Anonymous => return None,
            As::User(u) => (u, "orders"),
            As::Scoped(u, s) => (u, s),
        };
        match self.issuer.token(user, scope) {
            Ok(t) => Some(t),
            Err(e) => {
                // The request then goes without a token and its check
                // fails visibly.
                println!("   (no token for {user}: {e})");
                None
            }
        }
    }

    /// GET `path` on the gateway's plaintext listener.
    async fn get(
        &self,
        path: &str,
        who: As<'_>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let url = format!("http://{}{path}", self.a.edge);
        send(&self.http, Method::GET, &url, self.bearer(who), headers).await
    }

    /// The paths not seen answering yet; empty once the gateway reaches
    /// every instance and order-processing reaches every product-catalog
    /// instance. The sidecars register on their own schedule, so the demo
    /// probes until both hops work rather than guessing a delay.
    pub(crate) async fn not_reached_yet(&mut self) -> Vec<String> {
        let mut probes = tokio::task::JoinSet::new();
        let ask = |path: &str, canary: Option<&'static str>| {
            let url = format!("http://{}{path}", self.a.edge);
            let bearer = self.bearer(As::User("demo-ready"));
            let client = self.http.clone();
            async move {
                let headers: Vec<(&str, &str)> =
                    canary.map(|c| (CANARY_HEADER, c)).into_iter().collect();
                send(&client, Method::GET, &url, bearer, &headers).await
            }
        };
        probes.spawn(ask("/users/ready", None));
        for _ in 0..PROBE_BURST / 2 {
            for canary in ["v1", "v2"] {
                probes.spawn(ask("/catalog/ready", Some(canary)));
                probes.spawn(ask("/orders/ready", Some(canary)));
            }
        }
        while let Some(done) = probes.join_next().await {
            let Ok(Ok(answer)) = done else { continue };
            if answer.status != StatusCode::OK {
                continue;
            }
            if let Some(i) = answer.text(&["instance"]) {
                self.reached.insert(format!("gateway -> {i}"));
            }
            if answer.text(&["catalog", "body", "service"]) == Some("product-catalog")
                && let Some(v) = answer.text(&["catalog", "body", "version"])
            {
                self.reached
                    .insert(format!("order-processing -> product-catalog {v}"));
            }
        }
        // Every instance through the gateway shows that each one joined;
        // for order-processing's sidecar one answer per version is enough
        // (the control plane sends every sidecar the same endpoints, and
        // its balancer may well keep to one v1 instance while it is fast).
        let wanted = INSTANCES
            .iter()
            .map(|i| format!("gateway -> {}", i.id))
            .chain(["v1", "v2"].map(|v| format!("order-processing -> product-catalog {v}")));
        wanted.filter(|w| !self.reached.contains(w)).collect()
    }

    /// Runs every step; the number of failed checks.
    pub(crate) async fn run(&mut self) -> usize {
        self.edge().await;
        self.authentication().await;
        self.mesh_and_mtls().await;
        self.canary().await;
        self.flaky().await;
        self.metrics().await;
        println!();
        match self.failed {
            0 => println!("== Tour done: every check passed."),
            n => println!(
                "== Tour done: {n} check(s) FAILED; the logs in {} say more.",
                self.layout.logs().display()
            ),
        }
        self.failed
    }

    async fn edge(&mut self) {
        heading("1. The gateway: HTTP/1.1, h2c and TLS at the edge");
        let url = format!("http://{}/", self.a.edge);
        let h1 = send(&self.http, Method::GET, &url, None, &[]).await;
        match &h1 {
            Ok(a) => println!(
                "== GET {url} over HTTP/1.1: {} {}",
                a.status.as_u16(),
                version_text(a.version)
            ),
            Err(e) => println!("== GET {url} over HTTP/1.1: {e}"),
        }
        let h2 = h2c_get(self.a.edge, "/").await;
        match &h2 {
            Ok((status, version)) => println!(
                "== GET {url} over h2c:      {} {}",
                status.as_u16(),
                version_text(*version)
            ),
            Err(e) => println!("== GET {url} over h2c:      {e}"),
        }
        self.check(
            matches!(&h1, Ok(a) if a.status == StatusCode::OK && a.version == Version::HTTP_11)
                && matches!(h2, Ok((StatusCode::OK, Version::HTTP_2))),
            "the gateway's status page answers over HTTP/1.1 and h2c",
        );

        let log = self.layout.log("appliance");
        let lines = access_log_lines(&log, "\"route\":\"status-page\"", 2).await;
        println!("== access log ({}):", log.display());
        for l in lines.iter().rev().take(2).rev() {
            println!("{l}");
        }
        self.check(
            lines.len() >= 2,
            "the gateway logged both requests as JSON access-log lines",
        );

        let url = format!("https://{}/healthz", self.a.edge_tls);
        match send(&self.https, Method::GET, &url, None, &[]).await {
            Ok(a) => {
                println!(
                    "   GET {url}: {} over HTTP/{} (certificate verified with {})",
                    a.status.as_u16(),
                    version_text(a.version),
                    self.layout.ca().display()
                );
                self.check(
                    a.status == StatusCode::OK,
                    "TLS on the edge, with a certificate from the demo's CA",
                );
                let alt_svc = a.header("alt-svc").to_owned();
                println!("   Alt-Svc: {alt_svc}");
                self.check(
                    alt_svc == format!("h3=\":{}\"; ma=86400", self.a.edge_tls.port()),
                    "the TLS listener advertises HTTP/3 on its port",
                );
            }
            Err(e) => self.check(false, format!("GET {url}: {e}")),
        }
        let got = super::h3get::get(self.a.edge_tls, &self.ca_pem, "/healthz", None).await;
        match got {
            Ok((status, _)) => {
                println!(
                    "   GET {url} over HTTP/3 (QUIC, UDP {}): {}",
                    self.a.edge_tls,
                    status.as_u16()
                );
                self.check(
                    status == StatusCode::OK,
                    "HTTP/3 on the same port, same certificate",
                );
            }
            Err(e) => self.check(false, format!("GET {url} over HTTP/3: {e}")),
        }
    }

    async fn authentication(&mut self) {
        heading("2. Every route needs a token from the demo issuer");
        let r = self.get("/orders/42", As::Anonymous, &[]).await;
        let (status, challenge) = match &r {
            Ok(a) => (a.status.as_u16(), a.header("www-authenticate").to_owned()),
            Err(e) => (0, e.clone()),
        };
        println!("   GET /orders/42 without a token: {status} ({challenge})");
        self.check(status == 401, "no token: 401");

        let r = self
            .get("/orders/42", As::Scoped("alice", "profile"), &[])
            .await;
        let status = r.as_ref().map_or(0, |a| a.status.as_u16());
        println!("   GET /orders/42 as alice, token without the `orders` scope: {status}");
        self.check(
            status == 403,
            "a valid token that breaks the route's claim rule: 403",
        );

        let r = self.get("/users/alice", As::User("alice"), &[]).await;
        match &r {
            Ok(a) => {
                println!(
                    "   GET /users/alice as alice: {} {}",
                    a.status.as_u16(),
                    a.body
                );
                self.check(
                    a.status == StatusCode::OK && a.text(&["user"]) == Some("alice"),
                    "a good token: 200, and user-account got the verified user as x-user-id",
                );
            }
            Err(e) => self.check(false, format!("GET /users/alice: {e}")),
        }

        // The same rules over HTTP/3: same routes, same JWT checks.
        let token = self.bearer(As::User("alice"));
        let mut statuses = Vec::new();
        for t in [None, token.as_deref()] {
            let got = super::h3get::get(self.a.edge_tls, &self.ca_pem, "/users/alice", t).await;
            statuses.push(got.map_or(0, |(s, _)| s.as_u16()));
        }
        println!(
            "   GET /users/alice over HTTP/3: {} without a token, {} as alice",
            statuses[0], statuses[1]
        );
        self.check(
            statuses == [401, 200],
            "HTTP/3 requests meet the same JWT rules",
        );
    }

    async fn mesh_and_mtls(&mut self) {
        heading("3. Through the gateway into the mesh, mTLS on every hop");
        let gateway_id = self.a.gateway_id();
        let order_id = self.a.service_id("order-processing");
        let r = self.get("/orders/42", As::User("alice"), &[]).await;
        let a = match r {
            Ok(a) => a,
            Err(e) => {
                self.check(false, format!("GET /orders/42 as alice: {e}"));
                return;
            }
        };
        println!("   GET /orders/42 as alice: {}", a.status.as_u16());
        let pretty = serde_json::to_string_pretty(&a.body).unwrap_or_default();
        for line in pretty.lines() {
            println!("     {line}");
        }
        self.check(
            a.status == StatusCode::OK && a.text(&["service"]) == Some("order-processing"),
            "order-processing answered through the gateway",
        );
        self.check(
            at(&a.body, &["catalog", "status"]).and_then(Value::as_u64) == Some(200)
                && a.text(&["catalog", "body", "service"]) == Some("product-catalog"),
            "its answer includes product-catalog's, fetched through order-processing's sidecar",
        );
        self.check(
            a.text(&["catalog", "body", "user"]) == Some("alice"),
            "the user id travelled along (order-processing copies x-user-id)",
        );
        let caller = a.text(&["caller"]).unwrap_or("none");
        println!("   order-processing saw the caller {caller}");
        self.check(
            caller == gateway_id,
            "gateway -> order-processing is mTLS with the gateway's identity",
        );
        let caller = a.text(&["catalog", "body", "caller"]).unwrap_or("none");
        println!("   product-catalog saw the caller {caller}");
        self.check(
            caller == order_id,
            "order-processing -> product-catalog is mTLS with order-processing's identity",
        );
        for path in ["/users/alice", "/catalog/items"] {
            match self.get(path, As::User("alice"), &[]).await {
                Ok(a) => {
                    let who = a.text(&["service"]).unwrap_or("?").to_owned();
                    let caller = a.text(&["caller"]).unwrap_or("none");
                    println!(
                        "   GET {path}: {} from {who}, which saw the caller {caller}",
                        a.status.as_u16()
                    );
                    self.check(
                        a.status == StatusCode::OK && caller == gateway_id,
                        format!("gateway -> {who} is mTLS with the gateway's identity"),
                    );
                }
                Err(e) => self.check(false, format!("GET {path}: {e}")),
            }
        }

        // Acting as user-account's application: its sidecar's outbound
        // listener is what that app would call.
        let users = &INSTANCES[0];
        let url = format!("http://{}/items", users.outbound);
        let r = send(
            &self.http,
            Method::GET,
            &url,
            None,
            &[(header::HOST.as_str(), "product-catalog")],
        )
        .await;
        let (status, reason) = match &r {
            Ok(a) => (a.status.as_u16(), a.header("x-meshgate-reason").to_owned()),
            Err(e) => (0, e.clone()),
        };
        println!(
            "   user-account calling product-catalog through its sidecar ({}): {status} {reason}",
            users.outbound
        );
        self.check(
            status == 403,
            "only order-processing and the gateway may call product-catalog ([[mesh.authorization]])",
        );

        let catalog = &INSTANCES[1];
        let url = format!("http://{}/items", catalog.inbound);
        let r = send(&self.http, Method::GET, &url, None, &[]).await;
        let outcome = match &r {
            Ok(a) => format!("{}", a.status.as_u16()),
            Err(e) => format!("refused ({e})"),
        };
        println!(
            "   plaintext HTTP straight to a product-catalog sidecar ({}): {outcome}",
            catalog.inbound
        );
        self.check(
            !matches!(&r, Ok(a) if a.status.is_success()),
            "sidecars take mTLS only (mode = \"strict\")",
        );
    }

    /// The catalog version a user's order saw, if the order worked.
    async fn order_version(&self, user: &str, path: &str) -> Option<String> {
        self.order_catalog(user, path)
            .await
            .map(|(version, _)| version)
    }

    /// The catalog version and instance a user's order saw, if the order
    /// worked.
    async fn order_catalog(&self, user: &str, path: &str) -> Option<(String, String)> {
        let a = self.get(path, As::User(user), &[]).await.ok()?;
        if a.status != StatusCode::OK {
            return None;
        }
        let version = a.text(&["catalog", "body", "version"])?.to_owned();
        let instance = a.text(&["catalog", "body", "instance"])?.to_owned();
        Some((version, instance))
    }

    /// The catalog version the gateway's own split chose for a user.
    async fn catalog_version(&self, user: &str, headers: &[(&str, &str)]) -> Option<String> {
        let a = self
            .get("/catalog/items", As::User(user), headers)
            .await
            .ok()?;
        (a.status == StatusCode::OK)
            .then(|| a.text(&["version"]).map(str::to_owned))
            .flatten()
    }

    async fn canary(&mut self) {
        heading("4. A 5% sticky canary: product-catalog v2");
        println!(
            "   {CANARY_USERS} users each GET /orders/42; order-processing's sidecar splits its call to product-catalog"
        );
        let mut v1 = Vec::new();
        let mut v2 = Vec::new();
        let mut broken = 0;
        let mut by_instance: BTreeMap<String, usize> = BTreeMap::new();
        for n in 1..=CANARY_USERS {
            let user = format!("user-{n:03}");
            let Some((version, instance)) = self.order_catalog(&user, "/orders/42").await else {
                broken += 1;
                continue;
            };
            *by_instance.entry(instance).or_default() += 1;
            match version.as_str() {
                "v1" => v1.push(user),
                "v2" => v2.push(user),
                _ => broken += 1,
            }
        }
        // The flaky step breaks the v1 instance that order-processing's
        // sidecar actually uses most, so that the failures are felt.
        if let Some(busiest) = INSTANCES
            .iter()
            .filter(|i| i.service == "product-catalog" && i.version == "v1")
            .max_by_key(|i| by_instance.get(i.id).copied().unwrap_or(0))
        {
            self.victim = busiest;
        }
        let spread: Vec<String> = by_instance
            .iter()
            .map(|(i, n)| format!("{i} {n}"))
            .collect();
        let share = v2.len() as f64 * 100.0 / CANARY_USERS as f64;
        println!(
            "   v1: {} users, v2: {} users ({share:.1}%){}",
            v1.len(),
            v2.len(),
            if broken > 0 {
                format!(", {broken} failed")
            } else {
                String::new()
            }
        );
        if !v2.is_empty() {
            println!("   on v2: {}", v2.join(", "));
        }
        println!("   answered by: {}", spread.join(", "));
        self.check(broken == 0, format!("all {CANARY_USERS} orders answered"));
        self.check(
            !v2.is_empty() && v2.len() <= CANARY_MAX_V2,
            format!("v2's share is near 5% (1 to {CANARY_MAX_V2} of {CANARY_USERS} users)"),
        );

        for (user, expected) in [(v2.first(), "v2"), (v1.first(), "v1")] {
            let Some(user) = user else { continue };
            let again = self.order_version(user, "/orders/7").await;
            let once_more = self.order_version(user, "/orders/8").await;
            let at_gateway = self.catalog_version(user, &[]).await;
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "failed".to_owned());
            println!(
                "   {user} again, twice through the mesh: {}, {}; the gateway's own split for /catalog: {}",
                show(&again),
                show(&once_more),
                show(&at_gateway)
            );
            self.check(
                [&again, &once_more, &at_gateway]
                    .iter()
                    .all(|v| v.as_deref() == Some(expected)),
                format!("{user} stays on {expected}, in the sidecar and at the gateway alike"),
            );
        }
        if let Some(user) = v1.first() {
            let forced = self.catalog_version(user, &[(CANARY_HEADER, "v2")]).await;
            println!(
                "   {user} with `x-canary: v2`: {}",
                forced.clone().unwrap_or_else(|| "failed".to_owned())
            );
            self.check(
                forced.as_deref() == Some("v2"),
                "testers can force v2 with x-canary",
            );
        }
    }

    async fn flaky_state(&self, i: &Instance, method: Method, query: &str) -> Option<(u64, u64)> {
        let url = format!("http://{}{FLAKY_PATH}{query}", i.app);
        let a = send(&self.http, method, &url, None, &[]).await.ok()?;
        let n = |k| at(&a.body, &[k]).and_then(Value::as_u64);
        Some((n("requests")?, n("failed")?))
    }

    /// Sends [`FLAKY_ORDERS`] GETs to the gateway, [`FLAKY_PARALLEL`] at
    /// a time, each as its own user; how many answered 200.
    async fn burst(&self, path: &str) -> usize {
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..FLAKY_PARALLEL {
            let client = self.http.clone();
            let calls: Vec<(String, Option<String>)> = (1..=FLAKY_ORDERS)
                .skip(worker)
                .step_by(FLAKY_PARALLEL)
                .map(|n| {
                    let url = format!("http://{}{path}/{n}", self.a.edge);
                    (url, self.bearer(As::User(&format!("shopper-{n:03}"))))
                })
                .collect();
            workers.spawn(async move {
                let mut ok = 0;
                for (url, bearer) in calls {
                    let answer = send(&client, Method::GET, &url, bearer, &[]).await;
                    if answer.is_ok_and(|a| a.status == StatusCode::OK) {
                        ok += 1;
                    }
                }
                ok
            });
        }
        let mut ok = 0;
        while let Some(done) = workers.join_next().await {
            ok += done.unwrap_or(0);
        }
        ok
    }

    async fn flaky(&mut self) {
        heading("5. A flaky product-catalog instance: retries and ejection");
        let victim = self.victim;
        let switch = format!("?percent={FLAKY_PERCENT}");
        // Ejections are logged by the proxy that decides them; only what
        // is logged from here on belongs to this step.
        let callers = [
            ("the gateway", self.layout.log("appliance")),
            (
                "order-processing's sidecar",
                self.layout.log(&format!("{}-sidecar", INSTANCES[4].id)),
            ),
        ];
        let offsets: Vec<u64> = callers
            .iter()
            .map(|(_, log)| std::fs::metadata(log).map_or(0, |m| m.len()))
            .collect();
        if self
            .flaky_state(victim, Method::POST, &switch)
            .await
            .is_none()
        {
            self.check(
                false,
                format!("turning on the demo switch of {}", victim.id),
            );
            return;
        }
        println!(
            "   POST http://{}{FLAKY_PATH}{switch}: {} now answers 503 to {FLAKY_PERCENT}% of its requests",
            victim.app, victim.id
        );
        // Several requests in flight at a time, as real traffic would be: a
        // lone sequential client lets peak EWMA simply keep to the other
        // instance after the first failures, and the flaky one would not
        // see enough traffic for outlier detection to judge it.
        let started = Instant::now();
        let orders = self.burst("/orders").await;
        println!(
            "   {FLAKY_ORDERS} GET /orders/N, {FLAKY_PARALLEL} at a time ({:.1?}): {orders} answered 200 (order-processing's sidecar calls product-catalog)",
            started.elapsed()
        );
        let between = self.flaky_state(victim, Method::GET, "").await;
        let started = Instant::now();
        let reads = self.burst("/catalog/items").await;
        println!(
            "   {FLAKY_ORDERS} GET /catalog/items/N, {FLAKY_PARALLEL} at a time ({:.1?}): {reads} answered 200 (the gateway calls product-catalog)",
            started.elapsed()
        );
        if let (Some((t1, f1)), Some((t2, f2))) =
            (between, self.flaky_state(victim, Method::GET, "").await)
        {
            println!(
                "   {} failed {f1} of {t1} tries from order-processing's sidecar and {} of {} from the gateway; each failure was retried on another instance",
                victim.id,
                f2.saturating_sub(f1),
                t2.saturating_sub(t1)
            );
        }
        let endpoint = format!("endpoint={}", victim.inbound);
        for ((caller, log), offset) in callers.iter().zip(offsets) {
            let text = std::fs::read(log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
            match new
                .lines()
                .find(|l| l.contains("endpoint ejected") && l.contains(&endpoint))
            {
                Some(line) => println!(
                    "   {caller} ejected it (outlier detection), and logged:\n     {}",
                    line.trim()
                ),
                None => println!("   {caller} did not eject it"),
            }
        }
        self.check(
            orders == FLAKY_ORDERS && reads == FLAKY_ORDERS,
            format!("every request succeeded while {} was failing", victim.id),
        );
        let off = self.flaky_state(victim, Method::POST, "?percent=0").await;
        println!(
            "   POST http://{}{FLAKY_PATH}?percent=0: switched off",
            victim.app
        );
        self.check(off.is_some(), "the demo switch turns off again");
    }

    async fn metrics(&mut self) {
        heading("6. Metrics");
        let url = format!("http://{}{}", self.a.admin, self.a.metrics_path);
        if accepts(self.a.admin).await
            && let Ok(a) = send(&self.http, Method::GET, &url, None, &[]).await
            && a.status == StatusCode::OK
        {
            let text = a.body.as_str().unwrap_or_default();
            println!("   GET {url}: {} lines, among them:", text.lines().count());
            let shown = [
                "meshgate_mesh_",
                "meshgate_upstream_retries_total",
                "meshgate_endpoint_ejections_total",
            ];
            for l in text
                .lines()
                .filter(|l| !l.starts_with('#') && shown.iter().any(|p| l.starts_with(p)))
                .take(10)
            {
                println!("     {l}");
            }
            self.check(
                text.contains("meshgate_mesh_endpoints{service=\"product-catalog\"}")
                    && text.contains("meshgate_mesh_certificate_expiration_timestamp_seconds"),
                "the gateway reports mesh endpoints and its certificate's expiry",
            );
            self.metrics_served = true;
            return;
        }
        self.check(false, "the admin API serves metrics");
        println!(
            "   Every proxy also logs each request as one JSON line: {} (gateway), {} (sidecars).",
            self.layout.log("appliance").display(),
            self.layout.logs().join("*-sidecar.log").display()
        );
    }

    /// Commands to try by hand, with a fresh token.
    pub(crate) fn print_try_it(&self, exe: &Path) {
        let dir = self.layout.dir.display();
        let edge = self.a.edge;
        let tls = self.a.edge_tls;
        let ca = self.layout.ca();
        let ca = ca.display();
        let victim = self.victim;
        heading("Try it yourself");
        match self.bearer(As::User("alice")) {
            Some(t) => println!("   TOKEN={t}"),
            None => println!(
                "   TOKEN=$({} demo token --dir {dir} --user alice)",
                exe.display()
            ),
        }
        println!(
            "   (alice's token for one hour; another user: {} demo token --dir {dir} --user NAME)",
            exe.display()
        );
        println!();
        println!("   curl -H \"authorization: Bearer $TOKEN\" http://{edge}/orders/42");
        println!("   curl -H \"authorization: Bearer $TOKEN\" http://{edge}/users/alice");
        println!(
            "   curl --http2-prior-knowledge -H \"authorization: Bearer $TOKEN\" http://{edge}/catalog/items"
        );
        println!(
            "   curl --cacert {ca} -H \"authorization: Bearer $TOKEN\" https://{tls}/catalog/items"
        );
        println!(
            "   curl -H \"authorization: Bearer $TOKEN\" -H \"x-canary: v2\" http://{edge}/catalog/items"
        );
        println!(
            "   curl -X POST 'http://{}{FLAKY_PATH}?percent={FLAKY_PERCENT}'   # {} fails {FLAKY_PERCENT}% of its requests; ?percent=0 heals it",
            victim.app, victim.id
        );
        println!();
        println!(
            "   logs: {}/  (appliance.log is the gateway's, with its access log)",
            self.layout.logs().display()
        );
        if self.metrics_served {
            println!("   metrics: http://{}{}", self.a.admin, self.a.metrics_path);
        } else {
            println!(
                "   metrics: arrive with the observability work, at http://{}{}",
                self.a.admin, self.a.metrics_path
            );
        }
    }
}

/// Access-log lines of `log` containing `needle`, waiting briefly for at
/// least `want` of them: the gateway writes the line after the answer.
async fn access_log_lines(log: &Path, needle: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with('{') && l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.len() >= want || Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
