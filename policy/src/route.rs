//! The route table: which route a request takes, and what that route does.
//!
//! Routes are compiled once per config snapshot. Hosts are indexed so that a
//! lookup costs a few hash probes whatever the number of host routes: every
//! exact host and every wildcard suffix maps to a precomputed, ordered list of
//! candidate routes (exact-host routes first, then wildcard routes from the
//! longest suffix to the shortest, then host-less routes). Within that list
//! the first route whose path, method, header and query matchers all accept
//! the request wins, in config order, as with Envoy's routes inside a virtual
//! host.
//!
//! Matching borrows the request and the route; nothing is allocated unless a
//! host has to be lower-cased.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::authz::AuthRequirement;
use crate::retry::RetryPolicy;

/// The parts of a request that routing looks at, borrowed from whatever
/// representation the listener has (pingora, h3 or hyper).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Host from `:authority` or `Host`, with or without a port.
    pub host: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Raw query string without the leading `?`.
    pub query: Option<&'a str>,
    /// Request method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// How a route matches the request path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// The whole path equals this string.
    Exact(String),
    /// Segment-aware prefix: `/api` matches `/api` and `/api/x`, not `/apix`.
    /// A prefix ending in `/` matches any path starting with it.
    Prefix(String),
    /// The regular expression must match the whole path.
    Regex(Regex),
}

impl PathMatch {
    /// Does `path` satisfy this matcher?
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(re) => full_match(re, path),
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

fn full_match(re: &Regex, text: &str) -> bool {
    re.find(text)
        .is_some_and(|m| m.start() == 0 && m.end() == text.len())
}

/// How a header or query parameter value is matched.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// The value equals this string exactly.
    Exact(String),
    /// The regular expression matches the whole value.
    Regex(Regex),
    /// The header or parameter is present, whatever its value.
    Present,
    /// The header or parameter is absent.
    Absent,
}

impl ValueMatch {
    fn matches_values<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            ValueMatch::Present => values.next().is_some(),
            ValueMatch::Absent => values.next().is_none(),
            ValueMatch::Exact(want) => values.any(|v| v == want.as_bytes()),
            ValueMatch::Regex(re) => {
                values.any(|v| std::str::from_utf8(v).is_ok_and(|s| full_match(re, s)))
            }
        }
    }
}

/// One header condition.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Header name (case-insensitive by construction).
    pub name: HeaderName,
    /// What its value must be.
    pub value: ValueMatch,
}

/// One query-parameter condition; names and values are compared after
/// percent-decoding.
#[derive(Debug, Clone)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// What its value must be.
    pub value: ValueMatch,
}

/// Everything but the host that a route requires of a request.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Path condition.
    pub path: PathMatch,
    /// Allowed methods; empty means any.
    pub methods: Vec<Method>,
    /// All of these must hold.
    pub headers: Vec<HeaderMatch>,
    /// All of these must hold.
    pub query: Vec<QueryMatch>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        Self {
            path: PathMatch::Any,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
        }
    }
}

impl RouteMatch {
    /// Does the request satisfy every condition?
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        if !self.path.matches(req.path) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|h| {
            h.value
                .matches_values(req.headers.get_all(&h.name).iter().map(|v| v.as_bytes()))
        });
        if !headers_ok {
            return false;
        }
        self.query.iter().all(|q| {
            let values = query_values(req.query.unwrap_or(""), &q.name);
            match &q.value {
                ValueMatch::Present => values.into_iter().next().is_some(),
                ValueMatch::Absent => values.into_iter().next().is_none(),
                ValueMatch::Exact(want) => values.iter().any(|v| v == want),
                ValueMatch::Regex(re) => values.iter().any(|v| full_match(re, v)),
            }
        })
    }
}

/// All decoded values of query parameter `name`. Allocates only for
/// routes that have query conditions.
fn query_values<'q>(query: &'q str, name: &str) -> Vec<Cow<'q, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (as space) in a query component. Invalid
/// escapes are kept literally rather than rejected: matching is not the
/// place to police the origin's query syntax.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let hi = (h[0] as char).to_digit(16)?;
                    let lo = (h[1] as char).to_digit(16)?;
                    Some((hi * 16 + lo) as u8)
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// How the path or host is rewritten before forwarding.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Path rewrite, if any.
    pub path: Option<PathRewrite>,
    /// New `Host` / `:authority`, if any.
    pub host: Option<String>,
}

/// A path rewrite.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Replace the part matched by the route's `Prefix` path matcher.
    Prefix(String),
    /// Replace the whole path.
    Full(String),
}

impl Rewrite {
    /// The rewritten path for `path` matched by `matcher`, or `None` when
    /// the path stays as it is.
    pub fn rewrite_path(&self, matcher: &PathMatch, path: &str) -> Option<String> {
        match self.path.as_ref()? {
            PathRewrite::Full(p) => Some(p.clone()),
            PathRewrite::Prefix(replacement) => {
                let rest = match matcher {
                    PathMatch::Prefix(prefix) => path.strip_prefix(prefix.as_str()).unwrap_or(path),
                    _ => path,
                };
                Some(join_path(replacement, rest))
            }
        }
    }
}

/// Joins a replacement prefix and the rest of a path with exactly one `/`
/// between them, and never returns an empty path.
fn join_path(prefix: &str, rest: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + rest.len() + 1);
    out.push_str(prefix.trim_end_matches('/'));
    if !rest.is_empty() {
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
    } else if prefix.ends_with('/') {
        out.push('/');
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A redirect answered by the proxy itself.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// New scheme; the request's when `None`.
    pub scheme: Option<String>,
    /// New host (may include a port); the request's when `None`.
    pub host: Option<String>,
    /// Path rewrite; the request's path when `None`.
    pub path: Option<PathRewrite>,
    /// Drop the query string.
    pub strip_query: bool,
}

impl Redirect {
    /// The `Location` for a request that arrived over `scheme`.
    pub fn location(&self, req: &RequestView<'_>, scheme: &str, matcher: &PathMatch) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host.as_deref().unwrap_or(req.host);
        let rewrite = Rewrite {
            path: self.path.clone(),
            host: None,
        };
        let path = rewrite
            .rewrite_path(matcher, req.path)
            .unwrap_or_else(|| req.path.to_owned());
        let mut out = format!("{scheme}://{host}{path}");
        if let (false, Some(q)) = (self.strip_query, req.query)
            && !q.is_empty()
        {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// Header edits applied to a request or a response.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Removed first.
    pub remove: Vec<HeaderName>,
    /// Replace any existing values.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appended to existing values.
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    /// True when there is nothing to do (lets the data path skip work).
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Copy a share of the traffic to another service, fire-and-forget.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Service that receives the copies.
    pub service: String,
    /// Share of requests mirrored, 0-100.
    pub percent: u8,
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Proxy to a service.
    Forward {
        /// Target service name.
        service: String,
        /// Path/host rewrite before forwarding.
        rewrite: Rewrite,
    },
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with meshgate's built-in status page (the embedded default
    /// config uses it so a new install shows something).
    StatusPage,
    /// Answer directly with a status and a short body.
    Respond {
        /// Status code.
        status: u16,
        /// Body text.
        body: String,
    },
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route name, unique in a config; used in logs and metrics.
    pub name: String,
    /// Request conditions other than the host.
    pub matcher: RouteMatch,
    /// What to do with a matching request.
    pub action: Action,
    /// Overall request timeout covering all tries; `None` = unbounded.
    pub timeout: Option<Duration>,
    /// Retry policy; `None` = no retries.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Authentication and claim rules; `None` = anonymous access.
    pub auth: Option<AuthRequirement>,
    /// Edits to the request before forwarding.
    pub request_headers: HeaderRules,
    /// Edits to the response before returning it.
    pub response_headers: HeaderRules,
    /// Traffic mirroring.
    pub mirror: Option<Mirror>,
}

impl Route {
    /// A route with no timeout, retries, authentication, header rules or
    /// mirroring; set those fields afterwards as needed.
    pub fn new(name: impl Into<String>, matcher: RouteMatch, action: Action) -> Route {
        Route {
            name: name.into(),
            matcher,
            action,
            timeout: None,
            retry: None,
            auth: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            mirror: None,
        }
    }
}

/// A host pattern a route is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host (lower-case, no port).
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com`; stored as the
    /// suffix `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// Parses `example.com` or `*.example.com`, lower-casing it. `None` for
    /// patterns we cannot index (a `*` anywhere else, or an empty host).
    pub fn parse(pattern: &str) -> Option<HostPattern> {
        let p = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Some(rest) = p.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return None;
            }
            return Some(HostPattern::Suffix(format!(".{rest}")));
        }
        // Requests are matched on the host without its port, so a pattern
        // with a port could never match: refuse it rather than load a dead
        // route. Bracketed IPv6 literals keep their colons.
        if p.is_empty() || p.contains('*') || (p.contains(':') && !p.starts_with('[')) {
            return None;
        }
        Some(HostPattern::Exact(p))
    }
}

/// A route and the hosts it serves, as handed to [`RouteTable::new`].
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// Hosts; empty = every host.
    pub hosts: Vec<HostPattern>,
    /// The route.
    pub route: Route,
}

/// The compiled, immutable route table of one listener.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<String, Box<[u32]>>,
    suffix: HashMap<String, Box<[u32]>>,
    any_host: Box<[u32]>,
}

impl RouteTable {
    /// Compiles entries, kept in the given (config) order.
    pub fn new(entries: Vec<RouteEntry>) -> Self {
        let mut exact_own: HashMap<String, Vec<u32>> = HashMap::new();
        let mut suffix_own: HashMap<String, Vec<u32>> = HashMap::new();
        let mut any_host = Vec::new();
        let mut routes = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            if entry.hosts.is_empty() {
                any_host.push(idx);
            }
            for h in entry.hosts {
                let list = match h {
                    HostPattern::Exact(host) => exact_own.entry(host).or_default(),
                    HostPattern::Suffix(suffix) => suffix_own.entry(suffix).or_default(),
                };
                if list.last() != Some(&idx) {
                    list.push(idx);
                }
            }
            routes.push(entry.route);
        }

        // Each suffix's candidates: its own routes, then those of every
        // shorter suffix that also covers it, then host-less routes.
        let suffix_chain = |host_or_suffix: &str, skip_own: bool| -> Vec<u32> {
            let mut out = Vec::new();
            for s in suffixes_of(host_or_suffix).skip(usize::from(skip_own)) {
                if let Some(list) = suffix_own.get(s) {
                    out.extend_from_slice(list);
                }
            }
            out
        };
        let mut suffix = HashMap::with_capacity(suffix_own.len());
        for (s, own) in &suffix_own {
            let mut list = own.clone();
            // `s` is ".b.example.com": the shorter suffixes are what remains
            // after dropping its first label.
            list.extend(suffix_chain(s, true));
            list.extend_from_slice(&any_host);
            suffix.insert(s.clone(), list.into_boxed_slice());
        }
        let mut exact = HashMap::with_capacity(exact_own.len());
        for (h, own) in exact_own {
            let mut list = own;
            list.extend(suffix_chain(&h, false));
            list.extend_from_slice(&any_host);
            exact.insert(h, list.into_boxed_slice());
        }
        Self {
            routes,
            exact,
            suffix,
            any_host: any_host.into_boxed_slice(),
        }
    }

    /// All routes in config order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route that accepts the request, borrowed from the table.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.find_index(req).and_then(|i| self.routes.get(i))
    }

    /// The position in [`RouteTable::routes`] of the first route that
    /// accepts the request; lets a data path keep "which route" in its
    /// per-request state alongside an `Arc` of the snapshot.
    pub fn find_index(&self, req: &RequestView<'_>) -> Option<usize> {
        let host = normalize_host(req.host);
        self.candidates(&host)
            .iter()
            .map(|&i| i as usize)
            .find(|&i| self.routes.get(i).is_some_and(|r| r.matcher.matches(req)))
    }

    fn candidates(&self, host: &str) -> &[u32] {
        if let Some(list) = self.exact.get(host) {
            return list;
        }
        for s in suffixes_of(host) {
            if let Some(list) = self.suffix.get(s) {
                return list;
            }
        }
        &self.any_host
    }
}

/// Proper suffixes of a host or suffix that start with a dot, longest
/// first: `a.b.c` yields `.b.c`, `.c`; `.b.c` yields `.b.c`, `.c`.
fn suffixes_of(host: &str) -> impl Iterator<Item = &str> {
    host.char_indices()
        .filter(|&(i, c)| c == '.' && i + 1 < host.len())
        .map(move |(i, _)| &host[i..])
}

/// Lower-cases a host and strips its port and any trailing dot, borrowing
/// when it is already in that form (the common case).
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(name: &str, matcher: RouteMatch) -> Route {
        let action = Action::Respond {
            status: 200,
            body: name.to_owned(),
        };
        Route::new(name, matcher, action)
    }

    fn entry(hosts: &[&str], name: &str, path: PathMatch) -> RouteEntry {
        RouteEntry {
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            route: route(
                name,
                RouteMatch {
                    path,
                    ..RouteMatch::default()
                },
            ),
        }
    }

    fn find<'t>(t: &'t RouteTable, host: &str, path: &str) -> Option<&'t str> {
        let headers = HeaderMap::new();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        t.find(&RequestView {
            host,
            path,
            query,
            method: &Method::GET,
            headers: &headers,
        })
        .map(|r| r.name.as_str())
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_host() {
        let t = RouteTable::new(vec![
            entry(&[], "fallback", PathMatch::Any),
            entry(&["*.example.com"], "wild", PathMatch::Any),
            entry(&["*.b.example.com"], "wild-b", PathMatch::Any),
            entry(
                &["shop.example.com"],
                "shop",
                PathMatch::Prefix("/api".into()),
            ),
        ]);
        assert_eq!(find(&t, "shop.example.com", "/api/x"), Some("shop"));
        assert_eq!(find(&t, "Shop.Example.com:8443", "/api"), Some("shop"));
        // The exact host has no route for /other: fall through to wildcards.
        assert_eq!(find(&t, "shop.example.com", "/other"), Some("wild"));
        assert_eq!(find(&t, "x.b.example.com", "/"), Some("wild-b"));
        assert_eq!(find(&t, "deep.x.b.example.com", "/"), Some("wild-b"));
        assert_eq!(find(&t, "a.example.com", "/"), Some("wild"));
        assert_eq!(find(&t, "example.com", "/"), Some("fallback"));
        assert_eq!(find(&t, "other.org", "/"), Some("fallback"));
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let t = RouteTable::new(vec![entry(&["a.test"], "a", PathMatch::Exact("/x".into()))]);
        assert_eq!(find(&t, "a.test", "/y"), None);
        assert_eq!(find(&t, "b.test", "/x"), None);
    }

    #[test]
    fn path_matchers() {
        assert!(PathMatch::Prefix("/api".into()).matches("/api"));
        assert!(PathMatch::Prefix("/api".into()).matches("/api/v1"));
        assert!(!PathMatch::Prefix("/api".into()).matches("/apix"));
        assert!(PathMatch::Prefix("/api/".into()).matches("/api/v1"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
        assert!(PathMatch::Exact("/a".into()).matches("/a"));
        assert!(!PathMatch::Exact("/a".into()).matches("/a/"));
        let re = PathMatch::Regex(Regex::new(r"/users/\d+").unwrap());
        assert!(re.matches("/users/42"));
        assert!(
            !re.matches("/users/42/x"),
            "regex must match the whole path"
        );
        assert!(!re.matches("/v1/users/42"));
    }

    #[test]
    fn config_order_wins_within_a_host() {
        let t = RouteTable::new(vec![
            entry(&["h"], "first", PathMatch::Prefix("/a".into())),
            entry(&["h"], "second", PathMatch::Prefix("/a/b".into())),
        ]);
        assert_eq!(find(&t, "h", "/a/b"), Some("first"));
    }

    #[test]
    fn methods_headers_and_query() {
        let matcher = RouteMatch {
            path: PathMatch::Any,
            methods: vec![Method::POST],
            headers: vec![
                HeaderMatch {
                    name: HeaderName::from_static("x-env"),
                    value: ValueMatch::Exact("staging".into()),
                },
                HeaderMatch {
                    name: HeaderName::from_static("x-debug"),
                    value: ValueMatch::Absent,
                },
            ],
            query: vec![QueryMatch {
                name: "user name".into(),
                value: ValueMatch::Regex(Regex::new("a.c").unwrap()),
            }],
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-env", HeaderValue::from_static("staging"));
        let mut req = RequestView {
            host: "h",
            path: "/",
            query: Some("x=1&user+name=a%62c"),
            method: &Method::POST,
            headers: &headers,
        };
        assert!(matcher.matches(&req));
        req.method = &Method::GET;
        assert!(!matcher.matches(&req));
        req.method = &Method::POST;
        req.query = Some("user+name=abcd");
        assert!(!matcher.matches(&req));
        req.query = Some("user%20name=abc");
        assert!(matcher.matches(&req));
        let mut with_debug = headers.clone();
        with_debug.insert("x-debug", HeaderValue::from_static("1"));
        req.headers = &with_debug;
        assert!(!matcher.matches(&req));
    }

    #[test]
    fn rewrites() {
        let prefix = PathMatch::Prefix("/api/products".into());
        let rw = Rewrite {
            path: Some(PathRewrite::Prefix("/".into())),
            host: None,
        };
        assert_eq!(rw.rewrite_path(&prefix, "/api/products/7").unwrap(), "/7");
        assert_eq!(rw.rewrite_path(&prefix, "/api/products").unwrap(), "/");
        let rw = Rewrite {
            path: Some(PathRewrite::Prefix("/v2".into())),
            host: None,
        };
        assert_eq!(
            rw.rewrite_path(&prefix, "/api/products/7").unwrap(),
            "/v2/7"
        );
        let none = Rewrite::default();
        assert!(none.rewrite_path(&prefix, "/x").is_none());
    }

    #[test]
    fn redirect_location() {
        let headers = HeaderMap::new();
        let req = RequestView {
            host: "shop.test",
            path: "/old/a",
            query: Some("q=1"),
            method: &Method::GET,
            headers: &headers,
        };
        let r = Redirect {
            status: 301,
            scheme: Some("https".into()),
            host: None,
            path: Some(PathRewrite::Prefix("/new".into())),
            strip_query: false,
        };
        assert_eq!(
            r.location(&req, "http", &PathMatch::Prefix("/old".into())),
            "https://shop.test/new/a?q=1"
        );
    }

    #[test]
    fn header_rules_apply_in_order() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        let rules = HeaderRules {
            remove: vec![HeaderName::from_static("x-a")],
            set: vec![(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("2"),
            )],
            add: vec![(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("3"),
            )],
        };
        rules.apply(&mut h);
        assert!(h.get("x-a").is_none());
        let b: Vec<_> = h.get_all("x-b").iter().collect();
        assert_eq!(b, vec!["2", "3"]);
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert!(matches!(normalize_host("plain.host"), Cow::Borrowed(_)));
        assert_eq!(HostPattern::parse("a.*.b"), None);
        assert_eq!(HostPattern::parse("*."), None);
        assert_eq!(HostPattern::parse("shop.example.com:8080"), None);
        assert!(HostPattern::parse("[::1]").is_some());
    }

    #[test]
    fn hundreds_of_hosts_resolve_each_to_its_route() {
        let entries = (0..500)
            .map(|i| {
                let h = format!("svc{i}.example.com");
                entry(&[h.as_str()], &format!("r{i}"), PathMatch::Any)
            })
            .collect();
        let t = RouteTable::new(entries);
        for i in (0..500).step_by(37) {
            let h = format!("svc{i}.example.com");
            assert_eq!(find(&t, &h, "/").unwrap(), format!("r{i}"));
            // Each exact host has exactly one candidate: lookup cost does
            // not depend on the number of routes.
            assert_eq!(t.candidates(&h).len(), 1);
        }
    }

    proptest! {
        #[test]
        fn matching_never_panics(host in ".{0,40}", path in ".{0,60}", query in proptest::option::of(".{0,40}")) {
            let t = RouteTable::new(vec![
                entry(&["*.a.b"], "w", PathMatch::Prefix("/x".into())),
                entry(&["a.b"], "e", PathMatch::Regex(Regex::new("/[a-z]+").unwrap())),
                RouteEntry { hosts: vec![], route: route("q", RouteMatch {
                    query: vec![QueryMatch { name: "k".into(), value: ValueMatch::Present }],
                    ..RouteMatch::default()
                })},
            ]);
            let headers = HeaderMap::new();
            let _ = t.find(&RequestView { host: &host, path: &path, query: query.as_deref(), method: &Method::GET, headers: &headers });
            let _ = percent_decode(&path);
            let _ = normalize_host(&host);
        }
    }
}
