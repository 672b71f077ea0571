//! `meshgate check`, `meshgate check --diff`, `--help` and a start-up
//! error of `meshgate run`, through the real binary.

use std::process::Command;
use std::time::Duration;

use meshgate_tests::{bin, run, tempdir, workspace};

fn meshgate(args: &[&str]) -> (i32, String, String) {
    let out = run(
        Command::new(bin("meshgate")).args(args),
        Duration::from_secs(30),
    )
    .expect("meshgate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_config_checks_clean() {
    let dir = workspace().join("config/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("examples dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            n += 1;
            let (code, out, err) = meshgate(&["check", p.to_str().expect("utf8")]);
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
            assert!(out.contains(": ok ("), "{out}");
        }
    }
    assert!(n >= 2, "expected the seed and edge examples, found {n}");
}

#[test]
fn every_broken_config_fails_with_line_and_column() {
    let dir = workspace().join("tests/broken");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("broken dir") {
        let p = e.expect("entry").path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        n += 1;
        let text = std::fs::read_to_string(&p).expect("read");
        let path = p.to_str().expect("utf8");
        let (code, out, err) = meshgate(&["check", path]);
        assert_eq!(code, 1, "{path} must be rejected: {out}{err}");
        for expect in text.lines().filter_map(|l| l.strip_prefix("# expect: ")) {
            let (pos, what) = expect.split_once(' ').unwrap_or((expect, ""));
            let head = format!("{path}:{pos}: error: ");
            let found = err
                .lines()
                .any(|l| l.starts_with(&head) && l.contains(what.trim()));
            assert!(found, "{path}: no `{head}...{what}` in:\n{err}");
        }
        assert!(
            err.contains("hint:"),
            "{path}: every error should carry a hint:\n{err}"
        );
        assert!(!err.contains("panicked"), "{path}: {err}");
    }
    assert!(n >= 10, "expected a set of broken configs, found {n}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = meshgate(&["check", "/nonexistent/meshgate.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/meshgate.toml:1:1: error: cannot read the config file"),
        "{err}"
    );
}

#[test]
fn help_explains_the_commands() {
    let (code, out, _) = meshgate(&["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "check", "Usage: meshgate"] {
        assert!(out.contains(word), "{out}");
    }
    let (code, out, _) = meshgate(&["check", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("FILE:LINE:COL"), "{out}");
    assert!(out.contains("--diff"), "{out}");
    let (code, out, _) = meshgate(&["run", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--config") && out.contains("SIGHUP"), "{out}");
}

#[test]
fn diff_shows_weight_route_and_endpoint_changes() {
    let dir = tempdir().expect("tempdir");
    let old = r#"
[[listener]]
name = "web"
address = "127.0.0.1:18080"

[[route]]
name = "catalog"
match = { path_prefix = "/products" }
service = "catalog"

[[service]]
name = "catalog"
endpoints = [
  { address = "127.0.0.1:19001", labels = { version = "v1" } },
  { address = "127.0.0.1:19002", labels = { version = "v2" } },
]
[[service.subset]]
name = "v1"
labels = { version = "v1" }
[[service.subset]]
name = "v2"
labels = { version = "v2" }
[service.split]
targets = [{ subset = "v1", weight = 95 }, { subset = "v2", weight = 5 }]
"#;
    let new = old
        .replace("weight = 95", "weight = 90")
        .replace("weight = 5 }", "weight = 10 }")
        .replace("127.0.0.1:19002", "127.0.0.1:19003")
        + "\n[[route]]\nname = \"health\"\nmatch = { path = \"/healthz\" }\nrespond = { status = 200, body = \"ok\" }\n";
    std::fs::write(dir.join("old.toml"), old).expect("write");
    std::fs::write(dir.join("new.toml"), new).expect("write");
    let (code, out, err) = meshgate(&[
        "check",
        "--diff",
        dir.join("old.toml").to_str().expect("utf8"),
        dir.join("new.toml").to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("~ service catalog"), "{out}");
    assert!(out.contains("split v1: 95% => 90%"), "{out}");
    assert!(out.contains("split v2: 5% => 10%"), "{out}");
    assert!(out.contains("endpoint 127.0.0.1:19003 added"), "{out}");
    assert!(out.contains("endpoint 127.0.0.1:19002 removed"), "{out}");
    assert!(out.contains("+ route health"), "{out}");

    let (code, out, _) = meshgate(&[
        "check",
        "--diff",
        dir.join("old.toml").to_str().expect("utf8"),
        dir.join("old.toml").to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "no changes");

    let (code, _, err) = meshgate(&[
        "check",
        "--diff",
        dir.join("old.toml").to_str().expect("utf8"),
    ]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn sidecar_refuses_bad_arguments_with_one_clear_line() {
    let dir = meshgate_tests::tempdir().expect("tempdir");
    let ca = dir.join("bundle.pem");
    std::fs::write(&ca, "not a certificate\n").expect("write");
    let ca = ca.to_str().expect("utf8");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--service", "orders", "--label", "version"],
            "is not KEY=VALUE",
        ),
        (
            &["--service", "orders", "--inbound", "0.0.0.0:15006"],
            "--advertise",
        ),
        (
            &["--service", "orders", "--inbound", "127.0.0.1:1"],
            "holds no certificate",
        ),
        (
            &["--service", "Not A Name", "--inbound", "127.0.0.1:1"],
            "service",
        ),
        (
            &["--service", "orders", "--app-idle-timeout", "soon"],
            "--app-idle-timeout soon",
        ),
        (
            &["--service", "orders", "--app-idle-timeout", "10ms"],
            "use 100ms to 24h",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--app", "127.0.0.1:9000", "--ca-file", ca];
        args.extend_from_slice(extra);
        let out = run(
            Command::new(bin("meshgate-sidecar")).args(&args),
            Duration::from_secs(10),
        )
        .expect("sidecar runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn demo_script_runs_the_appliance_and_fetches_the_status_page() {
    let port = meshgate_tests::free_port();
    let out = run(
        Command::new(workspace().join("scripts/demo.sh"))
            .env("DEMO_EXIT", "1")
            .env("DEMO_ADDR", format!("127.0.0.1:{port}"))
            .env("MESHGATE_BIN", bin("meshgate")),
        Duration::from_secs(60),
    )
    .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("over HTTP/1.1: 200 1.1"), "{stdout}");
    assert!(stdout.contains("over h2c:      200 2"), "{stdout}");
    assert!(stdout.contains("\"route\":\"status-page\""), "{stdout}");
}

#[test]
fn a_taken_listener_port_is_one_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let config = tempdir().expect("tempdir").join("meshgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"{addr}\"\n\n\
             [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nservice = \"o\"\n\n\
             [[service]]\nname = \"o\"\nendpoints = [{{ address = \"127.0.0.1:9\" }}]\n"
        ),
    )
    .expect("write config");
    let (code, out, err) = meshgate(&["run", "--config", config.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("error: listener \"web\" cannot bind {addr}")),
        "{err}"
    );
    drop(taken);
}
