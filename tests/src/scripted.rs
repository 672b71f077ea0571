//! A scripted HTTP/1.1 origin (Python's standard-library server) whose
//! failures and delays are chosen per request path, for resilience,
//! reload and drain tests.

use std::net::SocketAddr;
use std::process::Command;

use crate::{Proc, read_port, wait_for_port};

/// Paths: `/flaky/N/KEY` fails with 503 the first N times per KEY;
/// `/upload/N/KEY` counts the request under `upload/KEY` when it arrives,
/// reads its body (chunked too), and fails with 503 the first N times;
/// `/cut` starts a chunked 200 and closes after one chunk; `/trickle/N/MS`
/// sends N chunked lines `tick`, one every MS milliseconds;
/// `/status-if/NAME/CODE` answers CODE from the origin called NAME and 200
/// from the others;
/// `/flaky-slow/N/MS/KEY` fails with 503 the first N times per KEY, then
/// answers after MS milliseconds;
/// `/slow/MS` answers after MS milliseconds (counted as `slow-started`
/// when it arrives); `/slow-once/MS/KEY` is slow
/// only the first time per KEY; `/count/KEY` returns how many requests
/// KEY has seen; `/control/fail` and `/control/heal` switch every `/svc`
/// path between 500 and 200.
const SCRIPT: &str = r#"
import http.server, sys, threading, time
name = sys.argv[1]
lock = threading.Lock()
counts = {}
state = {"fail": False}
def bump(key):
    with lock:
        counts[key] = counts.get(key, 0) + 1
        return counts[key]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _send(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-origin", name)
        self.end_headers()
        self.wfile.write(body)
    def _read_body(self):
        if "chunked" in (self.headers.get("transfer-encoding") or ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                self.rfile.read(size + 2)
                if size == 0:
                    return
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
    def _answer(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        kind = parts[0]
        if kind == "upload":
            seen = bump("upload/" + parts[2])
            self._read_body()
            return self._send(503 if seen <= int(parts[1]) else 200, "try %d\n" % seen)
        self._read_body()
        if kind == "status-if":
            return self._send(int(parts[2]) if parts[1] == name else 200, name + "\n")
        if kind == "cut":
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello\n\r\n")
            return
        if kind == "trickle":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for _ in range(int(parts[1])):
                self.wfile.write(b"5\r\ntick\n\r\n")
                self.wfile.flush()
                time.sleep(int(parts[2]) / 1000.0)
            self.wfile.write(b"0\r\n\r\n")
            return
        if kind == "flaky":
            seen = bump("flaky/" + parts[2])
            return self._send(503 if seen <= int(parts[1]) else 200, "try %d\n" % seen)
        if kind == "flaky-slow":
            seen = bump("flaky-slow/" + parts[3])
            if seen <= int(parts[1]):
                return self._send(503, "try %d\n" % seen)
            time.sleep(int(parts[2]) / 1000.0)
            return self._send(200, "try %d\n" % seen)
        if kind == "slow":
            bump("slow-started")
            time.sleep(int(parts[1]) / 1000.0)
            return self._send(200, "slow\n")
        if kind == "slow-once":
            if bump("slow-once/" + parts[2]) == 1:
                time.sleep(int(parts[1]) / 1000.0)
            return self._send(200, "done\n")
        if kind == "count":
            with lock:
                return self._send(200, str(counts.get("/".join(parts[1:]), 0)))
        if kind == "control":
            state["fail"] = parts[1] == "fail"
            return self._send(200, "ok\n")
        bump("svc")
        return self._send(500 if state["fail"] else 200, "svc\n")
    do_GET = _answer
    do_POST = _answer
    do_PUT = _answer
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A running scripted origin.
#[derive(Debug)]
pub struct Scripted {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Starts a scripted origin that names itself `name` in `x-origin`.
pub fn scripted(name: &str) -> Scripted {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", SCRIPT, name]);
    let proc = Proc::spawn(cmd).expect("python3 origin");
    let port = read_port(&proc).expect("origin starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_port(addr).expect("origin listens");
    Scripted { proc, addr }
}
