//! TLS listeners end to end: `meshgate run` with a `[listener.tls]` table,
//! certificates made for the test with rcgen, an origin behind the
//! gateway, and real clients: curl (HTTP/1.1 and HTTP/2), nghttp (HTTP/2)
//! and `openssl s_client` (to see which certificate was served).
//!
//! The PKI: one CA that signs `a.test` (the default certificate),
//! `*.b.test`, and a client certificate; a second CA the gateway does not
//! trust signs another client certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshgate_tests::{Gateway, Origin, Proc, bin, curl, free_port, run, tempdir, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Test certificates in a fresh directory; the gateway's config is
/// written there too, so its relative paths name these files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempdir().expect("tempdir");
        let ca = new_ca("meshgate test CA");
        write(&dir, "ca.pem", &ca.pem());
        leaf(
            &dir,
            &ca,
            "a",
            "a.test",
            &["a.test"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        leaf(
            &dir,
            &ca,
            "b",
            "wildcard.b.test",
            &["*.b.test"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        leaf(
            &dir,
            &ca,
            "client",
            "client-1",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let stranger = new_ca("some other CA");
        leaf(
            &dir,
            &stranger,
            "stranger",
            "stranger",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write test file");
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("ca key")).expect("ca cert")
}

/// Writes `<stem>.pem` and `<stem>.key`: a certificate for `names` with
/// common name `cn`, signed by `ca`. Client certificates also carry a
/// SPIFFE URI.
fn leaf(
    dir: &Path,
    ca: &CertifiedIssuer<'static, KeyPair>,
    stem: &str,
    cn: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) {
    let key = KeyPair::generate().expect("leaf key");
    let mut p = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    if usage == ExtendedKeyUsagePurpose::ClientAuth {
        let uri = format!("spiffe://meshgate.local/client/{cn}");
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().expect("ia5 uri")));
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, ca).expect("sign leaf");
    write(dir, &format!("{stem}.pem"), &cert.pem());
    write(dir, &format!("{stem}.key"), &key.serialize_pem());
}

/// A gateway with one TLS listener `edge` in front of one origin.
struct Setup {
    gw: Gateway,
    pki: Pki,
    port: u16,
    _origin: Origin,
}

/// Config text: listener `edge` with `protocols`, the `a.test` and
/// `*.b.test` certificates (cert and key files as given, so a test can
/// break them), `tls_extra` lines inside `[listener.tls]`, and one route
/// to the origin.
fn config_text(
    port: u16,
    origin: SocketAddr,
    protocols: &str,
    a: (&str, &str),
    tls_extra: &str,
) -> String {
    format!(
        r#"
[[listener]]
name = "edge"
address = "127.0.0.1:{port}"
protocols = {protocols}
limits = {{ drain_timeout = "1s" }}

[listener.tls]
certificates = [
    {{ cert = "{a_cert}", key = "{a_key}", server_names = ["a.test"] }},
    {{ cert = "b.pem", key = "b.key", server_names = ["*.b.test"] }},
]
{tls_extra}

[[route]]
name = "app"
service = "app"

[[service]]
name = "app"
endpoints = [{{ address = "{origin}" }}]

[observability]
log_level = "warn,meshgate::tls=debug"
access_log = {{ format = "off" }}
"#,
        a_cert = a.0,
        a_key = a.1,
    )
}

fn start(protocols: &str, tls_extra: &str) -> Setup {
    start_with(protocols, tls_extra, "")
}

/// Like [`start`], with `tail` appended to the config (an `[admin]` table).
fn start_with(protocols: &str, tls_extra: &str, tail: &str) -> Setup {
    let origin = Origin::start("app").expect("origin");
    let pki = Pki::new();
    let port = free_port();
    let config = pki.dir.join("meshgate.toml");
    let text = config_text(port, origin.addr, protocols, ("a.pem", "a.key"), tls_extra) + tail;
    std::fs::write(&config, text).expect("write config");
    let gw =
        Gateway::start(&config, SocketAddr::from(([127, 0, 0, 1], port))).expect("gateway starts");
    Setup {
        gw,
        pki,
        port,
        _origin: origin,
    }
}

impl Setup {
    /// curl to `https://<host>:<port><path>` with the host resolved to
    /// loopback (so SNI is `host`) and the test CA trusted.
    fn curl(
        &self,
        host: &str,
        path: &str,
        extra: &[&str],
    ) -> anyhow::Result<meshgate_tests::CurlResponse> {
        let resolve = format!("{host}:{}:127.0.0.1", self.port);
        let ca = self.pki.path("ca.pem");
        let url = format!("https://{host}:{}{path}", self.port);
        let mut args = vec!["--resolve", &resolve, "--cacert", &ca];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    /// The subject of the certificate served for `sni` (`None`: send no
    /// SNI), as `openssl s_client` prints it, without spaces.
    fn served_subject(&self, sni: Option<&str>) -> String {
        let connect = format!("127.0.0.1:{}", self.port);
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &connect]);
        match sni {
            Some(name) => cmd.args(["-servername", name]),
            None => cmd.arg("-noservername"),
        };
        cmd.stdin(std::process::Stdio::null());
        let out = run(&mut cmd, Duration::from_secs(15)).expect("openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("subject="))
            .map(|s| s.replace(' ', ""))
            .unwrap_or_else(|| {
                panic!(
                    "no subject in s_client output:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }
}

#[test]
fn h1_and_h2_over_tls_reach_the_origin() {
    let s = start_with(
        r#"["http1", "http2"]"#,
        "",
        &format!("\n[admin]\naddress = \"127.0.0.1:{}\"\n", free_port()),
    );
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let r = s.curl("a.test", "/hello?x=1", &[flag]).expect("curl");
        assert_eq!((r.status, r.version.as_str()), (200, version), "{r:?}");
        assert_eq!(r.body, "origin=app path=/hello?x=1\n");
        assert_eq!(
            r.header("x-seen-host"),
            Some(format!("a.test:{}", s.port).as_str())
        );
    }
    // Both handshakes (on our own TLS stream: no client certificates
    // here) are counted as started and completed.
    let m = s.gw.metrics().expect("metrics");
    for outcome in ["started", "completed"] {
        let n = meshgate_tests::metric(
            &m,
            "meshgate_tls_handshakes_total",
            &["listener=\"edge\"", &format!("outcome=\"{outcome}\"")],
        );
        assert_eq!(n, Some(2.0), "{outcome}: {m}");
    }
}

#[test]
fn nghttp_gets_h2_over_tls() {
    let s = start(r#"["http1", "http2"]"#, "");
    let url = format!("https://127.0.0.1:{}/from-nghttp", s.port);
    let out = run(
        Command::new("nghttp").args(["-v", &url]),
        Duration::from_secs(15),
    )
    .expect("nghttp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("The negotiated protocol: h2"), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("origin=app path=/from-nghttp"), "{text}");
}

#[test]
fn alpn_offers_only_http11_without_http2() {
    let s = start(r#"["http1"]"#, "");
    // curl offers h2 and http/1.1; the listener must pick http/1.1.
    let r = s.curl("a.test", "/", &["--http2"]).expect("curl");
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"), "{r:?}");
}

#[test]
fn sni_picks_the_certificate_and_falls_back_to_the_first() {
    let s = start(r#"["http1", "http2"]"#, "");
    // curl checks the served certificate against the name it asked for,
    // so success means the right certificate came back.
    for host in ["a.test", "x.b.test", "deeper.x.b.test"] {
        let r = s.curl(host, "/", &[]);
        if host == "deeper.x.b.test" {
            // `*.b.test` is chosen (longest wildcard) but covers one label
            // only: the client refuses it, as it should.
            let e = r.expect_err("a one-label wildcard must not verify two labels");
            assert!(
                e.to_string()
                    .contains("no alternative certificate subject name matches"),
                "{e}"
            );
        } else {
            let r = r.unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(r.status, 200, "{host}: {r:?}");
        }
    }
    assert_eq!(s.served_subject(Some("a.test")), "CN=a.test");
    assert_eq!(s.served_subject(Some("x.b.test")), "CN=wildcard.b.test");
    assert_eq!(s.served_subject(Some("X.B.TEST")), "CN=wildcard.b.test");
    // No match, and no SNI at all: the first certificate.
    assert_eq!(s.served_subject(Some("other.test")), "CN=a.test");
    assert_eq!(s.served_subject(None), "CN=a.test");
    // An IP URL sends no SNI; the default certificate still serves it.
    let url = format!("https://127.0.0.1:{}/ip", s.port);
    let r = curl(&["-k", &url]).expect("curl without SNI");
    assert_eq!(r.status, 200);
}

/// What `openssl s_client -tls1_3 ARGS` prints of a handshake with the
/// listener on `port`.
fn s_client_tls13(port: u16, args: &[&str]) -> String {
    let connect = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &connect, "-tls1_3"]);
    cmd.args(args);
    cmd.stdin(std::process::Stdio::null());
    let out = run(&mut cmd, Duration::from_secs(15)).expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_server_picks_the_cipher_suite() {
    let s = start(r#"["http1", "http2"]"#, "");
    let negotiated = |suites: &str| {
        let text = s_client_tls13(s.port, &["-ciphersuites", suites]);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Cipher    : "))
            .or_else(|| {
                text.lines()
                    .find_map(|l| l.split_once(", Cipher is ").map(|(_, c)| c))
            })
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no cipher in s_client output:\n{text}"))
    };
    // The client lists AES-256 first; the server's order wins.
    assert_eq!(
        negotiated("TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"),
        "TLS_AES_128_GCM_SHA256"
    );
    // A client without AES-128 still gets its other choices.
    assert_eq!(
        negotiated("TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"),
        "TLS_AES_256_GCM_SHA384"
    );
    assert_eq!(
        negotiated("TLS_CHACHA20_POLY1305_SHA256"),
        "TLS_CHACHA20_POLY1305_SHA256"
    );
}

/// Edge listeners do X25519 with aws-lc and the NIST curves with ring
/// (`tls::edge_provider`): a client offering only one of them completes
/// the handshake on it.
#[test]
fn each_key_exchange_group_completes_a_handshake() {
    let s = start(r#"["http1", "http2"]"#, "");
    for (group, temp_key) in [
        ("X25519", "X25519, 253 bits"),
        ("P-256", "ECDH, prime256v1, 256 bits"),
        ("P-384", "ECDH, secp384r1, 384 bits"),
    ] {
        let text = s_client_tls13(s.port, &["-groups", group]);
        let got = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Server Temp Key: "))
            .unwrap_or_else(|| panic!("no key exchange with {group}:\n{text}"));
        assert_eq!(got, temp_key, "{group}");
    }
}

/// Sessions resume from stateless tickets (`tls::listener_tls`): a session
/// a client saved still resumes after hundreds of other clients' full
/// handshakes, each given two tickets, which would have pushed it out of
/// rustls's default cache of 256 sessions.
#[test]
fn a_session_resumes_after_many_other_handshakes() {
    let s = start(r#"["http1", "http2"]"#, "");
    let dir = tempdir().expect("tempdir");
    let session = dir.join("session.pem");
    let connect = format!("127.0.0.1:{}", s.port);
    // One request and the server's close, so that s_client reads the
    // tickets that follow the handshake before it quits.
    let handshake = |sess_arg: &str| {
        let script = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect {connect} \
             -tls1_3 -ign_eof {sess_arg} {}",
            session.display()
        );
        let out = run(
            Command::new("sh").args(["-c", &script]),
            Duration::from_secs(15),
        )
        .expect("openssl s_client");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = handshake("-sess_out");
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let saved = run(
        Command::new("openssl")
            .args(["sess_id", "-noout", "-text", "-in"])
            .arg(&session),
        Duration::from_secs(15),
    )
    .expect("openssl sess_id");
    let saved = String::from_utf8_lossy(&saved.stdout);
    // A stateless ticket: rustls's rotating key lasts 6 hours and its
    // tickets twice that (a cached session's ticket says 24 hours).
    assert!(
        saved.contains("TLS session ticket lifetime hint: 43200"),
        "{saved}"
    );

    // Each s_time connection is a full handshake that gets two tickets:
    // 150 of them make 300 sessions, more than the default cache holds.
    let (mut others, deadline) = (0u64, std::time::Instant::now() + Duration::from_secs(90));
    while others < 150 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {others} other handshakes in 90 s"
        );
        let out = run(
            Command::new("openssl").args([
                "s_time", "-connect", &connect, "-new", "-www", "/", "-time", "2",
            ]),
            Duration::from_secs(30),
        )
        .expect("openssl s_time");
        let text = String::from_utf8_lossy(&out.stdout);
        others += text
            .lines()
            .find_map(|l| {
                l.split_once(" connections in ")
                    .map(|(n, _)| n.trim().parse::<u64>().ok())
            })
            .flatten()
            .unwrap_or_else(|| panic!("no connection count from s_time:\n{text}"));
    }

    let again = handshake("-sess_in");
    assert!(again.contains("Reused, TLSv1.3"), "{again}");
    assert!(again.contains("HTTP/1.1 200"), "{again}");
}

#[test]
fn min_version_13_refuses_tls12() {
    let strict = start(r#"["http1", "http2"]"#, r#"min_version = "1.3""#);
    let e = strict
        .curl("a.test", "/", &["--tlsv1.2", "--tls-max", "1.2"])
        .expect_err("TLS 1.2 must be refused");
    assert!(
        e.to_string().contains("alert protocol version"),
        "the protocol_version alert, not another failure: {e}"
    );
    for flag in ["--http1.1", "--http2"] {
        let r = strict
            .curl("a.test", "/", &["--tlsv1.3", flag])
            .expect("TLS 1.3");
        assert_eq!(r.status, 200);
    }
    // The wildcard certificate is held to the same floor.
    strict
        .curl("x.b.test", "/", &["--tlsv1.2", "--tls-max", "1.2"])
        .expect_err("TLS 1.2 must be refused for every certificate");

    // The default floor is 1.2: the same client gets through.
    let lenient = start(r#"["http1", "http2"]"#, "");
    for host in ["a.test", "x.b.test"] {
        let r = lenient
            .curl(host, "/", &["--tlsv1.2", "--tls-max", "1.2"])
            .expect("TLS 1.2 with the default min_version");
        assert_eq!(r.status, 200);
    }
}

/// Checks that curl failed in the TLS exchange rather than for another
/// reason (such as not finding its own files). Over TLS 1.2 the server
/// refuses a client certificate inside the handshake, so curl reads the
/// alert. Over TLS 1.3 the client has finished its handshake and sent the
/// request when the server refuses; the server closes with the request
/// unread, the kernel answers with a reset, and curl may see the reset
/// before the alert.
fn assert_refused(e: &anyhow::Error, tls12: bool) {
    let msg = e.to_string();
    if tls12 {
        assert!(msg.contains("alert"), "a TLS alert: {msg}");
    } else {
        assert!(
            ["curl: (35)", "curl: (55)", "curl: (56)"]
                .iter()
                .any(|c| msg.contains(c)),
            "a TLS or connection failure after connecting: {msg}"
        );
    }
}

#[test]
fn required_client_certificate() {
    let s = start_with(
        r#"["http1", "http2"]"#,
        r#"client_auth = { mode = "require", ca = "ca.pem" }"#,
        &format!("\n[admin]\naddress = \"127.0.0.1:{}\"\n", free_port()),
    );
    let (cert, key) = (s.pki.path("client.pem"), s.pki.path("client.key"));
    let (stranger_cert, stranger_key) = (s.pki.path("stranger.pem"), s.pki.path("stranger.key"));
    for (tls12, versions) in [(false, &[][..]), (true, &["--tls-max", "1.2"][..])] {
        let e = s
            .curl("a.test", "/", versions)
            .expect_err("no client certificate");
        assert_refused(&e, tls12);

        for flag in ["--http1.1", "--http2"] {
            let mut args = versions.to_vec();
            args.extend([flag, "--cert", &cert, "--key", &key]);
            let r = s
                .curl("a.test", "/mtls", &args)
                .expect("with a client certificate");
            assert_eq!(r.status, 200);
            assert_eq!(r.body, "origin=app path=/mtls\n");
        }

        let mut args = versions.to_vec();
        args.extend(["--cert", &stranger_cert, "--key", &stranger_key]);
        let e = s
            .curl("a.test", "/", &args)
            .expect_err("a certificate from an untrusted CA");
        assert_refused(&e, tls12);
    }

    // The verified identity reaches the connection's TLS digest.
    wait_for(
        Duration::from_secs(5),
        "the client identity log line",
        || {
            let log = s.gw.proc.stderr();
            log.contains("client certificate verified")
                && log.contains("CN=client-1")
                && log.contains("spiffe://meshgate.local/client/client-1")
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.proc.stderr()));

    // Four handshakes completed; the four refused ones started and did
    // not complete, the strangers' with their reason.
    let m = s.gw.metrics().expect("metrics");
    let n = |labels: &[&str]| meshgate_tests::metric(&m, labels[0], &labels[1..]).unwrap_or(-1.0);
    let tls = "meshgate_tls_handshakes_total";
    let completed = n(&[tls, "listener=\"edge\"", "outcome=\"completed\""]);
    let started = n(&[tls, "listener=\"edge\"", "outcome=\"started\""]);
    assert_eq!(completed, 4.0, "{m}");
    assert_eq!(started - completed, 4.0, "{m}");
    assert_eq!(
        n(&[
            "meshgate_tls_handshake_failures_total",
            "listener=\"edge\"",
            "reason=\"client-cert-unknown-ca\""
        ]),
        2.0,
        "{m}"
    );
}

#[test]
fn optional_client_certificate() {
    let s = start(
        r#"["http1", "http2"]"#,
        r#"client_auth = { mode = "optional", ca = "ca.pem" }"#,
    );
    let (cert, key) = (s.pki.path("client.pem"), s.pki.path("client.key"));
    let (stranger_cert, stranger_key) = (s.pki.path("stranger.pem"), s.pki.path("stranger.key"));
    for (tls12, versions) in [(false, &[][..]), (true, &["--tls-max", "1.2"][..])] {
        let r = s
            .curl("a.test", "/anon", versions)
            .expect("without a certificate");
        assert_eq!(r.status, 200);

        let mut args = versions.to_vec();
        args.extend(["--cert", &cert, "--key", &key]);
        let r = s
            .curl("a.test", "/mtls", &args)
            .expect("with a client certificate");
        assert_eq!(r.status, 200);

        // Optional still verifies what is sent.
        let mut args = versions.to_vec();
        args.extend(["--cert", &stranger_cert, "--key", &stranger_key]);
        let e = s
            .curl("a.test", "/", &args)
            .expect_err("a certificate from an untrusted CA");
        assert_refused(&e, tls12);
    }
}

/// Runs `meshgate run` on a config whose `a.test` entry uses `cert` and
/// `key`, expects it to exit non-zero without serving, and returns the one
/// `error:` line it printed.
fn start_up_error(cert: &str, key: &str, prepare: impl FnOnce(&Pki)) -> String {
    let pki = Pki::new();
    prepare(&pki);
    let port = free_port();
    let origin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = pki.dir.join("meshgate.toml");
    let text = config_text(port, origin, r#"["http1", "http2"]"#, (cert, key), "");
    std::fs::write(&config, text).expect("write config");
    let mut cmd = Command::new(bin("meshgate"));
    cmd.args(["run", "--threads", "1", "--config"]).arg(&config);
    let mut proc = Proc::spawn(cmd).expect("spawn");
    let code = proc.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    // The output threads may still be copying the last line.
    wait_for(Duration::from_secs(5), "the error line", || {
        proc.stderr().contains("error:")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.stderr()));
    let stderr = proc.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_owned()
}

#[test]
fn key_that_does_not_match_its_certificate_stops_start_up() {
    let line = start_up_error("a.pem", "b.key", |_| {});
    assert!(line.starts_with("error: listener \"edge\": "), "{line}");
    assert!(
        line.contains("b.key does not match the certificate in"),
        "{line}"
    );
    assert!(line.contains("a.pem"), "{line}");
}

#[test]
fn certificate_that_is_not_x509_stops_start_up() {
    // Valid PEM (so the config check passes) around bytes that are no
    // certificate.
    let line = start_up_error("junk.pem", "a.key", |pki| {
        write(
            &pki.dir,
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
    });
    assert!(
        line.starts_with("error: listener \"edge\": certificate file "),
        "{line}"
    );
    assert!(line.contains("junk.pem"), "{line}");
}

#[test]
fn renewed_certificates_are_served_after_sighup_without_a_restart() {
    let s = start(r#"["http1", "http2"]"#, "");
    assert_eq!(s.served_subject(Some("a.test")), "CN=a.test");
    // Renew a.test in place (same paths, new key and common name), as an
    // ACME client would, and signal a reload.
    let ca_dir = tempdir().expect("tempdir");
    let ca = new_ca("renewal CA");
    leaf(
        &ca_dir,
        &ca,
        "a",
        "a.test-renewed",
        &["a.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    for f in ["a.pem", "a.key"] {
        std::fs::copy(ca_dir.join(f), s.pki.dir.join(f)).expect("copy renewed file");
    }
    s.gw.proc.signal("HUP").expect("SIGHUP");
    wait_for(Duration::from_secs(10), "the renewed certificate", || {
        s.served_subject(Some("a.test")) == "CN=a.test-renewed"
    })
    .expect("renewed certificate served");
    // A broken renewal is refused and the last good certificate stays.
    std::fs::write(s.pki.dir.join("a.key"), "not a key").expect("break key");
    s.gw.proc.signal("HUP").expect("SIGHUP");
    wait_for(
        Duration::from_secs(10),
        "the rejection to be logged",
        || s.gw.proc.stderr().contains("config reload rejected"),
    )
    .expect("bad renewal rejected");
    assert_eq!(s.served_subject(Some("a.test")), "CN=a.test-renewed");
    assert_eq!(s.served_subject(Some("x.b.test")), "CN=wildcard.b.test");
}

#[test]
fn put_config_swaps_listener_certificates_like_a_reload() {
    let origin = Origin::start("app").expect("origin");
    let pki = Pki::new();
    let port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let token = "tls-test-admin-token-0123456789";
    let head = format!("[admin]\naddress = \"{admin}\"\ntoken = \"{token}\"\n");
    let protocols = r#"["http1", "http2"]"#;
    let config = pki.dir.join("meshgate.toml");
    let text = config_text(port, origin.addr, protocols, ("a.pem", "a.key"), "");
    std::fs::write(&config, format!("{head}{text}")).expect("write config");
    let gw =
        Gateway::start(&config, SocketAddr::from(([127, 0, 0, 1], port))).expect("gateway starts");
    let s = Setup {
        gw,
        pki,
        port,
        _origin: origin,
    };
    assert_eq!(s.served_subject(Some("a.test")), "CN=a.test");

    // A new certificate under new file names, applied through the admin
    // API (relative paths resolve from the started config's directory).
    let ca = new_ca("admin CA");
    leaf(
        &s.pki.dir,
        &ca,
        "a2",
        "a.test-from-admin",
        &["a.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let text = config_text(port, s._origin.addr, protocols, ("a2.pem", "a2.key"), "");
    let body = s.pki.dir.join("put-body.toml");
    std::fs::write(&body, format!("{head}{text}")).expect("write body");
    let auth = format!("authorization: Bearer {token}");
    let data = format!("@{}", body.display());
    let r = curl(&[
        "-X",
        "PUT",
        "-H",
        &auth,
        "--data-binary",
        &data,
        &format!("http://{admin}/config"),
    ])
    .expect("PUT /config");
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(Duration::from_secs(10), "the certificate from PUT", || {
        s.served_subject(Some("a.test")) == "CN=a.test-from-admin"
    })
    .expect("certificate from PUT /config served");
    assert_eq!(s.served_subject(Some("x.b.test")), "CN=wildcard.b.test");
}
