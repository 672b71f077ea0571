//! The server side of a TLS connection on rustls's unbuffered API, for
//! every listener.
//!
//! pingora's TLS stream wraps rustls's buffered connection, whose 4 KiB
//! receive buffer lives as long as the connection, inside a struct with
//! room for a client and a server handshake besides the stream (4.7 KB).
//! Here every buffer exists only while bytes are in flight:
//!
//! - **Reading** waits for the socket to be readable before it takes a
//!   buffer, and gives the buffer back once its records are processed (or
//!   a read finds nothing). Decrypted bytes are copied straight into the
//!   reader's buffer; what does not fit waits in a second buffer, freed
//!   once delivered.
//! - **Writing** encrypts into a buffer that is sent at once, and freed
//!   when all of it is out. A slow reader holds at most
//!   [`WRITE_HIGH_WATER`] bytes before writes wait.
//!
//! An idle keep-alive connection then holds its socket and rustls's
//! session state (keys and the handshake's outcome), nothing more.
//!
//! A verified client certificate (`client_auth`, the sidecar's inbound
//! port) is kept by the stream and found by a request through its TLS
//! digest ([`crate::tls::client_cert`]).

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes asked of the socket per read: a request head, or a few records.
const READ_SIZE: usize = 4096;

/// The most incoming bytes held unprocessed: rustls joins handshake
/// messages of up to 64 KiB, plus one record of the largest size on the
/// wire (TLS 1.2 allows 16 KiB of plaintext grown by 2 KiB, and a header).
const MAX_INCOMING: usize = 0xffff + 16_384 + 2_048 + 5;

/// Encrypted bytes held for a peer that does not read before writes wait.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Most plaintext encrypted in one write.
const WRITE_CHUNK: usize = 64 * 1024;

/// What one encrypted record adds to its plaintext at most: the header,
/// the content type and the AEAD tag (TLS 1.2's explicit nonce included).
const RECORD_OVERHEAD: usize = 5 + 1 + 16 + 8;

/// See the module documentation.
pub(crate) struct TlsServerStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes read and not yet processed; the socket reads into its
    /// spare capacity. No allocation while nothing is pending.
    incoming: Vec<u8>,
    /// Decrypted bytes a reader has not taken yet: `plain[plain_pos..]`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// TLS bytes to send: `outgoing[out_pos..]`.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// The peer sent close_notify, or closed its side.
    read_closed: bool,
    close_queued: bool,
    digest: Option<Arc<SslDigest>>,
    /// The client's verified certificate, held so that a request can find
    /// it by the digest's `cert_digest`.
    client_cert: Option<Arc<crate::tls::ClientCert>>,
    alpn: Option<ALPN>,
    socket_digest: Option<Arc<SocketDigest>>,
    established: SystemTime,
}

/// What the caller of [`TlsServerStream::process`] is after.
enum Want<'a, 'b> {
    /// Plaintext, into this buffer first.
    Read(&'a mut ReadBuf<'b>),
    /// To encrypt these bytes.
    Write(&'a [u8]),
    /// To queue close_notify.
    Close,
    /// The handshake's progress.
    Handshake,
}

/// Where [`TlsServerStream::process`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Plaintext arrived (delivered or held).
    Data,
    /// The incoming bytes are used up: read more from the socket.
    NeedInput,
    /// `Want::Write`'s bytes are encrypted, or `Want::Close` queued.
    Done,
    /// The peer closed the TLS session (close_notify).
    PeerClosed,
    /// Both sides closed it: nothing more can be sent.
    Closed,
}

impl TlsServerStream {
    /// Runs the server handshake on `tcp`. A failed handshake sends the
    /// peer rustls's alert (best effort) before the error is returned.
    pub(crate) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = TlsServerStream {
            tcp,
            conn,
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_pos: 0,
            outgoing: Vec::new(),
            out_pos: 0,
            read_closed: false,
            close_queued: false,
            digest: None,
            client_cert: None,
            alpn: None,
            socket_digest: None,
            established: SystemTime::now(),
        };
        if let Err(e) = std::future::poll_fn(|cx| s.poll_handshake(cx)).await {
            s.queue_alert();
            let send = std::future::poll_fn(|cx| s.poll_send(cx));
            let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
            return Err(e);
        }
        let cipher = s
            .conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or_default();
        let version = s
            .conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let client_cert = s
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| crate::tls::verified_client_cert(leaf));
        let cert_digest = client_cert.as_ref().map(|(_, hash)| hash.to_vec());
        s.client_cert = client_cert.map(|(cert, _)| cert);
        s.digest = Some(Arc::new(SslDigest::new(
            cipher,
            version,
            None,
            None,
            cert_digest.unwrap_or_default(),
        )));
        // Our listeners offer only these two (`crate::tls::alpn`).
        s.alpn = match s.conn.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        s.established = SystemTime::now();
        Ok(s)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = self.process(Want::Handshake)?;
            if !self.conn.is_handshaking() {
                // The session tickets and anything else queued go out now.
                return self.poll_send(cx);
            }
            match step {
                Step::PeerClosed | Step::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                // Still handshaking: our flight goes out, the peer's next
                // one comes in.
                Step::NeedInput | Step::Data | Step::Done => {
                    ready!(self.poll_send(cx))?;
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
    }

    /// Processes the incoming bytes until `want` is served or more input
    /// is needed. Handshake records rustls produces go into `outgoing`;
    /// plaintext goes to the reader's buffer (`Want::Read`) or is held.
    fn process(&mut self, mut want: Want<'_, '_>) -> io::Result<Step> {
        loop {
            let Self {
                conn,
                incoming,
                plain,
                plain_pos,
                outgoing,
                ..
            } = self;
            let status = conn.process_tls_records(incoming);
            let mut discard = status.discard;
            let step = match status.state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    if *plain_pos == plain.len() {
                        plain.clear();
                        *plain_pos = 0;
                    }
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Want::Read(buf) = &mut want
                            && plain.is_empty()
                        {
                            let n = buf.remaining().min(payload.len());
                            buf.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        plain.extend_from_slice(payload);
                    }
                    Some(Step::Data)
                }
                ConnectionState::EncodeTlsData(mut record) => {
                    append(outgoing, 0, |out| record.encode(out)).map_err(io::Error::other)?;
                    None
                }
                // The encoded records wait in `outgoing`, which is sent
                // before any wait for the peer and ahead of later bytes.
                ConnectionState::TransmitTlsData(sent) => {
                    sent.done();
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => match &want {
                    Want::Write(data) => {
                        let need = data.len() + RECORD_OVERHEAD * (data.len() / 16_384 + 1);
                        append(outgoing, need, |out| traffic.encrypt(data, out))
                            .map_err(io::Error::other)?;
                        Some(Step::Done)
                    }
                    Want::Close => {
                        append(outgoing, 64, |out| traffic.queue_close_notify(out))
                            .map_err(io::Error::other)?;
                        Some(Step::Done)
                    }
                    Want::Read(_) | Want::Handshake => Some(Step::NeedInput),
                },
                ConnectionState::BlockedHandshake => Some(Step::NeedInput),
                ConnectionState::PeerClosed => Some(Step::PeerClosed),
                ConnectionState::Closed => Some(Step::Closed),
                // Early data is never offered on TCP (no `max_early_data_size`).
                _ => return Err(io::Error::other("unexpected TLS connection state")),
            };
            if discard > 0 {
                incoming.drain(..discard);
                if incoming.is_empty() {
                    // All processed (plaintext is copied out of rustls).
                    *incoming = Vec::new();
                }
            }
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// After a failed handshake: rustls's alert into `outgoing`.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut self.incoming);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    if append(&mut self.outgoing, 0, |out| record.encode(out)).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(sent)) => sent.done(),
                _ => return,
            }
        }
    }

    /// Reads from the socket into `incoming`: the number of bytes read, 0
    /// when the peer closed. The buffer is taken only once the socket is
    /// readable, and given back when a read finds nothing. The read goes
    /// through tokio's `poll_read`, which takes a short read as proof that
    /// the socket is drained: the next wait for data asks epoll rather than
    /// trying a read that would find nothing.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.capacity() == 0 {
            ready!(self.tcp.poll_read_ready(cx))?;
            self.incoming.reserve_exact(READ_SIZE);
        } else if self.incoming.len() == self.incoming.capacity() {
            // A record (or a handshake message) longer than the buffer.
            if self.incoming.len() >= MAX_INCOMING {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message too large",
                )));
            }
            let grown = (self.incoming.len() * 2).min(MAX_INCOMING);
            self.incoming.reserve_exact(grown - self.incoming.len());
        }
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.incoming);
        if !matches!(read, Poll::Ready(Ok(n)) if n > 0) {
            self.release_incoming();
        }
        read
    }

    fn release_incoming(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
    }

    /// Sends all of `outgoing`, then frees it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.outgoing = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn pending_out(&self) -> usize {
        self.outgoing.len() - self.out_pos
    }

    /// Hands over held plaintext; whether there was any.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.plain_pos == self.plain.len() {
            return false;
        }
        let n = buf.remaining().min(self.plain.len() - self.plain_pos);
        buf.put_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        true
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// rustls's two "buffer too small" errors, which say how much is needed.
trait TooSmall {
    fn required_size(&self) -> Option<usize>;
}

impl TooSmall for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(e) => Some(e.required_size),
            _ => None,
        }
    }
}

impl TooSmall for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(e) => Some(e.required_size),
            _ => None,
        }
    }
}

/// Appends to `out` what `write` puts into a slice of it, starting with
/// `need` bytes of room and growing to what rustls says it needs. On an
/// error `out` is as it was.
fn append<E: TooSmall>(
    out: &mut Vec<u8>,
    mut need: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E> {
    let start = out.len();
    loop {
        out.resize(start + need, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match e.required_size() {
                Some(more) if more > need => need = more,
                _ => {
                    out.truncate(start);
                    return Err(e);
                }
            },
        }
    }
}

impl AsyncRead for TlsServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 || this.take_plain(buf) || this.read_closed {
            return Poll::Ready(Ok(()));
        }
        loop {
            let before = buf.filled().len();
            match this.process(Want::Read(buf))? {
                Step::Data => {
                    if buf.filled().len() > before || this.take_plain(buf) {
                        return Poll::Ready(Ok(()));
                    }
                    // An empty record: keep going.
                }
                Step::PeerClosed | Step::Closed => {
                    this.read_closed = true;
                    return Poll::Ready(Ok(()));
                }
                Step::NeedInput | Step::Done => {
                    // Anything queued (a reply rustls owes the peer, or
                    // written data) goes as far as the socket takes it;
                    // a peer that is not reading does not stop our reads.
                    if this.pending_out() > 0
                        && let Poll::Ready(Err(e)) = this.poll_send(cx)
                    {
                        return Poll::Ready(Err(e));
                    }
                    if ready!(this.poll_fill(cx))? == 0 {
                        // Closed without close_notify: the HTTP layer's
                        // framing tells a cut-off message.
                        this.read_closed = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for TlsServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending_out() >= WRITE_HIGH_WATER {
            ready!(this.poll_send(cx))?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(WRITE_CHUNK)];
        loop {
            match this.process(Want::Write(data))? {
                Step::Done => break,
                // Held for the reader; rustls goes on to the write.
                Step::Data => {}
                Step::PeerClosed => this.read_closed = true,
                Step::NeedInput | Step::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
            }
        }
        // Sent at once as far as the socket takes it; the rest goes with
        // the next write, read or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            // Records still pending are processed first (their plaintext
            // held). A session already closed, or broken, has no alert
            // to send.
            for _ in 0..8 {
                match this.process(Want::Close) {
                    Ok(Step::Data) => {}
                    Ok(Step::PeerClosed) => this.read_closed = true,
                    _ => break,
                }
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl std::fmt::Debug for TlsServerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServerStream")
            .field("tcp", &self.tcp)
            .field("incoming", &self.incoming.len())
            .field("plain", &(self.plain.len() - self.plain_pos))
            .field("outgoing", &self.pending_out())
            .field("read_closed", &self.read_closed)
            .field(
                "client",
                &self.client_cert.as_ref().map(|c| c.subject.as_str()),
            )
            .finish()
    }
}

#[async_trait]
impl Shutdown for TlsServerStream {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for TlsServerStream {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for TlsServerStream {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.digest.clone()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsServerStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        // The TCP layer, then TLS, as pingora's streams report them; one
        // time for both here: when the handshake completed.
        let at = |established_ts| {
            Some(TimingDigest {
                established_ts,
                ..Default::default()
            })
        };
        vec![at(self.established), at(self.established)]
    }
}

impl GetProxyDigest for TlsServerStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsServerStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket_digest.clone()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.socket_digest = Some(Arc::new(digest));
    }
}

#[async_trait]
impl Peek for TlsServerStream {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn configs(server_alpn: &[&[u8]]) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let cert = made.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        server.alpn_protocols = server_alpn.iter().map(|p| p.to_vec()).collect();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(server), Arc::new(client))
    }

    type ClientTls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

    /// Our stream's side of a handshake with rustls's own (buffered,
    /// blocking) client, which then runs `script` on a thread of its own.
    /// The server offers `server_alpn`, the client `http/1.1`.
    async fn connect<T: Send + 'static>(
        server_alpn: &[&[u8]],
        script: impl FnOnce(&mut ClientTls) -> T + Send + 'static,
    ) -> (io::Result<TlsServerStream>, std::thread::JoinHandle<T>) {
        let (server, client_config) = configs(server_alpn);
        connect_with(server, client_config, script).await
    }

    async fn connect_with<T: Send + 'static>(
        server: Arc<ServerConfig>,
        client_config: Arc<rustls::ClientConfig>,
        script: impl FnOnce(&mut ClientTls) -> T + Send + 'static,
    ) -> (io::Result<TlsServerStream>, std::thread::JoinHandle<T>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let peer = std::thread::spawn(move || {
            let sock = std::net::TcpStream::connect(addr).expect("connect");
            let name = "localhost".try_into().expect("name");
            let conn = rustls::ClientConnection::new(client_config, name).expect("client");
            script(&mut rustls::StreamOwned::new(conn, sock))
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        (TlsServerStream::accept(tcp, server).await, peer)
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    }

    fn holds_no_buffer(s: &TlsServerStream) -> bool {
        s.incoming.capacity() == 0 && s.plain.capacity() == 0 && s.outgoing.capacity() == 0
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_an_idle_stream_holds_no_buffer() {
        let up = pattern(100_000, 1);
        let down = pattern(300_000, 2);
        let (up2, down_len) = (up.clone(), down.len());
        let (s, peer) = connect(&[b"h2", b"http/1.1"], move |tls| {
            tls.write_all(&up2).expect("client write");
            tls.flush().expect("client flush");
            let mut got = vec![0; down_len];
            tls.read_exact(&mut got).expect("client read");
            // Then close_notify: a clean end, not a cut-off one.
            let mut rest = Vec::new();
            let end = tls.read_to_end(&mut rest).map(|_| rest.len());
            (got, end)
        })
        .await;
        let mut s = s.expect("handshake");
        assert_eq!(s.selected_alpn_proto(), Some(ALPN::H1));
        let digest = s.get_ssl_digest().expect("TLS digest");
        assert!(digest.version.contains("1_3"), "{}", digest.version);
        let mut got = vec![0; up.len()];
        s.read_exact(&mut got).await.expect("read");
        assert!(got == up, "what the client sent arrived intact");
        // The client waits for our answer: a read now finds nothing, and
        // the stream gives its buffers back meanwhile.
        let mut one = [0u8; 1];
        let idle = tokio::time::timeout(Duration::from_millis(50), s.read(&mut one)).await;
        assert!(idle.is_err(), "nothing to read while the client waits");
        assert!(holds_no_buffer(&s), "idle: {s:?}");
        for chunk in down.chunks(10_000) {
            s.write_all(chunk).await.expect("write");
        }
        s.flush().await.expect("flush");
        assert!(holds_no_buffer(&s), "after the flush: {s:?}");
        AsyncWriteExt::shutdown(&mut s).await.expect("close");
        let (received, end) = peer.join().expect("client thread");
        assert!(received == down, "what we sent arrived intact");
        assert_eq!(
            end.expect("clean end"),
            0,
            "close_notify ends the stream cleanly"
        );
    }

    #[tokio::test]
    async fn small_reads_take_a_record_in_pieces_then_see_the_close() {
        let message = b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n".to_vec();
        let sent = message.clone();
        let (s, peer) = connect(&[b"http/1.1"], move |tls| {
            tls.write_all(&sent).expect("client write");
            tls.flush().expect("client flush");
            tls.conn.send_close_notify();
            tls.flush().expect("client flush");
            // Until the server closes too (a socket closed with unread
            // bytes, the session tickets here, is reset).
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).map(|_| rest.len())
        })
        .await;
        let mut s = s.expect("handshake");
        let mut got = Vec::new();
        let mut piece = [0u8; 3];
        loop {
            let n = s.read(&mut piece).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, message);
        assert!(holds_no_buffer(&s), "{s:?}");
        AsyncWriteExt::shutdown(&mut s).await.expect("close");
        assert_eq!(peer.join().expect("client thread").expect("clean end"), 0);
    }

    /// A server that requires a certificate of `ca`'s mesh, and a client
    /// that holds one issued to `id`.
    fn mtls_configs(
        ca: &meshgate_identity::Ca,
        id: &str,
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let server_cert = made.cert.der().clone();
        let server_key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let mut mesh_roots = rustls::RootCertStore::empty();
        mesh_roots
            .add(CertificateDer::from(ca.root_der().to_vec()))
            .expect("mesh root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(mesh_roots),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.clone()], server_key)
            .expect("server config");
        let id = meshgate_identity::SpiffeId::parse(id).expect("id");
        let (key, issued) = ca.issue(&id, Duration::from_secs(3600)).expect("issue");
        let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(key.key_pem().as_bytes()).expect("key");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_cert).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client config");
        (Arc::new(server), Arc::new(client))
    }

    #[tokio::test]
    async fn a_client_certificate_is_found_by_the_digest_while_a_connection_holds_it() {
        let ca = meshgate_identity::Ca::generate("test.mesh").expect("CA");
        let caller = "spiffe://test.mesh/service/caller";
        let (server, client) = mtls_configs(&ca, caller);
        // The client sends a byte, then waits for the server to close.
        let script = |tls: &mut ClientTls| {
            tls.write_all(b"x")
                .and_then(|_| tls.flush())
                .expect("write");
            let mut rest = Vec::new();
            let _ = tls.read_to_end(&mut rest);
        };
        let (a, peer_a) = connect_with(server.clone(), client.clone(), script).await;
        let (b, peer_b) = connect_with(server, client, script).await;
        let (a, b) = (a.expect("handshake a"), b.expect("handshake b"));
        let (digest_a, digest_b) = (
            a.get_ssl_digest().expect("digest a"),
            b.get_ssl_digest().expect("digest b"),
        );
        let cert_a = crate::tls::client_cert(&digest_a).expect("a's client certificate");
        assert_eq!(cert_a.spiffe_id(), Some(caller));
        let cert_b = crate::tls::client_cert(&digest_b).expect("b's client certificate");
        assert!(Arc::ptr_eq(&cert_a, &cert_b), "parsed once for both");
        drop((cert_a, cert_b));

        // A connection without a client certificate has none to find.
        let (plain, peer_plain) = connect(&[b"http/1.1"], |tls| {
            tls.write_all(b"x").and_then(|_| tls.flush())
        })
        .await;
        let plain = plain.expect("handshake");
        assert!(crate::tls::client_cert(&plain.get_ssl_digest().expect("digest")).is_none());

        drop(a);
        assert!(
            crate::tls::client_cert(&digest_a).is_some(),
            "b still holds the same certificate"
        );
        drop(b);
        assert!(
            crate::tls::client_cert(&digest_b).is_none(),
            "gone with the last connection that held it"
        );
        drop(plain);
        peer_a.join().expect("client a");
        peer_b.join().expect("client b");
        peer_plain
            .join()
            .expect("plain client")
            .expect("plain write");
    }

    #[tokio::test]
    async fn a_failed_handshake_tells_the_client_why() {
        // The client speaks only HTTP/1.1; this server only h2.
        let (s, peer) = connect(&[b"h2"], |tls| {
            tls.write_all(b"GET / HTTP/1.1\r\n\r\n")
                .and_then(|_| tls.flush())
        })
        .await;
        let err = s.expect_err("no common protocol");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let client_err = peer
            .join()
            .expect("client thread")
            .expect_err("the handshake failed");
        assert!(
            client_err.to_string().contains("NoApplicationProtocol"),
            "the client got the alert: {client_err}"
        );
    }
}
