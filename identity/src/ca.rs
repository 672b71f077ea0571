//! The mesh certificate authority: a root key and certificate that sign
//! short-lived workload certificates.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber, string::Ia5String,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject as _;
use time::OffsetDateTime;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer as _;

use crate::certificate::{self, certs_der_named, system_time, to_pem};
use crate::spiffe::validate_trust_domain;
use crate::{IdentityError, SpiffeId, WorkloadKey};

/// Lifetime of a generated root. Rotation (see [`crate::rotate`]) is an
/// operator decision, so the root outlives any plausible mesh deployment
/// between rotations rather than expiring on a schedule nobody watches.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// A root is backdated further than leaves: a node whose clock lags must
/// still accept the root for the whole life of the first leaves it signs.
const ROOT_BACKDATE: Duration = Duration::from_secs(60 * 60);
/// Leaves are backdated by this much so that a peer whose clock is a little
/// behind the CA's does not reject a certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A certificate issued to a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub id: SpiffeId,
    /// The leaf certificate followed by the CA certificate, PEM.
    pub chain_pem: String,
    /// As written in the certificate (whole seconds).
    pub not_before: SystemTime,
    /// As written in the certificate (whole seconds).
    pub not_after: SystemTime,
}

/// The mesh CA: signs workload certificates for one trust domain.
pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    root_der: Vec<u8>,
    root_pem: String,
    not_after: SystemTime,
    /// Roots trusted besides our own (e.g. the previous root during a
    /// rotation); never contains `root_der`, never a duplicate.
    extra_roots: Vec<Vec<u8>>,
}

impl Ca {
    /// A new self-signed root: CA:true with path length 0 (it signs leaves
    /// only), valid for ten years, CN `meshgate mesh CA <td>`, URI SAN
    /// `spiffe://<td>`.
    pub fn generate(trust_domain: &str) -> Result<Ca, IdentityError> {
        Ca::generate_valid_for(trust_domain, ROOT_VALIDITY)
    }

    fn generate_valid_for(trust_domain: &str, validity: Duration) -> Result<Ca, IdentityError> {
        check_trust_domain(trust_domain)?;
        let td_id = SpiffeId::trust_domain_id(trust_domain)?;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IdentityError::KeyGeneration)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("meshgate mesh CA {trust_domain}"),
        );
        params.subject_alt_names = vec![uri_san(&td_id)?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = asn1_time(now.checked_sub(ROOT_BACKDATE).unwrap_or(now))?;
        params.not_after = asn1_time(
            now.checked_add(validity)
                .ok_or(IdentityError::TimeOutOfRange { time: now })?,
        )?;
        params.serial_number = Some(random_serial(CA_SERIAL_BYTES)?);
        let cert = params
            .self_signed(&key)
            .map_err(|source| IdentityError::Sign {
                id: td_id.to_string(),
                source,
            })?;
        // Through the same checks as an operator's CA, so that a generated
        // CA and the same CA loaded back from disk behave identically.
        Ca::from_parts(
            trust_domain,
            cert.der().to_vec(),
            key,
            "generated ca certificate",
            "generated ca key",
        )
    }

    /// The operator's CA. Checks that the certificate is a CA allowed to
    /// sign certificates, that the key is the certificate's key, and that
    /// certificates it signs will chain to it.
    ///
    /// The key may be any type rcgen signs with (P-256 is what
    /// [`Ca::generate`] makes, but an operator's RSA or P-384 root works);
    /// workload keys are P-256 regardless.
    pub fn from_pem(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Ca, IdentityError> {
        Ca::from_pem_named(trust_domain, cert_pem, "ca certificate", key_pem, "ca key")
    }

    /// [`Ca::from_pem`] reading the two files; errors name the file.
    pub fn from_files(trust_domain: &str, cert: &Path, key: &Path) -> Result<Ca, IdentityError> {
        let cert_pem = read_to_string(cert)?;
        let key_pem = read_to_string(key)?;
        Ca::from_pem_named(
            trust_domain,
            &cert_pem,
            &cert.display().to_string(),
            &key_pem,
            &key.display().to_string(),
        )
    }

    fn from_pem_named(
        trust_domain: &str,
        cert_pem: &str,
        cert_what: &str,
        key_pem: &str,
        key_what: &str,
    ) -> Result<Ca, IdentityError> {
        check_trust_domain(trust_domain)?;
        let mut certs = certs_der_named(cert_pem, cert_what)?;
        if certs.len() != 1 {
            return Err(IdentityError::InvalidCertificate {
                what: cert_what.to_owned(),
                reason: format!(
                    "holds {} certificates; it must hold only the signing ca certificate",
                    certs.len()
                ),
            });
        }
        let der = certs.swap_remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| IdentityError::InvalidKey {
            what: key_what.to_owned(),
            reason: format!("not a pkcs#8, sec1 or pkcs#1 private key pem ({e})"),
        })?;
        Ca::from_parts(trust_domain, der, key, cert_what, key_what)
    }

    fn from_parts(
        trust_domain: &str,
        der: Vec<u8>,
        key: KeyPair,
        cert_what: &str,
        key_what: &str,
    ) -> Result<Ca, IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidCertificate {
            what: cert_what.to_owned(),
            reason,
        };
        let cert = certificate::parse(&der, cert_what)?;
        check_is_ca(&cert).map_err(invalid)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(IdentityError::KeyMismatch {
                cert: cert_what.to_owned(),
                key: key_what.to_owned(),
            });
        }
        if let Some(other) = spiffe_trust_domains(&cert).find(|td| td != trust_domain) {
            return Err(invalid(format!(
                "it names trust domain {other:?}, not {trust_domain:?}"
            )));
        }
        let not_after = system_time(&cert.validity().not_after);
        if not_after <= SystemTime::now() {
            return Err(IdentityError::CaExpired {
                trust_domain: trust_domain.to_owned(),
                not_after,
            });
        }
        let subject = cert.subject().as_raw().to_vec();

        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
            .map_err(|e| invalid(format!("rcgen cannot issue from it ({e})")))?;
        let ca = Ca {
            trust_domain: trust_domain.to_owned(),
            issuer,
            root_pem: to_pem("CERTIFICATE", &der),
            root_der: der,
            not_after,
            extra_roots: Vec::new(),
        };
        // Verifiers match a leaf's issuer to its CA's subject byte for byte,
        // and rcgen re-encodes the subject it parsed (it cannot keep
        // multi-valued RDNs or repeated attributes). Sign once now, so an
        // unusable operator CA fails at load instead of in every handshake.
        let probe = ca.probe_issuer_name()?;
        if probe != subject {
            return Err(invalid(
                "its subject name cannot be reproduced as the issuer of signed certificates \
                 (repeated or multi-valued name attributes?)"
                    .to_owned(),
            ));
        }
        Ok(ca)
    }

    /// Loads dir/ca.pem + dir/ca-key.pem, or generates and writes them (key file mode 0600, dir 0700, written atomically via temp file + rename) on first start.
    ///
    /// Also trusts the roots in dir/previous-roots.pem, left there by
    /// [`crate::rotate`]. A damaged or mismatched pair is an error, never a
    /// reason to generate a new root: that would silently cut every
    /// workload off from the trust root it holds.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Ca, IdentityError> {
        crate::store::load_or_generate(dir, trust_domain)
    }

    /// The CA key as PEM, for [`crate::store`] to persist a CA this crate
    /// generated (whose key is PKCS#8; an operator's key is never rewritten).
    /// Not public: the key leaves memory only to go to its own file.
    pub(crate) fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a CSR for `id`. The identity comes from the caller (the control plane decides who the workload is); names requested in the CSR are ignored, only its public key is used (and the CSR signature must verify). Leaf: URI SAN = id, DNS SAN = id.dns_name(), CA:false, key usage digitalSignature, EKU serverAuth+clientAuth, not_before = now - 1 min (clock skew), not_after = now + ttl (but never past the CA's own not_after). chain_pem = leaf + CA cert.
    ///
    /// The CSR's key must be ECDSA P-256. `id` must be in this CA's trust
    /// domain and have a [`SpiffeId::dns_name`]. A CSR requesting extensions
    /// other than SANs, key usage and extended key usage is rejected (rcgen's
    /// CSR parser refuses them); [`WorkloadKey::csr_pem`] requests only SANs.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<Issued, IdentityError> {
        let public_key = csr_public_key(csr_pem)?;
        self.sign_public_key(&public_key, id, ttl)
    }

    /// Issues a key + certificate in-process (for the appliance's own identities).
    pub fn issue(
        &self,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<(WorkloadKey, Issued), IdentityError> {
        let key = WorkloadKey::generate()?;
        let issued = self.sign_public_key(key.key_pair(), id, ttl)?;
        Ok((key, issued))
    }

    /// The trust domain this CA signs for; every ID it signs is in it.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// This CA's own (signing) certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// This CA's own (signing) certificate, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// Roots clients and servers should trust: this CA's root plus any extra roots (during a root rotation the bundle holds the old and the new root).
    pub fn trust_bundle_pem(&self) -> String {
        let mut bundle = self.root_pem.clone();
        for der in &self.extra_roots {
            bundle.push_str(&to_pem("CERTIFICATE", der));
        }
        bundle
    }

    /// [`Ca::trust_bundle_pem`] as DER, ready for a rustls `RootCertStore`.
    pub fn trust_bundle_der(&self) -> Vec<Vec<u8>> {
        std::iter::once(&self.root_der)
            .chain(&self.extra_roots)
            .cloned()
            .collect()
    }

    /// Trusts more roots (PEM, one or more). Each must be a CA certificate;
    /// ones already trusted are skipped. All or nothing: on error none is
    /// added.
    pub fn add_trusted_roots(&mut self, pem: &str) -> Result<(), IdentityError> {
        self.add_trusted_roots_named(pem, "trusted roots")
    }

    pub(crate) fn add_trusted_roots_named(
        &mut self,
        pem: &str,
        what: &str,
    ) -> Result<(), IdentityError> {
        let certs = certs_der_named(pem, what)?;
        for (i, der) in certs.iter().enumerate() {
            let cert = certificate::parse(der, what)?;
            check_is_ca(&cert).map_err(|reason| IdentityError::InvalidCertificate {
                what: what.to_owned(),
                reason: format!("certificate {}: {reason}", i + 1),
            })?;
        }
        for der in certs {
            if der != self.root_der && !self.extra_roots.contains(&der) {
                self.extra_roots.push(der);
            }
        }
        Ok(())
    }

    /// When this CA's own certificate expires; no leaf outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    fn sign_public_key(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<Issued, IdentityError> {
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if ttl.is_zero() {
            return Err(IdentityError::ZeroTtl { id: id.to_string() });
        }
        let dns = id.dns_name()?;
        // Whole seconds: that is what X.509 stores, and `Issued` reports
        // exactly what the certificate says.
        let now = whole_seconds(SystemTime::now());
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
        let not_after = now
            .checked_add(ttl)
            .map_or(self.not_after, |t| t.min(self.not_after));
        if not_after <= now {
            return Err(IdentityError::CaExpired {
                trust_domain: self.trust_domain.clone(),
                not_after: self.not_after,
            });
        }

        let mut params = CertificateParams::default();
        // The identity is in the SANs (marked critical by rcgen because the
        // subject is empty), as X.509-SVIDs do it.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(id)?, dns_san(id, dns)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = asn1_time(not_before)?;
        params.not_after = asn1_time(not_after)?;
        params.serial_number = Some(random_serial(LEAF_SERIAL_BYTES)?);
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(|source| IdentityError::Sign {
                id: id.to_string(),
                source,
            })?;
        let mut chain_pem = leaf.pem();
        chain_pem.push_str(&self.root_pem);
        Ok(Issued {
            id: id.clone(),
            chain_pem,
            not_before,
            not_after,
        })
    }

    /// The raw issuer name of a certificate signed by this CA.
    fn probe_issuer_name(&self) -> Result<Vec<u8>, IdentityError> {
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from_slice(&[1]));
        let probe = params
            .signed_by(self.issuer.key(), &self.issuer)
            .map_err(|source| IdentityError::Sign {
                id: format!("spiffe://{}", self.trust_domain),
                source,
            })?;
        let cert = certificate::parse(probe.der(), "probe certificate")?;
        Ok(cert.issuer().as_raw().to_vec())
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No key, and no PEM walls in logs.
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .field("extra_roots", &self.extra_roots.len())
            .finish_non_exhaustive()
    }
}

/// An uncompressed P-256 public key taken from a CSR.
///
/// The leaf's SubjectPublicKeyInfo is written from this rather than from
/// rcgen's parsed CSR key, whose algorithm rcgen derives from the CSR's
/// *signature* algorithm: a P-256 key signing its CSR with SHA-384 would
/// otherwise come out labelled as a P-384 key.
struct P256PublicKey {
    point: Vec<u8>,
}

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Parses a CSR, insists on a P-256 key and checks the CSR's signature, so
/// the requester proves it holds the private key it wants certified.
fn csr_public_key(csr_pem: &str) -> Result<P256PublicKey, IdentityError> {
    let invalid = |reason: String| IdentityError::InvalidCsr { reason };
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| invalid(format!("no CERTIFICATE REQUEST pem section ({e})")))?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| invalid(format!("not a pkcs#10 request ({e})")))?;
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(invalid("the key is not ecdsa p-256".to_owned()));
    }
    let point = spki.subject_public_key.data.to_vec();
    // SEC1 uncompressed form: 0x04, then 32-byte x and y. Verifiers such as
    // webpki do not take compressed points.
    if point.len() != 65 || point.first() != Some(&0x04) {
        return Err(invalid(
            "the p-256 key is not an uncompressed point".to_owned(),
        ));
    }
    CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => {
            invalid("its signature does not verify with the public key it carries".to_owned())
        }
        other => invalid(format!("cannot read it ({other})")),
    })?;
    Ok(P256PublicKey { point })
}

fn check_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
    validate_trust_domain(trust_domain).map_err(|reason| IdentityError::InvalidTrustDomain {
        trust_domain: trust_domain.to_owned(),
        reason,
    })
}

fn check_is_ca(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<(), String> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err("not a ca certificate (basic constraints lack CA:true)".to_owned()),
        Err(e) => return Err(format!("malformed basic constraints ({e})")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Err("its key usage does not allow keyCertSign".to_owned())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("malformed key usage ({e})")),
    }
}

/// Trust domains of the spiffe URI SANs in a certificate.
fn spiffe_trust_domains<'a>(
    cert: &'a x509_parser::certificate::X509Certificate<'_>,
) -> impl Iterator<Item = String> + 'a {
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.as_slice(),
        _ => &[],
    };
    names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => SpiffeId::parse(uri)
            .ok()
            .map(|id| id.trust_domain().to_owned()),
        _ => None,
    })
}

fn uri_san(id: &SpiffeId) -> Result<SanType, IdentityError> {
    Ia5String::try_from(id.as_str())
        .map(SanType::URI)
        .map_err(|source| IdentityError::Sign {
            id: id.to_string(),
            source,
        })
}

fn dns_san(id: &SpiffeId, dns: String) -> Result<SanType, IdentityError> {
    Ia5String::try_from(dns)
        .map(SanType::DnsName)
        .map_err(|source| IdentityError::Sign {
            id: id.to_string(),
            source,
        })
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

fn asn1_time(t: SystemTime) -> Result<OffsetDateTime, IdentityError> {
    let out_of_range = || IdentityError::TimeOutOfRange { time: t };
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| out_of_range())?
        .as_secs();
    let secs = i64::try_from(secs).map_err(|_| out_of_range())?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| out_of_range())
}

/// The length of a CA certificate's serial number: 126 random bits.
const CA_SERIAL_BYTES: usize = 16;

/// The length of a workload certificate's serial number: 70 random bits,
/// over the 64 the CA/Browser Forum's baseline requirements ask of public
/// CAs. Shorter than a CA's because a client's serial is formatted as text
/// on every upstream pool lookup (pingora keys its pool by it, twice a
/// request), at about 550 instructions a byte.
const LEAF_SERIAL_BYTES: usize = 9;

/// `len` random bytes, positive. RFC 5280 wants serials unique per CA, and
/// rcgen's default (a hash of the public key) repeats when a workload renews
/// with the same key.
fn random_serial(len: usize) -> Result<SerialNumber, IdentityError> {
    let mut serial = [0u8; CA_SERIAL_BYTES];
    let serial = &mut serial[..len];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(serial)
        .map_err(|_| IdentityError::Random)?;
    // Top bit clear keeps the INTEGER positive; the next bit set keeps it
    // exactly `len` bytes long.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(serial))
}

fn read_to_string(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
        op: "reading",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::{certs_der, spiffe_id_of, validity};

    const TD: &str = "mesh.test";
    const HOUR: Duration = Duration::from_secs(3600);

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn root_store(bundle_pem: &str) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for der in certs_der(bundle_pem).unwrap() {
            roots.add(CertificateDer::from(der)).unwrap();
        }
        Arc::new(roots)
    }

    fn split_chain(chain_pem: &str) -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
        let mut certs = certs_der(chain_pem)
            .unwrap()
            .into_iter()
            .map(CertificateDer::from);
        let leaf = certs.next().unwrap();
        (leaf, certs.collect())
    }

    /// What a TLS client does with the server's chain.
    pub(crate) fn verify_as_server(
        bundle_pem: &str,
        chain_pem: &str,
        dns: &str,
    ) -> Result<(), rustls::Error> {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(root_store(bundle_pem), provider())
                .build()
                .unwrap();
        let (leaf, rest) = split_chain(chain_pem);
        let name = ServerName::try_from(dns.to_owned()).unwrap();
        verifier
            .verify_server_cert(&leaf, &rest, &name, &[], UnixTime::now())
            .map(|_| ())
    }

    /// What a TLS server requiring client certificates does.
    pub(crate) fn verify_as_client(bundle_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(root_store(bundle_pem), provider())
                .build()
                .unwrap();
        let (leaf, rest) = split_chain(chain_pem);
        verifier
            .verify_client_cert(&leaf, &rest, UnixTime::now())
            .map(|_| ())
    }

    fn leaf_der(issued: &Issued) -> Vec<u8> {
        certs_der(&issued.chain_pem).unwrap().swap_remove(0)
    }

    fn secs_apart(a: SystemTime, b: SystemTime) -> u64 {
        a.duration_since(b)
            .or_else(|_| b.duration_since(a))
            .unwrap()
            .as_secs()
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Ca>();
        assert_send_sync::<WorkloadKey>();
    }

    #[test]
    fn generated_root_is_a_pathlen_0_ca_for_the_trust_domain() {
        let ca = Ca::generate(TD).unwrap();
        assert_eq!(ca.trust_domain(), TD);
        assert_eq!(ca.trust_bundle_pem(), ca.root_pem());
        let der = certs_der(ca.root_pem()).unwrap().swap_remove(0);
        assert_eq!(der, ca.root_der());
        let cert = certificate::parse(&der, "root").unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "meshgate mesh CA mesh.test");
        assert_eq!(spiffe_id_of(&der).unwrap().as_str(), "spiffe://mesh.test");
        let ten_years = SystemTime::now() + ROOT_VALIDITY;
        assert!(secs_apart(ca.not_after(), ten_years) < 120);
    }

    #[test]
    fn signed_csr_verifies_as_server_and_client() {
        let ca = Ca::generate(TD).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let id = SpiffeId::service(TD, "api").unwrap();
        let issued = ca.sign_csr(&key.csr_pem(&id).unwrap(), &id, HOUR).unwrap();
        assert_eq!(issued.id, id);
        assert_eq!(certs_der(&issued.chain_pem).unwrap().len(), 2);

        verify_as_server(ca.root_pem(), &issued.chain_pem, "api.service.mesh.test").unwrap();
        verify_as_client(ca.root_pem(), &issued.chain_pem).unwrap();
        // Hostname verification really is on.
        assert!(
            verify_as_server(ca.root_pem(), &issued.chain_pem, "web.service.mesh.test").is_err()
        );

        // The certificate is for the key that signed the CSR.
        let leaf = leaf_der(&issued);
        let cert = certificate::parse(&leaf, "leaf").unwrap();
        assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());
    }

    #[test]
    fn leaf_carries_the_id_and_only_the_leaf_extensions() {
        let ca = Ca::generate(TD).unwrap();
        let id = SpiffeId::gateway(TD).unwrap();
        let (_, issued) = ca.issue(&id, HOUR).unwrap();
        let leaf = leaf_der(&issued);
        assert_eq!(spiffe_id_of(&leaf), Some(id));

        let cert = certificate::parse(&leaf, "leaf").unwrap();
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign() && !ku.key_encipherment());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.critical,
            "subject is empty, so the san must be critical"
        );
        assert_eq!(
            san.value.general_names,
            vec![
                GeneralName::URI("spiffe://mesh.test/gateway"),
                GeneralName::DNSName("gateway.mesh.test"),
            ]
        );
        assert_eq!(cert.issuer().as_raw(), {
            let root = certificate::parse(ca.root_der(), "root").unwrap();
            root.subject().as_raw().to_vec()
        });
    }

    #[test]
    fn names_requested_in_the_csr_are_ignored() {
        let ca = Ca::generate(TD).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let wanted = SpiffeId::control_plane(TD).unwrap();
        let csr = key.csr_pem(&wanted).unwrap();
        let assigned = SpiffeId::service(TD, "web").unwrap();
        let issued = ca.sign_csr(&csr, &assigned, HOUR).unwrap();

        let leaf = leaf_der(&issued);
        assert_eq!(spiffe_id_of(&leaf), Some(assigned));
        let cert = certificate::parse(&leaf, "leaf").unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 2);
        assert!(!format!("{:?}", san.value.general_names).contains("control-plane"));
        verify_as_server(ca.root_pem(), &issued.chain_pem, "web.service.mesh.test").unwrap();
        assert!(
            verify_as_server(ca.root_pem(), &issued.chain_pem, "control-plane.mesh.test").is_err()
        );
    }

    #[test]
    fn expiry_is_the_ttl() {
        let ca = Ca::generate(TD).unwrap();
        let id = SpiffeId::service(TD, "api").unwrap();
        let ttl = Duration::from_secs(6 * 3600);
        let before = SystemTime::now();
        let (_, issued) = ca.issue(&id, ttl).unwrap();
        let (not_before, not_after) = validity(&issued.chain_pem).unwrap();
        assert_eq!(
            (not_before, not_after),
            (issued.not_before, issued.not_after)
        );
        assert!(secs_apart(not_after, before + ttl) <= 120);
        assert!(secs_apart(not_before, before - CLOCK_SKEW) <= 120);
        assert!(not_before < before);
    }

    #[test]
    fn expiry_never_passes_the_ca_not_after() {
        let ca = Ca::generate_valid_for(TD, 2 * HOUR).unwrap();
        let id = SpiffeId::service(TD, "api").unwrap();
        let (_, issued) = ca.issue(&id, 24 * HOUR).unwrap();
        assert_eq!(issued.not_after, ca.not_after());
        assert_eq!(validity(&issued.chain_pem).unwrap().1, ca.not_after());
        // An absurd ttl must not overflow either.
        let (_, issued) = ca.issue(&id, Duration::MAX).unwrap();
        assert_eq!(issued.not_after, ca.not_after());
    }

    #[test]
    fn csr_signed_by_another_key_is_rejected() {
        let ca = Ca::generate(TD).unwrap();
        let id = SpiffeId::service(TD, "api").unwrap();
        let claimed = WorkloadKey::generate().unwrap();
        let signer = WorkloadKey::generate().unwrap();
        // Sign a CSR with `signer`, then swap in `claimed`'s public key: the
        // request claims a key whose private half the requester lacks.
        let csr = signer.csr_pem(&id).unwrap();
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let from = signer.key_pair().public_key_raw();
        let to = claimed.key_pair().public_key_raw();
        let at = der.windows(from.len()).position(|w| w == from).unwrap();
        der[at..at + from.len()].copy_from_slice(to);
        let forged = to_pem("CERTIFICATE REQUEST", &der);

        let err = ca.sign_csr(&forged, &id, HOUR).unwrap_err();
        assert!(matches!(err, IdentityError::InvalidCsr { .. }), "{err}");
        assert!(err.to_string().contains("signature"), "{err}");
        // The unmodified CSR is fine.
        ca.sign_csr(&csr, &id, HOUR).unwrap();
    }

    #[test]
    fn malformed_or_non_p256_csrs_are_rejected() {
        let ca = Ca::generate(TD).unwrap();
        let id = SpiffeId::service(TD, "api").unwrap();
        for bad in [
            String::new(),
            "hello".to_owned(),
            to_pem("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00"),
            to_pem("CERTIFICATE REQUEST", &[0xff; 64]),
            ca.root_pem().to_owned(),
        ] {
            let err = ca.sign_csr(&bad, &id, HOUR).unwrap_err();
            assert!(matches!(err, IdentityError::InvalidCsr { .. }), "{err}");
        }
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&p384)
            .unwrap()
            .pem()
            .unwrap();
        let err = ca.sign_csr(&csr, &id, HOUR).unwrap_err();
        assert!(err.to_string().contains("p-256"), "{err}");
    }

    #[test]
    fn identity_checks_come_before_signing() {
        let ca = Ca::generate(TD).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let foreign = SpiffeId::service("other.test", "api").unwrap();
        let csr = key.csr_pem(&foreign).unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &foreign, HOUR),
            Err(IdentityError::ForeignTrustDomain { .. })
        ));
        let id = SpiffeId::service(TD, "api").unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &id, Duration::ZERO),
            Err(IdentityError::ZeroTtl { .. })
        ));
        let no_dns = SpiffeId::service(TD, "Not_A_Label").unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &no_dns, HOUR),
            Err(IdentityError::NoDnsName { .. })
        ));
    }

    #[test]
    fn another_cas_certificate_does_not_verify() {
        let ours = Ca::generate(TD).unwrap();
        let theirs = Ca::generate(TD).unwrap();
        let id = SpiffeId::service(TD, "api").unwrap();
        let (_, issued) = theirs.issue(&id, HOUR).unwrap();
        assert!(
            verify_as_server(ours.root_pem(), &issued.chain_pem, "api.service.mesh.test").is_err()
        );
        assert!(verify_as_client(ours.root_pem(), &issued.chain_pem).is_err());
        // Trusting their root as well is what makes it verify.
        let mut ours = ours;
        ours.add_trusted_roots(theirs.root_pem()).unwrap();
        verify_as_client(&ours.trust_bundle_pem(), &issued.chain_pem).unwrap();
    }

    #[test]
    fn issue_returns_the_key_the_certificate_is_for() {
        let ca = Ca::generate(TD).unwrap();
        let id = SpiffeId::control_plane(TD).unwrap();
        let (key, issued) = ca.issue(&id, HOUR).unwrap();
        let leaf = leaf_der(&issued);
        let cert = certificate::parse(&leaf, "leaf").unwrap();
        assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());
        verify_as_server(ca.root_pem(), &issued.chain_pem, "control-plane.mesh.test").unwrap();
    }

    #[test]
    fn serials_differ_for_the_same_key() {
        let ca = Ca::generate(TD).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let id = SpiffeId::service(TD, "api").unwrap();
        let csr = key.csr_pem(&id).unwrap();
        let serial = |issued: &Issued| {
            let der = leaf_der(issued);
            certificate::parse(&der, "leaf")
                .unwrap()
                .raw_serial()
                .to_vec()
        };
        let a = serial(&ca.sign_csr(&csr, &id, HOUR).unwrap());
        let b = serial(&ca.sign_csr(&csr, &id, HOUR).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), LEAF_SERIAL_BYTES);
        assert_eq!(b.len(), LEAF_SERIAL_BYTES);
        assert!(
            a[0] & 0x80 == 0 && a[0] & 0x40 != 0,
            "positive, full length"
        );
        let root = certificate::parse(ca.root_der(), "root").unwrap();
        assert_eq!(root.raw_serial().len(), CA_SERIAL_BYTES);
    }

    #[test]
    fn from_pem_round_trips_a_generated_ca() {
        let ca = Ca::generate(TD).unwrap();
        let loaded = Ca::from_pem(TD, ca.root_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.root_pem(), ca.root_pem());
        assert_eq!(loaded.not_after(), ca.not_after());
        // A leaf from the loaded CA chains to the original root.
        let id = SpiffeId::service(TD, "api").unwrap();
        let (_, issued) = loaded.issue(&id, HOUR).unwrap();
        verify_as_client(ca.root_pem(), &issued.chain_pem).unwrap();
    }

    #[test]
    fn from_pem_accepts_an_operator_ca_with_its_own_subject_and_key_type() {
        let keys = [
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap(),
        ];
        for key in keys {
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(
                DnType::OrganizationName,
                rcgen::DnValue::PrintableString("Example Corp".try_into().unwrap()),
            );
            params
                .distinguished_name
                .push(DnType::CommonName, "Example Mesh Root");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.not_before = asn1_time(SystemTime::now() - HOUR).unwrap();
            params.not_after = asn1_time(SystemTime::now() + 48 * HOUR).unwrap();
            let cert = params.self_signed(&key).unwrap();
            let ca = Ca::from_pem(TD, &cert.pem(), &key.serialize_pem()).unwrap();
            let id = SpiffeId::service(TD, "api").unwrap();
            let (_, issued) = ca.issue(&id, HOUR).unwrap();
            verify_as_server(
                &ca.trust_bundle_pem(),
                &issued.chain_pem,
                "api.service.mesh.test",
            )
            .unwrap();
        }
    }

    #[test]
    fn from_pem_rejects_bad_pairs() {
        let ca = Ca::generate(TD).unwrap();
        let other = Ca::generate(TD).unwrap();

        let err = Ca::from_pem(TD, ca.root_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");

        let err = Ca::from_pem(TD, ca.root_pem(), "not a key").unwrap_err();
        assert!(matches!(err, IdentityError::InvalidKey { .. }), "{err}");

        let two = format!("{}{}", ca.root_pem(), other.root_pem());
        let err = Ca::from_pem(TD, &two, &ca.key_pem()).unwrap_err();
        assert!(err.to_string().contains("2 certificates"), "{err}");

        let err = Ca::from_pem("other.test", ca.root_pem(), &ca.key_pem()).unwrap_err();
        assert!(err.to_string().contains("mesh.test"), "{err}");

        let err = Ca::from_pem("Bad TD", ca.root_pem(), &ca.key_pem()).unwrap_err();
        assert!(
            matches!(err, IdentityError::InvalidTrustDomain { .. }),
            "{err}"
        );

        // A leaf and its own key: a matching pair, but not a CA.
        let id = SpiffeId::service(TD, "api").unwrap();
        let (key, issued) = ca.issue(&id, HOUR).unwrap();
        let leaf_pem = to_pem("CERTIFICATE", &leaf_der(&issued));
        let err = Ca::from_pem(TD, &leaf_pem, &key.key_pem()).unwrap_err();
        assert!(err.to_string().contains("not a ca"), "{err}");
    }

    #[test]
    fn expired_ca_is_rejected_at_load() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.not_before = asn1_time(SystemTime::now() - 48 * HOUR).unwrap();
        params.not_after = asn1_time(SystemTime::now() - HOUR).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let err = Ca::from_pem(TD, &cert.pem(), &key.serialize_pem()).unwrap_err();
        assert!(matches!(err, IdentityError::CaExpired { .. }), "{err}");
    }

    #[test]
    fn add_trusted_roots_deduplicates_and_checks() {
        let mut ca = Ca::generate(TD).unwrap();
        let other = Ca::generate(TD).unwrap();
        ca.add_trusted_roots(ca.root_pem().to_owned().as_str())
            .unwrap();
        assert_eq!(ca.trust_bundle_der().len(), 1);
        let both = format!("{}{}", other.root_pem(), other.root_pem());
        ca.add_trusted_roots(&both).unwrap();
        ca.add_trusted_roots(other.root_pem()).unwrap();
        assert_eq!(ca.trust_bundle_der().len(), 2);
        assert_eq!(
            ca.trust_bundle_pem(),
            format!("{}{}", ca.root_pem(), other.root_pem())
        );

        // A leaf is not a root; nothing from a bad batch is added.
        let third = Ca::generate(TD).unwrap();
        let (_, issued) = ca.issue(&SpiffeId::gateway(TD).unwrap(), HOUR).unwrap();
        let leaf_pem = to_pem("CERTIFICATE", &leaf_der(&issued));
        let batch = format!("{}{leaf_pem}", third.root_pem());
        assert!(ca.add_trusted_roots(&batch).is_err());
        assert!(ca.add_trusted_roots("garbage").is_err());
        assert_eq!(ca.trust_bundle_der().len(), 2);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let ca = Ca::generate(TD).unwrap();
        let debug = format!("{ca:?}");
        assert!(debug.contains("mesh.test"));
        for line in ca.key_pem().lines().filter(|l| !l.starts_with("-----")) {
            assert!(!debug.contains(line), "{debug}");
        }
    }
}
