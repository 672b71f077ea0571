//! JWT authentication for routes with `auth`.
//!
//! `request_filter` calls [`Authn::check`] right after the route is found:
//! it finds the token (the provider's header as `Bearer <token>`, or its
//! cookie), pins the algorithm to the provider's list, picks the keys by
//! `kid` and algorithm family, verifies the signature and `exp`, `nbf`,
//! `iss`, `aud` with `jsonwebtoken`, and then applies the route's claim
//! rules. A missing or bad token is a 401 with a `WWW-Authenticate: Bearer`
//! challenge; a good token that is not for this audience (wrong or missing
//! `aud`, as Envoy answers) or breaks a claim rule is a 403. Before a
//! request is forwarded, [`prepare_request`] replaces client-supplied
//! copies of the claim headers with the verified claims and removes the
//! token unless the provider forwards it; [`forward_claims`] sets the
//! verified claims again on the request as it leaves for the upstream.
//!
//! What it does not do: sessions, token issuance, introspection, or any
//! key that is not configured (`jku`, `x5u` and embedded `jwk` headers are
//! ignored). Keys live in [`store`]; JWKS URLs are fetched by [`fetch`].

mod fetch;
mod jwks;
mod store;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use meshgate_config::{ConfigStore, JwtAlgorithm, JwtProviderSpec, Snapshot};
use meshgate_policy::authz::{AuthRequirement, claim_as_header_text, claim_at};
use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::Value;

pub(crate) use fetch::KeyRefresher;
use jwks::{Key, Miss};
use store::KeyStore;

/// How long a request whose token names an unknown `kid` (or that finds no
/// keys at all) waits for the JWKS fetch it triggered, before failing 401.
/// Forced fetches are rate-limited per provider, see
/// [`store::FORCED_FETCH_INTERVAL`]; within that window such a token fails
/// at once.
pub(crate) const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(2);

/// Longest token accepted. Real tokens are a few kilobytes; anything much
/// larger is refused before it is decoded.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The realm named in every challenge.
const CHALLENGE: &str = "Bearer realm=\"meshgate\"";

/// The keys of every provider, and the checks that use them.
#[derive(Debug, Default)]
pub(crate) struct Authn {
    keys: Arc<KeyStore>,
}

/// A refused request: status, access-log reason and challenge.
#[derive(Debug)]
pub(crate) struct Denied {
    /// 401 or 403.
    pub(crate) status: u16,
    /// `unauthenticated` or `forbidden`.
    pub(crate) reason: &'static str,
    /// The `WWW-Authenticate` value.
    pub(crate) challenge: String,
}

impl Denied {
    fn missing() -> Denied {
        Denied {
            status: 401,
            reason: "unauthenticated",
            challenge: CHALLENGE.to_owned(),
        }
    }

    fn invalid(description: &'static str) -> Denied {
        Denied {
            status: 401,
            reason: "unauthenticated",
            challenge: format!(
                "{CHALLENGE}, error=\"invalid_token\", error_description=\"{description}\""
            ),
        }
    }

    fn forbidden() -> Denied {
        Denied::refused_token("the token does not grant access to this route")
    }

    /// A token whose signature and times are good but that does not grant
    /// this route: 403 with RFC 6750's `insufficient_scope`.
    fn refused_token(description: &'static str) -> Denied {
        Denied {
            status: 403,
            reason: "forbidden",
            challenge: format!(
                "{CHALLENGE}, error=\"insufficient_scope\", error_description=\"{description}\""
            ),
        }
    }
}

impl Authn {
    /// Loads the key files of `snap`'s providers now, so a broken key file
    /// is reported at start; JWKS URLs are fetched by the refresher.
    pub(crate) fn new(snap: &Snapshot) -> Authn {
        let authn = Authn::default();
        authn.keys.sync(snap);
        authn
    }

    /// The background service that follows config reloads and fetches
    /// JWKS URLs.
    pub(crate) fn refresher(&self, config: Arc<ConfigStore>) -> KeyRefresher {
        KeyRefresher {
            config,
            keys: self.keys.clone(),
        }
    }

    /// Authenticates a request to a route with `auth`: the verified claims,
    /// or the response to send instead.
    pub(crate) async fn check(
        &self,
        snap: &Snapshot,
        auth: &AuthRequirement,
        req: &RequestHeader,
    ) -> Result<Arc<Value>, Denied> {
        self.keys.sync(snap);
        let Some(spec) = snap.jwt_providers.get(&auth.provider) else {
            // Config validation makes this unreachable; refuse rather than
            // let the request through.
            tracing::error!(provider = %auth.provider, "route names an unknown JWT provider");
            return Err(Denied::invalid("unknown token provider"));
        };
        let outcome = |o: &'static str| crate::metrics::jwt_validation(&spec.name, o);
        let token = match find_token(req, spec) {
            Found::Missing => {
                outcome("missing");
                return Err(Denied::missing());
            }
            Found::Bad(why) => {
                outcome("malformed");
                return Err(Denied::invalid(why));
            }
            Found::Token(t) => t,
        };
        let claims = match self.verify(spec, token).await {
            Ok(c) => c,
            // The signature and times checked out: the token is genuine
            // but was issued for another audience.
            Err(why @ (WRONG_AUDIENCE | MISSING_AUDIENCE)) => {
                outcome("forbidden");
                tracing::debug!(provider = %spec.name, "token refused: {why}");
                return Err(Denied::refused_token(why));
            }
            Err(why) => {
                outcome("invalid");
                tracing::debug!(provider = %spec.name, "token refused: {why}");
                return Err(Denied::invalid(why));
            }
        };
        if let Some(rule) = auth.first_failure(&claims) {
            outcome("forbidden");
            tracing::debug!(provider = %spec.name, claim = %rule.claim, "claim rule not met");
            return Err(Denied::forbidden());
        }
        outcome("valid");
        Ok(Arc::new(claims))
    }

    /// Verifies `token` for `spec`; the error is the challenge's
    /// `error_description`.
    async fn verify(
        &self,
        spec: &Arc<JwtProviderSpec>,
        token: &str,
    ) -> Result<Value, &'static str> {
        let head = token.split('.').next().unwrap_or_default();
        let head = URL_SAFE_NO_PAD
            .decode(head)
            .map_err(|_| "malformed token")?;
        let header: JoseHeader<'_> =
            serde_json::from_slice(&head).map_err(|_| "malformed token")?;
        if header.crit.is_some() {
            return Err("unsupported critical header");
        }
        // Pinned algorithms: the token's `alg` must be one the provider
        // lists. `none` is not a name we know, so it never gets this far.
        let alg = JwtAlgorithm::ALL
            .iter()
            .find(|(name, _)| header.alg == *name)
            .map(|(_, a)| *a)
            .filter(|a| spec.algorithms.contains(a))
            .map(jwks::jose)
            .ok_or("algorithm not allowed")?;
        let kid = header.kid.as_deref().filter(|k| !k.is_empty());
        let Some(provider) = self.keys.provider(&spec.name) else {
            return Err("signing keys unavailable");
        };
        // The keys must be of the algorithm's own family (and of its `alg`,
        // when the JWK names one), so a public key is never used as an
        // HMAC secret whatever the token's header says.
        let mut keys = provider.keys_full();
        // A `kid` the set lacks, in a set of keys that all have one, or
        // in one of keys with and without none of which fits this
        // algorithm: the key may be newly published.
        if let Some(miss) = keys.find(kid, alg).err().filter(|miss| match miss {
            Miss::UnknownKid | Miss::Empty => true,
            Miss::NoFit => keys.mixes_kids() && kid.is_some_and(|k| !keys.names(k)),
        }) {
            if !provider.fetch_now_and_wait(UNKNOWN_KID_WAIT).await {
                return Err(miss_text(miss));
            }
            keys = provider.keys_full();
        }
        let cached = provider.validations_full();
        let built;
        let validation = match cached
            .as_deref()
            .filter(|v| v.is_for(spec))
            .and_then(|v| v.get(alg))
        {
            Some(v) => v,
            // A request still on the snapshot before a reload.
            None => {
                built = store::validation(spec, alg);
                &built
            }
        };
        let mut claims =
            decode_with_any(token, keys.find(kid, alg).map_err(miss_text)?, validation);
        // A token naming a `kid` the set lacks, in a set that holds keys
        // with a `kid` and keys without, was tried on the keys without:
        // when none verifies it, its key may be newly rotated in, so the
        // set is fetched again as for an unknown `kid` (same allowance)
        // and the token tried once more. (In a set with no `kid` at all,
        // a token's `kid` says nothing about rotation.)
        if claims == Err(INVALID_SIGNATURE)
            && keys.mixes_kids()
            && let Some(kid) = kid.filter(|k| !keys.names(k))
            && provider.fetch_now_and_wait(UNKNOWN_KID_WAIT).await
        {
            keys = provider.keys_full();
            if keys.names(kid) {
                claims = decode_with_any(
                    token,
                    keys.find(Some(kid), alg).map_err(miss_text)?,
                    validation,
                );
            }
        }
        let claims = claims?;
        if !claims.is_object() {
            return Err("malformed claims");
        }
        // jsonwebtoken also accepts an `iss` array containing the issuer;
        // the issuer is a single string, compared exactly.
        if claims.get("iss").and_then(Value::as_str) != Some(spec.issuer.as_str()) {
            return Err("wrong issuer");
        }
        Ok(claims)
    }
}

/// The most keys one token is checked against. A token without `kid` (or
/// a key set without them) may fit several keys; a forged token must not
/// cost a signature check for every key of a large set.
const MAX_KEYS_TRIED: usize = 4;

/// The claims of `token`, verified with the first of `keys` whose
/// signature it carries. A token without `kid`, or a key set without them,
/// can leave several candidates: like Envoy, each is tried in turn, up to
/// [`MAX_KEYS_TRIED`]. Only a signature this key does not match (or a key
/// that cannot verify) moves on; any other failure is the token's own,
/// whichever key is used.
fn decode_with_any<'k>(
    token: &str,
    keys: impl Iterator<Item = &'k Key>,
    validation: &Validation,
) -> Result<Value, &'static str> {
    let mut refused = INVALID_SIGNATURE;
    for key in keys.take(MAX_KEYS_TRIED) {
        match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::InvalidSignature
                        | ErrorKind::InvalidEcdsaKey
                        | ErrorKind::InvalidEddsaKey
                        | ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidKeyFormat
                ) =>
            {
                refused = error_text(e.kind());
            }
            Err(e) => return Err(error_text(e.kind())),
        }
    }
    Err(refused)
}

/// Replaces client-supplied claim headers with the verified claims and
/// removes the token (unless the provider forwards it). Called in
/// `request_filter` for routes with `auth` once `check` passed, so split
/// and hash keys on a claim header read the verified value.
pub(crate) fn prepare_request(
    req: &mut RequestHeader,
    snap: &Snapshot,
    auth: &AuthRequirement,
    claims: &Value,
) -> pingora::Result<()> {
    let Some(spec) = snap.jwt_providers.get(&auth.provider) else {
        return Ok(());
    };
    for (_, header) in &spec.forward_claims {
        req.remove_header(header);
    }
    if !spec.forward_token {
        let in_header = req
            .headers
            .get(&spec.from_header)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| bearer(v, is_authorization(spec)).is_some());
        if in_header {
            req.remove_header(&spec.from_header);
        }
        if let Some(name) = &spec.from_cookie {
            strip_cookie(req, name)?;
        }
    }
    set_claim_headers(req, spec, claims)
}

/// Sets the verified claims again on the upstream request. Called from
/// `upstream_request_filter`, after pingora removed the hop-by-hop
/// headers, among them every header the client names in `Connection`:
/// `Connection: x-user-id` would otherwise drop a verified claim header.
pub(crate) fn forward_claims(
    upstream: &mut RequestHeader,
    snap: &Snapshot,
    auth: &AuthRequirement,
    claims: &Value,
) -> pingora::Result<()> {
    match snap.jwt_providers.get(&auth.provider) {
        Some(spec) => set_claim_headers(upstream, spec, claims),
        None => Ok(()),
    }
}

fn set_claim_headers(
    req: &mut RequestHeader,
    spec: &JwtProviderSpec,
    claims: &Value,
) -> pingora::Result<()> {
    for (claim, header) in &spec.forward_claims {
        let Some(v) = claim_at(claims, claim).filter(|v| !v.is_null()) else {
            continue;
        };
        match HeaderValue::try_from(claim_as_header_text(v)) {
            Ok(value) => {
                req.insert_header(header.clone(), value)?;
            }
            Err(_) => tracing::debug!(
                provider = %spec.name,
                %claim,
                "claim not forwarded: it cannot be a header value"
            ),
        }
    }
    Ok(())
}

/// Where the token was, if anywhere.
#[derive(Debug, PartialEq, Eq)]
enum Found<'r> {
    Missing,
    Bad(&'static str),
    Token(&'r str),
}

fn is_authorization(spec: &JwtProviderSpec) -> bool {
    spec.from_header == http::header::AUTHORIZATION
}

/// The provider's header first (`Bearer <token>`; a header other than
/// `authorization` may also carry the bare token), then its cookie.
fn find_token<'r>(req: &'r RequestHeader, spec: &JwtProviderSpec) -> Found<'r> {
    let mut values = req.headers.get_all(&spec.from_header).iter();
    if let Some(v) = values.next() {
        if values.next().is_some() {
            return Found::Bad("more than one token header");
        }
        let Ok(text) = v.to_str() else {
            return Found::Bad("malformed token");
        };
        if let Some(t) = bearer(text, is_authorization(spec)) {
            return well_formed(t);
        }
    }
    if let Some(t) = spec.from_cookie.as_deref().and_then(|n| cookie(req, n)) {
        return std::str::from_utf8(t).map_or(Found::Bad("malformed token"), well_formed);
    }
    Found::Missing
}

fn bearer(value: &str, authorization: bool) -> Option<&str> {
    let v = value.trim();
    match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(rest.trim()),
        None if !authorization && !v.is_empty() => Some(v),
        _ => None,
    }
}

// Cookie headers are read as bytes: other cookies may hold any octet
// (`lang=é`), and they must neither hide the token nor be lost with it.

/// The `name=value` pairs of one Cookie header.
fn cookie_pairs(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes().split(|&b| b == b';')
}

/// The value of `pair` if its name is `name`.
fn cookie_value<'p>(pair: &'p [u8], name: &str) -> Option<&'p [u8]> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
}

fn cookie<'r>(req: &'r RequestHeader, name: &str) -> Option<&'r [u8]> {
    let v = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(cookie_pairs)
        .find_map(|pair| cookie_value(pair, name))?;
    Some(
        v.strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v),
    )
}

/// Removes the `name` cookie; Cookie headers without it stay as they are.
fn strip_cookie(req: &mut RequestHeader, name: &str) -> pingora::Result<()> {
    let has = |v: &HeaderValue| cookie_pairs(v).any(|p| cookie_value(p, name).is_some());
    let cookies = req.headers.get_all(http::header::COOKIE);
    if !cookies.iter().any(has) {
        return Ok(());
    }
    let kept: Vec<HeaderValue> = cookies
        .iter()
        .filter_map(|v| {
            if !has(v) {
                return Some(v.clone());
            }
            let rest = cookie_pairs(v)
                .filter(|p| cookie_value(p, name).is_none())
                .map(<[u8]>::trim_ascii)
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(&b"; "[..]);
            // Parts of a valid value, joined by valid bytes: still valid.
            HeaderValue::from_bytes(&rest)
                .ok()
                .filter(|r| !r.is_empty())
        })
        .collect();
    req.remove_header(&http::header::COOKIE);
    for v in kept {
        req.append_header(http::header::COOKIE, v)?;
    }
    Ok(())
}

/// Compact JWS shape: three base64url parts, bounded length.
fn well_formed(token: &str) -> Found<'_> {
    if token.is_empty() {
        return Found::Missing;
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Found::Bad("token too large");
    }
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let dots = token.bytes().filter(|&b| b == b'.').count();
    if dots != 2 || !token.bytes().all(|b| b64url(b) || b == b'.') {
        return Found::Bad("malformed token");
    }
    Found::Token(token)
}

/// The JOSE header fields we act on. Key-carrying fields (`jku`, `jwk`,
/// `x5u`, `x5c`) are deliberately not read.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

fn miss_text(m: Miss) -> &'static str {
    match m {
        Miss::Empty => "signing keys unavailable",
        Miss::UnknownKid => "unknown signing key",
        Miss::NoFit => "no signing key for this algorithm",
    }
}

const INVALID_SIGNATURE: &str = "invalid signature";

/// The two refusals of a genuine token for its `aud`: 403, not 401.
const WRONG_AUDIENCE: &str = "wrong audience";
const MISSING_AUDIENCE: &str = "missing aud claim";

fn error_text(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => WRONG_AUDIENCE,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "missing exp claim",
            "iss" => "missing iss claim",
            "aud" => MISSING_AUDIENCE,
            _ => "missing required claim",
        },
        ErrorKind::InvalidClaimFormat(_) => "malformed claims",
        ErrorKind::InvalidSignature => INVALID_SIGNATURE,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => "algorithm not allowed",
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token",
        _ => "invalid token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;

    const SECRET: &str = "unit-test secret, longer than thirty-two bytes";

    /// A snapshot with one HS256 provider `p` (secret file) and a route
    /// requirement on it.
    fn fixture() -> (Snapshot, AuthRequirement) {
        let dir = std::env::temp_dir().join(format!(
            "meshgate-authn-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("secret"), format!("{SECRET}\n")).expect("secret");
        let text = r#"
[[listener]]
name = "web"
address = "127.0.0.1:0"

[[jwt_provider]]
name = "p"
issuer = "https://issuer.test/"
audiences = ["api"]
algorithms = ["HS256", "HS384"]
secret_file = "secret"
from_cookie = "tok"
forward_claims = { sub = "x-user", "org.id" = "x-org" }

[[route]]
name = "r"
match = { path_prefix = "/" }
respond = { status = 200 }
auth = { provider = "p", require = [{ claim = "scope", contains = "read" }] }
"#;
        let mut snap = meshgate_config::load_str(text, "t.toml", &dir).expect("valid config");
        snap.version = 1;
        let auth = snap.listeners[0].routes.routes()[0]
            .auth
            .clone()
            .expect("route has auth");
        (snap, auth)
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        req
    }

    fn sign(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn good_claims() -> Value {
        json!({
            "iss": "https://issuer.test/", "aud": "api", "exp": now() + 60,
            "sub": "u1", "scope": "read write", "org": { "id": 7 },
        })
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn tokens_are_found_in_the_header_or_the_cookie() {
        let (snap, _) = fixture();
        let spec = &snap.jwt_providers["p"];
        let find = |h: &[(&str, &str)]| match find_token(&request(h), spec) {
            Found::Token(t) => Found::Token(if t == "a.b.c" { "ok" } else { "other" }),
            Found::Bad(why) => Found::Bad(why),
            Found::Missing => Found::Missing,
        };
        assert_eq!(find(&[]), Found::Missing);
        assert_eq!(
            find(&[("authorization", "Bearer a.b.c")]),
            Found::Token("ok")
        );
        assert_eq!(
            find(&[("authorization", "bearer   a.b.c ")]),
            Found::Token("ok")
        );
        assert_eq!(find(&[("authorization", "Basic a.b.c")]), Found::Missing);
        // The authorization header needs the scheme.
        assert_eq!(find(&[("authorization", "a.b.c")]), Found::Missing);
        assert_eq!(
            find(&[("cookie", "x=1; tok=a.b.c; y=2")]),
            Found::Token("ok")
        );
        assert_eq!(find(&[("cookie", "tok=\"a.b.c\"")]), Found::Token("ok"));
        assert_eq!(find(&[("cookie", "xtok=a.b.c")]), Found::Missing);
        assert_eq!(
            find(&[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer a.b.c")
            ]),
            Found::Bad("more than one token header")
        );
        assert_eq!(
            find(&[("authorization", "Bearer a.b")]),
            Found::Bad("malformed token")
        );
        assert_eq!(
            find(&[("authorization", "Bearer a.b.c+")]),
            Found::Bad("malformed token")
        );
        let huge = format!("Bearer {}.b.c", "a".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            find(&[("authorization", &huge)]),
            Found::Bad("token too large")
        );
    }

    #[test]
    fn a_good_token_passes_and_rules_apply() {
        let (snap, auth) = fixture();
        let authn = Authn::new(&snap);
        let check = |claims: &Value| {
            let req = request(&[("authorization", &format!("Bearer {}", sign(claims)))]);
            run(authn.check(&snap, &auth, &req))
        };
        let ok = check(&good_claims()).expect("accepted");
        assert_eq!(ok["sub"], "u1");
        let mut no_read = good_claims();
        no_read["scope"] = json!("write");
        let denied = check(&no_read).expect_err("rule fails");
        assert_eq!((denied.status, denied.reason), (403, "forbidden"));
        let mut expired = good_claims();
        expired["exp"] = json!(now() - 3600);
        let denied = check(&expired).expect_err("expired");
        assert_eq!((denied.status, denied.reason), (401, "unauthenticated"));
        assert!(
            denied.challenge.contains("token expired"),
            "{}",
            denied.challenge
        );

        // A critical header extension we do not implement.
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.crit = Some(vec!["exp".to_owned()]);
        let token = jsonwebtoken::encode(
            &header,
            &good_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        let req = request(&[("authorization", &format!("Bearer {token}"))]);
        let denied = run(authn.check(&snap, &auth, &req)).expect_err("crit refused");
        assert!(
            denied.challenge.contains("unsupported critical header"),
            "{}",
            denied.challenge
        );
    }

    #[test]
    fn upstream_gets_verified_claims_and_no_token() {
        let (snap, auth) = fixture();
        let mut req = request(&[
            ("authorization", "Bearer a.b.c"),
            ("x-user", "forged"),
            ("x-org", "forged"),
            ("cookie", "a=1; tok=a.b.c"),
            ("cookie", "tok=x.y.z"),
        ]);
        prepare_request(&mut req, &snap, &auth, &good_claims()).expect("prepared");
        assert_eq!(get(&req, "x-user"), [b"u1"]);
        assert_eq!(get(&req, "x-org"), [b"7"]);
        assert!(get(&req, "authorization").is_empty());
        assert_eq!(get(&req, "cookie"), [b"a=1"]);
        // pingora removed them from the upstream request (the client named
        // them in `Connection`): they are set again.
        let mut upstream = req.clone();
        upstream.remove_header("x-user");
        upstream.remove_header("x-org");
        forward_claims(&mut upstream, &snap, &auth, &good_claims()).expect("forwarded");
        assert_eq!(get(&upstream, "x-user"), [b"u1"]);
        assert_eq!(get(&upstream, "x-org"), [b"7"]);
    }

    /// Every value of header `name`, as bytes.
    fn get(req: &RequestHeader, name: &str) -> Vec<Vec<u8>> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn cookies_with_any_bytes_neither_hide_the_token_nor_are_lost() {
        let (snap, auth) = fixture();
        let spec = &snap.jwt_providers["p"];
        let lang = "lang=\u{e9}; x=\u{1f600}";
        let with_token = format!("{lang}; tok=a.b.c; theme=dark");
        let req = request(&[("cookie", &with_token)]);
        assert_eq!(find_token(&req, spec), Found::Token("a.b.c"));
        // A token cookie that is not text is a malformed token.
        let mut req = request(&[]);
        let raw = HeaderValue::from_bytes(b"tok=a.b\xff").expect("header");
        req.append_header(http::header::COOKIE, raw)
            .expect("cookie");
        assert_eq!(find_token(&req, spec), Found::Bad("malformed token"));

        let mut req = request(&[
            ("authorization", "Bearer a.b.c"),
            ("cookie", &with_token),
            ("cookie", lang),
            ("cookie", " tok=\"a.b.c\" "),
        ]);
        let untouched = HeaderValue::from_bytes(b"odd=\xff\xfe;  spaced = 1 ").expect("header");
        req.append_header(http::header::COOKIE, untouched)
            .expect("cookie");
        prepare_request(&mut req, &snap, &auth, &good_claims()).expect("prepared");
        // Other cookies keep their bytes; a header without the token
        // cookie is not touched at all.
        assert_eq!(
            get(&req, "cookie"),
            [
                format!("{lang}; theme=dark").into_bytes(),
                lang.as_bytes().to_vec(),
                b"odd=\xff\xfe;  spaced = 1 ".to_vec(),
            ]
        );
    }

    /// A key set of HMAC keys, standing in for a JWKS whose keys have no
    /// `kid`; `decode_with_any` treats all families alike.
    fn hmac_keys(secrets: &[&str]) -> Vec<Key> {
        secrets
            .iter()
            .map(|s| Key {
                kid: None,
                algs: jwks::AlgSet::of(&[jsonwebtoken::Algorithm::HS256]),
                key: jsonwebtoken::DecodingKey::from_secret(s.as_bytes()),
            })
            .collect()
    }

    #[test]
    fn each_candidate_key_is_tried_until_one_verifies() {
        let (snap, _) = fixture();
        let v = store::validation(&snap.jwt_providers["p"], jsonwebtoken::Algorithm::HS256);
        let keys = hmac_keys(&["first secret", SECRET, "third secret"]);
        let token = sign(&good_claims());
        let claims = decode_with_any(&token, keys.iter(), &v).expect("the second key verifies");
        assert_eq!(claims["sub"], "u1");
        // No key signed it.
        assert_eq!(
            decode_with_any(&token, keys[..1].iter().chain(&keys[2..]), &v),
            Err("invalid signature")
        );
        // The signature checks out but the token does not: that is the
        // answer, the keys after it are not tried.
        let mut expired = good_claims();
        expired["exp"] = json!(now() - 3600);
        assert_eq!(
            decode_with_any(&sign(&expired), keys.iter(), &v),
            Err("token expired")
        );
        // At most four keys are tried: the fifth, though it would verify,
        // is never reached.
        let many = hmac_keys(&["a", "b", "c", "d", SECRET]);
        assert_eq!(
            decode_with_any(&token, many.iter(), &v),
            Err("invalid signature")
        );
        assert!(decode_with_any(&token, many[1..].iter(), &v).is_ok());
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("exp".to_owned()),
                        Just("nbf".to_owned()),
                        Just("iss".to_owned()),
                        Just("aud".to_owned()),
                        Just("scope".to_owned()),
                        "[a-z]{1,4}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the client sends, authentication answers and does not
        /// panic: arbitrary header text, three arbitrary base64url parts,
        /// headers with any `alg`/`kid`/`crit`, and correctly signed tokens
        /// with arbitrary claims (odd `exp`, `nbf`, `iss`, `aud` types).
        #[test]
        fn no_token_input_panics(
            raw in ".{0,200}",
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 3),
            alg in prop_oneof![
                Just("HS256"), Just("HS384"), Just("HS512"), Just("RS256"), Just("none"),
                Just("EdDSA"), Just(""), Just("hs256")
            ],
            kid in prop::option::of(".{0,8}"),
            crit in any::<bool>(),
            claims in json_value(),
            exp in prop_oneof![Just(json!(null)), any::<u64>().prop_map(Value::from),
                               any::<f64>().prop_map(|f| json!(f)), Just(json!("soon"))],
        ) {
            let (snap, auth) = fixture();
            let authn = Authn::new(&snap);
            let mut header = json!({ "alg": alg, "typ": "JWT" });
            if let Some(k) = kid { header["kid"] = json!(k); }
            if crit { header["crit"] = json!(["exp"]); }
            let mut signed_claims = good_claims();
            signed_claims["extra"] = claims.clone();
            signed_claims["exp"] = exp;
            let tokens = [
                raw.clone(),
                format!("Bearer {raw}"),
                format!("Bearer {}.{}.{}", b64(&parts[0]), b64(&parts[1]), b64(&parts[2])),
                format!(
                    "Bearer {}.{}.{}",
                    b64(header.to_string().as_bytes()),
                    b64(claims.to_string().as_bytes()),
                    b64(&parts[2])
                ),
                format!("Bearer {}", sign(&signed_claims)),
                format!("Bearer {}", sign(&claims)),
            ];
            for t in tokens {
                let Ok(value) = HeaderValue::from_str(&t) else { continue };
                let mut req = RequestHeader::build("GET", b"/", None).expect("request");
                req.insert_header(http::header::AUTHORIZATION, value).expect("header");
                let verdict = run(authn.check(&snap, &auth, &req));
                if let Ok(c) = verdict {
                    prepare_request(&mut req, &snap, &auth, &c).expect("prepared");
                    forward_claims(&mut req, &snap, &auth, &c).expect("forwarded");
                }
            }
        }
    }
}
