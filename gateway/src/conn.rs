//! HTTP/1.1 client connections between requests.
//!
//! pingora sets up its whole per-request state (the proxy future, about
//! 15 KB, the session and a 4 KiB head buffer) before it reads a request
//! head, and a keep-alive connection waits for its next request inside that
//! state. Here a connection waits in a small future of our own instead: the
//! request head is read, within the listener's timeouts, and handed to
//! pingora's parser as bytes already received, so pingora's state exists
//! only while a request is being handled. An idle connection costs its
//! socket, its TLS session and little else.
//!
//! A connection idle between requests is closed when a drain starts
//! (`POST /drain`, SIGTERM), as one that finishes a request then would be.
//!
//! The same wait enforces the two timeouts of an HTTP/1.1 connection:
//! `idle_timeout` until the first byte of a request (on a new connection
//! too), then `header_read_timeout` for the rest of the head. A head that
//! does not arrive in time gets a 408 and the connection is closed, as
//! HAProxy's `timeout http-request` does.
//!
//! A head pingora's own parser refuses (it answers 400, or 405 to CONNECT,
//! and closes) never reaches the proxy's filters, so nothing of ours would
//! see it: a head handed over that did not reach the pipeline
//! ([`reached_pipeline`]) and ended the connection is counted and logged
//! here, as the refusals above are.
//!
//! HTTP/2 (ALPN or h2c prior knowledge) and anything else goes to pingora
//! unchanged, with a shutdown signal that a drain turns too
//! ([`closing_signal`](crate::server::closing_signal)): pingora answers it
//! with GOAWAY, so HTTP/2 clients move to other instances on `POST /drain`
//! as they would on SIGTERM.

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use meshgate_config::ListenerLimits;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::access_log::{Entry, Refusals};
use crate::client_stream::ClientStream;

tokio::task_local! {
    /// Set once the request of the head `process_new` handed pingora has
    /// reached the proxy's filters.
    static REACHED: Cell<bool>;
}

/// Called by the proxies' first filter: pingora took the head, so an end of
/// the connection without a request is not its parser's refusal.
pub(crate) fn reached_pipeline() {
    let _ = REACHED.try_with(|r| r.set(true));
}

/// What a connection may take before and while sending a request head,
/// and how it is buffered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Until the first byte of a request.
    pub(crate) idle: Duration,
    /// From the first byte to the end of the head.
    pub(crate) head: Duration,
    /// Past this many bytes without the end of the head, the request is
    /// refused (431) without waiting for the rest.
    pub(crate) max_head: usize,
    /// Read buffer per connection (`limits.read_buffer_bytes`); 0 = none.
    pub(crate) read_buffer: usize,
}

impl From<&ListenerLimits> for ConnLimits {
    fn from(l: &ListenerLimits) -> Self {
        ConnLimits {
            idle: l.idle_timeout,
            head: l.header_read_timeout,
            max_head: l.max_header_bytes,
            read_buffer: l.read_buffer_bytes,
        }
    }
}

/// A listener's pingora proxy behind the HTTP/1.1 wait described above.
pub(crate) struct Listener<SV> {
    proxy: Arc<HttpProxy<SV>>,
    limits: ConnLimits,
    /// Where a refused head is counted and logged.
    refusals: Refusals,
    /// Shutdown or drain, for the HTTP/2 connections; made on the first.
    closing: OnceLock<ShutdownWatch>,
}

impl<SV> Listener<SV> {
    pub(crate) fn new(proxy: Arc<HttpProxy<SV>>, limits: ConnLimits, refusals: Refusals) -> Self {
        Listener {
            proxy,
            limits,
            refusals,
            closing: OnceLock::new(),
        }
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes read into the waiting future itself: enough for a typical request
/// head in one read, small enough that an idle connection stays cheap. A
/// longer head continues in a buffer allocated once bytes have arrived.
const FIRST_READ: usize = 1024;

/// pingora's own starting size for a head buffer.
const HEAD_BUFFER: usize = 4096;
const _: () = assert!(HEAD_BUFFER >= FIRST_READ, "the first read must fit");

#[async_trait]
impl<SV> ServerApp for Listener<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.is_http1(&mut stream, shutdown).await? {
            let closing = self
                .closing
                .get_or_init(|| crate::server::closing_signal(shutdown));
            return self.proxy.process_new(stream, closing).await;
        }
        // Waits that last the whole connection: made for each request, they
        // would join the shared shutdown and drain watches' lists of waiters
        // and leave them again every time the connection waits for a head.
        let mut shutdown_rx = shutdown.clone();
        let stopping = async move {
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
        };
        let mut drain = crate::server::drain_signal();
        let draining = async move {
            let _ = drain.wait_for(|draining| *draining).await;
        };
        tokio::pin!(stopping, draining);
        let mut stream: Stream = Box::new(ClientStream::new(stream, self.limits.read_buffer));
        // For a refusal's log line: the stream is pingora's when it refuses.
        let client = client_of(&stream);
        let mut settings: Option<HttpPersistentSettings> = None;
        // Whether pingora cannot have read past the previous request.
        let mut clean = true;
        let mut first = true;
        loop {
            let head = match settings.as_ref() {
                // Bytes pingora already read past the previous request are
                // the start of the next one, and the client may be waiting
                // for its answer: nothing to wait for.
                Some(s) if !clean && may_carry_bytes(s) => None,
                // A drain closes idle keep-alive connections; a new one
                // still gets its request answered.
                _ => match self
                    .wait_for_head(
                        &mut stream,
                        stopping.as_mut(),
                        (!first).then_some(draining.as_mut()),
                    )
                    .await
                {
                    Waited::Head(head) => Some(head),
                    Waited::Close => return None,
                    Waited::Refused(status, reason, elapsed) => {
                        // Boxed: its read buffer would otherwise sit in
                        // every connection's future, idle ones too.
                        Box::pin(self.refuse_head(&mut stream, status, reason, elapsed)).await;
                        return None;
                    }
                },
            };
            // What tells whether pingora can have read past this request:
            // bytes after the head in what we hand over, or any read of
            // its own from the stream.
            let read_before = ClientStream::read_so_far(&stream);
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None if !first => {}
                None => {
                    // A new connection: pingora's own defaults.
                    let closing = *shutdown.borrow();
                    session.set_keepalive((!closing).then_some(60));
                    session.set_keepalive_reuses_remaining(
                        self.proxy
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            // Without a head of ours, the request began with pingora's
            // bytes: treat it as having read past.
            let past_head = head.as_ref().is_none_or(|h| h.past_head);
            // A head of ours: if pingora ends the connection without the
            // request reaching a filter, its parser refused it.
            let handed = head
                .as_ref()
                .map(|h| (Instant::now(), h.bytes.starts_with(b"CONNECT ")));
            if let Some(h) = head {
                session.set_pipelined_prefix(h.bytes);
            }
            first = false;
            let (reused, reached) = REACHED
                .scope(Cell::new(false), async {
                    let reused = self.proxy.process_new_http(session, shutdown).await;
                    (reused, REACHED.with(Cell::get))
                })
                .await;
            let Some(reused) = reused else {
                if let Some((at, connect)) = handed.filter(|_| !reached && !*shutdown.borrow()) {
                    // pingora refuses CONNECT unless told to proxy it.
                    let (status, reason) = if connect {
                        (405, "method-not-allowed")
                    } else {
                        (400, "bad-request")
                    };
                    self.record_refusal(client, status, reason, at.elapsed());
                }
                return None;
            };
            let (next, next_settings) = reused.consume();
            let pingora_read = match (read_before, ClientStream::read_so_far(&next)) {
                (Some(before), Some(after)) => after != before,
                _ => true,
            };
            stream = next;
            settings = next_settings;
            // Without either, there are no such bytes, and pingora's
            // settings need not be asked (which costs a formatting pass).
            clean = !past_head && !pingora_read;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

enum Waited {
    Head(Head),
    Close,
    /// Refused with this status and reason: the head took too long (408)
    /// or grew past the limit unfinished (431); the time since it began.
    Refused(u16, &'static str, Duration),
}

/// A request head as read, for pingora's parser.
struct Head {
    bytes: BytesMut,
    /// Whether `bytes` runs on past the end of the head (a body, or the
    /// next pipelined request).
    past_head: bool,
}

impl Head {
    fn new(bytes: BytesMut, end: usize) -> Head {
        let past_head = end < bytes.len();
        Head { bytes, past_head }
    }
}

impl<SV> Listener<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    /// Whether the connection speaks HTTP/1.x. `None`: closed before it
    /// said anything.
    async fn is_http1(&self, stream: &mut Stream, shutdown: &ShutdownWatch) -> Option<bool> {
        let options = self.proxy.server_options();
        if options.is_some_and(|o| o.force_custom) {
            return Some(false);
        }
        if stream.get_ssl_digest().is_some() {
            return Some(matches!(
                stream.selected_alpn_proto(),
                None | Some(ALPN::H1)
            ));
        }
        if !options.is_some_and(|o| o.h2c) {
            return Some(true);
        }
        // h2c: look at the first bytes without taking them. pingora peeks
        // the same way and the bytes stay in the stream for whoever reads.
        let mut preface = [0u8; H2_PREFACE.len()];
        let mut shutdown = shutdown.clone();
        let peek = tokio::time::timeout(self.limits.idle, stream.try_peek(&mut preface));
        tokio::select! {
            biased;
            r = peek => match r {
                Ok(Ok(true)) => Some(&preface != H2_PREFACE),
                Ok(Ok(false)) => Some(false),
                // Closed or silent: pingora's reader sees the same.
                Ok(Err(_)) | Err(_) => None,
            },
            _ = shutdown.wait_for(|stop| *stop) => None,
        }
    }

    /// Reads one request head: the first byte within the idle timeout, the
    /// rest within the head timeout. Returns what was read, which may run
    /// past the head into a body or a pipelined request; pingora's parser
    /// takes it from there.
    async fn wait_for_head(
        &self,
        stream: &mut Stream,
        stopping: Pin<&mut impl Future<Output = ()>>,
        drain: Option<Pin<&mut impl Future<Output = ()>>>,
    ) -> Waited {
        let mut first = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut filled = ReadBuf::uninit(&mut first);
        let read = tokio::time::timeout(self.limits.idle, read_some(stream, &mut filled));
        let drained = async {
            match drain {
                Some(d) => d.await,
                None => std::future::pending().await,
            }
        };
        let n = tokio::select! {
            biased;
            r = read => match r {
                Ok(Ok(n)) if n > 0 => n,
                // Closed, failed or idle too long before a request began.
                _ => return Waited::Close,
            },
            () = stopping => return Waited::Close,
            () = drained => return Waited::Close,
        };
        let mut head = BytesMut::with_capacity(HEAD_BUFFER);
        head.extend_from_slice(&filled.filled()[..n]);
        if let Some(end) = head_end(&head, 0) {
            return Waited::Head(Head::new(head, end));
        }
        let started = Instant::now();
        let rest = async {
            loop {
                let scanned = head.len();
                if scanned > self.limits.max_head {
                    // Waiting for the rest would let a client hold the
                    // connection and a growing buffer past the limit.
                    return Err(true);
                }
                match stream.read_buf(&mut head).await {
                    // Closed or failed: nothing to answer.
                    Ok(0) | Err(_) => return Err(false),
                    Ok(_) => {
                        if let Some(end) = head_end(&head, scanned) {
                            return Ok(end);
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(self.limits.head, rest).await {
            Ok(Ok(end)) => Waited::Head(Head::new(head, end)),
            Ok(Err(false)) => Waited::Close,
            Ok(Err(true)) => Waited::Refused(431, "header-too-large", started.elapsed()),
            Err(_) => Waited::Refused(408, "header-timeout", self.limits.head),
        }
    }

    /// Answers a head refused before pingora saw it, and counts and logs
    /// it.
    async fn refuse_head(
        &self,
        stream: &mut Stream,
        status: u16,
        reason: &'static str,
        elapsed: Duration,
    ) {
        self.record_refusal(client_of(stream), status, reason, elapsed);
        let phrase = if status == 408 {
            "Request Timeout"
        } else {
            "Request Header Fields Too Large"
        };
        let answer = format!(
            "HTTP/1.1 {status} {phrase}\r\ncontent-length: 0\r\nconnection: close\r\n\
             x-meshgate-reason: {reason}\r\n\r\n"
        );
        let write = async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            // Closing with the client's bytes unread would reset the
            // connection, and a reset can overtake the answer: read what is
            // still coming, a bounded amount, before closing.
            let mut sink = [0u8; 4096];
            let mut left = LINGER_BYTES;
            while left > 0 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            std::io::Result::Ok(())
        };
        // A client that stopped reading does not hold the connection open.
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

impl<SV> Listener<SV> {
    /// Counts and logs a head refused before the proxy's filters saw it.
    fn record_refusal(
        &self,
        client: Option<std::net::SocketAddr>,
        status: u16,
        reason: &'static str,
        elapsed: Duration,
    ) {
        tracing::debug!(listener = %self.refusals.listener, status, reason, "request head refused");
        self.refusals.record(Entry {
            protocol: "http1",
            client,
            status,
            reason: Some(reason),
            duration: elapsed,
            ..Entry::default()
        });
    }
}

/// The client's address, for a refusal's log line.
fn client_of(stream: &Stream) -> Option<std::net::SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

/// What a refused head's connection reads and discards before closing.
const LINGER_BYTES: usize = 64 * 1024;

/// One read into `buf`; the number of bytes read, 0 at end of stream.
async fn read_some(stream: &mut Stream, buf: &mut ReadBuf<'_>) -> std::io::Result<usize> {
    let before = buf.filled().len();
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_read(cx, buf)).await?;
    Ok(buf.filled().len() - before)
}

/// Where the head in `buf` ends (just past the empty line that ends it),
/// looking at the bytes from `from` on (and the two before, which may start
/// the line ending). A bare LF ends a line as well, as pingora's parser
/// allows.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from.saturating_sub(2);
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + p;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => {}
        }
        i = at + 1;
    }
    None
}

/// Whether pingora's settings for the next request may carry bytes it read
/// past the previous one (a pipelined request). pingora gives them no
/// accessor, so this reads its `Debug` output and answers `true` unless it
/// says plainly that there are none: a pingora that renames or reshapes
/// the field costs the small idle wait, never a request.
fn may_carry_bytes(settings: &HttpPersistentSettings) -> bool {
    /// Looks for the field in the text as it is written and stops the
    /// formatting as soon as it is found.
    struct Finder {
        window: [u8; 32],
        len: usize,
        answer: Option<bool>,
    }
    const FIELD: &[u8] = b"pipelined_prefix: ";
    impl std::fmt::Write for Finder {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for &b in s.as_bytes() {
                if self.len == self.window.len() {
                    self.window.copy_within(1.., 0);
                    self.len -= 1;
                }
                self.window[self.len] = b;
                self.len += 1;
                let seen = &self.window[..self.len];
                if seen.len() > FIELD.len() && seen[..seen.len() - 1].ends_with(FIELD) {
                    self.answer = Some(b != b'N');
                    return Err(std::fmt::Error);
                }
            }
            Ok(())
        }
    }
    let mut f = Finder {
        window: [0; 32],
        len: 0,
        answer: None,
    };
    let _ = write!(f, "{settings:?}");
    f.answer.unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_end(whole, 0), Some(whole.len()));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
        // The blank line split over two reads: the scan restarts two bytes
        // back.
        for split in 1..whole.len() {
            assert_eq!(
                head_end(whole, split),
                Some(whole.len()),
                "split at {split}"
            );
        }
        // Body bytes after the head do not hide it, and are seen as past it.
        let post = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab";
        let end = head_end(post, 0);
        assert_eq!(end, Some(post.len() - 2));
        assert!(Head::new(BytesMut::from(&post[..]), post.len() - 2).past_head);
        assert!(!Head::new(BytesMut::from(&whole[..]), whole.len()).past_head);
    }

    #[tokio::test]
    async fn pingora_settings_say_whether_they_carry_bytes() {
        let (stream, client) = crate::client_stream::pair(0).await;
        let stream: Stream = Box::new(stream);
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(Some(60));
        let mut settings = HttpPersistentSettings::for_session(&session);
        assert!(!may_carry_bytes(&settings));
        // A user context prints as `Any { .. }`: whatever it holds cannot
        // pass for the field.
        settings.set_user_context(Box::new("pipelined_prefix: None"));
        assert!(!may_carry_bytes(&settings));
        settings.set_pipelined_prefix(BytesMut::from(&b"GET /next HTTP/1.1\r\n"[..]));
        assert!(may_carry_bytes(&settings));
        drop(client);
    }
}
