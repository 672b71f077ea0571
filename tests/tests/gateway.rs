//! The gateway end to end: `meshgate run` on free loopback ports, real
//! origin servers (Python's standard-library HTTP server), and curl as the
//! client over HTTP/1.1 and h2c.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshgate_tests::{
    Gateway, Origin, Proc, bin, curl, free_port, seen_headers, tempdir, wait_for, wait_for_port,
};

struct Setup {
    gw: Gateway,
    base: String,
    config: PathBuf,
    _origins: Vec<Origin>,
}

fn config_text(port: u16, v1: SocketAddr, v2: SocketAddr, dead: u16, hello: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"

[[listener]]
name = "web"
address = "127.0.0.1:{port}"
protocols = ["http1", "h2c"]
limits = {{ drain_timeout = "2s" }}

[[route]]
name = "hello"
match = {{ path = "/hello" }}
respond = {{ status = 200, body = "{hello}" }}

[[route]]
name = "old-docs"
match = {{ path_prefix = "/old" }}
redirect = {{ status = 301, path_prefix = "/docs" }}

[[route]]
name = "status"
match = {{ path = "/status" }}
respond = {{ builtin = "status-page" }}

[[route]]
name = "catalog"
match = {{ path_prefix = "/api/products", methods = ["GET", "POST"] }}
service = "product-catalog"
rewrite = {{ path_prefix = "/products" }}
timeout = "5s"
request_headers = {{ set = {{ x-added = "yes" }}, add = {{ x-extra = "2" }}, remove = ["x-drop"] }}
response_headers = {{ set = {{ x-served-by = "meshgate" }}, remove = ["x-seen-xff"] }}

[[route]]
name = "broken"
match = {{ path_prefix = "/broken" }}
service = "nowhere"

[[service]]
name = "product-catalog"
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
override_header = "x-canary"

[[service]]
name = "nowhere"
endpoints = [{{ address = "127.0.0.1:{dead}" }}]
connect_timeout = "500ms"

[observability]
access_log = {{ format = "json", path = "stdout" }}
"#,
        admin = free_port(),
    )
}

fn setup(hello: &str) -> Setup {
    let v1 = Origin::start("v1").expect("origin v1");
    let v2 = Origin::start("v2").expect("origin v2");
    let port = free_port();
    let dead = free_port();
    let dir = tempdir().expect("tempdir");
    let config = dir.join("meshgate.toml");
    std::fs::write(&config, config_text(port, v1.addr, v2.addr, dead, hello)).expect("write");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let gw = Gateway::start(&config, addr).expect("gateway starts");
    Setup {
        gw,
        base: format!("http://127.0.0.1:{port}"),
        config,
        _origins: vec![v1, v2],
    }
}

/// `meshgate run` with the embedded default, its status page and admin API
/// on free ports (`--listen`, `--admin`), `RUST_LOG` as given; returns once
/// both ports take connections.
fn run_embedded(rust_log: &str) -> (Proc, SocketAddr, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(bin("meshgate"));
    cmd.args([
        "run",
        "--threads",
        "1",
        "--listen",
        &addr.to_string(),
        "--admin",
        &admin.to_string(),
    ])
    .env("RUST_LOG", rust_log);
    let proc = Proc::spawn(cmd).expect("spawn");
    wait_for_port(addr).unwrap_or_else(|e| panic!("{e}\n{}", proc.stderr()));
    wait_for_port(admin).unwrap_or_else(|e| panic!("{e}\n{}", proc.stderr()));
    (proc, addr, admin)
}

/// The embedded default on the addresses `--listen` and `--admin` name:
/// two run side by side on one host, each serving its status page and
/// admin API.
#[test]
fn embedded_default_serves_the_status_page() {
    let two = [run_embedded("warn"), run_embedded("warn")];
    for (_proc, addr, admin) in &two {
        for extra in [&[][..], &["--http2-prior-knowledge"][..]] {
            let mut args = extra.to_vec();
            let url = format!("http://{addr}/anything");
            args.push(&url);
            let r = curl(&args).expect("curl");
            assert_eq!(r.status, 200);
            assert!(r.body.contains("meshgate is running"), "{}", r.body);
            assert!(r.body.contains("&lt;embedded default&gt;"), "{}", r.body);
        }
        let r = curl(&[&format!("http://{admin}/readyz")]).expect("curl");
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// The embedded default has no admin token, so `--admin` beyond loopback
/// is refused with a clear error, and `--admin` with a config file is a
/// usage error (the file's `[admin]` table decides).
#[test]
fn embedded_default_admin_beyond_loopback_is_refused() {
    let out = Command::new(bin("meshgate"))
        .args(["run", "--admin", &format!("0.0.0.0:{}", free_port())])
        .output()
        .expect("meshgate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(bin("meshgate"))
        .args([
            "run",
            "--config",
            "/nonexistent.toml",
            "--admin",
            "127.0.0.1:1",
        ])
        .output()
        .expect("meshgate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

/// The resident pages of a process's own code (its executable's `r-xp`
/// mappings), in KiB.
fn code_kib(pid: u32) -> u64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let exe = exe.to_string_lossy();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut code = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            code = fields.get(1) == Some(&"r-xp") && fields.get(5) == Some(&exe.as_ref());
        } else if code && fields.first() == Some(&"Rss:") {
            kib += fields
                .get(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kib
}

/// Once running, the gateway drops its mappings of its start-up pages
/// (gateway/src/memory.rs) and serves on, the code it needs faulting back
/// in from the file; after its first requests, once a second has passed
/// without one, it drops them again.
#[test]
fn start_up_pages_are_released_and_requests_still_served() {
    let (proc, addr, _admin) = run_embedded("warn,meshgate=debug");
    let logged = |what: &str| {
        let err = proc.stderr();
        err.lines().find(|l| l.contains(what)).map(str::to_owned)
    };
    let released = || logged("start-up pages");
    wait_for(Duration::from_secs(10), "the start-up pages' fate", || {
        released().is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.stderr()));
    let line = released().unwrap_or_default();
    let bytes: u64 = line
        .split_once("bytes=")
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("not released: {line}"));
    assert!(bytes > 0, "{line}");
    let get = || {
        let r = curl(&[&format!("http://{addr}/anything")]).expect("curl");
        assert_eq!(r.status, 200);
        assert!(r.body.contains("meshgate is running"), "{}", r.body);
    };
    for _ in 0..3 {
        get();
    }
    let after_requests = code_kib(proc.pid());
    let settled = || logged("start-up settled");
    wait_for(Duration::from_secs(10), "start-up settled", || {
        settled().is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.stderr()));
    let line = settled().unwrap_or_default();
    assert!(line.contains("released again"), "{line}");
    let idle = code_kib(proc.pid());
    assert!(
        after_requests > 0 && idle < after_requests,
        "code resident after the requests {after_requests} KiB, once settled {idle} KiB"
    );
    get();
}

/// The anonymous memory (`RssAnon`, the allocator's) of a process, in KiB.
fn anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// After a burst of load the gateway, left idle, gives the memory the
/// burst took back to the system (gateway/src/memory.rs): the allocator
/// alone keeps a thread's freed pages until that thread allocates again.
#[test]
fn memory_a_burst_took_is_given_back_while_idle() {
    let (gw, addr) = Gateway::start_web(
        "protocols = [\"http1\", \"h2c\"]",
        "[[route]]\nname = \"hi\"\nmatch = { path_prefix = \"/\" }\n\
         respond = { status = 200, body = \"hi\" }\n",
    )
    .expect("gateway");
    let proc = &gw.proc;
    let r = curl(&[&format!("http://{addr}/")]).expect("curl");
    assert_eq!((r.status, r.body.as_str()), (200, "hi"));
    std::thread::sleep(Duration::from_secs(2));
    let before = anon_kib(proc.pid());

    // 64 connections with 10 streams each (h2c), for 3 s, sampling the
    // memory while it runs.
    let mut load = Command::new("h2load")
        .args([
            "-c",
            "64",
            "-m",
            "10",
            "-D",
            "3",
            &format!("http://{addr}/"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("h2load (nghttp2-client)");
    let mut peak = before;
    while load.try_wait().expect("h2load").is_none() {
        peak = peak.max(anon_kib(proc.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = load.wait_with_output().expect("h2load");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "h2load: {summary}");
    assert!(
        summary.contains(" 0 failed, 0 errored"),
        "h2load: {summary}"
    );
    assert!(
        peak >= before + 2048,
        "the burst did not grow the gateway's memory enough to tell: {before} -> {peak} KiB"
    );

    // Idle from here: no request reaches the gateway. Nearly all of it
    // comes back: the pages full when last allocated from too, which only
    // the allocator's forced collection (every 10 s) gives back.
    let nearly_all_back = before + (peak - before) / 8;
    let mut now = peak;
    wait_for(
        Duration::from_secs(15),
        "the burst's memory given back",
        || {
            now = anon_kib(proc.pid());
            now <= nearly_all_back
        },
    )
    .unwrap_or_else(|e| {
        panic!("{e}: anonymous memory {before} KiB before, {peak} at the peak, {now} now")
    });
}

#[test]
fn routes_respond_redirect_and_forward_over_h1_and_h2c() {
    let s = setup("hello there");
    for proto in [&[][..], &["--http2-prior-knowledge"][..]] {
        let want_version = if proto.is_empty() { "1.1" } else { "2" };
        let get = |path: &str, extra: &[&str]| {
            let url = format!("{}{path}", s.base);
            let mut args: Vec<&str> = proto.to_vec();
            args.extend_from_slice(extra);
            args.push(&url);
            curl(&args).expect("curl")
        };
        let r = get("/hello", &[]);
        assert_eq!((r.status, r.version.as_str()), (200, want_version));
        assert_eq!(r.body, "hello there");

        let r = get("/old/guide?x=1", &[]);
        assert_eq!(r.status, 301);
        assert_eq!(
            r.header("location"),
            Some(
                format!(
                    "http://127.0.0.1:{}/docs/guide?x=1",
                    s.base.rsplit(':').next().unwrap_or("")
                )
                .as_str()
            )
        );

        let r = get("/status", &[]);
        assert!(r.body.contains("product-catalog"), "{}", r.body);

        let r = get(
            "/api/products/42?q=a",
            &[
                "-H",
                "x-canary: v2",
                "-H",
                "x-drop: gone",
                "-H",
                "x-extra: 1",
            ],
        );
        assert_eq!(r.status, 200, "{r:?}");
        let seen = seen_headers(&r).expect("origin echoes headers");
        assert_eq!(seen.get("x-drop"), None, "request header removal");
        assert_eq!(
            seen.get("x-extra"),
            Some(&vec!["1".to_owned(), "2".to_owned()]),
            "request header add keeps the client's value"
        );
        assert_eq!(r.body, "origin=v2 path=/products/42?q=a\n");
        assert_eq!(r.header("x-served-by"), Some("meshgate"));
        assert_eq!(r.header("x-seen-added"), Some("yes"));
        assert_eq!(r.header("x-seen-xff"), None, "response header removal");

        let r = get("/nope", &[]);
        assert_eq!(r.status, 404);
        assert_eq!(r.header("x-meshgate-reason"), Some("no-route"));

        let r = get("/api/products", &["-X", "DELETE"]);
        assert_eq!(r.status, 404, "method not matched");

        let r = get("/broken", &[]);
        assert_eq!(r.status, 502);
        assert_eq!(
            r.header("x-meshgate-reason"),
            Some("upstream-connect-failure")
        );
    }
    let log = s.gw.proc.stdout();
    let lines = s.gw.access_log();
    assert!(
        lines
            .iter()
            .any(|l| l["route"] == "catalog" && l["upstream"].is_string() && l["proto"] == "http2"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["reason"] == "upstream-connect-failure" && l["status"] == 502),
        "{log}"
    );
}

#[test]
fn split_is_weighted_and_sticky_per_user() {
    let s = setup("x");
    let url = format!("{}/api/products/1", s.base);
    let mut by_user: HashMap<String, String> = HashMap::new();
    let mut v2 = 0;
    let users = 60;
    for u in 0..users {
        let user = format!("user-{u}");
        let hdr = format!("x-user-id: {user}");
        let first = curl(&["-H", &hdr, &url])
            .expect("curl")
            .header("x-origin")
            .map(str::to_owned);
        let again = curl(&["-H", &hdr, &url])
            .expect("curl")
            .header("x-origin")
            .map(str::to_owned);
        assert_eq!(first, again, "{user} must stick to one version");
        let origin = first.expect("x-origin");
        if origin == "v2" {
            v2 += 1;
        }
        by_user.insert(user, origin);
    }
    // 20% of 60 users: expect about 12; binomial sd ~3.1, so 2..=24 is
    // far outside chance and still catches a broken split (0 or 60).
    assert!((2..=24).contains(&v2), "v2 got {v2} of {users} users");
}

#[test]
fn reload_applies_good_files_and_keeps_serving_on_bad_ones() {
    let mut s = setup("before");
    let hello = format!("{}/hello", s.base);
    assert_eq!(curl(&[&hello]).expect("curl").body, "before");

    // A file change is picked up by the watcher.
    let text = std::fs::read_to_string(&s.config).expect("read");
    std::fs::write(&s.config, text.replace("\"before\"", "\"after-watch\"")).expect("write");
    wait_for(Duration::from_secs(10), "the file change to apply", || {
        curl(&[&hello]).is_ok_and(|r| r.body == "after-watch")
    })
    .expect("reload by file change");

    // A bad file is rejected; the running config keeps serving.
    let good = std::fs::read_to_string(&s.config).expect("read");
    std::fs::write(
        &s.config,
        good.replace("service = \"nowhere\"", "service = \"nowher\""),
    )
    .expect("write");
    s.gw.proc.signal("HUP").expect("SIGHUP");
    wait_for(
        Duration::from_secs(10),
        "the rejection to be logged",
        || s.gw.proc.stderr().contains("config reload rejected"),
    )
    .expect("rejection logged");
    let err = s.gw.proc.stderr();
    assert!(err.contains("unknown service \"nowher\""), "{err}");
    assert!(err.contains("did you mean \"nowhere\"?"), "{err}");
    assert_eq!(curl(&[&hello]).expect("curl").body, "after-watch");

    // SIGHUP applies a good file.
    std::fs::write(&s.config, good.replace("\"after-watch\"", "\"after-hup\"")).expect("write");
    s.gw.proc.signal("HUP").expect("SIGHUP");
    wait_for(Duration::from_secs(10), "SIGHUP reload", || {
        curl(&[&hello]).is_ok_and(|r| r.body == "after-hup")
    })
    .expect("reload by SIGHUP");
    assert!(s.gw.proc.stderr().contains("config reloaded"));

    // SIGTERM drains and exits cleanly.
    s.gw.proc.signal("TERM").expect("SIGTERM");
    let code = s.gw.proc.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(code, Some(0));
}

#[test]
fn bad_config_exits_non_zero_before_listening() {
    let dir = tempdir().expect("tempdir");
    let config = dir.join("bad.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:{port}\"\nprotocol = [\"http1\"]\n"
        ),
    )
    .expect("write");
    let mut cmd = Command::new(bin("meshgate"));
    cmd.args(["run", "--config", config.to_str().expect("utf8")]);
    let mut p = Proc::spawn(cmd).expect("spawn");
    let code = p.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(code, Some(1));
    let err = p.stderr();
    assert!(err.contains(":4:1: error: unknown key `protocol`"), "{err}");
    assert!(err.contains("did you mean `protocols`?"), "{err}");
}

#[test]
fn every_x_forwarded_for_line_is_kept_and_the_client_appended() {
    let origin = Origin::start("o").expect("origin");
    let (_gw, addr) = Gateway::start_web(
        "protocols = [\"http1\", \"h2c\"]",
        &format!(
            "[[route]]\nname = \"r\"\nservice = \"s\"\n\n[[service]]\nname = \"s\"\n\
             endpoints = [{{ address = \"{}\" }}]\n",
            origin.addr
        ),
    )
    .expect("gateway");
    // Two field lines are one list (RFC 9110 5.3): a proxy in front adds
    // its own line after whatever the client sent, and dropping it would
    // leave the client's claim where that proxy's should be.
    for how in ["--http1.1", "--http2-prior-knowledge"] {
        let r = curl(&[
            how,
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-For: 203.0.113.7",
            &format!("http://{addr}/xff"),
        ])
        .expect("curl");
        let seen = seen_headers(&r).expect("seen headers");
        assert_eq!(
            seen.get("x-forwarded-for"),
            Some(&vec!["6.6.6.6, 203.0.113.7, 127.0.0.1".to_owned()]),
            "{how}: {seen:?}"
        );
    }
}

#[test]
fn header_names_go_upstream_in_one_case_unless_the_service_keeps_the_clients() {
    let plain = Origin::start("plain").expect("origin");
    let kept = Origin::start("kept").expect("origin");
    let (_gw, addr) = Gateway::start_web(
        "protocols = [\"http1\", \"h2c\"]",
        &format!(
            r#"
[[route]]
name = "kept"
match = {{ path_prefix = "/kept" }}
service = "kept"

[[route]]
name = "plain"
service = "plain"

[[service]]
name = "plain"
endpoints = [{{ address = "{}" }}]

[[service]]
name = "kept"
endpoints = [{{ address = "{}" }}]
preserve_header_case = true
"#,
            plain.addr, kept.addr
        ),
    )
    .expect("gateway");
    // The names on the wire, as the origin read them, and the values of
    // the one the client spelled oddly.
    let send = |how: &str, path: &str, extra: &[&str]| {
        let url = format!("http://{addr}{path}");
        let mut args = vec![how, "-H", "X-Mixed-CASE: a", "-H", "x-MIXED-case: b"];
        args.extend_from_slice(extra);
        args.push(&url);
        let r = curl(&args).expect("curl");
        assert_eq!(r.status, 200, "{how} {path}: {r:?}");
        let names: Vec<String> =
            serde_json::from_str(r.header("x-seen-names").expect("x-seen-names")).expect("json");
        let seen = seen_headers(&r).expect("seen headers");
        assert_eq!(
            seen.get("x-mixed-case"),
            Some(&vec!["a".to_owned(), "b".to_owned()]),
            "{how} {path}: values and their order are kept: {seen:?}"
        );
        names
    };

    let names = send("--http1.1", "/plain", &[]);
    for want in ["Host", "user-agent", "x-mixed-case", "x-forwarded-for"] {
        assert!(names.contains(&want.to_owned()), "{want} in {names:?}");
    }
    assert_eq!(
        names.iter().filter(|n| *n == "x-mixed-case").count(),
        2,
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n == "User-Agent" || n == "X-Mixed-CASE"),
        "{names:?}"
    );

    let names = send("--http1.1", "/kept", &[]);
    for want in [
        "Host",
        "User-Agent",
        "X-Mixed-CASE",
        "x-MIXED-case",
        "x-forwarded-for",
    ] {
        assert!(names.contains(&want.to_owned()), "{want} in {names:?}");
    }
    // An HTTP/2 client's names are lower case on the wire: there is no
    // other spelling to keep.
    let names = send("--http2-prior-knowledge", "/kept", &[]);
    assert!(names.contains(&"x-mixed-case".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n == "X-Mixed-CASE"), "{names:?}");

    // A target in absolute form, which pingora keeps apart from the URI,
    // reaches both origins as the client sent it.
    for (path, origin) in [("/plain/abs?q=1", &plain), ("/kept/abs?q=1", &kept)] {
        let target = format!("http://{addr}{path}");
        send("--http1.1", "/", &["--request-target", &target]);
        let line = format!("GET {target} 0");
        wait_for(Duration::from_secs(5), "the origin's log line", || {
            origin.requests().contains(&line)
        })
        .unwrap_or_else(|_| panic!("{line} in {:?}", origin.requests()));
    }
}

#[test]
fn a_mirrored_route_copies_requests_to_the_shadow_and_ignores_its_answers() {
    let main = Origin::start("main").expect("origin");
    let shadow = Origin::start("shadow").expect("shadow");
    let (gw, addr) = Gateway::start_web(
        "protocols = [\"http1\", \"h2c\"]",
        &format!(
            r#"
[[route]]
name = "mirrored"
match = {{ path_prefix = "/m/" }}
service = "main"
rewrite = {{ path_prefix = "/r/" }}
mirror = {{ service = "shadow" }}

[[route]]
name = "never"
match = {{ path_prefix = "/never/" }}
service = "main"
mirror = {{ service = "shadow", percent = 0 }}

[[route]]
name = "to-nowhere"
match = {{ path_prefix = "/gone/" }}
service = "main"
mirror = {{ service = "gone" }}

[[service]]
name = "main"
endpoints = [{{ address = "{}" }}]

[[service]]
name = "shadow"
endpoints = [{{ address = "{}" }}]

[[service]]
name = "gone"
endpoints = [{{ address = "127.0.0.1:{}" }}]
"#,
            main.addr,
            shadow.addr,
            free_port()
        ),
    )
    .expect("gateway");
    let base = format!("http://{addr}");
    let big = "b".repeat(70_000);
    for args in [
        vec![format!("{base}/m/get")],
        vec![
            "--data-binary".into(),
            "hello".into(),
            format!("{base}/m/post"),
        ],
        // The shadow (Python's server) would answer a 100 Continue first.
        vec![
            "-H".into(),
            "Expect: 100-continue".into(),
            "--data-binary".into(),
            "expect".into(),
            format!("{base}/m/expect"),
        ],
        vec![
            "--http2-prior-knowledge".into(),
            "--data-binary".into(),
            "abc".into(),
            format!("{base}/m/h2"),
        ],
        vec!["--data-binary".into(), big.clone(), format!("{base}/m/big")],
        vec![format!("{base}/never/get")],
        vec![format!("{base}/gone/get")],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&args).expect("curl");
        // The client's answer is the main service's, whatever the mirror did.
        assert_eq!(
            (r.status, r.header("x-origin")),
            (200, Some("main")),
            "{args:?}"
        );
    }
    wait_for(
        Duration::from_secs(10),
        "the shadow to get its copies",
        || {
            let seen = shadow.requests();
            // As the route forwards them: rewritten.
            [
                "GET /r/get 0",
                "POST /r/post 5",
                "POST /r/expect 6",
                "POST /r/h2 3",
            ]
            .iter()
            .all(|w| seen.iter().any(|r| r == w))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", shadow.requests()));
    wait_for(Duration::from_secs(10), "the mirror counters", || {
        gw.metrics()
            .is_ok_and(|m| m.contains("result=\"failed\"") && m.contains("result=\"sent\""))
    })
    .expect("metrics");
    let m = gw.metrics().expect("metrics");
    let count = |service: &str, result: &str| {
        meshgate_tests::metric(
            &m,
            "meshgate_mirror_requests_total",
            &[
                &format!("service=\"{service}\""),
                &format!("result=\"{result}\""),
            ],
        )
    };
    assert_eq!(count("shadow", "sent"), Some(4.0), "{m}");
    // Longer than the 64 KiB a copy may hold: not mirrored.
    assert_eq!(count("shadow", "skipped"), Some(1.0), "{m}");
    assert_eq!(count("gone", "failed"), Some(1.0), "{m}");
    let seen = shadow.requests();
    assert!(
        !seen
            .iter()
            .any(|r| r.contains("/never/") || r.contains("/r/big")),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn a_path_is_routed_and_forwarded_in_one_spelling() {
    let origin = Origin::start("o").expect("origin");
    let (_gw, addr) = Gateway::start_web(
        "protocols = [\"http1\", \"h2c\"]",
        &format!(
            r#"
[[route]]
name = "admin"
match = {{ path_prefix = "/admin" }}
respond = {{ status = 403, body = "admin only\n" }}

[[route]]
name = "rest"
service = "s"

[[service]]
name = "s"
endpoints = [{{ address = "{}" }}]
"#,
            origin.addr
        ),
    )
    .expect("gateway");
    // Spellings an origin resolves to /admin/... must not take the
    // catch-all route past the one that guards /admin.
    for path in [
        "/x/../admin/users",
        "/%61dmin/users",
        "/./admin/users",
        "/%2e%2e/admin/users",
        "/x/%2E%2E/admin",
    ] {
        for how in ["--http1.1", "--http2-prior-knowledge"] {
            let r = curl(&[how, "--path-as-is", &format!("http://{addr}{path}")]).expect("curl");
            assert_eq!(r.status, 403, "{how} {path}: {r:?}");
        }
    }
    // What is forwarded is the path that was matched.
    let r = curl(&[
        "--path-as-is",
        &format!("http://{addr}/public/./a/../%62?q=%2e"),
    ])
    .expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    wait_for(Duration::from_secs(5), "the origin's log line", || {
        !origin.requests().is_empty()
    })
    .expect("origin log");
    assert_eq!(origin.requests(), vec!["GET /public/b?q=%2e 0".to_owned()]);
}
