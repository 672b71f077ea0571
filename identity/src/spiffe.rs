//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`.
//!
//! Parsing follows the SPIFFE ID specification strictly (the same rules as
//! go-spiffe and the SPIFFE conformance tests): an ID that another SPIFFE
//! implementation would reject must not be minted here, or the mesh would
//! hand out certificates its peers cannot verify.

use std::fmt;

use crate::IdentityError;

const SCHEME: &str = "spiffe://";
/// The SPIFFE spec caps a whole ID at 2048 bytes.
const MAX_ID_LEN: usize = 2048;
/// The SPIFFE spec caps a trust domain at 255 bytes (a DNS name's limit).
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// The longest name a DNS resolver or hostname verifier accepts.
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;

/// `spiffe://<trust-domain>/<path>`
///
/// The URI is stored once, validated; accessors borrow slices of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    uri: String,
    /// End of the trust domain inside `uri` (the path, if any, starts here).
    td_end: usize,
}

impl SpiffeId {
    /// `spiffe://TD/service/NAME`: a mesh service's workloads.
    ///
    /// `name` must be a single path segment: a `/` in it would let a caller
    /// mint an ID outside the `service/` namespace.
    pub fn service(trust_domain: &str, name: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::build(trust_domain, &["service", name])
    }

    /// `spiffe://TD/gateway`: the edge gateway.
    pub fn gateway(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::build(trust_domain, &["gateway"])
    }

    /// `spiffe://TD/control-plane`: the control plane that runs the CA.
    pub fn control_plane(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::build(trust_domain, &["control-plane"])
    }

    /// `spiffe://TD` with no path: the trust domain's own ID, carried by the
    /// mesh CA's root certificate.
    pub fn trust_domain_id(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::build(trust_domain, &[])
    }

    /// Checks each part on its own before joining them, so that a trust
    /// domain or name containing `/` cannot shift the boundaries (a trust
    /// domain of `td/service/x` must not yield `spiffe://td/service/x/...`).
    fn build(trust_domain: &str, segments: &[&str]) -> Result<SpiffeId, IdentityError> {
        let mut uri = format!("{SCHEME}{trust_domain}");
        for segment in segments {
            uri.push('/');
            uri.push_str(segment);
        }
        let invalid = |reason: &'static str| IdentityError::InvalidSpiffeId {
            uri: truncate_for_error(&uri),
            reason,
        };
        validate_trust_domain(trust_domain).map_err(invalid)?;
        for segment in segments {
            validate_segment(segment).map_err(invalid)?;
        }
        SpiffeId::parse(&uri)
    }

    /// Parses an ID per the SPIFFE spec: lowercase trust domain of
    /// `[a-z0-9.-_]`, path segments non-empty of `[A-Za-z0-9.-_]` and not
    /// `.` or `..`, no trailing slash, no query, fragment, port, userinfo or
    /// percent-encoding, at most 2048 bytes.
    pub fn parse(uri: &str) -> Result<SpiffeId, IdentityError> {
        let invalid = |reason: &'static str| IdentityError::InvalidSpiffeId {
            uri: truncate_for_error(uri),
            reason,
        };
        if uri.len() > MAX_ID_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("must start with spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td).map_err(invalid)?;
        if !path.is_empty() {
            // `path` starts with '/', so the first split item is empty.
            for segment in path.split('/').skip(1) {
                validate_segment(segment).map_err(invalid)?;
            }
        }
        Ok(SpiffeId {
            uri: uri.to_owned(),
            td_end: SCHEME.len() + td.len(),
        })
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain, e.g. `mesh.example` in `spiffe://mesh.example/gateway`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The path including its leading `/`, or `""` for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// `Some(NAME)` for `spiffe://TD/service/NAME`, else `None`.
    pub fn service_name(&self) -> Option<&str> {
        let name = self.path().strip_prefix("/service/")?;
        (!name.contains('/')).then_some(name)
    }

    /// DNS name put in the certificate beside the URI SAN, so a TLS client can verify
    /// the server with ordinary hostname verification: "NAME.service.TD" for services,
    /// "gateway.TD", "control-plane.TD". Error if a label is not a valid DNS label.
    ///
    /// Labels must be lowercase: DNS names compare case-insensitively, so
    /// `service/Api` and `service/api` (distinct SPIFFE IDs) would otherwise
    /// share a hostname and either could impersonate the other to a client
    /// that checks only the hostname.
    pub fn dns_name(&self) -> Result<String, IdentityError> {
        let no_dns = |reason: String| IdentityError::NoDnsName {
            id: self.uri.clone(),
            reason,
        };
        let td = self.trust_domain();
        let name = match (self.service_name(), self.path()) {
            (Some(service), _) => {
                // Checked as one label before joining: a dotted name such as
                // `a.b` would otherwise pass as two labels and claim another
                // subtree of the DNS namespace.
                validate_dns_label(service).map_err(|why| {
                    no_dns(format!(
                        "service name {service:?} is not a dns label: it {why}"
                    ))
                })?;
                format!("{service}.service.{td}")
            }
            (None, "/gateway") => format!("gateway.{td}"),
            (None, "/control-plane") => format!("control-plane.{td}"),
            _ => {
                return Err(no_dns(
                    "only /service/NAME, /gateway and /control-plane ids have one".to_owned(),
                ));
            }
        };
        if name.len() > MAX_DNS_NAME_LEN {
            return Err(no_dns(format!(
                "{name:?} is longer than {MAX_DNS_NAME_LEN} bytes"
            )));
        }
        for label in td.split('.') {
            validate_dns_label(label)
                .map_err(|why| no_dns(format!("trust domain label {label:?} in {name:?} {why}")))?;
        }
        Ok(name)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

/// Checks a bare trust domain name (what follows `spiffe://`).
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("trust domain is empty");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("trust domain is longer than 255 bytes");
    }
    // ':' (port), '@' (userinfo), '?', '#', '%' and uppercase all fall out
    // here: the spec's trust domain alphabet has none of them.
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("trust domain may only contain a-z, 0-9, '.', '-' and '_'");
    }
    Ok(())
}

fn validate_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("path has an empty segment or a trailing slash");
    }
    if segment == "." || segment == ".." {
        return Err("path segments may not be '.' or '..'");
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("path segments may only contain A-Z, a-z, 0-9, '.', '-' and '_'");
    }
    Ok(())
}

fn validate_dns_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("is empty");
    }
    if label.len() > MAX_DNS_LABEL_LEN {
        return Err("is longer than 63 bytes");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("starts or ends with '-'");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may only contain a-z, 0-9 and '-'");
    }
    Ok(())
}

/// IDs arrive from CSRs and config; keep an absurdly long one from flooding
/// a log line.
fn truncate_for_error(uri: &str) -> String {
    const SHOWN: usize = 120;
    if uri.len() <= SHOWN {
        return uri.to_owned();
    }
    let mut end = SHOWN;
    while !uri.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &uri[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;

    #[test]
    fn constructors_format_the_uri() {
        let svc = SpiffeId::service("mesh.local", "api").unwrap();
        assert_eq!(svc.to_string(), "spiffe://mesh.local/service/api");
        assert_eq!(svc.trust_domain(), "mesh.local");
        assert_eq!(svc.service_name(), Some("api"));
        assert_eq!(svc.path(), "/service/api");

        let gw = SpiffeId::gateway("mesh.local").unwrap();
        assert_eq!(gw.as_str(), "spiffe://mesh.local/gateway");
        assert_eq!(gw.service_name(), None);

        let cp = SpiffeId::control_plane("mesh.local").unwrap();
        assert_eq!(cp.as_str(), "spiffe://mesh.local/control-plane");

        let td = SpiffeId::trust_domain_id("mesh.local").unwrap();
        assert_eq!(td.as_str(), "spiffe://mesh.local");
        assert_eq!(td.path(), "");
        assert_eq!(td.trust_domain(), "mesh.local");
    }

    #[test]
    fn parse_round_trips() {
        for uri in [
            "spiffe://example.org",
            "spiffe://example.org/service/api",
            "spiffe://a_b-c.9/Ns/Some.Thing-1_2/x",
            "spiffe://td/service/.hidden",
            "spiffe://td/...",
        ] {
            let id = SpiffeId::parse(uri).unwrap();
            assert_eq!(id.to_string(), uri);
            assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
            assert_eq!(uri.parse::<SpiffeId>().unwrap(), id);
        }
    }

    #[test]
    fn service_name_only_for_exactly_service_slash_name() {
        let id = SpiffeId::parse("spiffe://td/service/api/v2").unwrap();
        assert_eq!(id.service_name(), None);
        let id = SpiffeId::parse("spiffe://td/services/api").unwrap();
        assert_eq!(id.service_name(), None);
        let id = SpiffeId::parse("spiffe://td/service").unwrap();
        assert_eq!(id.service_name(), None);
    }

    #[test]
    fn parse_rejects_what_the_spec_rejects() {
        let long_path = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        let long_td = format!("spiffe://{}", "a".repeat(256));
        for uri in [
            "",
            "spiffe://",
            "spiffe:///path",
            "http://td/service/api",
            "SPIFFE://td/service/api",
            "spiffe:/td/service/api",
            "spiffe://Example.org/service/api",
            "spiffe://td:8443/service/api",
            "spiffe://user@td/service/api",
            "spiffe://td/service/api?x=1",
            "spiffe://td/service/api#frag",
            "spiffe://td/service//api",
            "spiffe://td/service/api/",
            "spiffe://td/",
            "spiffe://td/service/./api",
            "spiffe://td/service/../api",
            "spiffe://td/service/a%20b",
            "spiffe://td/service/a b",
            "spiffe://td/service/caf\u{e9}",
            "spiffe://t\u{e9}/service/api",
            long_path.as_str(),
            long_td.as_str(),
        ] {
            let err = SpiffeId::parse(uri).expect_err(uri);
            assert!(
                matches!(err, IdentityError::InvalidSpiffeId { .. }),
                "{uri}: {err}"
            );
        }
        assert!(SpiffeId::service("td", "a/b").is_err());
        assert!(SpiffeId::service("td", "").is_err());
        assert!(SpiffeId::gateway("TD").is_err());
        assert!(SpiffeId::gateway("td/service/x").is_err());
        assert!(SpiffeId::control_plane("td/x").is_err());
        assert!(SpiffeId::trust_domain_id("td/x").is_err());
    }

    #[test]
    fn length_limit_is_2048_bytes() {
        let prefix = "spiffe://td/";
        let ok = format!("{prefix}{}", "a".repeat(MAX_ID_LEN - prefix.len()));
        assert!(SpiffeId::parse(&ok).is_ok());
        let too_long = format!("{ok}a");
        assert!(SpiffeId::parse(&too_long).is_err());
    }

    #[test]
    fn error_message_is_lowercase_and_bounded() {
        let err = SpiffeId::parse(&format!("spiffe://td/{}?", "a".repeat(500))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("invalid spiffe id"), "{msg}");
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn dns_names() {
        let td = "mesh.example";
        assert_eq!(
            SpiffeId::service(td, "api").unwrap().dns_name().unwrap(),
            "api.service.mesh.example"
        );
        assert_eq!(
            SpiffeId::gateway(td).unwrap().dns_name().unwrap(),
            "gateway.mesh.example"
        );
        assert_eq!(
            SpiffeId::control_plane(td).unwrap().dns_name().unwrap(),
            "control-plane.mesh.example"
        );
    }

    #[test]
    fn dns_name_rejects_invalid_labels() {
        for id in [
            SpiffeId::service("td", "my_svc").unwrap(),
            SpiffeId::service("td", "Api").unwrap(),
            SpiffeId::service("td", "-api").unwrap(),
            SpiffeId::service("td", "a.b").unwrap(),
            SpiffeId::service("td", &"a".repeat(64)).unwrap(),
            SpiffeId::service("under_score.td", "api").unwrap(),
            SpiffeId::gateway("td.").unwrap(),
            SpiffeId::gateway("a..b").unwrap(),
            SpiffeId::trust_domain_id("td").unwrap(),
            SpiffeId::parse("spiffe://td/service/api/v2").unwrap(),
            SpiffeId::parse("spiffe://td/workload").unwrap(),
        ] {
            let err = id.dns_name().expect_err(id.as_str());
            assert!(
                matches!(err, IdentityError::NoDnsName { .. }),
                "{id}: {err}"
            );
        }
        // A dotted service name would read as extra DNS labels, shadowing
        // another service's name; reject rather than flatten it.
        let id = SpiffeId::service("td", "a.b").unwrap();
        assert!(id.dns_name().unwrap_err().to_string().contains("a.b"));
    }
}
