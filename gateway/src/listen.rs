//! The TCP side of a configured listener: our own accept loop in front of
//! [`conn::Listener`](crate::conn::Listener), in place of pingora's
//! listening service.
//!
//! pingora's service spawns one task per connection whose future holds
//! its whole TLS handshake state for the connection's life (about 8.6 KB,
//! idle or not), builds the rustls `ServerConfig` itself with no way to let
//! the server pick the cipher suite, and has no connection limit. Here the
//! handshake is boxed and freed once done, the rustls settings are ours
//! ([`crate::tls::listener_tls`]) and `limits.max_connections` holds: a
//! connection over it is closed at once and counted.
//!
//! Plain connections are handed on as pingora's L4 stream with its socket
//! digest. TLS runs on our own stream ([`crate::tls_stream`]), which holds
//! no buffer while a connection is idle; a verified client certificate
//! reaches the request through the TLS digest
//! ([`crate::tls::client_cert`]).
//!
//! A TLS listener can also take plaintext while a check says so (a
//! sidecar's inbound port in permissive mesh mode): the first byte tells a
//! TLS handshake record from anything else, without taking it.

use std::net::SocketAddr;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;

use crate::tls::ListenerTls;
use crate::tls_stream::TlsServerStream;

/// pingora's listen backlog, kept.
const BACKLOG: i32 = 65_535;

/// How long a TLS handshake may take, as in pingora's listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Asked per connection on a TLS listener: whether plaintext is taken too.
pub(crate) type PlaintextToo = Arc<dyn Fn() -> bool + Send + Sync>;

/// Whether `address` can be bound for listening, checked without
/// listening on it: a socket that listened, even for a moment, would take
/// connections into its queue, and closing it resets them. A client (a
/// readiness probe, say) that connects while the check runs would see its
/// first connection reset.
pub(crate) fn check_free(address: SocketAddr) -> std::io::Result<()> {
    bound(address).map(drop)
}

/// A socket bound to `address`, set up for listening but not listening.
fn bound(address: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// One listener's TCP side.
pub(crate) struct TcpListener<A> {
    name: String,
    socket: Option<std::net::TcpListener>,
    tls: Option<Arc<ListenerTls>>,
    plaintext_too: Option<PlaintextToo>,
    app: Arc<A>,
    max_connections: usize,
    /// The listener's HTTP/3 side, run on the same runtime.
    http3: Option<crate::h3::H3Listener>,
}

impl<A> TcpListener<A> {
    /// Binds `address` now, so a taken port is an error at start-up.
    pub(crate) fn bind(
        name: &str,
        address: SocketAddr,
        tls: Option<ListenerTls>,
        app: Arc<A>,
        max_connections: usize,
    ) -> std::io::Result<Self> {
        let socket = bound(address)?;
        socket.set_nonblocking(true)?;
        socket.listen(BACKLOG)?;
        Ok(TcpListener {
            name: name.to_owned(),
            socket: Some(socket.into()),
            tls: tls.map(Arc::new),
            plaintext_too: None,
            app,
            max_connections,
            http3: None,
        })
    }

    /// Serves the listener's HTTP/3 side too, on this side's runtime.
    pub(crate) fn with_http3(mut self, http3: crate::h3::H3Listener) -> Self {
        self.http3 = Some(http3);
        self
    }

    /// A TLS listener also takes plaintext connections while `check` says
    /// so; they are counted in `meshgate_plaintext_connections_total`.
    pub(crate) fn plaintext_when(mut self, check: PlaintextToo) -> Self {
        self.plaintext_too = Some(check);
        self
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for TcpListener<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let http3 = self
            .http3
            .take()
            .map(|h3| tokio::spawn(h3.run(shutdown.clone())));
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %self.name, error = %e, "listener failed to start");
                if let Some(h3) = http3 {
                    let _ = h3.await;
                }
                return;
            }
        };
        let open = Arc::new(AtomicUsize::new(0));
        tokio::spawn(crate::memory::give_back_freed_memory(shutdown.clone()));
        loop {
            let (tcp, peer) = tokio::select! {
                biased;
                _ = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = %self.name, error = %e, "accept failed");
                        // Out of file descriptors: accept would fail again
                        // at once; let connections close first.
                        if e.raw_os_error() == Some(EMFILE) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    }
                },
            };
            if open.load(Ordering::Relaxed) >= self.max_connections {
                crate::metrics::tcp_connection(&self.name, "refused");
                drop(tcp);
                continue;
            }
            crate::metrics::tcp_connection(&self.name, "accepted");
            let _ = tcp.set_nodelay(true);
            let held = Held::new(open.clone());
            let app = self.app.clone();
            let tls = self.tls.clone();
            // Asked now, so a mode change applies to the next connection;
            // the name is for counting a plaintext one.
            let plaintext_too = self.plaintext_too.as_ref().is_some_and(|check| check());
            let name = plaintext_too.then(|| self.name.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _held = held;
                let tls = match (tls.as_deref(), name) {
                    (Some(tls), Some(name)) => match sniff(&tcp).await {
                        None => return,
                        Some(true) => Some(tls),
                        Some(false) => {
                            crate::metrics::plaintext_connection(&name);
                            None
                        }
                    },
                    (tls, _) => tls,
                };
                // Boxed: the handshake's state (and the rest of
                // `prepare`'s) is freed when it ends instead of sizing the
                // task for the connection's life.
                let Some(stream) = Box::pin(prepare(tcp, peer, tls)).await else {
                    return;
                };
                let mut next = app.process_new(stream, &shutdown).await;
                while let Some(stream) = next {
                    next = app.process_new(stream, &shutdown).await;
                }
            });
        }
        // New connections are refused from here (the socket closes); those
        // open finish their requests, and idle ones are closed by `conn`.
        drop(listener);
        self.app.cleanup().await;
        // The HTTP/3 side stops on the same signal and waits for its
        // connections to finish.
        if let Some(h3) = http3 {
            let _ = h3.await;
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The accepted connection as pingora's stream: its socket digest, then
/// TLS if the listener has it. `None` when the handshake fails (counted by
/// the TLS hooks) or times out.
async fn prepare(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<&ListenerTls>,
) -> Option<Stream> {
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    let Some(tls) = tls else {
        let mut l4 = L4Stream::from(tcp);
        l4.set_socket_digest(digest);
        return Some(Box::new(l4));
    };
    let handshake = TlsServerStream::accept(tcp, tls.config.clone());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(mut stream)) => {
            stream.set_socket_digest(digest);
            tls.handshakes.completed();
            Some(Box::new(stream))
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Whether the connection starts with a TLS handshake record, from its
/// first byte, which stays in the socket. `None`: closed, failed or silent
/// for as long as a handshake may take.
async fn sniff(tcp: &tokio::net::TcpStream) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == TLS_HANDSHAKE_RECORD),
        _ => None,
    }
}

/// `EMFILE` (Linux): the process is out of file descriptors.
const EMFILE: i32 = 24;

/// Counts one open connection (or handshake) on `C`'s counter until
/// dropped: a borrowed counter, or an `Arc` when the guard must outlive the
/// scope that made it.
pub(crate) struct Held<C: Deref<Target = AtomicUsize>>(C);

impl<C: Deref<Target = AtomicUsize>> Held<C> {
    pub(crate) fn new(count: C) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Held(count)
    }
}

impl<C: Deref<Target = AtomicUsize>> Drop for Held<C> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_check_never_takes_a_connection() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = check_free(addr).expect_err("a listening port is taken");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(taken);

        // While the check holds the port, a client is refused, not queued
        // on a socket that is about to close (which would reset it).
        let checking = bound(addr).expect("the port is free again");
        let err = std::net::TcpStream::connect(addr).expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        drop(checking);
        check_free(addr).expect("free after the check");
    }
}
