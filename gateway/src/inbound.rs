//! A sidecar's inbound side: mTLS from mesh peers in, plain HTTP to the
//! local application out: HTTP/1.1, or HTTP/2 with prior knowledge for
//! gRPC calls (`--app-protocol`).
//!
//! The TLS layer (see `sidecar`) already required a client certificate
//! that chains to the mesh trust bundle; this proxy reads the caller's
//! SPIFFE ID from it and applies the service's authorization rules before
//! anything reaches the application. A service with `[[mesh.authorization]]`
//! rules takes only the identities they list (deny by default); a service
//! without rules takes any mesh identity. The application learns who
//! called in `x-meshgate-peer-identity` (a client-sent copy is removed
//! first, so the header can be trusted).
//!
//! In permissive mesh mode the port also takes plaintext callers. They
//! have no identity: a service without rules takes them, one with rules
//! answers 403 `no-peer-identity`. A plaintext connection still open when
//! the mesh turns strict gets 403 `mtls-required` and is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use meshgate_config::{ConfigStore, MeshMode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::edge::{IN_FLIGHT, REASON_HEADER};

/// The header the application reads the caller's identity from.
pub(crate) const PEER_IDENTITY_HEADER: &str = "x-meshgate-peer-identity";

/// What the sidecar speaks to its local application (`--app-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AppProtocol {
    /// HTTP/2 with prior knowledge for gRPC calls (gRPC needs HTTP/2),
    /// HTTP/1.1 for everything else.
    Auto,
    /// HTTP/1.1 for every request.
    Http1,
    /// HTTP/2 with prior knowledge for every request.
    H2c,
}

impl AppProtocol {
    fn http2_for(self, req: &RequestHeader) -> bool {
        match self {
            AppProtocol::Auto => crate::metrics::is_grpc(req),
            AppProtocol::Http1 => false,
            AppProtocol::H2c => true,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inbound {
    /// The service this sidecar fronts (its authorization rules apply).
    pub(crate) service: String,
    /// The local application.
    pub(crate) app: SocketAddr,
    /// What is spoken to it.
    pub(crate) app_protocol: AppProtocol,
    /// Turns at getting an HTTP/2 connection to it.
    pub(crate) app_h2_turns: crate::upstream::ConnectTurns,
    pub(crate) store: Arc<ConfigStore>,
    pub(crate) connect_timeout: Duration,
    /// How long a connection to the application waits in the pool for its
    /// next request before it is closed.
    pub(crate) app_idle_timeout: Duration,
    /// The checks every HTTP/1 request head passes, as on the gateway's
    /// listeners (`framing`).
    pub(crate) head_limits: crate::framing::HeadLimits,
    /// The `inbound` listener's `meshgate_requests_in_flight` gauge.
    pub(crate) in_flight: Option<prometheus::IntGauge>,
}

#[derive(Debug)]
pub(crate) struct InboundCtx {
    start: Instant,
    _in_flight: crate::metrics::InFlight,
    peer: Option<String>,
    /// Whether the caller came over TLS (mTLS); plaintext only in
    /// permissive mesh mode.
    tls: bool,
    reason: Option<&'static str>,
    /// When the request went to the application and it answered.
    upstream_times: crate::access_log::UpstreamTimes,
    /// The turn at getting an HTTP/2 connection to the application.
    connect_turn: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The request's trace and this hop's spans, from `request_filter` on.
    pub(crate) trace: Option<crate::trace::Hop>,
}

impl Drop for InboundCtx {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inbound {
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut InboundCtx,
        status: u16,
        reason: &'static str,
    ) -> Result<bool> {
        ctx.reason = Some(reason);
        let body = Bytes::from(format!("{status} {reason}\n"));
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header(REASON_HEADER, reason)?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }
}

fn peer_identity(session: &Session) -> Option<String> {
    let digest = session.digest()?;
    let cert = crate::tls::client_cert(digest.ssl_digest.as_ref()?)?;
    cert.spiffe_id().map(str::to_owned)
}

#[async_trait]
impl ProxyHttp for Inbound {
    type CTX = InboundCtx;

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        crate::framing::Http10Framing::install(modules);
    }

    fn new_ctx(&self) -> InboundCtx {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InboundCtx {
            start: Instant::now(),
            _in_flight: crate::metrics::InFlight::start(self.in_flight.as_ref()),
            peer: None,
            tls: false,
            reason: None,
            upstream_times: Default::default(),
            connect_turn: None,
            trace: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut InboundCtx,
    ) -> Result<()> {
        crate::conn::reached_pipeline();
        // A plaintext caller (permissive mode) or a mesh peer's HTTP/1.1
        // head gets the same framing checks as at the edge: the
        // application behind may parse what pingora would let through
        // differently.
        crate::framing::enforce(session, self.head_limits)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut InboundCtx) -> Result<bool> {
        if crate::server::DRAINING.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        ctx.trace = Some(crate::trace::Hop::start(
            &session.req_header().headers,
            &self.store.current().observability.tracing,
            ctx.start,
        ));
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.peer = peer_identity(session);
        let snap = self.store.current();
        let service = snap.service(&self.service);
        let Some(peer) = ctx.peer.as_deref() else {
            if ctx.tls {
                // The handshake demanded a certificate from the mesh CA, so
                // this is a mesh certificate without exactly one SPIFFE ID.
                return self.refuse(session, ctx, 403, "no-peer-identity").await;
            }
            // Plaintext, taken while the mesh was permissive.
            if snap.mesh.mode != MeshMode::Permissive {
                // Strict since the connection opened: no more plaintext.
                session.set_keepalive(None);
                return self.refuse(session, ctx, 403, "mtls-required").await;
            }
            // A caller without an identity passes only where no rule asks
            // for one.
            if service.is_some_and(|svc| svc.callers.allow.is_some()) {
                return self.refuse(session, ctx, 403, "no-peer-identity").await;
            }
            return Ok(false);
        };
        let allowed = service.is_none_or(|svc| svc.callers.allows(peer));
        if !allowed {
            tracing::info!(peer, service = %self.service, "caller not authorized");
            return self.refuse(session, ctx, 403, "identity-denied").await;
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut InboundCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Some(t) = &mut ctx.trace {
            t.begin_try(self.app);
        }
        let mut peer = HttpPeer::new(self.app, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(self.app_idle_timeout);
        if self.app_protocol.http2_for(session.req_header()) {
            crate::upstream::speak_http2(&mut peer, crate::upstream::H2_STREAMS_PER_CONNECTION);
            ctx.connect_turn = self.app_h2_turns.wait(self.connect_timeout).await;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut InboundCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_turn = None;
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut InboundCtx,
    ) -> Result<()> {
        ctx.upstream_times.sending(Instant::now());
        upstream_request.remove_header(PEER_IDENTITY_HEADER);
        if let Some(peer) = ctx.peer.as_deref() {
            upstream_request.insert_header(PEER_IDENTITY_HEADER, peer)?;
        }
        if let Some(t) = &ctx.trace {
            t.inject(upstream_request)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut InboundCtx,
    ) -> Result<()> {
        ctx.upstream_times.header = Some(Instant::now());
        if let Some(t) = &mut ctx.trace {
            t.try_status(resp.status.as_u16());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut InboundCtx,
    ) -> Result<()> {
        // A plaintext caller in permissive mode may speak HTTP/1.0.
        crate::framing::close_unframed_for_http10(session, resp);
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
        ctx: &mut InboundCtx,
    ) -> Result<()> {
        ctx.connect_turn = None;
        crate::metrics::upstream_connection(true, &self.service, reused);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut InboundCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            ctx.upstream_times.end = Some(Instant::now());
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &InboundCtx, _error: &Error) -> bool {
        // Failures are in the access log with their reason.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut InboundCtx) {
        let snap = self.store.current();
        let status = session.response_written().map(|r| r.status.as_u16());
        let reason = ctx.reason.or_else(|| e.map(|_| "app-unavailable"));
        if let Some(t) = &mut ctx.trace {
            if e.is_some() {
                t.end_try(reason);
            }
            t.finish(&crate::trace::Facts {
                session,
                scheme: if ctx.tls { "https" } else { "http" },
                listener: "inbound",
                inbound: true,
                status: status.unwrap_or(0),
                reason,
                route: None,
                service: Some(&self.service),
                subset: None,
                peer_identity: ctx.peer.as_deref(),
            });
        }
        crate::metrics::finished(&crate::metrics::Finished {
            listener: "inbound",
            route: "",
            service: &self.service,
            subset: "",
            status: status.unwrap_or(0),
            reason: reason.unwrap_or(""),
            protocol: crate::metrics::protocol_of(session),
            inbound: true,
            source_identity: ctx.peer.as_deref().unwrap_or(""),
            elapsed: ctx.start.elapsed(),
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
        });
        let outcome = crate::access_log::Outcome {
            route: None,
            status: status.unwrap_or(0),
            reason,
            failed: e.is_some(),
        };
        if !crate::access_log::sampled(&snap, &outcome) {
            return;
        }
        let now = Instant::now();
        let (upstream_header, upstream) = ctx.upstream_times.durations(now);
        let trace_id = ctx.trace.as_ref().map(|t| t.trace_id().to_string());
        crate::access_log::record(
            &snap,
            &crate::access_log::Entry {
                status: status.unwrap_or(0),
                reason,
                service: Some(&self.service),
                endpoint: ctx.upstream_times.sent.map(|_| self.app),
                duration: now.duration_since(ctx.start),
                upstream_header,
                upstream,
                trace_id: trace_id.as_deref(),
                peer_identity: ctx.peer.as_deref(),
                error: e.map(|e| e.to_string()),
                ..crate::access_log::Entry::of_session(session, "inbound")
            },
        );
    }
}
