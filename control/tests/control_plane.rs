//! The control plane and its client over real TLS on loopback: joins,
//! pushes, refusals, expiry, restarts, the state file and renewal.
//!
//! A test CA made here with rcgen stands in for the mesh CA; it signs the
//! control plane's own certificate and every workload CSR. Heartbeats are
//! 100 ms with a 500 ms timeout: expiry is quick to observe, and a busy
//! machine still has room to deliver heartbeats in time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshgate_control::{
    ClientOptions, ControlPlane, Event, Instance, KeyGenerator, NewKey, ServerOptions, SignedCert,
    Signer, run_client,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// How long any awaited condition may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);
const CONTROL_NAME: &str = "control.mesh.test";
const TRUST_DOMAIN: &str = "test.local";

const CONFIG: &str = r#"
[admin]
address = "127.0.0.1:9901"

[mesh]
trust_domain = "test.local"
ca_key_file = "/etc/meshgate/ca.key"

[[service]]
name = "product-catalog"
discovery = "mesh"

[[service]]
name = "user-account"
endpoints = [{ address = "127.0.0.1:9201" }]
"#;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA that signs whatever CSR it is given, for `ttl`, naming the
/// service's SPIFFE ID.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    bundle: Mutex<String>,
    ttl: Duration,
}

impl TestCa {
    fn new(ttl: Duration) -> Arc<Self> {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "meshgate test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        let ca_pem = cert.pem();
        Arc::new(Self {
            issuer: Issuer::new(params, key),
            bundle: Mutex::new(ca_pem.clone()),
            ca_pem,
            ttl,
        })
    }

    /// The control plane's own TLS config: a certificate for
    /// [`CONTROL_NAME`] from this CA.
    fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec![CONTROL_NAME.to_owned()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        Arc::new(config)
    }

    /// A sidecar's TLS config, trusting this CA.
    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.ca_pem.as_bytes()).expect("CA PEM");
        roots
            .add(CertificateDer::from(pem.contents))
            .expect("CA root");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    fn rotate_bundle(&self, bundle: String) {
        *self.bundle.lock().expect("bundle lock") = bundle;
    }
}

impl Signer for TestCa {
    fn sign(&self, service: &str, csr_pem: &str) -> Result<SignedCert, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("not a valid CSR: {e}"))?;
        let identity = format!("spiffe://{TRUST_DOMAIN}/service/{service}");
        let uri = identity.clone().try_into().map_err(|e| format!("{e}"))?;
        csr.params.subject_alt_names = vec![SanType::URI(uri)];
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let not_before = UNIX_EPOCH + Duration::from_secs(now);
        let not_after = not_before + self.ttl;
        let start = i64::try_from(now).expect("time");
        let end = start + i64::try_from(self.ttl.as_secs()).expect("ttl");
        csr.params.not_before =
            time::OffsetDateTime::from_unix_timestamp(start).map_err(|e| e.to_string())?;
        csr.params.not_after =
            time::OffsetDateTime::from_unix_timestamp(end).map_err(|e| e.to_string())?;
        let cert = csr.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        Ok(SignedCert {
            identity,
            chain_pem: cert.pem(),
            not_before,
            not_after,
        })
    }

    fn trust_bundle_pem(&self) -> String {
        self.bundle.lock().expect("bundle lock").clone()
    }
}

fn new_key() -> KeyGenerator {
    Arc::new(|| {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let csr = CertificateParams::new(Vec::<String>::new())
            .and_then(|params| params.serialize_request(&key))
            .and_then(|csr| csr.pem())
            .map_err(|e| e.to_string())?;
        Ok(NewKey {
            key_pem: key.serialize_pem(),
            csr_pem: csr,
        })
    })
}

fn fast_options() -> ServerOptions {
    ServerOptions {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(500),
        ..ServerOptions::default()
    }
}

/// A control plane serving on loopback.
struct Server {
    plane: Arc<ControlPlane>,
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(ca: &Arc<TestCa>, opts: ServerOptions, bind: &str) -> Self {
        let plane = ControlPlane::new(ca.clone(), opts);
        plane.set_config(CONFIG).expect("config");
        let listener = TcpListener::bind(bind).await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let task = tokio::spawn(plane.clone().serve(listener, ca.server_tls()));
        Self {
            plane,
            address,
            task,
        }
    }

    /// Stops serving and closes every connection, as a crash would.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

struct Client {
    task: JoinHandle<()>,
    events: mpsc::Receiver<Event>,
}

impl Client {
    fn start(ca: &TestCa, server: SocketAddr, configure: impl FnOnce(&mut ClientOptions)) -> Self {
        let mut opts = ClientOptions::new(
            CONTROL_NAME,
            ca.client_tls(),
            "product-catalog",
            "127.0.0.1:19101".parse().expect("address"),
        );
        opts.address = server.to_string();
        opts.backoff_min = Duration::from_millis(50);
        opts.backoff_max = Duration::from_millis(400);
        configure(&mut opts);
        let (tx, events) = mpsc::channel(64);
        Self {
            task: tokio::spawn(run_client(opts, new_key(), tx)),
            events,
        }
    }

    /// The next event `pick` accepts, skipping the others.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let found = timeout(WAIT, async {
            loop {
                let event = self.events.recv().await.expect("the client runs");
                if let Some(found) = pick(event) {
                    return found;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    async fn connected(&mut self) -> String {
        self.next("Connected", |e| match e {
            Event::Connected { identity } => Some(identity),
            _ => None,
        })
        .await
    }

    async fn certificate(&mut self) -> Cert {
        self.next("Certificate", |e| match e {
            Event::Certificate {
                key_pem,
                chain_pem,
                trust_bundle_pem,
                not_before,
                not_after,
            } => Some(Cert {
                key_pem,
                chain_pem,
                trust_bundle_pem,
                not_before,
                not_after,
            }),
            _ => None,
        })
        .await
    }

    /// The next config whose product-catalog endpoints satisfy `accept`.
    async fn config_where(&mut self, what: &str, accept: impl Fn(&[String]) -> bool) -> Config {
        self.next(what, |e| match e {
            Event::Config {
                epoch,
                version,
                config,
            } => {
                let endpoints = catalog_endpoints(&config);
                accept(&endpoints).then_some(Config {
                    epoch,
                    version,
                    text: config,
                })
            }
            _ => None,
        })
        .await
    }

    async fn disconnected(&mut self) -> String {
        self.next("Disconnected", |e| match e {
            Event::Disconnected { error } => Some(error),
            _ => None,
        })
        .await
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

struct Cert {
    key_pem: String,
    chain_pem: String,
    trust_bundle_pem: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

#[derive(Debug)]
struct Config {
    epoch: u64,
    version: u64,
    text: String,
}

/// The addresses the rendered config lists for product-catalog.
fn catalog_endpoints(config: &str) -> Vec<String> {
    let config: toml::Table = config.parse().expect("the update is TOML");
    let services = config["service"].as_array().expect("services");
    let catalog = services
        .iter()
        .find(|s| s["name"].as_str() == Some("product-catalog"))
        .expect("product-catalog is rendered");
    catalog["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["address"].as_str().expect("address").to_owned())
        .collect()
}

/// Waits until the registry satisfies `accept`.
async fn registry_where(plane: &ControlPlane, what: &str, accept: impl Fn(&[Instance]) -> bool) {
    let mut changes = plane.watch();
    let reached = timeout(WAIT, async {
        while !accept(&plane.instances()) {
            changes.changed().await.expect("the control plane lives");
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "timed out waiting for {what}; registry: {:?}",
        plane.instances()
    );
}

fn addresses(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(|i| i.address.to_string()).collect()
}

/// Checks that `chain_pem` certifies `key_pem`'s public key for `identity`,
/// issued by the test CA.
fn assert_certifies(chain_pem: &str, key_pem: &str, identity: &str) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).expect("chain PEM");
    let cert = pem.parse_x509().expect("certificate");
    let key = KeyPair::from_pem(key_pem).expect("key PEM");
    assert_eq!(
        &cert.public_key().subject_public_key.data[..],
        key.public_key_raw(),
        "the certificate is for the key whose CSR was sent"
    );
    assert!(cert.issuer().to_string().contains("meshgate test CA"));
    let sans = cert
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("has SANs");
    let uris: Vec<String> = sans
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![identity.to_owned()]);
}

#[tokio::test]
async fn a_sidecar_joins_and_gets_its_certificate_and_config() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let server = Server::start(&ca, fast_options(), "127.0.0.1:0").await;
    let mut client = Client::start(&ca, server.address, |o| {
        o.labels = BTreeMap::from([("version".to_owned(), "v1".to_owned())]);
    });

    let identity = client.connected().await;
    assert_eq!(identity, "spiffe://test.local/service/product-catalog");

    let cert = client.certificate().await;
    assert_certifies(&cert.chain_pem, &cert.key_pem, &identity);
    assert_eq!(cert.trust_bundle_pem, ca.ca_pem);
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .expect("ordered");
    assert_eq!(lifetime, Duration::from_secs(3600));

    let config = client
        .config_where("the config listing this instance", |e| {
            e == ["127.0.0.1:19101"]
        })
        .await;
    assert_eq!(config.epoch, server.plane.epoch());
    assert!(
        config
            .text
            .contains(&format!("update {} of epoch", config.version)),
        "{}",
        config.text
    );
    assert!(
        !config.text.contains("ca_key_file") && !config.text.contains("[admin]"),
        "{}",
        config.text
    );
    assert!(config.text.contains("mesh-product-catalog"));

    let instances = server.plane.instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].service, "product-catalog");
    assert_eq!(instances[0].identity, identity);
    assert_eq!(instances[0].labels["version"], "v1");

    client.stop().await;
    server.kill().await;
}

#[tokio::test]
async fn a_second_instance_is_pushed_to_the_first() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let server = Server::start(&ca, fast_options(), "127.0.0.1:0").await;
    let mut first = Client::start(&ca, server.address, |_| {});
    let alone = first
        .config_where("the first instance alone", |e| e == ["127.0.0.1:19101"])
        .await;

    let mut second = Client::start(&ca, server.address, |o| {
        o.address_for_peers = "127.0.0.1:19102".parse().expect("address");
    });
    let both = ["127.0.0.1:19101", "127.0.0.1:19102"];
    let pushed = first
        .config_where("an update with both instances", |e| e == both)
        .await;
    assert!(pushed.version > alone.version);
    assert_eq!(pushed.epoch, alone.epoch);
    second
        .config_where("the second instance's config", |e| e == both)
        .await;

    first.stop().await;
    second.stop().await;
    server.kill().await;
}

#[tokio::test]
async fn a_wrong_token_or_unknown_service_is_refused_with_a_clear_message() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let opts = ServerOptions {
        join_token: Some("s3cret".into()),
        ..fast_options()
    };
    let server = Server::start(&ca, opts, "127.0.0.1:0").await;

    let mut wrong = Client::start(&ca, server.address, |o| {
        o.join_token = Some("guess".into());
    });
    let error = wrong.disconnected().await;
    assert_eq!(error, "the control plane refused: the join token is wrong");
    // Refusals are retried, and refused again.
    let again = wrong.disconnected().await;
    assert_eq!(again, error);
    wrong.stop().await;

    let mut none = Client::start(&ca, server.address, |_| {});
    let error = none.disconnected().await;
    assert_eq!(error, "the control plane refused: the join token is wrong");
    none.stop().await;

    let mut unknown = Client::start(&ca, server.address, |o| {
        o.join_token = Some("s3cret".into());
        o.service = "user-account".into();
    });
    let error = unknown.disconnected().await;
    assert!(
        error.contains("service `user-account` is not a mesh service")
            && error.contains("discovery = \"mesh\""),
        "{error}"
    );
    unknown.stop().await;
    assert!(server.plane.instances().is_empty());

    let mut right = Client::start(&ca, server.address, |o| {
        o.join_token = Some("s3cret".into());
    });
    right.connected().await;
    assert_eq!(server.plane.instances().len(), 1);
    right.stop().await;
    server.kill().await;
}

#[tokio::test]
async fn a_closed_connection_removes_its_instance_and_peers_hear_of_it() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let server = Server::start(&ca, fast_options(), "127.0.0.1:0").await;
    let mut stays = Client::start(&ca, server.address, |_| {});
    let mut leaves = Client::start(&ca, server.address, |o| {
        o.address_for_peers = "127.0.0.1:19102".parse().expect("address");
    });
    leaves.connected().await;
    stays.config_where("both instances", |e| e.len() == 2).await;

    let mut changes = server.plane.watch();
    changes.borrow_and_update();
    leaves.stop().await;
    timeout(WAIT, changes.changed())
        .await
        .expect("the watch bumps")
        .expect("the control plane lives");
    registry_where(&server.plane, "the closed instance to go", |i| {
        addresses(i) == ["127.0.0.1:19101"]
    })
    .await;
    stays
        .config_where("an update without the closed instance", |e| {
            e == ["127.0.0.1:19101"]
        })
        .await;

    stays.stop().await;
    server.kill().await;
}

/// A raw TLS connection to the control plane, speaking frames by hand.
struct RawSidecar {
    lines: tokio::io::Lines<
        BufReader<tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>>,
    >,
    writer: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl RawSidecar {
    async fn connect(ca: &TestCa, server: SocketAddr) -> Self {
        let tcp = TcpStream::connect(server).await.expect("connect");
        let name = ServerName::try_from(CONTROL_NAME).expect("name");
        let tls = tokio_rustls::TlsConnector::from(ca.client_tls())
            .connect(name, tcp)
            .await
            .expect("TLS");
        let (read, writer) = tokio::io::split(tls);
        Self {
            lines: BufReader::new(read).lines(),
            writer,
        }
    }

    async fn send_line(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
    }

    /// The next frame, parsed, or `None` once the server has closed.
    async fn next(&mut self) -> Option<serde_json::Value> {
        let line = timeout(WAIT, self.lines.next_line())
            .await
            .expect("a frame or the end in time")
            .ok()??;
        Some(serde_json::from_str(&line).expect("frames are JSON"))
    }
}

#[tokio::test]
async fn a_silent_instance_is_removed_after_the_heartbeat_timeout() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let server = Server::start(&ca, fast_options(), "127.0.0.1:0").await;
    let mut raw = RawSidecar::connect(&ca, server.address).await;
    let key = new_key()().expect("key");
    let join = serde_json::json!({
        "type": "join",
        "token": null,
        "service": "product-catalog",
        "labels": { "version": "v2" },
        "address": "127.0.0.1:19501",
        "csr": key.csr_pem,
    });
    raw.send_line(&join.to_string()).await;
    let kinds: Vec<String> = [raw.next().await, raw.next().await, raw.next().await]
        .into_iter()
        .map(|f| {
            f.expect("a frame")["type"]
                .as_str()
                .expect("type")
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["joined", "certificate", "update"]);
    let joined_at = Instant::now();
    assert_eq!(addresses(&server.plane.instances()), ["127.0.0.1:19501"]);

    // No heartbeat from here on.
    registry_where(&server.plane, "the silent instance to go", |i| i.is_empty()).await;
    assert!(
        joined_at.elapsed() >= Duration::from_millis(450),
        "removed after the timeout, not before ({:?})",
        joined_at.elapsed()
    );
    let error = raw.next().await.expect("an error frame");
    assert_eq!(error["type"], "error");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("heartbeat timeout"), "{message}");
    assert!(raw.next().await.is_none(), "then the server closes");
    server.kill().await;
}

#[tokio::test]
async fn garbage_is_answered_with_an_error_frame_and_closed() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let server = Server::start(&ca, fast_options(), "127.0.0.1:0").await;

    let mut raw = RawSidecar::connect(&ca, server.address).await;
    raw.send_line("hello").await;
    let error = raw.next().await.expect("an error frame");
    assert_eq!(error["type"], "error");
    let message = error["message"].as_str().expect("message");
    assert!(message.starts_with("malformed frame"), "{message}");
    assert!(raw.next().await.is_none());

    let mut raw = RawSidecar::connect(&ca, server.address).await;
    raw.send_line(r#"{"type":"heartbeat"}"#).await;
    let error = raw.next().await.expect("an error frame");
    assert_eq!(
        error["message"].as_str(),
        Some("expected a join frame first, got heartbeat")
    );

    let mut raw = RawSidecar::connect(&ca, server.address).await;
    let join = serde_json::json!({
        "type": "join", "token": null, "service": "product-catalog",
        "address": "127.0.0.1:19502", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nnope\n",
    });
    raw.send_line(&join.to_string()).await;
    let error = raw.next().await.expect("an error frame");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "cannot issue a certificate for service `product-catalog`: not a valid CSR"
        ),
        "{message}"
    );
    assert!(server.plane.instances().is_empty());
    server.kill().await;
}

#[tokio::test]
async fn the_client_reconnects_to_a_restarted_control_plane() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let first = Server::start(&ca, fast_options(), "127.0.0.1:0").await;
    let address = first.address;
    let mut client = Client::start(&ca, address, |_| {});
    let before = client.config_where("a config", |e| e.len() == 1).await;
    assert_eq!(before.epoch, first.plane.epoch());

    first.kill().await;
    let error = client.disconnected().await;
    assert!(!error.is_empty());

    let second = Server::start(&ca, fast_options(), &address.to_string()).await;
    client.connected().await;
    let after = client
        .config_where("a config from the new control plane", |e| e.len() == 1)
        .await;
    assert_eq!(after.epoch, second.plane.epoch());
    assert_ne!(after.epoch, before.epoch, "a restart shows as a new epoch");

    client.stop().await;
    second.kill().await;
}

#[tokio::test]
async fn the_state_file_carries_the_registry_across_a_restart() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let state_file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "meshgate-control-registry-{}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&state_file);
    let opts = ServerOptions {
        state_file: Some(state_file.clone()),
        heartbeat_timeout: Duration::from_secs(1),
        ..fast_options()
    };
    let first = Server::start(&ca, opts.clone(), "127.0.0.1:0").await;
    let address = first.address;
    let mut returns = Client::start(&ca, address, |_| {});
    let gone = Client::start(&ca, address, |o| {
        o.address_for_peers = "127.0.0.1:19102".parse().expect("address");
    });
    returns
        .config_where("both instances", |e| e.len() == 2)
        .await;
    // Saving happens off the connection tasks; wait for it.
    let saved = timeout(WAIT, async {
        loop {
            let text = std::fs::read_to_string(&state_file).unwrap_or_default();
            if text.contains("127.0.0.1:19101") && text.contains("127.0.0.1:19102") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(saved.is_ok(), "the registry reaches the state file");

    first.kill().await;
    gone.stop().await;

    let second = Server::start(&ca, opts, &address.to_string()).await;
    assert_eq!(
        addresses(&second.plane.instances()),
        ["127.0.0.1:19101", "127.0.0.1:19102"],
        "the saved instances are there before anyone reconnects"
    );
    assert!(
        second
            .plane
            .instances()
            .iter()
            .all(|i| i.identity == "spiffe://test.local/service/product-catalog")
    );

    // The instance that comes back stays; the one that does not is removed
    // one heartbeat timeout after the start.
    returns.connected().await;
    registry_where(&second.plane, "only the returning instance", |i| {
        addresses(i) == ["127.0.0.1:19101"]
    })
    .await;
    returns
        .config_where("an update without the gone instance", |e| {
            e == ["127.0.0.1:19101"]
        })
        .await;

    returns.stop().await;
    second.kill().await;
    let _ = std::fs::remove_file(&state_file);
}

#[tokio::test]
async fn the_certificate_is_renewed_at_half_life_with_a_new_key() {
    let ca = TestCa::new(Duration::from_secs(2));
    let server = Server::start(&ca, fast_options(), "127.0.0.1:0").await;
    let mut client = Client::start(&ca, server.address, |_| {});
    let identity = client.connected().await;
    let first = client.certificate().await;
    let second = client.certificate().await;
    assert_ne!(second.chain_pem, first.chain_pem);
    assert_ne!(second.key_pem, first.key_pem, "renewal uses a fresh key");
    assert_certifies(&second.chain_pem, &second.key_pem, &identity);
    assert!(second.not_after >= first.not_after);
    // Heartbeats kept the instance registered all along.
    assert_eq!(server.plane.instances().len(), 1);

    client.stop().await;
    server.kill().await;
}

#[tokio::test]
async fn a_rotated_trust_bundle_is_pushed_with_the_same_certificate() {
    let ca = TestCa::new(Duration::from_secs(3600));
    let server = Server::start(&ca, fast_options(), "127.0.0.1:0").await;
    let mut client = Client::start(&ca, server.address, |_| {});
    let first = client.certificate().await;

    let rotated = format!(
        "{}{}",
        ca.ca_pem, "-----BEGIN CERTIFICATE-----\nnext root\n"
    );
    ca.rotate_bundle(rotated.clone());
    server.plane.trust_bundle_changed();
    let again = client.certificate().await;
    assert_eq!(again.trust_bundle_pem, rotated);
    assert_eq!(again.chain_pem, first.chain_pem);
    assert_eq!(again.key_pem, first.key_pem);

    client.stop().await;
    server.kill().await;
}
