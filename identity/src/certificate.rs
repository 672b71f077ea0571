//! Reading certificates: PEM to DER, validity windows, the SPIFFE ID in a
//! certificate's SANs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use crate::{IdentityError, SpiffeId};

/// PEM certificates to DER.
///
/// Sections that are not certificates (a private key left in the same file,
/// say) are skipped; a file with no certificate at all is an error.
pub fn certs_der(pem: &str) -> Result<Vec<Vec<u8>>, IdentityError> {
    certs_der_named(pem, "certificate pem")
}

/// [`certs_der`] with `what` naming the input in errors.
pub(crate) fn certs_der_named(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|cert| cert.map(|der| der.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::InvalidCertificate {
            what: what.to_owned(),
            reason: format!("malformed pem: {e}"),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::InvalidCertificate {
            what: what.to_owned(),
            reason: "no CERTIFICATE pem section found".to_owned(),
        });
    }
    Ok(certs)
}

/// Validity window of the first certificate in a PEM chain.
pub fn validity(chain_pem: &str) -> Result<(SystemTime, SystemTime), IdentityError> {
    let what = "certificate chain";
    let certs = certs_der_named(chain_pem, what)?;
    // certs_der_named never returns an empty list.
    let first = certs
        .first()
        .ok_or_else(|| IdentityError::InvalidCertificate {
            what: what.to_owned(),
            reason: "no certificate".to_owned(),
        })?;
    let cert = parse(first, what)?;
    let window = cert.validity();
    Ok((
        system_time(&window.not_before),
        system_time(&window.not_after),
    ))
}

/// The SPIFFE ID in a DER certificate's URI SANs (exactly one spiffe:// URI SAN, else None).
///
/// `None` also for a certificate that does not parse, has a malformed SAN
/// extension, or whose spiffe URI breaks the SPIFFE rules: a peer whose
/// identity is ambiguous has no identity.
pub fn spiffe_id_of(cert_der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut spiffe_uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            // Counted case-insensitively so that `SPIFFE://...` beside a valid
            // ID makes the certificate ambiguous rather than being overlooked.
            GeneralName::URI(uri) if has_spiffe_scheme(uri) => Some(*uri),
            _ => None,
        });
    let uri = spiffe_uris.next()?;
    if spiffe_uris.next().is_some() {
        return None;
    }
    SpiffeId::parse(uri).ok()
}

fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
}

pub(crate) fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, IdentityError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
        IdentityError::InvalidCertificate {
            what: what.to_owned(),
            reason: format!("not an x.509 certificate: {e}"),
        }
    })?;
    if !rest.is_empty() {
        return Err(IdentityError::InvalidCertificate {
            what: what.to_owned(),
            reason: "trailing data after the certificate".to_owned(),
        });
    }
    Ok(cert)
}

pub(crate) fn system_time(t: &ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    // X.509 times go back to year 0; SystemTime can represent them on every
    // platform meshgate targets, and saturating is harmless either way.
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// DER to PEM with 64-column lines, as RFC 7468 asks.
pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;

    #[test]
    fn certs_der_rejects_garbage_and_empty_input() {
        assert!(certs_der("").is_err());
        assert!(certs_der("hello").is_err());
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(certs_der(broken).is_err());
        let unterminated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(certs_der(unterminated).is_err());
    }

    #[test]
    fn to_pem_round_trips_through_certs_der() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = to_pem("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(certs_der(&pem).unwrap(), vec![der]);
    }

    #[test]
    fn validity_rejects_non_certificates() {
        let pem = to_pem("CERTIFICATE", b"not der");
        let err = validity(&pem).unwrap_err();
        assert!(err.to_string().contains("certificate chain"), "{err}");
        assert!(spiffe_id_of(b"not der").is_none());
    }
}
