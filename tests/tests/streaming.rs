//! Real traffic through the gateway with real clients: gRPC over HTTP/2
//! with trailers (grpcio), WebSocket upgrades (`websockets`), 64 MiB
//! uploads and downloads, chunked bodies streamed as they arrive, and
//! h2load. Upstream HTTP/2 (h2c and TLS with ALPN) is checked by putting a
//! second gateway behind the first and reading its access log.
//!
//! The Python servers and clients live in `tests/py/`; `make test` installs
//! grpcio and websockets (`scripts/prereqs.sh test`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use meshgate_tests::{
    Gateway, Proc, PyServer, check_grpc_echo, free_port, py_client, run, tempdir, wait_for,
};
use serde_json::Value;

/// Size of the large bodies.
const LARGE: usize = 64 * 1024 * 1024;

/// How far the gateway's resident memory may grow while 64 MiB bodies pass
/// through it. A gateway that held a whole body would grow by at least
/// 64 MiB; flow-control windows and pooled buffers stay well below this.
const RSS_GROWTH_LIMIT_KIB: u64 = 32 * 1024;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `[admin]` on a free port, so parallel gateways never share one.
fn admin_section() -> String {
    format!("[admin]\naddress = \"127.0.0.1:{}\"\n", free_port())
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// Waits until the gateway's access log satisfies `cond` (lines are
/// written once a response is complete, which can be just after the client
/// has it).
fn wait_for_log(gw: &Gateway, what: &str, cond: impl Fn(&[Value]) -> bool) {
    wait_for(Duration::from_secs(10), what, || cond(&gw.access_log()))
        .unwrap_or_else(|e| panic!("{e}: {:#?}", gw.access_log()));
}

/// A test CA and a server certificate for the IP address 127.0.0.1.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = run(
        Command::new("openssl").current_dir(dir).args(args),
        Duration::from_secs(30),
    )
    .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn certificates(dir: &Path) -> Certs {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=meshgate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=upstream",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// Starts a gateway that trusts `ca` for upstream TLS (and nothing from the
/// environment).
fn gateway_trusting(config: &Path, port: u16, ca: Option<&Path>) -> Gateway {
    Gateway::start_with(config, addr(port), |cmd| {
        cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
    })
    .expect("gateway starts")
}

// ---------------------------------------------------------------- gRPC

fn grpc_gateway_config(port: u16, upstream: SocketAddr, tls: &str) -> String {
    format!(
        r#"{admin}
[[listener]]
name = "edge"
address = "127.0.0.1:{port}"
protocols = ["http1", "h2c"]
limits = {{ drain_timeout = "1s" }}

[[route]]
name = "echo"
match = {{ path_prefix = "/meshgate.test.Echo/" }}
service = "echo"

[[service]]
name = "echo"
protocol = "http2"
tls = "{tls}"
endpoints = [{{ address = "{upstream}" }}]

[observability]
access_log = {{ format = "json", path = "stdout" }}
"#,
        admin = admin_section(),
    )
}

#[test]
fn grpc_calls_are_mirrored_to_an_http2_service() {
    let server = PyServer::start("grpc_echo_server.py", &[]).expect("grpc server");
    let shadow = PyServer::start("grpc_echo_server.py", &[]).expect("shadow grpc server");
    let dir = tempdir().expect("tempdir");
    let port = free_port();
    let config = grpc_gateway_config(port, server.addr, "none").replace(
        "service = \"echo\"\n",
        &format!(
            "service = \"echo\"\nmirror = {{ service = \"shadow\" }}\n\n[[service]]\n\
             name = \"shadow\"\nprotocol = \"http2\"\n\
             endpoints = [{{ address = \"{}\" }}]\n",
            shadow.addr
        ),
    );
    let config = write_config(&dir, "gw.toml", &config);
    let gw = Gateway::start(&config, addr(port)).expect("gateway starts");
    let through = py_client("grpc_client.py", &[&addr(port).to_string()]).expect("via gateway");
    check_grpc_echo(&through, "through the gateway with a mirror");
    // Every call was copied to the shadow over h2c (`te: trailers` and
    // all), and the shadow answered each copy.
    let sent = || {
        gw.metrics().ok().and_then(|m| {
            meshgate_tests::metric(
                &m,
                "meshgate_mirror_requests_total",
                &["service=\"shadow\"", "result=\"sent\""],
            )
        })
    };
    wait_for(
        Duration::from_secs(10),
        "five mirrored calls answered",
        || sent() == Some(5.0),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", gw.metrics()));
}

#[test]
fn grpc_calls_keep_status_and_trailers_over_h2c() {
    let server = PyServer::start("grpc_echo_server.py", &[]).expect("grpc server");
    let direct = py_client("grpc_client.py", &[&server.addr.to_string()]).expect("direct");
    check_grpc_echo(&direct, "direct");

    let dir = tempdir().expect("tempdir");
    let port = free_port();
    let config = write_config(
        &dir,
        "gw.toml",
        &grpc_gateway_config(port, server.addr, "none"),
    );
    let gw = Gateway::start(&config, addr(port)).expect("gateway starts");
    let through = py_client("grpc_client.py", &[&addr(port).to_string()]).expect("via gateway");
    check_grpc_echo(&through, "through the gateway");

    // gRPC calls are logged (and counted) as `grpc`, whatever HTTP version
    // carries them.
    wait_for_log(&gw, "one gRPC access-log line per call", |log| {
        log.iter()
            .filter(|l| l["route"] == "echo" && l["proto"] == "grpc" && l["status"] == 200)
            .count()
            == 5
    });
}

#[test]
fn grpc_reaches_a_tls_upstream_with_alpn_h2_and_a_verified_certificate() {
    let dir = tempdir().expect("tempdir");
    let certs = certificates(&dir);
    let cert = certs.cert.display().to_string();
    let key = certs.key.display().to_string();
    let server =
        PyServer::start("grpc_echo_server.py", &["--tls", &cert, &key]).expect("grpc TLS server");

    let port = free_port();
    let config = write_config(
        &dir,
        "gw.toml",
        &grpc_gateway_config(port, server.addr, "tls"),
    );
    let _gw = gateway_trusting(&config, port, Some(&certs.ca));
    let through = py_client("grpc_client.py", &[&addr(port).to_string()]).expect("via gateway");
    check_grpc_echo(&through, "through the gateway to a TLS upstream");

    // The same gateway without our CA must refuse the upstream's certificate.
    let port = free_port();
    let config = write_config(
        &dir,
        "untrusting.toml",
        &grpc_gateway_config(port, server.addr, "tls"),
    );
    let gw = gateway_trusting(&config, port, None);
    let out = py_client("grpc_client.py", &[&addr(port).to_string()]);
    let err = out.expect_err("an unverified upstream must not be reached");
    assert!(
        err.to_string().contains("UNAVAILABLE"),
        "a 502 reaches a gRPC client as UNAVAILABLE: {err}"
    );
    wait_for_log(&gw, "a 502 for an unknown issuer", |log| {
        log.iter().any(|l| {
            l["status"] == 502
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("UnknownIssuer"))
        })
    });
}

// ----------------------------------------------------------- WebSocket

fn check_websocket(out: &Value, how: &str, path: &str, count: usize) {
    assert_eq!(out["greeting"], format!("hello {path}"), "{how}: {out}");
    let echoes: Vec<String> = (0..count).map(|i| format!("message {i}")).collect();
    assert_eq!(out["echoes"], serde_json::json!(echoes), "{how}: {out}");
    assert_eq!(out["binary_ok"], true, "{how}: {out}");
    assert_eq!(out["binary_len"], 16384, "{how}: {out}");
    assert_eq!(out["close_code"], 1000, "{how}: {out}");
}

#[test]
fn websocket_upgrade_carries_messages_both_ways() {
    let server = PyServer::start("ws_echo_server.py", &[]).expect("websocket server");
    let direct = py_client(
        "ws_client.py",
        &[&format!("ws://{}/ws/chat", server.addr), "10"],
    )
    .expect("direct");
    check_websocket(&direct, "direct", "/ws/chat", 10);

    let dir = tempdir().expect("tempdir");
    let port = free_port();
    let config = write_config(
        &dir,
        "gw.toml",
        &format!(
            r#"{admin}
[[listener]]
name = "edge"
address = "127.0.0.1:{port}"
protocols = ["http1", "h2c"]
# The body limit is for request bodies: a tunnel's messages (16 KiB and
# more each way here) are not one.
limits = {{ drain_timeout = "1s", max_request_body_bytes = 1024 }}

[[route]]
name = "chat"
match = {{ path_prefix = "/ws" }}
service = "chat"

[[service]]
name = "chat"
endpoints = [{{ address = "{upstream}" }}]

[observability]
access_log = {{ format = "json", path = "stdout" }}
"#,
            admin = admin_section(),
            upstream = server.addr,
        ),
    );
    let gw = Gateway::start(&config, addr(port)).expect("gateway starts");
    for round in 0..3 {
        let out = py_client(
            "ws_client.py",
            &[&format!("ws://127.0.0.1:{port}/ws/chat"), "10"],
        )
        .expect("via gateway");
        check_websocket(
            &out,
            &format!("through the gateway, round {round}"),
            "/ws/chat",
            10,
        );
    }
    // Each tunnel carried more than the body limit from the client.
    wait_for_log(&gw, "three 101 lines in the access log", |log| {
        log.iter()
            .filter(|l| {
                l["route"] == "chat"
                    && l["status"] == 101
                    && l["bytes_in"].as_u64().is_some_and(|n| n > 16384)
            })
            .count()
            == 3
    });
}

// ------------------------------------- HTTP/1.1 origin behind two gateways

/// A streaming origin behind gateway `a`, reached four ways: directly, and
/// through a second gateway `b` over h2c, over TLS with ALPN h2, and over
/// TLS with HTTP/1.1. `b` logs which listener and protocol each request
/// arrived on, which is how the tests see what `a` spoke upstream.
struct Stack {
    origin: PyServer,
    b: Gateway,
    a: Gateway,
    a_port: u16,
    dir: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The large-body test leaves 128 MiB here.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Path prefixes on `a`, one per way upstream; each is stripped before the
/// request leaves `a`.
const LEGS: [&str; 4] = ["/h1", "/h2c", "/h2tls", "/h1tls"];

impl Stack {
    fn start() -> Stack {
        let dir = tempdir().expect("tempdir");
        let certs = certificates(&dir);
        let origin = PyServer::start("stream_origin.py", &[]).expect("stream origin");
        let b_plain = free_port();
        let b_tls = free_port();
        let b_config = write_config(
            &dir,
            "b.toml",
            &format!(
                r#"{admin}
[[listener]]
name = "b-plain"
address = "127.0.0.1:{b_plain}"
protocols = ["http1", "h2c"]
limits = {{ drain_timeout = "1s" }}

[[listener]]
name = "b-tls"
address = "127.0.0.1:{b_tls}"
protocols = ["http1", "http2"]
# Read-buffered, unlike the other listeners (default 0), so large bodies
# cross both ways of reading.
limits = {{ drain_timeout = "1s", read_buffer_bytes = 65536 }}
tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}] }}

[[route]]
name = "all"
service = "origin"

[[service]]
name = "origin"
endpoints = [{{ address = "{origin}" }}]

[observability]
access_log = {{ format = "json", path = "stdout" }}
"#,
                admin = admin_section(),
                cert = certs.cert.display(),
                key = certs.key.display(),
                origin = origin.addr,
            ),
        );
        let b = Gateway::start(&b_config, addr(b_plain)).expect("gateway b starts");
        meshgate_tests::wait_for_port(addr(b_tls)).expect("b's TLS listener");

        let a_port = free_port();
        let mut routes = String::new();
        let services = [
            ("direct", origin.addr, "http1", "none"),
            ("b-h2c", addr(b_plain), "http2", "none"),
            ("b-h2tls", addr(b_tls), "http2", "tls"),
            ("b-h1tls", addr(b_tls), "http1", "tls"),
        ];
        for (leg, (service, upstream, protocol, tls)) in LEGS.iter().zip(services) {
            routes.push_str(&format!(
                r#"
[[route]]
name = "{service}"
match = {{ path_prefix = "{leg}" }}
service = "{service}"
rewrite = {{ path_prefix = "/" }}

[[service]]
name = "{service}"
protocol = "{protocol}"
tls = "{tls}"
endpoints = [{{ address = "{upstream}" }}]
"#
            ));
        }
        let a_config = write_config(
            &dir,
            "a.toml",
            &format!(
                r#"{admin}
[[listener]]
name = "edge"
address = "127.0.0.1:{a_port}"
protocols = ["http1", "h2c"]
limits = {{ drain_timeout = "1s" }}
{routes}
[observability]
access_log = {{ format = "json", path = "stdout" }}
"#,
                admin = admin_section(),
            ),
        );
        let a = gateway_trusting(&a_config, a_port, Some(&certs.ca));
        Stack {
            origin,
            b,
            a,
            a_port,
            dir,
        }
    }

    fn url(&self, leg: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{leg}{path}", self.a_port)
    }
}

/// Client-side protocol flags for curl: HTTP/1.1 and h2c.
const CLIENTS: [(&str, &str); 2] = [("http1", "--http1.1"), ("h2c", "--http2-prior-knowledge")];

#[test]
fn upstream_protocol_and_tls_follow_the_service() {
    let stack = Stack::start();
    let expect = [
        ("/h2c", "b-plain", "http2"),
        ("/h2tls", "b-tls", "http2"),
        ("/h1tls", "b-tls", "http1"),
    ];
    let authority = format!("127.0.0.1:{}", stack.a_port);
    for (leg, listener, proto) in expect {
        for (client, flag) in CLIENTS {
            // The path is rewritten on the way; the client's authority must
            // survive it, whichever protocol carries it on either side.
            let probe = format!("/probe-{client}{}", leg.replace('/', "-"));
            let resp = meshgate_tests::curl(&[flag, &stack.url(leg, &probe)]).expect("curl");
            assert_eq!(resp.status, 200, "{client} {leg}: {resp:?}");
            assert_eq!(
                resp.body,
                format!("stream origin path={probe}\n"),
                "{client} {leg}"
            );
            wait_for_log(
                &stack.b,
                &format!("{probe} to arrive at {listener} over {proto} for {authority}"),
                |log| {
                    log.iter().any(|l| {
                        l["path"] == probe.as_str()
                            && l["listener"] == listener
                            && l["proto"] == proto
                            && l["authority"] == authority.as_str()
                    })
                },
            );
        }
    }

    // Without the test CA, the TLS upstream's certificate is refused.
    let port = free_port();
    let text = std::fs::read_to_string(stack.dir.join("a.toml"))
        .expect("a.toml")
        .replace(&stack.a_port.to_string(), &port.to_string());
    // Its own admin port: the first gateway still holds the copied one.
    let admin_line = text
        .lines()
        .skip_while(|l| *l != "[admin]")
        .nth(1)
        .expect("admin address line")
        .to_owned();
    let text = text.replacen(
        &admin_line,
        &format!("address = \"127.0.0.1:{}\"", free_port()),
        1,
    );
    let config = write_config(&stack.dir, "untrusting.toml", &text);
    let untrusting = gateway_trusting(&config, port, None);
    for leg in ["/h2tls", "/h1tls"] {
        let url = format!("http://127.0.0.1:{port}{leg}/refused");
        let resp = meshgate_tests::curl(&[&url]).expect("curl");
        assert_eq!(resp.status, 502, "{leg}: {resp:?}");
    }
    assert!(
        !stack.b.access_log().iter().any(|l| l["path"] == "/refused"),
        "no request may reach an unverified upstream"
    );
    drop(untrusting);
}

/// Samples a process's resident set size until dropped; keeps the peak.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssWatch {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file of `len` pseudo-random bytes.
fn random_file(path: &Path, len: usize) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut written = 0;
    while written < len {
        // xorshift64*: incompressible enough that no layer can shortcut it.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        f.write_all(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes())?;
        written += 8;
    }
    f.flush()?;
    Ok(())
}

fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path), Duration::from_secs(60)).expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs curl for a large transfer: `-sS`, a generous time limit, status
/// code on stdout after the body or into `-o`.
fn curl_transfer(args: &[&str]) -> (u16, String) {
    let out = run(
        Command::new("curl")
            .args(["-sS", "--max-time", "120", "-w", "\n%{http_code}"])
            .args(args),
        Duration::from_secs(130),
    )
    .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn large_bodies_stream_intact_both_ways() {
    let stack = Stack::start();
    let file = stack.dir.join("large.bin");
    random_file(&file, LARGE).expect("write large file");
    let want = sha256_file(&file);
    let upload = format!("@{}", file.display());

    // Warm up every leg so pooled connections and buffers exist before the
    // memory baseline is taken.
    for leg in LEGS {
        let (code, _) = curl_transfer(&[&stack.url(leg, "/warm-up")]);
        assert_eq!(code, 200, "{leg}");
    }
    let baseline = rss_kib(stack.a.proc.pid()).expect("gateway RSS");
    let watch = RssWatch::start(stack.a.proc.pid());

    for leg in &LEGS[..3] {
        for (client, flag) in CLIENTS {
            let how = format!("{client} client, upstream leg {leg}");
            for chunked in [false, true] {
                let mut args = vec![flag, "--data-binary", &upload];
                if chunked {
                    args.extend(["-H", "Transfer-Encoding: chunked"]);
                }
                let url = stack.url(leg, "/sha256");
                args.push(&url);
                let (code, body) = curl_transfer(&args);
                assert_eq!(code, 200, "{how}, chunked={chunked}: {body}");
                let seen: Value = serde_json::from_str(&body).expect("origin JSON");
                assert_eq!(seen["bytes"], LARGE, "{how}, chunked={chunked}");
                assert_eq!(seen["sha256"], want.as_str(), "{how}, chunked={chunked}");
                if *leg == "/h1" && client == "http1" {
                    assert_eq!(seen["chunked"], chunked, "framing kept on {how}");
                }
            }

            let out = stack.dir.join("download.bin");
            let _ = std::fs::remove_file(&out);
            let url = stack.url(leg, &format!("/download?path={}", file.display()));
            let (code, _) = curl_transfer(&[flag, "-o", &out.display().to_string(), &url]);
            assert_eq!(code, 200, "{how}");
            assert_eq!(
                std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0),
                LARGE as u64,
                "{how}"
            );
            assert_eq!(sha256_file(&out), want, "download on {how}");
        }
    }

    let peak = watch.peak_kib();
    drop(watch);
    eprintln!("gateway RSS: {baseline} KiB before, {peak} KiB at the peak");
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_LIMIT_KIB,
        "gateway RSS grew from {baseline} KiB to {peak} KiB while streaming 64 MiB bodies"
    );
}

#[test]
fn chunked_response_reaches_the_client_before_the_origin_finishes() {
    let stack = Stack::start();
    for leg in ["/h1", "/h2c", "/h2tls"] {
        for (client, flag) in CLIENTS {
            let how = format!("{client} client, upstream leg {leg}");
            let id = format!("{client}{}", leg.replace('/', "-"));
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "-N", "-i", "--max-time", "40", flag])
                .arg(stack.url(leg, &format!("/chunked?id={id}")));
            let mut proc = Proc::spawn(cmd).expect("curl");
            // The origin holds everything after its first chunk until it is
            // released, so seeing the first chunk proves it was forwarded
            // on its own.
            wait_for(Duration::from_secs(15), "the first chunk", || {
                proc.stdout().contains("first part")
            })
            .unwrap_or_else(|e| panic!("{how}: {e}: {:?} {}", proc.stdout(), proc.stderr()));
            assert!(!proc.stdout().contains("last part"), "{how}");
            if client == "http1" {
                assert!(
                    proc.stdout()
                        .to_ascii_lowercase()
                        .contains("transfer-encoding: chunked"),
                    "{how}: {}",
                    proc.stdout()
                );
            }

            let release = format!("http://{}/release?id={id}", stack.origin.addr);
            let resp = meshgate_tests::curl(&[&release]).expect("release");
            assert_eq!(resp.status, 200);
            let code = proc.wait_exit(Duration::from_secs(30)).expect("curl ends");
            assert_eq!(code, Some(0), "{how}: {}", proc.stderr());
            // Output is collected by a reader thread, which may still be
            // draining the pipe when curl has exited.
            wait_for(Duration::from_secs(10), "the last chunk", || {
                proc.stdout().contains("last part")
            })
            .unwrap_or_else(|e| panic!("{how}: {e}: {:?}", proc.stdout()));
            let out = proc.stdout();
            let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
            assert_eq!(body, "first part\nsecond part\nlast part\n", "{how}: {out}");
        }
    }
}

#[test]
fn http_1_0_client_gets_a_chunked_answer_delimited_by_the_close() {
    use std::io::Read;
    let stack = Stack::start();
    // `/h1`: the origin answers chunked; `/h2c`: an HTTP/2 answer without a
    // length, which the gateway would send on as chunked.
    for leg in ["/h1", "/h2c"] {
        let id = format!("ten{}", leg.replace('/', "-"));
        let release = format!("http://{}/release?id={id}", stack.origin.addr);
        assert_eq!(
            meshgate_tests::curl(&[&release]).expect("release").status,
            200
        );
        let mut s = std::net::TcpStream::connect(addr(stack.a_port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        write!(s, "GET {leg}/chunked?id={id} HTTP/1.0\r\n\r\n").expect("send");
        let mut raw = Vec::new();
        // An error here is the read timeout: the connection stayed open.
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("{leg}: not closed: {e}: {raw:?}"));
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{leg}: {raw}");
        assert!(!head.contains("transfer-encoding"), "{leg}: {raw}");
        assert!(head.contains("connection: close"), "{leg}: {raw}");
        assert_eq!(body, "first part\nsecond part\nlast part\n", "{leg}: {raw}");
    }
}

/// Totals from h2load's "requests:" line.
fn h2load_requests(out: &str) -> Option<Vec<(String, u64)>> {
    let line = out.lines().find_map(|l| l.strip_prefix("requests:"))?;
    line.split(',')
        .map(|part| {
            let (n, what) = part.trim().split_once(' ')?;
            Some((what.to_owned(), n.parse().ok()?))
        })
        .collect()
}

#[test]
fn h2load_through_the_gateway_has_no_errors() {
    let stack = Stack::start();
    for leg in ["/h1", "/h2c", "/h2tls"] {
        let url = stack.url(leg, "/load");
        let out = run(
            Command::new("h2load").args(["-n", "200", "-c", "4", "-m", "10", &url]),
            Duration::from_secs(60),
        )
        .expect("h2load runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{leg}: {text}");
        let counts = h2load_requests(&text).unwrap_or_else(|| panic!("{leg}: {text}"));
        let count = |what: &str| {
            counts
                .iter()
                .find(|(w, _)| w == what)
                .map_or(u64::MAX, |(_, n)| *n)
        };
        assert_eq!(count("succeeded"), 200, "{leg}: {text}");
        for bad in ["failed", "errored", "timeout"] {
            assert_eq!(count(bad), 0, "{leg}: {text}");
        }
        assert!(text.contains("status codes: 200 2xx"), "{leg}: {text}");
    }
    wait_for_log(&stack.b, "both HTTP/2 legs to carry every request", |log| {
        log.iter()
            .filter(|l| l["path"] == "/load" && l["proto"] == "http2" && l["status"] == 200)
            .count()
            == 400
    });
}
