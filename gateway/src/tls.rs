//! TLS termination for the listeners, on rustls with the `ring` provider.
//!
//! [`listener_tls`] turns a listener's `[listener.tls]` table into the
//! rustls settings our accept loop (`listen.rs`) runs the handshake with
//! (on our own stream, `tls_stream.rs`, or pingora's when the listener
//! asks for client certificates): certificates chosen by SNI, ALPN from
//! the listener's protocols, the lowest TLS version, client-certificate
//! verification and the server's cipher suite order. Every file is read
//! and checked here,
//! before the server starts, so a bad certificate is one error line naming
//! the file. Certificates and SNI names reload in place
//! ([`LiveCerts::reload`], called after every applied config reload); the
//! other TLS settings (client authentication, lowest version, ALPN) are
//! fixed when the listener starts.
//!
//! `min_version = "1.3"` is the `ServerConfig`'s protocol versions: a TLS
//! 1.2 client gets a `protocol_version` alert. [`mesh_listener_tls`] builds
//! a sidecar inbound port's settings the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshgate_config::{CertSpec, ClientAuth, Protocols, TlsSpec, TlsVersion};
use meshgate_policy::route::HostPattern;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};

use crate::metrics::HandshakeCount;

/// Why a listener's TLS settings could not be built. Each message names
/// the file at fault and fits on one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// `[listener.tls]` lists no certificate.
    #[error("TLS is configured without a certificate")]
    NoCertificate,
    /// The certificate file cannot be read or is not PEM.
    #[error("cannot read certificate file {}: {source}", .path.display())]
    CertFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("no certificate found in {}", .path.display())]
    NoCertInFile {
        /// The file.
        path: PathBuf,
    },
    /// The leaf certificate is not valid X.509.
    #[error("certificate file {}: {source}", .path.display())]
    BadCert {
        /// The file.
        path: PathBuf,
        /// What rustls found wrong.
        source: rustls::Error,
    },
    /// rustls cannot offer TLS 1.3 with these settings (HTTP/3 needs it).
    #[error("TLS 1.3 for HTTP/3: {source}")]
    Quic {
        /// What rustls found wrong.
        source: rustls::Error,
    },
    /// The key file cannot be read or holds no PEM private key.
    #[error("cannot read private key file {}: {source}", .path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: pem::Error,
    },
    /// The key parses as PEM but is not a key type we can sign with.
    #[error("private key file {}: {source}", .path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What rustls found wrong.
        source: rustls::Error,
    },
    /// The key is not the one the leaf certificate was issued for.
    #[error("private key file {} does not match the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The client CA bundle cannot be read or is not PEM.
    #[error("cannot read client CA file {}: {source}", .path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: pem::Error,
    },
    /// A certificate in the client CA bundle is not a usable trust anchor.
    #[error("client CA file {}: {source}", .path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What rustls found wrong.
        source: rustls::Error,
    },
    /// rustls refused the protocol versions with our provider (it never
    /// does with ring).
    #[error("cannot set up TLS: {source}")]
    Provider {
        /// What rustls found wrong.
        source: rustls::Error,
    },
    /// The client-certificate verifier refused the CA bundle.
    #[error("client CA file {}: {source}", .path.display())]
    Verifier {
        /// The file.
        path: PathBuf,
        /// What rustls found wrong.
        source: rustls::server::VerifierBuilderError,
    },
}

/// What a listener's TCP side terminates TLS with.
pub(crate) struct ListenerTls {
    /// rustls settings, for our own handshake ([`crate::tls_stream`]).
    pub(crate) config: Arc<ServerConfig>,
    /// Counts each completed handshake.
    pub(crate) handshakes: HandshakeCount,
}

impl ListenerTls {
    /// The rest of a `ServerConfig` (ALPN, the server's cipher order,
    /// session tickets when `tickets` is given) on `builder`.
    fn finish(
        listener: &str,
        builder: rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>,
        resolver: Arc<dyn ResolvesServerCert>,
        alpn_protocols: Vec<Vec<u8>>,
        tickets: Option<Arc<dyn rustls::server::ProducesTickets>>,
    ) -> ListenerTls {
        let resolver = crate::metrics::CountingResolver::new(listener, resolver);
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn_protocols;
        config.ignore_client_order = true;
        if let Some(t) = tickets {
            config.ticketer = t;
        }
        ListenerTls {
            config: Arc::new(config),
            handshakes: HandshakeCount::new(listener),
        }
    }
}

/// The TLS settings of a sidecar's inbound port: the workload certificate
/// and the mesh trust bundle as they are now ([`crate::mesh`]'s hooks),
/// a client certificate required, ALPN `h2` then `http/1.1`, handshakes
/// counted under `listener`.
pub(crate) fn mesh_listener_tls(
    listener: &str,
    resolver: Arc<dyn ResolvesServerCert>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<ListenerTls, TlsError> {
    let verifier = crate::metrics::CountingVerifier::new(listener, verifier);
    let builder = ServerConfig::builder_with_provider(Arc::new(server_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|source| TlsError::Provider { source })?
        .with_client_cert_verifier(Arc::new(verifier));
    let alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ListenerTls::finish(listener, builder, resolver, alpn, None))
}

/// Builds the TLS settings of one listener's TCP side (handshakes counted
/// under its name, see `metrics`), and the certificates they serve, which
/// reload in place. The server picks the cipher suite, in
/// [`server_provider`]'s order, as BoringSSL does.
pub(crate) fn listener_tls(
    listener: &str,
    protocols: &Protocols,
    tls: &TlsSpec,
) -> Result<(ListenerTls, Arc<LiveCerts>), TlsError> {
    use crate::metrics::CountingVerifier;
    let provider = Arc::new(edge_provider());
    // Any rustls builder that asks for the process default (ours, a
    // library's or pingora's) gets ring, whatever runs first.
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());

    let live = Arc::new(LiveCerts {
        current: ArcSwap::from_pointee(SniResolver::load(tls, &provider)?),
        provider: provider.clone(),
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS12, &rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|source| TlsError::Provider { source })?;
    let optional = match &tls.client_auth {
        ClientAuth::None => None,
        ClientAuth::Optional { ca } => Some((ca, true)),
        ClientAuth::Require { ca } => Some((ca, false)),
    };
    let builder = match optional {
        Some((ca, optional)) => {
            let verifier = client_verifier(ca, optional, &provider)?;
            builder.with_client_cert_verifier(Arc::new(CountingVerifier::new(listener, verifier)))
        }
        None => builder.with_no_client_auth(),
    };
    let resolver: Arc<dyn ResolvesServerCert> = live.clone();
    // Resumption by stateless tickets, as nginx, HAProxy and Envoy do by
    // default: rustls's own default is a cache of 256 sessions shared by
    // the listener's clients, which at a thousand handshakes a second
    // forgets a session within a second. The ticket key is random, made
    // at start-up and replaced every 6 hours; tickets are accepted for
    // 12 hours (the current key and the one before). A restart starts
    // with a new key.
    let tickets =
        rustls::crypto::ring::Ticketer::new().map_err(|source| TlsError::Provider { source })?;
    let t = ListenerTls::finish(listener, builder, resolver, alpn(protocols), Some(tickets));
    Ok((t, live))
}

/// ring with the server's cipher suite preference: AES-128-GCM, then
/// AES-256-GCM, then ChaCha20-Poly1305, in TLS 1.3 and 1.2 alike. Clients
/// mostly list AES-256 first; with the server's order the handshake's key
/// schedule runs on SHA-256, which costs a tenth less per handshake here
/// than SHA-384, at no loss of security that matters for TLS.
fn server_provider() -> CryptoProvider {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384
        | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    p
}

/// [`server_provider`] for the edge listeners, with X25519 (the key
/// exchange nearly every client offers first) from aws-lc, which is linked
/// for certificate generation anyway. Its assembly does a handshake's two
/// X25519 scalar multiplications in about half of ring's time: they were a
/// fifth of the CPU of a full handshake (perf), and internet clients make
/// many full handshakes. Only the key exchange: aws-lc's record keys would
/// cost about 6 KiB more per idle connection. Mesh listeners keep ring
/// alone; their connections are few and long-lived.
fn edge_provider() -> CryptoProvider {
    let mut p = server_provider();
    for group in &mut p.kx_groups {
        if group.name() == rustls::NamedGroup::X25519 {
            *group = rustls::crypto::aws_lc_rs::kx_group::X25519;
        }
    }
    p
}

/// The rustls settings of a listener's HTTP/3 side: TLS 1.3 only (QUIC
/// has no other), ALPN `h3`, the same live certificates and client
/// certificate rules as its TCP side. Early data is offered only when
/// configured, and then in the unlimited form QUIC requires.
pub(crate) fn quic_server_config(
    tls: &TlsSpec,
    live: Arc<LiveCerts>,
    early_data: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = live.provider.clone();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Quic { source })?;
    let builder = match &tls.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional { ca } => {
            builder.with_client_cert_verifier(client_verifier(ca, true, &provider)?)
        }
        ClientAuth::Require { ca } => {
            builder.with_client_cert_verifier(client_verifier(ca, false, &provider)?)
        }
    };
    let mut config = builder.with_cert_resolver(live);
    // The server's cipher suite order, as on the TCP side: QUIC protects
    // every packet (and its header) with the suite chosen here.
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.max_early_data_size = if early_data { u32::MAX } else { 0 };
    Ok(config)
}

/// ALPN for a TLS listener, as the protocol names rustls offers: `h2`
/// first when HTTP/2 is on, `http/1.1` when HTTP/1 is on. A client whose
/// ALPN list shares nothing with ours is refused by rustls
/// (`no_application_protocol`).
fn alpn(p: &Protocols) -> Vec<Vec<u8>> {
    let h2 = b"h2".to_vec();
    let h1 = b"http/1.1".to_vec();
    match (p.http2, p.http1) {
        (true, true) => vec![h2, h1],
        (true, false) => vec![h2],
        // `http3`-only or `http1`-only: the TCP listener speaks HTTP/1.
        (false, _) => vec![h1],
    }
}

fn client_verifier(
    ca: &Path,
    optional: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let certs = read_certs(ca).map_err(|source| TlsError::CaFile {
        path: ca.to_path_buf(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|source| TlsError::BadCa {
            path: ca.to_path_buf(),
            source,
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|source| TlsError::Verifier {
        path: ca.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, pem::Error> {
    CertificateDer::pem_file_iter(path)?.collect()
}

/// Loads one certificate chain and its key, and checks that they belong
/// together.
fn load_certified_key(c: &CertSpec, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(&c.cert).map_err(|source| TlsError::CertFile {
        path: c.cert.clone(),
        source,
    })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertInFile {
            path: c.cert.clone(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(&c.key).map_err(|source| TlsError::KeyFile {
        path: c.key.clone(),
        source,
    })?;
    let key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::BadKey {
            path: c.key.clone(),
            source,
        })?;
    let ck = CertifiedKey::new(chain, key);
    match ck.keys_match() {
        // `Unknown`: the key cannot tell its public half, so there is
        // nothing to compare; ring's keys always can.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
        }
        Err(source) => Err(TlsError::BadCert {
            path: c.cert.clone(),
            source,
        }),
    }
}

/// Which certificate answers which SNI name: exact names first, then the
/// longest `*.suffix` wildcard, then the first certificate (the default,
/// also used when the client sends no SNI). Built once per listener at
/// start; a lookup allocates only to lower-case a mixed-case name.
///
/// A wildcard matches any depth below its suffix (`*.example.com` answers
/// `a.b.example.com`), as route host patterns do. A certificate for
/// `*.example.com` is valid for one label only, so a client will refuse it
/// for deeper names; choosing it anyway keeps SNI selection and routing in
/// step and is what nginx and Envoy do.
#[derive(Debug, Default)]
struct SniTable {
    exact: HashMap<String, usize>,
    /// Keyed by the suffix with its leading dot: `.example.com`.
    wildcard: HashMap<String, usize>,
}

impl SniTable {
    fn new<'a>(names: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let mut t = SniTable::default();
        for (name, idx) in names {
            // The config has already refused names HostPattern cannot
            // parse and names served by two certificates; first wins here.
            match HostPattern::parse(name) {
                Some(HostPattern::Exact(h)) => {
                    t.exact.entry(h).or_insert(idx);
                }
                Some(HostPattern::Suffix(s)) => {
                    t.wildcard.entry(s).or_insert(idx);
                }
                None => {}
            }
        }
        t
    }

    /// The index of the certificate for `sni`; 0 (the default) when none
    /// matches.
    fn pick(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else { return 0 };
        let sni = sni.trim_end_matches('.');
        let lower;
        let name = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        // Suffixes from the longest: for `a.b.c` try `.b.c`, then `.c`.
        for (at, _) in name.match_indices('.') {
            if let Some(&i) = self.wildcard.get(&name[at..]) {
                return i;
            }
        }
        0
    }
}

/// A listener's live certificates: the resolver pingora calls on every
/// handshake, swappable without restarting the listener.
#[derive(Debug)]
pub(crate) struct LiveCerts {
    current: ArcSwap<SniResolver>,
    provider: Arc<CryptoProvider>,
}

impl LiveCerts {
    /// Loads `tls`'s certificates and swaps them in; on error the running
    /// certificates stay.
    pub(crate) fn reload(&self, tls: &TlsSpec) -> Result<(), TlsError> {
        let fresh = SniResolver::load(tls, &self.provider)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }
}

impl ResolvesServerCert for LiveCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello)
    }
}

/// Certificates loaded from one `[listener.tls]`: [`SniTable`] over keys.
#[derive(Debug)]
struct SniResolver {
    table: SniTable,
    /// Same order as the config; never empty.
    keys: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn load(tls: &TlsSpec, provider: &CryptoProvider) -> Result<Self, TlsError> {
        if tls.certificates.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let mut keys = Vec::with_capacity(tls.certificates.len());
        for c in &tls.certificates {
            keys.push(Arc::new(load_certified_key(c, provider)?));
        }
        let table = SniTable::new(
            tls.certificates
                .iter()
                .enumerate()
                .flat_map(|(i, c)| c.server_names.iter().map(move |n| (n.as_str(), i))),
        );
        Ok(SniResolver { table, keys })
    }
}

impl SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = self.table.pick(hello.server_name());
        self.keys.get(i).or_else(|| self.keys.first()).cloned()
    }
}

/// A verified client certificate, as the request sees it: a request phase
/// reads it with [`client_cert`] from `session.digest()` → `ssl_digest`.
/// Present only on connections whose client sent a certificate that the
/// listener's `client_auth.ca` (or the mesh's trust bundle) verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCert {
    /// The subject distinguished name, e.g. `CN=client-1, O=Example`.
    pub(crate) subject: String,
    /// DNS names from the subject alternative names.
    pub(crate) dns_names: Vec<String>,
    /// URIs from the subject alternative names (SPIFFE IDs live here).
    pub(crate) uris: Vec<String>,
}

impl ClientCert {
    /// Reads the subject and SANs of a DER certificate. `None` if it does
    /// not parse (rustls has verified it, so that would be a parser gap).
    fn from_der(der: &[u8]) -> Option<ClientCert> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut out = ClientCert {
            subject: cert.subject().to_string(),
            dns_names: Vec::new(),
            uris: Vec::new(),
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n {
                    out.dns_names.push((*d).to_owned());
                }
            }
        }
        out.uris = uri_sans(&cert);
        Some(out)
    }

    /// The caller's SPIFFE ID: its one `spiffe://` URI SAN.
    pub(crate) fn spiffe_id(&self) -> Option<&str> {
        let mut ids = self.uris.iter().filter(|u| u.starts_with("spiffe://"));
        match (ids.next(), ids.next()) {
            (Some(id), None) => Some(id),
            _ => None,
        }
    }
}

/// The URI subject-alternative names of a certificate.
pub(crate) fn uri_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                out.push((*u).to_owned());
            }
        }
    }
    out
}

/// The verified client certificates of open connections, by the SHA-256
/// of the certificate's DER. Each connection holds its certificate
/// ([`verified_client_cert`]) and the hash sits in its TLS digest as
/// `cert_digest`, where a request finds the certificate again
/// ([`client_cert`]): pingora offers no other way to hang our own data on
/// the digest of a connection it did not handshake. An entry lives as long
/// as a connection holds its certificate (a peer's next connections reuse
/// the parsed certificate); dead entries are dropped when the table has
/// doubled since it was last swept.
struct ClientCerts {
    by_hash: HashMap<[u8; 32], std::sync::Weak<ClientCert>>,
    sweep_at: usize,
}

const CLIENT_CERTS_FIRST_SWEEP: usize = 64;

/// Read on every request of a connection with a client certificate,
/// written only when a connection brings a certificate not seen parsed.
static CLIENT_CERTS: std::sync::LazyLock<std::sync::RwLock<ClientCerts>> =
    std::sync::LazyLock::new(|| {
        std::sync::RwLock::new(ClientCerts {
            by_hash: HashMap::new(),
            sweep_at: CLIENT_CERTS_FIRST_SWEEP,
        })
    });

fn find_client_cert(hash: &[u8; 32]) -> Option<Arc<ClientCert>> {
    let certs = CLIENT_CERTS.read().unwrap_or_else(|p| p.into_inner());
    certs.by_hash.get(hash).and_then(std::sync::Weak::upgrade)
}

/// The client certificate `der` that a handshake just verified, parsed
/// (or found parsed), and the hash its connection's TLS digest carries.
/// The connection keeps the certificate for as long as it lives. `None`
/// if the certificate does not parse (rustls has verified it, so that
/// would be a parser gap).
pub(crate) fn verified_client_cert(der: &[u8]) -> Option<(Arc<ClientCert>, [u8; 32])> {
    let hash: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .try_into()
        .ok()?;
    let cert = match find_client_cert(&hash) {
        Some(cert) => cert,
        None => {
            let parsed = Arc::new(ClientCert::from_der(der)?);
            let mut certs = CLIENT_CERTS.write().unwrap_or_else(|p| p.into_inner());
            if certs.by_hash.len() >= certs.sweep_at {
                certs.by_hash.retain(|_, c| c.strong_count() > 0);
                certs.sweep_at = (certs.by_hash.len() * 2).max(CLIENT_CERTS_FIRST_SWEEP);
            }
            // A connection with the same certificate may have raced us
            // here: keep the entry that is alive.
            let entry = certs.by_hash.entry(hash).or_default();
            entry.upgrade().unwrap_or_else(|| {
                *entry = Arc::downgrade(&parsed);
                parsed
            })
        }
    };
    tracing::debug!(
        subject = %cert.subject,
        dns_names = ?cert.dns_names,
        uris = ?cert.uris,
        "client certificate verified"
    );
    Some((cert, hash))
}

/// The verified client certificate of the connection whose TLS digest
/// this is, if its client sent one.
pub(crate) fn client_cert(ssl: &pingora::protocols::tls::SslDigest) -> Option<Arc<ClientCert>> {
    find_client_cert(ssl.cert_digest.as_slice().try_into().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SniTable {
        SniTable::new([
            ("a.test", 0),
            ("*.b.test", 1),
            ("c.b.test", 2),
            ("*.deep.b.test", 3),
        ])
    }

    #[test]
    fn exact_names_win_over_wildcards() {
        assert_eq!(table().pick(Some("a.test")), 0);
        assert_eq!(table().pick(Some("c.b.test")), 2);
    }

    #[test]
    fn the_longest_wildcard_wins() {
        let t = table();
        assert_eq!(t.pick(Some("x.b.test")), 1);
        assert_eq!(t.pick(Some("x.y.b.test")), 1);
        assert_eq!(t.pick(Some("x.deep.b.test")), 3);
        // The wildcard does not cover its own suffix.
        assert_eq!(t.pick(Some("b.test")), 0);
    }

    #[test]
    fn unknown_or_missing_sni_gets_the_default() {
        let t = table();
        assert_eq!(t.pick(None), 0);
        assert_eq!(t.pick(Some("other.test")), 0);
        assert_eq!(t.pick(Some("")), 0);
        assert_eq!(t.pick(Some(".")), 0);
    }

    #[test]
    fn matching_ignores_case_and_a_trailing_dot() {
        let t = table();
        assert_eq!(t.pick(Some("X.B.Test")), 1);
        assert_eq!(t.pick(Some("c.b.test.")), 2);
    }

    #[test]
    fn alpn_follows_the_protocols() {
        let p = |http1, http2| Protocols {
            http1,
            http2,
            ..Protocols::default()
        };
        let (h2, h1) = (b"h2".to_vec(), b"http/1.1".to_vec());
        assert_eq!(alpn(&p(true, true)), [h2.clone(), h1.clone()]);
        assert_eq!(alpn(&p(true, false)), [h1]);
        assert_eq!(alpn(&p(false, true)), [h2]);
    }

    #[test]
    fn the_server_prefers_aes_128_then_aes_256() {
        use rustls::CipherSuite as C;
        let order: Vec<C> = server_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let tls13: Vec<C> = order
            .iter()
            .copied()
            .filter(|s| format!("{s:?}").starts_with("TLS13"))
            .collect();
        assert_eq!(
            tls13,
            [
                C::TLS13_AES_128_GCM_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        // Every suite ring offers is still there.
        assert_eq!(
            order.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }

    /// An in-memory handshake between a rustls (ring) client offering only
    /// `group` and a server on `provider`: the group agreed.
    fn handshake_with(provider: CryptoProvider, group: rustls::NamedGroup) -> rustls::NamedGroup {
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let cert = made.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let server = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        let mut client_provider = rustls::crypto::ring::default_provider();
        client_provider.kx_groups.retain(|g| g.name() == group);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            c.write_tls(&mut wire).expect("client out");
            s.read_tls(&mut wire.as_slice()).expect("server in");
            s.process_new_packets().expect("server handshake");
            let mut wire = Vec::new();
            s.write_tls(&mut wire).expect("server out");
            c.read_tls(&mut wire.as_slice()).expect("client in");
            c.process_new_packets().expect("client handshake");
        }
        assert!(!s.is_handshaking(), "the handshake completed");
        s.negotiated_key_exchange_group()
            .expect("a key exchange group")
            .name()
    }

    #[test]
    fn quic_picks_the_servers_cipher_suite_over_the_clients() {
        use rustls::CipherSuite as C;
        use rustls::quic::Version;
        let dir = std::env::temp_dir().join(format!("meshgate-quic-suite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("cert");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("key");
        let spec = TlsSpec {
            certificates: vec![CertSpec {
                cert,
                key,
                server_names: Vec::new(),
            }],
            min_version: TlsVersion::Tls13,
            client_auth: ClientAuth::None,
        };
        let protocols = Protocols {
            http1: true,
            http3: true,
            ..Protocols::default()
        };
        let (_, live) = listener_tls("quic", &protocols, &spec).expect("listener TLS");
        let server = quic_server_config(&spec, live, false).expect("QUIC config");
        let _ = std::fs::remove_dir_all(&dir);

        // A client that lists AES-256 first, as ring's and most others do.
        let client_provider = rustls::crypto::ring::default_provider();
        assert_eq!(
            client_provider.cipher_suites[0].suite(),
            C::TLS13_AES_256_GCM_SHA384
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).expect("root");
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h3".to_vec()];
        let name = "localhost".try_into().expect("name");
        let params = b"transport parameters".to_vec();
        let mut c =
            rustls::quic::ClientConnection::new(Arc::new(client), Version::V1, name, params)
                .expect("client");
        let mut s =
            rustls::quic::ServerConnection::new(Arc::new(server), Version::V1, b"params".to_vec())
                .expect("server");
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            // One read per write: each write ends where the keys change.
            for _ in 0..4 {
                let mut wire = Vec::new();
                let more = c.write_hs(&mut wire).is_some();
                s.read_hs(&wire).expect("server handshake");
                let mut wire = Vec::new();
                let more = s.write_hs(&mut wire).is_some() || more;
                c.read_hs(&wire).expect("client handshake");
                if !more {
                    break;
                }
            }
        }
        assert!(!s.is_handshaking(), "the handshake completed");
        assert_eq!(
            s.negotiated_cipher_suite().map(|x| x.suite()),
            Some(C::TLS13_AES_128_GCM_SHA256)
        );
    }

    #[test]
    fn edge_listeners_take_x25519_from_aws_lc_and_the_rest_from_ring() {
        use rustls::NamedGroup as G;
        let edge = edge_provider();
        let names: Vec<G> = edge.kx_groups.iter().map(|g| g.name()).collect();
        let ring = rustls::crypto::ring::default_provider();
        let ring_names: Vec<G> = ring.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(names, ring_names, "the same groups, in ring's order");
        for (ours, theirs) in edge.kx_groups.iter().zip(&ring.kx_groups) {
            let aws_lc = std::ptr::addr_eq(*ours, rustls::crypto::aws_lc_rs::kx_group::X25519);
            let from_ring = std::ptr::addr_eq(*ours, *theirs);
            assert_eq!(aws_lc, ours.name() == G::X25519, "{:?}", ours.name());
            assert_eq!(from_ring, ours.name() != G::X25519, "{:?}", ours.name());
        }
        // A ring client agrees with the server on each of them.
        for group in [G::X25519, G::secp256r1, G::secp384r1] {
            assert_eq!(handshake_with(edge_provider(), group), group);
        }
        // The mesh's listeners stay on ring alone.
        let mesh = server_provider();
        assert!(
            mesh.kx_groups
                .iter()
                .zip(&ring.kx_groups)
                .all(|(a, b)| std::ptr::addr_eq(*a, *b))
        );
    }
}
