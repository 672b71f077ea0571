//! Verification key sets: a JWKS document or an HMAC secret turned into
//! keys that know which algorithms they may verify.
//!
//! A key set is immutable once built; the store swaps whole sets. Which
//! algorithms a key may verify is decided here, from the key's own type
//! (`kty`, `crv`) and its optional `alg`, so that a token can never pick a
//! key of another family: an RSA public key is never an HMAC secret, and a
//! JWKS never yields HMAC keys at all.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use meshgate_config::JwtAlgorithm;
use serde::Deserialize;

/// Largest JWKS document accepted, from a file or a URL.
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;

/// A set of algorithms, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AlgSet(u16);

impl AlgSet {
    const RSA: AlgSet = AlgSet::of(&[
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ]);
    const HMAC: AlgSet = AlgSet::of(&[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]);

    /// An algorithm this build does not know has no bit, so no set
    /// contains it.
    const fn bit(a: Algorithm) -> u16 {
        let shift = match a {
            Algorithm::HS256 => 0,
            Algorithm::HS384 => 1,
            Algorithm::HS512 => 2,
            Algorithm::ES256 => 3,
            Algorithm::ES384 => 4,
            Algorithm::RS256 => 5,
            Algorithm::RS384 => 6,
            Algorithm::RS512 => 7,
            Algorithm::PS256 => 8,
            Algorithm::PS384 => 9,
            Algorithm::PS512 => 10,
            Algorithm::EdDSA => 11,
            _ => return 0,
        };
        1 << shift
    }

    pub(crate) const fn of(algs: &[Algorithm]) -> AlgSet {
        let mut bits = 0;
        let mut i = 0;
        while i < algs.len() {
            bits |= Self::bit(algs[i]);
            i += 1;
        }
        AlgSet(bits)
    }

    pub(crate) const fn contains(self, a: Algorithm) -> bool {
        self.0 & Self::bit(a) != 0
    }
}

/// The `jsonwebtoken` name of a configured algorithm.
pub(crate) fn jose(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Rs384 => Algorithm::RS384,
        JwtAlgorithm::Rs512 => Algorithm::RS512,
        JwtAlgorithm::Ps256 => Algorithm::PS256,
        JwtAlgorithm::Ps384 => Algorithm::PS384,
        JwtAlgorithm::Ps512 => Algorithm::PS512,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Es384 => Algorithm::ES384,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Hs384 => Algorithm::HS384,
        JwtAlgorithm::Hs512 => Algorithm::HS512,
    }
}

/// One verification key.
#[derive(Debug)]
pub(crate) struct Key {
    /// `kid`, when the JWK has a non-empty one.
    pub(crate) kid: Option<String>,
    /// Algorithms this key may verify.
    pub(crate) algs: AlgSet,
    pub(crate) key: DecodingKey,
}

/// Why a token found no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// The set holds no key at all (not loaded yet, or the source failed).
    Empty,
    /// Every key has a `kid`, and none is the token's.
    UnknownKid,
    /// Keys the `kid` allows exist, but none fits the token's algorithm.
    NoFit,
}

/// An immutable set of keys.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

/// A JWKS document that yields no usable key, or no document at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JWKS document (a JSON object with a `keys` array): {0}")]
    NotJwks(serde_json::Error),
    /// Larger than we accept.
    #[error("the document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// Parsed, but no key can verify signatures here.
    #[error("no usable signing key in the document (skipped: {0})")]
    NoUsableKey(String),
}

impl KeySet {
    /// Parses a JWKS document. Keys we cannot use (encryption keys,
    /// symmetric `oct` keys, unknown curves, an `alg` that contradicts the
    /// key type, a size that does not fit the type) are skipped and named
    /// in the second value.
    pub(crate) fn from_jwks(bytes: &[u8]) -> Result<(KeySet, Vec<String>), JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let doc: JwksDoc = serde_json::from_slice(bytes).map_err(JwksError::NotJwks)?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            let label = value
                .get("kid")
                .and_then(|k| k.as_str())
                .map_or_else(|| format!("key #{i}"), |k| format!("kid \"{k}\""));
            match key_from_jwk(value) {
                Ok(k) => keys.push(k),
                Err(why) => skipped.push(format!("{label}: {why}")),
            }
        }
        if keys.is_empty() {
            let why = if skipped.is_empty() {
                "the `keys` array is empty".to_owned()
            } else {
                skipped.join("; ")
            };
            return Err(JwksError::NoUsableKey(why));
        }
        Ok((KeySet { keys }, skipped))
    }

    /// An HMAC secret, for HS256/HS384/HS512 only. It has no `kid`, so
    /// it serves tokens whatever `kid` they name.
    pub(crate) fn from_secret(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![Key {
                kid: None,
                algs: AlgSet::HMAC,
                key: DecodingKey::from_secret(secret),
            }],
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether a key of the set carries exactly this (non-empty) `kid`.
    pub(crate) fn names(&self, kid: &str) -> bool {
        !kid.is_empty() && self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Whether the set mixes keys with a `kid` and keys without: then a
    /// token naming a `kid` the set lacks is tried on the keys without,
    /// but its key may also be one newly published.
    pub(crate) fn mixes_kids(&self) -> bool {
        let named = |k: &Key| k.kid.as_deref().is_some_and(|id| !id.is_empty());
        self.keys.iter().any(named) && !self.keys.iter().all(named)
    }

    /// The keys that may verify a token signed with `alg`, carrying `kid`,
    /// in the set's order; never empty. Envoy's rule: a key is passed over
    /// only when both it and the token have a `kid` and the two differ (an
    /// empty `kid` counts as none), so a token without `kid`, or a key set
    /// without them, can yield several keys and the caller tries each.
    /// Borrows; no allocation.
    pub(crate) fn find<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> Result<impl Iterator<Item = &'a Key>, Miss> {
        let kid = kid.filter(|k| !k.is_empty());
        let mut named = self
            .keys
            .iter()
            .filter(move |key| kid.is_none_or(|t| key.kid.as_deref().is_none_or(|own| own == t)))
            .peekable();
        if named.peek().is_none() {
            return Err(if self.keys.is_empty() {
                Miss::Empty
            } else {
                Miss::UnknownKid
            });
        }
        let mut fitting = named.filter(move |k| k.algs.contains(alg)).peekable();
        if fitting.peek().is_none() {
            return Err(Miss::NoFit);
        }
        Ok(fitting)
    }
}

fn key_from_jwk(value: serde_json::Value) -> Result<Key, &'static str> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "not a valid JWK")?;
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err("`use` is not \"sig\"");
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("`key_ops` does not include \"verify\"");
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgSet::RSA,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => AlgSet::of(&[Algorithm::ES256]),
            EllipticCurve::P384 => AlgSet::of(&[Algorithm::ES384]),
            _ => return Err("unsupported elliptic curve"),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => AlgSet::of(&[Algorithm::EdDSA]),
            _ => return Err("unsupported OKP curve"),
        },
        // Symmetric keys do not belong in a published key set; accepting
        // one would let whoever can read the JWKS mint tokens.
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) keys are refused"),
        _ => return Err("unsupported key type"),
    };
    let algs = match jwk.common.key_algorithm {
        None => by_type,
        Some(ka) => match Algorithm::try_from(ka) {
            Ok(a) if by_type.contains(a) => AlgSet::of(&[a]),
            Ok(_) => return Err("`alg` does not match the key type"),
            Err(_) => return Err("`alg` is not a signature algorithm we support"),
        },
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "key parameters are not valid base64url")?;
    check_size(&jwk.algorithm)?;
    Ok(Key {
        kid: jwk.common.key_id.filter(|k| !k.is_empty()),
        algs,
        key,
    })
}

/// Refuses a key whose size does not fit its type. Such a key verifies
/// nothing, and jsonwebtoken's EdDSA verifier slices the key to 32 bytes,
/// so a shorter one would panic the request that uses it, before its
/// signature is looked at. Called once the parameters decoded.
fn check_size(params: &AlgorithmParameters) -> Result<(), &'static str> {
    let len = |b64: &str| URL_SAFE_NO_PAD.decode(b64).map_or(0, |b| b.len());
    match params {
        // RFC 8037, 2.
        AlgorithmParameters::OctetKeyPair(p) if len(&p.x) != 32 => {
            Err("an Ed25519 `x` must be 32 bytes")
        }
        // RFC 7518, 6.2.1.2 and 6.2.1.3: full-length coordinates.
        AlgorithmParameters::EllipticCurve(p) => {
            let (size, why) = match p.curve {
                EllipticCurve::P384 => (48, "P-384 `x` and `y` must be 48 bytes each"),
                _ => (32, "P-256 `x` and `y` must be 32 bytes each"),
            };
            if len(&p.x) == size && len(&p.y) == size {
                Ok(())
            } else {
                Err(why)
            }
        }
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD.decode(&p.n).unwrap_or_default();
            let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
            let bits = n
                .first()
                .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
            match bits {
                // RFC 7518, 3.3 asks for 2048 bits or more.
                ..2048 => Err("the RSA modulus is under 2048 bits (refused as too weak)"),
                // The verifier (RustCrypto `rsa`) refuses larger moduli.
                4097.. => Err("the RSA modulus is over 4096 bits (more than we can verify)"),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Public key parameters in base64url. Building a key set only decodes
    // them (the numbers are checked when a signature is verified), so these
    // exercise parsing and key selection, not cryptography; the end-to-end
    // tests sign and verify with real keys.
    const RSA_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn doc(keys: serde_json::Value) -> Vec<u8> {
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn jwks_keys_get_algorithms_from_their_type() -> Result<(), String> {
        let bytes = doc(serde_json::json!([
            { "kty": "RSA", "kid": "r", "n": RSA_N, "e": "AQAB" },
            { "kty": "EC", "kid": "e", "crv": "P-256", "x": EC_X, "y": EC_Y, "alg": "ES256" },
            { "kty": "OKP", "kid": "d", "crv": "Ed25519", "x": ED_X },
            { "kty": "oct", "kid": "s", "k": "c2VjcmV0" },
            { "kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB" },
            { "kty": "RSA", "kid": "confused", "alg": "HS256", "n": RSA_N, "e": "AQAB" },
            { "kty": "EC", "kid": "p521", "crv": "P-521", "x": EC_X, "y": EC_Y },
        ]));
        let (set, skipped) = KeySet::from_jwks(&bytes).map_err(|e| e.to_string())?;
        assert_eq!(set.len(), 3);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(set.find(Some("r"), Algorithm::RS256).is_ok());
        assert!(set.find(Some("r"), Algorithm::PS512).is_ok());
        assert_eq!(
            set.find(Some("r"), Algorithm::HS256).err(),
            Some(Miss::NoFit)
        );
        assert_eq!(
            set.find(Some("e"), Algorithm::ES384).err(),
            Some(Miss::NoFit)
        );
        assert!(set.find(Some("d"), Algorithm::EdDSA).is_ok());
        assert_eq!(
            set.find(Some("s"), Algorithm::HS256).err(),
            Some(Miss::UnknownKid)
        );
        assert_eq!(
            set.find(Some("zz"), Algorithm::RS256).err(),
            Some(Miss::UnknownKid)
        );
        // Without a kid, every key of the algorithm's family is a candidate.
        assert_eq!(kids(&set, None, Algorithm::ES256), Ok(vec![Some("e")]));
        assert_eq!(set.find(None, Algorithm::HS256).err(), Some(Miss::NoFit));
        Ok(())
    }

    /// The kids of the keys `find` yields, in order.
    fn kids<'a>(
        set: &'a KeySet,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> Result<Vec<Option<&'a str>>, Miss> {
        set.find(kid, alg)
            .map(|keys| keys.map(|k| k.kid.as_deref()).collect())
    }

    #[test]
    fn keys_without_kid_serve_any_token_and_several_keys_are_candidates() -> Result<(), String> {
        let bytes = doc(serde_json::json!([
            { "kty": "RSA", "n": RSA_N, "e": "AQAB" },
            { "kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB" },
            { "kty": "RSA", "kid": "", "n": RSA_N, "e": "AQAB" },
            { "kty": "RSA", "kid": "b", "n": RSA_N, "e": "AQAB" },
            { "kty": "EC", "kid": "e", "crv": "P-256", "x": EC_X, "y": EC_Y },
        ]));
        let (set, _) = KeySet::from_jwks(&bytes).map_err(|e| e.to_string())?;
        let rs = Algorithm::RS256;
        // A token's kid picks its own key and the keys without one (an
        // empty kid is none); a kid no key has still finds those.
        assert_eq!(kids(&set, Some("a"), rs), Ok(vec![None, Some("a"), None]));
        assert_eq!(kids(&set, Some("zz"), rs), Ok(vec![None, None]));
        // A token without kid (or with an empty one) may use any key of
        // the algorithm's family.
        let all = Ok(vec![None, Some("a"), None, Some("b")]);
        assert_eq!(kids(&set, None, rs), all);
        assert_eq!(kids(&set, Some(""), rs), all);
        // The kid allows keys, but none of the token's algorithm.
        assert_eq!(kids(&set, Some("e"), rs), Ok(vec![None, None]));
        assert_eq!(kids(&set, Some("a"), Algorithm::ES256), Err(Miss::NoFit));

        // When every key has a kid, an unknown one finds nothing.
        let bytes = doc(serde_json::json!([
            { "kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB" },
            { "kty": "RSA", "kid": "b", "n": RSA_N, "e": "AQAB" },
        ]));
        let (set, _) = KeySet::from_jwks(&bytes).map_err(|e| e.to_string())?;
        assert_eq!(kids(&set, Some("zz"), rs), Err(Miss::UnknownKid));
        assert_eq!(kids(&set, Some("b"), rs), Ok(vec![Some("b")]));
        assert_eq!(kids(&set, None, rs), Ok(vec![Some("a"), Some("b")]));
        Ok(())
    }

    #[test]
    fn keys_of_the_wrong_size_are_skipped_with_the_reason() -> Result<(), String> {
        let b64 = |n: usize| URL_SAFE_NO_PAD.encode(vec![0x5a; n]);
        // 2047 bits: 256 bytes, the top bit clear.
        let rsa_2047 = URL_SAFE_NO_PAD.encode([&[0x7f][..], &[0xff; 255]].concat());
        let rsa_4104 = URL_SAFE_NO_PAD.encode([0xff; 513]);
        let bytes = doc(serde_json::json!([
            { "kty": "OKP", "kid": "good", "crv": "Ed25519", "x": ED_X },
            { "kty": "OKP", "kid": "ed16", "crv": "Ed25519", "x": b64(16) },
            { "kty": "OKP", "kid": "ed0", "crv": "Ed25519", "x": "" },
            { "kty": "OKP", "kid": "ed33", "crv": "Ed25519", "x": b64(33) },
            { "kty": "EC", "kid": "p256x", "crv": "P-256", "x": b64(31), "y": EC_Y },
            { "kty": "EC", "kid": "p256y", "crv": "P-256", "x": EC_X, "y": b64(48) },
            { "kty": "EC", "kid": "p384", "crv": "P-384", "x": EC_X, "y": EC_Y },
            { "kty": "EC", "kid": "p384ok", "crv": "P-384", "x": b64(48), "y": b64(48) },
            { "kty": "RSA", "kid": "rsa2047", "n": rsa_2047, "e": "AQAB" },
            { "kty": "RSA", "kid": "rsa4104", "n": rsa_4104, "e": "AQAB" },
            // Leading zero bytes do not count.
            { "kty": "RSA", "kid": "rsa-padded", "n": format!("AAAA{RSA_N}"), "e": "AQAB" },
        ]));
        let (set, skipped) = KeySet::from_jwks(&bytes).map_err(|e| e.to_string())?;
        assert_eq!(
            skipped,
            [
                "kid \"ed16\": an Ed25519 `x` must be 32 bytes",
                "kid \"ed0\": an Ed25519 `x` must be 32 bytes",
                "kid \"ed33\": an Ed25519 `x` must be 32 bytes",
                "kid \"p256x\": P-256 `x` and `y` must be 32 bytes each",
                "kid \"p256y\": P-256 `x` and `y` must be 32 bytes each",
                "kid \"p384\": P-384 `x` and `y` must be 48 bytes each",
                "kid \"rsa2047\": the RSA modulus is under 2048 bits (refused as too weak)",
                "kid \"rsa4104\": the RSA modulus is over 4096 bits (more than we can verify)",
            ]
        );
        assert_eq!(set.len(), 3);
        assert_eq!(
            kids(&set, Some("ed16"), Algorithm::EdDSA),
            Err(Miss::UnknownKid)
        );
        assert_eq!(kids(&set, None, Algorithm::EdDSA), Ok(vec![Some("good")]));
        Ok(())
    }

    #[test]
    fn secrets_verify_hmac_only() {
        let set = KeySet::from_secret(b"0123456789abcdef0123456789abcdef");
        // A secret has no kid: whatever the token names, it is the key.
        assert_eq!(kids(&set, Some("any"), Algorithm::HS384), Ok(vec![None]));
        assert!(set.find(None, Algorithm::HS256).is_ok());
        assert_eq!(set.find(None, Algorithm::RS256).err(), Some(Miss::NoFit));
        assert_eq!(
            KeySet::default().find(None, Algorithm::RS256).err(),
            Some(Miss::Empty)
        );
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"[]",
            b"{}",
            b"{\"keys\": 1}",
            b"{\"keys\": []}",
            b"{\"keys\": [1, \"x\", null, {}]}",
            b"{\"keys\": [{\"kty\": \"RSA\"}]}",
            b"{\"keys\": [{\"kty\": \"RSA\", \"n\": \"!!\", \"e\": \"AQAB\"}]}",
        ] {
            assert!(
                KeySet::from_jwks(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(matches!(KeySet::from_jwks(&big), Err(JwksError::TooLarge)));
    }
}
