//! A client connection's stream as `conn` hands it to pingora: pingora's
//! own stream (L4 or TLS) plus what pingora's listener used to put under
//! it and what `conn` needs to know.
//!
//! - **Writes are gathered** until a flush or [`WRITE_BUFFER`] bytes, so a
//!   response head and a small body leave in one write (and, over TLS, one
//!   record). pingora's listener did this with a 1460-byte buffer under
//!   every connection; here the buffer exists only between a write and
//!   its flush, so an idle connection holds none.
//! - **Reads** go straight through, or through a buffer of
//!   `limits.read_buffer_bytes` when a listener asks for one.
//! - **Bytes read are counted**, so `conn` can tell whether pingora read
//!   anything itself during a request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes gathered before they are written: one TCP segment's worth
/// and then some, as a response head plus a small body.
pub(crate) const WRITE_BUFFER: usize = 4096;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ClientStream {
    inner: Stream,
    /// Bytes delivered to readers so far.
    read: usize,
    /// Gathered writes, and how much of them is already written.
    out: Vec<u8>,
    written: usize,
    /// The read buffer's size (0: none), the buffer (allocated at the
    /// first read), the end of what it holds and how much of that was
    /// delivered.
    read_buffer: usize,
    ahead: Vec<u8>,
    ahead_end: usize,
    taken: usize,
}

impl ClientStream {
    pub(crate) fn new(inner: Stream, read_buffer: usize) -> Self {
        ClientStream {
            inner,
            read: 0,
            out: Vec::new(),
            written: 0,
            read_buffer,
            ahead: Vec::new(),
            ahead_end: 0,
            taken: 0,
        }
    }

    /// The bytes read so far from a stream made by [`ClientStream::new`];
    /// `None` for any other.
    pub(crate) fn read_so_far(stream: &Stream) -> Option<usize> {
        stream
            .as_any()
            .downcast_ref::<ClientStream>()
            .map(|c| c.read)
    }

    /// Writes out what was gathered; then the buffer is released.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads through the read buffer: `ahead[taken..ahead_end]` is what
    /// was read and not yet delivered.
    fn poll_read_ahead(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.taken == self.ahead_end {
            if buf.remaining() >= self.read_buffer {
                // As large as the buffer: no point copying through it.
                return Pin::new(&mut self.inner).poll_read(cx, buf);
            }
            if self.ahead.is_empty() {
                self.ahead = vec![0; self.read_buffer];
            }
            let mut fill = ReadBuf::new(&mut self.ahead);
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut fill);
            self.ahead_end = fill.filled().len();
            self.taken = 0;
            ready!(polled)?;
        }
        let n = buf.remaining().min(self.ahead_end - self.taken);
        buf.put_slice(&self.ahead[self.taken..self.taken + n]);
        self.taken += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = if this.read_buffer == 0 {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            this.poll_read_ahead(cx, buf)
        };
        this.read += buf.filled().len() - before;
        polled
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() + buf.len() > WRITE_BUFFER {
            ready!(this.poll_write_out(cx))?;
        }
        if buf.len() >= WRITE_BUFFER {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.out.capacity() == 0 {
            this.out.reserve_exact(WRITE_BUFFER);
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.out.len() + total > WRITE_BUFFER {
            ready!(this.poll_write_out(cx))?;
        }
        if total >= WRITE_BUFFER {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if this.out.capacity() == 0 {
            this.out.reserve_exact(WRITE_BUFFER);
        }
        for b in bufs {
            this.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        // What was gathered goes out first.
        let _ = std::future::poll_fn(|cx| self.poll_write_out(cx)).await;
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.taken < self.ahead_end {
            // Bytes already taken off the socket cannot be peeked there.
            return Ok(false);
        }
        self.inner.try_peek(buf).await
    }
}

/// A connected pair for tests: our stream over a real loopback socket,
/// and its peer.
#[cfg(test)]
pub(crate) async fn pair(read_buffer: usize) -> (ClientStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let peer = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(server));
    (ClientStream::new(stream, read_buffer), peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_are_gathered_until_a_flush() {
        let (mut s, mut peer) = pair(0).await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        s.write_all(b"body").await.expect("write");
        let mut got = [0u8; 64];
        let nothing = tokio::time::timeout(Duration::from_millis(100), peer.read(&mut got)).await;
        assert!(nothing.is_err(), "nothing is sent before the flush");
        s.flush().await.expect("flush");
        assert_eq!(s.out.capacity(), 0, "no buffer held after the flush");
        let mut all = Vec::new();
        while all.len() < 23 {
            let n = peer.read(&mut got).await.expect("read");
            all.extend_from_slice(&got[..n]);
        }
        assert_eq!(all, b"HTTP/1.1 200 OK\r\n\r\nbody");
        // A large write is not held back.
        let big = vec![b'x'; WRITE_BUFFER * 2];
        s.write_all(&big).await.expect("write");
        let mut all = Vec::new();
        while all.len() < big.len() {
            let n = peer.read(&mut got).await.expect("read");
            all.extend_from_slice(&got[..n]);
        }
        assert_eq!(all, big);
    }

    #[tokio::test]
    async fn reads_are_counted_with_or_without_a_read_buffer() {
        for read_buffer in [0, 16] {
            let (mut s, mut peer) = pair(read_buffer).await;
            let sent = b"GET /a-rather-long-path HTTP/1.1\r\nHost: x\r\n\r\n";
            peer.write_all(sent).await.expect("write");
            peer.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            let mut small = [0u8; 5];
            loop {
                let n = s.read(&mut small).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&small[..n]);
            }
            assert_eq!(got, sent, "read buffer {read_buffer}");
            assert_eq!(s.read, sent.len());
        }
    }
}
