//! Resilience through the real gateway: retries that succeed after a flaky
//! upstream fails, retries refused by the budget, connect failures moved to
//! another endpoint, outlier ejection and recovery, service limits, and
//! timeouts. The upstream is a real HTTP server (Python's standard library)
//! whose failures are scripted per request path.

use std::process::Command;
use std::time::Duration;

use meshgate_tests::scripted::scripted;
use meshgate_tests::{Gateway, Proc, curl, free_port, metric, wait_for};

fn get(url: &str) -> meshgate_tests::CurlResponse {
    curl(&[url]).expect("curl")
}

/// Asserts that outlier detection ejected no endpoint of service `s`.
fn assert_no_ejections(gw: &Gateway) {
    let m = gw.metrics().expect("metrics");
    assert_eq!(
        metric(&m, "meshgate_endpoint_ejections_total", &["service=\"s\""]).unwrap_or(0.0),
        0.0,
        "{m}"
    );
}

/// Starts the gateway with one listener and the given routes and services.
fn gateway(body: &str) -> (Gateway, String) {
    let (gw, addr) = Gateway::start_web("", body).expect("gateway");
    (gw, format!("http://{addr}"))
}

#[test]
fn retries_succeed_after_a_flaky_upstream_fails_twice() {
    let o = scripted("a");
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"
retry = {{ max_retries = 2, on = ["503"], backoff_base = "5ms", backoff_max = "20ms" }}

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
"#,
        o.addr
    ));
    let r = get(&format!("{base}/flaky/2/k1"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "try 3\n");
    assert_eq!(get(&format!("http://{}/count/flaky/k1", o.addr)).body, "3");
    // Three failures with two retries allowed: the client sees the third 503.
    let r = get(&format!("{base}/flaky/3/k2"));
    assert_eq!(r.status, 503);
    // The access log is written after the response has gone out.
    wait_for(Duration::from_secs(5), "both access-log lines", || {
        gw.access_log().len() >= 2
    })
    .expect("access log");
    let log = gw.access_log();
    assert!(
        log.iter()
            .any(|l| l["path"] == "/flaky/2/k1" && l["retries"] == 2 && l["status"] == 200),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l["path"] == "/flaky/3/k2"
            && l["retries"] == 2
            && l["retry_stop"] == "attempts_exhausted"),
        "{log:?}"
    );
}

#[test]
fn retries_stop_when_the_budget_is_spent() {
    let o = scripted("a");
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"
retry = {{ max_retries = 3, on = ["503"], backoff_base = "1ms", backoff_max = "2ms" }}

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
retry_budget = {{ ratio_percent = 0, min_retries_per_second = 0 }}
"#,
        o.addr
    ));
    let r = get(&format!("{base}/flaky/1/k"));
    assert_eq!(r.status, 503, "no budget: the first failure is final");
    // The access log is written after the response has gone out.
    wait_for(Duration::from_secs(5), "the access-log line", || {
        !gw.access_log().is_empty()
    })
    .expect("access log");
    let log = gw.access_log();
    assert!(
        log.iter()
            .any(|l| l["retries"] == 0 && l["retry_stop"] == "budget_exhausted"),
        "{log:?}"
    );
    let m = gw.metrics().expect("metrics");
    assert_eq!(
        metric(
            &m,
            "meshgate_retry_budget_exhausted_total",
            &["service=\"s\""]
        ),
        Some(1.0),
        "{m}"
    );
}

/// A retry that the service's cap on retries in flight refuses is not
/// charged to the retry budget. The budget here is half the requests sent
/// (over a minute, so the test's requests all count): after two good
/// requests, A's retry takes the one retry earned and holds the only retry
/// slot while it is slow; B's retry is refused by the slot; once A is done,
/// C's retry is allowed, which it would not be had B's refusal spent the
/// retry that B's request earned.
#[test]
fn a_retry_the_retry_limit_refuses_spends_no_budget() {
    let o = scripted("a");
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"
retry = {{ max_retries = 1, on = ["503"], backoff_base = "1ms", backoff_max = "2ms" }}

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
circuit_breaker = {{ max_retries = 1 }}
retry_budget = {{ ratio_percent = 50, min_retries_per_second = 0, ttl = "60s" }}
"#,
        o.addr
    ));
    for _ in 0..2 {
        assert_eq!(get(&format!("{base}/svc")).status, 200);
    }
    let slow_url = format!("{base}/flaky-slow/1/4000/a");
    let mut a = Proc::spawn({
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &slow_url]);
        c
    })
    .expect("curl");
    let tries_a = format!("http://{}/count/flaky-slow/a", o.addr);
    wait_for(Duration::from_secs(20), "A's retry to arrive", || {
        get(&tries_a).body == "2"
    })
    .expect("A's retry in flight");

    let r = get(&format!("{base}/flaky/1/b"));
    assert_eq!(r.status, 503, "the only retry slot is A's: {r:?}");
    assert_eq!(get(&format!("http://{}/count/flaky/b", o.addr)).body, "1");

    a.wait_exit(Duration::from_secs(20)).expect("A ends");
    assert_eq!(a.stdout(), "200", "A succeeded on its retry");

    let r = get(&format!("{base}/flaky/1/c"));
    assert_eq!(r.status, 200, "B's refused retry left C's allowance: {r:?}");
    assert_eq!(r.body, "try 2\n");

    wait_for(Duration::from_secs(5), "the access-log lines", || {
        gw.access_log().len() >= 5
    })
    .expect("access log");
    let log = gw.access_log();
    let line = |path: &str| {
        log.iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {log:?}"))
            .clone()
    };
    let b = line("/flaky/1/b");
    assert_eq!(b["retries"], 0, "{b}");
    assert_eq!(b["retry_stop"], "retry_limit", "{b}");
    let c = line("/flaky/1/c");
    assert_eq!(c["retries"], 1, "{c}");
    let m = gw.metrics().expect("metrics");
    assert_eq!(
        metric(
            &m,
            "meshgate_retry_budget_exhausted_total",
            &["service=\"s\""]
        )
        .unwrap_or(0.0),
        0.0,
        "{m}"
    );
}

#[test]
fn connect_failures_move_to_another_endpoint_even_for_post() {
    let o = scripted("live");
    let dead = free_port();
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"
retry = {{ max_retries = 1, on = ["connect-failure"], backoff_base = "1ms", backoff_max = "2ms" }}

[[service]]
name = "s"
lb = "round-robin"
endpoints = [{{ address = "127.0.0.1:{dead}" }}, {{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 0 }}
"#,
        o.addr
    ));
    for i in 0..6 {
        let url = format!("{base}/svc/{i}");
        let r = curl(&["-X", "POST", "--data", "x", &url]).expect("curl");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.header("x-origin"), Some("live"));
    }
    wait_for(Duration::from_secs(5), "six access-log lines", || {
        gw.access_log().len() >= 6
    })
    .expect("access log");
    let log = gw.access_log();
    assert!(
        log.iter().any(|l| l["retries"] == 1),
        "some request hit the dead endpoint first: {log:?}"
    );
}

#[test]
fn outlier_detection_ejects_and_recovers_an_endpoint() {
    let bad = scripted("bad");
    let good = scripted("good");
    let (_gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"

[[service]]
name = "s"
lb = "round-robin"
endpoints = [{{ address = "{}" }}, {{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 2, base_ejection = "2s", max_ejection = "10s", max_ejected_percent = 50 }}
"#,
        bad.addr, good.addr
    ));
    assert_eq!(
        get(&format!("http://{}/control/fail", bad.addr)).status,
        200
    );
    // Round robin sends every other request to `bad` until it is ejected.
    let mut failures = 0;
    for _ in 0..6 {
        if get(&format!("{base}/svc")).status == 500 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "ejected after two consecutive failures");
    for _ in 0..10 {
        let r = get(&format!("{base}/svc"));
        assert_eq!((r.status, r.header("x-origin")), (200, Some("good")));
    }
    // Heal it: once the ejection ends (2 s), a probe succeeds and it serves
    // again.
    assert_eq!(
        get(&format!("http://{}/control/heal", bad.addr)).status,
        200
    );
    wait_for(
        Duration::from_secs(10),
        "the healed endpoint to serve again",
        || get(&format!("{base}/svc")).header("x-origin") == Some("bad"),
    )
    .expect("recovery");
}

#[test]
fn an_ejected_only_endpoint_gives_503_no_healthy_endpoint() {
    let bad = scripted("bad");
    let (_gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 1, base_ejection = "30s", max_ejected_percent = 100 }}
"#,
        bad.addr
    ));
    get(&format!("http://{}/control/fail", bad.addr));
    assert_eq!(get(&format!("{base}/svc")).status, 500);
    let r = get(&format!("{base}/svc"));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-meshgate-reason"), Some("no-healthy-endpoint"));
}

#[test]
fn service_limits_refuse_with_503_circuit_open() {
    let o = scripted("a");
    let (_gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
circuit_breaker = {{ max_requests = 1 }}
"#,
        o.addr
    ));
    let slow_url = format!("{base}/slow/3000");
    let mut slow = Proc::spawn({
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &slow_url]);
        c
    })
    .expect("curl");
    // Once the origin has the slow request, it holds the only permit.
    let started = format!("http://{}/count/slow-started", o.addr);
    wait_for(
        Duration::from_secs(20),
        "the slow request to arrive",
        || get(&started).body == "1",
    )
    .expect("slow request in flight");
    let r = get(&format!("{base}/svc"));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-meshgate-reason"), Some("circuit-open"));
    slow.wait_exit(Duration::from_secs(20))
        .expect("slow request ends");
    assert_eq!(slow.stdout(), "200");
    assert_eq!(get(&format!("{base}/svc")).status, 200, "permit released");
}

#[test]
fn route_timeout_is_504_and_per_try_timeout_retries() {
    let o = scripted("a");
    let (_gw, base) = gateway(&format!(
        r#"
[[route]]
name = "bounded"
match = {{ path_prefix = "/slow" }}
service = "s"
timeout = "300ms"

[[route]]
name = "per-try"
match = {{ path_prefix = "/slow-once" }}
service = "s"
timeout = "5s"
retry = {{ max_retries = 1, on = ["timeout"], per_try_timeout = "300ms", backoff_base = "1ms", backoff_max = "2ms" }}

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 0 }}
"#,
        o.addr
    ));
    let r = get(&format!("{base}/slow/2000"));
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-meshgate-reason"), Some("upstream-timeout"));
    let r = get(&format!("{base}/slow-once/2000/k"));
    assert_eq!(
        r.status, 200,
        "the retry after the per-try timeout succeeds: {r:?}"
    );
}

#[test]
fn mesh_services_never_fall_back_to_plaintext() {
    // A `tls = "mesh"` endpoint that is a plain HTTP server, not a
    // sidecar: the mTLS handshake fails, the request fails, and the
    // origin never sees an HTTP request.
    let o = scripted("a");
    let state = meshgate_tests::tempdir().expect("tempdir");
    let (_gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"

[[service]]
name = "s"
tls = "mesh"
connect_timeout = "500ms"
endpoints = [{{ address = "{}" }}]

[mesh]
control_plane_address = "127.0.0.1:{}"
state_dir = "{}"
"#,
        o.addr,
        meshgate_tests::free_port(),
        state.display()
    ));
    let r = get(&format!("{base}/svc"));
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        get(&format!("http://{}/count/svc", o.addr)).body,
        "0",
        "nothing sent in plaintext"
    );
}

#[test]
fn a_client_that_leaves_is_not_retried_nor_held_against_the_endpoint() {
    let o = scripted("only");
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 2, base_ejection = "30s", max_ejection = "60s", max_ejected_percent = 100 }}
"#,
        o.addr
    ));
    // Three clients give up while the endpoint is still answering (curl's
    // own --max-time: it closes the connection and exits with 28), over
    // HTTP/1.1 and over HTTP/2 (h2c).
    for how in ["--http1.1", "--http2-prior-knowledge", "--http1.1"] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "0.5", how])
            .arg(format!("{base}/slow/1500"))
            .output()
            .expect("curl runs");
        assert_eq!(out.status.code(), Some(28), "curl timed out");
    }
    // Each reached the endpoint once: nothing was sent again on behalf of
    // a client that had gone (the slow answers end 1.5 s after arriving).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        get(&format!("http://{}/count/slow-started", o.addr)).body,
        "3"
    );
    // Nor was the endpoint's health charged for them: three failures would
    // have ejected it (two in a row eject) and left no endpoint to serve.
    for _ in 0..3 {
        let r = get(&format!("{base}/svc"));
        assert_eq!((r.status, r.header("x-origin")), (200, Some("only")));
    }
    assert_no_ejections(&gw);
    // The access log says who left.
    let log = gw.access_log();
    let left = log
        .iter()
        .filter(|l| l["path"] == "/slow/1500")
        .collect::<Vec<_>>();
    assert_eq!(left.len(), 3, "{log:?}");
    for l in left {
        // No answer reached them: status 0, as for any client that left,
        // whichever protocol it spoke (an HTTP/2 one was logged as a 400
        // bad request before).
        assert_eq!(
            (&l["status"], &l["reason"]),
            (
                &serde_json::json!(0),
                &serde_json::json!("downstream-closed")
            ),
            "{l}"
        );
    }
    assert!(
        !gw.proc.stderr().contains("Fail to proxy"),
        "a client that left is not an error of the gateway's: {}",
        gw.proc.stderr()
    );
}

/// Runs curl without failing on its exit code: (exit code, body).
fn curl_raw(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_body_over_the_limit_is_the_clients_doing_and_a_retried_body_counts_once() {
    let o = scripted("only");
    let (gw, addr) = Gateway::start_web(
        "limits = { max_request_body_bytes = 1024 }",
        &format!(
            r#"
[[route]]
name = "r"
service = "s"
retry = {{ max_retries = 1, on = ["reset", "gateway-error"], backoff_base = "1ms", backoff_max = "2ms" }}

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 2, base_ejection = "30s", max_ejected_percent = 100 }}
"#,
            o.addr
        ),
    )
    .expect("gateway");
    let base = format!("http://{addr}");
    let chunked = ["-X", "PUT", "-H", "Transfer-Encoding: chunked"];
    let big = "x".repeat(2048);
    let big_url = format!("{base}/upload/0/big");
    for _ in 0..3 {
        let mut args = chunked.to_vec();
        args.extend(["--data-binary", &big, &big_url]);
        let r = curl(&args).expect("curl");
        assert_eq!(r.status, 413, "{r:?}");
        assert_eq!(r.header("x-meshgate-reason"), Some("body-too-large"));
    }
    // Never sent again (a retry would have met the same limit), and not
    // the endpoint's failure: two in a row would have ejected the only
    // endpoint.
    let seen: u32 = get(&format!("http://{}/count/upload/big", o.addr))
        .body
        .parse()
        .expect("count");
    assert!(
        seen <= 3,
        "each over-limit request reached the origin at most once: {seen}"
    );
    assert_eq!(get(&format!("{base}/svc")).status, 200);
    assert_no_ejections(&gw);
    // A body under the limit, retried after a 503: the retry replays the
    // same 800 bytes, which are not counted a second time.
    let small = "y".repeat(800);
    let small_url = format!("{base}/upload/1/small");
    let mut args = chunked.to_vec();
    args.extend(["--data-binary", &small, &small_url]);
    let r = curl(&args).expect("curl");
    assert_eq!((r.status, r.body.as_str()), (200, "try 2\n"), "{r:?}");
}

#[test]
fn an_upstream_that_breaks_mid_response_is_not_answered_as_complete() {
    let o = scripted("cut");
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 0 }}
"#,
        o.addr
    ));
    // The origin sends a 200 and one chunk, then closes. The client must
    // see an incomplete response (curl 18 over HTTP/1.1, a reset stream
    // over HTTP/2), never the error text appended as the body's end.
    for how in ["--http1.1", "--http2-prior-knowledge"] {
        let (code, body) = curl_raw(&[how, &format!("{base}/cut")]);
        assert_ne!(
            code,
            Some(0),
            "{how}: the truncated response looked whole: {body:?}"
        );
        // HTTP/2: the reset may overtake the chunk still queued for the
        // stream, so the body may be empty; it is never more.
        assert!(
            body.starts_with("hello") || (how != "--http1.1" && body.is_empty()),
            "{how}: {body:?}"
        );
        assert!(!body.contains("upstream"), "{how}: {body:?}");
    }
    wait_for(Duration::from_secs(5), "two access-log lines", || {
        gw.access_log().len() >= 2
    })
    .expect("access log");
    for l in gw.access_log() {
        assert_eq!(
            (&l["status"], &l["reason"]),
            (
                &serde_json::json!(200),
                &serde_json::json!("upstream-reset")
            ),
            "{l}"
        );
    }
}

#[test]
fn the_route_timeout_bounds_a_response_that_streams() {
    let o = scripted("trickle");
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"
timeout = "1s"

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 0 }}
"#,
        o.addr
    ));
    // Ten lines 300 ms apart: the headers come at once, the whole answer
    // would take 3 s. The route allows 1 s for the whole request.
    let (code, body) = curl_raw(&[&format!("{base}/trickle/10/300")]);
    assert_ne!(
        code,
        Some(0),
        "the response ran past the route timeout: {body:?}"
    );
    let ticks = body.matches("tick").count();
    assert!((1..10).contains(&ticks), "{body:?}");
    wait_for(Duration::from_secs(5), "the access-log line", || {
        !gw.access_log().is_empty()
    })
    .expect("access log");
    assert_eq!(gw.access_log()[0]["reason"], "upstream-timeout");
}

#[test]
fn a_connect_timeout_is_a_connect_failure_and_moves_on_even_for_post() {
    let live = scripted("live");
    // A listener whose accept queue is full (backlog 0, one connection
    // never accepted): the kernel drops further SYNs, so connecting to it
    // times out, like a host that drops packets.
    let full = Proc::spawn({
        let mut c = Command::new("python3");
        c.args([
            "-c",
            "import socket, time\n\
             s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(0)\n\
             c = socket.create_connection(s.getsockname())\n\
             print(s.getsockname()[1], flush=True)\n\
             time.sleep(600)\n",
        ]);
        c
    })
    .expect("python3");
    let port = meshgate_tests::read_port(&full).expect("port");
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"
retry = {{ backoff_base = "1ms", backoff_max = "2ms" }}

[[service]]
name = "s"
lb = "round-robin"
connect_timeout = "200ms"
endpoints = [{{ address = "127.0.0.1:{port}" }}, {{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 0 }}
"#,
        live.addr
    ));
    // The default retry conditions (connect-failure, reset, gateway-error)
    // cover a connect timeout, and nothing was sent, so a POST moves on too.
    for i in 0..4 {
        let url = format!("{base}/svc/{i}");
        let r = if i % 2 == 0 {
            curl(&[&url])
        } else {
            curl(&["-X", "POST", "--data", "x", &url])
        }
        .expect("curl");
        assert_eq!(
            (r.status, r.header("x-origin")),
            (200, Some("live")),
            "request {i}: {r:?}"
        );
    }
    wait_for(Duration::from_secs(5), "four access-log lines", || {
        gw.access_log().len() >= 4
    })
    .expect("access log");
    let log = gw.access_log();
    assert!(
        log.iter().any(|l| l["retries"] == 1),
        "some request met the full listener first: {log:?}"
    );
}

#[test]
fn a_canary_subsets_lone_endpoint_is_not_ejected() {
    let (a, b, canary) = (scripted("v1a"), scripted("v1b"), scripted("v2"));
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"

[[service]]
name = "s"
endpoints = [
  {{ address = "{}", labels = {{ version = "v1" }} }},
  {{ address = "{}", labels = {{ version = "v1" }} }},
  {{ address = "{}", labels = {{ version = "v2" }} }},
]
outlier_detection = {{ consecutive_failures = 2, base_ejection = "30s" }}
[[service.subset]]
name = "v1"
labels = {{ version = "v1" }}
[[service.subset]]
name = "v2"
labels = {{ version = "v2" }}
[service.split]
targets = [{{ subset = "v1", weight = 95 }}, {{ subset = "v2", weight = 5 }}]
override_header = "x-canary"
"#,
        a.addr, b.addr, canary.addr
    ));
    // The canary fails. One endpoint of three is within the service's 50%,
    // but it is all of v2: ejected, every request the split sends to v2
    // would get 503 rather than the canary's own answer.
    get(&format!("http://{}/control/fail", canary.addr));
    for i in 0..4 {
        let r = curl(&["-H", "x-canary: v2", &format!("{base}/svc/{i}")]).expect("curl");
        assert_eq!(
            (r.status, r.header("x-origin")),
            (500, Some("v2")),
            "request {i}: {r:?}"
        );
    }
    assert_no_ejections(&gw);
}

#[test]
fn a_clients_idempotency_key_does_not_make_a_post_retryable() {
    let o = scripted("only");
    let (_gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"
retry = {{ max_retries = 2, on = ["5xx"], backoff_base = "1ms", backoff_max = "2ms" }}

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 0 }}
"#,
        o.addr
    ));
    // The upstream may have acted on the POST before its 503; whether it
    // honours the key is for the operator to say (`retry_non_idempotent`),
    // not the client.
    let url = format!("{base}/flaky/1/order");
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        "Idempotency-Key: k1",
        "--data",
        "x",
        &url,
    ])
    .expect("curl");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        get(&format!("http://{}/count/flaky/order", o.addr)).body,
        "1"
    );
    // The same request as a PUT is retried.
    let r = curl(&["-X", "PUT", "--data", "x", &format!("{base}/flaky/1/put")]).expect("curl");
    assert_eq!((r.status, r.body.as_str()), (200, "try 2\n"), "{r:?}");
}

#[test]
fn a_retry_after_a_listed_4xx_goes_to_another_endpoint() {
    let (a, b) = (scripted("a"), scripted("b"));
    let (gw, base) = gateway(&format!(
        r#"
[[route]]
name = "r"
service = "s"
retry = {{ max_retries = 1, on = ["429"], backoff_base = "1ms", backoff_max = "2ms" }}

[[service]]
name = "s"
# Sequential requests leave both endpoints idle: each pick is a coin toss
# (peak-EWMA would learn to prefer b and never try a).
lb = "least-request"
endpoints = [{{ address = "{}" }}, {{ address = "{}" }}]
outlier_detection = {{ consecutive_failures = 0 }}
"#,
        a.addr, b.addr
    ));
    // Endpoint a answers 429 (no failure of its own, so outlier detection
    // does not steer away from it); the one retry allowed must go to b.
    for i in 0..12 {
        let r = get(&format!("{base}/status-if/a/429?{i}"));
        assert_eq!(
            (r.status, r.header("x-origin")),
            (200, Some("b")),
            "request {i}: {r:?}"
        );
    }
    wait_for(Duration::from_secs(5), "twelve access-log lines", || {
        gw.access_log().len() >= 12
    })
    .expect("access log");
    assert!(
        gw.access_log().iter().any(|l| l["retries"] == 1),
        "some request met a first: {:?}",
        gw.access_log()
    );
}
