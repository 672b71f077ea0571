//! The demo identity provider: one ES256 key pair, its public half as the
//! JWKS the gateway verifies with, and signed tokens for any user name.
//!
//! Real deployments get tokens from their identity provider. The demo needs
//! a stand-in whose tokens pass the gateway's real checks (pinned
//! algorithm, `kid`, `iss`, `aud`, `exp`), so it signs exactly what the
//! `shop-users` provider of `config/examples/seed.toml` expects. Nothing
//! here is used by the gateway itself.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::Serialize;

use super::DemoError;

/// The `issuer` of the seed's `shop-users` provider.
pub(crate) const ISSUER: &str = "https://id.seed.meshgate.local";
/// One of the seed's `audiences`.
pub(crate) const AUDIENCE: &str = "seed-shop";
/// How long a demo token stays valid.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The private key's file name in the demo directory.
pub(crate) const KEY_FILE: &str = "jwt-key.pem";
/// The public key set's file name; the seed's `jwks_file`.
pub(crate) const JWKS_FILE: &str = "jwks.json";

/// A freshly generated key pair, ready to be written out.
#[derive(Debug)]
pub(crate) struct NewKey {
    /// PKCS#8 PEM of the private key.
    pub(crate) key_pem: String,
    /// The JWKS document holding the public key.
    pub(crate) jwks: String,
}

/// Generates a P-256 key pair for ES256.
pub(crate) fn generate() -> Result<NewKey, DemoError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| DemoError::Keygen {
            what: "the token signing key",
            source,
        })?;
    let (kid, x, y) = public_parts(&key)?;
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": x,
            "y": y,
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
        }]
    });
    Ok(NewKey {
        key_pem: key.serialize_pem(),
        jwks: format!("{jwks:#}\n"),
    })
}

/// The key id and the base64url coordinates of the public point.
///
/// The key id is derived from the public key rather than stored, so that
/// `meshgate demo token` needs only the private key file to name it.
fn public_parts(key: &KeyPair) -> Result<(String, String, String), DemoError> {
    // An uncompressed SEC1 point: 0x04, then x and y, 32 bytes each.
    let raw = key.public_key_raw();
    let (x, y) = match raw {
        [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => return Err(DemoError::KeyShape),
    };
    let x = URL_SAFE_NO_PAD.encode(x);
    let y = URL_SAFE_NO_PAD.encode(y);
    let kid = format!("seed-demo-{}", &x[..12]);
    Ok((kid, x, y))
}

/// Signs tokens with the demo key.
pub(crate) struct Issuer {
    key: EncodingKey,
    kid: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("kid", &self.kid).finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    scope: &'a str,
    iat: u64,
    exp: u64,
}

impl Issuer {
    /// The issuer for a private key in PEM.
    pub(crate) fn from_pem(pem: &str) -> Result<Issuer, DemoError> {
        let pair = KeyPair::from_pem(pem).map_err(|source| DemoError::Keygen {
            what: "the token signing key (reading it)",
            source,
        })?;
        let (kid, _, _) = public_parts(&pair)?;
        // The workspace builds jsonwebtoken without its PEM parser, and
        // rcgen has already parsed the key: hand over its PKCS#8 DER.
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        Ok(Issuer { key, kid })
    }

    /// The issuer whose key `meshgate demo` wrote into `dir`.
    pub(crate) fn load(dir: &Path) -> Result<Issuer, DemoError> {
        let path = dir.join(KEY_FILE);
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DemoError::NoKey(path));
            }
            Err(source) => {
                return Err(DemoError::File {
                    action: "cannot read",
                    path,
                    source,
                });
            }
        };
        Issuer::from_pem(&pem)
    }

    /// A token for `user` with `scope`, valid from now for
    /// [`TOKEN_LIFETIME`].
    pub(crate) fn token(&self, user: &str, scope: &str) -> Result<String, DemoError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: ISSUER,
            aud: AUDIENCE,
            sub: user,
            scope,
            iat: now,
            exp: now + TOKEN_LIFETIME.as_secs(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(DemoError::Sign)
    }
}
