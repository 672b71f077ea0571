//! A workload's own key pair and the CSR that carries its public half to
//! the CA.

use std::fmt;

use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
    string::Ia5String,
};

use crate::{IdentityError, SpiffeId};

/// A workload's private key; never leaves the process that generated it.
///
/// Always ECDSA P-256: every TLS stack the mesh talks to supports it, and
/// signing is cheap enough for short-lived certificates renewed often.
pub struct WorkloadKey {
    key: KeyPair,
}

impl WorkloadKey {
    /// A fresh P-256 key from the system's secure random source.
    pub fn generate() -> Result<WorkloadKey, IdentityError> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IdentityError::KeyGeneration)?;
        Ok(WorkloadKey { key })
    }

    /// A PEM certificate signing request for `id`, signed with this key.
    ///
    /// The CA ignores the names in it (the control plane decides who the
    /// workload is); they are there so that a human reading the CSR, or a
    /// CA other than meshgate's, sees what the workload asked for.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, IdentityError> {
        let csr_err = |source| IdentityError::CsrBuild {
            id: id.to_string(),
            source,
        };
        let mut params = CertificateParams::default();
        // rcgen's default subject is a placeholder CN; a mesh identity lives
        // in the SANs, so the subject stays empty.
        params.distinguished_name = DistinguishedName::new();
        let uri = Ia5String::try_from(id.as_str()).map_err(csr_err)?;
        params.subject_alt_names.push(SanType::URI(uri));
        if let Ok(dns) = id.dns_name() {
            let dns = Ia5String::try_from(dns).map_err(csr_err)?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        let csr = params.serialize_request(&self.key).map_err(csr_err)?;
        csr.pem().map_err(csr_err)
    }

    /// PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// PKCS#8 DER.
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The public key as a DER SubjectPublicKeyInfo, safe to log or share.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key)
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.key
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the algorithm: the key must not reach logs, even through a
        // `{:?}` in an error path.
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ecdsa-p256")
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;

    #[test]
    fn debug_does_not_print_the_key() {
        let key = WorkloadKey::generate().unwrap();
        let debug = format!("{key:?}");
        let pem = key.key_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!debug.contains(line), "{debug}");
        }
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn key_der_is_the_pkcs8_body_of_key_pem() {
        use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject as _};
        let key = WorkloadKey::generate().unwrap();
        let from_pem = PrivatePkcs8KeyDer::from_pem_slice(key.key_pem().as_bytes()).unwrap();
        assert_eq!(from_pem.secret_pkcs8_der(), key.key_der().as_slice());
    }

    #[test]
    fn csr_carries_the_requested_names() {
        let key = WorkloadKey::generate().unwrap();
        let id = SpiffeId::service("td", "api").unwrap();
        let csr = key.csr_pem(&id).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert!(
            parsed
                .params
                .subject_alt_names
                .contains(&SanType::URI(Ia5String::try_from(id.as_str()).unwrap()))
        );
        assert!(parsed.params.subject_alt_names.contains(&SanType::DnsName(
            Ia5String::try_from("api.service.td").unwrap()
        )));
    }
}
