//! HTTP/3 end to end: `meshgate run` with a TLS listener that also
//! speaks HTTP/3 on its UDP port, real upstreams (Python servers: a
//! streaming origin, a scripted origin, two versioned origins, a gRPC
//! server), and aioquic's HTTP/3 client (PyPI; tests/py/h3_client.py only
//! tells it what to send) as the client. curl checks the TCP side.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meshgate_tests::scripted::{Scripted, scripted};
use meshgate_tests::{
    Gateway, Origin, Proc, PyServer, curl, free_port, metric, post_drain, py_script, tempdir,
    wait_for, workspace,
};
use serde_json::{Value, json};

const SECRET: &str = "an HTTP/3 test secret of at least thirty-two bytes";
const ADMIN_TOKEN: &str = "http3-admin-token-0123456789";
/// The stream error for a malformed message (RFC 9114 §8.1).
const H3_MESSAGE_ERROR: u64 = 0x10e;

fn tls_dir() -> PathBuf {
    workspace().join("config").join("examples").join("tls")
}

/// The upstreams every test shares the config of.
struct Upstreams {
    stream: PyServer,
    flaky: Scripted,
    limited: Scripted,
    v1: Origin,
    v2: Origin,
    grpc: PyServer,
}

impl Upstreams {
    fn start() -> Upstreams {
        Upstreams {
            stream: PyServer::start("stream_origin.py", &[]).expect("stream origin"),
            flaky: scripted("flaky"),
            limited: scripted("limited"),
            v1: Origin::start("v1").expect("origin v1"),
            v2: Origin::start("v2").expect("origin v2"),
            grpc: PyServer::start("grpc_echo_server.py", &[]).expect("grpc server"),
        }
    }
}

struct Setup {
    gw: Gateway,
    port: u16,
    dir: PathBuf,
    up: Upstreams,
}

fn config_text(
    port: u16,
    admin: u16,
    up: &Upstreams,
    (http3_extra, limits_extra): (&str, &str),
    marker: &str,
) -> String {
    let tls = tls_dir();
    format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"
token = "{ADMIN_TOKEN}"

[[listener]]
name = "edge"
address = "127.0.0.1:{port}"
protocols = ["http1", "http2", "http3"]
limits = {{ drain_timeout = "10s"{limits_extra} }}

[listener.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[listener.http3]
{http3_extra}

[[jwt_provider]]
name = "login"
issuer = "https://login.meshgate.test/"
audiences = ["api.meshgate.test"]
algorithms = ["HS256"]
secret_file = "hmac.key"

[[route]]
name = "api"
match = {{ path_prefix = "/api" }}
service = "files"
auth = {{ provider = "login" }}

[[route]]
name = "flaky"
match = {{ path_prefix = "/flaky" }}
service = "flaky"
retry = {{ max_retries = 2, on = ["503"], backoff_base = "5ms", backoff_max = "20ms" }}

[[route]]
name = "limited"
match = {{ path_prefix = "/limited" }}
service = "limited"
rewrite = {{ path_prefix = "/" }}

[[route]]
name = "shop"
match = {{ path_prefix = "/products" }}
service = "shop"

# Any path on this host, so that no malformed target is refused for
# want of a route.
[[route]]
name = "shop-host"
match = {{ hosts = ["shop.meshgate.test"] }}
service = "shop"

[[route]]
name = "grpc"
match = {{ path_prefix = "/meshgate.test.Echo/" }}
service = "grpc"

[[route]]
name = "files"
match = {{ path_prefix = "/" }}
service = "files"
response_headers = {{ set = {{ x-config = "{marker}" }} }}

[[service]]
name = "files"
endpoints = [{{ address = "{stream}" }}]

[[service]]
name = "flaky"
endpoints = [{{ address = "{flaky}" }}]

[[service]]
name = "limited"
endpoints = [{{ address = "{limited}" }}]
circuit_breaker = {{ max_requests = 1 }}

[[service]]
name = "shop"
endpoints = [
  {{ address = "{v1}", labels = {{ version = "v1" }} }},
  {{ address = "{v2}", labels = {{ version = "v2" }} }},
]
[[service.subset]]
name = "v1"
labels = {{ version = "v1" }}
[[service.subset]]
name = "v2"
labels = {{ version = "v2" }}
[service.split]
targets = [{{ subset = "v1", weight = 80 }}, {{ subset = "v2", weight = 20 }}]
sticky = {{ header = "x-user-id" }}

[[service]]
name = "grpc"
protocol = "http2"
endpoints = [{{ address = "{grpc}" }}]

[observability]
access_log = {{ format = "json", path = "stdout" }}
"#,
        cert = tls.join("server.pem").display(),
        key = tls.join("server-key.pem").display(),
        stream = up.stream.addr,
        flaky = up.flaky.addr,
        limited = up.limited.addr,
        v1 = up.v1.addr,
        v2 = up.v2.addr,
        grpc = up.grpc.addr,
    )
}

fn setup(http3_extra: &str) -> Setup {
    setup_with(http3_extra, "")
}

/// `limits_extra` continues the listener's inline `limits` table
/// (`, key = value`).
fn setup_with(http3_extra: &str, limits_extra: &str) -> Setup {
    let up = Upstreams::start();
    let dir = tempdir().expect("tempdir");
    std::fs::write(dir.join("hmac.key"), SECRET).expect("secret");
    let port = free_port();
    let config = dir.join("meshgate.toml");
    let text = config_text(port, free_port(), &up, (http3_extra, limits_extra), "one");
    std::fs::write(&config, text).expect("config");
    let gw = Gateway::start(&config, SocketAddr::from(([127, 0, 0, 1], port))).expect("gateway");
    Setup { gw, port, dir, up }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Runs the HTTP/3 client to completion and returns its JSON report.
    fn h3(&self, path: &str, args: &[&str]) -> Value {
        let out = h3_command(&self.url(path), args)
            .output()
            .expect("run h3_client.py");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "h3_client.py output is not JSON ({e}): {text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(v["error"].is_null(), "client error: {v}");
        v
    }

    /// One request; its response.
    fn h3_one(&self, path: &str, args: &[&str]) -> Value {
        let v = self.h3(path, args);
        let r = v["responses"][0].clone();
        assert!(r["error"].is_null(), "request error: {v}");
        r
    }
}

fn h3_command(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(py_script("h3_client.py"))
        .arg(url)
        .arg("--cafile")
        .arg(tls_dir().join("ca.pem"))
        .args(args);
    cmd
}

fn random_file(path: &Path, len: usize) -> String {
    let mut data = Vec::with_capacity(len);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).expect("write file");
    sha256_hex(path)
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = json!({
        "iss": "https://login.meshgate.test/",
        "sub": sub,
        "aud": "api.meshgate.test",
        "iat": now,
        "exp": now + 300,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// Waits until the gateway has `n` requests in flight on the listener.
fn wait_in_flight(gw: &Gateway, n: f64) {
    wait_for(
        Duration::from_secs(20),
        "the request to be in flight",
        || {
            gw.metrics().is_ok_and(|m| {
                metric(&m, "meshgate_requests_in_flight", &["listener=\"edge\""]) == Some(n)
            })
        },
    )
    .expect("in flight");
}

#[test]
fn large_bodies_stream_both_ways_and_tcp_advertises_http3() {
    let s = setup("");
    // Alt-Svc on the TCP listener's responses, HTTP/1.1 and HTTP/2.
    let cafile = tls_dir().join("ca.pem");
    let ca = cafile.to_str().expect("path");
    for flag in ["--http1.1", "--http2"] {
        let r = curl(&["--cacert", ca, flag, &s.url("/hello")]).expect("curl");
        assert_eq!(r.status, 200, "{flag}: {r:?}");
        assert_eq!(
            r.header("alt-svc"),
            Some(format!("h3=\":{}\"; ma=86400", s.port).as_str()),
            "{flag}"
        );
    }

    // A 10 MiB upload, declared and not declared, reaches the upstream whole.
    let file = s.dir.join("upload.bin");
    let want = random_file(&file, 10 << 20);
    let path = file.to_str().expect("path");
    let len = (10 << 20).to_string();
    for declared in [false, true] {
        let mut args = vec!["--method", "POST", "--data-file", path];
        let cl = format!("content-length: {len}");
        if declared {
            args.extend(["--header", &cl]);
        }
        let r = s.h3_one("/sha256", &args);
        assert_eq!(r["status"], 200, "{r}");
        let seen: Value = serde_json::from_str(r["body"].as_str().expect("body")).expect("json");
        assert_eq!(seen["bytes"], 10 << 20, "declared={declared}: {seen}");
        assert_eq!(seen["sha256"], want, "declared={declared}");
        // Not on the HTTP/3 side.
        assert!(r["headers"].get("alt-svc").is_none(), "{r}");
    }

    // A 10 MiB download arrives intact.
    let q = format!("/download?path={path}");
    let out = s.dir.join("download.bin");
    let r = s.h3_one(&q, &["--out", out.to_str().expect("path")]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body_bytes"], 10 << 20);
    assert_eq!(sha256_hex(&out), want);

    // Many concurrent streams on one connection.
    let v = s.h3("/many", &["--count", "200", "--concurrency", "50"]);
    let ok = v["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .filter(|r| r["status"] == 200 && r["body"] == "stream origin path=/many\n")
        .count();
    assert_eq!(ok, 200, "{v}");

    // Metrics and the access log name the protocol.
    let m = s.gw.metrics().expect("metrics");
    let h3 = metric(
        &m,
        "meshgate_requests_total",
        &["route=\"files\"", "protocol=\"http3\"", "status=\"200\""],
    )
    .unwrap_or(0.0);
    assert!(h3 >= 203.0, "http3 requests counted: {h3}\n{m}");
    assert!(
        metric(&m, "meshgate_http3_connections_total", &["outcome=\"ok\""]).unwrap_or(0.0) >= 4.0,
        "{m}"
    );
    // Few handshakes at a time: nobody was asked for a retry token.
    assert_eq!(
        metric(
            &m,
            "meshgate_http3_connections_total",
            &["outcome=\"retry\""]
        ),
        None,
        "{m}"
    );
    wait_for(Duration::from_secs(5), "access log lines", || {
        s.gw.access_log()
            .iter()
            .any(|l| l["proto"] == "http3" && l["path"] == "/sha256" && l["status"] == 200)
    })
    .expect("access log names http3");

    // Both sides ran on the listener's one worker thread (`--threads 1`):
    // the HTTP/3 side has no runtime of its own, whose thread would be
    // woken for every read on an upstream connection the other side
    // opened (they share the pool).
    let names = thread_names(s.gw.proc.pid());
    assert_eq!(
        names.iter().filter(|n| n.as_str() == "edge").count(),
        1,
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("listener edge")),
        "{names:?}"
    );
}

/// The names of a process's threads (at most 15 bytes each, as the
/// kernel keeps them).
fn thread_names(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .collect()
}

#[test]
fn jwt_retries_breaker_split_and_trailers_behave_as_on_tcp() {
    let s = setup("");
    // JWT: accepted, missing and forged.
    let good = format!("authorization: Bearer {}", token("alice"));
    let r = s.h3_one("/api/me", &["--header", &good]);
    assert_eq!(r["status"], 200, "{r}");
    let r = s.h3_one("/api/me", &[]);
    assert_eq!(r["status"], 401, "{r}");
    assert_eq!(r["headers"]["x-meshgate-reason"], "unauthenticated", "{r}");
    let forged = format!("authorization: Bearer {}x", token("alice"));
    let r = s.h3_one("/api/me", &["--header", &forged]);
    assert_eq!(r["status"], 401, "{r}");

    // An upstream that fails twice is retried into a success.
    let r = s.h3_one("/flaky/2/h3", &[]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"], "try 3\n");

    // The breaker: one request holds the only permit, the next gets 503.
    let mut slow = Proc::spawn(h3_command(&s.url("/limited/slow/3000"), &[])).expect("client");
    let started = format!("http://{}/count/slow-started", s.up.limited.addr);
    wait_for(
        Duration::from_secs(20),
        "the slow request to arrive",
        || curl(&[&started]).is_ok_and(|r| r.body == "1"),
    )
    .expect("slow request in flight");
    let r = s.h3_one("/limited/svc", &[]);
    assert_eq!(r["status"], 503, "{r}");
    assert_eq!(r["headers"]["x-meshgate-reason"], "circuit-open", "{r}");
    slow.wait_exit(Duration::from_secs(20)).expect("slow ends");
    let out: Value = serde_json::from_str(slow.stdout().trim()).expect("json");
    assert_eq!(out["responses"][0]["status"], 200, "{out}");

    // The canary split: 20% of 400 requests without a sticky key go to
    // v2 (binomial sd 8; 40..=120 is five sd either side), and one user
    // sticks to one version.
    let v = s.h3("/products/1", &["--count", "400", "--concurrency", "40"]);
    let versions: Vec<&str> = v["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| r["headers"]["x-origin"].as_str().unwrap_or("none"))
        .collect();
    let v2 = versions.iter().filter(|o| **o == "v2").count();
    let v1 = versions.iter().filter(|o| **o == "v1").count();
    assert_eq!(v1 + v2, 400, "{versions:?}");
    assert!((40..=120).contains(&v2), "v2 got {v2} of 400");
    let v = s.h3(
        "/products/1",
        &[
            "--count",
            "20",
            "--concurrency",
            "5",
            "--header",
            "x-user-id: u-7",
        ],
    );
    let mut seen: Vec<&str> = v["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| r["headers"]["x-origin"].as_str().unwrap_or("none"))
        .collect();
    seen.dedup();
    assert_eq!(seen.len(), 1, "one user, one version: {seen:?}");
    // The upstream got a W3C trace context, started at this hop.
    let r = &v["responses"][0];
    let upstream_saw: Value =
        serde_json::from_str(r["headers"]["x-seen-headers"].as_str().unwrap_or("{}"))
            .expect("x-seen-headers");
    let tp = upstream_saw["traceparent"][0].as_str().unwrap_or("");
    assert!(
        tp.len() == 55 && tp.starts_with("00-"),
        "traceparent upstream: {upstream_saw}"
    );

    // gRPC over HTTP/3 to an HTTP/2 upstream: the status and metadata
    // trailers come back as HTTP/3 trailers.
    let frame = s.dir.join("grpc-frame");
    let msg = b"hello";
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(msg);
    std::fs::write(&frame, &body).expect("frame");
    let r = s.h3_one(
        "/meshgate.test.Echo/Unary",
        &[
            "--method",
            "POST",
            "--header",
            "content-type: application/grpc",
            "--header",
            "te: trailers",
            "--data-file",
            frame.to_str().expect("path"),
        ],
    );
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["trailers"]["grpc-status"], "0", "{r}");
    assert_eq!(r["trailers"]["x-echo-trailer"], "unary", "{r}");
    assert!(
        r["body"].as_str().unwrap_or("").contains("echo:hello"),
        "{r}"
    );
    let m = s.gw.metrics().expect("metrics");
    assert!(
        metric(
            &m,
            "meshgate_requests_total",
            &["route=\"grpc\"", "protocol=\"grpc\""]
        )
        .is_some(),
        "{m}"
    );
}

#[test]
fn reload_during_a_download_and_graceful_shutdown_do_not_cut_it() {
    let mut s = setup("");
    let r = s.h3_one("/hello", &[]);
    assert_eq!(r["headers"]["x-config"], "one");

    // A response held open by the origin while the config changes.
    let mut held = Proc::spawn(h3_command(&s.url("/chunked?id=reload"), &[])).expect("client");
    wait_in_flight(&s.gw, 1.0);
    let config = s.gw.config.clone().expect("config path");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("x-config = \"one\"", "x-config = \"two\""),
    )
    .expect("w");
    wait_for(Duration::from_secs(10), "the new config on HTTP/3", || {
        s.h3_one("/hello", &[])["headers"]["x-config"] == "two"
    })
    .expect("reload applies to new HTTP/3 requests");
    let release = format!("http://{}/release?id=reload", s.up.stream.addr);
    assert_eq!(curl(&[&release]).expect("release").status, 200);
    held.wait_exit(Duration::from_secs(20)).expect("held ends");
    let out: Value = serde_json::from_str(held.stdout().trim()).expect("json");
    let r = &out["responses"][0];
    assert_eq!(r["status"], 200, "{out}");
    assert_eq!(r["body"], "first part\nsecond part\nlast part\n", "{out}");
    assert_eq!(
        r["headers"]["x-config"], "one",
        "the old config finishes it"
    );

    // SIGTERM with a response in flight: it completes, then the process
    // exits cleanly.
    let mut held = Proc::spawn(h3_command(&s.url("/chunked?id=stop"), &[])).expect("client");
    wait_in_flight(&s.gw, 1.0);
    s.gw.proc.signal("TERM").expect("SIGTERM");
    std::thread::sleep(Duration::from_millis(300));
    let release = format!("http://{}/release?id=stop", s.up.stream.addr);
    assert_eq!(curl(&[&release]).expect("release").status, 200);
    held.wait_exit(Duration::from_secs(20)).expect("held ends");
    let out: Value = serde_json::from_str(held.stdout().trim()).expect("json");
    assert_eq!(out["responses"][0]["status"], 200, "{out}");
    assert_eq!(
        out["responses"][0]["body"], "first part\nsecond part\nlast part\n",
        "{out}"
    );
    let code = s.gw.proc.wait_exit(Duration::from_secs(20)).expect("exit");
    assert_eq!(code, Some(0), "{}", s.gw.proc.stderr());
}

/// A drain (`POST /drain`) sends a GOAWAY on open HTTP/3 connections, as
/// SIGTERM does, and the listener goes on serving: a connection opened
/// during the drain gets its request answered before its GOAWAY.
#[test]
fn drain_sends_goaway_on_open_connections_and_keeps_serving() {
    let mut s = setup("");
    let hold = |path: &str| {
        let held = Proc::spawn(h3_command(&s.url(path), &["--hold", "20"])).expect("client");
        wait_for(Duration::from_secs(20), "the client to hold", || {
            held.stderr().contains("holding")
        })
        .expect("the request answered, the connection held");
        held
    };
    let report = |mut held: Proc| -> Value {
        held.wait_exit(Duration::from_secs(25))
            .expect("client ends");
        let out: Value = serde_json::from_str(held.stdout().trim()).expect("json");
        assert!(out["error"].is_null(), "{out}");
        assert_eq!(out["responses"][0]["status"], 200, "{out}");
        assert!(out["closed"].is_null(), "a GOAWAY, not a close: {out}");
        out
    };

    // A connection open with one request answered (stream 0): the GOAWAY
    // names stream 4, the first one it will not take.
    let held = hold("/hello");
    let admin = s.gw.admin_address().expect("admin address");
    let r = post_drain(admin, ADMIN_TOKEN).expect("drain");
    assert_eq!(r.status, 200, "{}", r.body);
    let out = report(held);
    assert_eq!(out["goaway"], 4, "{out}");

    // Opened while draining: answered, then the same GOAWAY.
    let out = report(hold("/hello"));
    assert_eq!(out["goaway"], 4, "{out}");
    assert!(s.gw.proc.running(), "draining does not stop the process");
}

/// The request heads RFC 9114 calls malformed (sections 4.2 and 4.3.1)
/// are refused as h3 refuses those it checks itself, with a stream reset
/// (H3_MESSAGE_ERROR), and never reach the origin: routing goes by
/// `:authority`, while an HTTP/1 origin would take its target or its
/// framing from the fields below.
#[test]
fn malformed_request_heads_are_refused_before_the_origin() {
    let s = setup("");
    let host = ["--header", ":authority: shop.meshgate.test"];
    let refused: [(&str, &[&str]); 6] = [
        (
            "absolute-form :path",
            &["--header", ":path: http://admin.example.com/x"],
        ),
        ("query-only :path", &["--header", ":path: ?admin=1"]),
        ("connection", &["--header", "connection: close"]),
        (
            "transfer-encoding",
            &["--header", "transfer-encoding: chunked"],
        ),
        ("te other than trailers", &["--header", "te: gzip"]),
        (
            "a second host",
            &[
                "--header",
                "host: shop.meshgate.test",
                "--header",
                "host: admin.example.com",
            ],
        ),
    ];
    for (case, extra) in refused {
        let r = &s.h3("/refused", &[&host[..], extra].concat())["responses"][0];
        assert_eq!(r["status"], 0, "{case}: {r}");
        assert_eq!(
            r["error"],
            format!("stream reset, code {H3_MESSAGE_ERROR}"),
            "{case}: {r}"
        );
    }
    let r = s.h3_one(
        "/trailers",
        &[&host[..], &["--header", "te: trailers"]].concat(),
    );
    assert_eq!(r["status"], 200, "{r}");
    let r = s.h3_one("/plain", &host);
    assert_eq!(r["status"], 200, "{r}");

    // The origins saw the two good requests and nothing else: each request
    // is logged there before it is answered, and the refused ones came
    // first.
    let seen = || {
        let mut all = s.up.v1.requests();
        all.extend(s.up.v2.requests());
        all.sort();
        all
    };
    wait_for(Duration::from_secs(10), "the origins to log", || {
        seen().len() >= 2
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", seen()));
    assert_eq!(seen(), ["GET /plain 0", "GET /trailers 0"]);

    // Each refusal is counted and logged: no response (status 0), the
    // reason a malformed HTTP/1.1 head gets, the request line as parsed
    // (a query-only `:path` has the path `/`).
    let refused = || -> Vec<Value> {
        s.gw.access_log()
            .into_iter()
            .filter(|l| l["reason"] == "bad-request")
            .collect()
    };
    wait_for(Duration::from_secs(5), "six access-log lines", || {
        refused().len() >= 6
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", s.gw.access_log()));
    for l in refused() {
        assert_eq!(l["status"], 0, "{l}");
        assert_eq!(l["proto"], "http3", "{l}");
        assert!(l["route"].is_null(), "{l}");
    }
    assert_eq!(refused().len(), 6);
    // h3 refuses the absolute-form target itself, before a request line
    // is handed over; the others were parsed.
    assert_eq!(
        refused().iter().filter(|l| l["method"] == "GET").count(),
        5,
        "{:?}",
        refused()
    );
    let m = s.gw.metrics().expect("metrics");
    assert_eq!(
        metric(
            &m,
            "meshgate_requests_total",
            &[
                r#"status="0""#,
                r#"reason="bad-request""#,
                r#"protocol="http3""#
            ],
        ),
        Some(6.0),
        "{m}"
    );
}

#[test]
fn every_client_can_be_asked_to_prove_its_address() {
    // retry_threshold = 0: every new client gets a retry token first.
    let s = setup("retry_threshold = 0");
    for _ in 0..3 {
        let r = s.h3_one("/hello", &[]);
        assert_eq!(r["status"], 200, "{r}");
    }
    let m = s.gw.metrics().expect("metrics");
    let count = |outcome: &str| {
        metric(
            &m,
            "meshgate_http3_connections_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("retry"), 3.0, "{m}");
    assert_eq!(count("ok"), 3.0, "{m}");
}

#[test]
fn connections_beyond_the_listener_limit_are_refused() {
    let s = setup_with("", ", max_connections = 1");
    let mut held = Proc::spawn(h3_command(&s.url("/chunked?id=cap"), &[])).expect("client");
    wait_in_flight(&s.gw, 1.0);
    let out = h3_command(&s.url("/hello"), &["--timeout", "10"])
        .output()
        .expect("second client");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let refused = v["responses"][0]["status"] != 200 || !v["error"].is_null();
    assert!(refused, "a second connection is refused: {v}");
    let release = format!("http://{}/release?id=cap", s.up.stream.addr);
    assert_eq!(curl(&[&release]).expect("release").status, 200);
    held.wait_exit(Duration::from_secs(20)).expect("held ends");
    let out: Value = serde_json::from_str(held.stdout().trim()).expect("json");
    assert_eq!(out["responses"][0]["status"], 200, "{out}");
    let m = s.gw.metrics().expect("metrics");
    assert!(
        metric(
            &m,
            "meshgate_http3_connections_total",
            &["outcome=\"refused\""]
        ) >= Some(1.0),
        "{m}"
    );
    // Once the first connection is gone, a new one is served.
    wait_for(Duration::from_secs(20), "a free connection slot", || {
        h3_command(&s.url("/hello"), &["--timeout", "5"])
            .output()
            .is_ok_and(|o| {
                serde_json::from_slice::<Value>(&o.stdout)
                    .is_ok_and(|v| v["responses"][0]["status"] == 200)
            })
    })
    .expect("served again");
}

#[test]
fn resumed_connections_with_early_data_serve_requests() {
    // Resumed clients may send 0-RTT: safe requests are served from it,
    // others wait for the handshake to complete.
    let s = setup("early_data = true");
    let r = s.h3_one("/hello", &["--zero-rtt"]);
    assert_eq!(r["status"], 200, "{r}");
    let file = s.dir.join("small.bin");
    let want = random_file(&file, 1000);
    let r = s.h3_one(
        "/sha256",
        &[
            "--zero-rtt",
            "--method",
            "POST",
            "--data-file",
            file.to_str().expect("path"),
        ],
    );
    assert_eq!(r["status"], 200, "{r}");
    let seen: Value = serde_json::from_str(r["body"].as_str().expect("body")).expect("json");
    assert_eq!(seen["sha256"], want);
}

#[test]
fn http3_settings_are_checked() {
    let dir = tempdir().expect("tempdir");
    let tls = tls_dir();
    let cases = [
        (
            "protocols = [\"http1\", \"http3\"]",
            "",
            "`http3` needs TLS on this listener",
        ),
        (
            "protocols = [\"http1\"]",
            "[listener.http3]\nmax_concurrent_streams = 10",
            "without `http3` in its protocols",
        ),
        (
            "protocols = [\"http1\", \"http3\"]\n[listener.tls]\ncertificates = [{ cert = \"CERT\", key = \"KEY\" }]",
            "[listener.http3]\nstream_receive_window = 1048576\nreceive_window = 65536",
            "is smaller than `stream_receive_window`",
        ),
        (
            "protocols = [\"http1\", \"http3\"]\n[listener.tls]\ncertificates = [{ cert = \"CERT\", key = \"KEY\" }]",
            "[listener.http3]\nmax_concurrent_streams = 0",
            "max_concurrent_streams",
        ),
    ];
    for (i, (listener, extra, want)) in cases.iter().enumerate() {
        let text = format!(
            "[[listener]]\nname = \"edge\"\naddress = \"127.0.0.1:{}\"\n{}\n{}\n",
            free_port(),
            listener
                .replace("CERT", &tls.join("server.pem").display().to_string())
                .replace("KEY", &tls.join("server-key.pem").display().to_string()),
            extra
        );
        let path = dir.join(format!("case{i}.toml"));
        std::fs::write(&path, &text).expect("write");
        let out = Command::new(meshgate_tests::bin("meshgate"))
            .arg("check")
            .arg(&path)
            .output()
            .expect("meshgate check");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "case {i} accepted:\n{text}");
        assert!(all.contains(want), "case {i}: want {want:?} in:\n{all}");
    }
}
