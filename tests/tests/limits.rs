//! Listener limits through the real binary: request body size (declared
//! and streamed), the idle timeout (keep-alive and new connections) and
//! the request head timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meshgate_tests::{Gateway, Origin, curl, metric, wait_for};

fn start(limits: &str) -> (Gateway, SocketAddr, Origin) {
    let origin = Origin::start("o").expect("origin");
    let body = format!(
        "[[route]]\nname = \"r\"\nservice = \"s\"\n\n[[service]]\nname = \"s\"\n\
         endpoints = [{{ address = \"{}\" }}]\n",
        origin.addr
    );
    let listener = format!("protocols = [\"http1\", \"h2c\"]\nlimits = {{ {limits} }}");
    let (gw, addr) = Gateway::start_web(&listener, &body).expect("gateway");
    (gw, addr, origin)
}

#[test]
fn request_bodies_over_the_limit_get_413() {
    let (_gw, addr, _o) = start("max_request_body_bytes = 1000");
    let url = format!("http://{addr}/upload");
    let small = "x".repeat(1000);
    let big = "x".repeat(1001);
    let r = curl(&["--data-binary", &small, &url]).expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&["--data-binary", &big, &url]).expect("curl");
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-meshgate-reason"), Some("body-too-large"));
    // Without a declared length the body is counted as it streams.
    for extra in [
        &["-H", "Transfer-Encoding: chunked"][..],
        &["--http2-prior-knowledge"][..],
    ] {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--data-binary", &big, &url]);
        let r = curl(&args).expect("curl");
        assert_eq!(r.status, 413, "{extra:?}: {r:?}");
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--data-binary", &small, &url]);
        assert_eq!(curl(&args).expect("curl").status, 200, "{extra:?}");
    }
}

/// A connection that has had one keep-alive request (`GET path`)
/// answered 200, and a 10 s read timeout.
fn kept_alive(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("response");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s
}

#[test]
fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let (_gw, addr, _o) = start(r#"idle_timeout = "1s""#);
    let mut s = kept_alive(addr, "/a");
    let mut buf = [0u8; 4096];
    // Kept alive while used: a second request on the same connection.
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let n = s.read(&mut buf).expect("second response");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Then idle: the server closes it well before our 10 s read timeout.
    let idle_from = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("expected the server to close, got {e}"),
        }
    }
    let idle = idle_from.elapsed();
    assert!(idle < Duration::from_secs(8), "closed after {idle:?}");
}

/// Reads until the server closes the connection (or `limit` passes) and
/// returns what came, with the time it took.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let from = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "expected the server to close within {limit:?}, got {e} after {:?} with {:?}",
                from.elapsed(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (got, from.elapsed())
}

#[test]
fn a_request_head_that_trickles_in_too_slowly_gets_408() {
    let (gw, addr, origin) = start(r#"header_read_timeout = "1s", idle_timeout = "30s""#);
    // A head sent in pieces well inside the limit is served.
    let mut s = TcpStream::connect(addr).expect("connect");
    for part in [&b"GET /pieces HTTP/1.1\r\n"[..], b"Host: x\r\n", b"\r\n"] {
        s.write_all(part).expect("write");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = s.read(&mut buf).expect("response");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // On the same kept-alive connection, and on a new one, a head that
    // starts but does not finish within header_read_timeout is answered
    // 408 and the connection closed, long before the idle timeout.
    for fresh in [false, true] {
        if fresh {
            s = TcpStream::connect(addr).expect("connect");
        }
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        let (got, took) = read_to_close(&mut s, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "fresh={fresh}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("x-meshgate-reason: header-timeout"),
            "{text}"
        );
        assert!(took < Duration::from_secs(8), "closed after {took:?}");
    }
    assert!(
        !origin.requests().iter().any(|r| r.contains("/slow")),
        "an unfinished head reached the origin: {:?}",
        origin.requests()
    );
    let m = gw.metrics().expect("metrics");
    let timed_out = metric(
        &m,
        "meshgate_requests_total",
        &[
            r#"status="408""#,
            r#"reason="header-timeout""#,
            r#"listener="web""#,
        ],
    );
    assert_eq!(timed_out, Some(2.0), "{m}");
    // And logged, as the proxy's own answers are, with what is known of
    // them: no request line yet.
    assert_refusals_logged(&gw, 408, "header-timeout", 2);
}

/// Waits for `n` access-log lines of heads refused with `status` and
/// `reason` on listener `web`, and checks what they hold.
fn assert_refusals_logged(gw: &Gateway, status: u16, reason: &str, n: usize) {
    let lines = || -> Vec<serde_json::Value> {
        gw.access_log()
            .into_iter()
            .filter(|l| l["status"] == status && l["reason"] == reason)
            .collect()
    };
    wait_for(
        Duration::from_secs(5),
        "the refusals' access-log lines",
        || lines().len() >= n,
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", gw.access_log()));
    let lines = lines();
    assert_eq!(lines.len(), n, "{lines:?}");
    for l in &lines {
        assert_eq!(l["listener"], "web", "{l}");
        assert_eq!(l["proto"], "http1", "{l}");
        assert_eq!(l["method"], "", "{l}");
        assert!(l["route"].is_null(), "{l}");
        assert!(
            l["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{l}"
        );
    }
}

/// Heads pingora's parser refuses itself (a 400, or a 405 to CONNECT,
/// before any filter of ours runs) are counted and logged like the
/// refusals above, on a new connection and after a keep-alive request; a
/// request that reached the proxy and closed its connection is not.
#[test]
fn heads_the_parser_refuses_are_counted_and_logged() {
    let (gw, addr, origin) = start(r#"idle_timeout = "60s""#);
    let answer = |s: &mut TcpStream, head: &[u8]| {
        s.write_all(head).expect("write");
        String::from_utf8_lossy(&read_to_close(s, Duration::from_secs(10)).0).into_owned()
    };
    // A keep-alive request, then a header line without a colon.
    let mut s = kept_alive(addr, "/ok");
    let text = answer(
        &mut s,
        b"GET /bad HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Each on a new connection: two different lengths (pingora's framing
    // check), CONNECT, and a request that is proxied and then closes its
    // connection, which is no refusal.
    for (head, want) in [
        (
            &b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
            "HTTP/1.1 400",
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            b"GET /close HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200",
        ),
    ] {
        let mut s = TcpStream::connect(addr).expect("connect");
        let text = answer(&mut s, head);
        assert!(text.starts_with(want), "{want}: {text}");
    }

    assert_eq!(origin.requests(), ["GET /ok 0", "GET /close 0"]);
    let m = gw.metrics().expect("metrics");
    for (status, reason, n) in [(400, "bad-request", 2.0), (405, "method-not-allowed", 1.0)] {
        let got = metric(
            &m,
            "meshgate_requests_total",
            &[
                &format!(r#"status="{status}""#),
                &format!(r#"reason="{reason}""#),
            ],
        );
        assert_eq!(got, Some(n), "{status} {reason}: {m}");
    }
    assert_refusals_logged(&gw, 400, "bad-request", 2);
    assert_refusals_logged(&gw, 405, "method-not-allowed", 1);
}

#[test]
fn an_unfinished_head_past_the_limit_gets_431_at_once() {
    let (gw, addr, origin) =
        start(r#"max_header_bytes = 8192, header_read_timeout = "30s", idle_timeout = "60s""#);
    // 20 KB of one header and no end: the gateway does not wait for the
    // rest (30 s here), nor hand the connection on to be read up to 1 MiB.
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut head = b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 20_000));
    s.write_all(&head).expect("write");
    let (got, took) = read_to_close(&mut s, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-meshgate-reason: header-too-large"),
        "{text}"
    );
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    let m = gw.metrics().expect("metrics");
    let refused = metric(
        &m,
        "meshgate_requests_total",
        &[r#"status="431""#, r#"reason="header-too-large""#],
    );
    assert_eq!(refused, Some(1.0), "{m}");
    assert_refusals_logged(&gw, 431, "header-too-large", 1);
}

#[test]
fn a_connection_that_never_sends_a_request_is_closed_after_idle_timeout() {
    let (_gw, addr, _o) = start(r#"idle_timeout = "1s""#);
    let mut s = TcpStream::connect(addr).expect("connect");
    let (got, took) = read_to_close(&mut s, Duration::from_secs(10));
    // Nothing was asked, so nothing is answered: the connection just ends.
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
}

/// One request on a fresh connection, left open; `None` when the server
/// closed it instead of answering.
fn open_with_a_request(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(b"GET /limit HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200") => Some(s),
        Ok(0) | Err(_) => None,
        Ok(n) => panic!("unexpected answer {}", String::from_utf8_lossy(&buf[..n])),
    }
}

#[test]
fn connections_over_max_connections_are_closed_at_once() {
    let (gw, addr, _o) = start("max_connections = 2");
    let first = open_with_a_request(addr).expect("first connection served");
    let _second = open_with_a_request(addr).expect("second connection served");
    assert!(
        open_with_a_request(addr).is_none(),
        "a third connection was served over max_connections = 2"
    );
    // A place frees up when a connection closes.
    drop(first);
    let mut again = None;
    meshgate_tests::wait_for(Duration::from_secs(5), "a free place", || {
        again = open_with_a_request(addr);
        again.is_some()
    })
    .expect("served once a connection closed");
    let m = gw.metrics().expect("metrics");
    let refused = metric(
        &m,
        "meshgate_tcp_connections_total",
        &[r#"listener="web""#, r#"outcome="refused""#],
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{m}");
}
