use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything that can go wrong minting, signing, loading or storing
/// identities. Messages name the ID, file or input at fault; none of them
/// carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("invalid spiffe id {uri:?}: {reason}")]
    InvalidSpiffeId { uri: String, reason: &'static str },

    #[error("invalid trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        trust_domain: String,
        reason: &'static str,
    },

    #[error("spiffe id {id} has no dns name: {reason}")]
    NoDnsName { id: String, reason: String },

    #[error("spiffe id {id} is not in this ca's trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },

    #[error("generating a p-256 key failed: {0}")]
    KeyGeneration(#[source] rcgen::Error),

    #[error("building a csr for {id} failed: {source}")]
    CsrBuild {
        id: String,
        #[source]
        source: rcgen::Error,
    },

    /// The CSR could not be parsed, or its signature does not verify with
    /// the public key it carries.
    #[error("rejected csr: {reason}")]
    InvalidCsr { reason: String },

    #[error("ttl for {id} must be greater than zero")]
    ZeroTtl { id: String },

    #[error("the ca for trust domain {trust_domain} expired at {}", Rfc3339(*not_after))]
    CaExpired {
        trust_domain: String,
        not_after: SystemTime,
    },

    #[error("signing a certificate for {id} failed: {source}")]
    Sign {
        id: String,
        #[source]
        source: rcgen::Error,
    },

    /// PEM or X.509 input that is not what it should be. `what` names the
    /// input: a file path, or a description such as "ca certificate".
    #[error("invalid {what}: {reason}")]
    InvalidCertificate { what: String, reason: String },

    #[error("invalid ca key {what}: {reason}")]
    InvalidKey { what: String, reason: String },

    #[error("ca key {key} does not belong to ca certificate {cert}")]
    KeyMismatch { cert: String, key: String },

    #[error("time {} cannot be written into a certificate", Rfc3339(*time))]
    TimeOutOfRange { time: SystemTime },

    #[error("the system random number generator failed")]
    Random,

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The state directory is in a state that only an operator can resolve;
    /// continuing could discard the mesh's trust root.
    #[error("ca state directory {dir}: {reason}")]
    StateDir { dir: PathBuf, reason: String },
}

/// `SystemTime`'s `Debug` is a pair of raw counters; operators reading an
/// expiry error want a date.
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = match self.0.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).ok(),
            Err(before) => i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
        };
        match secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok()) {
            Some(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            None => write!(f, "{:?}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_in_messages_are_dates() {
        let err = IdentityError::CaExpired {
            trust_domain: "td".to_owned(),
            not_after: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        assert_eq!(
            err.to_string(),
            "the ca for trust domain td expired at 2023-11-14T22:13:20Z"
        );
        let before_epoch = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(Rfc3339(before_epoch).to_string(), "1969-12-31T00:00:00Z");
    }
}
