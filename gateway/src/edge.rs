//! The pingora adapter: one `ProxyHttp` per listener. Each request takes
//! the current config snapshot once, asks the policy crate for a route, a
//! split subset and an endpoint, and carries those decisions through
//! pingora's phases. Every failure the proxy itself produces has its own
//! status and `x-meshgate-reason`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use meshgate_config::{ConfigStore, ServiceSpec, Snapshot, UpstreamProtocol, UpstreamTls};
use meshgate_policy::deadline::Deadline;
use meshgate_policy::random::stable_hash;
use meshgate_policy::retry::{Outcome, RetryPolicy, is_idempotent};
use meshgate_policy::route::{Action, RequestView, Route};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::framing::{self, HeadLimits};
use crate::resilience::{Flight, LimitExceeded, response_outcome, retryable_response};
use crate::runtime::{NoEndpoint, Runtimes, below};
use crate::status_page;

/// Requests between `new_ctx` and the end of `logging`, for draining.
pub(crate) static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Header naming the reason of a proxy-generated response.
pub(crate) const REASON_HEADER: &str = "x-meshgate-reason";

/// How much of an HTTP/2 request body declared over the limit is read
/// (and dropped) before the 413, so that small uploads end cleanly.
const H2_DRAIN_BYTES: u64 = 64 * 1024;

/// The proxy logic bound to one listener.
#[derive(Debug)]
pub(crate) struct Edge {
    pub(crate) listener: String,
    pub(crate) scheme: &'static str,
    pub(crate) store: Arc<ConfigStore>,
    pub(crate) runtimes: Arc<Runtimes>,
    /// HTTP/1 request-head limits, fixed at start like the listener socket.
    pub(crate) head_limits: HeadLimits,
    /// Largest request body accepted; `None` = unlimited.
    pub(crate) max_body: Option<u64>,
    /// Idle keep-alive lifetime of a client connection, whole seconds.
    pub(crate) idle_secs: u64,
    pub(crate) authn: Arc<crate::authn::Authn>,
    /// This process's mesh identity, for `tls = "mesh"` services.
    pub(crate) mesh: Arc<crate::mesh::MeshTls>,
    /// `Alt-Svc` advertising this listener's HTTP/3 side on TCP responses.
    pub(crate) alt_svc: Option<HeaderValue>,
    /// This listener's `meshgate_requests_in_flight` gauge.
    pub(crate) in_flight: Option<prometheus::IntGauge>,
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
    _in_flight: crate::metrics::InFlight,
    snap: Option<Arc<Snapshot>>,
    listener: usize,
    route: Option<usize>,
    service: Option<Arc<ServiceSpec>>,
    upstream: Option<SocketAddr>,
    flight: Flight,
    /// Index of the split's subset in the service's `subsets`; retries
    /// pick within it again.
    subset: Option<usize>,
    /// Consistent-hash key of the request, reused by retries.
    hash: Option<u64>,
    reason: Option<&'static str>,
    status: u16,
    /// Verified JWT claims, on routes with `auth`.
    claims: Option<Arc<serde_json::Value>>,
    /// The copy of this request for the route's mirror, if it is mirrored
    /// (boxed: the context lives in every request's future, most of which
    /// are not mirrored).
    mirror: Option<Box<crate::mirror::Copy>>,
    /// When the current try was sent and answered, for the access log.
    upstream_times: crate::access_log::UpstreamTimes,
    /// The request's trace and this hop's spans, from `request_filter` on.
    pub(crate) trace: Option<crate::trace::Hop>,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RequestCtx {
    fn route<'s>(&'s self, snap: &'s Snapshot) -> Option<&'s Route> {
        let l = snap.listeners.get(self.listener)?;
        l.routes.routes().get(self.route?)
    }

    /// The name of the subset the split chose, if any.
    fn subset_name(&self) -> Option<&str> {
        let svc = self.service.as_deref()?;
        svc.subsets.get(self.subset?).map(|s| s.name.as_str())
    }

    /// The matched route's retry policy.
    fn retry_policy(&self) -> Option<Arc<RetryPolicy>> {
        let snap = self.snap.as_ref()?;
        self.route(snap)?.retry.clone()
    }
}

/// pingora keeps a case-preserving copy of header names beside the
/// `HeaderMap`, so route header rules are applied through its own methods
/// (remove, then set, then add, as `HeaderRules::apply` orders them).
trait HeaderEdits {
    fn remove(&mut self, name: &http::HeaderName);
    fn set(&mut self, name: &http::HeaderName, value: &HeaderValue) -> Result<()>;
    fn add(&mut self, name: &http::HeaderName, value: &HeaderValue) -> Result<()>;
}

macro_rules! header_edits {
    ($t:ty) => {
        impl HeaderEdits for $t {
            fn remove(&mut self, name: &http::HeaderName) {
                self.remove_header(name);
            }
            fn set(&mut self, name: &http::HeaderName, value: &HeaderValue) -> Result<()> {
                self.insert_header(name.clone(), value.clone())
            }
            fn add(&mut self, name: &http::HeaderName, value: &HeaderValue) -> Result<()> {
                self.append_header(name.clone(), value.clone()).map(|_| ())
            }
        }
    };
}
header_edits!(RequestHeader);
header_edits!(ResponseHeader);

fn apply_header_rules(
    rules: &meshgate_policy::route::HeaderRules,
    target: &mut impl HeaderEdits,
) -> Result<()> {
    for name in &rules.remove {
        target.remove(name);
    }
    for (name, value) in &rules.set {
        target.set(name, value)?;
    }
    for (name, value) in &rules.add {
        target.add(name, value)?;
    }
    Ok(())
}

/// Lets a request go upstream without the case its HTTP/1.1 client gave
/// its header names. pingora keeps those beside the header map, in a
/// second map every insertion and removal also updates, and writes them
/// back on the wire; without it, names go out as the header map holds them
/// (lower case, a few common ones such as `Host` and `Content-Length`
/// capitalised), as from an HTTP/2 or HTTP/3 client, and as Envoy and
/// HAProxy send them by default. A request target the URI cannot carry
/// (absolute-form, not UTF-8), which pingora keeps beside it, is restored.
fn drop_header_case(req: &mut RequestHeader) -> Result<()> {
    if !req.has_case() {
        return Ok(());
    }
    let in_uri = req
        .uri
        .path_and_query()
        .map_or(&b""[..], |p| p.as_str().as_bytes());
    let raw = (req.raw_path() != in_uri).then(|| req.raw_path().to_vec());
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let parts = http::request::Parts::from(std::mem::replace(req, empty));
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw {
        req.set_raw_path(&raw)?;
    }
    Ok(())
}

/// The retry-policy view of a pingora error.
fn error_outcome(e: &Error) -> Outcome {
    use pingora::ErrorType as T;
    match e.etype() {
        T::ReadTimedout | T::WriteTimedout => Outcome::Timeout,
        // A connect that timed out (a host that drops SYNs, a TLS handshake
        // that never completes) sent nothing, like a refused one: a
        // connect failure, as in Envoy's `connect-failure`.
        T::ConnectTimedout
        | T::ConnectRefused
        | T::ConnectNoRoute
        | T::ConnectError
        | T::SocketError
        | T::BindError
        | T::TLSHandshakeFailure
        | T::TLSHandshakeTimedout => Outcome::ConnectFailure,
        _ => Outcome::Reset,
    }
}

impl Edge {
    /// Advertises HTTP/3 on a TCP response of a listener that has it.
    fn advertise_http3(&self, session: &Session, resp: &mut ResponseHeader) -> Result<()> {
        match &self.alt_svc {
            Some(v) if !session.downstream_session.is_custom() => {
                resp.insert_header(http::header::ALT_SVC, v.clone())
            }
            _ => Ok(()),
        }
    }

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
        self.advertise_http3(session, &mut resp)?;
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

    /// Ends this hop's spans; a request refused before `request_filter`
    /// (bad framing, body too large) gets its trace here.
    fn finish_trace(&self, session: &Session, ctx: &mut RequestCtx) {
        let Some(snap) = ctx.snap.clone() else {
            return;
        };
        let mut hop = ctx.trace.take().unwrap_or_else(|| {
            let tracing = &snap.observability.tracing;
            crate::trace::Hop::start(&session.req_header().headers, tracing, ctx.start)
        });
        let service = ctx.service.as_deref();
        let subset = ctx.subset_name();
        hop.finish(&crate::trace::Facts {
            session,
            scheme: self.scheme,
            listener: &self.listener,
            inbound: false,
            status: session
                .response_written()
                .map_or(ctx.status, |r| r.status.as_u16()),
            reason: ctx.reason,
            route: ctx.route(&snap).map(|r| r.name.as_str()),
            service: service.map(|s| s.name.as_str()),
            subset,
            peer_identity: None,
        });
        ctx.trace = Some(hop);
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

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        crate::framing::Http10Framing::install(modules);
    }

    fn new_ctx(&self) -> RequestCtx {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        RequestCtx {
            start: Instant::now(),
            _in_flight: crate::metrics::InFlight::start(self.in_flight.as_ref()),
            snap: None,
            listener: 0,
            route: None,
            service: None,
            upstream: None,
            flight: Flight::default(),
            subset: None,
            hash: None,
            reason: None,
            status: 0,
            claims: None,
            mirror: None,
            upstream_times: Default::default(),
            trace: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        crate::conn::reached_pipeline();
        framing::enforce(session, self.head_limits).inspect_err(|_| {
            // request_filter will not run; logging needs a snapshot.
            ctx.snap = Some(self.store.current());
        })?;
        // 0 would mean "forever" to pingora; a sub-second setting rounds up.
        // While draining, HTTP/1.1 connections close after this request.
        // pingora's setter keeps a connection open unless the client said
        // `close`; an HTTP/1.0 client that did not ask for keep-alive
        // (`get_keepalive` is then off) waits for the close to end its
        // response.
        if crate::server::DRAINING.load(Ordering::Relaxed) || session.get_keepalive().is_none() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.idle_secs.max(1)));
        }
        if let Some(max) = self.max_body {
            let declared = session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(n) = declared.filter(|n| *n > max) {
                ctx.snap = Some(self.store.current());
                ctx.reason = Some("body-too-large");
                session.set_keepalive(None);
                if session.is_http2() && n <= max.saturating_add(H2_DRAIN_BYTES) {
                    // Take in a small upload before answering: otherwise the
                    // stream reset that ends our early 413 races the
                    // client's DATA, and the client may report the reset
                    // instead of our answer. Bounded in bytes and time.
                    let drain =
                        async { while let Ok(Some(_)) = session.read_request_body().await {} };
                    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                }
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than max_request_body_bytes",
                ));
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(copy), Some(chunk)) = (&mut ctx.mirror, body.as_ref())
            && !session.was_upgraded()
        {
            copy.body(chunk, session.body_bytes_read());
        }
        // Bodies without a declared length (chunked, HTTP/2) are counted as
        // they stream: by what was read from the client, so that a retry,
        // which passes the buffered body through here again, is not counted
        // twice. A tunnel after an upgrade (WebSocket) carries messages, not
        // a request body, and is not limited, as in nginx.
        let (Some(max), Some(_)) = (self.max_body, body.as_ref()) else {
            return Ok(());
        };
        if session.body_bytes_read() as u64 > max && !session.was_upgraded() {
            ctx.reason = Some("body-too-large");
            session.set_keepalive(None);
            // The client's doing: `error_while_proxy` then neither retries
            // it nor holds it against the endpoint.
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body larger than max_request_body_bytes",
            )
            .into_down());
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = self.store.current();
        ctx.snap = Some(snap.clone());
        let tracing = &snap.observability.tracing;
        ctx.trace = Some(crate::trace::Hop::start(
            &session.req_header().headers,
            tracing,
            ctx.start,
        ));
        let Some(li) = snap.listeners.iter().position(|l| l.name == self.listener) else {
            // The listener was removed by a reload; its socket stays until
            // restart, so answer clearly rather than route by stale rules.
            return self.proxy_error(session, ctx, 404, "no-route").await;
        };
        ctx.listener = li;
        let listener = &snap.listeners[li];
        // Routes, their auth and the origin all see one spelling of the
        // path (`meshgate_policy::path`).
        if let Some(path) = meshgate_policy::path::normalize(session.req_header().uri.path()) {
            match with_path(&session.req_header().uri, &path) {
                Some(uri) => session.req_header_mut().set_uri(uri),
                None => return self.proxy_error(session, ctx, 400, "bad-request").await,
            }
        }
        let req = session.req_header();
        let host = authority(req).unwrap_or("");
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
        if let Some(auth) = &route.auth {
            match self.authn.check(&snap, auth, req).await {
                Ok(claims) => ctx.claims = Some(claims),
                Err(denied) => {
                    let body = Bytes::from(format!("{} {}\n", denied.status, denied.reason));
                    let local = Local {
                        status: denied.status,
                        reason: Some(denied.reason),
                        content_type: "text/plain; charset=utf-8",
                        body,
                        extra: vec![("www-authenticate", denied.challenge)],
                    };
                    return self.local_response(session, ctx, local).await;
                }
            }
        }
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
                if let (Some(auth), Some(claims)) = (&route.auth, &ctx.claims) {
                    crate::authn::prepare_request(session.req_header_mut(), &snap, auth, claims)?;
                }
                let Some(svc) = snap.service(service).cloned() else {
                    return self
                        .proxy_error(session, ctx, 503, "no-healthy-endpoint")
                        .await;
                };
                if let Some(m) = &route.mirror
                    && let Some(to) = snap.service(&m.service)
                {
                    ctx.mirror = crate::mirror::Copy::start(to.clone(), m.percent).map(Box::new);
                }
                let client = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|i| i.ip());
                let req = session.req_header();
                let claims = ctx.claims.as_deref();
                let subset = svc.split.as_ref().and_then(|sp| {
                    let sticky = sp
                        .sticky
                        .as_ref()
                        .and_then(|k| k.value(&req.headers, client, claims));
                    let forced = sp
                        .override_header
                        .as_ref()
                        .and_then(|h| req.headers.get(h))
                        .and_then(|v| v.to_str().ok());
                    let target = crate::runtime::with_rng(|rng| {
                        sp.split.pick(sticky.as_deref(), forced, rng)
                    });
                    sp.target_subsets.get(target).copied()
                });
                let hash = svc
                    .hash_on
                    .as_ref()
                    .and_then(|k| k.value(&req.headers, client, claims))
                    .map(|b| stable_hash(&b));
                if svc.tls == UpstreamTls::Mesh && self.mesh.material().is_none() {
                    // No workload certificate yet (the control plane has
                    // not answered): fail closed rather than send mesh
                    // traffic in plaintext.
                    return self
                        .proxy_error(session, ctx, 503, "mesh-identity-unavailable")
                        .await;
                }
                let now = Instant::now();
                let state = self.runtimes.service(&snap, &svc);
                ctx.flight.deadline = Deadline::new(ctx.start, route.timeout);
                ctx.flight.state = Some(state.clone());
                ctx.subset = subset;
                ctx.hash = hash;
                ctx.service = Some(svc.clone());
                if let Err(LimitExceeded(kind)) = ctx
                    .flight
                    .admit(&svc, svc.protocol == UpstreamProtocol::Http1)
                {
                    ctx.flight.give_up = Some(kind.as_str());
                    return self.proxy_error(session, ctx, 503, "circuit-open").await;
                }
                match state.pick(subset, hash, None, now) {
                    Ok(picked) => {
                        // Only requests that go to the service earn retries:
                        // counting the ones refused here would let an
                        // overloaded service's few admitted requests retry
                        // on the refused ones' allowance.
                        state.budget.deposit(now);
                        ctx.flight.next = Some(picked);
                        Ok(false)
                    }
                    Err(NoEndpoint::Empty | NoEndpoint::AllEjected) => {
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
        let Some(svc) = ctx.service.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream chosen",
            ));
        };
        if let Some(wait) = ctx.flight.backoff.take() {
            tokio::time::sleep(wait).await;
        }
        let now = Instant::now();
        if ctx.flight.deadline.expired(now) {
            ctx.reason = Some("upstream-timeout");
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "route timeout expired before the next try",
            ));
        }
        if ctx.flight.next.is_none() {
            // A retry: pick again, away from the endpoint that just failed
            // when another is available.
            let state = ctx.flight.state.clone();
            match state.map(|s| s.pick(ctx.subset, ctx.hash, ctx.flight.last_failed, now)) {
                Some(Ok(picked)) => ctx.flight.next = Some(picked),
                _ => {
                    ctx.reason = Some("no-healthy-endpoint");
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(503),
                        "no healthy endpoint left to retry on",
                    ));
                }
            }
        }
        let Some(addr) = ctx.flight.begin(now) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream chosen",
            ));
        };
        ctx.upstream = Some(addr);
        if let Some(t) = &mut ctx.trace {
            t.begin_try(addr);
        }
        let per_try = ctx.retry_policy().and_then(|p| p.per_try_timeout);
        let try_timeout = ctx.flight.deadline.try_timeout(now, per_try);
        let Some(mut peer) = crate::upstream::peer(addr, &svc, &self.mesh) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no mesh identity to reach a mesh service with",
            ));
        };
        let connect_timeout = match try_timeout {
            Some(t) => t.min(svc.connect_timeout),
            None => svc.connect_timeout,
        };
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.idle_timeout = Some(svc.idle_timeout);
        peer.options.read_timeout = try_timeout;
        peer.options.write_timeout = try_timeout;
        if svc.protocol == UpstreamProtocol::Http2 {
            ctx.flight.wait_connect_turn(connect_timeout).await;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.flight.end_connect_turn();
        let Some(svc) = ctx.service.clone() else {
            return e;
        };
        if let Some(t) = &mut ctx.trace {
            t.end_try(Some(classify(&e).1));
        }
        let now = Instant::now();
        ctx.flight.finish(&svc, true, now);
        let policy = ctx.retry_policy();
        let idempotent = is_idempotent(&session.req_header().method);
        // Nothing was sent: the body is still replayable.
        let retry = ctx.flight.decide(
            policy.as_deref(),
            &svc,
            &error_outcome(&e),
            idempotent,
            true,
            now,
        );
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {peer}"));
        if let Some(t) = &mut ctx.trace {
            // A retryable response ends its try by its status alone.
            t.end_try((!ctx.flight.response_retry).then(|| classify(&e).1));
        }
        if std::mem::take(&mut ctx.flight.response_retry) {
            // upstream_response_filter already decided to retry.
            e.set_retry(true);
            return e;
        }
        let Some(svc) = ctx.service.clone() else {
            e.set_retry(false);
            return e;
        };
        let now = Instant::now();
        if e.esource() == &pingora::ErrorSource::Downstream {
            // The client left (or broke its side): no one to answer, so
            // nothing to send again, and nothing the endpoint did. Counted
            // as a failure, clients that give up on a slow answer would
            // eject a healthy endpoint.
            ctx.flight.abandon(&svc, now);
            e.set_retry(false);
            return e;
        }
        let replayable = !session.as_ref().retry_buffer_truncated();
        let idempotent = is_idempotent(&session.req_header().method);
        let nothing_sent = session.response_written().is_none();
        // A pooled keep-alive connection the upstream had already closed
        // is not the endpoint's fault: one free retry, as every proxy does.
        if client_reused
            && replayable
            && idempotent
            && nothing_sent
            && !ctx.flight.stale_retry_used
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
        {
            ctx.flight.stale_retry_used = true;
            if let Some(t) = ctx.flight.abandon(&svc, now) {
                ctx.flight.next = Some((t.endpoint, t.probe));
            }
            e.set_retry(true);
            return e;
        }
        ctx.flight.finish(&svc, true, now);
        let retry = nothing_sent
            && ctx.flight.decide(
                ctx.retry_policy().as_deref(),
                &svc,
                &error_outcome(&e),
                idempotent,
                replayable,
                now,
            );
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(svc) = ctx.service.clone() else {
            return Ok(());
        };
        // Informational responses (100 Continue, 101 for upgrades are
        // final) are not an outcome.
        let status = resp.status.as_u16();
        if (100..200).contains(&status) && status != 101 {
            return Ok(());
        }
        if let Some(t) = &mut ctx.trace {
            t.try_status(status);
        }
        let now = Instant::now();
        ctx.upstream_times.header = Some(now);
        let outcome = response_outcome(resp);
        let policy = ctx.retry_policy();
        let failure = status >= 500;
        ctx.flight.finish(&svc, failure, now);
        if retryable_response(policy.as_deref(), &outcome) {
            let replayable = !session.as_ref().retry_buffer_truncated();
            let idempotent = is_idempotent(&session.req_header().method);
            if ctx.flight.decide(
                policy.as_deref(),
                &svc,
                &outcome,
                idempotent,
                replayable,
                now,
            ) {
                // Try elsewhere, also after a status that is no failure of
                // the endpoint's (a listed 429 or 409).
                ctx.flight.last_failed = ctx.upstream;
                ctx.flight.response_retry = true;
                let mut e =
                    Error::explain(ErrorType::HTTPStatus(status), "retryable upstream response");
                e.set_retry(true);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_times.sending(Instant::now());
        // Before any header is added: each insertion would otherwise also
        // go into the map of the names' case.
        if !ctx
            .service
            .as_deref()
            .is_some_and(ServiceSpec::keeps_header_case)
        {
            drop_header_case(upstream)?;
        }
        // pingora strips hop-by-hop headers from a custom (HTTP/3)
        // downstream, `te` included; `te: trailers` is end to end in
        // HTTP/2 and HTTP/3 and gRPC servers require it.
        if session.downstream_session.is_custom()
            && session
                .req_header()
                .headers
                .get(http::header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            upstream.insert_header(http::header::TE, "trailers")?;
        }
        // First, so that a route's header rules can still override it.
        if let Some(t) = &ctx.trace {
            t.inject(upstream)?;
        }
        let Some(snap) = ctx.snap.clone() else {
            return Ok(());
        };
        let Some(route) = ctx.route(&snap) else {
            return Ok(());
        };
        if let Action::Forward { rewrite, .. } = &route.action {
            if let Some(new_path) = rewrite.rewrite_path(&route.matcher.path, upstream.uri.path()) {
                let uri = with_path(&upstream.uri, &new_path).ok_or_else(|| {
                    Error::explain(
                        ErrorType::InternalError,
                        "rewritten path is not a valid URI",
                    )
                })?;
                upstream.set_uri(uri);
            }
            if let Some(h) = &rewrite.host {
                upstream.insert_header(http::header::HOST, h.as_str())?;
            }
        }
        // After pingora's hop-by-hop stripping, which a client steers with
        // `Connection`; before the route's header rules, which may override.
        if let (Some(auth), Some(claims)) = (&route.auth, &ctx.claims) {
            crate::authn::forward_claims(upstream, &snap, auth, claims)?;
        }
        apply_header_rules(&route.request_headers, upstream)?;
        // HTTP/1.0 allows a request without a Host; HTTP/1.1 upstream
        // requires one. Name the endpoint, as nginx does by default.
        if let Some(addr) = ctx.upstream.filter(|_| {
            upstream.uri.authority().is_none() && !upstream.headers.contains_key(http::header::HOST)
        }) {
            upstream.insert_header(http::header::HOST, addr.to_string())?;
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()) {
            let prev = upstream.headers.get_all(X_FORWARDED_FOR);
            let xff = forwarded_for(&prev, ip.ip());
            upstream.insert_header(X_FORWARDED_FOR, xff)?;
        }
        upstream.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme))?;
        if !upstream.headers.contains_key(X_REQUEST_ID) {
            upstream.insert_header(X_REQUEST_ID, crate::trace::unindexed(request_id())?)?;
        }
        // The mirror gets the request as it goes upstream.
        if let Some(copy) = &mut ctx.mirror {
            copy.head(upstream);
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.flight.end_connect_turn();
        if let Some(svc) = &ctx.service {
            crate::metrics::upstream_connection(false, &svc.name, reused);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            ctx.upstream_times.end = Some(Instant::now());
        } else if ctx.flight.deadline.is_bounded()
            && !session.was_upgraded()
            && ctx.flight.deadline.expired(Instant::now())
        {
            // The route's timeout covers the whole response, not only its
            // head: a body still streaming when it runs out is cut off (the
            // try's read timeout, the time left when it began, catches a
            // body that stops instead). A tunnel after an upgrade is not a
            // response body.
            ctx.reason = Some("upstream-timeout");
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "route timeout expired while the response streamed",
            )
            .into_up());
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.status = resp.status.as_u16();
        framing::close_unframed_for_http10(session, resp);
        self.advertise_http3(session, resp)?;
        let Some(snap) = ctx.snap.clone() else {
            return Ok(());
        };
        if let Some(route) = ctx.route(&snap) {
            apply_header_rules(&route.response_headers, resp)?;
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        // A client that went away (an HTTP/2 one also by cancelling its
        // stream) is not an error of ours; the access log records it
        // (reason `downstream-closed`).
        e.esource() == &pingora::ErrorSource::Downstream && classify(e).1 == "downstream-closed"
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, classified) = classify(e);
        // A reason set while deciding (no endpoint left, deadline) is more
        // precise than the error type.
        let reason = ctx.reason.unwrap_or(classified);
        ctx.reason = Some(reason);
        ctx.status = code;
        // The connection is never reused after this (see below); say so.
        session.set_keepalive(None);
        // Once a response has begun, an error cannot be answered: anything
        // written now would end a truncated body as if it were whole. The
        // connection is closed (HTTP/1.1) or the stream reset (HTTP/2,
        // HTTP/3), which the client sees as an incomplete response.
        if code > 0 && session.response_written().is_none() {
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
            let head = session.req_header().method == http::Method::HEAD;
            if session
                .write_response_header(Box::new(resp), head)
                .await
                .is_ok()
                && !head
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
        if let Some(svc) = ctx.service.clone() {
            // A try still open here ended without a response header
            // (downstream went away, or an error we did not see).
            let failed = e.is_some_and(|e| e.esource() == &pingora::ErrorSource::Upstream);
            ctx.flight.finish(&svc, failed, now);
        }
        self.finish_trace(session, ctx);
        let Some(snap) = ctx.snap.as_ref() else {
            return;
        };
        if let Some(copy) = ctx.mirror.take() {
            let complete = session.as_mut().is_body_done() && !session.was_upgraded();
            copy.send(complete, snap, &self.runtimes, &self.mesh);
        }
        let status = session
            .response_written()
            .map_or(ctx.status, |r| r.status.as_u16());
        let route = ctx.route(snap).map(|r| r.name.as_str());
        tracing::debug!(
            listener = %self.listener,
            route = route.unwrap_or(""),
            status,
            reason = ctx.reason.unwrap_or(""),
            "request finished"
        );
        let service = ctx.service.as_ref().map_or("", |s| s.name.as_str());
        crate::metrics::finished(&crate::metrics::Finished {
            listener: &self.listener,
            route: route.unwrap_or(""),
            service,
            subset: ctx.subset_name().unwrap_or(""),
            status,
            reason: ctx.reason.unwrap_or(""),
            protocol: crate::metrics::protocol_of(session),
            inbound: false,
            source_identity: "",
            elapsed: now.duration_since(ctx.start),
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
        });
        if ctx.flight.retries_done > 0
            && let Some(m) = crate::metrics::metrics()
        {
            m.retries
                .with_label_values(&[service])
                .inc_by(u64::from(ctx.flight.retries_done));
        }
        let outcome = crate::access_log::Outcome {
            route,
            status,
            reason: ctx.reason,
            failed: e.is_some(),
        };
        if !crate::access_log::sampled(snap, &outcome) {
            return;
        }
        let svc = ctx.service.as_deref();
        // The upstream's identity was verified as its service's SPIFFE ID.
        let peer_identity = svc
            .filter(|s| s.tls == UpstreamTls::Mesh)
            .and_then(|s| {
                meshgate_identity::SpiffeId::service(&snap.mesh.trust_domain, &s.name).ok()
            })
            .map(|id| id.to_string());
        let (upstream_header, upstream) = ctx.upstream_times.durations(now);
        let trace_id = ctx.trace.as_ref().map(|t| t.trace_id().to_string());
        crate::access_log::record(
            snap,
            &crate::access_log::Entry {
                status,
                reason: ctx.reason,
                route,
                service: svc.map(|s| s.name.as_str()),
                subset: ctx.subset_name(),
                endpoint: ctx.upstream,
                duration: now.duration_since(ctx.start),
                upstream_header,
                upstream,
                trace_id: trace_id.as_deref(),
                user: crate::access_log::user(snap, ctx.claims.as_deref()),
                peer_identity: peer_identity.as_deref(),
                retries: ctx.flight.retries_done,
                retry_stop: ctx.flight.give_up,
                error: e.map(|e| e.to_string()),
                ..crate::access_log::Entry::of_session(session, &self.listener)
            },
        );
    }
}

/// The request's authority: the URI's (HTTP/2, HTTP/3, absolute form),
/// else the `Host` header.
pub(crate) fn authority(req: &RequestHeader) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Whether an HTTP/2 error on the client's side is the client going away
/// (its connection broke, or it cancelled the stream, as a browser does
/// when the user moves on) rather than a protocol violation.
fn client_left(e: &Error) -> bool {
    e.root_cause().downcast_ref::<h2::Error>().is_some_and(|h| {
        h.is_io()
            || h.reason() == Some(h2::Reason::CANCEL)
            || h.reason() == Some(h2::Reason::NO_ERROR)
    })
}

/// The status and reason for an error pingora hands us.
fn classify(e: &Error) -> (u16, &'static str) {
    use pingora::ErrorType as T;
    match e.etype() {
        T::ConnectTimedout => (504, "upstream-connect-timeout"),
        T::TLSHandshakeFailure | T::TLSHandshakeTimedout | T::InvalidCert | T::HandshakeError => {
            (502, "upstream-tls-failure")
        }
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
        T::HTTPStatus(code) if e.esource() == &pingora::ErrorSource::Upstream => {
            (*code, "upstream-status")
        }
        T::HTTPStatus(431) => (431, "header-too-large"),
        T::HTTPStatus(413) => (413, "body-too-large"),
        T::HTTPStatus(code) if *code >= 400 => (*code, "bad-request"),
        T::H2Error if e.esource() == &pingora::ErrorSource::Downstream && client_left(e) => {
            (0, "downstream-closed")
        }
        T::InvalidHTTPHeader | T::H1Error | T::H2Error
            if e.esource() == &pingora::ErrorSource::Downstream =>
        {
            (400, "bad-request")
        }
        // A malformed chunked request body; pingora names these only as
        // custom error types (its constants are crate-private).
        T::Custom("InvalidChunk" | "InvalidTrailerEnd")
            if e.esource() == &pingora::ErrorSource::Downstream =>
        {
            (400, "bad-request")
        }
        _ if e.esource() == &pingora::ErrorSource::Upstream => (502, "upstream-protocol-error"),
        _ => (500, "internal-error"),
    }
}

/// `uri` with its path replaced and its query kept. The scheme and
/// authority stay: an HTTP/2 request carries its authority only in the URI,
/// and pingora needs it for the upstream `:authority` when it speaks
/// HTTP/2 upstream.
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_REQUEST_ID: &str = "x-request-id";

/// `x-forwarded-for` with `ip` appended to what the client sent: every
/// field line of it, in order and byte for byte (RFC 9110 5.3: several
/// lines are one comma-separated list; a proxy in front may have added its
/// own line after the client's). Built in one allocation: this runs on
/// every proxied request.
fn forwarded_for(prev: &http::header::GetAll<'_, HeaderValue>, ip: std::net::IpAddr) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(prev.iter().map(|p| p.len() + 2).sum::<usize>() + 39);
    for p in prev {
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b", ");
    }
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(&mut out, octet);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out
}

fn push_decimal(out: &mut Vec<u8>, n: u8) {
    if n >= 100 {
        out.push(b'0' + n / 100);
    }
    if n >= 10 {
        out.push(b'0' + n / 10 % 10);
    }
    out.push(b'0' + n % 10);
}

/// A fresh `x-request-id`: 128 random bits in hex.
fn request_id() -> String {
    let mut id = String::with_capacity(32);
    crate::trace::push_hex(&mut id, &below(u64::MAX).to_be_bytes());
    crate::trace::push_hex(&mut id, &below(u64::MAX).to_be_bytes());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_client() {
        let v4 = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let xff = |prev: &[&str], ip: &str| {
            let mut h = http::HeaderMap::new();
            for p in prev {
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(p).expect("value"));
            }
            String::from_utf8(forwarded_for(&h.get_all(X_FORWARDED_FOR), v4(ip))).expect("ascii")
        };
        assert_eq!(xff(&[], "127.0.0.1"), "127.0.0.1");
        assert_eq!(xff(&[], "10.200.0.255"), "10.200.0.255");
        assert_eq!(xff(&[], "0.9.99.100"), "0.9.99.100");
        assert_eq!(
            xff(&["203.0.113.7"], "192.168.1.20"),
            "203.0.113.7, 192.168.1.20"
        );
        // Every field line, in order: a proxy in front adds its own line
        // after the client's.
        assert_eq!(
            xff(&["6.6.6.6", "203.0.113.7, 10.0.0.2"], "192.168.1.20"),
            "6.6.6.6, 203.0.113.7, 10.0.0.2, 192.168.1.20"
        );
        assert_eq!(xff(&[], "2001:db8::1"), "2001:db8::1");
        // Every IPv4 address prints as the standard library prints it.
        for n in [
            0u32,
            1,
            9,
            10,
            99,
            100,
            255,
            0x0a0b0c0d,
            0xffff_ffff,
            0x6401_0aff,
        ] {
            let ip = std::net::IpAddr::V4(n.into());
            assert_eq!(
                forwarded_for(&http::HeaderMap::new().get_all(X_FORWARDED_FOR), ip),
                ip.to_string().into_bytes()
            );
        }
    }

    #[test]
    fn request_ids_are_128_bit_hex() {
        let a = request_id();
        let b = request_id();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
