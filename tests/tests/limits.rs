//! Listener limits through the real binary: request body size (declared
//! and streamed) and the idle keep-alive timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meshgate_tests::{Gateway, Origin, curl};

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

#[test]
fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let (_gw, addr, _o) = start(r#"idle_timeout = "1s""#);
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("response");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
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
