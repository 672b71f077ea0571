//! The pingora adapter: one `ProxyHttp` per listener. Each request takes
//! the current config snapshot once, asks the policy crate for a route, a
//! split subset and an endpoint, and carries those decisions through
//! pingora's phases. Every failure the proxy itself produces has its own
//! status and `x-meshgate-reason`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use meshgate_config::{ConfigStore, RequestKey, ServiceSpec, Snapshot};
use meshgate_policy::lb::EndpointLoad;
use meshgate_policy::random::stable_hash;
use meshgate_policy::route::{Action, RequestView, Route};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::runtime::{Runtimes, below};
use crate::status_page;

/// Header naming the reason of a proxy-generated response.
pub(crate) const REASON_HEADER: &str = "x-meshgate-reason";

/// The proxy logic bound to one listener.
#[derive(Debug)]
pub(crate) struct Edge {
    pub(crate) listener: String,
    pub(crate) scheme: &'static str,
    pub(crate) store: Arc<ConfigStore>,
    pub(crate) runtimes: Arc<Runtimes>,
}

/// A response the proxy writes itself.
struct Local {
    status: u16,
    reason: Option<&'static str>,
    content_type: &'static str,
    body: Bytes,
    extra: Vec<(&'static str, String)>,
}

/// Per-request state.
#[derive(Debug)]
pub(crate) struct RequestCtx {
    start: Instant,
    snap: Option<Arc<Snapshot>>,
    listener: usize,
    route: Option<usize>,
    service: Option<Arc<ServiceSpec>>,
    upstream: Option<SocketAddr>,
    load: Option<Arc<EndpointLoad>>,
    sent_at: Option<Instant>,
    subset: Option<String>,
    reason: Option<&'static str>,
    status: u16,
}

impl RequestCtx {
    fn route<'s>(&'s self, snap: &'s Snapshot) -> Option<&'s Route> {
        let l = snap.listeners.get(self.listener)?;
        l.routes.routes().get(self.route?)
    }
}

impl Edge {
    async fn local_response(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        local: Local,
    ) -> Result<bool> {
        let Local {
            status,
            reason,
            content_type,
            body,
            extra,
        } = local;
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        if let Some(r) = reason {
            resp.insert_header(REASON_HEADER, r)?;
        }
        for (k, v) in extra {
            resp.insert_header(k, v)?;
        }
        ctx.status = status;
        ctx.reason = reason;
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    async fn proxy_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        reason: &'static str,
    ) -> Result<bool> {
        let body = Bytes::from(format!("{status} {reason}\n"));
        self.local_response(
            session,
            ctx,
            Local {
                status,
                reason: Some(reason),
                content_type: "text/plain; charset=utf-8",
                body,
                extra: Vec::new(),
            },
        )
        .await
    }
}

fn request_key(key: &RequestKey, req: &RequestHeader, client: Option<String>) -> Option<Vec<u8>> {
    match key {
        RequestKey::Header(h) => req.headers.get(h).map(|v| v.as_bytes().to_vec()),
        RequestKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.as_bytes().to_vec())
            }),
        RequestKey::SourceIp => client.map(String::into_bytes),
        // Claims arrive with JWT authentication; until a route authenticates
        // there is no verified claim to be sticky on.
        RequestKey::Claim(_) => None,
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            snap: None,
            listener: 0,
            route: None,
            service: None,
            upstream: None,
            load: None,
            sent_at: None,
            subset: None,
            reason: None,
            status: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = self.store.current();
        ctx.snap = Some(snap.clone());
        let Some(li) = snap.listeners.iter().position(|l| l.name == self.listener) else {
            // The listener was removed by a reload; its socket stays until
            // restart, so answer clearly rather than route by stale rules.
            return self.proxy_error(session, ctx, 404, "no-route").await;
        };
        ctx.listener = li;
        let listener = &snap.listeners[li];
        let req = session.req_header();
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let view = RequestView {
            host,
            path: req.uri.path(),
            query: req.uri.query(),
            method: &req.method,
            headers: &req.headers,
        };
        let Some(ri) = listener.routes.find_index(&view) else {
            return self.proxy_error(session, ctx, 404, "no-route").await;
        };
        ctx.route = Some(ri);
        let route = &listener.routes.routes()[ri];
        match &route.action {
            Action::StatusPage => {
                let body = Bytes::from(status_page::render(&snap));
                self.local_response(
                    session,
                    ctx,
                    Local {
                        status: 200,
                        reason: None,
                        content_type: "text/html; charset=utf-8",
                        body,
                        extra: Vec::new(),
                    },
                )
                .await
            }
            Action::Respond { status, body } => {
                let body = Bytes::from(body.clone());
                self.local_response(
                    session,
                    ctx,
                    Local {
                        status: *status,
                        reason: None,
                        content_type: "text/plain; charset=utf-8",
                        body,
                        extra: Vec::new(),
                    },
                )
                .await
            }
            Action::Redirect(r) => {
                let location = r.location(&view, self.scheme, &route.matcher.path);
                let body = Bytes::from(format!("redirecting to {location}\n"));
                self.local_response(
                    session,
                    ctx,
                    Local {
                        status: r.status,
                        reason: None,
                        content_type: "text/plain; charset=utf-8",
                        body,
                        extra: vec![("location", location)],
                    },
                )
                .await
            }
            Action::Forward { service, .. } => {
                let Some(svc) = snap.service(service).cloned() else {
                    return self
                        .proxy_error(session, ctx, 503, "no-healthy-endpoint")
                        .await;
                };
                let client = session.client_addr().map(|a| match a.as_inet() {
                    Some(i) => i.ip().to_string(),
                    None => a.to_string(),
                });
                let req = session.req_header();
                let subset = svc.split.as_ref().and_then(|sp| {
                    let sticky = sp
                        .sticky
                        .as_ref()
                        .and_then(|k| request_key(k, req, client.clone()));
                    let forced = sp
                        .override_header
                        .as_ref()
                        .and_then(|h| req.headers.get(h))
                        .and_then(|v| v.to_str().ok());
                    let target = crate::runtime::with_rng(|rng| {
                        sp.split
                            .pick_target(sticky.as_deref(), forced, rng)
                            .name
                            .clone()
                    });
                    svc.subsets.iter().find(|s| s.name == target).cloned()
                });
                let hash = svc
                    .hash_on
                    .as_ref()
                    .and_then(|k| request_key(k, req, client.clone()))
                    .map(|b| stable_hash(&b));
                let state = self.runtimes.service(&snap, &svc);
                let picked = state
                    .pick(subset.as_ref(), hash, Instant::now())
                    .map(|e| (e.spec.address, e.load.clone()));
                ctx.subset = subset.map(|s| s.name);
                ctx.service = Some(svc);
                match picked {
                    Some((addr, load)) => {
                        ctx.upstream = Some(addr);
                        ctx.load = Some(load);
                        Ok(false)
                    }
                    None => {
                        self.proxy_error(session, ctx, 503, "no-healthy-endpoint")
                            .await
                    }
                }
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(addr), Some(svc)) = (ctx.upstream, ctx.service.as_ref()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream chosen",
            ));
        };
        let mut peer = crate::upstream::peer(addr, svc);
        peer.options.connection_timeout = Some(svc.connect_timeout);
        peer.options.idle_timeout = Some(svc.idle_timeout);
        if let Some(t) = ctx
            .snap
            .as_ref()
            .and_then(|s| ctx.route(s))
            .and_then(|r| r.timeout)
        {
            peer.options.read_timeout = Some(t);
            peer.options.write_timeout = Some(t);
        }
        if let Some(load) = &ctx.load {
            if ctx.sent_at.is_none() {
                load.begin();
            }
        }
        ctx.sent_at = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(snap) = ctx.snap.clone() else {
            return Ok(());
        };
        let Some(route) = ctx.route(&snap) else {
            return Ok(());
        };
        if let Action::Forward { rewrite, .. } = &route.action {
            if let Some(new_path) = rewrite.rewrite_path(&route.matcher.path, upstream.uri.path()) {
                let pq = match upstream.uri.query() {
                    Some(q) => format!("{new_path}?{q}"),
                    None => new_path,
                };
                // Keep the scheme and authority: an HTTP/2 request carries
                // its authority only in the URI, and pingora needs it for
                // the upstream `:authority` when it speaks HTTP/2 upstream.
                let invalid = || {
                    Error::explain(
                        ErrorType::InternalError,
                        "rewritten path is not a valid URI",
                    )
                };
                let mut parts = upstream.uri.clone().into_parts();
                parts.path_and_query = Some(pq.parse().map_err(|_| invalid())?);
                let uri = http::Uri::from_parts(parts).map_err(|_| invalid())?;
                upstream.set_uri(uri);
            }
            if let Some(h) = &rewrite.host {
                upstream.insert_header(http::header::HOST, h.as_str())?;
            }
        }
        if !route.request_headers.is_empty() {
            let mut headers = upstream.headers.clone();
            route.request_headers.apply(&mut headers);
            for name in &route.request_headers.remove {
                upstream.remove_header(name);
            }
            for (name, _) in route
                .request_headers
                .set
                .iter()
                .chain(&route.request_headers.add)
            {
                upstream.remove_header(name);
                for v in headers.get_all(name) {
                    upstream.append_header(name.clone(), v.clone())?;
                }
            }
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|i| i.ip().to_string())
        {
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip,
            };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header("x-forwarded-proto", self.scheme)?;
        if upstream.headers.get("x-request-id").is_none() {
            let id = format!("{:016x}{:016x}", below(u64::MAX), below(u64::MAX));
            upstream.insert_header("x-request-id", id)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.status = resp.status.as_u16();
        let Some(snap) = ctx.snap.clone() else {
            return Ok(());
        };
        if let Some(route) = ctx.route(&snap) {
            let rules = &route.response_headers;
            for name in &rules.remove {
                resp.remove_header(name);
            }
            for (name, value) in &rules.set {
                resp.insert_header(name.clone(), value.clone())?;
            }
            for (name, value) in &rules.add {
                resp.append_header(name.clone(), value.clone())?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, reason) = classify(e);
        ctx.reason = Some(reason);
        ctx.status = code;
        if code > 0 {
            let mut resp = match ResponseHeader::build(code, Some(3)) {
                Ok(r) => r,
                Err(_) => {
                    return FailToProxy {
                        error_code: code,
                        can_reuse_downstream: false,
                    };
                }
            };
            let body = Bytes::from(format!("{code} {reason}\n"));
            let _ = resp.insert_header("content-type", "text/plain; charset=utf-8");
            let _ = resp.insert_header("content-length", body.len().to_string());
            let _ = resp.insert_header(REASON_HEADER, HeaderValue::from_static(reason));
            if session
                .write_response_header(Box::new(resp), false)
                .await
                .is_ok()
            {
                let _ = session.write_response_body(Some(body), true).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let now = Instant::now();
        if let (Some(load), Some(sent)) = (&ctx.load, ctx.sent_at) {
            let ok = e.is_none() && ctx.status < 500;
            let ewma = ctx.service.as_ref().map(|s| s.ewma).unwrap_or_default();
            load.end(ok.then(|| now.duration_since(sent)), now, &ewma);
        }
        let Some(snap) = ctx.snap.as_ref() else {
            return;
        };
        if snap.observability.access_log_format == meshgate_config::AccessLogFormat::Off {
            return;
        }
        let status = session
            .response_written()
            .map_or(ctx.status, |r| r.status.as_u16());
        let req = session.req_header();
        let proto = if session.is_http2() { "http2" } else { "http1" };
        let route = ctx.route(snap).map(|r| r.name.as_str());
        let line = serde_json::json!({
            "ts": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            "listener": self.listener,
            "proto": proto,
            "method": req.method.as_str(),
            "authority": req.uri.authority().map(|a| a.as_str())
                .or_else(|| req.headers.get("host").and_then(|h| h.to_str().ok())),
            "path": req.uri.path(),
            "status": status,
            "route": route,
            "service": ctx.service.as_ref().map(|s| s.name.as_str()),
            "subset": ctx.subset,
            "upstream": ctx.upstream.map(|a| a.to_string()),
            "reason": ctx.reason,
            "duration_ms": duration_ms(now.duration_since(ctx.start)),
            "error": e.map(|e| e.to_string()),
        });
        crate::server::access_log(&line.to_string());
    }
}

fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The status and reason for an error pingora hands us.
fn classify(e: &Error) -> (u16, &'static str) {
    use pingora::ErrorType as T;
    match e.etype() {
        T::ConnectTimedout => (504, "upstream-connect-timeout"),
        T::ConnectRefused | T::ConnectNoRoute | T::ConnectError | T::SocketError | T::BindError => {
            (502, "upstream-connect-failure")
        }
        T::ReadTimedout | T::WriteTimedout => (504, "upstream-timeout"),
        T::ConnectionClosed | T::ReadError | T::WriteError
            if e.esource() == &pingora::ErrorSource::Upstream =>
        {
            (502, "upstream-reset")
        }
        T::ConnectionClosed | T::ReadError | T::WriteError => (0, "downstream-closed"),
        T::HTTPStatus(code) if *code >= 400 => (*code, "bad-request"),
        T::InvalidHTTPHeader | T::H1Error | T::H2Error
            if e.esource() == &pingora::ErrorSource::Downstream =>
        {
            (400, "bad-request")
        }
        _ if e.esource() == &pingora::ErrorSource::Upstream => (502, "upstream-protocol-error"),
        _ => (500, "internal-error"),
    }
}
