//! The demo directory: the config and every file it names, made fresh on
//! each start.
//!
//! `config/examples/seed.toml` is the one documented demo config. Its
//! relative paths (`jwks.json`, `tls/...`, `join-token`, `state`) name
//! public example files next to it; the demo writes the same file into its
//! own directory, where the same names hold freshly generated keys, a
//! certificate authority and a join token. So the seed needs no rewriting
//! (only the plain listener's address, when `--listen` moves it), and what
//! `meshgate check config/examples/seed.toml` accepts is what the demo runs.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use meshgate_config::Snapshot;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use super::DemoError;
use super::issuer;

/// The seed config, as shipped.
pub(crate) const SEED: &str = include_str!("../../../config/examples/seed.toml");
/// The seed's plain listener line, which `--listen` replaces.
const SEED_LISTEN_LINE: &str = "address = \"127.0.0.1:8080\"";
/// Marks a directory as made by `meshgate demo`, so that clearing its
/// state and logs can never touch a directory the user chose for
/// something else.
const MARKER: &str = ".meshgate-demo";

/// Where everything lives in the demo directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The directory, absolute.
    pub(crate) dir: PathBuf,
}

impl Layout {
    pub(crate) fn config(&self) -> PathBuf {
        self.dir.join("seed.toml")
    }
    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }
    pub(crate) fn join_token(&self) -> PathBuf {
        self.dir.join("join-token")
    }
    pub(crate) fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
}

/// Creates (or refreshes) the demo directory and checks the config in it
/// exactly as `meshgate run` will load it.
pub(crate) fn prepare(dir: &Path, listen: SocketAddr) -> Result<(Layout, Snapshot), DemoError> {
    claim_dir(dir)?;
    let dir = std::fs::canonicalize(dir).map_err(|source| DemoError::File {
        action: "cannot resolve",
        path: dir.to_owned(),
        source,
    })?;
    let layout = Layout { dir };
    let d = &layout.dir;
    // A previous run's CA, registry and logs would mix with this run's.
    for stale in [d.join("state"), layout.logs()] {
        match std::fs::remove_dir_all(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DemoError::File {
                    action: "cannot clear",
                    path: stale,
                    source,
                });
            }
        }
    }
    for sub in [d.join("tls"), layout.logs()] {
        create_dir(&sub)?;
    }

    let key = issuer::generate()?;
    write_private(&d.join(issuer::KEY_FILE), key.key_pem.as_bytes())?;
    write_public(&d.join(issuer::JWKS_FILE), key.jwks.as_bytes())?;

    let tls = tls_files()?;
    write_public(&layout.ca(), tls.ca_pem.as_bytes())?;
    write_public(&d.join("tls/server.pem"), tls.server_pem.as_bytes())?;
    write_private(&d.join("tls/server-key.pem"), tls.server_key_pem.as_bytes())?;

    write_private(
        &layout.join_token(),
        format!("{}\n", join_token()?).as_bytes(),
    )?;
    write_public(&layout.config(), render_seed(listen)?.as_bytes())?;

    let snap = meshgate_config::load_file(&layout.config()).map_err(|d| DemoError::Config {
        path: layout.config(),
        diagnostics: d.to_string(),
    })?;
    Ok((layout, snap))
}

/// The seed config with the plain listener on `listen`.
pub(crate) fn render_seed(listen: SocketAddr) -> Result<String, DemoError> {
    if SEED.matches(SEED_LISTEN_LINE).count() != 1 {
        // A build defect: the seed changed and this module did not.
        return Err(DemoError::SeedShape(SEED_LISTEN_LINE));
    }
    Ok(SEED.replacen(SEED_LISTEN_LINE, &format!("address = \"{listen}\""), 1))
}

/// Creates `dir` and marks it as the demo's, or accepts it when it is
/// empty or already marked.
fn claim_dir(dir: &Path) -> Result<(), DemoError> {
    create_dir(dir)?;
    let marker = dir.join(MARKER);
    if marker.exists() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(|source| DemoError::File {
        action: "cannot list",
        path: dir.to_owned(),
        source,
    })?;
    if entries.next().is_some() {
        return Err(DemoError::ForeignDir(dir.to_owned()));
    }
    write_public(
        &marker,
        b"Made by `meshgate demo`; it rewrites this directory on every start.\n",
    )
}

fn create_dir(dir: &Path) -> Result<(), DemoError> {
    std::fs::create_dir_all(dir).map_err(|source| DemoError::File {
        action: "cannot create",
        path: dir.to_owned(),
        source,
    })
}

/// Writes a file only its owner may read: keys and the join token.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    write_mode(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    write_mode(path, bytes, 0o644)
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DemoError> {
    let err = |source| DemoError::File {
        action: "cannot write",
        path: path.to_owned(),
        source,
    };
    // Removing first means the mode below applies: `mode` only takes
    // effect when the file is created, and an old key file may have been
    // readable by others.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// A random join token: 32 bytes, hex.
fn join_token() -> Result<String, DemoError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(DemoError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The edge TLS material: a CA and a server certificate it issued.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    pub(crate) ca_pem: String,
    pub(crate) server_pem: String,
    pub(crate) server_key_pem: String,
}

/// A demo CA and a server certificate for `127.0.0.1`, `::1` and
/// `localhost`, ECDSA P-256. The CA's key is dropped once the server
/// certificate is signed: nothing else is ever issued from it. Both keep
/// rcgen's far-off expiry, since the demo makes new ones on every start.
pub(crate) fn tls_files() -> Result<TlsFiles, DemoError> {
    let keygen = |what| move |source| DemoError::Keygen { what, source };
    let ca_key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(keygen("the demo TLS CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(keygen("the demo TLS CA"))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "meshgate demo CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(keygen("the demo TLS CA"))?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(keygen("the demo server key"))?;
    let mut server = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        "localhost".to_owned(),
    ])
    .map_err(keygen("the demo server certificate"))?;
    server
        .distinguished_name
        .push(DnType::CommonName, "meshgate demo gateway");
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(keygen("the demo server certificate"))?;
    Ok(TlsFiles {
        ca_pem: ca_cert.pem(),
        server_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use pingora::http::RequestHeader;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;
    use crate::authn::Authn;
    use crate::demo::issuer::Issuer;

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meshgate-demo-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn request(token: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/orders/1", None).expect("request");
        req.append_header("authorization", format!("Bearer {token}"))
            .expect("header");
        req
    }

    #[test]
    fn demo_tokens_pass_the_gateways_own_checks() {
        let dir = scratch("tokens");
        let (layout, mut snap) = prepare(&dir, local(18080)).expect("demo dir");
        // As a store would number it; key sets follow numbered snapshots.
        snap.version = 1;
        let issuer = Issuer::load(&layout.dir).expect("the key just written");
        let auth = |route: &str| {
            snap.listener("edge")
                .expect("edge listener")
                .routes
                .routes()
                .iter()
                .find(|r| r.name == route)
                .and_then(|r| r.auth.clone())
                .expect("route with auth")
        };
        let (orders, users) = (auth("orders"), auth("users"));
        let authn = Authn::new(&snap);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let check = |auth, token: &str| rt.block_on(authn.check(&snap, auth, &request(token)));

        let good = issuer.token("alice", "orders").expect("token");
        let claims = check(&orders, &good).expect("a demo token passes");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], issuer::ISSUER);
        assert_eq!(claims["aud"], issuer::AUDIENCE);
        let life = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
        assert_eq!(life, issuer::TOKEN_LIFETIME.as_secs());

        let narrow = issuer.token("bob", "profile").expect("token");
        assert!(check(&users, &narrow).is_ok());
        let denied = check(&orders, &narrow).expect_err("no orders scope");
        assert_eq!(denied.status, 403);

        // A key from another run is not in this run's JWKS.
        let other = issuer::generate().expect("key");
        let stranger = Issuer::from_pem(&other.key_pem)
            .expect("issuer")
            .token("alice", "orders")
            .expect("token");
        let denied = check(&orders, &stranger).expect_err("unknown key");
        assert_eq!(denied.status, 401);

        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn token_needs_a_demo_dir() {
        let dir = scratch("no-key");
        let err = Issuer::load(&dir).expect_err("nothing there");
        assert!(
            err.to_string().contains("run `meshgate demo` first"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_owner_only_and_rewritten_each_start() {
        let dir = scratch("modes");
        let (layout, _) = prepare(&dir, local(18080)).expect("demo dir");
        let first = std::fs::read_to_string(layout.join_token()).expect("join token");
        assert_eq!(first.trim().len(), 64);
        for f in ["jwt-key.pem", "tls/server-key.pem", "join-token"] {
            let mode = std::fs::metadata(layout.dir.join(f))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        std::fs::create_dir_all(layout.dir.join("state/ca")).expect("stale state");
        std::fs::write(layout.dir.join("state/registry.json"), "{}").expect("stale state");
        let (layout, _) = prepare(&dir, local(18080)).expect("second start");
        let second = std::fs::read_to_string(layout.join_token()).expect("join token");
        assert_ne!(first, second);
        assert!(!layout.dir.join("state").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_of_something_else_is_left_alone() {
        let dir = scratch("foreign");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("notes.txt"), "mine").expect("file");
        let err = prepare(&dir, local(18080)).expect_err("not ours");
        assert!(matches!(err, DemoError::ForeignDir(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("notes.txt")).expect("untouched"),
            "mine"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listen_moves_only_the_plain_listener() {
        assert_eq!(render_seed(local(8080)).expect("seed"), SEED);
        let moved = render_seed(local(18081)).expect("seed");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let snap = meshgate_config::load_str(&moved, "seed.toml", &dir).expect("valid");
        let addr = |name| snap.listener(name).expect("listener").address;
        assert_eq!(addr("edge"), local(18081));
        assert_eq!(addr("edge-tls"), local(8443));
    }

    #[test]
    fn sidecars_get_the_seeds_resilience_settings() {
        // What order-processing's sidecar runs with: the control plane's
        // rendering of the seed (with no instances registered yet).
        let text = meshgate_control::render_sidecar_config(SEED, &[]).expect("render");
        let text =
            format!("{text}\n[[listener]]\nname = \"outbound\"\naddress = \"127.0.0.1:0\"\n");
        let snap = meshgate_config::load_str(&text, "sidecar.toml", Path::new("/"))
            .unwrap_or_else(|d| panic!("{d}\n{text}"));
        let catalog = snap.service("product-catalog").expect("catalog");
        let rate = catalog
            .outlier
            .failure_rate
            .as_ref()
            .expect("failure-rate ejection");
        assert_eq!((rate.threshold_percent, rate.min_requests), (50, 20));
        assert_eq!(catalog.outlier.consecutive_failures, 5);
        assert!(catalog.split.is_some());
    }

    #[test]
    fn the_server_certificate_verifies_against_the_demo_ca() {
        let tls = tls_files().expect("tls");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(tls.ca_pem.as_bytes()).expect("ca"))
            .expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let leaf = CertificateDer::from_pem_slice(tls.server_pem.as_bytes()).expect("leaf");
        for name in ["127.0.0.1", "localhost", "::1"] {
            let name = ServerName::try_from(name).expect("name");
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let wrong = ServerName::try_from("example.com").expect("name");
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &wrong, &[], UnixTime::now())
                .is_err()
        );
    }
}
