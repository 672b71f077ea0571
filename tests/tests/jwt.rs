//! JWT authentication end to end: `meshgate run` with JWT providers, keys
//! generated here with rcgen, tokens signed with the `jsonwebtoken` crate,
//! a JWKS served by a real HTTP server (Python's `http.server`) that the
//! tests rewrite and stop, a real origin, and curl (and, for HTTP/3,
//! aioquic through tests/py/h3_client.py) as the client.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meshgate_tests::{
    CurlResponse, FileServer, Gateway, Origin, curl, free_port, metric, py_script, run,
    seen_headers, tempdir, wait_for, workspace,
};
use serde_json::{Value, json};

const ISSUER: &str = "https://login.meshgate.test/";
const AUDIENCE: &str = "api.meshgate.test";

/// A signing key made here, and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
    /// The public key as PEM (used to forge an HS256 token with it).
    public_pem: String,
}

impl Signer {
    fn new(kid: &str, alg: Algorithm) -> Signer {
        let (rcgen_alg, load): (_, fn(&[u8]) -> _) = match alg {
            Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
            other => panic!("no test key type for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("key generation");
        let key = load(pair.serialize_pem().as_bytes()).expect("jsonwebtoken loads the PEM key");
        let mut jwk = match alg {
            // rcgen writes Ed25519 keys as PKCS#8 v2 (with the public key),
            // which Jwk::from_encoding_key does not take; the raw public
            // key is the JWK's `x` (RFC 8037).
            Algorithm::EdDSA => serde_json::from_value(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "x": b64(pair.public_key_raw()),
            }))
            .expect("Ed25519 JWK"),
            _ => Jwk::from_encoding_key(&key, alg).expect("public JWK"),
        };
        jwk.common.key_id = Some(kid.to_owned());
        Signer {
            kid: kid.to_owned(),
            alg,
            key,
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("signing")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims that satisfy the provider, for user `sub`.
fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "someone-else"],
        "sub": sub,
        "iat": now(),
        "exp": now() + 600,
        "realm": { "tier": "gold" },
        "roles": ["reader"],
    })
}

fn with(mut base: Value, changes: Value) -> Value {
    if let (Some(b), Some(c)) = (base.as_object_mut(), changes.as_object()) {
        for (k, v) in c {
            if v.is_null() {
                b.remove(k);
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    base
}

fn b64(bytes: &[u8]) -> String {
    // base64url without padding, written out so the tests build their own
    // malformed tokens without another dependency.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn write_jwks(path: &Path, signers: &[&Signer]) {
    let set = JwkSet {
        keys: signers.iter().map(|s| s.jwk.clone()).collect(),
    };
    // Write then rename, so the server never serves half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set).expect("json")).expect("write jwks");
    std::fs::rename(&tmp, path).expect("rename jwks");
}

struct Setup {
    gw: Gateway,
    base: String,
    dir: PathBuf,
    jwks: Option<FileServer>,
    _origins: Vec<Origin>,
}

impl Setup {
    fn get(&self, path: &str, extra: &[&str]) -> CurlResponse {
        let url = format!("{}{path}", self.base);
        let mut args: Vec<&str> = extra.to_vec();
        args.push(&url);
        curl(&args).expect("curl")
    }

    fn with_token(&self, path: &str, token: &str) -> CurlResponse {
        let auth = format!("authorization: Bearer {token}");
        self.get(path, &["-H", &auth])
    }

    fn access_log(&self) -> Vec<Value> {
        self.gw.access_log()
    }
}

/// Config for a gateway on `port` with one JWKS-URL provider `login`
/// (RS256, ES256, EdDSA), routes `/api` (any valid token), `/admin` (role
/// `admin` required) and `/open` (no auth), all to `origin`.
/// `provider_extra` is appended to the provider table.
fn config(port: u16, jwks_url: &str, origin: SocketAddr, provider_extra: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"

[[listener]]
name = "web"
address = "127.0.0.1:{port}"
limits = {{ drain_timeout = "1s" }}

[[jwt_provider]]
name = "login"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}", "other.meshgate.test"]
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_url = "{jwks_url}"
leeway = "5s"
from_cookie = "session"
forward_claims = {{ sub = "x-user-id", "realm.tier" = "x-tier" }}
{provider_extra}

[[route]]
name = "api"
match = {{ path_prefix = "/api" }}
service = "app"
auth = {{ provider = "login" }}

[[route]]
name = "admin"
match = {{ path_prefix = "/admin" }}
service = "app"
auth = {{ provider = "login", require = [{{ claim = "roles", contains = "admin" }}] }}

[[route]]
name = "open"
match = {{ path_prefix = "/open" }}
service = "app"

[[service]]
name = "app"
endpoints = [{{ address = "{origin}" }}]

[observability]
access_log = {{ format = "json", path = "stdout" }}
"#,
        admin = free_port(),
    )
}

/// [`config`] served with the JWKS of `signers` from a plain-HTTP
/// loopback server.
fn setup(signers: &[&Signer], provider_extra: &str) -> Setup {
    let origin = Origin::start("app").expect("origin");
    let dir = tempdir().expect("tempdir");
    write_jwks(&dir.join("jwks.json"), signers);
    let jwks = FileServer::start(&dir).expect("jwks server");
    let port = free_port();
    let url = format!("http://{}/jwks.json", jwks.addr);
    let path = dir.join("meshgate.toml");
    std::fs::write(&path, config(port, &url, origin.addr, provider_extra)).expect("write config");
    let gw = Gateway::start(&path, SocketAddr::from(([127, 0, 0, 1], port))).expect("gateway");
    Setup {
        gw,
        base: format!("http://127.0.0.1:{port}"),
        dir,
        jwks: Some(jwks),
        _origins: vec![origin],
    }
}

fn seen(r: &CurlResponse) -> BTreeMap<String, Vec<String>> {
    seen_headers(r).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

fn assert_refused(r: &CurlResponse, description: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert_eq!(
        r.header("x-meshgate-reason"),
        Some("unauthenticated"),
        "{what}"
    );
    assert_eq!(r.body, "401 unauthenticated\n", "{what}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"meshgate\", error=\"invalid_token\", error_description=\"{description}\""
        ),
        "{what}"
    );
    assert!(
        r.header("x-seen-headers").is_none(),
        "{what}: reached the origin"
    );
}

#[test]
fn valid_tokens_reach_the_upstream_with_verified_claims_only() {
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let ec = Signer::new("ec-1", Algorithm::ES256);
    let ed = Signer::new("ed-1", Algorithm::EdDSA);
    let s = setup(&[&rsa, &ec, &ed], "");

    for (signer, user) in [(&rsa, "alice"), (&ec, "bob"), (&ed, "carol")] {
        let token = signer.sign(&claims(user));
        for proto in [&[][..], &["--http2-prior-knowledge"][..]] {
            let auth = format!("authorization: Bearer {token}");
            let mut args = proto.to_vec();
            args.extend_from_slice(&[
                "-H",
                &auth,
                "-H",
                "x-user-id: mallory",
                "-H",
                "x-tier: platinum",
            ]);
            let r = s.get("/api/items", &args);
            assert_eq!(r.status, 200, "{:?} {proto:?}: {r:?}", signer.alg);
            let h = seen(&r);
            assert_eq!(h.get("x-user-id"), Some(&vec![user.to_owned()]), "{h:?}");
            assert_eq!(h.get("x-tier"), Some(&vec!["gold".to_owned()]), "{h:?}");
            assert!(!h.contains_key("authorization"), "token forwarded: {h:?}");
        }
    }

    // From the cookie: the token cookie is removed, other cookies stay.
    let token = rsa.sign(&claims("dave"));
    let cookie = format!("cookie: theme=dark; session={token}; lang=en");
    let r = s.get("/api/x", &["-H", &cookie]);
    assert_eq!(r.status, 200, "{r:?}");
    let h = seen(&r);
    assert_eq!(h.get("x-user-id"), Some(&vec!["dave".to_owned()]));
    assert_eq!(
        h.get("cookie"),
        Some(&vec!["theme=dark; lang=en".to_owned()])
    );

    // A route without auth passes the client's headers through untouched.
    let r = s.get("/open", &["-H", "x-user-id: mallory"]);
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["mallory".to_owned()]));

    let log = s.access_log();
    assert!(
        log.iter()
            .any(|l| l["route"] == "api" && l["status"] == 200 && l["reason"].is_null()),
        "{log:?}"
    );
}

#[test]
fn bad_tokens_are_refused_with_a_bearer_challenge() {
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let ec = Signer::new("ec-1", Algorithm::ES256);
    let stranger = Signer::new("rsa-1", Algorithm::RS256);
    let s = setup(&[&rsa, &ec], "");

    // No token: a challenge without an error code (RFC 6750, 3.1).
    let r = s.get("/api/items", &["-H", "x-user-id: mallory"]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"meshgate\"")
    );
    assert_eq!(r.header("x-meshgate-reason"), Some("unauthenticated"));
    // Another scheme is not a bearer token.
    let r = s.get(
        "/api/items",
        &["-H", "authorization: Basic YWxhZGRpbjpvcGVu"],
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"meshgate\"")
    );

    let good = claims("alice");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rsa.sign(&with(good.clone(), json!({"exp": now() - 120}))),
            "token expired",
        ),
        (
            "not yet valid",
            rsa.sign(&with(good.clone(), json!({"nbf": now() + 120}))),
            "token not yet valid",
        ),
        (
            "wrong issuer",
            rsa.sign(&with(good.clone(), json!({"iss": "https://evil.test/"}))),
            "wrong issuer",
        ),
        (
            "issuer in an array",
            rsa.sign(&with(good.clone(), json!({"iss": [ISSUER]}))),
            "wrong issuer",
        ),
        (
            "no exp",
            rsa.sign(&with(good.clone(), json!({"exp": null}))),
            "missing exp claim",
        ),
        (
            "signed by a key with a known kid but not the published one",
            stranger.sign(&good),
            "invalid signature",
        ),
        ("garbage", "not-a-token".to_owned(), "malformed token"),
        (
            "bad base64 header",
            "@@.e30.sig".to_owned(),
            "malformed token",
        ),
    ];
    for (what, token, description) in &cases {
        assert_refused(&s.with_token("/api/items", token), description, what);
    }

    // A genuine token issued for another audience (or for none) is 403, as
    // Envoy answers it: the client is known, the token is not for us.
    for (what, token, description) in [
        (
            "wrong audience",
            rsa.sign(&with(good.clone(), json!({"aud": "api.evil.test"}))),
            "wrong audience",
        ),
        (
            "no aud",
            ec.sign(&with(good.clone(), json!({"aud": null}))),
            "missing aud claim",
        ),
    ] {
        let r = s.with_token("/api/items", &token);
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert_eq!(r.header("x-meshgate-reason"), Some("forbidden"), "{what}");
        assert_eq!(
            r.header("www-authenticate").unwrap_or_default(),
            format!(
                "Bearer realm=\"meshgate\", error=\"insufficient_scope\", error_description=\"{description}\""
            ),
            "{what}"
        );
        assert!(
            r.header("x-seen-headers").is_none(),
            "{what}: reached the origin"
        );
    }
    // The same audience check behind a forged signature stays a 401: the
    // signature is checked first.
    assert_refused(
        &s.with_token(
            "/api/items",
            &stranger.sign(&with(good.clone(), json!({"aud": "api.evil.test"}))),
        ),
        "invalid signature",
        "forged token for another audience",
    );

    // alg "none", with and without a signature part.
    let header = b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let payload = b64(good.to_string().as_bytes());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2ln"),
    ] {
        assert_refused(
            &s.with_token("/api/items", &token),
            "algorithm not allowed",
            "alg none",
        );
    }

    // Algorithm confusion: HS256 "signed" with the RSA public key as the
    // HMAC secret, naming the RSA key's kid.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(rsa.kid.clone());
    let forged = jsonwebtoken::encode(
        &header,
        &good,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .expect("sign");
    assert_refused(
        &s.with_token("/api/items", &forged),
        "algorithm not allowed",
        "HS256 with the RSA public key",
    );

    // An RS256 token presented under the EC key's kid.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(ec.kid.clone());
    let wrong_family = jsonwebtoken::encode(&header, &good, &rsa.key).expect("sign");
    assert_refused(
        &s.with_token("/api/items", &wrong_family),
        "no signing key for this algorithm",
        "RS256 under an EC kid",
    );

    // Tampered: the payload changed after signing (a claim upgraded), and
    // a signature with one character flipped.
    let token = rsa.sign(&good);
    let parts: Vec<&str> = token.split('.').collect();
    let upgraded = b64(with(good.clone(), json!({"roles": ["admin"]}))
        .to_string()
        .as_bytes());
    let tampered = format!("{}.{upgraded}.{}", parts[0], parts[2]);
    assert_refused(
        &s.with_token("/api/items", &tampered),
        "invalid signature",
        "tampered payload",
    );
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        sig.into_iter().collect::<String>()
    );
    assert_refused(
        &s.with_token("/api/items", &flipped),
        "invalid signature",
        "flipped signature",
    );

    // Two Authorization headers are ambiguous.
    let a = format!("authorization: Bearer {token}");
    let r = s.get("/api/items", &["-H", &a, "-H", &a]);
    assert_refused(&r, "more than one token header", "two headers");

    // The good token still works, so the refusals above were about the
    // tokens, not the setup.
    assert_eq!(s.with_token("/api/items", &token).status, 200);

    let log = s.access_log();
    assert!(
        log.iter()
            .any(|l| l["route"] == "api" && l["status"] == 401 && l["reason"] == "unauthenticated"),
        "{log:?}"
    );
}

#[test]
fn claim_rules_refuse_a_valid_token_with_403() {
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let s = setup(&[&rsa], "");

    let reader = rsa.sign(&claims("alice"));
    let r = s.with_token("/admin/panel", &reader);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("x-meshgate-reason"), Some("forbidden"));
    assert_eq!(r.body, "403 forbidden\n");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("error=\"insufficient_scope\"")),
        "{r:?}"
    );

    let admin = rsa.sign(&with(claims("root"), json!({"roles": ["reader", "admin"]})));
    let r = s.with_token("/admin/panel", &admin);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["root".to_owned()]));

    let log = s.access_log();
    assert!(
        log.iter()
            .any(|l| l["route"] == "admin" && l["status"] == 403 && l["reason"] == "forbidden"),
        "{log:?}"
    );

    let r = s.get("/admin/panel", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    let r = s.with_token("/admin/panel", "not.a.jwt");
    assert_eq!(r.status, 401, "{r:?}");
    // One check of each outcome, counted by provider.
    let m = s.gw.metrics().expect("metrics");
    for outcome in ["valid", "forbidden", "missing", "invalid"] {
        assert_eq!(
            metric(
                &m,
                "meshgate_jwt_validations_total",
                &["provider=\"login\"", &format!("outcome=\"{outcome}\"")]
            ),
            Some(1.0),
            "{outcome}: {m}"
        );
    }
    // The key set came from the provider's JWKS URL.
    let jwks = |name: &str, labels: &[&str]| metric(&m, name, labels).unwrap_or(0.0);
    assert!(
        jwks(
            "meshgate_jwks_fetches_total",
            &["provider=\"login\"", "outcome=\"ok\""]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        jwks("meshgate_jwks_keys", &["provider=\"login\""]),
        1.0,
        "{m}"
    );
    assert!(
        jwks(
            "meshgate_jwks_last_success_timestamp_seconds",
            &["provider=\"login\""]
        ) > 1.7e9,
        "{m}"
    );
}

#[test]
fn an_unknown_kid_fetches_the_rotated_jwks() {
    let old = Signer::new("2024-old", Algorithm::RS256);
    let new = Signer::new("2025-new", Algorithm::ES256);
    // Long refresh interval: only the unknown kid can cause the re-fetch.
    let s = setup(&[&old], "refresh_interval = \"1h\"");
    assert_eq!(s.with_token("/api", &old.sign(&claims("a"))).status, 200);

    // The issuer rotates: the new key is published, then used at once. The
    // request that brings the unknown kid waits for the fetch it causes.
    write_jwks(&s.dir.join("jwks.json"), &[&old, &new]);
    let r = s.with_token("/api", &new.sign(&claims("b")));
    assert_eq!(r.status, 200, "{r:?}\n{}", s.gw.proc.stderr());
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["b".to_owned()]));
    assert!(
        s.gw.proc.stderr().contains("fetching the JWKS now"),
        "{}",
        s.gw.proc.stderr()
    );
    assert_eq!(s.with_token("/api", &old.sign(&claims("a"))).status, 200);

    // A kid nobody published: the forced fetch just happened, so this one
    // is refused at once instead of fetching again.
    let ghost = Signer::new("ghost", Algorithm::ES256);
    let started = Instant::now();
    let r = s.with_token("/api", &ghost.sign(&claims("c")));
    assert_refused(&r, "unknown signing key", "unpublished kid");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "rate-limited refusal took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_jwks_outage_keeps_the_last_good_keys() {
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let mut s = setup(&[&rsa], "refresh_interval = \"1s\"");
    let token = rsa.sign(&claims("alice"));
    assert_eq!(s.with_token("/api", &token).status, 200);

    if let Some(server) = s.jwks.take() {
        server.stop();
    }
    wait_for(
        Duration::from_secs(15),
        "the gateway to log a failed JWKS fetch",
        || s.gw.proc.stderr().contains("JWKS fetch failed"),
    )
    .expect("fetch failure logged");
    let r = s.with_token("/api", &token);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.gw.proc.stderr());
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["alice".to_owned()]));
    assert!(
        s.gw.proc.stderr().contains("keeping the last good keys"),
        "{}",
        s.gw.proc.stderr()
    );
}

#[test]
fn a_sticky_split_on_a_claim_keeps_each_user_on_one_subset() {
    // The claim itself, or the header it is forwarded in: the split reads
    // the verified value, not the client's copy.
    for sticky in [r#"{ claim = "sub" }"#, r#"{ header = "x-user-id" }"#] {
        sticky_split_keeps_each_user_on_one_subset(sticky);
    }
}

fn sticky_split_keeps_each_user_on_one_subset(sticky: &str) {
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let v1 = Origin::start("v1").expect("origin v1");
    let v2 = Origin::start("v2").expect("origin v2");
    let dir = tempdir().expect("tempdir");
    write_jwks(&dir.join("jwks.json"), &[&rsa]);
    let port = free_port();
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"

[[listener]]
name = "web"
address = "127.0.0.1:{port}"

[[jwt_provider]]
name = "login"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
jwks_file = "jwks.json"
forward_claims = {{ sub = "x-user-id" }}

[[route]]
name = "catalog"
match = {{ path_prefix = "/" }}
service = "catalog"
auth = {{ provider = "login" }}

[[service]]
name = "catalog"
endpoints = [
  {{ address = "{v1}", labels = {{ version = "v1" }} }},
  {{ address = "{v2}", labels = {{ version = "v2" }} }},
]
[[service.subset]]
name = "v1"
labels = {{ version = "v1" }}
[[service.subset]]
name = "v2"
labels = {{ version = "v2" }}
[service.split]
targets = [{{ subset = "v1", weight = 50 }}, {{ subset = "v2", weight = 50 }}]
sticky = {sticky}
"#,
        admin = free_port(),
        v1 = v1.addr,
        v2 = v2.addr,
    );
    let path = dir.join("meshgate.toml");
    std::fs::write(&path, config).expect("write config");
    let gw = Gateway::start(&path, SocketAddr::from(([127, 0, 0, 1], port))).expect("gateway");
    let url = format!("http://127.0.0.1:{port}/items");

    let mut versions = HashSet::new();
    for u in 0..24 {
        let user = format!("user-{u}");
        let mut origins = HashSet::new();
        // Fresh tokens each time (a new iat and exp): only the claim keys
        // the choice.
        for i in 0..3 {
            let token = rsa.sign(&with(claims(&user), json!({"exp": now() + 600 + i})));
            let auth = format!("authorization: Bearer {token}");
            let forged = format!("x-user-id: forged-{u}-{i}");
            let r = curl(&["-H", &auth, "-H", &forged, &url]).expect("curl");
            assert_eq!(r.status, 200, "{r:?}\n{}", gw.proc.stderr());
            origins.insert(r.header("x-origin").unwrap_or_default().to_owned());
        }
        assert_eq!(
            origins.len(),
            1,
            "{sticky}: {user} was split across {origins:?}"
        );
        versions.extend(origins);
    }
    // 24 users at 50/50: both subsets are used unless the key is ignored.
    assert_eq!(versions.len(), 2, "{sticky}: {versions:?}");
}

#[test]
fn file_and_secret_providers_follow_reloads() {
    let first = Signer::new("first", Algorithm::EdDSA);
    let second = Signer::new("second", Algorithm::EdDSA);
    let origin = Origin::start("app").expect("origin");
    let dir = tempdir().expect("tempdir");
    write_jwks(&dir.join("jwks.json"), &[&first]);
    let secret = "a shared secret of thirty-two bytes or more";
    std::fs::write(dir.join("hmac.key"), format!("{secret}\n")).expect("secret");
    let port = free_port();
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"

[[listener]]
name = "web"
address = "127.0.0.1:{port}"

[[jwt_provider]]
name = "files"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["EdDSA"]
jwks_file = "jwks.json"

[[jwt_provider]]
name = "partners"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["HS256"]
secret_file = "hmac.key"
from_header = "x-partner-token"
forward_token = true

[[route]]
name = "files"
match = {{ path_prefix = "/files" }}
service = "app"
auth = {{ provider = "files" }}

[[route]]
name = "partners"
match = {{ path_prefix = "/partners" }}
service = "app"
auth = {{ provider = "partners" }}

[[service]]
name = "app"
endpoints = [{{ address = "{origin}" }}]
"#,
        admin = free_port(),
        origin = origin.addr,
    );
    let path = dir.join("meshgate.toml");
    std::fs::write(&path, config).expect("write config");
    let mut gw = Gateway::start(&path, SocketAddr::from(([127, 0, 0, 1], port))).expect("gateway");
    let get = |path: &str, header: &str, token: &str| {
        let h = format!("{header}: {token}");
        curl(&["-H", &h, &format!("http://127.0.0.1:{port}{path}")]).expect("curl")
    };

    // HMAC: the secret without its trailing newline, a bare token in a
    // custom header, forwarded because the provider says so.
    let hs = |secret: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("partner"),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };
    let token = hs(secret);
    let r = get("/partners", "x-partner-token", &token);
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.proc.stderr());
    assert_eq!(seen(&r).get("x-partner-token"), Some(&vec![token.clone()]));
    assert_refused(
        &get("/partners", "x-partner-token", &hs("some other secret")),
        "invalid signature",
        "wrong HMAC secret",
    );
    assert_refused(
        &get("/partners", "x-partner-token", &first.sign(&claims("x"))),
        "algorithm not allowed",
        "EdDSA token on an HS256 provider",
    );

    // JWKS file: re-read on reload.
    let bearer = |s: &Signer| format!("Bearer {}", s.sign(&claims("u")));
    assert_eq!(get("/files", "authorization", &bearer(&first)).status, 200);
    assert_refused(
        &get("/files", "authorization", &bearer(&second)),
        "unknown signing key",
        "not yet published",
    );
    write_jwks(&dir.join("jwks.json"), &[&second]);
    gw.proc.signal("HUP").expect("SIGHUP");
    wait_for(Duration::from_secs(10), "the new key file to apply", || {
        get("/files", "authorization", &bearer(&second)).status == 200
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc.stderr()));
    assert_refused(
        &get("/files", "authorization", &bearer(&first)),
        "unknown signing key",
        "retired key",
    );
    gw.proc.signal("TERM").expect("SIGTERM");
    assert_eq!(
        gw.proc.wait_exit(Duration::from_secs(20)).expect("exit"),
        Some(0)
    );
}

/// A CA certificate (PEM) and an issuer to sign with it.
fn test_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), rcgen::Issuer::new(params, key))
}

#[test]
fn jwks_over_https_is_verified_against_the_trust_store() {
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let dir = tempdir().expect("tempdir");
    write_jwks(&dir.join("jwks.json"), &[&rsa]);

    // A test CA, and a certificate for 127.0.0.1 that it signs.
    let (ca_pem, ca) = test_ca("meshgate test CA");
    let (other_ca_pem, _) = test_ca("some other CA");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    let tls = tempdir().expect("tempdir");
    std::fs::write(tls.join("server.pem"), cert.pem()).expect("write");
    std::fs::write(tls.join("server.key"), key.serialize_pem()).expect("write");
    std::fs::write(tls.join("ca.pem"), ca_pem).expect("write");
    std::fs::write(tls.join("other-ca.pem"), other_ca_pem).expect("write");
    let jwks = FileServer::start_tls(&dir, &tls.join("server.pem"), &tls.join("server.key"))
        .expect("https jwks server");
    let url = format!("https://{}/jwks.json", jwks.addr);
    let origin = Origin::start("app").expect("origin");
    let token = rsa.sign(&claims("alice"));

    for (trust, works) in [("ca.pem", true), ("other-ca.pem", false)] {
        let port = free_port();
        let path = tls.join(format!("meshgate-{trust}.toml"));
        std::fs::write(&path, config(port, &url, origin.addr, "")).expect("write config");
        let gw = Gateway::start_with_env(
            &path,
            SocketAddr::from(([127, 0, 0, 1], port)),
            &[("SSL_CERT_FILE", &tls.join(trust))],
        )
        .expect("gateway");
        let auth = format!("authorization: Bearer {token}");
        let r = curl(&["-H", &auth, &format!("http://127.0.0.1:{port}/api")]).expect("curl");
        if works {
            assert_eq!(r.status, 200, "{r:?}\n{}", gw.proc.stderr());
            assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["alice".to_owned()]));
        } else {
            // The server's certificate is not trusted: no keys, and the
            // log says why.
            assert_refused(&r, "signing keys unavailable", "untrusted JWKS server");
            wait_for(
                Duration::from_secs(10),
                "the TLS failure to be logged",
                || gw.proc.stderr().contains("JWKS fetch failed"),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc.stderr()));
        }
    }
}

/// The example TLS material (a certificate for 127.0.0.1 and its CA).
fn tls_dir() -> PathBuf {
    workspace().join("config").join("examples").join("tls")
}

/// A gateway whose one TLS listener speaks HTTP/1.1 and HTTP/2 over TCP
/// and HTTP/3 over UDP on the same port, with provider `login` reading
/// `dir/jwks.json` (RS256, EdDSA) and forwarding `sub` and `realm.tier`,
/// and route `/api` to `origin`. Returns the gateway and its port.
fn tls_gateway(dir: &Path, origin: SocketAddr) -> (Gateway, u16) {
    let tls = tls_dir();
    let port = free_port();
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"

[[listener]]
name = "web"
address = "127.0.0.1:{port}"
protocols = ["http1", "http2", "http3"]
limits = {{ drain_timeout = "1s" }}

[listener.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[listener.http3]

[[jwt_provider]]
name = "login"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256", "EdDSA"]
jwks_file = "jwks.json"
forward_claims = {{ sub = "x-user-id", "realm.tier" = "x-tier" }}

[[route]]
name = "api"
match = {{ path_prefix = "/api" }}
service = "app"
auth = {{ provider = "login" }}

[[service]]
name = "app"
endpoints = [{{ address = "{origin}" }}]
"#,
        admin = free_port(),
        cert = tls.join("server.pem").display(),
        key = tls.join("server-key.pem").display(),
    );
    let path = dir.join("meshgate.toml");
    std::fs::write(&path, config).expect("write config");
    let gw = Gateway::start(&path, SocketAddr::from(([127, 0, 0, 1], port))).expect("gateway");
    (gw, port)
}

/// curl over HTTPS to the [`tls_gateway`] on `port`.
fn curl_tls(port: u16, path: &str, args: &[&str]) -> CurlResponse {
    let ca = tls_dir().join("ca.pem");
    let url = format!("https://127.0.0.1:{port}{path}");
    let mut all = vec!["--cacert", ca.to_str().expect("path")];
    all.extend_from_slice(args);
    all.push(&url);
    curl(&all).expect("curl")
}

/// One HTTP/3 GET to the [`tls_gateway`] on `port`, with `headers`
/// (`name: value`): the response as h3_client.py reports it.
fn h3_get(port: u16, path: &str, headers: &[&str]) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(py_script("h3_client.py"))
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .arg("--cafile")
        .arg(tls_dir().join("ca.pem"));
    for h in headers {
        cmd.args(["--header", h]);
    }
    let out = run(&mut cmd, Duration::from_secs(30)).expect("h3_client.py");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "h3_client.py output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let r = v["responses"][0].clone();
    assert!(v["error"].is_null() && r["error"].is_null(), "{v}");
    r
}

#[test]
fn a_key_of_the_wrong_size_is_skipped_and_its_tokens_are_refused() {
    let good = Signer::new("good", Algorithm::EdDSA);
    // RFC 8037: an Ed25519 `x` is 32 bytes. jsonwebtoken's verifier slices
    // the key to 32 bytes, so using this one would panic the request.
    let short = json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "short", "x": b64(&[7; 16]),
    });
    let origin = Origin::start("app").expect("origin");
    let dir = tempdir().expect("tempdir");
    let jwks = json!({ "keys": [short, &good.jwk] });
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("write jwks");
    let (mut gw, port) = tls_gateway(&dir, origin.addr);
    wait_for(
        Duration::from_secs(10),
        "the skipped key to be logged",
        || {
            let log = gw.proc.stderr();
            log.contains("JWKS key skipped") && log.contains("an Ed25519 `x` must be 32 bytes")
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc.stderr()));

    // A token naming the short key: an answer, not a dropped connection.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("short".to_owned());
    let named_short = jsonwebtoken::encode(&header, &claims("mallory"), &good.key).expect("sign");
    let auth = format!("authorization: Bearer {named_short}");
    for _ in 0..2 {
        let r = curl_tls(port, "/api", &["-H", &auth]);
        assert_refused(&r, "unknown signing key", "a token naming the short key");
    }
    // Without a kid, only the good key is tried.
    let kidless = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims("bob"), &good.key)
        .expect("sign");
    let r = curl_tls(
        port,
        "/api",
        &["-H", &format!("authorization: Bearer {kidless}")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["bob".to_owned()]));
    // The good key still works.
    let token = good.sign(&claims("alice"));
    let r = curl_tls(
        port,
        "/api",
        &["-H", &format!("authorization: Bearer {token}")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["alice".to_owned()]));
    assert!(gw.proc.running(), "{}", gw.proc.stderr());
    assert!(
        !gw.proc.stderr().contains("panicked"),
        "{}",
        gw.proc.stderr()
    );
}

#[test]
fn keys_without_kid_verify_tokens_with_or_without_one() {
    // Published without their kids; the tokens still name them.
    let mut first = Signer::new("first", Algorithm::RS256);
    let mut second = Signer::new("second", Algorithm::RS256);
    first.jwk.common.key_id = None;
    second.jwk.common.key_id = None;
    let s = setup(&[&first, &second], "refresh_interval = \"1h\"");

    // Each key is tried until one verifies: the second key's tokens pass,
    // with their kid and without one.
    let r = s.with_token("/api", &second.sign(&claims("alice")));
    assert_eq!(r.status, 200, "{r:?}\n{}", s.gw.proc.stderr());
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["alice".to_owned()]));
    let kidless = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims("bob"), &second.key)
        .expect("sign");
    let r = s.with_token("/api", &kidless);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["bob".to_owned()]));
    assert_eq!(s.with_token("/api", &first.sign(&claims("c"))).status, 200);

    // A key nobody published fails on its signature, and a kid the set
    // lacks is no reason to fetch it again: the keys without kid served.
    let stranger = Signer::new("second", Algorithm::RS256);
    assert_refused(
        &s.with_token("/api", &stranger.sign(&claims("d"))),
        "invalid signature",
        "signed by an unpublished key",
    );
    assert!(
        !s.gw.proc.stderr().contains("fetching the JWKS now"),
        "{}",
        s.gw.proc.stderr()
    );
}

#[test]
fn claim_headers_reach_the_upstream_whatever_the_client_names_in_connection() {
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let origin = Origin::start("app").expect("origin");
    let dir = tempdir().expect("tempdir");
    write_jwks(&dir.join("jwks.json"), &[&rsa]);
    let (_gw, port) = tls_gateway(&dir, origin.addr);
    let auth = format!("authorization: Bearer {}", rsa.sign(&claims("alice")));
    let forged = ["x-user-id: mallory", "x-tier: platinum"];
    let verified = |h: &BTreeMap<String, Vec<String>>, how: &str| {
        assert_eq!(
            h.get("x-user-id"),
            Some(&vec!["alice".to_owned()]),
            "{how}: {h:?}"
        );
        assert_eq!(
            h.get("x-tier"),
            Some(&vec!["gold".to_owned()]),
            "{how}: {h:?}"
        );
    };

    // HTTP/1.1: hop-by-hop headers the client names in `Connection` are
    // removed on the way upstream; the claim headers are set after that.
    for connection in ["x-user-id, x-tier", "x-user-id", "keep-alive, X-Tier"] {
        let connection = format!("connection: {connection}");
        for extra in [&[][..], &forged[..]] {
            let mut args = vec!["--http1.1", "-H", &auth, "-H", &connection];
            for f in extra {
                args.extend(["-H", *f]);
            }
            let r = curl_tls(port, "/api", &args);
            assert_eq!(r.status, 200, "{r:?}");
            verified(&seen(&r), &format!("HTTP/1.1 with {connection} {extra:?}"));
        }
    }
    // HTTP/2 and HTTP/3 have no `Connection`; the client's copies of the
    // claim headers are still replaced.
    let mut args = vec!["--http2", "-H", &auth];
    for f in forged {
        args.extend(["-H", f]);
    }
    let r = curl_tls(port, "/api", &args);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    verified(&seen(&r), "HTTP/2");
    let mut headers = vec![auth.as_str()];
    headers.extend(forged);
    let r = h3_get(port, "/api", &headers);
    assert_eq!(r["status"], 200, "{r}");
    let seen_h3: BTreeMap<String, Vec<String>> =
        serde_json::from_str(r["headers"]["x-seen-headers"].as_str().unwrap_or("{}"))
            .expect("x-seen-headers");
    verified(&seen_h3, "HTTP/3");
}

#[test]
fn a_rotated_kid_in_a_set_mixing_keys_with_and_without_kid_is_fetched() {
    // The new key of the same family as the key without kid: the token is
    // first tried on that key and fails on its signature. Of another
    // family: no key in the set fits it at all.
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        rotated_kid_in_a_mixed_set_is_fetched(alg);
    }
}

fn rotated_kid_in_a_mixed_set_is_fetched(alg: Algorithm) {
    let named = Signer::new("2024-named", Algorithm::RS256);
    let mut bare = Signer::new("bare", Algorithm::RS256);
    bare.jwk.common.key_id = None;
    let s = setup(&[&named, &bare], "refresh_interval = \"1h\"");
    assert_eq!(s.with_token("/api", &named.sign(&claims("a"))).status, 200);

    // A new key is published and used at once. Its kid is not in the set
    // the gateway holds, which makes it fetch the set again.
    let new = Signer::new("2025-new", alg);
    write_jwks(&s.dir.join("jwks.json"), &[&named, &bare, &new]);
    let r = s.with_token("/api", &new.sign(&claims("b")));
    assert_eq!(r.status, 200, "{alg:?}: {r:?}\n{}", s.gw.proc.stderr());
    assert_eq!(seen(&r).get("x-user-id"), Some(&vec!["b".to_owned()]));
    assert!(
        s.gw.proc.stderr().contains("fetching the JWKS now"),
        "{alg:?}: {}",
        s.gw.proc.stderr()
    );
    // The key without kid still serves tokens naming any kid.
    let r = s.with_token("/api", &bare.sign(&claims("c")));
    assert_eq!(r.status, 200, "{alg:?}: {r:?}");
}
