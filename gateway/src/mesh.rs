//! This process's mesh identity: its workload certificate and key, and the
//! trust bundle it verifies peers with.
//!
//! The same material serves both directions. Outbound (gateway → sidecar,
//! sidecar → sidecar) it becomes the client certificate and per-peer CA of
//! a pingora `HttpPeer`, and the peer's certificate is verified by name:
//! every workload certificate carries a DNS name derived from its SPIFFE ID
//! (`NAME.service.TRUST_DOMAIN`), so ordinary hostname verification proves
//! the server is the service we meant to reach. Inbound (a sidecar's mTLS
//! port) it is the server certificate and the client-certificate verifier.
//!
//! Certificates are short-lived and renewed while traffic flows, so the
//! material lives behind `arc-swap`: [`MeshTls::install`] checks a new
//! chain, key and bundle completely and swaps them in only when all are
//! good. A connection keeps the certificate it was made with; pooled
//! upstream connections made with an old certificate are not reused, as
//! pingora keys its pool by the client certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use meshgate_config::ServiceSpec;
use meshgate_identity::SpiffeId;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509, parse_x509};
use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::SignatureScheme;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// Why new mesh material was refused (the old material stays).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MeshTlsError {
    /// The chain is not PEM certificates.
    #[error("workload certificate chain: {0}")]
    Chain(String),
    /// The key is not a PEM private key, or does not fit the certificate.
    #[error("workload key: {0}")]
    Key(String),
    /// The trust bundle is empty or unusable.
    #[error("trust bundle: {0}")]
    Bundle(String),
}

/// One complete set of identity material.
pub(crate) struct Material {
    /// Our SPIFFE ID, read from the certificate.
    pub(crate) id: String,
    /// When the certificate became valid.
    pub(crate) not_before: SystemTime,
    /// When the certificate expires.
    pub(crate) not_after: SystemTime,
    client: Arc<CertKey>,
    roots: Arc<[WrappedX509]>,
    /// The trust bundle, DER.
    pub(crate) bundle: Vec<CertificateDer<'static>>,
    server: Arc<CertifiedKey>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// At most this many services' mesh DNS names are kept.
const MAX_CACHED_NAMES: usize = 4096;

/// The live identity of this process; empty until the first certificate.
#[derive(Debug)]
pub(crate) struct MeshTls {
    trust_domain: String,
    /// Each service's mesh DNS name (`None`: the name cannot be one),
    /// derived on first use: building and checking the SPIFFE ID and the
    /// name took about 2,500 instructions, on every request. Read on
    /// every request from every listener thread, written once a service:
    /// swapped whole, so reads take no lock.
    names: ArcSwap<HashMap<String, Option<String>>>,
    current: ArcSwapOption<Material>,
    provider: Arc<CryptoProvider>,
}

impl MeshTls {
    pub(crate) fn new(trust_domain: &str) -> Arc<MeshTls> {
        let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
        Arc::new(MeshTls {
            trust_domain: trust_domain.to_owned(),
            names: ArcSwap::default(),
            current: ArcSwapOption::empty(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The material in use, if a certificate has been installed.
    pub(crate) fn material(&self) -> Option<Arc<Material>> {
        self.current.load_full()
    }

    /// Checks and swaps in a new certificate chain (leaf first), its key
    /// and the trust bundle. Nothing changes on error.
    pub(crate) fn install(
        &self,
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
    ) -> Result<Arc<Material>, MeshTlsError> {
        let chain = without_anchors(pem_certs(chain_pem).map_err(MeshTlsError::Chain)?);
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| MeshTlsError::Chain(format!("leaf does not parse: {e}")))?;
        let id = crate::tls::uri_sans(&leaf)
            .into_iter()
            .find(|u| u.starts_with("spiffe://"))
            .ok_or_else(|| MeshTlsError::Chain("leaf has no spiffe:// URI SAN".into()))?;
        let at = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let not_before = at(leaf.validity().not_before);
        let not_after = at(leaf.validity().not_after);
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| MeshTlsError::Key(format!("not a PEM private key: {e}")))?;
        let key_der = key.secret_der().to_vec();
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| MeshTlsError::Key(e.to_string()))?;
        let certs: Vec<CertificateDer<'static>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let server = CertifiedKey::new(certs, signing);
        server
            .keys_match()
            .map_err(|e| MeshTlsError::Key(format!("does not match the certificate: {e}")))?;

        let bundle = pem_certs(bundle_pem).map_err(MeshTlsError::Bundle)?;
        let mut store = RootCertStore::empty();
        for der in &bundle {
            store
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| MeshTlsError::Bundle(e.to_string()))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .build()
                .map_err(|e| MeshTlsError::Bundle(e.to_string()))?;
        let bundle_der: Vec<CertificateDer<'static>> = bundle
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let roots: Vec<WrappedX509> = bundle
            .into_iter()
            .map(|der| WrappedX509::new(der, parse_x509))
            .collect();
        let material = Arc::new(Material {
            id,
            not_before,
            not_after,
            client: Arc::new(CertKey::new(chain, key_der)),
            roots: Arc::from(roots.into_boxed_slice()),
            bundle: bundle_der,
            server: Arc::new(server),
            verifier,
        });
        self.current.store(Some(material.clone()));
        crate::metrics::certificate(&material.id, material.not_after);
        Ok(material)
    }

    /// The mTLS peer for an endpoint of mesh service `svc`, or `None`
    /// before this process has a certificate. The name verified is the
    /// DNS name every instance of the service has in its certificate (the
    /// config only admits mesh service names that make one).
    pub(crate) fn peer(&self, addr: SocketAddr, svc: &ServiceSpec) -> Option<HttpPeer> {
        let m = self.material()?;
        let name = self.dns_name(&svc.name)?;
        let mut peer = HttpPeer::new(addr, true, name);
        peer.client_cert_key = Some(m.client.clone());
        peer.options.ca = Some(m.roots.clone());
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        Some(peer)
    }

    /// `service`'s mesh DNS name, the name its certificates carry.
    fn dns_name(&self, service: &str) -> Option<String> {
        if let Some(name) = self.names.load().get(service) {
            return name.clone();
        }
        let name = SpiffeId::service(&self.trust_domain, service)
            .and_then(|id| id.dns_name())
            .ok();
        // Services come from the config, so the map stays small; a config
        // that keeps renaming them cannot grow it without bound.
        self.names.rcu(|names| {
            let mut names = if names.len() >= MAX_CACHED_NAMES {
                HashMap::new()
            } else {
                HashMap::clone(names)
            };
            names.insert(service.to_owned(), name.clone());
            names
        });
        name
    }

    /// The server side: a certificate resolver and a client verifier that
    /// always use the current material.
    pub(crate) fn server_hooks(
        self: &Arc<Self>,
    ) -> (Arc<dyn ResolvesServerCert>, Arc<dyn ClientCertVerifier>) {
        (
            Arc::new(CurrentCert(self.clone())),
            Arc::new(CurrentVerifier(self.clone())),
        )
    }
}

/// The chain as this process sends it: the leaf and any intermediates,
/// without the self-issued CA certificates the CA appends. Every mesh peer
/// verifies against its own trust bundle, which holds them (RFC 8446
/// 4.4.2 lets a trust anchor be left out), so sending one only adds bytes
/// to each handshake; and pingora keys its upstream pool by the serial
/// numbers of every certificate in the client chain, formatted as text on
/// each pool lookup (twice a request), so a shorter chain is cheaper on
/// every request too.
fn without_anchors(chain: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(chain.len());
    for (i, der) in chain.into_iter().enumerate() {
        let anchor = i > 0
            && x509_parser::parse_x509_certificate(&der)
                .is_ok_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw());
        if !anchor {
            out.push(der);
        }
    }
    out
}

/// Splits a PEM text into DER certificates, each checked to parse, since
/// pingora's `CertKey` would panic on one that does not.
fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let c = c.map_err(|e| format!("not PEM: {e}"))?;
        x509_parser::parse_x509_certificate(&c)
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
        out.push(c.to_vec());
    }
    if out.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(out)
}

#[derive(Debug)]
struct CurrentCert(Arc<MeshTls>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.material().map(|m| m.server.clone())
    }
}

/// Delegates to the verifier built from the current trust bundle, so a
/// root rotation takes effect for the next handshake.
#[derive(Debug)]
struct CurrentVerifier(Arc<MeshTls>);

impl CurrentVerifier {
    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.0
            .material()
            .map(|m| m.verifier.clone())
            .ok_or_else(|| rustls::Error::General("no mesh trust bundle yet".into()))
    }
}

impl ClientCertVerifier for CurrentVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; mesh clients have exactly one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_identity::Ca;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    const TD: &str = "mesh.test";

    /// What the CA hands out is the leaf and its own (self-signed)
    /// certificate; this process sends only the leaf, as client and as
    /// server, and pingora's pool key hashes only the leaf's serial.
    #[test]
    fn the_generated_ca_certificate_is_not_sent() {
        let ca = Ca::generate(TD).expect("CA");
        let id = SpiffeId::service(TD, "api").expect("id");
        let (key, issued) = ca
            .issue(&id, std::time::Duration::from_secs(3600))
            .expect("issued");
        let chain = pem_certs(&issued.chain_pem).expect("chain");
        assert_eq!(chain.len(), 2);
        let leaf = &chain[0];
        let mesh = MeshTls::new(TD);
        let m = mesh
            .install(&issued.chain_pem, &key.key_pem(), &ca.trust_bundle_pem())
            .expect("installed");
        assert!(m.client.intermediates().is_empty());
        assert_eq!(m.client.leaf().borrow_raw_cert().as_slice(), &leaf[..]);
        assert_eq!(m.server.cert.len(), 1);
        assert_eq!(m.server.cert[0].as_ref(), &leaf[..]);
        // The trust bundle still holds the CA: the chain is verified
        // against it.
        assert_eq!(m.bundle.len(), 1);
        assert_eq!(m.bundle[0].as_ref(), ca.root_der());
    }

    /// A service's mesh DNS name is derived once and then read from the
    /// map; names that cannot be DNS labels stay refused on every call;
    /// the map does not grow past its bound.
    #[test]
    fn mesh_names_are_derived_once_and_stay_bounded() {
        let mesh = MeshTls::new(TD);
        for _ in 0..2 {
            assert_eq!(
                mesh.dns_name("api").as_deref(),
                Some("api.service.mesh.test")
            );
            assert_eq!(mesh.dns_name("Api"), None, "upper case");
            assert_eq!(mesh.dns_name("a.b"), None, "two labels");
            assert_eq!(mesh.dns_name("a/b"), None, "two segments");
        }
        let cached = |m: &MeshTls| m.names.load().len();
        assert_eq!(cached(&mesh), 4);
        for i in 0..MAX_CACHED_NAMES + 10 {
            let name = format!("s{i}");
            assert_eq!(
                mesh.dns_name(&name),
                Some(format!("{name}.service.mesh.test"))
            );
        }
        assert!(cached(&mesh) <= MAX_CACHED_NAMES);
    }

    /// An operator's CA that is itself an intermediate stays in the chain
    /// (peers may trust only the root above it); only self-issued
    /// certificates after the leaf are left out, and a chain that is one
    /// self-signed certificate keeps it.
    #[test]
    fn intermediates_stay_and_only_anchors_after_the_leaf_go() {
        let ca_params = || {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        };
        let mut p = ca_params();
        p.distinguished_name.push(rcgen::DnType::CommonName, "root");
        let root_key = KeyPair::generate().expect("key");
        let root = p.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(p, root_key);
        let mut p = ca_params();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        let mid_key = KeyPair::generate().expect("key");
        let mid = p.signed_by(&mid_key, &root_issuer).expect("intermediate");
        let mid_issuer = Issuer::new(p, mid_key);
        let leaf_params =
            CertificateParams::new(vec!["api.service.mesh.test".to_owned()]).expect("params");
        let leaf = leaf_params
            .signed_by(&KeyPair::generate().expect("key"), &mid_issuer)
            .expect("leaf");
        let der = |c: &rcgen::Certificate| c.der().to_vec();

        let sent = without_anchors(vec![der(&leaf), der(&mid), der(&root)]);
        assert_eq!(sent, vec![der(&leaf), der(&mid)]);
        assert_eq!(without_anchors(vec![der(&root)]), vec![der(&root)]);
    }
}
