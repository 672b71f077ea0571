//! The seed example end to end, every component a separate process on
//! loopback: the appliance (gateway, control plane, CA), demo services and
//! one `meshgate-sidecar` per instance. Requests cross the mesh over mTLS
//! (gateway → sidecar, sidecar → sidecar); the tests check routing,
//! the canary split, failure handling, identity authorization and
//! certificate handling from the outside, with real clients.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meshgate_tests::http1::Client;
use meshgate_tests::mesh::{LabOptions, MeshLab, TRUST_DOMAIN, service_id};
use meshgate_tests::{Gateway, PyServer, check_grpc_echo, curl, py_client, tempdir, wait_for};

/// The seed layout: product-catalog v1 ×2 and v2, order-processing
/// calling product-catalog, user-account.
fn seed(opts: LabOptions) -> Result<MeshLab> {
    let mut lab = MeshLab::start(opts)?;
    lab.add("product-catalog", "v1", None)?;
    lab.add("product-catalog", "v1", None)?;
    lab.add("product-catalog", "v2", None)?;
    lab.add("order-processing", "v1", Some("product-catalog"))?;
    lab.add("user-account", "v1", None)?;
    lab.wait_serving("/catalog/items", &["v1", "v2"])?;
    lab.wait_serving("/orders/1", &["v1"])?;
    Ok(lab)
}

#[test]
fn a_request_crosses_the_mesh_with_mtls_identities_on_every_hop() -> Result<()> {
    let lab = seed(LabOptions::default())?;
    let mut c = Client::new(lab.edge);
    let r = c.get("/orders/42", &[("x-user-id", "alice")])?;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json()?;
    assert_eq!(j["service"], "order-processing");
    // order-processing was called by the gateway, over mTLS.
    assert_eq!(j["caller"], format!("spiffe://{TRUST_DOMAIN}/gateway"));
    assert_eq!(j["user"], "alice");
    // ...and called product-catalog through its sidecar, which the
    // catalog saw as order-processing's identity.
    let cat = &j["catalog"];
    assert_eq!(cat["status"], 200, "{j}");
    assert_eq!(cat["body"]["service"], "product-catalog", "{j}");
    assert_eq!(cat["body"]["caller"], service_id("order-processing"));
    assert_eq!(cat["body"]["user"], "alice", "x-user-id is carried on");

    // Every service registered; the gateway reached them by discovery.
    let r = c.get("/users/alice", &[])?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()?["service"], "user-account");

    // The admin endpoint's metrics say the same.
    let m = Client::new(lab.admin).get("/metrics", &[])?;
    assert_eq!(m.status, 200);
    let metrics = m.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshgate_requests_total{")
                && l.contains("route=\"orders\"")
                && l.contains("status=\"200\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshgate_mesh_endpoints{service=\"product-catalog\"} 3"),
        "{metrics}"
    );
    let expiry = metrics
        .lines()
        .find(|l| {
            l.starts_with("meshgate_mesh_certificate_expiration_timestamp_seconds")
                && l.contains("/gateway")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("gateway certificate expiry metric")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(
        expiry > now + 3000.0 && expiry < now + 3700.0,
        "a one-hour certificate: {expiry} vs now {now}"
    );
    // A sidecar's too: its identity's expiry and the calls it took in.
    let m = Client::new(lab.instances[0].admin)
        .get("/metrics", &[])?
        .body;
    assert!(
        m.contains(&format!(
            "meshgate_mesh_certificate_expiration_timestamp_seconds{{identity=\"{}\"}}",
            service_id("product-catalog")
        )),
        "{m}"
    );
    // Calls taken in: order-processing's sidecar (instance 3) surely took
    // some, while a catalog instance may have had none when the balancer
    // picked its peers; the count lands just after the response.
    let order_admin = lab.instances[3].admin;
    wait_for(Duration::from_secs(5), "inbound requests counted", || {
        Client::new(order_admin)
            .get("/metrics", &[])
            .is_ok_and(|r| {
                r.body.lines().any(|l| {
                    l.starts_with("meshgate_requests_total{")
                        && l.contains("listener=\"inbound\"")
                        && l.contains("direction=\"inbound\"")
                })
            })
    })?;
    Ok(())
}

#[test]
fn the_canary_gets_five_percent_of_users_sticky_per_user() -> Result<()> {
    let lab = seed(LabOptions::default())?;
    let mut c = Client::new(lab.edge);
    let users = 20_000;
    let mut v2 = 0u32;
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for u in 0..users {
        let user = format!("user-{u}");
        let r = c.get("/catalog/items", &[("x-user-id", &user)])?;
        assert_eq!(r.status, 200, "{user}: {}", r.body);
        let version = r.json()?["version"].as_str().unwrap_or("").to_owned();
        if version == "v2" {
            v2 += 1;
        }
        if u < 200 {
            first.insert(user, version);
        }
    }
    let share = f64::from(v2) * 100.0 / f64::from(users);
    assert!(
        (4.0..=6.0).contains(&share),
        "v2 share {share:.2}% of {users} users, want 5 ±1"
    );
    // Sticky: the same users again see the same version, through the
    // gateway and through order-processing's sidecar alike.
    for (user, version) in &first {
        let r = c.get("/catalog/items", &[("x-user-id", user)])?;
        assert_eq!(&r.json()?["version"], version.as_str(), "{user}");
        let r = c.get("/orders/1", &[("x-user-id", user)])?;
        assert_eq!(
            &r.json()?["catalog"]["body"]["version"],
            version.as_str(),
            "{user} through the mesh"
        );
    }
    // The override header forces a version for testers.
    let r = c.get(
        "/catalog/items",
        &[("x-user-id", "user-1"), ("x-canary", "v2")],
    )?;
    assert_eq!(r.json()?["version"], "v2");
    Ok(())
}

/// Sends `n` requests to `path` with distinct users; returns the statuses
/// that were not 200 and the instances that answered.
fn drive(lab: &MeshLab, path: &str, n: u32) -> Result<(Vec<String>, BTreeMap<String, u32>)> {
    let mut c = Client::new(lab.edge);
    let mut failures = Vec::new();
    let mut by_instance = BTreeMap::new();
    for i in 0..n {
        let user = format!("u{i}");
        match c.get(path, &[("x-user-id", &user), ("x-canary", "v1")]) {
            Ok(r) if r.status == 200 => {
                let j = r.json()?;
                let inst = j["catalog"]["body"]["instance"]
                    .as_str()
                    .or(j["instance"].as_str())
                    .unwrap_or("?")
                    .to_owned();
                *by_instance.entry(inst).or_insert(0) += 1;
            }
            Ok(r) => failures.push(format!("{} {}", r.status, r.body.trim())),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    Ok((failures, by_instance))
}

#[test]
fn a_flaky_instance_is_retried_around_and_a_killed_one_ejected() -> Result<()> {
    let lab = seed(LabOptions::default())?;
    // Instance 0 (v1) fails half its requests.
    lab.set_flaky(0, 50)?;
    let (failures, seen) = drive(&lab, "/catalog/items", 300)?;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(seen.contains_key("product-catalog-1"), "{seen:?}");
    // Through the mesh too: order-processing's sidecar retries.
    let (failures, _) = drive(&lab, "/orders/7", 300)?;
    assert!(failures.is_empty(), "{failures:?}");
    lab.set_flaky(0, 0)?;

    // Kill instance 1's app outright: its sidecar answers 502, the
    // callers retry elsewhere and eject it.
    lab.instances[1]
        .app
        .as_ref()
        .context("the demo app")?
        .signal("KILL")?;
    let (failures, seen) = drive(&lab, "/catalog/items", 300)?;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(seen.contains_key("product-catalog-0"), "{seen:?}");
    // Ejected, not merely retried around: the last requests went to a
    // healthy instance on the first try.
    let dead = lab.instances[1].inbound.to_string();
    let log = lab.appliance.access_log();
    let tail: Vec<_> = log
        .iter()
        .filter(|l| l["route"] == "catalog")
        .rev()
        .take(100)
        .collect();
    assert_eq!(tail.len(), 100);
    assert!(
        tail.iter()
            .all(|l| l["retries"] == 0 && l["upstream"] != dead.as_str()),
        "{tail:?}"
    );
    // Now its sidecar too: connections are refused, and the instance
    // leaves the registry once its heartbeats stop.
    lab.instances[1].sidecar.signal("KILL")?;
    let (failures, _) = drive(&lab, "/orders/8", 300)?;
    assert!(failures.is_empty(), "{failures:?}");
    let want = format!("instances={}", lab.instances.len() - 1);
    wait_for(Duration::from_secs(20), "instance removed", || {
        lab.appliance
            .proc
            .stderr()
            .lines()
            .rfind(|l| l.contains("mesh endpoints changed"))
            .is_some_and(|l| l.contains(&want))
    })?;
    Ok(())
}

#[test]
fn only_allowed_identities_may_call_product_catalog() -> Result<()> {
    let lab = seed(LabOptions::default())?;
    // user-account's sidecar is a real mesh member with a valid
    // certificate, but product-catalog's rules do not list it.
    let ua = &lab.instances[4];
    let url = format!("http://{}/items", ua.outbound);
    let r = curl(&["-H", "host: product-catalog", &url])?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.header("x-meshgate-reason"), Some("identity-denied"));
    // The same call from order-processing's sidecar is allowed.
    let op = &lab.instances[3];
    let url = format!("http://{}/items", op.outbound);
    let r = curl(&["-H", "host: product-catalog", &url])?;
    assert_eq!(r.status, 200, "{}", r.body);
    // And user-account itself takes calls from anyone in the mesh.
    let url = format!("http://{}/u", op.outbound);
    let r = curl(&["-H", "host: user-account", &url])?;
    assert_eq!(r.status, 200, "{}", r.body);
    Ok(())
}

/// Makes a client certificate with rcgen: for `id`, signed by the CA in
/// `ca` (cert, key) or self-signed as its own CA, valid from `from` to
/// `to` (seconds from now).
fn client_cert(dir: &Path, id: &str, ca: Option<(&Path, &Path)>, from: i64, to: i64) -> Result<()> {
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
    let now = time_now();
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(to);
    let key = KeyPair::generate()?;
    let cert = match ca {
        Some((cert, ca_key)) => {
            let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_key)?)?;
            let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(cert)?, ca_key)?;
            params.signed_by(&key, &issuer)?
        }
        None => {
            let mut other = CertificateParams::new(Vec::<String>::new())?;
            other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let other_key = KeyPair::generate()?;
            let issuer = Issuer::new(other, other_key);
            params.signed_by(&key, &issuer)?
        }
    };
    std::fs::write(dir.join("client.pem"), cert.pem())?;
    std::fs::write(dir.join("client-key.pem"), key.serialize_pem())?;
    Ok(())
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// curl straight to an inbound port with the client cert in `dir`.
fn call_inbound(
    lab: &MeshLab,
    inbound: std::net::SocketAddr,
    dir: Option<&Path>,
) -> Result<meshgate_tests::CurlResponse> {
    let url = format!(
        "https://product-catalog.service.{TRUST_DOMAIN}:{}/items",
        inbound.port()
    );
    let resolve = format!(
        "product-catalog.service.{TRUST_DOMAIN}:{}:127.0.0.1",
        inbound.port()
    );
    let bundle = lab.trust_bundle().display().to_string();
    let mut args = vec!["--resolve", &resolve, "--cacert", &bundle];
    let (cert, key);
    if let Some(d) = dir {
        cert = d.join("client.pem").display().to_string();
        key = d.join("client-key.pem").display().to_string();
        args.extend(["--cert", &cert, "--key", &key]);
    }
    args.push(&url);
    curl(&args)
}

#[test]
fn inbound_ports_refuse_foreign_expired_missing_certificates_and_plaintext() -> Result<()> {
    let mut lab = MeshLab::start(LabOptions::default())?;
    lab.add("product-catalog", "v1", None)?;
    let inbound = lab.instances[0].inbound;
    let (ca, ca_key) = lab.ca_files();
    let dir = tempdir()?;
    let me = service_id("order-processing");

    // A good certificate from the mesh CA: accepted (the control case
    // that shows the refusals below are about the certificate).
    client_cert(&dir, &me, Some((&ca, &ca_key)), -60, 3600)?;
    let r = call_inbound(&lab, inbound, Some(&dir))?;
    assert_eq!(r.status, 200, "{r:?}");
    let j: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(j["caller"], me);

    // The inbound port is our accept loop: the server picks the cipher
    // suite (a client listing AES-256 first gets AES-128), it sends its
    // leaf alone (the CA certificate is in every peer's trust bundle),
    // and its connections are counted.
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &inbound.to_string(), "-tls1_3"])
        .arg("-showcerts")
        .args([
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        ])
        .arg("-cert")
        .arg(dir.join("client.pem"))
        .arg("-key")
        .arg(dir.join("client-key.pem"))
        .stdin(std::process::Stdio::null());
    let out = meshgate_tests::run(&mut cmd, Duration::from_secs(15))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Cipher is TLS_AES_128_GCM_SHA256"),
        "the server's choice: {text}"
    );
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        1,
        "the server's chain: {text}"
    );
    let m = Client::new(lab.instances[0].admin).get("/metrics", &[])?;
    let accepted = m
        .body
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "meshgate_tcp_connections_total{listener=\"inbound\",outcome=\"accepted\"} ",
            )
        })
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(accepted >= Some(2), "curl's and openssl's: {}", m.body);

    // The same identity from another CA.
    client_cert(&dir, &me, None, -60, 3600)?;
    refused(
        call_inbound(&lab, inbound, Some(&dir)),
        "a certificate from another CA",
    )?;

    // From the mesh CA, but expired.
    client_cert(&dir, &me, Some((&ca, &ca_key)), -7200, -3600)?;
    refused(
        call_inbound(&lab, inbound, Some(&dir)),
        "an expired certificate",
    )?;

    // No certificate at all.
    refused(call_inbound(&lab, inbound, None), "no certificate")?;

    // Plaintext HTTP to the inbound port.
    refused(curl(&[&format!("http://{inbound}/items")]), "plaintext")?;
    Ok(())
}

#[test]
fn permissive_mode_takes_plaintext_without_identity_until_the_mesh_turns_strict() -> Result<()> {
    let mut lab = MeshLab::start(LabOptions {
        mode: "permissive",
        ..LabOptions::default()
    })?;
    let pc = lab.add("product-catalog", "v1", None)?;
    let ua = lab.add("user-account", "v1", None)?;
    lab.wait_serving("/catalog/items", &["v1"])?;
    lab.wait_serving("/users/1", &["v1"])?;
    let ua_inbound = lab.instances[ua].inbound;
    let pc_inbound = lab.instances[pc].inbound;
    assert!(
        lab.instances[ua]
            .sidecar
            .stderr()
            .contains("mesh mode is permissive"),
        "the sidecar warns about plaintext"
    );

    // Plaintext HTTP/1.1 to a service without rules: served, without an
    // identity, and a caller's own identity header does not get through.
    let forged = service_id("order-processing");
    let r = curl(&[
        "-H",
        &format!("x-meshgate-peer-identity: {forged}"),
        &format!("http://{ua_inbound}/u"),
    ])?;
    assert_eq!(r.status, 200, "{r:?}");
    let j: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(j["caller"], serde_json::Value::Null, "{j}");
    // HTTP/2 with prior knowledge too.
    let r = curl(&["--http2-prior-knowledge", &format!("http://{ua_inbound}/u")])?;
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    // The inbound port checks a head's framing as the gateway does: a
    // coding before `chunked` would reach the application as if the body
    // were plain.
    let mut raw = std::net::TcpStream::connect(ua_inbound)?;
    raw.set_read_timeout(Some(Duration::from_secs(10)))?;
    raw.write_all(
        b"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    )?;
    let mut answer = String::new();
    raw.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Its size limits are not a listener's: the hop before it (an edge
    // listener configured for more, or a sidecar adding its own headers)
    // decides. A 40 KB head (over the listeners' default 32 KiB) passes;
    // 90 lines, as the application behind (Python's server) takes at
    // most 100.
    let many: Vec<String> = (0..90)
        .map(|i| format!("x-h{i}: {}", "v".repeat(450)))
        .collect();
    let mut args: Vec<&str> = Vec::new();
    for h in &many {
        args.extend(["-H", h.as_str()]);
    }
    let url = format!("http://{ua_inbound}/u");
    args.push(&url);
    let r = curl(&args)?;
    assert_eq!(r.status, 200, "{r:?}");

    // product-catalog's rules ask for an identity: plaintext has none.
    let r = curl(&[&format!("http://{pc_inbound}/items")])?;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("x-meshgate-reason"), Some("no-peer-identity"));

    // mTLS callers still come with their identity: the gateway's.
    let r = curl(&[&format!("http://{}/users/1", lab.edge)])?;
    assert_eq!(r.status, 200, "{r:?}");
    let j: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(
        j["caller"],
        format!("spiffe://{TRUST_DOMAIN}/gateway"),
        "{j}"
    );

    let m = Client::new(lab.instances[ua].admin).get("/metrics", &[])?;
    let plaintext = meshgate_tests::metric(
        &m.body,
        "meshgate_plaintext_connections_total",
        &["listener=\"inbound\""],
    );
    assert_eq!(
        plaintext,
        Some(4.0),
        "curl's three and the refused head's: {}",
        m.body
    );

    // A plaintext keep-alive connection is open when the operator turns
    // the mesh strict.
    let mut open = Client::new(ua_inbound);
    assert_eq!(open.get("/u", &[])?.status, 200);
    let text = std::fs::read_to_string(lab.config())?;
    std::fs::write(
        lab.config(),
        text.replace("mode = \"permissive\"", "mode = \"strict\""),
    )?;
    wait_for(
        Duration::from_secs(15),
        "the sidecar to turn strict",
        || {
            lab.instances[ua]
                .sidecar
                .stderr()
                .contains("mesh mode is strict")
        },
    )?;
    // Its next request is refused, and the connection closed.
    let r = open.get("/u", &[])?;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.headers.get("x-meshgate-reason").map(String::as_str),
        Some("mtls-required")
    );
    assert_eq!(
        r.headers.get("connection").map(String::as_str),
        Some("close")
    );
    // New plaintext connections are refused outright.
    refused(
        curl(&[&format!("http://{ua_inbound}/u")]),
        "plaintext after the switch",
    )?;
    // mTLS goes on.
    let r = curl(&[&format!("http://{}/users/1", lab.edge)])?;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(())
}

/// A sidecar's drain sends GOAWAY on the mTLS HTTP/2 connections pooled
/// to it: the gateway stops reusing them and opens a new connection for
/// its next request, which the draining sidecar still answers.
#[test]
fn a_draining_sidecar_sends_its_pooled_connections_away() -> Result<()> {
    const TOKEN: &str = "sidecar-admin-token-0123456789";
    let mut lab = MeshLab::start(LabOptions::default())?;
    lab.sidecar_admin_token = Some(TOKEN.to_owned());
    let i = lab.add("user-account", "v1", None)?;
    lab.wait_serving("/users/1", &["v1"])?;
    let count = |lab: &MeshLab, reused: &str| -> Result<f64> {
        let m = Client::new(lab.admin).get("/metrics", &[])?;
        Ok(meshgate_tests::metric(
            &m.body,
            "meshgate_upstream_connections_total",
            &["service=\"user-account\"", &format!("reused=\"{reused}\"")],
        )
        .unwrap_or(0.0))
    };
    let url = format!("http://{}/users/1", lab.edge);
    assert_eq!(curl(&[&url])?.status, 200);
    let (opened, reused) = (count(&lab, "false")?, count(&lab, "true")?);
    assert_eq!(curl(&[&url])?.status, 200);
    assert_eq!(count(&lab, "false")?, opened, "the pooled connection");
    assert_eq!(count(&lab, "true")?, reused + 1.0);

    let r = meshgate_tests::post_drain(lab.instances[i].admin, TOKEN)?;
    assert_eq!(r.status, 200, "{}", r.body);
    // The GOAWAY reaches the gateway's pool; its next request opens a
    // new connection.
    wait_for(Duration::from_secs(10), "a new connection", || {
        curl(&[&url]).is_ok_and(|r| r.status == 200)
            && count(&lab, "false").is_ok_and(|n| n > opened)
    })?;
    Ok(())
}

#[test]
fn a_burst_of_requests_shares_http2_connections_to_a_sidecar() -> Result<()> {
    let mut lab = MeshLab::start(LabOptions::default())?;
    lab.add("user-account", "v1", None)?;
    lab.wait_serving("/users/1", &["v1"])?;
    let opened = |lab: &MeshLab| -> Result<f64> {
        let m = Client::new(lab.admin).get("/metrics", &[])?;
        Ok(meshgate_tests::metric(
            &m.body,
            "meshgate_upstream_connections_total",
            &["service=\"user-account\"", "reused=\"false\""],
        )
        .unwrap_or(0.0))
    };
    let before = opened(&lab)?;
    // 600 requests at once (20 connections × 30 streams) through the
    // gateway to the one instance: HTTP/2 over mTLS, up to 1000 streams per
    // mesh connection.
    let url = format!("http://{}/users/1", lab.edge);
    let out = meshgate_tests::run(
        Command::new("h2load").args(["-n", "6000", "-c", "20", "-m", "30", &url]),
        Duration::from_secs(60),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("6000 succeeded, 0 failed"),
        "every request answered: {text}"
    );
    // The connection wait_serving's requests opened is pooled and takes
    // them all; at 100 streams a connection they needed five more.
    let opened = opened(&lab)? - before;
    assert!(
        opened <= 1.0,
        "600 concurrent streams fit the pooled mesh connection (one more with a race): {opened}"
    );
    Ok(())
}

#[test]
fn connections_to_the_application_close_after_the_app_idle_timeout() -> Result<()> {
    // One application (a gateway answering by itself, whose own keep-alive
    // lasts 60 s) behind two sidecars: user-account's keeps an idle
    // connection to it 300 ms, order-processing's an hour. Each gets two
    // requests back to back, then one after 1.5 s idle.
    let (_app, app_addr) = Gateway::start_web(
        "protocols = [\"http1\"]",
        "[[route]]\nname = \"hi\"\nmatch = { path_prefix = \"/\" }\n\
         respond = { status = 200, body = \"hi\" }\n",
    )?;
    let mut lab = MeshLab::start(LabOptions::default())?;
    let port = || std::net::SocketAddr::from(([127, 0, 0, 1], meshgate_tests::free_port()));
    let brief = lab.add_app(
        "user-account",
        "v1",
        None,
        app_addr,
        port(),
        &["--app-idle-timeout", "300ms"],
    )?;
    let lasting = lab.add_app(
        "order-processing",
        "v1",
        None,
        app_addr,
        port(),
        &["--app-idle-timeout", "1h"],
    )?;
    lab.wait_serving("/users/1", &["v1"])?;
    lab.wait_serving("/orders/1", &["v1"])?;
    let opened = |i: usize, service: &str| -> Result<f64> {
        let m = Client::new(lab.instances[i].admin).get("/metrics", &[])?;
        Ok(meshgate_tests::metric(
            &m.body,
            "meshgate_upstream_connections_total",
            &[
                "direction=\"inbound\"",
                &format!("service=\"{service}\""),
                "reused=\"false\"",
            ],
        )
        .unwrap_or(0.0))
    };
    for (i, service, path, new_after_idle) in [
        (brief, "user-account", "/users/1", 1.0),
        (lasting, "order-processing", "/orders/1", 0.0),
    ] {
        let url = format!("http://{}{path}", lab.edge);
        assert_eq!(curl(&[&url])?.body, "hi");
        let before = opened(i, service)?;
        assert_eq!(curl(&[&url])?.body, "hi");
        assert_eq!(opened(i, service)?, before, "{service}: reused at once");
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(curl(&[&url])?.body, "hi");
        assert_eq!(
            opened(i, service)? - before,
            new_after_idle,
            "{service}: connections opened to the app after 1.5 s idle"
        );
    }
    Ok(())
}

#[test]
fn grpc_services_in_the_mesh_keep_status_and_trailers() -> Result<()> {
    // A gRPC service behind its sidecar, reached by the gateway and by
    // another service's sidecar: HTTP/2 end to end, the last hop h2c to
    // the app (gRPC needs HTTP/2), trailers and error statuses intact.
    let extra = r#"
[[route]]
name = "echo"
match = { path_prefix = "/meshgate.test.Echo/" }
service = "echo"
timeout = "10s"

[[service]]
name = "echo"
discovery = "mesh"
"#;
    let mut lab = MeshLab::start_with(LabOptions::default(), extra)?;
    let server = PyServer::start("grpc_echo_server.py", &[])?;
    let outbound = std::net::SocketAddr::from(([127, 0, 0, 1], meshgate_tests::free_port()));
    lab.add_app("echo", "v1", Some(server.proc), server.addr, outbound, &[])?;
    let caller = lab.add("user-account", "v1", None)?;
    lab.wait_serving("/users/1", &["v1"])?;

    let through_gateway = py_client("grpc_client.py", &[&lab.edge.to_string()])?;
    check_grpc_echo(&through_gateway, "gateway -> mTLS -> sidecar -> app");

    let outbound = lab.instances[caller].outbound.to_string();
    let args = [outbound.as_str(), "--authority", "echo"];
    wait_for(
        Duration::from_secs(15),
        "the caller's sidecar to know echo",
        || py_client("grpc_client.py", &args).is_ok(),
    )?;
    let through_sidecars = py_client("grpc_client.py", &args)?;
    check_grpc_echo(&through_sidecars, "sidecar -> mTLS -> sidecar -> app");
    Ok(())
}

#[test]
fn app_protocol_h2c_speaks_http2_to_the_application_for_every_request() -> Result<()> {
    // The application is a meshgate gateway answering by itself: its
    // access log says which protocol each request reached it over. Two
    // services front it: one with `--app-protocol h2c`, one with the
    // default (`auto`: HTTP/1.1 unless the request is gRPC).
    let (app, app_addr) = Gateway::start_web(
        "protocols = [\"http1\", \"h2c\"]",
        "[[route]]\nname = \"hi\"\nmatch = { path_prefix = \"/\" }\n\
         respond = { status = 200, body = \"hi\" }\n\n\
         [observability]\naccess_log = { format = \"json\", path = \"stdout\" }\n",
    )?;
    let extra = "\n[[service]]\nname = \"h2c-app\"\ndiscovery = \"mesh\"\n\n\
                 [[service]]\nname = \"auto-app\"\ndiscovery = \"mesh\"\n";
    let mut lab = MeshLab::start_with(LabOptions::default(), extra)?;
    let port = || std::net::SocketAddr::from(([127, 0, 0, 1], meshgate_tests::free_port()));
    let h2c = ["--app-protocol", "h2c"];
    lab.add_app("h2c-app", "v1", None, app_addr, port(), &h2c)?;
    lab.add_app("auto-app", "v1", None, app_addr, port(), &[])?;
    let caller = lab.add("user-account", "v1", None)?;
    lab.wait_serving("/users/1", &["v1"])?;

    let outbound = lab.instances[caller].outbound;
    for (service, path) in [("h2c-app", "/via-h2c"), ("auto-app", "/via-auto")] {
        let url = format!("http://{outbound}{path}");
        let host = format!("host: {service}");
        wait_for(
            Duration::from_secs(15),
            "the caller's sidecar to know it",
            || curl(&["-H", &host, &url]).is_ok_and(|r| r.status == 200 && r.body == "hi"),
        )?;
    }
    let proto = |path: &str| -> Option<String> {
        app.access_log()
            .iter()
            .find(|l| l["path"] == path)
            .and_then(|l| l["proto"].as_str().map(str::to_owned))
    };
    wait_for(
        Duration::from_secs(10),
        "the app's access-log lines",
        || proto("/via-h2c").is_some() && proto("/via-auto").is_some(),
    )?;
    assert_eq!(proto("/via-h2c").as_deref(), Some("http2"));
    assert_eq!(proto("/via-auto").as_deref(), Some("http1"));
    Ok(())
}

/// A request the inbound port must refuse at the connection level: curl
/// fails (handshake alert, reset or empty reply), no HTTP answer at all.
fn refused(r: Result<meshgate_tests::CurlResponse>, what: &str) -> Result<()> {
    match r {
        Ok(r) => bail!("{what} was accepted: {} {}", r.status, r.body),
        Err(e) => {
            eprintln!("{what} refused: {e:#}");
            Ok(())
        }
    }
}

/// Certificates each sidecar has installed so far (first and renewals).
fn installs(lab: &MeshLab) -> Vec<usize> {
    lab.instances
        .iter()
        .map(|i| {
            i.sidecar
                .stderr()
                .matches("workload certificate installed")
                .count()
        })
        .collect()
}

/// Asserts a load run saw no failed request, showing the first few.
fn no_failures(n: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// Runs `work` on a thread that loops requests until stopped; returns a
/// handle that yields (requests, failures).
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, path: &'static str, host: Option<&'static str>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            let mut c = Client::new(addr);
            let mut failures = Vec::new();
            let start = Instant::now();
            // Bounded in count and time whatever the test does.
            while !s.load(Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(120)
                && d.load(Ordering::Relaxed) < 200_000
            {
                let n = d.fetch_add(1, Ordering::Relaxed);
                let user = format!("load-{n}");
                let mut headers = vec![("x-user-id", user.as_str())];
                if let Some(h) = host {
                    headers.push(("host", h));
                }
                match c.get(path, &headers) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("#{n}: {} {}", r.status, r.body.trim())),
                    Err(e) => failures.push(format!("#{n}: {e:#}")),
                }
            }
            failures
        });
        Load { stop, done, handle }
    }

    fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn finish(self) -> Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self
            .handle
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        Ok((self.done.load(Ordering::Relaxed), failures))
    }
}

#[test]
fn certificates_rotate_under_load_without_a_failed_request() -> Result<()> {
    // Ten-second certificates: every workload renews at half-life, so
    // each is replaced several times while the load runs.
    let lab = seed(LabOptions {
        cert_ttl: "10s",
        ..LabOptions::default()
    })?;
    let load = Load::start(lab.edge, "/orders/1", None);
    let renewals = |lab: &MeshLab| -> usize { installs(lab).iter().sum() };
    let before = renewals(&lab);
    // Every sidecar renews at least twice more, and the gateway too.
    wait_for(Duration::from_secs(60), "renewals", || {
        renewals(&lab) >= before + 2 * lab.instances.len()
            && lab
                .appliance
                .proc
                .stderr()
                .matches("gateway certificate renewed")
                .count()
                >= 2
    })?;
    let (n, failures) = load.finish()?;
    assert!(n > 100, "only {n} requests");
    no_failures(n, &failures);
    Ok(())
}

#[test]
fn the_control_plane_restarting_under_load_fails_no_request() -> Result<()> {
    let mut lab = seed(LabOptions::default())?;
    // App-to-app traffic inside the mesh: order-processing's sidecar to
    // product-catalog's, which must not depend on the control plane.
    let out = lab.instances[3].outbound;
    let load = Load::start(out, "/items", Some("product-catalog"));
    wait_for(Duration::from_secs(10), "load running", || {
        load.count() > 50
    })?;
    let stderr_before = lab.instances[3].sidecar.stderr();
    lab.restart_appliance()?;
    // The sidecar noticed and reconnected to the new control plane.
    wait_for(Duration::from_secs(30), "sidecar reconnected", || {
        let now = lab.instances[3].sidecar.stderr();
        now.len() > stderr_before.len()
            && now[stderr_before.len()..].contains("connected to the control plane")
    })?;
    let at = load.count();
    wait_for(Duration::from_secs(10), "more load", || {
        load.count() > at + 200
    })?;
    // The restarted appliance restored the registry: the gateway routes.
    let r = Client::new(lab.edge).get("/catalog/items", &[])?;
    assert_eq!(r.status, 200, "{}", r.body);
    let (n, failures) = load.finish()?;
    no_failures(n, &failures);
    Ok(())
}

/// A sidecar whose certificate the control plane can no longer renew says
/// so once it expired (the check runs every 10 s beside the control-plane
/// stream), and keeps running.
#[test]
fn a_sidecar_reports_its_certificate_expired_when_the_control_plane_is_gone() -> Result<()> {
    let mut lab = MeshLab::start(LabOptions {
        cert_ttl: "10s",
        ..LabOptions::default()
    })?;
    let i = lab.add("product-catalog", "v1", None)?;
    lab.appliance.proc.signal("KILL")?;
    lab.appliance.proc.wait_exit(Duration::from_secs(10))?;
    let sidecar = &lab.instances[i].sidecar;
    wait_for(Duration::from_secs(40), "the expiry reported", || {
        sidecar
            .stderr()
            .contains("workload certificate has expired")
    })
    .with_context(|| sidecar.stderr())?;
    assert!(
        std::net::TcpStream::connect(lab.instances[i].outbound).is_ok(),
        "the sidecar stopped serving: {}",
        sidecar.stderr()
    );
    Ok(())
}

#[test]
fn a_sidecar_with_a_wrong_join_token_gets_no_certificate() -> Result<()> {
    let lab = MeshLab::start(LabOptions::default())?;
    let dir = tempdir()?;
    std::fs::write(dir.join("token"), "not-the-token")?;
    let mut cmd = Command::new(meshgate_tests::bin("meshgate-sidecar"));
    let outbound = meshgate_tests::free_port();
    let inbound = meshgate_tests::free_port();
    cmd.args(["--control-plane", &lab.control_plane.to_string()])
        .args(["--trust-domain", TRUST_DOMAIN])
        .arg("--ca-file")
        .arg(lab.trust_bundle())
        .args(["--service", "product-catalog", "--app", "127.0.0.1:1"])
        .args(["--inbound", &format!("127.0.0.1:{inbound}")])
        .args(["--outbound", &format!("127.0.0.1:{outbound}")])
        .arg("--join-token-file")
        .arg(dir.join("token"));
    let proc = meshgate_tests::Proc::spawn(cmd)?;
    wait_for(Duration::from_secs(15), "join refused", || {
        proc.stderr().contains("token")
    })
    .with_context(|| proc.stderr())?;
    // It never serves: no certificate, so no listeners.
    if std::net::TcpStream::connect(("127.0.0.1", inbound)).is_ok() {
        bail!("a sidecar without a certificate opened its inbound port");
    }
    Ok(())
}

#[test]
fn a_root_rotation_under_load_fails_no_request() -> Result<()> {
    let lab = seed(LabOptions {
        cert_ttl: "10s",
        ..LabOptions::default()
    })?;
    let load = Load::start(lab.edge, "/orders/1", None);
    wait_for(Duration::from_secs(10), "load running", || {
        load.count() > 50
    })?;
    let roots = |lab: &MeshLab| {
        std::fs::read_to_string(lab.trust_bundle())
            .unwrap_or_default()
            .matches("BEGIN CERTIFICATE")
            .count()
    };
    assert_eq!(roots(&lab), 1);
    let (ca, ca_key) = lab.ca_files();
    let old_root = std::fs::read_to_string(&ca)?;

    let mesh_cmd = |step: &str| -> Result<()> {
        let out = meshgate_tests::run(
            Command::new(meshgate_tests::bin("meshgate"))
                .args(["mesh", step, "--config"])
                .arg(lab.config()),
            Duration::from_secs(20),
        )?;
        if !out.status.success() {
            bail!("mesh {step}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    mesh_cmd("rotate-ca")?;
    assert_ne!(std::fs::read_to_string(&ca)?, old_root, "a new root");
    wait_for(Duration::from_secs(10), "both roots in the bundle", || {
        roots(&lab) == 2
    })?;
    // Every sidecar renews twice more: by then all of them hold
    // certificates from the new CA.
    let before = installs(&lab);
    wait_for(Duration::from_secs(40), "renewals from the new CA", || {
        installs(&lab)
            .iter()
            .zip(&before)
            .all(|(now, then)| *now >= then + 2)
    })?;
    // A client that trusts only the new root and holds a certificate
    // from the new CA gets through to an inbound port.
    let dir = tempdir()?;
    client_cert(
        &dir,
        &service_id("order-processing"),
        Some((&ca, &ca_key)),
        -60,
        3600,
    )?;
    let inbound = lab.instances[0].inbound;
    let name = format!("product-catalog.service.{TRUST_DOMAIN}");
    let r = curl(&[
        "--resolve",
        &format!("{name}:{}:127.0.0.1", inbound.port()),
        "--cacert",
        ca.to_str().unwrap_or_default(),
        "--cert",
        dir.join("client.pem").to_str().unwrap_or_default(),
        "--key",
        dir.join("client-key.pem").to_str().unwrap_or_default(),
        &format!("https://{name}:{}/items", inbound.port()),
    ])?;
    assert_eq!(r.status, 200, "{r:?}");

    mesh_cmd("retire-roots")?;
    wait_for(Duration::from_secs(10), "old root retired", || {
        roots(&lab) == 1
    })?;
    let at = load.count();
    wait_for(Duration::from_secs(20), "more load", || {
        load.count() > at + 100
    })?;
    let (n, failures) = load.finish()?;
    no_failures(n, &failures);
    Ok(())
}
