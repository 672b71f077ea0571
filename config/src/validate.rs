//! The one validation pass: raw structs in, a typed [`Snapshot`] out, and
//! every problem reported with its place and a fix.
//!
//! Each check records its problem and carries on with a default, so one run
//! of `meshgate check` lists everything that is wrong, not just the first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method};
use meshgate_policy::authz::{
    AuthRequirement, ClaimCheck, ClaimRule, IdentityMatch, IdentityPolicy,
};
use meshgate_policy::breaker::{FailureRate, Limits, OutlierConfig};
use meshgate_policy::lb::{Algorithm, EwmaConfig};
use meshgate_policy::retry::{Backoff, RetryBudgetConfig, RetryOn, RetryPolicy};
use meshgate_policy::route::{
    Action, HeaderMatch, HeaderRules, HostPattern, Mirror, PathMatch, PathRewrite, QueryMatch,
    Redirect, Rewrite, Route, RouteEntry, RouteMatch, RouteTable, ValueMatch,
};
use meshgate_policy::split::{Split, SplitTarget};
use regex::Regex;
use toml::Spanned;

use crate::diag::{Sink, did_you_mean};
use crate::raw::*;
use crate::snapshot::*;

/// Compiles a raw config; `None` when any problem was recorded.
pub(crate) fn compile(
    raw: RawConfig,
    sink: &mut Sink<'_>,
    base: &Path,
    origin: &str,
    digest: String,
) -> Option<Snapshot> {
    let mut cx = Cx {
        sink,
        base,
        files: Vec::new(),
    };
    let services_raw = &raw.services;
    let service_names: Vec<String> = services_raw
        .iter()
        .map(|s| s.get_ref().name.get_ref().clone())
        .collect();

    let admin = cx.admin(raw.admin.as_ref());
    let jwt_providers = cx.jwt_providers(&raw.jwt_providers);
    let mesh_raw = raw.mesh.as_ref();
    let mut services = cx.services(services_raw);
    cx.authorization(mesh_raw, &mut services);
    let mesh = cx.mesh(mesh_raw);
    let mut observability = cx.observability(raw.observability.as_ref());
    let mut listeners = cx.listeners(&raw.listeners);
    cx.address_clashes(
        &listeners,
        &admin,
        mesh_raw.map(|m| (&mesh, m)),
        raw.admin.as_ref(),
    );

    let services_by_name: HashMap<String, &ServiceSpec> =
        services.iter().map(|s| (s.name.clone(), s)).collect();
    let listener_names: Vec<String> = listeners.iter().map(|(l, _)| l.name.clone()).collect();
    let (entries, routes) = cx.routes(
        &raw.routes,
        &listener_names,
        &services_by_name,
        &service_names,
        &jwt_providers,
    );
    for (listener, _) in &mut listeners {
        let mine: Vec<RouteEntry> = entries
            .iter()
            .filter(|(ls, _)| ls.is_empty() || ls.contains(&listener.name))
            .map(|(_, e)| e.clone())
            .collect();
        listener.routes = Arc::new(RouteTable::new(mine));
    }
    observability.access_log_off = routes
        .iter()
        .filter(|r| !r.access_log)
        .map(|r| r.name.clone())
        .collect();

    if !cx.sink.is_empty() {
        return None;
    }
    let digest = digest_with_files(&digest, &cx.files);
    let services: Vec<Arc<ServiceSpec>> = services.into_iter().map(Arc::new).collect();
    let service_index = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    Some(Snapshot {
        version: 0,
        source_digest: digest.clone(),
        digest,
        origin: origin.to_owned(),
        source_text: Arc::from(""),
        loaded_at: SystemTime::now(),
        admin,
        listeners: listeners.into_iter().map(|(l, _)| l).collect(),
        jwt_providers: jwt_providers
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect(),
        services,
        service_index,
        routes,
        mesh,
        observability,
    })
}

struct Cx<'a, 's> {
    sink: &'a mut Sink<'s>,
    base: &'a Path,
    /// Files the config refers to (certificates, keys, JWKS, tokens): their
    /// contents are part of the snapshot's digest, so a reload notices a
    /// renewed certificate even when the TOML text is unchanged.
    files: Vec<PathBuf>,
}

const DURATION_HINT: &str = "write a duration with a unit, e.g. \"250ms\", \"5s\", \"2m\", \"24h\"";

/// Turns a list of names into "`a`, `b`, `c`".
fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Cx<'_, '_> {
    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.sink.error(span, msg);
    }

    fn hint(&mut self, span: Range<usize>, msg: impl Into<String>, hint: impl Into<String>) {
        self.sink.error_hint(span, msg, hint);
    }

    fn duration(&mut self, v: &S, key: &str, min: Duration, max: Duration) -> Option<Duration> {
        let text = v.get_ref().trim();
        match humantime::parse_duration(text) {
            Ok(d) if d < min => {
                self.hint(
                    v.span(),
                    format!("`{key}` = \"{text}\" is too short"),
                    format!("use at least {}", humantime::format_duration(min)),
                );
                None
            }
            Ok(d) if d > max => {
                self.hint(
                    v.span(),
                    format!("`{key}` = \"{text}\" is too long"),
                    format!("use at most {}", humantime::format_duration(max)),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.hint(
                    v.span(),
                    format!("invalid duration for `{key}`: \"{text}\" ({e})"),
                    DURATION_HINT,
                );
                None
            }
        }
    }

    fn opt_duration(
        &mut self,
        v: Option<&S>,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        v.and_then(|v| self.duration(v, key, min, max))
            .unwrap_or(default)
    }

    fn int(&mut self, v: &N, key: &str, lo: i64, hi: i64) -> Option<i64> {
        let n = *v.get_ref();
        if n < lo || n > hi {
            self.hint(
                v.span(),
                format!("`{key}` = {n} is out of range"),
                format!("use a whole number from {lo} to {hi}"),
            );
            return None;
        }
        Some(n)
    }

    fn opt_int(&mut self, v: Option<&N>, key: &str, lo: i64, hi: i64, default: i64) -> i64 {
        v.and_then(|v| self.int(v, key, lo, hi)).unwrap_or(default)
    }

    fn opt_u32(&mut self, v: Option<&N>, key: &str, lo: u32, hi: u32, default: u32) -> u32 {
        let n = self.opt_int(v, key, i64::from(lo), i64::from(hi), i64::from(default));
        u32::try_from(n).unwrap_or(default)
    }

    fn word<T: Copy>(&mut self, v: &S, key: &str, table: &[(&str, T)]) -> Option<T> {
        let text = v.get_ref().as_str();
        if let Some((_, t)) = table.iter().find(|(w, _)| *w == text) {
            return Some(*t);
        }
        let words: Vec<&str> = table.iter().map(|(w, _)| *w).collect();
        let hint = match did_you_mean(text, words.iter().copied()) {
            Some(w) => format!("did you mean \"{w}\"?"),
            None => format!("use one of {}", quoted(&words)),
        };
        self.hint(
            v.span(),
            format!("unknown value \"{text}\" for `{key}`"),
            hint,
        );
        None
    }

    fn addr(&mut self, v: &S, key: &str) -> Option<SocketAddr> {
        let text = v.get_ref().trim();
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let hint = if let Some(port) = text.strip_prefix("localhost:") {
                    format!("write an IP address: \"127.0.0.1:{port}\"")
                } else if text.parse::<IpAddr>().is_ok() {
                    format!("add a port: \"{text}:8080\"")
                } else {
                    "write IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"".to_owned()
                };
                self.hint(
                    v.span(),
                    format!("invalid address for `{key}`: \"{text}\""),
                    hint,
                );
                None
            }
        }
    }

    fn resolve(&self, v: &S) -> PathBuf {
        let p = Path::new(v.get_ref());
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    /// A file that must be readable now.
    fn readable(&mut self, v: &S, key: &str) -> Option<PathBuf> {
        let path = self.resolve(v);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => match std::fs::File::open(&path) {
                Ok(_) => {
                    self.files.push(path.clone());
                    Some(path)
                }
                Err(e) => {
                    self.hint(
                        v.span(),
                        format!("cannot read `{key}` file {}: {e}", path.display()),
                        "check the file's permissions for the meshgate user",
                    );
                    None
                }
            },
            Ok(_) => {
                self.err(
                    v.span(),
                    format!("`{key}` {} is not a regular file", path.display()),
                );
                None
            }
            Err(e) => {
                self.hint(
                    v.span(),
                    format!("cannot read `{key}` file {}: {e}", path.display()),
                    "relative paths are resolved from the config file's directory",
                );
                None
            }
        }
    }

    fn cert_chain(&mut self, v: &S, key: &str) -> Option<PathBuf> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let path = self.readable(v, key)?;
        let certs: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(&path) {
            Ok(it) => it.collect(),
            Err(e) => Err(e),
        };
        match certs {
            Ok(c) if !c.is_empty() => Some(path),
            Ok(_) => {
                self.hint(
                    v.span(),
                    format!("no certificate found in {}", path.display()),
                    "the file must hold PEM `-----BEGIN CERTIFICATE-----` blocks, leaf first",
                );
                None
            }
            Err(e) => {
                self.hint(
                    v.span(),
                    format!("unreadable certificate {}: {e}", path.display()),
                    "the file must hold PEM `-----BEGIN CERTIFICATE-----` blocks, leaf first",
                );
                None
            }
        }
    }

    fn private_key(&mut self, v: &S, key: &str) -> Option<PathBuf> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let path = self.readable(v, key)?;
        match PrivateKeyDer::from_pem_file(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                self.hint(
                    v.span(),
                    format!("unreadable private key {}: {e}", path.display()),
                    "the file must hold one PEM private key (PKCS#8, PKCS#1 or SEC1)",
                );
                None
            }
        }
    }

    fn header_name(&mut self, v: &S, key: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(v.get_ref().trim().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.hint(
                    v.span(),
                    format!("invalid header name \"{}\" in `{key}`", v.get_ref()),
                    "header names are tokens: letters, digits and `-`, no spaces or colons",
                );
                None
            }
        }
    }

    fn header_value(&mut self, v: &S, key: &str) -> Option<HeaderValue> {
        match HeaderValue::from_str(v.get_ref()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.hint(
                    v.span(),
                    format!("invalid header value in `{key}`"),
                    "header values cannot contain control characters or line breaks",
                );
                None
            }
        }
    }

    fn regex(&mut self, v: &S, key: &str) -> Option<Regex> {
        match regex::RegexBuilder::new(v.get_ref())
            .size_limit(1 << 20)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or("").trim().to_owned();
                self.hint(
                    v.span(),
                    format!("invalid regular expression in `{key}`: {last}"),
                    "the syntax is Rust's `regex` crate (RE2-like; no look-around)",
                );
                None
            }
        }
    }

    /// A reference to a named thing; reports unknown names with a
    /// suggestion.
    fn reference(&mut self, v: &S, kind: &str, known: &[String]) -> bool {
        let name = v.get_ref();
        if known.iter().any(|k| k == name) {
            return true;
        }
        let hint = match did_you_mean(name, known.iter().map(String::as_str)) {
            Some(k) => format!("did you mean \"{k}\"?"),
            None if known.is_empty() => format!("no {kind} is defined; add a [[{kind}]] table"),
            None => format!(
                "defined {kind}s: {}",
                quoted(&known.iter().map(String::as_str).collect::<Vec<_>>())
            ),
        };
        self.hint(v.span(), format!("unknown {kind} \"{name}\""), hint);
        false
    }

    fn name(&mut self, v: &S, kind: &str, seen: &mut HashMap<String, usize>) {
        let n = v.get_ref();
        let ok = !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            self.hint(
                v.span(),
                format!("invalid {kind} name \"{n}\""),
                "names use letters, digits, `-`, `_` and `.`",
            );
        }
        if seen.insert(n.clone(), v.span().start).is_some() {
            self.hint(
                v.span(),
                format!("duplicate {kind} name \"{n}\""),
                format!("each {kind} needs a unique name"),
            );
        }
    }

    fn request_key(&mut self, v: &Spanned<RawKeySource>, key: &str) -> Option<RequestKey> {
        let k = v.get_ref();
        let mut found = Vec::new();
        if let Some(h) = &k.header {
            found.push(self.header_name(h, key).map(RequestKey::Header));
        }
        if let Some(c) = &k.claim {
            found.push(Some(RequestKey::Claim(c.get_ref().clone())));
        }
        if let Some(c) = &k.cookie {
            found.push(Some(RequestKey::Cookie(c.get_ref().clone())));
        }
        if k.source_ip == Some(true) {
            found.push(Some(RequestKey::SourceIp));
        }
        if found.len() != 1 {
            self.hint(
                v.span(),
                format!("`{key}` needs exactly one key source"),
                "write one of `{ header = \"x-user-id\" }`, `{ claim = \"sub\" }`, \
                 `{ cookie = \"session\" }` or `{ source_ip = true }`",
            );
            return None;
        }
        found.pop().flatten()
    }

    // ---- admin ---------------------------------------------------------

    fn admin(&mut self, raw: Option<&Spanned<RawAdmin>>) -> AdminSpec {
        let default_addr = SocketAddr::from(([127, 0, 0, 1], 9901));
        let Some(raw) = raw else {
            return AdminSpec {
                enabled: false,
                address: default_addr,
                token: None,
            };
        };
        let a = raw.get_ref();
        let address = a
            .address
            .as_ref()
            .and_then(|v| self.addr(v, "admin.address"))
            .unwrap_or(default_addr);
        let sources = [
            a.token.is_some(),
            a.token_file.is_some(),
            a.token_env.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            self.hint(
                raw.span(),
                "the admin token is given more than once",
                "use only one of `token`, `token_file` or `token_env`",
            );
        }
        let token = if let Some(t) = &a.token {
            Some(t.get_ref().trim().to_owned())
        } else if let Some(f) = &a.token_file {
            self.readable(f, "admin.token_file").and_then(|p| {
                std::fs::read_to_string(&p)
                    .ok()
                    .map(|s| s.trim().to_owned())
            })
        } else if let Some(e) = &a.token_env {
            match std::env::var(e.get_ref()) {
                Ok(v) => Some(v.trim().to_owned()),
                Err(_) => {
                    self.hint(
                        e.span(),
                        format!("environment variable {} is not set", e.get_ref()),
                        "export it in the service environment, or use `token_file`",
                    );
                    None
                }
            }
        } else {
            None
        };
        if let Some(t) = &token
            && t.len() < 16
        {
            let span = a
                .token
                .as_ref()
                .or(a.token_file.as_ref())
                .or(a.token_env.as_ref())
                .map_or(raw.span(), |s| s.span());
            self.hint(
                span,
                "the admin token is shorter than 16 characters",
                "use a long random token, e.g. `openssl rand -hex 32`",
            );
        }
        if !address.ip().is_loopback() && token.is_none() {
            let span = a.address.as_ref().map_or(raw.span(), |s| s.span());
            self.hint(
                span,
                format!("the admin API on non-loopback address {address} needs a token"),
                "set `token_file` (or `token_env`), or bind the admin API to 127.0.0.1",
            );
        }
        AdminSpec {
            enabled: true,
            address,
            token: token.map(Secret::new),
        }
    }

    // ---- listeners -----------------------------------------------------

    fn listeners(&mut self, raw: &[Spanned<RawListener>]) -> Vec<(ListenerSpec, Range<usize>)> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for l in raw {
            let r = l.get_ref();
            self.name(&r.name, "listener", &mut seen);
            let address = self.addr(&r.address, "address");
            let tls = r.tls.as_ref().map(|t| self.tls(t));
            let protocols = self.protocols(r, tls.is_some());
            let limits = self.listener_limits(r.limits.as_ref());
            let http3 = self.http3(r.http3.as_ref(), protocols.http3);
            if let Some(address) = address {
                out.push((
                    ListenerSpec {
                        name: r.name.get_ref().clone(),
                        address,
                        protocols,
                        tls: tls.flatten(),
                        limits,
                        http3,
                        routes: Arc::new(RouteTable::default()),
                    },
                    r.address.span(),
                ));
            }
        }
        out
    }

    fn protocols(&mut self, r: &RawListener, tls: bool) -> Protocols {
        let Some(list) = &r.protocols else {
            return Protocols {
                http1: true,
                http2: tls,
                h2c: !tls,
                http3: false,
            };
        };
        let mut p = Protocols::default();
        const WORDS: [(&str, u8); 4] = [("http1", 0), ("http2", 1), ("h2c", 2), ("http3", 3)];
        for w in list.get_ref() {
            match self.word(w, "protocols", &WORDS) {
                Some(0) => p.http1 = true,
                Some(1) => {
                    p.http2 = true;
                    if !tls {
                        self.hint(
                            w.span(),
                            "`http2` needs TLS on this listener",
                            "add a [listener.tls] table, or use \"h2c\" for HTTP/2 over plaintext",
                        );
                    }
                }
                Some(2) => {
                    p.h2c = true;
                    if tls {
                        self.hint(
                            w.span(),
                            "`h2c` is HTTP/2 without TLS, but this listener has TLS",
                            "use \"http2\" on a TLS listener",
                        );
                    }
                }
                Some(_) => {
                    p.http3 = true;
                    if !tls {
                        self.hint(
                            w.span(),
                            "`http3` needs TLS on this listener",
                            "add a [listener.tls] table with a certificate",
                        );
                    }
                }
                None => {}
            }
        }
        if list.get_ref().is_empty() {
            self.hint(
                list.span(),
                "a listener needs at least one protocol",
                "e.g. protocols = [\"http1\", \"http2\"]",
            );
        }
        p
    }

    fn tls(&mut self, t: &Spanned<RawTls>) -> Option<TlsSpec> {
        let raw = t.get_ref();
        if raw.certificates.is_empty() {
            self.hint(
                t.span(),
                "TLS is configured without a certificate",
                "add `certificates = [{ cert = \"edge.pem\", key = \"edge.key\" }]`",
            );
        }
        let mut certificates = Vec::new();
        let mut names_seen = HashSet::new();
        for c in &raw.certificates {
            let cr = c.get_ref();
            let cert = self.cert_chain(&cr.cert, "cert");
            let key = self.private_key(&cr.key, "key");
            let mut server_names = Vec::new();
            for n in cr.server_names.iter().flatten() {
                let name = n.get_ref().trim().to_ascii_lowercase();
                if HostPattern::parse(&name).is_none() {
                    self.hint(
                        n.span(),
                        format!("invalid server name \"{}\"", n.get_ref()),
                        "write a host name, or `*.example.com` for a wildcard",
                    );
                } else if !names_seen.insert(name.clone()) {
                    self.err(
                        n.span(),
                        format!("server name \"{name}\" is served by two certificates"),
                    );
                }
                server_names.push(name);
            }
            if let (Some(cert), Some(key)) = (cert, key) {
                certificates.push(CertSpec {
                    cert,
                    key,
                    server_names,
                });
            }
        }
        let min_version = match &raw.min_version {
            Some(v) => self
                .word(
                    v,
                    "min_version",
                    &[("1.2", TlsVersion::Tls12), ("1.3", TlsVersion::Tls13)],
                )
                .unwrap_or(TlsVersion::Tls12),
            None => TlsVersion::Tls12,
        };
        let client_auth = match &raw.client_auth {
            None => ClientAuth::None,
            Some(ca) => {
                let c = ca.get_ref();
                let mode = self.word(
                    &c.mode,
                    "client_auth.mode",
                    &[("none", 0u8), ("optional", 1), ("require", 2)],
                );
                let bundle = match (&c.ca, mode) {
                    (Some(p), _) => self.cert_chain(p, "client_auth.ca"),
                    (None, Some(1 | 2)) => {
                        self.hint(
                            ca.span(),
                            "client certificate verification needs a CA bundle",
                            "add `ca = \"clients-ca.pem\"`",
                        );
                        None
                    }
                    (None, _) => None,
                };
                match (mode, bundle) {
                    (Some(1), Some(ca)) => ClientAuth::Optional { ca },
                    (Some(2), Some(ca)) => ClientAuth::Require { ca },
                    _ => ClientAuth::None,
                }
            }
        };
        Some(TlsSpec {
            certificates,
            min_version,
            client_auth,
        })
    }

    fn http3(&mut self, raw: Option<&Spanned<RawHttp3>>, on: bool) -> Http3Spec {
        let dflt = Http3Spec::default();
        let Some(raw) = raw else { return dflt };
        if !on {
            self.hint(
                raw.span(),
                "[listener.http3] settings on a listener without `http3` in its protocols",
                "add \"http3\" to `protocols`, or remove the table",
            );
        }
        let r = raw.get_ref();
        let d = Duration::from_secs;
        let stream_receive_window = self.opt_u32(
            r.stream_receive_window.as_ref(),
            "stream_receive_window",
            16 * 1024,
            64 << 20,
            dflt.stream_receive_window,
        );
        let receive_window = self.opt_u32(
            r.receive_window.as_ref(),
            "receive_window",
            16 * 1024,
            1 << 30,
            dflt.receive_window.max(stream_receive_window),
        );
        if receive_window < stream_receive_window {
            self.hint(
                raw.span(),
                format!(
                    "`receive_window` ({receive_window}) is smaller than `stream_receive_window` ({stream_receive_window})"
                ),
                "the connection window must hold at least one stream's window",
            );
        }
        Http3Spec {
            max_concurrent_streams: self.opt_u32(
                r.max_concurrent_streams.as_ref(),
                "max_concurrent_streams",
                1,
                10_000,
                dflt.max_concurrent_streams,
            ),
            stream_receive_window,
            receive_window,
            idle_timeout: self.opt_duration(
                r.idle_timeout.as_ref(),
                "idle_timeout",
                dflt.idle_timeout,
                Duration::from_secs(1),
                d(3_600),
            ),
            retry_threshold: self.opt_u32(
                r.retry_threshold.as_ref(),
                "retry_threshold",
                0,
                1_000_000,
                dflt.retry_threshold,
            ),
            early_data: r.early_data.unwrap_or(dflt.early_data),
            alt_svc_max_age: self.opt_duration(
                r.alt_svc_max_age.as_ref(),
                "alt_svc_max_age",
                dflt.alt_svc_max_age,
                Duration::ZERO,
                d(365 * 86_400),
            ),
        }
    }

    fn listener_limits(&mut self, raw: Option<&RawListenerLimits>) -> ListenerLimits {
        let d = |s: u64| Duration::from_secs(s);
        let ms = Duration::from_millis;
        let def = ListenerLimits::default();
        let Some(r) = raw else {
            return def;
        };
        ListenerLimits {
            max_header_bytes: self.opt_int(
                r.max_header_bytes.as_ref(),
                "max_header_bytes",
                1024,
                MAX_HEADER_BYTES as i64,
                def.max_header_bytes as i64,
            ) as usize,
            max_headers: self.opt_int(
                r.max_headers.as_ref(),
                "max_headers",
                8,
                10_000,
                def.max_headers as i64,
            ) as usize,
            max_connections: self.opt_u32(
                r.max_connections.as_ref(),
                "max_connections",
                1,
                10_000_000,
                def.max_connections,
            ),
            max_request_body_bytes: r
                .max_request_body_bytes
                .as_ref()
                .and_then(|v| self.int(v, "max_request_body_bytes", 0, i64::MAX))
                .map(|n| n as u64),
            header_read_timeout: self.opt_duration(
                r.header_read_timeout.as_ref(),
                "header_read_timeout",
                def.header_read_timeout,
                ms(100),
                d(600),
            ),
            idle_timeout: self.opt_duration(
                r.idle_timeout.as_ref(),
                "idle_timeout",
                def.idle_timeout,
                ms(100),
                d(86_400),
            ),
            drain_timeout: self.opt_duration(
                r.drain_timeout.as_ref(),
                "drain_timeout",
                def.drain_timeout,
                Duration::ZERO,
                d(3_600),
            ),
            read_buffer_bytes: self.opt_int(
                r.read_buffer_bytes.as_ref(),
                "read_buffer_bytes",
                0,
                1 << 20,
                def.read_buffer_bytes as i64,
            ) as usize,
        }
    }

    fn address_clashes(
        &mut self,
        listeners: &[(ListenerSpec, Range<usize>)],
        admin: &AdminSpec,
        mesh: Option<(&MeshSpec, &Spanned<RawMesh>)>,
        raw_admin: Option<&Spanned<RawAdmin>>,
    ) {
        // Two sockets clash when ports match and either address is the
        // wildcard or both are equal.
        let clash = |a: SocketAddr, b: SocketAddr| {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for (i, (l, span)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i]
                .iter()
                .find(|(o, _)| clash(o.address, l.address))
            {
                self.hint(
                    span.clone(),
                    format!(
                        "listener \"{}\" uses address {} already taken by listener \"{}\"",
                        l.name, l.address, other.name
                    ),
                    "give each listener its own port; one listener can serve several protocols",
                );
            }
            if clash(l.address, admin.address) {
                self.hint(
                    span.clone(),
                    format!(
                        "listener \"{}\" uses address {} already taken by the admin API",
                        l.name, l.address
                    ),
                    "move the listener or set [admin] address",
                );
            }
            if mesh.is_some_and(|(m, _)| clash(l.address, m.control_plane_address)) {
                self.hint(
                    span.clone(),
                    format!(
                        "listener \"{}\" uses address {} already taken by the mesh control plane",
                        l.name, l.address
                    ),
                    "move the listener or set [mesh] control_plane_address",
                );
            }
        }
        if let Some((mesh, raw_mesh)) = mesh
            && clash(admin.address, mesh.control_plane_address)
        {
            let span = raw_admin
                .and_then(|a| a.get_ref().address.as_ref().map(|x| x.span()))
                .unwrap_or_else(|| raw_mesh.span());
            self.hint(
                span,
                format!(
                    "the admin API and the mesh control plane both use {}",
                    admin.address
                ),
                "give [admin] address and [mesh] control_plane_address different ports",
            );
        }
    }

    // ---- JWT -----------------------------------------------------------

    fn jwt_providers(&mut self, raw: &[Spanned<RawJwtProvider>]) -> Vec<JwtProviderSpec> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for p in raw {
            let r = p.get_ref();
            self.name(&r.name, "jwt_provider", &mut seen);
            if r.issuer.get_ref().trim().is_empty() {
                self.err(r.issuer.span(), "`issuer` is empty");
            }
            if r.audiences.is_empty() {
                self.hint(
                    p.span(),
                    format!("jwt_provider \"{}\" accepts any audience", r.name.get_ref()),
                    "set `audiences = [\"your-api\"]`: without an audience check a token \
                     issued for another service is accepted here",
                );
            }
            let mut algorithms = Vec::new();
            let names: Vec<(&str, JwtAlgorithm)> = JwtAlgorithm::ALL.to_vec();
            for a in r.algorithms.get_ref() {
                if let Some(alg) = self.word(a, "algorithms", &names)
                    && !algorithms.contains(&alg)
                {
                    algorithms.push(alg);
                }
            }
            if r.algorithms.get_ref().is_empty() {
                self.hint(
                    r.algorithms.span(),
                    "`algorithms` is empty",
                    "pin the algorithms your issuer signs with, e.g. [\"RS256\"]",
                );
            }
            let symmetric = algorithms.iter().any(|a| a.is_symmetric());
            if symmetric && algorithms.iter().any(|a| !a.is_symmetric()) {
                self.hint(
                    r.algorithms.span(),
                    "HMAC (HS*) and public-key algorithms are mixed",
                    "a provider is either shared-secret or public-key; mixing them invites \
                     algorithm-confusion attacks",
                );
            }
            let sources = [
                r.jwks_file.is_some(),
                r.jwks_url.is_some(),
                r.secret_file.is_some(),
            ];
            let keys = match (&r.jwks_file, &r.jwks_url, &r.secret_file) {
                _ if sources.iter().filter(|s| **s).count() != 1 => {
                    self.hint(
                        p.span(),
                        format!(
                            "jwt_provider \"{}\" needs exactly one key source",
                            r.name.get_ref()
                        ),
                        "set one of `jwks_file`, `jwks_url` or (HS* only) `secret_file`",
                    );
                    None
                }
                (Some(f), _, _) => self.jwks_file(f).map(JwtKeySource::JwksFile),
                (_, Some(u), _) => {
                    let url = u.get_ref().trim();
                    let loopback_http = url.starts_with("http://") && url_host_is_loopback(url);
                    if !(url.starts_with("https://") || loopback_http) {
                        self.hint(
                            u.span(),
                            format!("`jwks_url` \"{url}\" is not HTTPS"),
                            "keys fetched over plain HTTP can be replaced in transit; use \
                             https:// (plain http is accepted only on loopback)",
                        );
                    }
                    Some(JwtKeySource::JwksUrl(url.to_owned()))
                }
                (_, _, Some(s)) => self
                    .readable(s, "secret_file")
                    .map(JwtKeySource::SecretFile),
                _ => None,
            };
            if let Some(k) = &keys {
                let is_secret = matches!(k, JwtKeySource::SecretFile(_));
                if symmetric && !is_secret {
                    self.hint(
                        r.algorithms.span(),
                        "HS* algorithms need `secret_file`",
                        "HMAC keys are shared secrets, not JWKS public keys",
                    );
                }
                if !symmetric && is_secret && !algorithms.is_empty() {
                    self.hint(
                        r.algorithms.span(),
                        "`secret_file` only works with HS256, HS384 or HS512",
                        "for public-key algorithms use `jwks_file` or `jwks_url`",
                    );
                }
            }
            let refresh_interval = self.opt_duration(
                r.refresh_interval.as_ref(),
                "refresh_interval",
                Duration::from_secs(300),
                Duration::from_secs(1),
                Duration::from_secs(7 * 86_400),
            );
            let leeway = self.opt_duration(
                r.leeway.as_ref(),
                "leeway",
                Duration::from_secs(30),
                Duration::ZERO,
                Duration::from_secs(300),
            );
            let from_header = r
                .from_header
                .as_ref()
                .and_then(|h| self.header_name(h, "from_header"))
                .unwrap_or(http::header::AUTHORIZATION);
            let mut forward_claims = Vec::new();
            for (claim, header) in r.forward_claims.iter().flatten() {
                if let Some(h) = self.header_name(header, "forward_claims") {
                    forward_claims.push((claim.clone(), h));
                }
            }
            if let Some(keys) = keys {
                out.push(JwtProviderSpec {
                    name: r.name.get_ref().clone(),
                    issuer: r.issuer.get_ref().clone(),
                    audiences: r.audiences.iter().map(|a| a.get_ref().clone()).collect(),
                    algorithms,
                    keys,
                    refresh_interval,
                    leeway,
                    from_header,
                    from_cookie: r.from_cookie.as_ref().map(|c| c.get_ref().clone()),
                    forward_token: r.forward_token.unwrap_or(false),
                    forward_claims,
                });
            }
        }
        out
    }

    fn jwks_file(&mut self, f: &S) -> Option<PathBuf> {
        let path = self.readable(f, "jwks_file")?;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&text);
        match parsed {
            Ok(v) if v.get("keys").is_some_and(|k| k.is_array()) => Some(path),
            Ok(_) => {
                self.hint(
                    f.span(),
                    format!("{} is not a JWKS document", path.display()),
                    "a JWKS is a JSON object with a `keys` array",
                );
                None
            }
            Err(e) => {
                self.hint(
                    f.span(),
                    format!("{} is not valid JSON: {e}", path.display()),
                    "a JWKS is a JSON object with a `keys` array",
                );
                None
            }
        }
    }

    // ---- services ------------------------------------------------------

    fn services(&mut self, raw: &[Spanned<RawService>]) -> Vec<ServiceSpec> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for s in raw {
            let r = s.get_ref();
            self.name(&r.name, "service", &mut seen);
            let name = r.name.get_ref().clone();
            let discovery = r
                .discovery
                .as_ref()
                .and_then(|d| {
                    self.word(
                        d,
                        "discovery",
                        &[("static", Discovery::Static), ("mesh", Discovery::Mesh)],
                    )
                })
                .unwrap_or(Discovery::Static);
            let mut endpoints = Vec::new();
            let mut addrs = HashSet::new();
            for e in &r.endpoints {
                let er = e.get_ref();
                // Weight 0 drains an endpoint: it keeps its connections but gets
                // no new requests while others can take them.
                let weight = self.opt_u32(er.weight.as_ref(), "weight", 0, 10_000, 1);
                if let Some(address) = self.addr(&er.address, "endpoints.address") {
                    if !addrs.insert(address) {
                        self.err(
                            er.address.span(),
                            format!("endpoint {address} is listed twice in service \"{name}\""),
                        );
                    }
                    endpoints.push(EndpointSpec {
                        address,
                        labels: er.labels.clone(),
                        weight,
                    });
                }
            }
            if discovery == Discovery::Static && r.endpoints.is_empty() {
                self.hint(
                    r.name.span(),
                    format!("service \"{name}\" has no endpoints"),
                    "add `endpoints = [{ address = \"127.0.0.1:8080\" }]`, or set \
                     `discovery = \"mesh\"` for a service whose sidecars register themselves",
                );
            }
            let mut subsets: Vec<SubsetSpec> = Vec::new();
            for sub in &r.subsets {
                let sr = sub.get_ref();
                let sname = sr.name.get_ref().clone();
                if subsets.iter().any(|x| x.name == sname) {
                    self.err(
                        sr.name.span(),
                        format!("duplicate subset \"{sname}\" in service \"{name}\""),
                    );
                }
                if sr.labels.get_ref().is_empty() {
                    self.hint(
                        sr.labels.span(),
                        format!("subset \"{sname}\" selects every endpoint"),
                        "give it labels, e.g. `labels = { version = \"v2\" }`",
                    );
                }
                let spec = SubsetSpec {
                    name: sname.clone(),
                    labels: sr.labels.get_ref().clone(),
                };
                if discovery == Discovery::Static
                    && !endpoints.is_empty()
                    && !endpoints.iter().any(|e| spec.selects(&e.labels))
                {
                    self.hint(
                        sr.labels.span(),
                        format!("subset \"{sname}\" of service \"{name}\" selects no endpoint"),
                        "every requests sent to it would fail with 503; check the labels",
                    );
                }
                subsets.push(spec);
            }
            let split = r
                .split
                .as_ref()
                .and_then(|sp| self.split(sp, &name, &subsets));
            let lb =
                r.lb.as_ref()
                    .and_then(|v| {
                        self.word(
                            v,
                            "lb",
                            &[
                                ("peak-ewma", Algorithm::PeakEwma),
                                ("round-robin", Algorithm::RoundRobin),
                                ("least-request", Algorithm::LeastRequest),
                                ("consistent-hash", Algorithm::ConsistentHash),
                            ],
                        )
                    })
                    .unwrap_or(Algorithm::PeakEwma);
            let hash_on = r
                .hash_on
                .as_ref()
                .and_then(|h| self.request_key(h, "hash_on"));
            if lb == Algorithm::ConsistentHash && r.hash_on.is_none() {
                self.hint(
                    r.lb.as_ref().map_or(r.name.span(), |v| v.span()),
                    "`consistent-hash` needs a key",
                    "add `hash_on = { header = \"x-user-id\" }` (or claim, cookie, source_ip)",
                );
            }
            if let (Some(h), false) = (&r.hash_on, lb == Algorithm::ConsistentHash) {
                self.hint(
                    h.span(),
                    "`hash_on` only applies to lb = \"consistent-hash\"",
                    "remove it, or set lb = \"consistent-hash\"",
                );
            }
            let protocol = r.protocol.as_ref().and_then(|v| {
                self.word(
                    v,
                    "protocol",
                    &[
                        ("http1", UpstreamProtocol::Http1),
                        ("http2", UpstreamProtocol::Http2),
                    ],
                )
            });
            let default_tls = match discovery {
                Discovery::Mesh => UpstreamTls::Mesh,
                Discovery::Static => UpstreamTls::None,
            };
            let tls = r
                .tls
                .as_ref()
                .and_then(|v| {
                    self.word(
                        v,
                        "tls",
                        &[
                            ("none", UpstreamTls::None),
                            ("tls", UpstreamTls::Tls),
                            ("mesh", UpstreamTls::Mesh),
                        ],
                    )
                })
                .unwrap_or(default_tls);
            // Sidecars speak HTTP/2 to each other: one multiplexed mTLS
            // connection per peer instead of one handshake per request.
            let protocol = protocol.unwrap_or(if tls == UpstreamTls::Mesh {
                UpstreamProtocol::Http2
            } else {
                UpstreamProtocol::Http1
            });
            if (tls == UpstreamTls::Mesh || discovery == Discovery::Mesh) && !is_dns_label(&name) {
                self.hint(
                    r.name.span(),
                    format!("mesh service name \"{name}\" is not a DNS label"),
                    "in the mesh the name is part of the workload's identity and certificate \
                     (`<name>.service.<trust domain>`): use lower-case letters, digits and `-`, \
                     at most 63, not starting or ending with `-`",
                );
            }
            let d = Duration::from_secs;
            let connect_timeout = self.opt_duration(
                r.connect_timeout.as_ref(),
                "connect_timeout",
                d(1),
                Duration::from_millis(1),
                d(60),
            );
            let idle_timeout = self.opt_duration(
                r.idle_timeout.as_ref(),
                "idle_timeout",
                d(60),
                crate::POOL_IDLE_TIMEOUT_MIN,
                crate::POOL_IDLE_TIMEOUT_MAX,
            );
            let max_idle_per_endpoint = self.opt_u32(
                r.max_idle_per_endpoint.as_ref(),
                "max_idle_per_endpoint",
                0,
                100_000,
                128,
            );
            let limits = self.limits(r.circuit_breaker.as_ref());
            let outlier = self.outlier(r.outlier_detection.as_ref());
            let retry_budget = self.retry_budget(r.retry_budget.as_ref());
            let calls = self.calls(r.calls.as_ref());
            out.push(ServiceSpec {
                name,
                discovery,
                endpoints,
                subsets,
                split,
                lb,
                ewma: EwmaConfig::default(),
                hash_on,
                protocol,
                tls,
                connect_timeout,
                idle_timeout,
                max_idle_per_endpoint,
                preserve_header_case: r.preserve_header_case.unwrap_or(false),
                limits,
                outlier,
                retry_budget,
                calls,
                callers: IdentityPolicy::default(),
            });
        }
        out
    }

    /// `[service.calls]`: checked like a route's timeout and retry.
    fn calls(&mut self, raw: Option<&RawCalls>) -> CallsSpec {
        let mut spec = CallsSpec::default();
        let Some(raw) = raw else { return spec };
        if let Some(t) = raw.timeout.as_ref().and_then(|t| {
            self.duration(
                t,
                "timeout",
                Duration::from_millis(1),
                Duration::from_secs(86_400),
            )
        }) {
            spec.timeout = t;
        }
        if let Some(rx) = raw.retry.as_ref() {
            spec.retry = self.retry(rx).map(Arc::new);
        }
        spec
    }

    fn split(
        &mut self,
        sp: &Spanned<RawSplit>,
        service: &str,
        subsets: &[SubsetSpec],
    ) -> Option<SplitSpec> {
        let r = sp.get_ref();
        let known: Vec<String> = subsets.iter().map(|s| s.name.clone()).collect();
        let mut targets = Vec::new();
        let mut total: i64 = 0;
        for t in r.targets.get_ref() {
            let tr = t.get_ref();
            if subsets.is_empty() {
                self.hint(
                    tr.subset.span(),
                    format!(
                        "split target \"{}\" names a subset, but service \"{service}\" has none",
                        tr.subset.get_ref()
                    ),
                    "define it with [[service.subset]] name = \"...\" labels = { version = \"v2\" }",
                );
            } else {
                self.reference(&tr.subset, "subset", &known);
            }
            if targets
                .iter()
                .any(|x: &SplitTarget| &x.name == tr.subset.get_ref())
            {
                self.err(
                    tr.subset.span(),
                    format!(
                        "subset \"{}\" appears twice in the split",
                        tr.subset.get_ref()
                    ),
                );
            }
            if let Some(w) = self.int(&tr.weight, "weight", 0, 100) {
                total += w;
                targets.push(SplitTarget {
                    name: tr.subset.get_ref().clone(),
                    weight: u32::try_from(w).unwrap_or(0),
                });
            }
        }
        if r.targets.get_ref().is_empty() {
            self.hint(
                r.targets.span(),
                "a split needs at least one target",
                "e.g. targets = [{ subset = \"v1\", weight = 95 }, { subset = \"v2\", weight = 5 }]",
            );
            return None;
        }
        if total != 100 && targets.len() == r.targets.get_ref().len() {
            self.hint(
                r.targets.span(),
                format!("split weights of service \"{service}\" add up to {total}, not 100"),
                "weights are percentages; make them sum to exactly 100",
            );
        }
        let sticky = r
            .sticky
            .as_ref()
            .and_then(|s| self.request_key(s, "sticky"));
        let override_header = r
            .override_header
            .as_ref()
            .and_then(|h| self.header_name(h, "override_header"));
        // Every target was checked against `subsets` above; an unresolved
        // one has already been reported, so the snapshot is never built.
        let target_subsets = targets
            .iter()
            .map(|t| subsets.iter().position(|s| s.name == t.name).unwrap_or(0))
            .collect();
        match Split::new(targets) {
            Ok(split) => Some(SplitSpec {
                split,
                target_subsets,
                sticky,
                override_header,
            }),
            Err(e) => {
                self.err(r.targets.span(), format!("invalid split: {e}"));
                None
            }
        }
    }

    fn limits(&mut self, raw: Option<&RawLimits>) -> Limits {
        let def = Limits::default();
        let Some(r) = raw else { return def };
        Limits {
            max_connections: self.opt_u32(
                r.max_connections.as_ref(),
                "max_connections",
                1,
                10_000_000,
                def.max_connections,
            ),
            max_pending_requests: self.opt_u32(
                r.max_pending_requests.as_ref(),
                "max_pending_requests",
                1,
                10_000_000,
                def.max_pending_requests,
            ),
            max_requests: self.opt_u32(
                r.max_requests.as_ref(),
                "max_requests",
                1,
                10_000_000,
                def.max_requests,
            ),
            max_retries: self.opt_u32(
                r.max_retries.as_ref(),
                "max_retries",
                0,
                10_000_000,
                def.max_retries,
            ),
        }
    }

    fn outlier(&mut self, raw: Option<&Spanned<RawOutlier>>) -> OutlierConfig {
        let def = OutlierConfig::default();
        let Some(o) = raw else { return def };
        let r = o.get_ref();
        let d = Duration::from_secs;
        let consecutive_failures = self.opt_u32(
            r.consecutive_failures.as_ref(),
            "consecutive_failures",
            0,
            1_000,
            def.consecutive_failures,
        );
        let failure_rate = r.failure_rate_percent.as_ref().and_then(|p| {
            let percent = self.int(p, "failure_rate_percent", 1, 100)?;
            Some(FailureRate {
                threshold_percent: u8::try_from(percent).unwrap_or(100),
                min_requests: self.opt_u32(
                    r.min_requests.as_ref(),
                    "min_requests",
                    1,
                    1_000_000,
                    20,
                ),
                window: self.opt_duration(
                    r.window.as_ref(),
                    "window",
                    d(10),
                    Duration::from_millis(100),
                    d(3_600),
                ),
            })
        });
        if r.failure_rate_percent.is_none() && (r.min_requests.is_some() || r.window.is_some()) {
            self.hint(
                o.span(),
                "`min_requests` and `window` only apply with `failure_rate_percent`",
                "set `failure_rate_percent`, or remove them",
            );
        }
        let base_ejection = self.opt_duration(
            r.base_ejection.as_ref(),
            "base_ejection",
            def.base_ejection,
            Duration::from_millis(10),
            d(86_400),
        );
        let max_ejection = self.opt_duration(
            r.max_ejection.as_ref(),
            "max_ejection",
            def.max_ejection.max(base_ejection),
            Duration::from_millis(10),
            d(86_400),
        );
        if max_ejection < base_ejection {
            self.hint(
                r.max_ejection.as_ref().map_or(o.span(), |v| v.span()),
                "`max_ejection` is shorter than `base_ejection`",
                "the ejection time grows from base_ejection up to max_ejection",
            );
        }
        let max_ejected_percent = self.opt_int(
            r.max_ejected_percent.as_ref(),
            "max_ejected_percent",
            0,
            100,
            i64::from(def.max_ejected_percent),
        );
        OutlierConfig {
            consecutive_failures,
            failure_rate,
            base_ejection,
            max_ejection,
            max_ejected_percent: u8::try_from(max_ejected_percent).unwrap_or(50),
        }
    }

    fn retry_budget(&mut self, raw: Option<&Spanned<RawRetryBudget>>) -> RetryBudgetConfig {
        let def = RetryBudgetConfig::default();
        let Some(b) = raw else { return def };
        let r = b.get_ref();
        let ratio = self.opt_int(r.ratio_percent.as_ref(), "ratio_percent", 0, 100, 20);
        RetryBudgetConfig {
            ratio: ratio as f64 / 100.0,
            min_per_second: self.opt_u32(
                r.min_retries_per_second.as_ref(),
                "min_retries_per_second",
                0,
                1_000_000,
                def.min_per_second,
            ),
            ttl: self.opt_duration(
                r.ttl.as_ref(),
                "ttl",
                def.ttl,
                Duration::from_secs(1),
                Duration::from_secs(60),
            ),
        }
    }

    // ---- mesh ----------------------------------------------------------

    fn authorization(&mut self, mesh: Option<&Spanned<RawMesh>>, services: &mut [ServiceSpec]) {
        let Some(m) = mesh else { return };
        let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        let mut seen = HashSet::new();
        for a in &m.get_ref().authorization {
            let r = a.get_ref();
            if !self.reference(&r.service, "service", &names) {
                continue;
            }
            if !seen.insert(r.service.get_ref().clone()) {
                self.hint(
                    r.service.span(),
                    format!(
                        "service \"{}\" has two authorization rules",
                        r.service.get_ref()
                    ),
                    "list every allowed identity in one rule",
                );
            }
            let mut allow = Vec::new();
            for id in &r.allow {
                match IdentityMatch::parse(id.get_ref()) {
                    Some(m) => allow.push(m),
                    None => self.hint(
                        id.span(),
                        format!("invalid identity \"{}\"", id.get_ref()),
                        "write a SPIFFE ID like \"spiffe://meshgate.local/service/orders\", \
                         a prefix ending in \"/*\", or \"*\" for any mesh identity",
                    ),
                }
            }
            if let Some(s) = services.iter_mut().find(|s| &s.name == r.service.get_ref()) {
                s.callers = IdentityPolicy { allow: Some(allow) };
            }
        }
    }

    fn mesh(&mut self, raw: Option<&Spanned<RawMesh>>) -> MeshSpec {
        let mut spec = MeshSpec {
            trust_domain: "meshgate.local".to_owned(),
            workload_cert_ttl: Duration::from_secs(24 * 3600),
            mode: MeshMode::Strict,
            control_plane_address: SocketAddr::from(([127, 0, 0, 1], 15012)),
            ca: CaSource::Generated,
            state_dir: PathBuf::from("/var/lib/meshgate"),
            join_token: None,
        };
        let Some(m) = raw else { return spec };
        let r = m.get_ref();
        if let Some(td) = &r.trust_domain {
            let t = td.get_ref();
            let ok = !t.is_empty()
                && t.len() <= 255
                && t.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
                });
            if ok {
                spec.trust_domain = t.clone();
            } else {
                self.hint(
                    td.span(),
                    format!("invalid trust domain \"{t}\""),
                    "SPIFFE trust domains use lower-case letters, digits, `.`, `-` and `_`",
                );
            }
        }
        spec.workload_cert_ttl = self.opt_duration(
            r.workload_cert_ttl.as_ref(),
            "workload_cert_ttl",
            spec.workload_cert_ttl,
            Duration::from_secs(10),
            Duration::from_secs(30 * 86_400),
        );
        if let Some(mode) = &r.mode {
            spec.mode = self
                .word(
                    mode,
                    "mode",
                    &[
                        ("strict", MeshMode::Strict),
                        ("permissive", MeshMode::Permissive),
                    ],
                )
                .unwrap_or(MeshMode::Strict);
        }
        if let Some(a) = &r.control_plane_address
            && let Some(addr) = self.addr(a, "control_plane_address")
        {
            spec.control_plane_address = addr;
        }
        if let Some(d) = &r.state_dir {
            spec.state_dir = self.resolve(d);
        }
        match (&r.ca_cert_file, &r.ca_key_file) {
            (Some(c), Some(k)) => {
                let cert = self.cert_chain(c, "ca_cert_file");
                let key = self.private_key(k, "ca_key_file");
                if let (Some(cert), Some(key)) = (cert, key) {
                    spec.ca = CaSource::Files { cert, key };
                }
            }
            (None, None) => {}
            _ => self.hint(
                m.span(),
                "`ca_cert_file` and `ca_key_file` go together",
                "set both to use your own CA, or neither to have meshgate generate one",
            ),
        }
        if let Some(f) = &r.join_token_file
            && let Some(p) = self.readable(f, "join_token_file")
        {
            let token = std::fs::read_to_string(p).unwrap_or_default();
            spec.join_token = Some(Secret::new(token.trim().to_owned()));
        }
        spec
    }

    // ---- observability -------------------------------------------------

    fn observability(&mut self, raw: Option<&RawObservability>) -> ObservabilitySpec {
        let mut spec = ObservabilitySpec {
            log_level: "info".to_owned(),
            metrics_enabled: true,
            metrics_path: "/metrics".to_owned(),
            access_log_format: AccessLogFormat::Json,
            access_log_target: LogTarget::Stdout,
            access_log_sample_percent: 100,
            access_log_user_claim: None,
            access_log_off: BTreeSet::new(),
            tracing: Arc::new(TracingSpec::default()),
        };
        let Some(r) = raw else { return spec };
        if let Some(l) = &r.log_level {
            let ok = l.get_ref().split(',').all(|d| {
                let level = d.rsplit('=').next().unwrap_or("");
                matches!(
                    level.trim(),
                    "trace" | "debug" | "info" | "warn" | "error" | "off"
                )
            });
            if ok {
                spec.log_level = l.get_ref().clone();
            } else {
                self.hint(
                    l.span(),
                    format!("invalid log level \"{}\"", l.get_ref()),
                    "use trace, debug, info, warn, error or off, optionally per module: \
                     \"meshgate=debug,warn\"",
                );
            }
        }
        if let Some(m) = &r.metrics {
            spec.metrics_enabled = m.enabled.unwrap_or(true);
            if let Some(p) = &m.path {
                if p.get_ref().starts_with('/') {
                    spec.metrics_path = p.get_ref().clone();
                } else {
                    self.hint(
                        p.span(),
                        "`metrics.path` must start with `/`",
                        "e.g. \"/metrics\"",
                    );
                }
            }
        }
        if let Some(a) = &r.access_log {
            if let Some(f) = &a.format {
                spec.access_log_format = self
                    .word(
                        f,
                        "access_log.format",
                        &[
                            ("json", AccessLogFormat::Json),
                            ("combined", AccessLogFormat::Combined),
                            ("off", AccessLogFormat::Off),
                        ],
                    )
                    .unwrap_or(AccessLogFormat::Json);
            }
            if let Some(p) = &a.path {
                spec.access_log_target = match p.get_ref().as_str() {
                    "stdout" | "-" => LogTarget::Stdout,
                    "stderr" => LogTarget::Stderr,
                    _ => LogTarget::File(self.resolve(p)),
                };
            }
            spec.access_log_sample_percent = u8::try_from(self.opt_int(
                a.sample_percent.as_ref(),
                "access_log.sample_percent",
                0,
                100,
                100,
            ))
            .unwrap_or(100);
            if let Some(c) = &a.user_claim {
                let name = c.get_ref();
                if name.is_empty() || name.chars().any(|ch| ch.is_control() || ch == ' ') {
                    self.hint(
                        c.span(),
                        format!("`access_log.user_claim` {name:?} is not a claim name"),
                        "name the JWT claim to log as the user, e.g. \"sub\"; \
                         leave the key out to log no user",
                    );
                } else {
                    spec.access_log_user_claim = Some(name.clone());
                }
            }
        }
        if let Some(t) = &r.tracing {
            spec.tracing = Arc::new(self.tracing(t.get_ref()));
        }
        spec
    }

    fn tracing(&mut self, t: &RawTracing) -> TracingSpec {
        let mut spec = TracingSpec::default();
        if let Some(e) = &t.otlp_endpoint {
            spec.otlp_endpoint = self.otlp_endpoint(e);
        }
        if let Some(v) = &t.sampling_ratio {
            let ratio = match v.get_ref() {
                toml::Value::Float(f) => Some(*f),
                toml::Value::Integer(i) => Some(*i as f64),
                _ => None,
            };
            match ratio {
                Some(r) if (0.0..=1.0).contains(&r) => spec.sampling_ratio = r,
                Some(r) => self.hint(
                    v.span(),
                    format!("`sampling_ratio` = {r} is out of range"),
                    "use a number from 0.0 to 1.0, e.g. 0.1 to sample one new trace in ten",
                ),
                None => self.hint(
                    v.span(),
                    "`sampling_ratio` must be a number",
                    "use a number from 0.0 to 1.0, e.g. sampling_ratio = 0.1",
                ),
            }
        }
        if let Some(n) = &t.service_name {
            let name = n.get_ref().trim();
            if name.is_empty() || name.chars().any(char::is_control) {
                self.hint(
                    n.span(),
                    "`service_name` must be a non-empty name without control characters",
                    "leave it out to use \"meshgate\" (a sidecar: its service's name)",
                );
            } else {
                spec.service_name = Some(name.to_owned());
            }
        }
        let batch = self.opt_int(t.batch_size.as_ref(), "batch_size", 1, 65_536, 512);
        let queue = self.opt_int(
            t.queue_capacity.as_ref(),
            "queue_capacity",
            1,
            1_048_576,
            2048,
        );
        if batch > queue
            && let Some(b) = &t.batch_size
        {
            self.hint(
                b.span(),
                format!("`batch_size` = {batch} is larger than `queue_capacity` = {queue}"),
                "a batch is taken from the queue: lower batch_size or raise queue_capacity",
            );
        }
        spec.batch_size = usize::try_from(batch).unwrap_or(512);
        spec.queue_capacity = usize::try_from(queue).unwrap_or(2048);
        spec.flush_interval = self.opt_duration(
            t.flush_interval.as_ref(),
            "flush_interval",
            spec.flush_interval,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        );
        spec.export_timeout = self.opt_duration(
            t.export_timeout.as_ref(),
            "export_timeout",
            spec.export_timeout,
            Duration::from_millis(1),
            Duration::from_secs(300),
        );
        spec
    }

    /// An OTLP/HTTP collector URL; a URL without a path gets the
    /// standard `/v1/traces`, as OpenTelemetry SDKs do for a base URL.
    fn otlp_endpoint(&mut self, e: &S) -> Option<String> {
        let text = e.get_ref().trim();
        let uri = text.parse::<http::Uri>().ok();
        let ok = uri.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        });
        let Some(uri) = uri.filter(|_| ok) else {
            self.hint(
                e.span(),
                format!("`otlp_endpoint` = \"{text}\" is not an http:// or https:// URL"),
                "give the collector's OTLP/HTTP traces URL, e.g. \"http://127.0.0.1:4318/v1/traces\"",
            );
            return None;
        };
        if matches!(uri.path(), "" | "/") && uri.query().is_none() {
            let base = text.trim_end_matches('/');
            return Some(format!("{base}/v1/traces"));
        }
        Some(text.to_owned())
    }

    // ---- routes --------------------------------------------------------

    #[allow(clippy::type_complexity)]
    fn routes(
        &mut self,
        raw: &[Spanned<RawRoute>],
        listener_names: &[String],
        services: &HashMap<String, &ServiceSpec>,
        service_names: &[String],
        providers: &[JwtProviderSpec],
    ) -> (Vec<(Vec<String>, RouteEntry)>, Vec<RouteSummary>) {
        let mut seen = HashMap::new();
        let mut entries = Vec::new();
        let mut summaries = Vec::new();
        let provider_names: Vec<String> = providers.iter().map(|p| p.name.clone()).collect();
        for rt in raw {
            let r = rt.get_ref();
            self.name(&r.name, "route", &mut seen);
            let mut listeners = Vec::new();
            if r.listeners.as_ref().is_some_and(Vec::is_empty) {
                self.hint(
                    r.name.span(),
                    format!("route \"{}\" has `listeners = []`", r.name.get_ref()),
                    "omit `listeners` to serve the route on every listener, or name them",
                );
            }
            for l in r.listeners.iter().flatten() {
                if self.reference(l, "listener", listener_names) {
                    listeners.push(l.get_ref().clone());
                }
            }
            let (hosts, host_words, matcher) = self.route_match(r.matcher.as_ref());
            let action = self.action(rt, r, &matcher, services, service_names);
            let timeout = r.timeout.as_ref().and_then(|t| {
                self.duration(
                    t,
                    "timeout",
                    Duration::from_millis(1),
                    Duration::from_secs(86_400),
                )
            });
            let retry = r.retry.as_ref().and_then(|x| self.retry(x)).map(Arc::new);
            if let (Some(retry), Some(t), Some(total)) = (&retry, &r.timeout, timeout)
                && retry.per_try_timeout.is_some_and(|p| p > total)
            {
                self.hint(
                    t.span(),
                    "`retry.per_try_timeout` is longer than the route's `timeout`",
                    "the overall timeout bounds every try; make per_try_timeout shorter",
                );
            }
            let auth = r.auth.as_ref().and_then(|a| self.auth(a, &provider_names));
            let request_headers = r
                .request_headers
                .as_ref()
                .map(|h| self.header_rules(h, "request_headers"))
                .unwrap_or_default();
            let response_headers = r
                .response_headers
                .as_ref()
                .map(|h| self.header_rules(h, "response_headers"))
                .unwrap_or_default();
            let mirror = r.mirror.as_ref().and_then(|m| {
                let mr = m.get_ref();
                let ok = self.reference(&mr.service, "service", service_names);
                let percent = self.opt_int(mr.percent.as_ref(), "mirror.percent", 0, 100, 100);
                ok.then(|| Mirror {
                    service: mr.service.get_ref().clone(),
                    percent: u8::try_from(percent).unwrap_or(100),
                })
            });
            let Some(action) = action else { continue };
            let description = describe(
                &host_words,
                &matcher,
                &action,
                timeout,
                retry.as_deref(),
                auth.as_ref(),
            );
            summaries.push(RouteSummary {
                name: r.name.get_ref().clone(),
                hosts: host_words,
                listeners: listeners.clone(),
                description,
                access_log: r.access_log.unwrap_or(true),
            });
            entries.push((
                listeners,
                RouteEntry {
                    hosts,
                    route: Route {
                        name: r.name.get_ref().clone(),
                        matcher,
                        action,
                        timeout,
                        retry,
                        auth,
                        request_headers,
                        response_headers,
                        mirror,
                    },
                },
            ));
        }
        (entries, summaries)
    }

    fn route_match(
        &mut self,
        raw: Option<&Spanned<RawMatch>>,
    ) -> (Vec<HostPattern>, Vec<String>, RouteMatch) {
        let mut m = RouteMatch::default();
        let Some(rm) = raw else {
            return (Vec::new(), Vec::new(), m);
        };
        let r = rm.get_ref();
        let mut hosts = Vec::new();
        let mut words = Vec::new();
        for h in r.hosts.iter().flatten() {
            match HostPattern::parse(h.get_ref()) {
                Some(p) => {
                    hosts.push(p);
                    words.push(h.get_ref().trim().to_ascii_lowercase());
                }
                None => self.hint(
                    h.span(),
                    format!("invalid host \"{}\"", h.get_ref()),
                    "write a host name without a port, like \"shop.example.com\", or a wildcard \"*.example.com\"",
                ),
            }
        }
        let given: Vec<&S> = [&r.path, &r.path_prefix, &r.path_regex]
            .into_iter()
            .flatten()
            .collect();
        if given.len() > 1 {
            self.hint(
                given[1].span(),
                "a route matches the path one way only",
                "use one of `path`, `path_prefix` or `path_regex`",
            );
        }
        if let Some(p) = &r.path {
            self.path_syntax(p, "path");
            m.path = PathMatch::Exact(p.get_ref().clone());
        } else if let Some(p) = &r.path_prefix {
            self.path_syntax(p, "path_prefix");
            m.path = PathMatch::Prefix(p.get_ref().clone());
        } else if let Some(p) = &r.path_regex
            && let Some(re) = self.regex(p, "path_regex")
        {
            m.path = PathMatch::Regex(re);
        }
        for meth in r.methods.iter().flatten() {
            let text = meth.get_ref().trim();
            let is_token = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
            match Method::from_bytes(text.as_bytes()) {
                Ok(x) if is_token => m.methods.push(x),
                _ => self.hint(
                    meth.span(),
                    format!("invalid method \"{text}\""),
                    "methods are upper-case tokens: GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS",
                ),
            }
        }
        for h in &r.headers {
            if let Some(name) = self.header_name(&h.get_ref().name, "match.headers")
                && let Some(value) = self.value_match(h)
            {
                m.headers.push(HeaderMatch { name, value });
            }
        }
        for q in &r.query {
            if let Some(value) = self.value_match(q) {
                m.query.push(QueryMatch {
                    name: q.get_ref().name.get_ref().clone(),
                    value,
                });
            }
        }
        (hosts, words, m)
    }

    fn path_syntax(&mut self, p: &S, key: &str) {
        let t = p.get_ref();
        if !t.starts_with('/') || t.contains('?') || t.contains('#') {
            self.hint(
                p.span(),
                format!("`{key}` \"{t}\" is not a path"),
                "paths start with `/` and carry no query or fragment",
            );
        }
    }

    fn value_match(&mut self, v: &Spanned<RawValueMatch>) -> Option<ValueMatch> {
        let r = v.get_ref();
        let count = [r.exact.is_some(), r.regex.is_some(), r.present.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if count != 1 {
            self.hint(
                v.span(),
                format!(
                    "condition on \"{}\" needs exactly one test",
                    r.name.get_ref()
                ),
                "write one of `exact = \"...\"`, `regex = \"...\"` or `present = true|false`",
            );
            return None;
        }
        if let Some(e) = &r.exact {
            return Some(ValueMatch::Exact(e.get_ref().clone()));
        }
        if let Some(re) = &r.regex {
            return self.regex(re, "regex").map(ValueMatch::Regex);
        }
        match r.present.as_ref().map(|p| *p.get_ref()) {
            Some(true) => Some(ValueMatch::Present),
            _ => Some(ValueMatch::Absent),
        }
    }

    fn action(
        &mut self,
        rt: &Spanned<RawRoute>,
        r: &RawRoute,
        matcher: &RouteMatch,
        _services: &HashMap<String, &ServiceSpec>,
        service_names: &[String],
    ) -> Option<Action> {
        let count = [
            r.service.is_some(),
            r.redirect.is_some(),
            r.respond.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if count != 1 {
            self.hint(
                r.name.span(),
                format!(
                    "route \"{}\" needs exactly one action, found {count}",
                    r.name.get_ref()
                ),
                "set one of `service = \"...\"`, a `redirect` table or a `respond` table",
            );
            return None;
        }
        let _ = rt;
        if r.rewrite.is_some() && r.service.is_none() {
            self.hint(
                r.rewrite.as_ref().map_or(r.name.span(), |x| x.span()),
                "`rewrite` only applies to routes that forward to a service",
                "for redirects set `path`/`path_prefix` inside the redirect table",
            );
        }
        if let Some(s) = &r.service {
            if !self.reference(s, "service", service_names) {
                return None;
            }
            let rewrite = r
                .rewrite
                .as_ref()
                .map(|rw| self.rewrite(rw, matcher))
                .unwrap_or_default();
            return Some(Action::Forward {
                service: s.get_ref().clone(),
                rewrite,
            });
        }
        if let Some(rd) = &r.redirect {
            let x = rd.get_ref();
            let status = x.status.as_ref().map_or(302, |v| *v.get_ref());
            if ![301, 302, 303, 307, 308].contains(&status) {
                self.hint(
                    x.status.as_ref().map_or(rd.span(), |s| s.span()),
                    format!("redirect status {status} is not a redirect"),
                    "use 301, 302, 303, 307 or 308",
                );
            }
            if let Some(sch) = &x.scheme {
                self.word(sch, "redirect.scheme", &[("http", ()), ("https", ())]);
            }
            let path =
                self.path_rewrite(x.path.as_ref(), x.path_prefix.as_ref(), rd.span(), matcher);
            return Some(Action::Redirect(Redirect {
                status: u16::try_from(status).unwrap_or(302),
                scheme: x.scheme.as_ref().map(|s| s.get_ref().clone()),
                host: x.host.as_ref().map(|s| s.get_ref().clone()),
                path,
                strip_query: x.strip_query.unwrap_or(false),
            }));
        }
        let resp = r.respond.as_ref()?;
        let x = resp.get_ref();
        if let Some(b) = &x.builtin {
            if x.status.is_some() || x.body.is_some() {
                self.hint(
                    b.span(),
                    "`builtin` responses set their own status and body",
                    "remove `status` and `body`, or drop `builtin`",
                );
            }
            self.word(b, "respond.builtin", &[("status-page", ())])?;
            return Some(Action::StatusPage);
        }
        let status = self.opt_int(x.status.as_ref(), "respond.status", 100, 599, 200);
        Some(Action::Respond {
            status: u16::try_from(status).unwrap_or(200),
            body: x.body.clone().unwrap_or_default(),
        })
    }

    fn path_rewrite(
        &mut self,
        path: Option<&S>,
        prefix: Option<&S>,
        span: Range<usize>,
        matcher: &RouteMatch,
    ) -> Option<PathRewrite> {
        match (path, prefix) {
            (Some(_), Some(_)) => {
                self.hint(
                    span,
                    "set `path` or `path_prefix`, not both",
                    "`path` replaces the whole path, `path_prefix` replaces the matched prefix",
                );
                None
            }
            (Some(p), None) => {
                self.path_syntax(p, "path");
                Some(PathRewrite::Full(p.get_ref().clone()))
            }
            (None, Some(p)) => {
                self.path_syntax(p, "path_prefix");
                if !matches!(matcher.path, PathMatch::Prefix(_)) {
                    self.hint(
                        p.span(),
                        "`path_prefix` rewrite needs the route to match `path_prefix`",
                        "add `path_prefix = \"/...\"` to [route.match], or rewrite the full `path`",
                    );
                }
                Some(PathRewrite::Prefix(p.get_ref().clone()))
            }
            (None, None) => None,
        }
    }

    fn rewrite(&mut self, rw: &Spanned<RawRewrite>, matcher: &RouteMatch) -> Rewrite {
        let r = rw.get_ref();
        let path = self.path_rewrite(r.path.as_ref(), r.path_prefix.as_ref(), rw.span(), matcher);
        let host = r.host.as_ref().and_then(|h| {
            if HeaderValue::from_str(h.get_ref()).is_ok() && !h.get_ref().contains('/') {
                Some(h.get_ref().clone())
            } else {
                self.hint(
                    h.span(),
                    "invalid `rewrite.host`",
                    "write a host, e.g. \"api.internal\"",
                );
                None
            }
        });
        Rewrite { path, host }
    }

    fn retry(&mut self, rx: &Spanned<RawRetry>) -> Option<RetryPolicy> {
        let r = rx.get_ref();
        let def = RetryPolicy::default();
        let max_retries = self.opt_u32(
            r.max_retries.as_ref(),
            "retry.max_retries",
            0,
            10,
            def.max_retries,
        );
        let on = match &r.on {
            None => def.on,
            Some(words) => {
                let mut on = RetryOn::none();
                for w in words {
                    if let Err(e) = on.parse_condition(w.get_ref()) {
                        self.hint(
                            w.span(),
                            format!("unknown retry condition \"{}\"", w.get_ref()),
                            e.to_string(),
                        );
                    }
                }
                on
            }
        };
        let ms = Duration::from_millis;
        let per_try_timeout = r.per_try_timeout.as_ref().and_then(|t| {
            self.duration(
                t,
                "retry.per_try_timeout",
                ms(1),
                Duration::from_secs(3_600),
            )
        });
        let base = self.opt_duration(
            r.backoff_base.as_ref(),
            "retry.backoff_base",
            def.backoff.base,
            ms(1),
            Duration::from_secs(60),
        );
        let max = self.opt_duration(
            r.backoff_max.as_ref(),
            "retry.backoff_max",
            def.backoff.max.max(base),
            ms(1),
            Duration::from_secs(300),
        );
        if max < base {
            self.hint(
                r.backoff_max.as_ref().map_or(rx.span(), |s| s.span()),
                "`backoff_max` is shorter than `backoff_base`",
                "backoff grows from backoff_base up to backoff_max",
            );
        }
        let max_retry_after = self.opt_duration(
            r.max_retry_after.as_ref(),
            "retry.max_retry_after",
            def.max_retry_after,
            Duration::ZERO,
            Duration::from_secs(3_600),
        );
        Some(RetryPolicy {
            max_retries,
            on,
            per_try_timeout,
            backoff: Backoff { base, max },
            retry_non_idempotent: r.retry_non_idempotent.unwrap_or(false),
            honor_retry_after: r.honor_retry_after.unwrap_or(true),
            max_retry_after,
        })
    }

    fn auth(&mut self, a: &Spanned<RawAuth>, providers: &[String]) -> Option<AuthRequirement> {
        let r = a.get_ref();
        let ok = self.reference(&r.provider, "jwt_provider", providers);
        let mut rules = Vec::new();
        for rule in &r.require {
            let x = rule.get_ref();
            let mut checks = Vec::new();
            if let Some(e) = &x.equals {
                checks.push(ClaimCheck::OneOf(vec![e.get_ref().clone()]));
            }
            if let Some(list) = &x.one_of {
                checks.push(ClaimCheck::OneOf(
                    list.iter().map(|s| s.get_ref().clone()).collect(),
                ));
            }
            if let Some(c) = &x.contains {
                checks.push(ClaimCheck::Contains(c.get_ref().clone()));
            }
            if x.present == Some(true) {
                checks.push(ClaimCheck::Present);
            }
            if checks.len() != 1 {
                self.hint(
                    rule.span(),
                    format!(
                        "claim rule on \"{}\" needs exactly one test",
                        x.claim.get_ref()
                    ),
                    "write one of `equals = \"...\"`, `one_of = [...]`, `contains = \"...\"` \
                     or `present = true`",
                );
                continue;
            }
            rules.push(ClaimRule {
                claim: x.claim.get_ref().clone(),
                check: checks.remove(0),
            });
        }
        ok.then(|| AuthRequirement {
            provider: r.provider.get_ref().clone(),
            rules,
        })
    }

    fn header_rules(&mut self, raw: &RawHeaderRules, key: &str) -> HeaderRules {
        let mut out = HeaderRules::default();
        for n in &raw.remove {
            if let Some(h) = self.header_name(n, key) {
                out.remove.push(h);
            }
        }
        for (map, target) in [(&raw.set, 0u8), (&raw.add, 1)] {
            for (name, value) in map {
                let h = match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => Some(h),
                    Err(_) => {
                        self.hint(
                            value.span(),
                            format!("invalid header name \"{name}\" in `{key}`"),
                            "header names are tokens: letters, digits and `-`",
                        );
                        None
                    }
                };
                let v = self.header_value(value, key);
                if let (Some(h), Some(v)) = (h, v) {
                    if target == 0 {
                        out.set.push((h, v));
                    } else {
                        out.add.push((h, v));
                    }
                }
            }
        }
        out
    }
}

fn describe(
    hosts: &[String],
    m: &RouteMatch,
    action: &Action,
    timeout: Option<Duration>,
    retry: Option<&RetryPolicy>,
    auth: Option<&AuthRequirement>,
) -> String {
    let mut parts = Vec::new();
    if !hosts.is_empty() {
        parts.push(format!("hosts {}", hosts.join(",")));
    }
    match &m.path {
        PathMatch::Any => {}
        PathMatch::Exact(p) => parts.push(format!("path {p}")),
        PathMatch::Prefix(p) => parts.push(format!("prefix {p}")),
        PathMatch::Regex(r) => parts.push(format!("regex {}", r.as_str())),
    }
    if !m.methods.is_empty() {
        let ms: Vec<&str> = m.methods.iter().map(Method::as_str).collect();
        parts.push(format!("methods {}", ms.join(",")));
    }
    if !m.headers.is_empty() {
        parts.push(format!("{} header condition(s)", m.headers.len()));
    }
    if !m.query.is_empty() {
        parts.push(format!("{} query condition(s)", m.query.len()));
    }
    let act = match action {
        Action::Forward { service, rewrite } => {
            let mut s = format!("-> service {service}");
            if rewrite.path.is_some() || rewrite.host.is_some() {
                s.push_str(" (rewritten)");
            }
            s
        }
        Action::Redirect(r) => format!("-> redirect {}", r.status),
        Action::StatusPage => "-> status page".to_owned(),
        Action::Respond { status, .. } => format!("-> respond {status}"),
    };
    parts.push(act);
    if let Some(t) = timeout {
        parts.push(format!("timeout {}", humantime::format_duration(t)));
    }
    if let Some(r) = retry {
        parts.push(format!("retries {}", r.max_retries));
    }
    if let Some(a) = auth {
        parts.push(format!("auth {}", a.provider));
    }
    parts.join(" ")
}

/// Subset names per service, for diffs.
pub(crate) fn split_weights(s: &ServiceSpec) -> BTreeMap<String, u32> {
    s.split
        .as_ref()
        .map(|sp| {
            sp.split
                .targets()
                .iter()
                .map(|t| (t.name.clone(), t.weight))
                .collect()
        })
        .unwrap_or_default()
}

/// Names of endpoints per service, for diffs.
pub(crate) fn endpoint_set(s: &ServiceSpec) -> BTreeSet<String> {
    s.endpoints.iter().map(|e| e.address.to_string()).collect()
}

/// A lower-case DNS label (RFC 1123): what a mesh service's name must be.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Folds the contents of every referenced file into the text's digest.
fn digest_with_files(text_digest: &str, files: &[PathBuf]) -> String {
    let mut h = meshgate_policy::random::stable_hash(text_digest.as_bytes());
    for f in files {
        let mut bytes = format!("{h:016x}{}", f.display()).into_bytes();
        bytes.extend(std::fs::read(f).unwrap_or_default());
        h = meshgate_policy::random::stable_hash(&bytes);
    }
    format!("{h:016x}")
}

/// True when an `http://` URL's host is a loopback name or address. The
/// host is parsed, not prefix-matched: `http://localhost.example.com` and
/// `http://127.evil.example` are not loopback.
fn url_host_is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::url_host_is_loopback;

    #[test]
    fn loopback_urls_are_parsed_not_prefix_matched() {
        assert!(url_host_is_loopback("http://127.0.0.1:8080/jwks.json"));
        assert!(url_host_is_loopback("http://localhost/jwks.json"));
        assert!(url_host_is_loopback("http://[::1]:9000/k"));
        assert!(!url_host_is_loopback(
            "http://localhost.attacker.example/jwks.json"
        ));
        assert!(!url_host_is_loopback(
            "http://127.attacker.example/jwks.json"
        ));
        assert!(!url_host_is_loopback("http://10.0.0.1/jwks.json"));
        assert!(!url_host_is_loopback("not a url"));
    }

    #[test]
    fn header_case_is_kept_only_when_asked_and_over_http1() {
        let text = "[[service]]\nname = \"plain\"\nendpoints = [{ address = \"127.0.0.1:1\" }]\n\n\
                    [[service]]\nname = \"kept\"\nendpoints = [{ address = \"127.0.0.1:2\" }]\n\
                    preserve_header_case = true\n\n\
                    [[service]]\nname = \"kept-h2\"\nendpoints = [{ address = \"127.0.0.1:3\" }]\n\
                    preserve_header_case = true\nprotocol = \"http2\"\n";
        let snap = crate::load_str(text, "t.toml", std::path::Path::new("/")).expect("valid");
        let keeps: Vec<(&str, bool)> = snap
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.keeps_header_case()))
            .collect();
        assert_eq!(
            keeps,
            [("plain", false), ("kept", true), ("kept-h2", false)]
        );
    }

    fn tracing(table: &str) -> Result<crate::TracingSpec, String> {
        let text = format!("[observability.tracing]\n{table}\n");
        crate::load_str(&text, "t.toml", std::path::Path::new("/"))
            .map(|s| (*s.observability.tracing).clone())
            .map_err(|d| d.to_string())
    }

    #[test]
    fn tracing_defaults_propagate_without_exporting() {
        let none = crate::load_str("", "t.toml", std::path::Path::new("/")).expect("empty config");
        let t = &none.observability.tracing;
        assert_eq!(t.otlp_endpoint, None);
        assert_eq!(t.sampling_ratio, 1.0);
        assert_eq!(t.service_name, None);
        assert_eq!((t.batch_size, t.queue_capacity), (512, 2048));
        assert_eq!(t.flush_interval, std::time::Duration::from_secs(5));
        assert_eq!(t.export_timeout, std::time::Duration::from_secs(10));
        assert_eq!(
            tracing("").expect("empty table"),
            crate::TracingSpec::default()
        );
    }

    #[test]
    fn tracing_keys_are_read_and_checked() {
        let t = tracing(
            "otlp_endpoint = \"https://collector.example:4318/v1/traces\"\n\
             sampling_ratio = 0.25\nservice_name = \"edge-eu\"\nbatch_size = 100\n\
             queue_capacity = 1000\nflush_interval = \"200ms\"\nexport_timeout = \"3s\"",
        )
        .expect("valid");
        assert_eq!(
            t.otlp_endpoint.as_deref(),
            Some("https://collector.example:4318/v1/traces")
        );
        assert_eq!(t.sampling_ratio, 0.25);
        assert_eq!(t.service_name.as_deref(), Some("edge-eu"));
        assert_eq!((t.batch_size, t.queue_capacity), (100, 1000));
        assert_eq!(t.flush_interval, std::time::Duration::from_millis(200));
        assert_eq!(t.export_timeout, std::time::Duration::from_secs(3));
        // Whole numbers are ratios too; a base URL gets the traces path.
        let t = tracing("sampling_ratio = 0\notlp_endpoint = \"http://127.0.0.1:4318\"")
            .expect("valid");
        assert_eq!(t.sampling_ratio, 0.0);
        assert_eq!(
            t.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let t = tracing("otlp_endpoint = \"http://otel:4318/\"").expect("valid");
        assert_eq!(
            t.otlp_endpoint.as_deref(),
            Some("http://otel:4318/v1/traces")
        );

        for (table, want) in [
            (
                "sampling_ratio = 1.5",
                "`sampling_ratio` = 1.5 is out of range",
            ),
            (
                "sampling_ratio = -1",
                "`sampling_ratio` = -1 is out of range",
            ),
            (
                "sampling_ratio = \"10%\"",
                "`sampling_ratio` must be a number",
            ),
            (
                "sampling_ratio = nan",
                "`sampling_ratio` = NaN is out of range",
            ),
            (
                "otlp_endpoint = \"grpc://otel:4317\"",
                "is not an http:// or https:// URL",
            ),
            (
                "otlp_endpoint = \"otel:4318\"",
                "is not an http:// or https:// URL",
            ),
            ("otlp_endpoint = \"\"", "is not an http:// or https:// URL"),
            (
                "service_name = \" \"",
                "`service_name` must be a non-empty name",
            ),
            ("batch_size = 0", "`batch_size` = 0 is out of range"),
            (
                "queue_capacity = 10\nbatch_size = 20",
                "is larger than `queue_capacity` = 10",
            ),
            (
                "flush_interval = \"soon\"",
                "invalid duration for `flush_interval`",
            ),
            (
                "export_timeout = \"1h\"",
                "`export_timeout` = \"1h\" is too long",
            ),
            ("endpoint = \"http://x\"", "unknown"),
        ] {
            let err = tracing(table).expect_err(table);
            assert!(err.contains(want), "{table}: want {want:?} in\n{err}");
            assert!(err.contains("hint:"), "{table}: no hint in\n{err}");
        }
    }
}
