//! HTTP/3 at the edge. pingora has no QUIC, so a listener with `http3`
//! in its protocols also gets a quinn endpoint on the same port (UDP). Each
//! request stream becomes a pingora custom session ([`session::H3Session`])
//! handed to the *same* `HttpProxy<Edge>` as the TCP listener: one
//! pipeline and one set of upstream connection pools for all three
//! protocols.
//!
//! The endpoint runs as a pingora service, so it starts and stops with the
//! server: on shutdown every connection gets a GOAWAY, requests in flight
//! finish, and the process exits once nothing is in flight. A drain
//! (`POST /drain`) sends the same GOAWAY and keeps the endpoint open.

mod head;
mod quic_io;
mod session;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use http::{HeaderValue, Method, StatusCode};
use meshgate_config::{ListenerSpec, TlsSpec};
use pingora::apps::HttpServerApp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};

use crate::access_log::{Entry, Refusals};
use crate::edge::Edge;
use crate::listen::Held;
use crate::tls::LiveCerts;
use session::{FirstRead, H3Session};

/// The HTTP/3 side of one listener.
pub(crate) struct H3Listener {
    name: String,
    socket: UdpSocket,
    config: quinn::ServerConfig,
    retry_threshold: usize,
    max_connections: usize,
    conn: Arc<ConnSettings>,
}

/// What every connection of a listener needs.
struct ConnSettings {
    proxy: Arc<HttpProxy<Edge>>,
    /// The listener's `header_read_timeout`: how long a request without a
    /// declared length may take to show whether it has a body, and an
    /// unsafe early-data request to wait for the handshake.
    head_timeout: Duration,
    max_head: u64,
    early_data: bool,
    port: u16,
    drain_limit: Duration,
    /// Where malformed and too-early requests are counted and logged.
    refusals: Refusals,
}

/// Why the HTTP/3 side of a listener cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H3Error {
    /// The UDP port could not be bound.
    #[error("cannot bind UDP {addr} for HTTP/3: {source}")]
    Bind {
        /// The listener's address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS or transport settings cannot be used for QUIC.
    #[error("cannot set up HTTP/3: {0}")]
    Setup(String),
}

impl H3Listener {
    /// Binds the listener's UDP port now, so a taken port fails start-up
    /// with the TCP listeners rather than later in the background.
    pub(crate) fn bind(
        l: &ListenerSpec,
        tls: &TlsSpec,
        certs: Arc<LiveCerts>,
        proxy: Arc<HttpProxy<Edge>>,
        refusals: Refusals,
    ) -> Result<Self, H3Error> {
        let socket = UdpSocket::bind(l.address).map_err(|source| H3Error::Bind {
            addr: l.address,
            source,
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| H3Error::Bind {
                addr: l.address,
                source,
            })?;
        let spec = &l.http3;
        let crypto = crate::tls::quic_server_config(tls, certs, spec.early_data)
            .map_err(|e| H3Error::Setup(e.to_string()))?;
        let crypto =
            QuicServerConfig::try_from(crypto).map_err(|e| H3Error::Setup(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(spec.max_concurrent_streams))
            // The client's control and QPACK streams, with room for
            // extensions; nothing else is accepted.
            .max_concurrent_uni_streams(VarInt::from_u32(8))
            .stream_receive_window(VarInt::from_u32(spec.stream_receive_window))
            .receive_window(VarInt::from_u32(spec.receive_window))
            .max_idle_timeout(Some(
                IdleTimeout::try_from(spec.idle_timeout)
                    .map_err(|e| H3Error::Setup(e.to_string()))?,
            ));
        config.transport_config(Arc::new(transport));
        config.max_incoming(l.limits.max_connections as usize);
        Ok(Self {
            name: format!("listener {} (http3)", l.name),
            socket,
            config,
            retry_threshold: spec.retry_threshold as usize,
            max_connections: l.limits.max_connections as usize,
            conn: Arc::new(ConnSettings {
                proxy,
                head_timeout: l.limits.header_read_timeout,
                max_head: l.limits.max_header_bytes as u64,
                early_data: spec.early_data,
                port: l.address.port(),
                drain_limit: l.limits.drain_timeout,
                refusals,
            }),
        })
    }
}

/// The `Alt-Svc` value that advertises HTTP/3 on `l`'s TCP responses, or
/// `None` when the listener has no HTTP/3 or the advert is turned off.
pub(crate) fn alt_svc(l: &ListenerSpec) -> Option<HeaderValue> {
    let age = l.http3.alt_svc_max_age.as_secs();
    if !l.protocols.http3 || age == 0 {
        return None;
    }
    HeaderValue::try_from(format!("h3=\":{}\"; ma={age}", l.address.port())).ok()
}

/// The HTTP/3 application error code for a clean close (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;

/// How long a connection opened while the server is closing has to send
/// its first request before it gets its GOAWAY without one.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// QUIC connections open on all HTTP/3 listeners of this process: the
/// drain on shutdown waits for them as for requests in flight, so the last
/// bytes of a response are not cut off by the exit.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// How many QUIC connections are open now.
pub(crate) fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// Counts shared by a listener's accept loop and its connections.
#[derive(Default)]
struct Counts {
    handshaking: AtomicUsize,
    connections: AtomicUsize,
}

impl H3Listener {
    /// Serves until `shutdown`, then lets the open connections finish.
    /// Runs on the runtime of its listener's TCP side
    /// ([`TcpListener::with_http3`](crate::listen::TcpListener::with_http3)):
    /// the two share one proxy and so one pool of upstream connections,
    /// and a pooled connection is registered with the runtime that opened
    /// it. On runtimes of their own, a request on one side over a
    /// connection the other opened had its socket's readiness come
    /// through the other runtime's thread: two thread wake-ups more.
    pub(crate) async fn run(self, mut shutdown: ShutdownWatch) {
        let endpoint = match Endpoint::new(
            EndpointConfig::default(),
            Some(self.config),
            self.socket,
            Arc::new(quic_io::QuicRuntime),
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(listener = %self.name, error = %e, "HTTP/3 endpoint failed to start");
                return;
            }
        };
        let counts = Arc::new(Counts::default());
        let conn = Conn {
            settings: self.conn.clone(),
            shutdown: crate::server::closing_signal(&shutdown),
        };
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
                _ = shutdown.changed() => break,
            };
            if counts.connections.load(Ordering::Relaxed) >= self.max_connections {
                crate::metrics::http3_connection("refused");
                incoming.refuse();
                continue;
            }
            let incoming = if !incoming.remote_address_validated()
                && counts.handshaking.load(Ordering::Relaxed) >= self.retry_threshold
            {
                // Many handshakes in progress: make this client prove it
                // owns its address before we spend a handshake on it.
                match incoming.retry() {
                    Ok(()) => {
                        crate::metrics::http3_connection("retry");
                        continue;
                    }
                    Err(e) => e.into_incoming(),
                }
            } else {
                incoming
            };
            let counts = counts.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                let _open = Held::new(&counts.connections);
                let _all = Held::new(&OPEN);
                let handshake = Held::new(&counts.handshaking);
                conn.serve(incoming, handshake).await;
            });
        }
        // Stop taking new connections; those open got their GOAWAY (the
        // closing signal turns on shutdown too) and finish what they
        // started.
        endpoint.set_server_config(None);
        endpoint.wait_idle().await;
    }
}

/// A listener's connection settings and the signal for GOAWAY.
#[derive(Clone)]
struct Conn {
    settings: Arc<ConnSettings>,
    /// The server's shutdown or a drain
    /// ([`closing_signal`](crate::server::closing_signal)); the listener
    /// stops taking connections on the shutdown alone.
    shutdown: ShutdownWatch,
}

impl std::ops::Deref for Conn {
    type Target = ConnSettings;

    fn deref(&self) -> &ConnSettings {
        &self.settings
    }
}

impl Conn {
    async fn serve(&self, incoming: quinn::Incoming, handshake: Held<&AtomicUsize>) {
        let peer = incoming.remote_address();
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "QUIC connection refused");
                return;
            }
        };
        // `confirmed` turns true once the handshake is complete. Until
        // then a request may have come as 0-RTT early data, which an
        // attacker can replay: unsafe methods wait for the handshake.
        let (confirm, confirmed) = tokio::sync::watch::channel(true);
        let early = if self.early_data {
            connecting.into_0rtt()
        } else {
            Err(connecting)
        };
        let conn = match early {
            Ok((conn, accepted)) => {
                confirm.send_replace(false);
                tokio::spawn(async move {
                    accepted.await;
                    confirm.send_replace(true);
                });
                conn
            }
            Err(connecting) => match connecting.await {
                Ok(c) => c,
                Err(e) => return handshake_failed(peer, &e),
            },
        };
        drop(handshake);
        crate::metrics::http3_connection("ok");
        let local = conn
            .local_ip()
            .map(|ip| std::net::SocketAddr::new(ip, self.port));
        let mut h3 = match h3::server::builder()
            .max_field_section_size(self.max_head)
            .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed");
                return;
            }
        };
        let mut shutdown = self.shutdown.clone();
        let mut closing = *shutdown.borrow_and_update();
        // One wait for the whole connection: a fresh `changed()` on each
        // pass of the loop below would join the shutdown watch's list of
        // waiters and leave it again for every request, under a lock that
        // every connection's loop shares.
        let shutdown_changed = shutdown.changed();
        tokio::pin!(shutdown_changed);
        // GOAWAY: no new requests on this connection; those accepted carry
        // on. Its stream ID is the first one refused: one past the last
        // request accepted (`shutdown(1)`), 0 when there was none. A
        // connection opened while closing gets it after the request it came
        // with, which is answered as an HTTP/1.1 client's is during a
        // drain, or after FIRST_REQUEST_GRACE without one.
        let mut goaway_sent = false;
        let grace = tokio::time::sleep(FIRST_REQUEST_GRACE);
        tokio::pin!(grace);
        let mut requests = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                r = h3.accept() => match r {
                    Ok(Some(resolver)) => {
                        let shared = self.clone();
                        let confirmed = confirmed.clone();
                        // Boxed: the task is then a pointer, moved
                        // cheaply on spawn, and a finished task waiting
                        // to be reaped holds no request state.
                        requests.spawn(Box::pin(async move {
                            shared.request(resolver, peer, local, confirmed).await;
                        }));
                        if closing && !goaway_sent {
                            goaway_sent = true;
                            let _ = h3.shutdown(1).await;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                        break;
                    }
                },
                _ = &mut shutdown_changed, if !closing => {
                    closing = true;
                    goaway_sent = true;
                    let _ = h3.shutdown(1).await;
                }
                () = &mut grace, if closing && !goaway_sent => {
                    goaway_sent = true;
                    let _ = h3.shutdown(1).await;
                }
                // After the GOAWAY, each finished request is a reason to
                // look whether the connection is done.
                Some(_) = requests.join_next(), if goaway_sent => {}
            }
            // Finished requests are reaped whenever the loop wakes anyway
            // (mostly for the next request) rather than waking it for each:
            // one wake-up of this loop, and one poll of the connection,
            // less per request.
            while requests.try_join_next().is_some() {}
            if goaway_sent && requests.is_empty() {
                break;
            }
        }
        while requests.join_next().await.is_some() {}
        if closing {
            // The last responses may still be on their way; closing now
            // would drop what the client has not acknowledged. A client
            // closes once it has read them after a GOAWAY; wait for that,
            // up to the drain limit.
            tokio::select! {
                _ = conn.closed() => {}
                () = tokio::time::sleep(self.drain_limit) => {}
            }
        }
        conn.close(VarInt::from_u32(H3_NO_ERROR), b"");
    }

    async fn request(
        &self,
        resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
        peer: std::net::SocketAddr,
        local: Option<std::net::SocketAddr>,
        mut confirmed: tokio::sync::watch::Receiver<bool>,
    ) {
        let opened = Instant::now();
        let (req, mut stream) = match resolver.resolve_request().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad HTTP/3 request");
                // The heads h3 refuses itself, as malformed or larger than
                // `max_header_bytes`, are ours to count and log too; a
                // stream the client gave up or a closing connection is not
                // a request.
                let reason = match &e {
                    StreamError::StreamError { code, .. } if *code == Code::H3_MESSAGE_ERROR => {
                        Some("bad-request")
                    }
                    StreamError::HeaderTooBig { .. } => Some("header-too-large"),
                    _ => None,
                };
                if let Some(reason) = reason {
                    self.refuse(None, peer, 0, reason, opened);
                }
                return;
            }
        };
        let (parts, ()) = req.into_parts();
        if let Err(e) = head::check(&parts) {
            // As h3 refuses the malformed requests it finds (RFC 9114
            // §4.1.2).
            tracing::debug!(%peer, error = %e, "bad HTTP/3 request");
            stream.stop_stream(Code::H3_MESSAGE_ERROR);
            stream.stop_sending(Code::H3_MESSAGE_ERROR);
            self.refuse(Some(&parts), peer, 0, "bad-request", opened);
            return;
        }
        let (mut send, mut recv) = stream.split();
        if !is_safe(&parts.method)
            && !matches!(
                tokio::time::timeout(self.head_timeout, confirmed.wait_for(|done| *done)).await,
                Ok(Ok(_))
            )
        {
            // Early data that never became a full handshake: only safe
            // requests are served from it (RFC 8470).
            let resp = http::Response::builder()
                .status(StatusCode::TOO_EARLY)
                .header(crate::edge::REASON_HEADER, "too-early")
                .body(())
                .unwrap_or_default();
            let status = if send.send_response(resp).await.is_ok() {
                let _ = send.finish().await;
                StatusCode::TOO_EARLY.as_u16()
            } else {
                0
            };
            recv.stop_sending(Code::H3_NO_ERROR);
            self.refuse(Some(&parts), peer, status, "too-early", opened);
            return;
        }
        let mut head = RequestHeader::from(parts);
        if !head.headers.contains_key(http::header::HOST)
            && let Some(authority) = head.uri.authority().map(|a| a.as_str().to_owned())
            && head.insert_header(http::header::HOST, authority).is_err()
        {
            return;
        }
        let first = if head.headers.contains_key(http::header::CONTENT_LENGTH) {
            FirstRead::Unknown
        } else {
            // No declared length: look at what follows the head to tell a
            // bodiless request (the usual GET) from a streamed upload.
            match tokio::time::timeout(self.head_timeout, recv.recv_data()).await {
                Ok(Ok(None)) => FirstRead::Empty,
                Ok(Ok(Some(mut b))) => FirstRead::Data(b.copy_to_bytes(b.remaining())),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTP/3 request body failed");
                    return;
                }
                Err(_) => FirstRead::Unknown,
            }
        };
        let session = H3Session::new(head, (send, recv), first, peer, local);
        let session = ServerSession::new_custom(Box::new(session));
        self.proxy.process_new_http(session, &self.shutdown).await;
    }

    /// Counts and logs a request refused before the proxy saw it, with its
    /// request line when h3 handed one over.
    fn refuse(
        &self,
        parts: Option<&http::request::Parts>,
        peer: std::net::SocketAddr,
        status: u16,
        reason: &'static str,
        opened: Instant,
    ) {
        self.refusals.record(Entry {
            protocol: "http3",
            client: Some(peer),
            method: parts.map_or("", |p| p.method.as_str()),
            authority: parts.and_then(|p| p.uri.authority()).map(|a| a.as_str()),
            path: parts.map_or("", |p| p.uri.path()),
            status,
            reason: Some(reason),
            duration: opened.elapsed(),
            ..Entry::default()
        });
    }
}

fn handshake_failed(peer: std::net::SocketAddr, e: &quinn::ConnectionError) {
    crate::metrics::http3_connection(match e {
        quinn::ConnectionError::TimedOut => "timeout",
        quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_) => {
            "protocol-error"
        }
        _ => "closed",
    });
    tracing::debug!(%peer, error = %e, "QUIC handshake failed");
}

fn is_safe(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}
