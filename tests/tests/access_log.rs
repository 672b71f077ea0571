//! The access log end to end: `meshgate run` with real origins and curl,
//! the lines read from the gateway's stdout (and a sidecar's, for the
//! inbound side). JSON and the human format, the user from a verified
//! JWT, upstream durations, sampling that spares failures, and routes that
//! opt out.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meshgate_tests::mesh::{LabOptions, MeshLab, service_id};
use meshgate_tests::{Gateway, Origin, curl, free_port, metric, tempdir, wait_for};
use serde_json::{Value, json};

const ISSUER: &str = "https://login.meshgate.test/";
const AUDIENCE: &str = "api.meshgate.test";
const SECRET: &str = "access-log-test-hmac-secret-0123456789";

/// A gateway with a JWT route to a split service (all traffic to `v1`),
/// a plain route, a route with `access_log = false` and a route to a dead
/// endpoint, and `access_log_table` as `[observability.access_log]`.
fn start(access_log_table: &str) -> Result<(Gateway, SocketAddr, Origin)> {
    let origin = Origin::start("v1")?;
    let dir = tempdir()?;
    std::fs::write(dir.join("hmac.key"), SECRET)?;
    // A port nothing listens on: connections are refused.
    let dead = free_port();
    let port = free_port();
    let text = format!(
        r#"[admin]
address = "127.0.0.1:{admin}"

[[listener]]
name = "web"
address = "127.0.0.1:{port}"
protocols = ["http1", "h2c"]

[[jwt_provider]]
name = "users"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["HS256"]
secret_file = "hmac.key"

[[route]]
name = "private"
match = {{ path_prefix = "/private" }}
service = "app"
auth = {{ provider = "users" }}

[[route]]
name = "health"
match = {{ path = "/health" }}
service = "app"
access_log = false

[[route]]
name = "broken"
match = {{ path_prefix = "/broken" }}
service = "dead"

[[route]]
name = "public"
match = {{ path_prefix = "/public" }}
service = "app"

[[service]]
name = "app"
endpoints = [{{ address = "{origin}", labels = {{ version = "v1" }} }}]
[[service.subset]]
name = "v1"
labels = {{ version = "v1" }}
[service.split]
targets = [{{ subset = "v1", weight = 100 }}]

[[service]]
name = "dead"
endpoints = [{{ address = "127.0.0.1:{dead}" }}]

[observability.access_log]
{access_log_table}
"#,
        admin = free_port(),
        origin = origin.addr,
    );
    let config = dir.join("meshgate.toml");
    std::fs::write(&config, text)?;
    let edge = SocketAddr::from(([127, 0, 0, 1], port));
    let gw = Gateway::start(&config, edge)?;
    Ok((gw, edge, origin))
}

fn token(sub: &str) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

/// Waits for the first JSON line that `pick` accepts.
fn wait_line(gw: &Gateway, what: &str, pick: impl Fn(&Value) -> bool) -> Result<Value> {
    let mut found = None;
    wait_for(Duration::from_secs(10), what, || {
        found = gw.access_log().into_iter().find(|l| pick(l));
        found.is_some()
    })
    .with_context(|| {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            gw.proc.stdout(),
            gw.proc.stderr()
        )
    })?;
    found.context(what.to_owned())
}

/// Milliseconds of a duration key, which must be a number.
fn ms(line: &Value, key: &str) -> f64 {
    line[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {line}"))
}

#[test]
fn json_lines_carry_the_request_and_the_proxy_decisions() -> Result<()> {
    let (gw, edge, origin) = start("format = \"json\"\nuser_claim = \"sub\"")?;
    let bearer = format!("authorization: Bearer {}", token("alice")?);
    let body = "y".repeat(42);
    let r = curl(&[
        "-H",
        &bearer,
        "--data-binary",
        &body,
        &format!("http://{edge}/private/items?q=1"),
    ])?;
    assert_eq!(r.status, 200, "{}", r.body);

    let l = wait_line(&gw, "the /private line", |l| l["route"] == "private")?;
    let ts = l["timestamp"].as_str().context("timestamp")?;
    // RFC 3339 in UTC with milliseconds: 2026-11-24T16:27:35.123Z
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    assert_eq!(l["listener"], "web", "{l}");
    assert_eq!(l["proto"], "http1", "{l}");
    assert_eq!(l["method"], "POST", "{l}");
    assert_eq!(l["authority"], edge.to_string(), "{l}");
    assert_eq!(l["path"], "/private/items", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert_eq!(l["reason"], Value::Null, "{l}");
    assert_eq!(l["service"], "app", "{l}");
    assert_eq!(l["subset"], "v1", "{l}");
    assert_eq!(l["upstream"], origin.addr.to_string(), "{l}");
    assert_eq!(l["user"], "alice", "{l}");
    assert_eq!(l["bytes_in"], 42, "{l}");
    assert_eq!(l["bytes_out"], r.body.len(), "{l}");
    assert_eq!(l["retries"], 0, "{l}");
    assert_eq!(l["peer_identity"], Value::Null, "not a mesh service: {l}");
    assert!(
        l["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
    assert!(l.get("trace_id").is_some(), "the key is always there: {l}");
    let (header, upstream, total) = (
        ms(&l, "upstream_header_ms"),
        ms(&l, "upstream_ms"),
        ms(&l, "duration_ms"),
    );
    assert!(
        0.0 < header && header <= upstream && upstream <= total,
        "{header} <= {upstream} <= {total}"
    );

    // Without a token: the proxy's own answer, with its reason and no user.
    let r = curl(&[&format!("http://{edge}/private/x")])?;
    assert_eq!(r.status, 401);
    let l = wait_line(&gw, "the 401 line", |l| l["status"] == 401)?;
    assert_eq!(l["reason"], "unauthenticated", "{l}");
    assert_eq!(l["user"], Value::Null, "{l}");
    assert_eq!(l["upstream_ms"], Value::Null, "nothing went upstream: {l}");

    // A refused connection: 502 with the endpoint tried and the error.
    let r = curl(&[&format!("http://{edge}/broken")])?;
    assert_eq!(r.status, 502);
    let l = wait_line(&gw, "the 502 line", |l| l["route"] == "broken")?;
    assert_eq!(l["reason"], "upstream-connect-failure", "{l}");
    assert!(l["upstream"].is_string(), "{l}");
    assert!(l["error"].is_string(), "{l}");

    // HTTP/2 says so.
    let r = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{edge}/public/h2"),
    ])?;
    assert_eq!(r.status, 200);
    let l = wait_line(&gw, "the h2 line", |l| l["path"] == "/public/h2")?;
    assert_eq!(l["proto"], "http2", "{l}");
    assert_eq!(l["user"], Value::Null, "no auth on this route: {l}");
    Ok(())
}

#[test]
fn the_user_is_logged_only_when_configured() -> Result<()> {
    let (gw, edge, _origin) = start("format = \"json\"")?;
    let bearer = format!("authorization: Bearer {}", token("bob")?);
    assert_eq!(
        curl(&["-H", &bearer, &format!("http://{edge}/private/a")])?.status,
        200
    );
    let l = wait_line(&gw, "the /private line", |l| l["route"] == "private")?;
    assert_eq!(l["user"], Value::Null, "{l}");
    assert!(!gw.proc.stdout().contains("bob"));
    Ok(())
}

#[test]
fn the_human_format_is_one_readable_line() -> Result<()> {
    let (gw, edge, origin) = start("format = \"combined\"\nuser_claim = \"sub\"")?;
    let bearer = format!("authorization: Bearer {}", token("carol")?);
    let r = curl(&["-H", &bearer, &format!("http://{edge}/private/page")])?;
    assert_eq!(r.status, 200);
    // An encoded path is logged as sent (escaping is unit-tested).
    let r = curl(&[&format!("http://{edge}/public/a%22b%0Ac")])?;
    assert_eq!(r.status, 200);
    let mut lines = Vec::new();
    wait_for(Duration::from_secs(10), "two access-log lines", || {
        lines = gw
            .proc
            .stdout()
            .lines()
            .filter(|l| l.contains(" listener=web "))
            .map(str::to_owned)
            .collect();
        lines.len() >= 2
    })
    .with_context(|| gw.proc.stdout())?;
    let first = &lines[0];
    assert!(first.starts_with("127.0.0.1:"), "{first}");
    assert!(first.contains(" - carol ["), "{first}");
    assert!(
        first.contains(&format!("\"GET {edge}/private/page HTTP/1.1\" 200 0 ")),
        "{first}"
    );
    for part in [
        " route=private ",
        " service=app ",
        " subset=v1 ",
        &format!(" upstream={} ", origin.addr),
        " reason=- ",
        " retries=0 ",
    ] {
        assert!(first.contains(part), "{part:?} in {first}");
    }
    assert!(serde_json::from_str::<Value>(first).is_err(), "not JSON");
    let second = &lines[1];
    assert!(
        second.contains("/public/a%22b%0Ac HTTP/1.1\" 200"),
        "{second}"
    );
    Ok(())
}

#[test]
fn sampling_spares_failures_and_routes_can_opt_out() -> Result<()> {
    let (gw, edge, _origin) = start("format = \"json\"\nsample_percent = 0")?;
    let admin = gw.admin_address().context("admin")?;
    let n = 5;
    for _ in 0..n {
        assert_eq!(curl(&[&format!("http://{edge}/public/ok")])?.status, 200);
        assert_eq!(curl(&[&format!("http://{edge}/health")])?.status, 200);
    }
    // Failures are logged whatever the sampling...
    assert_eq!(curl(&[&format!("http://{edge}/broken")])?.status, 502);
    assert_eq!(curl(&[&format!("http://{edge}/nowhere")])?.status, 404);
    wait_line(&gw, "the 502 line", |l| l["route"] == "broken")?;
    wait_line(&gw, "the 404 line", |l| l["reason"] == "no-route")?;
    // ...and the successes were seen (counted in the same phase that
    // logs), but not logged.
    wait_for(Duration::from_secs(10), "all requests counted", || {
        curl(&[&format!("http://{admin}/metrics")]).is_ok_and(|m| {
            metric(&m.body, "meshgate_requests_total", &["route=\"public\""]) == Some(f64::from(n))
                && metric(&m.body, "meshgate_requests_total", &["route=\"health\""])
                    == Some(f64::from(n))
        })
    })?;
    let log = gw.access_log();
    assert!(
        !log.iter().any(|l| l["route"] == "public"),
        "sampled out: {log:?}"
    );
    assert!(
        !log.iter().any(|l| l["route"] == "health"),
        "route opted out: {log:?}"
    );
    assert_eq!(log.len(), 2, "{log:?}");
    Ok(())
}

#[test]
fn inbound_and_outbound_lines_name_the_mesh_peer() -> Result<()> {
    let mut lab = MeshLab::start(LabOptions::default())?;
    let i = lab.add("product-catalog", "v1", None)?;
    lab.wait_serving("/catalog/items", &["v1"])?;
    // The lab's split sends a share to v2, which has no instance here
    // (503 no-healthy-endpoint): ask until v1 answers.
    wait_for(Duration::from_secs(10), "a 200 from v1", || {
        curl(&[&format!("http://{}/catalog/items", lab.edge)]).is_ok_and(|r| r.status == 200)
    })?;

    let out = wait_line(&lab.appliance, "the appliance's line", |l| {
        l["route"] == "catalog" && l["status"] == 200
    })?;
    assert_eq!(out["peer_identity"], service_id("product-catalog"), "{out}");
    let sidecar = &lab.instances[i].sidecar;
    let mut line = Value::Null;
    wait_for(
        Duration::from_secs(10),
        "the sidecar's inbound line",
        || {
            line = sidecar
                .stdout()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["listener"] == "inbound" && l["status"] == 200)
                .unwrap_or(Value::Null);
            !line.is_null()
        },
    )
    .with_context(|| sidecar.stdout())?;
    assert!(
        line["peer_identity"]
            .as_str()
            .is_some_and(|p| p.ends_with("/gateway")),
        "{line}"
    );
    assert_eq!(line["service"], "product-catalog", "{line}");
    assert_eq!(
        line["upstream"],
        lab.instances[i].app_addr.to_string(),
        "{line}"
    );
    assert!(line["upstream_ms"].as_f64().is_some(), "{line}");
    Ok(())
}
