//! Reload and shutdown under traffic, through the real binary: in-flight
//! requests finish on the config they started with, a reload under load
//! drops nothing (h2load counts every response), and SIGTERM drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshgate_tests::scripted::{Scripted, scripted};
use meshgate_tests::{Gateway, Proc, bin, curl, free_port, run, tempdir, wait_for};

fn config(port: u16, admin: u16, target: &str, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"

[[listener]]
name = "web"
address = "127.0.0.1:{port}"
protocols = ["http1", "h2c"]
limits = {{ drain_timeout = "10s" }}

[[route]]
name = "r"
service = "{target}"

[[service]]
name = "a"
endpoints = [{{ address = "{a}" }}]

[[service]]
name = "b"
endpoints = [{{ address = "{b}" }}]

[observability]
access_log = {{ format = "json", path = "stdout" }}
"#
    )
}

struct Setup {
    gw: Gateway,
    file: PathBuf,
    port: u16,
    admin: u16,
    a: Scripted,
    b: Scripted,
}

impl Setup {
    fn new() -> Setup {
        let a = scripted("a");
        let b = scripted("b");
        let (port, admin) = (free_port(), free_port());
        let file = tempdir().expect("tempdir").join("meshgate.toml");
        std::fs::write(&file, config(port, admin, "a", a.addr, b.addr)).expect("write");
        let gw = Gateway::start(&file, SocketAddr::from(([127, 0, 0, 1], port))).expect("gateway");
        Setup {
            gw,
            file,
            port,
            admin,
            a,
            b,
        }
    }

    fn point_at(&self, target: &str) {
        std::fs::write(
            &self.file,
            config(self.port, self.admin, target, self.a.addr, self.b.addr),
        )
        .expect("write");
        self.gw.proc.signal("HUP").expect("SIGHUP");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn slow_request(&self, ms: u32) -> Proc {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-D",
            "-",
            "--max-time",
            "20",
            &self.url(&format!("/slow/{ms}")),
        ]);
        Proc::spawn(c).expect("curl")
    }

    fn wait_slow_started(&self, origin: &Scripted) {
        let count = format!("http://{}/count/slow-started", origin.addr);
        wait_for(
            Duration::from_secs(10),
            "the slow request to arrive",
            || curl(&[&count]).is_ok_and(|r| r.body == "1"),
        )
        .expect("slow request in flight");
    }
}

#[test]
fn an_in_flight_request_finishes_on_the_config_it_started_with() {
    let s = Setup::new();
    let mut slow = s.slow_request(1500);
    s.wait_slow_started(&s.a);
    s.point_at("b");
    wait_for(Duration::from_secs(10), "new requests to reach b", || {
        curl(&[&s.url("/svc")]).is_ok_and(|r| r.header("x-origin") == Some("b"))
    })
    .expect("reload applied");
    assert_eq!(
        slow.wait_exit(Duration::from_secs(20)).expect("curl ends"),
        Some(0)
    );
    let out = slow.stdout();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("x-origin: a"),
        "the old route served it: {out}"
    );
    assert!(out.ends_with("slow\n"), "{out}");
}

#[test]
fn reloading_under_load_drops_nothing() {
    let s = Setup::new();
    // HTTP/1.1 without pipelining (-m 1), as browsers and proxies send it.
    for (proto, extra) in [
        ("h2c", &["-m", "4"][..]),
        ("http1", &["--h1", "-m", "1"][..]),
    ] {
        let mut cmd = Command::new("h2load");
        cmd.args(["-n", "3000", "-c", "8"])
            .args(extra)
            .arg(s.url("/svc"));
        let load = Proc::spawn(cmd).expect("h2load");
        // Reload back and forth while the load runs (bounded: 10 reloads).
        for i in 0..10 {
            s.point_at(if i % 2 == 0 { "b" } else { "a" });
            let want = if i % 2 == 0 { "b" } else { "a" };
            wait_for(Duration::from_secs(10), "the reload to apply", || {
                curl(&[&s.url("/svc")]).is_ok_and(|r| r.header("x-origin") == Some(want))
            })
            .expect("reload");
        }
        let mut load = load;
        load.wait_exit(Duration::from_secs(60))
            .expect("h2load finishes");
        let out = load.stdout();
        let failures: Vec<String> =
            s.gw.proc
                .stdout()
                .lines()
                .filter(|l| !l.contains("\"status\":200"))
                .map(str::to_owned)
                .collect();
        assert!(
            out.contains("3000 succeeded, 0 failed, 0 errored, 0 timeout"),
            "{proto}: {out}\nfailed requests in the access log:\n{}",
            failures.join("\n")
        );
        assert!(out.contains("status codes: 3000 2xx"), "{proto}: {out}");
    }
    assert!(s.gw.proc.stderr().contains("config reloaded"));
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let mut s = Setup::new();
    let mut slow = s.slow_request(1500);
    s.wait_slow_started(&s.a);
    s.gw.proc.signal("TERM").expect("SIGTERM");
    assert_eq!(
        slow.wait_exit(Duration::from_secs(20)).expect("curl ends"),
        Some(0)
    );
    assert!(
        slow.stdout().starts_with("HTTP/1.1 200"),
        "{}",
        slow.stdout()
    );
    let code = s.gw.proc.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(code, Some(0));
    // New connections are refused once it has gone.
    let refused = run(
        Command::new("curl").args(["-s", "--max-time", "2", &s.url("/svc")]),
        Duration::from_secs(5),
    )
    .expect("curl runs");
    assert!(!refused.status.success());
}

#[test]
fn a_file_rewritten_in_place_is_applied_whole_and_an_empty_one_never() {
    let s = Setup::new();
    // Truncated to be rewritten (the first step of an in-place write):
    // an empty file is a valid config without routes, and is refused.
    std::fs::write(&s.file, "").expect("truncate");
    wait_for(
        Duration::from_secs(10),
        "the empty file to be refused",
        || s.gw.proc.stderr().contains("the config file is empty"),
    )
    .expect("refused");
    let r = curl(&[&s.url("/svc")]).expect("curl");
    assert_eq!(
        r.header("x-origin"),
        Some("a"),
        "still the old config: {r:?}"
    );

    // Written in two steps a moment apart (well within the 100 ms watch
    // interval), the first a valid config on its own (the listener, no
    // route): only the whole file is applied.
    let whole = config(s.port, s.admin, "b", s.a.addr, s.b.addr);
    let cut = whole.find("[[route]]").expect("a route");
    let before = s.gw.proc.stderr().matches("config reloaded").count();
    std::fs::write(&s.file, &whole[..cut]).expect("first part");
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(&s.file, &whole).expect("the rest");
    wait_for(Duration::from_secs(10), "the whole file to apply", || {
        curl(&[&s.url("/svc")]).is_ok_and(|r| r.header("x-origin") == Some("b"))
    })
    .expect("applied");
    let applied = s.gw.proc.stderr().matches("config reloaded").count() - before;
    assert_eq!(
        applied,
        1,
        "one reload, of the whole file:\n{}",
        s.gw.proc.stderr()
    );
}

/// A reload sent the moment the listener accepts, before the gateway's
/// reload task can have started: SIGHUP's default action would end the
/// process, and a signal nobody listened for would be lost.
#[test]
fn a_sighup_as_soon_as_the_port_accepts_is_applied() {
    let a = scripted("a");
    let b = scripted("b");
    let (port, admin) = (free_port(), free_port());
    let file = tempdir().expect("tempdir").join("meshgate.toml");
    std::fs::write(&file, config(port, admin, "a", a.addr, b.addr)).expect("write");
    let mut cmd = Command::new(bin("meshgate"));
    cmd.arg("run").arg("--config").arg(&file);
    let mut gw = Proc::spawn(cmd).expect("meshgate");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // No pause between tries (wait_for's 20 ms would leave the gateway
    // time to finish starting): the signal comes as early as it can.
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20) && gw.running(),
            "no listener: {}",
            gw.stderr()
        );
    }
    std::fs::write(&file, config(port, admin, "b", a.addr, b.addr)).expect("rewrite");
    gw.signal("HUP").expect("SIGHUP");
    wait_for(Duration::from_secs(10), "the reload to apply", || {
        curl(&[&format!("http://{addr}/svc")]).is_ok_and(|r| r.header("x-origin") == Some("b"))
    })
    .expect("the rewritten config serves");
    assert!(gw.running(), "{}", gw.stderr());
}
