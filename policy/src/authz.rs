//! Authorization decisions: which mesh identities may call a service, and
//! which JWT claims a route requires.
//!
//! Authentication itself (verifying a certificate chain or a token
//! signature) happens in the data path; these types only decide on the
//! verified result, so the gateway, the HTTP/3 listener and the sidecar
//! answer the same question the same way.

use serde_json::Value;

/// Matches a SPIFFE ID such as `spiffe://prod.example/ns/shop/sa/orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMatch {
    /// Exactly this ID.
    Exact(String),
    /// Any ID starting with this prefix; written `spiffe://td/ns/shop/*`,
    /// stored without the `*`.
    Prefix(String),
    /// Any identity in the trust bundle.
    Any,
}

impl IdentityMatch {
    /// Parses `*`, `spiffe://td/path/*` or an exact ID. `None` when the text
    /// is not a SPIFFE ID or has a `*` anywhere but at the end.
    pub fn parse(text: &str) -> Option<IdentityMatch> {
        if text == "*" {
            return Some(IdentityMatch::Any);
        }
        let rest = text.strip_prefix("spiffe://")?;
        let (trust_domain, _) = rest.split_once('/').unwrap_or((rest, ""));
        if trust_domain.is_empty() {
            return None;
        }
        if let Some(prefix) = text.strip_suffix('*') {
            if prefix.contains('*') || !prefix.ends_with('/') {
                return None;
            }
            return Some(IdentityMatch::Prefix(prefix.to_owned()));
        }
        if text.contains('*') {
            return None;
        }
        Some(IdentityMatch::Exact(text.to_owned()))
    }

    /// Does this matcher accept `id`?
    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdentityMatch::Any => true,
            IdentityMatch::Exact(e) => e == id,
            IdentityMatch::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

/// Who may call one service over the mesh. With no rule configured every
/// identity from the trust bundle is admitted; once a rule exists, anything
/// it does not name is denied.
#[derive(Debug, Clone, Default)]
pub struct IdentityPolicy {
    /// `None`: no rule configured. `Some(list)`: only these identities.
    pub allow: Option<Vec<IdentityMatch>>,
}

impl IdentityPolicy {
    /// Whether the verified peer identity may call.
    pub fn allows(&self, peer: &str) -> bool {
        match &self.allow {
            None => true,
            Some(list) => list.iter().any(|m| m.matches(peer)),
        }
    }
}

/// A route's authentication requirement.
#[derive(Debug, Clone)]
pub struct AuthRequirement {
    /// JWT provider that must have issued the token.
    pub provider: String,
    /// Every rule must hold, or the request is refused with 403.
    pub rules: Vec<ClaimRule>,
}

impl AuthRequirement {
    /// The first rule the verified claims break, if any.
    pub fn first_failure<'r>(&'r self, claims: &Value) -> Option<&'r ClaimRule> {
        self.rules.iter().find(|r| !r.check(claims))
    }
}

/// One condition on a verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    /// Claim name; a dotted path reaches into objects (`realm.roles`).
    pub claim: String,
    /// What the claim must satisfy.
    pub check: ClaimCheck,
}

/// What a claim must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimCheck {
    /// The claim is present and not null.
    Present,
    /// A string claim equals one of these values.
    OneOf(Vec<String>),
    /// An array claim has this element, or a space-separated string claim
    /// (OAuth `scope`) has this word.
    Contains(String),
}

impl ClaimRule {
    /// Does the claim set satisfy this rule?
    pub fn check(&self, claims: &Value) -> bool {
        let Some(v) = claim_at(claims, &self.claim) else {
            return false;
        };
        match &self.check {
            ClaimCheck::Present => !v.is_null(),
            ClaimCheck::OneOf(values) => match v {
                Value::String(s) => values.iter().any(|want| want == s),
                Value::Number(n) => values.iter().any(|want| *want == n.to_string()),
                Value::Bool(b) => values.iter().any(|want| *want == b.to_string()),
                _ => false,
            },
            ClaimCheck::Contains(word) => match v {
                Value::Array(items) => items.iter().any(|i| i.as_str() == Some(word.as_str())),
                Value::String(s) => s.split_ascii_whitespace().any(|w| w == word),
                _ => false,
            },
        }
    }
}

/// Looks up a claim by name, then by dotted path. A claim whose own name
/// contains dots (common with namespaced claims like `https://x.io/roles`)
/// is found by the first lookup.
pub fn claim_at<'v>(claims: &'v Value, name: &str) -> Option<&'v Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut cur = claims;
    for part in name.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

/// Renders a claim as a header value: strings as they are, everything
/// else as compact JSON.
pub fn claim_as_header_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identity_matchers() {
        let exact = IdentityMatch::parse("spiffe://td/service/orders");
        assert_eq!(
            exact,
            Some(IdentityMatch::Exact("spiffe://td/service/orders".into()))
        );
        let prefix = IdentityMatch::parse("spiffe://td/service/*");
        assert!(matches!(prefix, Some(IdentityMatch::Prefix(_))));
        assert!(
            prefix
                .as_ref()
                .is_some_and(|p| p.matches("spiffe://td/service/x"))
        );
        assert!(
            !prefix
                .as_ref()
                .is_some_and(|p| p.matches("spiffe://other/service/x"))
        );
        assert_eq!(IdentityMatch::parse("https://td/x"), None);
        assert_eq!(IdentityMatch::parse("spiffe:///x"), None);
        assert_eq!(IdentityMatch::parse("spiffe://td/a*b"), None);
        assert_eq!(IdentityMatch::parse("spiffe://td/a*"), None);
        assert_eq!(IdentityMatch::parse("*"), Some(IdentityMatch::Any));
    }

    #[test]
    fn identity_policy_denies_by_default_once_rules_exist() {
        let open = IdentityPolicy::default();
        assert!(open.allows("spiffe://td/anyone"));
        let closed = IdentityPolicy {
            allow: Some(vec![IdentityMatch::Exact("spiffe://td/a".into())]),
        };
        assert!(closed.allows("spiffe://td/a"));
        assert!(!closed.allows("spiffe://td/b"));
        let empty = IdentityPolicy {
            allow: Some(vec![]),
        };
        assert!(!empty.allows("spiffe://td/a"));
    }

    #[test]
    fn claim_rules() {
        let claims = json!({
            "sub": "user-1",
            "scope": "catalog:read orders:write",
            "roles": ["admin", "ops"],
            "realm": {"level": 3},
            "https://x.io/tier": "gold",
            "n": null,
        });
        let rule = |claim: &str, check| ClaimRule {
            claim: claim.into(),
            check,
        };
        assert!(rule("sub", ClaimCheck::Present).check(&claims));
        assert!(!rule("n", ClaimCheck::Present).check(&claims));
        assert!(!rule("missing", ClaimCheck::Present).check(&claims));
        assert!(rule("scope", ClaimCheck::Contains("catalog:read".into())).check(&claims));
        assert!(!rule("scope", ClaimCheck::Contains("catalog".into())).check(&claims));
        assert!(rule("roles", ClaimCheck::Contains("ops".into())).check(&claims));
        assert!(rule("realm.level", ClaimCheck::OneOf(vec!["3".into()])).check(&claims));
        assert!(rule("https://x.io/tier", ClaimCheck::OneOf(vec!["gold".into()])).check(&claims));
        let req = AuthRequirement {
            provider: "p".into(),
            rules: vec![
                rule("sub", ClaimCheck::Present),
                rule("roles", ClaimCheck::Contains("root".into())),
            ],
        };
        assert_eq!(
            req.first_failure(&claims).map(|r| r.claim.as_str()),
            Some("roles")
        );
        assert_eq!(claim_as_header_text(&json!(["a", 1])), "[\"a\",1]");
        assert_eq!(claim_as_header_text(&json!("a b")), "a b");
    }
}
