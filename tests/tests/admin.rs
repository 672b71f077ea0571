//! The admin API end to end: `meshgate run` with `[admin]` on a free
//! loopback port, curl as the client. Every endpoint, the token rules,
//! config changes through `PUT /config`, the log level, and metric values
//! after a known amount of traffic.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use meshgate_tests::mesh::{LabOptions, MeshLab, service_id};
use meshgate_tests::{
    CurlResponse, Gateway, Origin, Proc, PyServer, curl, free_port, metric, tempdir, wait_for,
};
use serde_json::Value;

const TOKEN: &str = "admin-token-0123456789abcdef";

struct Setup {
    gw: Gateway,
    edge: SocketAddr,
    admin: SocketAddr,
    origin: Origin,
    _v2: Origin,
}

fn config_text(
    port: u16,
    admin: u16,
    token: Option<&str>,
    origins: [SocketAddr; 2],
    hello: &str,
) -> String {
    let [origin, v2] = origins;
    let token = token.map_or(String::new(), |t| format!("token = \"{t}\""));
    format!(
        r#"[admin]
address = "127.0.0.1:{admin}"
{token}

[[listener]]
name = "web"
address = "127.0.0.1:{port}"
protocols = ["http1", "h2c"]

[[route]]
name = "hello"
match = {{ path = "/hello" }}
respond = {{ status = 200, body = "{hello}" }}

[[route]]
name = "echo"
match = {{ path_prefix = "/echo" }}
service = "backend"

[[service]]
name = "backend"
endpoints = [
  {{ address = "{origin}", labels = {{ version = "v1" }} }},
  {{ address = "{v2}", labels = {{ version = "v2" }} }},
]
[[service.subset]]
name = "v1"
labels = {{ version = "v1" }}
[[service.subset]]
name = "v2"
labels = {{ version = "v2" }}
[service.split]
targets = [{{ subset = "v1", weight = 90 }}, {{ subset = "v2", weight = 10 }}]
"#
    )
}

fn setup(token: Option<&str>) -> Result<Setup> {
    let origin = Origin::start("v1")?;
    let v2 = Origin::start("v2")?;
    let port = free_port();
    let admin_port = free_port();
    let config = tempdir()?.join("meshgate.toml");
    std::fs::write(
        &config,
        config_text(port, admin_port, token, [origin.addr, v2.addr], "hello v1"),
    )?;
    let edge = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let gw = Gateway::start(&config, edge)?;
    meshgate_tests::wait_for_port(admin)?;
    Ok(Setup {
        gw,
        edge,
        admin,
        origin,
        _v2: v2,
    })
}

fn get(admin: SocketAddr, path: &str) -> Result<CurlResponse> {
    curl(&[&format!("http://{admin}{path}")])
}

fn json(r: &CurlResponse) -> Result<Value> {
    serde_json::from_str(&r.body).with_context(|| format!("not JSON: {}", r.body))
}

/// `PUT path` with `body`, optionally with the bearer token.
fn put(admin: SocketAddr, path: &str, body: &str, token: Option<&str>) -> Result<CurlResponse> {
    send(admin, "PUT", path, body, token)
}

/// `METHOD path` with `body`, optionally with the bearer token.
fn send(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<CurlResponse> {
    let file = tempdir()?.join("body");
    std::fs::write(&file, body)?;
    let data = format!("@{}", file.display());
    let auth = token.map(|t| format!("authorization: Bearer {t}"));
    let url = format!("http://{admin}{path}");
    let mut args = vec!["-X", method, "--data-binary", data.as_str()];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    args.push(&url);
    curl(&args)
}

#[test]
fn read_endpoints_answer_json() -> Result<()> {
    let s = setup(Some(TOKEN))?;
    for path in ["/healthz", "/readyz", "/ready"] {
        let r = get(s.admin, path)?;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        json(&r)?;
    }

    // Reads on loopback need no token, even with one configured.
    let r = get(s.admin, "/config")?;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = json(&r)?;
    assert_eq!(c["version"], 1);
    assert!(c["digest"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
    assert!(
        c["origin"]
            .as_str()
            .is_some_and(|o| o.ends_with("meshgate.toml")),
        "{c}"
    );
    assert!(
        c["loaded_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{c}"
    );
    let text = c["text"].as_str().context("text")?;
    assert!(!text.contains(TOKEN), "the token leaked: {text}");
    assert!(text.contains("token = \"<redacted>\""), "{text}");
    assert!(text.contains("name = \"echo\""), "{text}");

    let r = get(s.admin, "/routes")?;
    assert_eq!(r.status, 200);
    let routes = json(&r)?;
    let names: Vec<&str> = routes["routes"]
        .as_array()
        .context("routes")?
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["hello", "echo"], "{routes}");
    assert_eq!(routes["routes"][1]["listeners"][0], "web", "{routes}");

    let r = get(s.admin, "/services")?;
    assert_eq!(r.status, 200);
    let services = json(&r)?;
    let backend = &services["services"][0];
    assert_eq!(backend["name"], "backend", "{services}");
    let ep = &backend["endpoints"][0];
    assert_eq!(ep["address"], s.origin.addr.to_string(), "{services}");
    assert_eq!(ep["labels"]["version"], "v1", "{services}");
    assert_eq!(ep["subsets"], serde_json::json!(["v1"]), "{services}");
    assert_eq!(ep["health"]["state"], "healthy", "{services}");
    let targets = &backend["split"]["targets"];
    assert_eq!(targets[0]["subset"], "v1", "{services}");
    assert_eq!(targets[0]["weight"], 90, "{services}");
    assert_eq!(targets[1]["percent"], 10.0, "{services}");

    // No mesh on this gateway: no identity.
    let r = get(s.admin, "/certificates")?;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)?["mesh"], Value::Null);

    let r = get(s.admin, "/nope")?;
    assert_eq!(r.status, 404);
    let r = curl(&["-X", "DELETE", &format!("http://{}/config", s.admin)])?;
    assert_eq!(r.status, 401, "a write without the token");
    Ok(())
}

#[test]
fn put_config_applies_good_text_and_rejects_bad_text() -> Result<()> {
    let s = setup(Some(TOKEN))?;
    let edge = format!("http://{}/hello", s.edge);
    assert_eq!(curl(&[&edge])?.body, "hello v1");
    let port = s.edge.port();
    let admin_port = s.admin.port();
    let good = config_text(
        port,
        admin_port,
        Some(TOKEN),
        [s.origin.addr, s._v2.addr],
        "hello v2",
    ) + "\n[[route]]\nname = \"extra\"\nmatch = { path = \"/extra\" }\nrespond = { status = 204 }\n";

    // No token, or a wrong one: 401, nothing changes.
    let r = put(s.admin, "/config", &good, None)?;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("www-authenticate").is_some());
    let r = put(
        s.admin,
        "/config",
        &good,
        Some("wrong-token-0123456789abcdef"),
    )?;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(curl(&[&edge])?.body, "hello v1");

    // A bad config: 400 with the same diagnostics as `meshgate check`,
    // and the running config keeps serving.
    let bad = good.replace("service = \"backend\"", "service = \"missing\"");
    let r = put(s.admin, "/config", &bad, Some(TOKEN))?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("<PUT /config>:"), "{}", r.body);
    let head = r.body.lines().next().unwrap_or("");
    let mut parts = head.splitn(4, ':');
    let _file = parts.next();
    let line: u32 = parts
        .next()
        .unwrap_or("")
        .parse()
        .context(head.to_owned())?;
    let col: u32 = parts
        .next()
        .unwrap_or("")
        .parse()
        .context(head.to_owned())?;
    assert!(line > 1 && col >= 1, "{head}");
    assert!(r.body.contains("missing"), "{}", r.body);
    assert!(
        r.body.contains("the configuration was not applied"),
        "{}",
        r.body
    );
    assert_eq!(curl(&[&edge])?.body, "hello v1");
    assert_eq!(json(&get(s.admin, "/config")?)?["version"], 1);

    // A good one: 200, a new version and the diff; traffic follows.
    let r = put(s.admin, "/config", &good, Some(TOKEN))?;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = json(&r)?;
    assert_eq!(j["outcome"], "applied", "{j}");
    assert_eq!(j["version"], 2, "{j}");
    assert!(
        j["diff"].as_str().is_some_and(|d| d.contains("hello")),
        "{j}"
    );
    assert_eq!(curl(&[&edge])?.body, "hello v2");
    let c = json(&get(s.admin, "/config")?)?;
    assert_eq!(c["version"], 2);
    assert_eq!(c["origin"], "<PUT /config>");
    assert!(!c["text"].as_str().unwrap_or("").contains(TOKEN));

    // The same text again changes nothing.
    let j = json(&put(s.admin, "/config", &good, Some(TOKEN))?)?;
    assert_eq!(j["outcome"], "unchanged", "{j}");
    assert_eq!(j["version"], 2, "{j}");

    let m = get(s.admin, "/metrics")?.body;
    assert_eq!(metric(&m, "meshgate_config_version", &[]), Some(2.0), "{m}");
    for (outcome, n) in [("applied", 1.0), ("rejected", 1.0), ("unchanged", 1.0)] {
        assert_eq!(
            metric(
                &m,
                "meshgate_config_reloads_total",
                &[&format!("outcome=\"{outcome}\"")]
            ),
            Some(n),
            "{m}"
        );
    }
    Ok(())
}

#[test]
fn writes_are_refused_without_a_configured_token() -> Result<()> {
    let s = setup(None)?;
    for path in ["/config", "/log-level"] {
        let r = put(s.admin, path, "debug", None)?;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        let j = json(&r)?;
        assert!(
            j["error"].as_str().is_some_and(|e| e.contains("token")),
            "{j}"
        );
    }
    // Reads still work.
    assert_eq!(get(s.admin, "/config")?.status, 200);
    Ok(())
}

#[test]
fn log_level_changes_at_run_time() -> Result<()> {
    let s = setup(Some(TOKEN))?;
    let edge = format!("http://{}/hello", s.edge);
    curl(&[&edge])?;
    assert!(
        !s.gw.proc.stderr().contains("request finished"),
        "debug is off at info"
    );
    let r = put(s.admin, "/log-level", "debug", None)?;
    assert_eq!(r.status, 401);
    let r = put(s.admin, "/log-level", "not a [filter", Some(TOKEN))?;
    assert_eq!(r.status, 400, "{}", r.body);

    let r = put(s.admin, "/log-level", "meshgate=debug,info", Some(TOKEN))?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)?["log_level"], "meshgate=debug,info");
    curl(&[&edge])?;
    wait_for(Duration::from_secs(5), "a debug line on stderr", || {
        s.gw.proc.stderr().contains("request finished")
    })?;

    let r = put(s.admin, "/log-level", "warn", Some(TOKEN))?;
    assert_eq!(r.status, 200, "{}", r.body);
    let before = s.gw.proc.stderr().matches("request finished").count();
    curl(&[&edge])?;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        s.gw.proc.stderr().matches("request finished").count(),
        before,
        "debug is off again"
    );
    Ok(())
}

#[test]
fn metrics_count_known_traffic() -> Result<()> {
    let s = setup(None)?;
    let body = "x".repeat(100);
    let file = tempdir()?.join("body");
    std::fs::write(&file, &body)?;
    let data = format!("@{}", file.display());
    let url = format!("http://{}/echo/a", s.edge);
    let n = 7;
    let mut sent = 0usize;
    for _ in 0..n {
        let r = curl(&["--data-binary", &data, &url])?;
        assert_eq!(r.status, 200, "{}", r.body);
        sent += r.body.len();
    }
    // And two over h2c.
    for _ in 0..2 {
        let r = curl(&["--http2-prior-knowledge", &url])?;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.version, "2");
        sent += r.body.len();
    }
    let m = get(s.admin, "/metrics")?.body;
    let total = |proto: &str| {
        sum_of(
            &m,
            "meshgate_requests_total",
            &[
                "route=\"echo\"",
                "status=\"200\"",
                &format!("protocol=\"{proto}\""),
                "direction=\"outbound\"",
                "listener=\"web\"",
            ],
        )
    };
    assert_eq!(total("http1"), Some(f64::from(n)), "{m}");
    assert_eq!(total("http2"), Some(2.0), "{m}");
    assert_eq!(
        metric(&m, "meshgate_requests_in_flight", &["listener=\"web\""]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "meshgate_request_bytes_total", &["route=\"echo\""]),
        Some(f64::from(n) * 100.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "meshgate_response_bytes_total", &["route=\"echo\""]),
        Some(sent as f64),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "meshgate_request_duration_seconds_count",
            &["route=\"echo\""]
        ),
        Some(f64::from(n) + 2.0),
        "{m}"
    );
    assert_eq!(metric(&m, "meshgate_config_version", &[]), Some(1.0), "{m}");
    // By subset: the split sent each request to v1 or v2.
    let by_subset = |subset: &str| {
        sum_of(
            &m,
            "meshgate_requests_total",
            &["route=\"echo\"", &format!("subset=\"{subset}\"")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(by_subset("v1") + by_subset("v2"), f64::from(n) + 2.0, "{m}");
    // Every try used one upstream connection, new or from the pool; the
    // keep-alive origins let later requests reuse them.
    let conns = |reused: &str| {
        metric(
            &m,
            "meshgate_upstream_connections_total",
            &["service=\"backend\"", &format!("reused=\"{reused}\"")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(conns("true") + conns("false"), f64::from(n) + 2.0, "{m}");
    assert!(conns("false") >= 1.0 && conns("true") >= 1.0, "{m}");
    // Both endpoints healthy, one series per state.
    for (state, want) in [("healthy", 1.0), ("half_open", 0.0), ("ejected", 0.0)] {
        assert_eq!(
            metric(
                &m,
                "meshgate_endpoint_state",
                &[
                    &format!("endpoint=\"{}\"", s.origin.addr),
                    &format!("state=\"{state}\""),
                ]
            ),
            Some(want),
            "{m}"
        );
    }
    Ok(())
}

#[test]
fn mesh_identities_show_in_certificates() -> Result<()> {
    let mut lab = MeshLab::start(LabOptions::default())?;
    let i = lab.add("product-catalog", "v1", None)?;
    let sidecar = lab.instances[i].admin;

    let certs = |admin: SocketAddr| -> Result<Value> {
        let r = get(admin, "/certificates")?;
        assert_eq!(r.status, 200, "{}", r.body);
        json(&r)
    };
    let c = certs(lab.admin)?;
    let mesh = &c["mesh"];
    assert!(
        mesh["identity"]
            .as_str()
            .is_some_and(|id| id.ends_with("/gateway")),
        "{c}"
    );
    assert!(mesh["trust_bundle_roots"].as_u64() >= Some(1), "{c}");
    assert!(mesh["not_before"].as_str().is_some(), "{c}");
    assert!(mesh["not_after_unix"].as_u64().is_some(), "{c}");

    wait_for(Duration::from_secs(20), "the sidecar's identity", || {
        certs(sidecar).is_ok_and(|c| c["mesh"]["identity"] == service_id("product-catalog"))
    })?;
    for path in ["/healthz", "/readyz", "/services", "/routes", "/config"] {
        let r = get(sidecar, path)?;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        json(&r)?;
    }
    // Without --admin-token-file a sidecar's admin API cannot be
    // written to.
    let r = put(sidecar, "/config", "", None)?;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = send(sidecar, "POST", "/drain", "", None)?;
    assert_eq!(r.status, 403, "{}", r.body);
    // The appliance knows the instance.
    let svc = json(&get(lab.admin, "/services")?)?;
    let catalog = svc["services"]
        .as_array()
        .context("services")?
        .iter()
        .find(|s| s["name"] == "product-catalog")
        .cloned()
        .context("product-catalog")?;
    assert_eq!(catalog["discovery"], "mesh", "{catalog}");
    Ok(())
}

/// A response object of the OpenAPI file, with `$ref` followed.
fn documented<'a>(spec: &'a serde_yaml::Value, r: &'a serde_yaml::Value) -> &'a serde_yaml::Value {
    match r.get("$ref").and_then(serde_yaml::Value::as_str) {
        Some(reference) => reference
            .trim_start_matches("#/")
            .split('/')
            .fold(spec, |v, key| &v[key]),
        None => r,
    }
}

#[test]
fn every_documented_path_answers_as_documented() -> Result<()> {
    let file = meshgate_tests::workspace().join("docs/admin-openapi.yaml");
    let spec: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file)?)?;
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let s = setup(Some(TOKEN))?;
    let config = std::fs::read_to_string(s.gw.config.as_ref().context("config")?)?;
    let paths = spec["paths"].as_mapping().context("paths")?;
    let mut ops = Vec::new();
    for (path, item) in paths {
        let path = path.as_str().context("path")?;
        // Path parameters take their documented example.
        let mut concrete = path.to_owned();
        for p in item["parameters"].as_sequence().into_iter().flatten() {
            let name = p["name"].as_str().context("parameter name")?;
            let example = p["example"].as_str().context("a parameter example")?;
            concrete = concrete.replace(&format!("{{{name}}}"), example);
        }
        for (method, op) in item.as_mapping().context("operations")? {
            let method = method.as_str().context("method")?;
            if method != "parameters" {
                ops.push((method.to_owned(), path.to_owned(), concrete.clone(), op));
            }
        }
    }
    // Draining turns /readyz unready for good: last.
    ops.sort_by_key(|(m, p, _, _)| m == "post" && p == "/drain");
    let mut seen = Vec::new();
    for (method, path, url_path, op) in ops {
        seen.push(format!("{method} {path}"));
        let r = if method == "get" {
            get(s.admin, &url_path)?
        } else {
            let body = if path == "/config" {
                config.clone()
            } else {
                op["requestBody"]["content"]
                    .as_mapping()
                    .and_then(|c| c.values().next())
                    .map_or(Some(""), |c| c["example"].as_str())
                    .context("a request example")?
                    .to_owned()
            };
            // Writes without the token are refused as documented.
            let refused = send(s.admin, &method.to_uppercase(), &url_path, &body, None)?;
            assert_eq!(refused.status, 401, "{method} {path}");
            let doc = documented(&spec, &op["responses"]["401"]);
            assert!(
                doc["content"]
                    .get(refused.header("content-type").unwrap_or(""))
                    .is_some(),
                "{method} {path}: 401 {:?}",
                refused.header("content-type")
            );
            send(
                s.admin,
                &method.to_uppercase(),
                &url_path,
                &body,
                Some(TOKEN),
            )?
        };
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        let doc = documented(&spec, &op["responses"][r.status.to_string().as_str()]);
        assert!(
            !doc.is_null(),
            "{method} {path}: status {} is not documented",
            r.status
        );
        let content_type = r.header("content-type").unwrap_or("");
        assert!(
            doc["content"].get(content_type).is_some(),
            "{method} {path}: content type {content_type:?} is not documented"
        );
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "delete /services/{service}/split",
            "get /certificates",
            "get /config",
            "get /healthz",
            "get /metrics",
            "get /ready",
            "get /readyz",
            "get /routes",
            "get /services",
            "post /drain",
            "put /config",
            "put /log-level",
            "put /services/{service}/split",
        ],
        "every endpoint is documented"
    );
    Ok(())
}

/// The sum of every sample of family `name` whose labels include all of
/// `labels`; `None` when there is none.
fn sum_of(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Runs a Prometheus query against `prom`; the result vector.
fn prom_query(prom: SocketAddr, query: &str) -> Result<Vec<Value>> {
    let q = format!("query={query}");
    let r = curl(&[
        "-G",
        "--data-urlencode",
        &q,
        &format!("http://{prom}/api/v1/query"),
    ])?;
    let j = json(&r)?;
    Ok(j["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Starts a real Prometheus (`scripts/prereqs.sh test` installs it)
/// scraping `targets` every second; returns it and its address.
fn start_prometheus(targets: &[SocketAddr]) -> Result<(meshgate_tests::Proc, SocketAddr)> {
    let dir = tempdir()?;
    let prom = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n  - job_name: meshgate\n    static_configs:\n\
             \x20     - targets: [{}]\n",
            list.join(", ")
        ),
    )?;
    let mut cmd = std::process::Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address={prom}"));
    let proc = meshgate_tests::Proc::spawn(cmd)
        .context("prometheus is not installed: run scripts/prereqs.sh test")?;
    meshgate_tests::wait_for_port(prom)
        .with_context(|| format!("prometheus did not start:\n{}", proc.stderr()))?;
    Ok((proc, prom))
}

/// A real Prometheus server (`scripts/prereqs.sh test` installs it)
/// scrapes the appliance and a sidecar; its query API sees the series.
#[test]
fn prometheus_scrapes_the_appliance_and_a_sidecar() -> Result<()> {
    let mut lab = MeshLab::start(LabOptions::default())?;
    let i = lab.add("product-catalog", "v1", None)?;
    let sidecar = lab.instances[i].admin;
    lab.wait_serving("/catalog/items", &["v1"])?;

    let (proc, prom) = start_prometheus(&[lab.admin, sidecar])?;

    let both_up = || {
        prom_query(prom, "up == 1").is_ok_and(|r| r.len() == 2)
            && prom_query(prom, "meshgate_requests_total{direction=\"inbound\"}")
                .is_ok_and(|r| !r.is_empty())
    };
    wait_for(Duration::from_secs(20), "both targets scraped", both_up)
        .with_context(|| format!("prometheus:\n{}", proc.stderr()))?;

    let inbound = prom_query(prom, "meshgate_requests_total{direction=\"inbound\"}")?;
    assert!(
        inbound
            .iter()
            .all(|s| s["metric"]["instance"] == sidecar.to_string()),
        "{inbound:?}"
    );
    // The inbound side names its callers: here the gateway.
    assert!(
        inbound.iter().all(|s| s["metric"]["source_identity"]
            .as_str()
            .is_some_and(|id| id.ends_with("/gateway"))),
        "{inbound:?}"
    );
    let outbound = prom_query(
        prom,
        "sum by (instance) (meshgate_requests_total{route=\"catalog\",direction=\"outbound\"})",
    )?;
    assert_eq!(outbound.len(), 1, "{outbound:?}");
    assert_eq!(outbound[0]["metric"]["instance"], lab.admin.to_string());
    let endpoints = prom_query(prom, "meshgate_mesh_endpoints{service=\"product-catalog\"}")?;
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!(endpoints[0]["value"][1], "1", "{endpoints:?}");
    Ok(())
}

#[test]
fn readyz_turns_unready_while_draining() -> Result<()> {
    let o = meshgate_tests::scripted::scripted("slow");
    let (gw, edge) = Gateway::start_web(
        "",
        &format!(
            "[[route]]\nname = \"r\"\nservice = \"s\"\n\n[[service]]\nname = \"s\"\n\
             endpoints = [{{ address = \"{}\" }}]\n",
            o.addr
        ),
    )?;
    let admin = gw.admin_address().context("admin")?;
    meshgate_tests::wait_for_port(admin)?;
    let r = get(admin, "/readyz")?;
    assert_eq!(r.status, 200, "{}", r.body);

    let url = format!("http://{edge}/slow/1500");
    let slow = std::thread::spawn(move || curl(&[&url]));
    wait_for(Duration::from_secs(5), "the slow request upstream", || {
        curl(&[&format!("http://{}/count/slow-started", o.addr)]).is_ok_and(|r| r.body == "1")
    })?;
    gw.proc.signal("TERM")?;
    wait_for(Duration::from_secs(5), "readyz says draining", || {
        get(admin, "/readyz").is_ok_and(|r| r.status == 503 && r.body.contains("draining"))
    })?;
    assert_eq!(get(admin, "/healthz")?.status, 200, "still alive");
    let r = slow
        .join()
        .map_err(|_| anyhow::anyhow!("client thread"))??;
    assert_eq!(r.status, 200, "the in-flight request finishes");
    Ok(())
}

#[test]
fn split_weights_change_at_run_time_and_stay_over_reloads() -> Result<()> {
    let s = setup(Some(TOKEN))?;
    let url = format!("http://{}/echo/x", s.edge);
    let split = |body: &str| put(s.admin, "/services/backend/split", body, Some(TOKEN));
    let targets = |v1: u32, v2: u32| {
        format!(
            r#"{{"targets": [{{"subset": "v1", "weight": {v1}}}, {{"subset": "v2", "weight": {v2}}}]}}"#
        )
    };
    let version = || -> Result<Value> { Ok(json(&get(s.admin, "/config")?)?["version"].clone()) };

    // Refused like a bad config, and nothing changes.
    let r = put(s.admin, "/services/backend/split", &targets(0, 100), None)?;
    assert_eq!(r.status, 401, "{}", r.body);
    for (body, status, says) in [
        (targets(50, 40), 400, "add up to 90, not 100"),
        (
            r#"{"targets": [{"subset": "v3", "weight": 100}]}"#.to_owned(),
            400,
            "no subset \"v3\"",
        ),
        (
            r#"{"targets": [{"subset": "v1", "weight": 50}, {"subset": "v1", "weight": 50}]}"#
                .to_owned(),
            400,
            "twice",
        ),
        (r#"{"targets": []}"#.to_owned(), 400, "at least one target"),
        ("v1=100".to_owned(), 400, "not a split"),
    ] {
        let r = split(&body)?;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            json(&r)?["error"]
                .as_str()
                .is_some_and(|e| e.contains(says)),
            "{body}: {}",
            r.body
        );
    }
    let r = put(
        s.admin,
        "/services/nope/split",
        &targets(0, 100),
        Some(TOKEN),
    )?;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(version()?, 1);

    // All traffic to v2, at once, as a new version.
    let r = split(&targets(0, 100))?;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = json(&r)?;
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(j["split"]["override"], true, "{j}");
    assert_eq!(j["split"]["targets"][1]["weight"], 100, "{j}");
    assert_eq!(j["split"]["configured_targets"][0]["weight"], 90, "{j}");
    let only_v2 = || -> Result<bool> {
        for _ in 0..20 {
            let r = curl(&[&url])?;
            if r.status != 200 || r.header("x-origin") != Some("v2") {
                return Ok(false);
            }
        }
        Ok(true)
    };
    assert!(only_v2()?, "every request goes to v2");
    let services = json(&get(s.admin, "/services")?)?;
    assert_eq!(
        services["services"][0]["split"]["override"], true,
        "{services}"
    );

    // A file reload keeps the override.
    let file = s.gw.config.clone().context("config file")?;
    let mut text = std::fs::read_to_string(&file)?;
    text.push_str("\n[[route]]\nname = \"extra\"\nmatch = { path = \"/extra\" }\nrespond = { status = 204 }\n");
    std::fs::write(&file, text)?;
    wait_for(Duration::from_secs(10), "the file reload", || {
        curl(&[&format!("http://{}/extra", s.edge)]).is_ok_and(|r| r.status == 204)
    })?;
    let services = json(&get(s.admin, "/services")?)?;
    assert_eq!(
        services["services"][0]["split"]["override"], true,
        "{services}"
    );
    assert!(only_v2()?, "still every request to v2 after the reload");

    // DELETE: the file's weights again.
    let r = send(
        s.admin,
        "DELETE",
        "/services/backend/split",
        "",
        Some(TOKEN),
    )?;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = json(&r)?;
    assert_eq!(j["split"]["override"], false, "{j}");
    assert_eq!(j["split"]["targets"][0]["weight"], 90, "{j}");
    let r = send(
        s.admin,
        "DELETE",
        "/services/backend/split",
        "",
        Some(TOKEN),
    )?;
    assert_eq!(r.status, 404, "{}", r.body);
    let m = get(s.admin, "/metrics")?.body;
    assert!(
        metric(
            &m,
            "meshgate_config_reloads_total",
            &["outcome=\"applied\""]
        ) >= Some(3.0),
        "{m}"
    );
    Ok(())
}

/// `curl URL URL` on one keep-alive connection where possible: each
/// transfer's status and how many new connections it opened.
fn two_requests(url: &str) -> Result<String> {
    let out = meshgate_tests::run(
        std::process::Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            url,
            url,
        ]),
        Duration::from_secs(15),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn drain_closes_keep_alive_connections_and_keeps_serving() -> Result<()> {
    let mut s = setup(Some(TOKEN))?;
    let url = format!("http://{}/hello", s.edge);
    assert_eq!(
        two_requests(&url)?,
        "200 1\n200 0\n",
        "one connection, reused"
    );
    assert_eq!(curl(&[&url])?.header("connection"), Some("keep-alive"));
    // A keep-alive connection left idle after one request.
    let mut idle = std::net::TcpStream::connect(s.edge)?;
    idle.set_read_timeout(Some(Duration::from_secs(10)))?;
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf)?;
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let r = send(s.admin, "POST", "/drain", "", None)?;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = send(s.admin, "POST", "/drain", "", Some(TOKEN))?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)?["status"], "draining");
    let r = get(s.admin, "/readyz")?;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(json(&r)?["status"], "draining");
    // The idle connection is closed at once (its idle timeout is 60 s).
    let from = std::time::Instant::now();
    let n = idle
        .read(&mut buf)
        .context("the idle connection was not closed")?;
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(
        from.elapsed() < Duration::from_secs(8),
        "{:?}",
        from.elapsed()
    );

    // Still served, but every response closes its connection.
    let r = curl(&[&url])?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    assert_eq!(
        two_requests(&url)?,
        "200 1\n200 1\n",
        "a new connection each"
    );
    let r = curl(&[&format!("http://{}/echo/after-drain", s.edge)])?;
    assert_eq!(r.status, 200, "proxied too");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(s.gw.proc.running(), "draining does not stop the process");
    // Asking again is harmless.
    assert_eq!(
        send(s.admin, "POST", "/drain", "", Some(TOKEN))?.status,
        200
    );
    Ok(())
}

/// A drain tells HTTP/2 clients to go elsewhere with a GOAWAY, as SIGTERM
/// does, and the request in flight on the connection still completes.
/// nghttp (nghttp2) is the client: `-v` prints every frame it receives.
#[test]
fn drain_sends_http2_clients_goaway_and_finishes_their_requests() -> Result<()> {
    let origin = PyServer::start("stream_origin.py", &[])?;
    let port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let edge = SocketAddr::from(([127, 0, 0, 1], port));
    let config = tempdir()?.join("meshgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[admin]
address = "{admin}"
token = "{TOKEN}"

[[listener]]
name = "web"
address = "{edge}"
protocols = ["http1", "h2c"]

[[route]]
name = "all"
service = "stream"

[[service]]
name = "stream"
endpoints = [{{ address = "{origin}" }}]
"#,
            origin = origin.addr
        ),
    )?;
    let _gw = Gateway::start(&config, edge)?;
    meshgate_tests::wait_for_port(admin)?;

    // h2c with prior knowledge; the origin sends the first part of the
    // body and holds the rest until released.
    let mut cmd = Command::new("nghttp");
    cmd.args(["-v", &format!("http://{edge}/chunked?id=drain")]);
    let mut client = Proc::spawn(cmd)?;
    wait_for(Duration::from_secs(10), "the first part", || {
        client.stdout().contains("first part")
    })?;
    assert!(
        !client.stdout().contains("recv GOAWAY"),
        "no GOAWAY before the drain: {}",
        client.stdout()
    );

    let r = send(admin, "POST", "/drain", "", Some(TOKEN))?;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(
        Duration::from_secs(10),
        "a GOAWAY on the connection",
        || client.stdout().contains("recv GOAWAY frame"),
    )
    .with_context(|| client.stdout())?;
    let release = format!("http://{}/release?id=drain", origin.addr);
    assert_eq!(curl(&[&release])?.status, 200);
    let code = client.wait_exit(Duration::from_secs(10))?;
    let out = client.stdout();
    assert_eq!(code, Some(0), "{out}{}", client.stderr());
    assert!(out.contains(":status: 200"), "{out}");
    // nghttp prints the body between its frame lines: the parts in
    // order, the last two after the GOAWAY.
    let at = |what: &str| {
        out.find(what)
            .with_context(|| format!("no {what:?}: {out}"))
    };
    let goaway = at("recv GOAWAY frame")?;
    assert!(at("first part\n")? < goaway, "{out}");
    assert!(goaway < at("second part\n")?, "{out}");
    assert!(at("second part\n")? < at("last part\n")?, "{out}");
    assert!(out.contains("error_code=NO_ERROR"), "{out}");
    Ok(())
}

#[test]
fn sidecar_admin_takes_writes_with_a_token_file_and_refuses_public_without() -> Result<()> {
    // Refused before anything starts: a public admin address without a token.
    let out = meshgate_tests::run(
        std::process::Command::new(meshgate_tests::bin("meshgate-sidecar")).args([
            "--ca-file",
            "/nonexistent/ca.pem",
            "--service",
            "x",
            "--app",
            "127.0.0.1:1",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
        ]),
        Duration::from_secs(15),
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--admin 0.0.0.0:0 is not a loopback address")
            && err.contains("--admin-token-file"),
        "{err}"
    );

    let mut lab = MeshLab::start(LabOptions::default())?;
    lab.sidecar_admin_token = Some(TOKEN.to_owned());
    let i = lab.add("product-catalog", "v1", None)?;
    let sidecar = lab.instances[i].admin;
    meshgate_tests::wait_for_port(sidecar)?;
    // Reads as before; writes need the token.
    assert_eq!(get(sidecar, "/services")?.status, 200);
    let r = put(sidecar, "/log-level", "debug", None)?;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = put(sidecar, "/log-level", "info,meshgate=debug", Some(TOKEN))?;
    assert_eq!(r.status, 200, "{}", r.body);
    // Its config belongs to the control plane.
    let r = put(sidecar, "/config", "", Some(TOKEN))?;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = send(sidecar, "POST", "/drain", "", Some(TOKEN))?;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(Duration::from_secs(10), "the sidecar unready", || {
        get(sidecar, "/readyz").is_ok_and(|r| r.status == 503)
    })?;
    Ok(())
}

/// Runs `query` and returns Prometheus's whole answer.
fn prom_answer(prom: SocketAddr, query: &str) -> Result<Value> {
    let q = format!("query={query}");
    let r = curl(&[
        "-G",
        "--data-urlencode",
        &q,
        &format!("http://{prom}/api/v1/query"),
    ])?;
    json(&r)
}

/// Every PromQL expression of the Grafana dashboard, with its variables
/// as Grafana substitutes them for "All", runs against a real Prometheus
/// that scraped an appliance and a sidecar after known traffic: each one
/// is valid, and the golden-signal panels have data.
#[test]
fn grafana_dashboard_queries_run_against_prometheus() -> Result<()> {
    let file = meshgate_tests::workspace().join("packaging/grafana/meshgate-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;

    let mut lab = MeshLab::start(LabOptions::default())?;
    let i = lab.add("product-catalog", "v1", None)?;
    let sidecar = lab.instances[i].admin;
    lab.wait_serving("/catalog/items", &["v1"])?;
    let (proc, prom) = start_prometheus(&[lab.admin, sidecar])?;
    let traffic = || -> Result<()> {
        for _ in 0..20 {
            curl(&[&format!("http://{}/catalog/items", lab.edge)])?;
        }
        Ok(())
    };
    traffic()?;
    // Both targets scraped once with traffic, each on its own schedule...
    let both = |queries: [&str; 2]| {
        queries
            .iter()
            .all(|q| prom_query(prom, q).is_ok_and(|r| !r.is_empty()))
    };
    wait_for(
        Duration::from_secs(20),
        "the first scrapes with traffic",
        || {
            both([
                "meshgate_requests_total{route=\"catalog\"}",
                "meshgate_requests_total{direction=\"inbound\"}",
            ])
        },
    )
    .with_context(|| format!("prometheus:\n{}", proc.stderr()))?;
    // ...then more traffic, so rates over the window are above 0 on both.
    traffic()?;
    wait_for(Duration::from_secs(20), "a rate above zero on both", || {
        both([
            "sum(rate(meshgate_requests_total{route=\"catalog\"}[1m])) > 0",
            "sum(rate(meshgate_requests_total{direction=\"inbound\"}[1m])) > 0",
        ])
    })?;

    // Variables: `label_values(SELECTOR, LABEL)` has values.
    let all = |expr: &str| {
        expr.replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$route", ".*")
            .replace("$service", ".*")
    };
    let vars = dash["templating"]["list"]
        .as_array()
        .context("templating")?;
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["allValue"], ".*", "{v}");
        let q = v["query"]["query"].as_str().context("variable query")?;
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .context(q.to_owned())?;
        let (selector, label) = inner.rsplit_once(',').context(q.to_owned())?;
        let values = prom_query(
            prom,
            &format!("count by ({}) ({})", label.trim(), all(selector)),
        )?;
        assert!(!values.is_empty(), "variable {}: {q}", v["name"]);
    }

    let must_have_data = [
        "Request rate by route",
        "Latency p50 by route",
        "Latency p99 by route",
        "In-flight requests (saturation)",
        "Inbound requests by caller",
        "Traffic split by subset",
        "Upstream connection reuse",
        "Ejected endpoints",
        "Retries",
        "Mesh certificate expires in",
        "Response bytes",
        "Config version and rejected reloads",
    ];
    let mut with_data = Vec::new();
    let panels = dash["panels"].as_array().context("panels")?;
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        let title = p["title"].as_str().context("title")?;
        let targets = p["targets"].as_array().context("targets")?;
        assert!(!targets.is_empty(), "{title}: no query");
        let mut finite = true;
        let mut empty = false;
        for t in targets {
            let expr = t["expr"].as_str().context("expr")?;
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let answer = prom_answer(prom, &all(expr))?;
            assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
            assert_eq!(answer["data"]["resultType"], "vector", "{title}: {expr}");
            let result = answer["data"]["result"].as_array().context("result")?;
            empty |= result.is_empty();
            finite &= result.iter().all(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
        }
        if !empty && finite {
            with_data.push(title);
        }
    }
    for title in must_have_data {
        assert!(
            with_data.contains(&title),
            "panel {title:?} has no data; panels with data: {with_data:?}"
        );
    }
    // The certificate panel says something true: expiry is ahead.
    let expr = dash["panels"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["title"] == "Mesh certificate expires in")
        })
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .context("certificate panel")?;
    let left = prom_query(prom, &all(expr))?;
    assert!(
        !left.is_empty()
            && left.iter().all(|s| {
                s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
            }),
        "{left:?}"
    );
    Ok(())
}

/// Downstream TLS handshakes are counted where pingora lets us see them: a
/// sidecar's inbound mTLS side completes the gateway's handshakes, refuses
/// a client certificate from another CA (with its reason) and sees a
/// client without a certificate give up.
#[test]
fn tls_handshakes_are_counted_with_failure_reasons() -> Result<()> {
    let mut lab = MeshLab::start(LabOptions::default())?;
    let i = lab.add("product-catalog", "v1", None)?;
    let (sidecar, inbound) = (lab.instances[i].admin, lab.instances[i].inbound);
    lab.wait_serving("/catalog/items", &["v1"])?;
    let count = |m: &str, outcome: &str| {
        metric(
            m,
            "meshgate_tls_handshakes_total",
            &["listener=\"inbound\"", &format!("outcome=\"{outcome}\"")],
        )
        .unwrap_or(0.0)
    };
    let m = get(sidecar, "/metrics")?.body;
    let (started, completed) = (count(&m, "started"), count(&m, "completed"));
    assert!(completed >= 1.0, "the gateway's connection: {m}");
    assert!(started >= completed, "{m}");

    // A certificate from a CA the mesh does not trust.
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["intruder.test".to_owned()])?.self_signed(&key)?;
    let dir = tempdir()?;
    std::fs::write(dir.join("c.pem"), cert.pem())?;
    std::fs::write(dir.join("k.pem"), key.serialize_pem())?;
    let url = format!("https://{inbound}/");
    let c = dir.join("c.pem").display().to_string();
    let k = dir.join("k.pem").display().to_string();
    for args in [
        vec!["-sk", "--max-time", "5", "--cert", &c, "--key", &k, &url],
        vec!["-sk", "--max-time", "5", &url],
    ] {
        let out = meshgate_tests::run(
            std::process::Command::new("curl").args(&args),
            Duration::from_secs(10),
        )?;
        assert!(!out.status.success(), "refused: {args:?}");
    }
    wait_for(Duration::from_secs(10), "both refusals counted", || {
        get(sidecar, "/metrics").is_ok_and(|r| {
            count(&r.body, "started") - count(&r.body, "completed") >= started - completed + 2.0
                && metric(
                    &r.body,
                    "meshgate_tls_handshake_failures_total",
                    &["listener=\"inbound\"", "reason=\"client-cert-unknown-ca\""],
                ) == Some(1.0)
        })
    })
    .with_context(|| get(sidecar, "/metrics").map(|r| r.body).unwrap_or_default())?;
    Ok(())
}
