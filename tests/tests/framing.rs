//! Strict HTTP/1 request framing against request smuggling, end to end:
//! `meshgate run` in front of a real origin, and a raw TCP client writing
//! exact bytes (curl and other real clients normalise exactly the things
//! under test).
//!
//! Every refused head is followed on the same connection by a second,
//! well-formed request. The checks: the status and reason header of the one
//! and only response, the connection closed afterwards, the access-log
//! line, and that neither request reached the origin. The gateway serves
//! pipelined requests, so a head that slipped through would have let the
//! second request through as well.
//!
//! Some heads never reach meshgate's code: pingora's parser refuses them
//! with its own bare 400 (no reason header, no access-log line). The case
//! tables say which layer refuses what, so a pingora upgrade that moves the
//! line shows up here.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use meshgate_tests::{Gateway, Origin, free_port, tempdir, wait_for};

/// `limits.max_header_bytes` of the test listener.
const MAX_HEAD: usize = 2048;
/// `limits.max_headers` of the test listener.
const MAX_HEADERS: usize = 16;

struct Setup {
    gw: Gateway,
    origin: Origin,
    addr: SocketAddr,
}

fn setup() -> Setup {
    let origin = Origin::start("o").expect("origin starts");
    let port = free_port();
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"

[[listener]]
name = "web"
address = "127.0.0.1:{port}"
protocols = ["http1"]
limits = {{ drain_timeout = "1s", max_header_bytes = {MAX_HEAD}, max_headers = {MAX_HEADERS} }}

[[route]]
name = "all"
match = {{ path_prefix = "/" }}
service = "origin"

[[service]]
name = "origin"
endpoints = [{{ address = "{origin}" }}]

[observability]
access_log = {{ format = "json", path = "stdout" }}
"#,
        admin = free_port(),
        origin = origin.addr,
    );
    let dir = tempdir().expect("tempdir");
    let path = dir.join("meshgate.toml");
    std::fs::write(&path, config).expect("write config");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let gw = Gateway::start(&path, addr).expect("gateway starts");
    Setup { gw, origin, addr }
}

/// One parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What came back on one connection.
#[derive(Debug)]
struct Exchange {
    replies: Vec<Reply>,
    /// The server closed the connection (FIN or reset) rather than leaving
    /// it open until our read timeout.
    closed: bool,
    raw: String,
}

/// Writes `bytes` on a fresh connection, then reads until the server
/// closes it or 10 s pass.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Exchange {
    exchange_in_parts(addr, &[bytes])
}

/// As [`exchange`], writing `parts` one after another with a pause
/// between them, so each arrives in its own read.
fn exchange_in_parts(addr: SocketAddr, parts: &[&[u8]]) -> Exchange {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    // The server may close before it has read everything; what it answered
    // up to then is still ours to read.
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = s.write_all(part);
    }
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A signal (a tracer's, say) cut the read short: read again.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("reading the response: {e}"),
        }
    };
    let raw = String::from_utf8_lossy(&raw).into_owned();
    Exchange {
        replies: parse_replies(&raw),
        closed,
        raw,
    }
}

fn parse_replies(mut rest: &str) -> Vec<Reply> {
    let mut out = Vec::new();
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = &rest[..end];
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {rest:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head:?}"));
        let body_start = end + 4;
        let body = rest
            .get(body_start..body_start + len)
            .unwrap_or_else(|| panic!("short body in {rest:?}"));
        out.push(Reply {
            status,
            headers,
            body: body.to_owned(),
        });
        rest = &rest[body_start + len..];
    }
    assert!(
        rest.is_empty(),
        "trailing bytes after the responses: {rest:?}"
    );
    out
}

/// The well-formed request that follows every refused head.
fn smuggled(name: &str) -> String {
    format!("GET /smuggled/{name} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// Which layer refuses a head.
#[derive(Debug, Clone, Copy, PartialEq)]
enum By {
    /// pingora's parser, before any meshgate code: a bare 400, no reason
    /// header, no access-log line.
    Pingora,
    /// meshgate's framing check: 400 `bad-request` or 431
    /// `header-too-large`, with the reason header and an access-log line.
    Meshgate,
}

/// A head that must be refused. Its request path is `/case/{name}`.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    by: By,
}

/// A POST to `/case/{name}` with `headers` (one string, each line ending
/// in CRLF) and `body`.
fn post(name: &'static str, headers: &str, body: &str, by: By) -> Case {
    Case {
        name,
        bytes: format!("POST /case/{name} HTTP/1.1\r\nHost: t\r\n{headers}\r\n{body}").into_bytes(),
        status: 400,
        by,
    }
}

/// `bytes` with the first `{path}` replaced by `path`.
fn fill_path(bytes: &[u8], path: &str) -> Vec<u8> {
    let i = bytes
        .windows(6)
        .position(|w| w == b"{path}")
        .expect("a {path} placeholder");
    [&bytes[..i], path.as_bytes(), &bytes[i + 6..]].concat()
}

/// A case given as raw bytes, exactly; `{path}` stands for the request
/// path.
fn raw(name: &'static str, bytes: &[u8], by: By) -> Case {
    Case {
        name,
        bytes: fill_path(bytes, &format!("/case/{name}")),
        status: 400,
        by,
    }
}

/// A well-formed request asking the server to close the connection after
/// answering, so that a positive control ends without a read timeout.
fn closing(name: &str) -> String {
    format!("GET /after/{name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

fn reason_for(status: u16) -> &'static str {
    if status == 431 {
        "header-too-large"
    } else {
        "bad-request"
    }
}

impl Setup {
    /// Access-log lines (JSON) for `path`.
    fn access_log(&self, path: &str) -> Vec<serde_json::Value> {
        self.gw
            .proc
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["path"] == path)
            .collect()
    }

    /// A fresh, well-formed request through the gateway, waited for until
    /// the origin has logged it. Anything the gateway forwarded on an
    /// earlier connection (already closed) was logged before it.
    fn barrier(&self, name: &str) {
        let path = format!("/marker/{name}");
        let ex = exchange(
            self.addr,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(ex.replies.len(), 1, "{name}: marker: {}", ex.raw);
        assert_eq!(ex.replies[0].status, 200, "{name}: marker: {}", ex.raw);
        let want = format!("GET {path} 0");
        wait_for(
            Duration::from_secs(10),
            "the origin to log the marker",
            || self.origin.requests().contains(&want),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}: {:?}", self.origin.requests()));
        wait_for(
            Duration::from_secs(10),
            "the access-log line of the marker",
            || !self.access_log(&path).is_empty(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    fn origin_saw(&self, fragment: &str) -> bool {
        self.origin.requests().iter().any(|r| r.contains(fragment))
    }

    /// Waits until the origin has logged every one of `want` (as
    /// `METHOD PATH BODY-BYTES`).
    fn wait_origin(&self, want: &[&str]) {
        wait_for(
            Duration::from_secs(10),
            "the origin to log requests",
            || {
                let seen = self.origin.requests();
                want.iter().all(|w| seen.iter().any(|r| r == w))
            },
        )
        .unwrap_or_else(|e| panic!("{e}: want {want:?}, saw {:?}", self.origin.requests()));
    }

    /// Sends the case followed by a pipelined request and checks that only
    /// the refusal came back, the connection was closed, and nothing reached
    /// the origin.
    fn assert_refused(&self, case: &Case) {
        let name = case.name;
        let mut bytes = case.bytes.clone();
        bytes.extend_from_slice(smuggled(name).as_bytes());
        let ex = exchange(self.addr, &bytes);
        assert_eq!(ex.replies.len(), 1, "{name}: one response only: {}", ex.raw);
        let r = &ex.replies[0];
        assert_eq!(r.status, case.status, "{name}: {}", ex.raw);
        assert_eq!(r.header("connection"), Some("close"), "{name}: {}", ex.raw);
        assert!(ex.closed, "{name}: connection left open: {}", ex.raw);
        match case.by {
            By::Meshgate => {
                let reason = reason_for(case.status);
                assert_eq!(
                    r.header("x-meshgate-reason"),
                    Some(reason),
                    "{name}: {}",
                    ex.raw
                );
                assert_eq!(r.body, format!("{} {reason}\n", case.status), "{name}");
            }
            By::Pingora => {
                assert_eq!(r.header("x-meshgate-reason"), None, "{name}: {}", ex.raw);
            }
        }

        self.barrier(name);
        let path = format!("/case/{name}");
        assert!(
            !self.origin_saw(&format!("/smuggled/{name} ")),
            "{name}: the pipelined request reached the origin: {:?}",
            self.origin.requests()
        );
        assert!(
            !self.origin_saw(&format!("{path} ")),
            "{name}: the refused request reached the origin: {:?}",
            self.origin.requests()
        );
        let log = self.access_log(&path);
        match case.by {
            By::Meshgate => {
                assert_eq!(log.len(), 1, "{name}: access log: {log:?}");
                assert_eq!(log[0]["status"], case.status, "{name}: {log:?}");
                assert_eq!(log[0]["reason"], reason_for(case.status), "{name}: {log:?}");
            }
            By::Pingora => assert!(log.is_empty(), "{name}: access log: {log:?}"),
        }
    }
}

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    let s = setup();
    use By::*;
    let cases = [
        post(
            "cl-then-te",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            Meshgate,
        ),
        // pingora drops Content-Length here and frames by chunked; the
        // parsed map no longer shows the conflict.
        post(
            "te-then-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n",
            "0\r\n\r\n",
            Meshgate,
        ),
        post(
            "cl-zero-with-te",
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            Meshgate,
        ),
        post(
            "lowercase-names",
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
            "0\r\n\r\n",
            Meshgate,
        ),
    ];
    for c in &cases {
        s.assert_refused(c);
    }
}

#[test]
fn duplicate_or_malformed_content_length_is_refused() {
    let s = setup();
    use By::*;
    let cl = |name, value: &str, by| post(name, &format!("Content-Length:{value}\r\n"), "abc", by);
    let cases = [
        post(
            "cl-duplicate-equal",
            "Content-Length: 3\r\nContent-Length: 3\r\n",
            "abc",
            Meshgate,
        ),
        post(
            "cl-duplicate-differing",
            "Content-Length: 3\r\nContent-Length: 4\r\n",
            "abc",
            Pingora,
        ),
        cl("cl-list-equal", " 3, 3", Meshgate),
        cl("cl-list-differing", " 3, 4", Pingora),
        cl("cl-plus", " +3", Pingora),
        cl("cl-minus", " -3", Pingora),
        cl("cl-space-inside", " 1 2", Pingora),
        cl("cl-empty", " ", Pingora),
        cl("cl-hex", " 0x3", Pingora),
        cl("cl-over-u64", " 99999999999999999999999", Pingora),
        // Fits pingora's u64 but not a signed 64-bit length.
        cl("cl-over-i64", " 9223372036854775808", Meshgate),
        cl("cl-tab", "\t3", Meshgate),
        cl("cl-two-spaces", "  3", Meshgate),
        cl("cl-trailing-space", " 3 ", Meshgate),
    ];
    for c in &cases {
        s.assert_refused(c);
    }
}

#[test]
fn transfer_encoding_other_than_chunked_is_refused() {
    let s = setup();
    use By::*;
    let te = |name, value: &str, by| {
        post(
            name,
            &format!("Transfer-Encoding:{value}\r\n"),
            "0\r\n\r\n",
            by,
        )
    };
    let cases = [
        te("te-gzip-chunked", " gzip, chunked", Meshgate),
        te("te-chunked-identity", " chunked, identity", Pingora),
        te("te-chunked-twice-in-list", " chunked, chunked", Meshgate),
        te("te-xchunked", " xchunked", Pingora),
        te("te-identity", " identity", Pingora),
        te("te-capitalised", " Chunked", Meshgate),
        te("te-upper", " CHUNKED", Meshgate),
        te("te-tab", "\tchunked", Meshgate),
        te("te-two-spaces", "  chunked", Meshgate),
        te("te-trailing-space", " chunked ", Meshgate),
        te("te-trailing-comma", " chunked,", Pingora),
        te("te-empty", " ", Pingora),
        te("te-vertical-tab", " \x0bchunked", Pingora),
        post(
            "te-duplicate",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            Meshgate,
        ),
        post(
            "te-duplicate-identity-first",
            "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            Meshgate,
        ),
        raw(
            "te-http10",
            b"POST {path} HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Pingora,
        ),
    ];
    for c in &cases {
        s.assert_refused(c);
    }
}

#[test]
fn malformed_header_lines_are_refused() {
    let s = setup();
    use By::*;
    let cases = [
        raw(
            "obs-fold-space",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n",
            Pingora,
        ),
        raw(
            "obs-fold-tab",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\tfolded\r\n\r\n",
            Pingora,
        ),
        raw(
            "obs-fold-framing",
            b"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
            Pingora,
        ),
        // httparse accepts bare LF line endings; only the raw bytes show them.
        raw(
            "bare-lf-everywhere",
            b"GET {path} HTTP/1.1\nHost: t\n\n",
            Meshgate,
        ),
        raw(
            "bare-lf-one-line",
            b"GET {path} HTTP/1.1\r\nHost: t\nX-A: 1\r\n\r\n",
            Meshgate,
        ),
        raw(
            "bare-lf-end-of-head",
            b"GET {path} HTTP/1.1\r\nHost: t\r\n\n",
            Meshgate,
        ),
        raw(
            "bare-lf-before-framing",
            b"POST {path} HTTP/1.1\r\nHost: t\r\nX-A: 1\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Meshgate,
        ),
        raw(
            "bare-cr-between-lines",
            b"GET {path} HTTP/1.1\r\nHost: t\rX-A: 1\r\n\r\n",
            Pingora,
        ),
        raw(
            "bare-cr-in-value",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
            Pingora,
        ),
        raw(
            "nul-in-value",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
            Pingora,
        ),
        raw(
            "control-in-value",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
            Pingora,
        ),
        raw(
            "del-in-value",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n",
            Pingora,
        ),
        raw(
            "nul-in-name",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX\x00A: 1\r\n\r\n",
            Pingora,
        ),
        raw(
            "paren-in-name",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX(A): 1\r\n\r\n",
            Pingora,
        ),
        raw(
            "space-in-name",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX A: 1\r\n\r\n",
            Pingora,
        ),
        raw(
            "empty-name",
            b"GET {path} HTTP/1.1\r\nHost: t\r\n: 1\r\n\r\n",
            Pingora,
        ),
        raw(
            "space-before-colon",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n",
            Pingora,
        ),
        raw(
            "space-before-colon-framing",
            b"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            Pingora,
        ),
        raw(
            "tab-before-colon",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A\t: 1\r\n\r\n",
            Pingora,
        ),
        raw(
            "no-colon",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A\r\n\r\n",
            Pingora,
        ),
        // RFC 9112 section 3.2: an HTTP/1.1 request names its host once.
        raw("no-host", b"GET {path} HTTP/1.1\r\nX-A: 1\r\n\r\n", Meshgate),
        raw(
            "two-hosts",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nHost: admin\r\n\r\n",
            Pingora,
        ),
    ];
    for c in &cases {
        s.assert_refused(c);
    }
}

#[test]
fn chunked_body_framing_errors_close_the_connection() {
    let s = setup();
    // The head is valid, so it goes upstream while the body streams; the
    // body error then ends both connections. Only the pipelined request is
    // known never to reach the origin.
    let cases = [
        ("chunk-size-not-hex", "zz\r\nabc\r\n0\r\n\r\n"),
        (
            "chunk-size-overflow",
            "ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        ),
        ("chunk-size-negative", "-3\r\nabc\r\n0\r\n\r\n"),
        ("chunk-size-bare-lf", "3\nabc\n0\n\n"),
        ("chunk-data-not-crlf", "3\r\nabcX0\r\n\r\n"),
    ];
    for (name, body) in cases {
        let mut bytes = format!(
            "POST /case/{name} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        bytes.push_str(&smuggled(name));
        let ex = exchange(s.addr, bytes.as_bytes());
        assert_eq!(ex.replies.len(), 1, "{name}: {}", ex.raw);
        let r = &ex.replies[0];
        assert_eq!(r.status, 400, "{name}: {}", ex.raw);
        assert_eq!(r.header("x-meshgate-reason"), Some("bad-request"), "{name}");
        assert_eq!(r.header("connection"), Some("close"), "{name}: {}", ex.raw);
        assert!(ex.closed, "{name}: connection left open: {}", ex.raw);
        s.barrier(name);
        assert!(
            !s.origin_saw(&format!("/smuggled/{name} ")),
            "{name}: {:?}",
            s.origin.requests()
        );
        let log = s.access_log(&format!("/case/{name}"));
        assert_eq!(log.len(), 1, "{name}: {log:?}");
        assert_eq!(log[0]["reason"], "bad-request", "{name}: {log:?}");
    }
}

/// A GET whose head is exactly `len` bytes, padded with one header.
fn head_of_len(path: &str, len: usize) -> String {
    let base = format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n");
    assert!(len >= base.len());
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(len - base.len())
    )
}

#[test]
fn head_size_limit_counts_every_byte_of_the_head() {
    let s = setup();
    let exact = head_of_len("/limit/bytes-exact", MAX_HEAD);
    assert_eq!(exact.len(), MAX_HEAD);
    let ex = exchange(
        s.addr,
        format!("{exact}{}", closing("bytes-exact")).as_bytes(),
    );
    assert_eq!(ex.replies.len(), 2, "{}", ex.raw);
    assert!(ex.replies.iter().all(|r| r.status == 200), "{}", ex.raw);
    s.wait_origin(&["GET /limit/bytes-exact 0", "GET /after/bytes-exact 0"]);

    let over = Case {
        name: "head-one-byte-over",
        bytes: head_of_len("/case/head-one-byte-over", MAX_HEAD + 1).into_bytes(),
        status: 431,
        by: By::Meshgate,
    };
    s.assert_refused(&over);
}

#[test]
fn header_count_limit_is_inclusive() {
    let s = setup();
    let head = |path: &str, n: usize| {
        // Host counts as one of the n.
        let extra: String = (1..n).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n")
    };
    let at = head("/limit/count-at-max", MAX_HEADERS);
    let ex = exchange(
        s.addr,
        format!("{at}{}", closing("count-at-max")).as_bytes(),
    );
    assert_eq!(ex.replies.len(), 2, "{}", ex.raw);
    assert!(ex.replies.iter().all(|r| r.status == 200), "{}", ex.raw);
    s.wait_origin(&["GET /limit/count-at-max 0", "GET /after/count-at-max 0"]);

    let over = Case {
        name: "count-one-over",
        bytes: head("/case/count-one-over", MAX_HEADERS + 1).into_bytes(),
        status: 431,
        by: By::Meshgate,
    };
    s.assert_refused(&over);

    // pingora's parser stops at 256 header lines, whatever the listener
    // allows, and answers a bare 400 itself.
    let over_pingora = Case {
        name: "count-over-pingora-cap",
        bytes: head("/case/count-over-pingora-cap", 257).into_bytes(),
        status: 400,
        by: By::Pingora,
    };
    s.assert_refused(&over_pingora);
}

#[test]
fn pipelined_requests_are_served_in_order() {
    let s = setup();
    let bytes = concat!(
        "GET /pipe/1 HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /pipe/2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        "POST /pipe/3 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        "GET /pipe/4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let ex = exchange(s.addr, bytes.as_bytes());
    assert!(ex.closed, "{}", ex.raw);
    let bodies: Vec<&str> = ex.replies.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(
        bodies,
        (1..=4)
            .map(|i| format!("origin=o path=/pipe/{i}\n"))
            .collect::<Vec<_>>(),
        "{}",
        ex.raw
    );
    assert!(ex.replies.iter().all(|r| r.status == 200), "{}", ex.raw);
    let want = [
        "GET /pipe/1 0",
        "POST /pipe/2 5",
        "POST /pipe/3 2",
        "GET /pipe/4 0",
    ];
    s.wait_origin(&want);
    let seen: Vec<String> = s
        .origin
        .requests()
        .into_iter()
        .filter(|r| r.contains("/pipe/"))
        .collect();
    assert_eq!(seen, want, "one at a time, in order");
}

#[test]
fn requests_arriving_alone_pipelined_and_mid_body_are_served_in_order() {
    let s = setup();
    let parts: [&[u8]; 3] = [
        // Alone: the connection waits for it between requests.
        b"GET /late/1 HTTP/1.1\r\nHost: t\r\n\r\n",
        // Two at once, the second with the start of its body.
        b"GET /late/2 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /late/3 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhel",
        // The rest of that body and, behind it, the last request.
        b"loGET /late/4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ];
    let ex = exchange_in_parts(s.addr, &parts);
    assert!(ex.closed, "{}", ex.raw);
    let bodies: Vec<&str> = ex.replies.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(
        bodies,
        (1..=4)
            .map(|i| format!("origin=o path=/late/{i}\n"))
            .collect::<Vec<_>>(),
        "{}",
        ex.raw
    );
    let want = [
        "GET /late/1 0",
        "GET /late/2 0",
        "POST /late/3 5",
        "GET /late/4 0",
    ];
    s.wait_origin(&want);
}

#[test]
fn chunked_post_reaches_the_origin_whole() {
    let s = setup();
    let bytes = concat!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "GET /after-upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let ex = exchange(s.addr, bytes.as_bytes());
    assert!(ex.closed, "{}", ex.raw);
    let statuses: Vec<u16> = ex.replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200], "{}", ex.raw);
    s.wait_origin(&["POST /upload 11", "GET /after-upload 0"]);
}

#[test]
fn connection_close_ends_the_connection_after_the_body() {
    let s = setup();
    let mut bytes =
        "POST /close-body HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
            .to_owned();
    bytes.push_str(&smuggled("after-close"));
    let ex = exchange(s.addr, bytes.as_bytes());
    assert_eq!(ex.replies.len(), 1, "{}", ex.raw);
    assert_eq!(ex.replies[0].status, 200, "{}", ex.raw);
    assert_eq!(ex.replies[0].header("connection"), Some("close"));
    assert!(ex.closed, "{}", ex.raw);
    s.barrier("after-close");
    s.wait_origin(&["POST /close-body 3"]);
    assert!(
        !s.origin_saw("/smuggled/after-close "),
        "{:?}",
        s.origin.requests()
    );
}

#[test]
fn unusual_but_valid_heads_pass() {
    let s = setup();
    let cases: [(&str, &[u8]); 7] = [
        (
            "htab-in-value",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A: a\tb\r\n",
        ),
        (
            "obs-text-in-value",
            b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A: caf\xc3\xa9 \xff\r\n",
        ),
        ("empty-value", b"GET {path} HTTP/1.1\r\nHost: t\r\nX-A:\r\n"),
        ("leading-crlf", b"\r\nGET {path} HTTP/1.1\r\nHost: t\r\n"),
        (
            "cl-no-space",
            b"POST {path} HTTP/1.1\r\nHost: t\r\ncontent-length:3\r\n",
        ),
        (
            "cl-leading-zeros",
            b"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 003\r\n",
        ),
        (
            "te-lowercase-name",
            b"POST {path} HTTP/1.1\r\nHost: t\r\ntransfer-encoding:chunked\r\n",
        ),
    ];
    for (name, head) in cases {
        let path = format!("/ok/{name}");
        let mut bytes = fill_path(head, &path);
        bytes.extend_from_slice(b"Connection: close\r\n\r\n");
        let body: &[u8] = if name.starts_with("cl-") {
            b"abc"
        } else if name.starts_with("te-") {
            b"3\r\nabc\r\n0\r\n\r\n"
        } else {
            b""
        };
        bytes.extend_from_slice(body);
        let ex = exchange(s.addr, &bytes);
        assert_eq!(ex.replies.len(), 1, "{name}: {}", ex.raw);
        assert_eq!(ex.replies[0].status, 200, "{name}: {}", ex.raw);
        assert!(ex.closed, "{name}: {}", ex.raw);
        let want = if body.is_empty() {
            format!("GET {path} 0")
        } else {
            format!("POST {path} 3")
        };
        s.wait_origin(&[&want]);
    }
}

#[test]
fn http_1_0_requests_close_unless_kept_alive_and_get_a_host_upstream() {
    let s = setup();
    // HTTP/1.0 without `Connection: keep-alive` and without a Host: the
    // answer, then the close that ends it for the client.
    let ex = exchange(s.addr, b"GET /ten HTTP/1.0\r\n\r\n");
    assert_eq!(ex.replies.len(), 1, "{}", ex.raw);
    assert_eq!(ex.replies[0].status, 200, "{}", ex.raw);
    assert_eq!(
        ex.replies[0].header("connection"),
        Some("close"),
        "{}",
        ex.raw
    );
    assert!(ex.closed, "an HTTP/1.0 connection stayed open: {}", ex.raw);
    // The origin speaks HTTP/1.1 with us and needs a Host: the endpoint's.
    let origin = s.origin.addr.to_string();
    assert_eq!(ex.replies[0].header("x-seen-host"), Some(origin.as_str()));

    // Asked for, keep-alive holds for the next request, which does not ask.
    let ex = exchange(
        s.addr,
        b"GET /ten-a HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n\
          GET /ten-b HTTP/1.0\r\nHost: t\r\n\r\n",
    );
    assert_eq!(ex.replies.len(), 2, "{}", ex.raw);
    assert_eq!(ex.replies[0].header("connection"), Some("keep-alive"));
    assert_eq!(ex.replies[0].header("x-seen-host"), Some("t"));
    assert_eq!(ex.replies[1].header("connection"), Some("close"));
    assert!(ex.closed, "{}", ex.raw);
    s.wait_origin(&["GET /ten 0", "GET /ten-a 0", "GET /ten-b 0"]);
}
