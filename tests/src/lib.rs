//! Support for meshgate's end-to-end tests: find the real binaries, start
//! them on free loopback ports, wait for conditions (never sleep and hope),
//! and drive them with real clients (curl, nghttp, h2load).
//!
//! The binaries are built by `make test` (`cargo build --workspace --bins`)
//! before the tests run; `MESHGATE_BIN` overrides the path.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod http1;
pub mod mesh;
pub mod scripted;

/// Path of a workspace binary (`meshgate`, `meshgate-sidecar`).
pub fn bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A loopback port that was free a moment ago.
///
/// Chosen at random below the kernel's ephemeral range (32768 and up on
/// Linux), so servers that bind port 0 themselves (the test origins) can
/// never be handed the same port between our check and the gateway's bind.
/// A port handed out is never handed out again while this process lives,
/// by this process or by another test process running at the same time:
/// each pick holds a lock on a file named after the port (released when
/// the process exits). Without it, two test processes could both pick a
/// port, one gateway would fail to bind it, and its test would talk to the
/// other's gateway.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<(u16, Option<std::fs::File>)>> = Mutex::new(Vec::new());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(17);
    let locks = std::env::temp_dir().join("meshgate-test-ports");
    let _ = std::fs::create_dir_all(&locks);
    let mut x = seed | 1;
    for _ in 0..2000 {
        // xorshift: cheap, good enough to spread picks.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if held.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let lock = match lock_port(&locks, port) {
            PortLock::Held(file) => Some(file),
            PortLock::Busy => continue,
            // A temporary directory we cannot write: this process's own
            // record still applies.
            PortLock::Unavailable => None,
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            held.push((port, lock));
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

enum PortLock {
    Held(std::fs::File),
    Busy,
    Unavailable,
}

/// An exclusive lock on `dir/<port>`, unless another process holds it.
fn lock_port(dir: &Path, port: u16) -> PortLock {
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()));
    let Ok(file) = opened else {
        return PortLock::Unavailable;
    };
    match file.try_lock() {
        Ok(()) => PortLock::Held(file),
        Err(std::fs::TryLockError::WouldBlock) => PortLock::Busy,
        Err(std::fs::TryLockError::Error(_)) => PortLock::Unavailable,
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr) -> Result<()> {
    wait_for(
        Duration::from_secs(20),
        &format!("{addr} to accept"),
        || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
    )
}

/// A running process whose output is collected; killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with piped output.
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, stderr.clone()));
        }
        Ok(Proc {
            child,
            stdout,
            stderr,
            pumps,
        })
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()?;
        if !st.success() {
            bail!("kill -{sig} failed");
        }
        Ok(())
    }

    /// Waits for exit up to `limit`; returns the exit code (None when
    /// killed by a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                // Collect everything it wrote before it exited.
                for p in self.pumps.drain(..) {
                    let _ = p.join();
                }
                return Ok(st.code());
            }
            if start.elapsed() > limit {
                bail!("process did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Is it still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its processes said on stderr (cargo
        // prints a failed test's output): the last 8 KiB. What the pumps
        // have not collected yet is not waited for; a child's own child
        // may hold the pipe open.
        if std::thread::panicking() {
            let err = self.stderr();
            let mut from = err.len().saturating_sub(8192);
            while !err.is_char_boundary(from) {
                from += 1;
            }
            let tail = &err[from..];
            let state = exited.map_or("was running".to_owned(), |st| format!("had exited: {st}"));
            eprintln!(
                "--- pid {} ({state}), the end of its stderr:\n{tail}---",
                self.pid()
            );
        }
    }
}

fn pump(
    mut src: impl Read + Send + 'static,
    dst: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(&mut src);
        let mut line = String::new();
        while let Ok(n) = r.read_line(&mut line) {
            if n == 0 {
                break;
            }
            if let Ok(mut d) = dst.lock() {
                d.push_str(&line);
            }
            line.clear();
        }
    })
}

/// A meshgate gateway started with `meshgate run`.
#[derive(Debug)]
pub struct Gateway {
    /// The process.
    pub proc: Proc,
    /// Its config file, if any (tests rewrite it to trigger reloads).
    pub config: Option<PathBuf>,
}

impl Gateway {
    /// Writes a config with `[admin]` on a free port and one listener
    /// `web` on a free port (`listener_extra` lines go inside the listener
    /// table), followed by `body` (routes, services...), and starts it.
    /// Returns the gateway and the listener's address.
    pub fn start_web(listener_extra: &str, body: &str) -> Result<(Gateway, SocketAddr)> {
        let port = free_port();
        let text = format!(
            "[admin]\naddress = \"127.0.0.1:{}\"\n\n[[listener]]\nname = \"web\"\n\
             address = \"127.0.0.1:{port}\"\n{listener_extra}\n\n{body}",
            free_port()
        );
        let config = tempdir()?.join("meshgate.toml");
        std::fs::write(&config, text)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Ok((Gateway::start(&config, addr)?, addr))
    }

    /// The `[admin] address` of its config file, if it has one.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        let text = std::fs::read_to_string(self.config.as_ref()?).ok()?;
        let admin = &text[text.find("[admin]")?..];
        let value = admin.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "address").then(|| v.trim().trim_matches('"').to_owned())
        })?;
        value.parse().ok()
    }

    /// The Prometheus text its admin API serves now.
    pub fn metrics(&self) -> Result<String> {
        let admin = self
            .admin_address()
            .context("the config has no [admin] address")?;
        let r = curl(&[&format!("http://{admin}/metrics")])?;
        if r.status != 200 {
            bail!("GET /metrics: {} {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// The JSON access-log lines written to stdout so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.proc
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Starts `meshgate run --config FILE` and waits until `ready` accepts.
    pub fn start(config: &Path, ready: SocketAddr) -> Result<Gateway> {
        Gateway::start_with(config, ready, |_| {})
    }

    /// Like [`Gateway::start`], with extra environment variables (for
    /// example `SSL_CERT_FILE`, to trust a test CA).
    pub fn start_with_env(
        config: &Path,
        ready: SocketAddr,
        env: &[(&str, &Path)],
    ) -> Result<Gateway> {
        Gateway::start_with(config, ready, |cmd| {
            cmd.envs(env.iter().copied());
        })
    }

    /// Like [`Gateway::start`], letting `configure` adjust the command
    /// first (environment variables such as `SSL_CERT_FILE`).
    pub fn start_with(
        config: &Path,
        ready: SocketAddr,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Gateway> {
        let mut cmd = Command::new(bin("meshgate"));
        configure(&mut cmd);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .arg("--threads")
            .arg("1")
            .arg("--watch-interval-ms")
            .arg("100");
        let mut proc = Proc::spawn(cmd)?;
        if let Err(e) = wait_for_port(ready) {
            let _ = proc.running();
            bail!("{e}\nstderr:\n{}", proc.stderr());
        }
        // Something else may be listening there: a gateway that could not
        // bind has exited by the time its port answers.
        if !proc.running() {
            bail!(
                "meshgate exited, yet {ready} accepts connections\nstderr:\n{}",
                proc.stderr()
            );
        }
        Ok(Gateway {
            proc,
            config: Some(config.to_path_buf()),
        })
    }
}

/// Runs a command to completion with a time limit.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The result of one curl request.
#[derive(Debug, Clone)]
pub struct CurlResponse {
    /// Status code.
    pub status: u16,
    /// HTTP version curl reports (`1.1`, `2`).
    pub version: String,
    /// Response headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl CurlResponse {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `POST /drain` on the admin API at `admin` (a gateway's or a sidecar's),
/// with the bearer `token`.
pub fn post_drain(admin: SocketAddr, token: &str) -> Result<CurlResponse> {
    let auth = format!("authorization: Bearer {token}");
    curl(&["-X", "POST", "-H", &auth, &format!("http://{admin}/drain")])
}

/// Runs curl with `args` plus what is needed to capture status, headers
/// and body.
pub fn curl(args: &[&str]) -> Result<CurlResponse> {
    let dir = tempdir()?;
    let head = dir.join("head");
    let out = run(
        Command::new("curl")
            .args(["-s", "-S", "--max-time", "10", "-D"])
            .arg(&head)
            .args(["-w", "%{http_code} %{http_version}"])
            .args(["-o"])
            .arg(dir.join("body"))
            .args(args),
        Duration::from_secs(15),
    )?;
    let meta = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            meta
        );
    }
    let mut it = meta.split_whitespace();
    let status = it.next().unwrap_or("0").parse().unwrap_or(0);
    let version = it.next().unwrap_or("").to_owned();
    let head_text = std::fs::read_to_string(&head).unwrap_or_default();
    let headers = head_text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = std::fs::read_to_string(dir.join("body")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CurlResponse {
        status,
        version,
        headers,
        body,
    })
}

/// A fresh private directory under the system temp dir.
pub fn tempdir() -> Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir =
        std::env::temp_dir().join(format!("meshgate-test-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A real HTTP/1.1 origin server: Python's standard-library
/// `ThreadingHTTPServer`, answering every GET/POST with a body naming
/// itself and echoing the request path and selected headers as response
/// headers (`x-seen-host`, `x-seen-xff`, `x-seen-added`), plus every
/// request header as a JSON object of lower-cased name to list of values
/// in `x-seen-headers` (see [`seen_headers`]), and the names as they came
/// on the wire, in order, as a JSON list in `x-seen-names`. It reads request bodies
/// framed by `Content-Length` or chunked, and logs every request it
/// answers (see [`Origin::requests`]). Bound to a port the OS picked;
/// the port is read back from its first output line.
#[derive(Debug)]
pub struct Origin {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

const ORIGIN_PY: &str = r#"
import http.server, json, sys, threading
name = sys.argv[1]
log_lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _read_body(self):
        if (self.headers.get("transfer-encoding") or "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                if self.rfile.readline() != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""
    def _answer(self):
        try:
            got = self._read_body()
        except (ValueError, OSError):
            # A body cut off or malformed on the way: not a request we answer.
            self.close_connection = True
            return
        with log_lock:
            sys.stdout.write("request %s %s %d\n" % (self.command, self.path, len(got)))
            sys.stdout.flush()
        body = ("origin=%s path=%s\n" % (name, self.path)).encode()
        self.send_response(int(self.headers.get("x-want-status") or 200))
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-origin", name)
        self.send_header("x-seen-host", self.headers.get("host") or "")
        self.send_header("x-seen-xff", self.headers.get("x-forwarded-for") or "")
        self.send_header("x-seen-added", self.headers.get("x-added") or "")
        seen = {}
        for k, v in self.headers.items():
            seen.setdefault(k.lower(), []).append(v)
        self.send_header("x-seen-headers", json.dumps(seen, sort_keys=True))
        self.send_header("x-seen-names", json.dumps(list(self.headers.keys())))
        self.end_headers()
        self.wfile.write(body)
    do_GET = _answer
    do_POST = _answer
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl Origin {
    /// Starts an origin that names itself `name` in every response.
    pub fn start(name: &str) -> Result<Origin> {
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", ORIGIN_PY, name]);
        let proc = Proc::spawn(cmd)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], read_port(&proc)?));
        wait_for_port(addr)?;
        Ok(Origin { proc, addr })
    }

    /// Every request the origin has answered so far, oldest first, as
    /// `METHOD PATH BODY-BYTES` (e.g. `POST /upload 11`). A request is
    /// logged after its body is read and before it is answered, so a client
    /// holding the response can wait for its line.
    pub fn requests(&self) -> Vec<String> {
        self.proc
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("request "))
            .map(str::to_owned)
            .collect()
    }
}

/// The request headers an [`Origin`] saw, from its `x-seen-headers`
/// response header: lower-cased name to the values received.
pub fn seen_headers(r: &CurlResponse) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
    let text = r
        .header("x-seen-headers")
        .context("the response has no x-seen-headers (did it come from an Origin?)")?;
    Ok(serde_json::from_str(text)?)
}

const FILE_SERVER_PY: &str = r#"
import functools, http.server, ssl, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *a: None
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
if len(sys.argv) > 3:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A static file server (Python's `http.server`) over a directory, for
/// documents the gateway fetches, such as a JWKS; plain HTTP, or HTTPS
/// with [`FileServer::start_tls`]. Rewrite the files to change what it
/// serves; drop it (or `stop`) to take it down.
#[derive(Debug)]
pub struct FileServer {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl FileServer {
    /// Serves `dir` on a loopback port the OS picked.
    pub fn start(dir: &Path) -> Result<FileServer> {
        FileServer::spawn(dir, None)
    }

    /// Serves `dir` over HTTPS with the PEM certificate chain `cert` and
    /// its key `key`.
    pub fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Result<FileServer> {
        FileServer::spawn(dir, Some((cert, key)))
    }

    fn spawn(dir: &Path, tls: Option<(&Path, &Path)>) -> Result<FileServer> {
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", FILE_SERVER_PY]).arg(dir);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let proc = Proc::spawn(cmd)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], read_port(&proc)?));
        wait_for_port(addr)?;
        Ok(FileServer { proc, addr })
    }

    /// Stops serving: the process is killed and reaped, so the port
    /// refuses connections once this returns.
    pub fn stop(self) {}
}

/// Waits for a server that bound port 0 to print its port as its first
/// line of output, and returns it.
pub fn read_port(proc: &Proc) -> Result<u16> {
    let mut port = 0u16;
    wait_for(
        Duration::from_secs(10),
        "the server to print its port",
        || {
            port = proc
                .stdout()
                .lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            port != 0
        },
    )?;
    Ok(port)
}

/// Path of a helper script in `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    workspace().join("tests").join("py").join(name)
}

/// A test server from `tests/py/` (gRPC, WebSocket, streaming origins):
/// it binds port 0 and prints the port as its first line of output.
#[derive(Debug)]
pub struct PyServer {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl PyServer {
    /// Runs `python3 -u tests/py/SCRIPT ARGS...` and waits until the port it
    /// printed accepts connections.
    pub fn start(script: &str, args: &[&str]) -> Result<PyServer> {
        let mut cmd = Command::new("python3");
        cmd.arg("-u").arg(py_script(script)).args(args);
        let mut proc = Proc::spawn(cmd)?;
        let mut port = 0u16;
        let printed = wait_for(
            Duration::from_secs(20),
            &format!("{script} to print its port"),
            || {
                port = proc
                    .stdout()
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0);
                port != 0 || !proc.running()
            },
        );
        if let Err(e) = printed.and_then(|()| {
            if port == 0 {
                bail!("{script} exited before printing its port");
            }
            Ok(())
        }) {
            bail!("{e}\nstderr:\n{}", proc.stderr());
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr)?;
        Ok(PyServer { proc, addr })
    }
}

/// The value of the first sample of family `name` whose labels include
/// every one of `labels` (each written `key="value"`).
pub fn metric(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs a Python client from `tests/py/` and parses the one JSON object it
/// prints.
pub fn py_client(script: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = run(
        Command::new("python3").arg(py_script(script)).args(args),
        Duration::from_secs(60),
    )?;
    if !out.status.success() {
        bail!(
            "{script} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{script} printed no JSON: {:?}", out.stdout))
}

/// The outcome `tests/py/grpc_client.py` reports against the echo server,
/// whatever sits between them.
pub fn check_grpc_echo(out: &serde_json::Value, how: &str) {
    let unary = &out["unary"];
    assert_eq!(unary["code"], "OK", "{how}: {out}");
    assert_eq!(unary["reply"], "echo:hello", "{how}: {out}");
    assert_eq!(unary["trailers"]["x-echo-trailer"], "unary", "{how}: {out}");

    let err = &out["unary_error"];
    assert_eq!(err["code"], "NOT_FOUND", "{how}: {out}");
    assert_eq!(err["details"], "no such item: widget-7", "{how}: {out}");

    let stream = &out["server_stream"];
    assert_eq!(stream["code"], "OK", "{how}: {out}");
    let items: Vec<String> = (0..50).map(|i| format!("item {i}")).collect();
    assert_eq!(stream["items"], serde_json::json!(items), "{how}: {out}");

    let failing = &out["server_stream_error"];
    assert_eq!(failing["code"], "RESOURCE_EXHAUSTED", "{how}: {out}");
    assert_eq!(failing["details"], "stream quota used up", "{how}: {out}");
    assert_eq!(
        failing["items"],
        serde_json::json!(["item 0", "item 1", "item 2"]),
        "{how}: messages sent before the error status arrive too: {out}"
    );

    let bidi = &out["bidi"];
    assert_eq!(bidi["code"], "OK", "{how}: {out}");
    let replies: Vec<String> = (0..20).map(|i| format!("echo:m{i}")).collect();
    assert_eq!(bidi["replies"], serde_json::json!(replies), "{how}: {out}");
}
