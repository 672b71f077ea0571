//! One HTTP/3 request stream as a pingora custom downstream session, so
//! it runs through the same `HttpProxy<Edge>` (filters, routing, JWT,
//! splits, balancing, retries, breakers, metrics, access log) and the same
//! upstream connection pools as a request on the TCP listener.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use h3::error::Code;
use h3::server::RequestStream;
use http::{HeaderMap, HeaderName, Response, header};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::protocols::http::HttpTask;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::{Error, ErrorType, OrErr, Result};

use super::head::CONNECTION_HEADERS;

type SendHalf = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = RequestStream<h3_quinn::RecvStream, Bytes>;
type MessageReader =
    Box<dyn futures_core::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>;

/// How much request body is kept for replaying a request on a retry, as
/// pingora does for HTTP/1 and HTTP/2 downstreams.
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// The body of a request, as far as it is known.
#[derive(Debug)]
pub(crate) enum FirstRead {
    /// The stream ended right after the head: no body.
    Empty,
    /// The first piece of body arrived (more may follow).
    Data(Bytes),
    /// Not known yet: a body is declared, or nothing arrived in time.
    Unknown,
}

pub(crate) struct H3Session {
    req: RequestHeader,
    send: SendHalf,
    recv: RecvHalf,
    /// Body read ahead to learn whether there is one at all.
    pending: Option<Bytes>,
    /// The client ended the request stream.
    body_done: bool,
    /// The request declared or showed an empty body.
    body_empty: bool,
    body_read: usize,
    body_sent: usize,
    retry_buffer: Option<BytesMut>,
    retry_truncated: bool,
    response: Option<Box<ResponseHeader>>,
    /// The response stream was finished or reset.
    ended: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
}

impl H3Session {
    pub(crate) fn new(
        req: RequestHeader,
        (send, recv): (SendHalf, RecvHalf),
        first: FirstRead,
        client: std::net::SocketAddr,
        server: Option<std::net::SocketAddr>,
    ) -> Self {
        let declared_empty = req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        let (pending, body_done, body_empty) = match first {
            FirstRead::Empty => (None, true, true),
            FirstRead::Data(b) => (Some(b), false, false),
            FirstRead::Unknown => (None, false, declared_empty),
        };
        Self {
            req,
            send,
            recv,
            pending,
            body_done,
            body_empty,
            body_read: 0,
            body_sent: 0,
            retry_buffer: None,
            retry_truncated: false,
            response: None,
            ended: false,
            read_timeout: None,
            write_timeout: None,
            drain_timeout: None,
            client: Some(SocketAddr::Inet(client)),
            server: server.map(SocketAddr::Inet),
        }
    }

    fn account_read(&mut self, data: &Bytes) {
        self.body_read += data.len();
        if let Some(buf) = self.retry_buffer.as_mut() {
            if buf.len() + data.len() <= RETRY_BUFFER_LIMIT {
                buf.extend_from_slice(data);
            } else {
                self.retry_truncated = true;
            }
        }
    }

    async fn read_more(&mut self) -> Result<Option<Bytes>> {
        if let Some(data) = self.pending.take() {
            self.account_read(&data);
            return Ok(Some(data));
        }
        if self.body_done {
            return Ok(None);
        }
        let next = self.recv.recv_data();
        let got = match self.read_timeout {
            Some(t) => tokio::time::timeout(t, next)
                .await
                .or_err(ErrorType::ReadTimedout, "reading an HTTP/3 request body")?,
            None => next.await,
        };
        match got.or_err(ErrorType::ReadError, "reading an HTTP/3 request body")? {
            Some(mut buf) => {
                let data = buf.copy_to_bytes(buf.remaining());
                self.account_read(&data);
                Ok(Some(data))
            }
            None => {
                self.body_done = true;
                Ok(None)
            }
        }
    }

    async fn send_head(&mut self, mut head: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.ended || self.response.is_some() {
            return Ok(());
        }
        // HTTP/3 has a single response head; interim 1xx answers are
        // dropped, as pingora does for HTTP/2.
        if head.status.is_informational() {
            return Ok(());
        }
        for name in CONNECTION_HEADERS {
            head.remove_header(&HeaderName::from_static(name));
        }
        let resp = Response::from_parts(head.as_owned_parts(), ());
        let t = self.write_timeout;
        deadline(
            t,
            self.send.send_response(resp),
            "writing an HTTP/3 response head",
        )
        .await?;
        self.response = Some(head);
        if end {
            self.end_stream().await?;
        }
        Ok(())
    }

    async fn send_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if self.response.is_none() {
            return Error::e_explain(ErrorType::WriteError, "HTTP/3 body before its head");
        }
        if !data.is_empty() {
            let n = data.len();
            let t = self.write_timeout;
            deadline(
                t,
                self.send.send_data(data),
                "writing an HTTP/3 response body",
            )
            .await?;
            self.body_sent += n;
        }
        if end {
            self.end_stream().await?;
        }
        Ok(())
    }

    async fn send_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        if self.ended || self.response.is_none() {
            return Ok(());
        }
        let t = self.write_timeout;
        deadline(
            t,
            self.send.send_trailers(trailers),
            "writing HTTP/3 trailers",
        )
        .await?;
        self.end_stream().await
    }

    async fn end_stream(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        let t = self.write_timeout;
        deadline(t, self.send.finish(), "finishing an HTTP/3 response").await
    }

    /// Resets the response so the client cannot take a cut-short answer
    /// for a whole one.
    fn reset(&mut self, code: Code) {
        if !self.ended {
            self.ended = true;
            self.send.stop_stream(code);
        }
    }
}

/// Runs one write of the response, failing it after `timeout`.
async fn deadline<F>(timeout: Option<Duration>, f: F, what: &'static str) -> Result<()>
where
    F: std::future::Future<Output = std::result::Result<(), h3::error::StreamError>>,
{
    let done = match timeout {
        Some(t) => tokio::time::timeout(t, f)
            .await
            .or_err(ErrorType::WriteTimedout, what)?,
        None => f.await,
    };
    done.or_err(ErrorType::WriteError, what)
}

impl Drop for H3Session {
    fn drop(&mut self) {
        // quinn finishes a dropped send stream cleanly; a response that
        // was never ended must be reset instead.
        self.reset(Code::H3_INTERNAL_ERROR);
        if !self.body_done {
            // Answered before the whole request body arrived (RFC 9114
            // §4.1): tell the client to stop sending.
            self.recv.stop_sending(Code::H3_NO_ERROR);
        }
    }
}

#[async_trait]
impl CustomSession for H3Session {
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.req
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        self.read_more().await
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        let limit = self.drain_timeout;
        let drain = async {
            while self.read_more().await?.is_some() {}
            Ok(())
        };
        match limit {
            Some(t) => tokio::time::timeout(t, drain)
                .await
                .or_err(ErrorType::ReadTimedout, "draining an HTTP/3 request body")?,
            None => drain.await,
        }
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.send_head(resp, end).await
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.send_head(Box::new(resp.clone()), end).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.send_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        self.send_trailers(trailers).await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut end_stream = false;
        for task in tasks {
            let end = match task {
                HttpTask::Header(head, end) => {
                    self.send_head(head, end).await.map_err(|e| e.into_down())?;
                    end
                }
                HttpTask::Body(data, end) => {
                    if let Some(d) = data {
                        self.send_body(d, end).await.map_err(|e| e.into_down())?;
                    }
                    end
                }
                HttpTask::UpgradedBody(..) => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "an upgraded HTTP/1.1 body cannot be sent over HTTP/3",
                    );
                }
                HttpTask::Trailer(Some(trailers)) => {
                    self.send_trailers(*trailers)
                        .await
                        .map_err(|e| e.into_down())?;
                    true
                }
                HttpTask::Trailer(None) | HttpTask::Done => true,
                HttpTask::Failed(e) => return Err(e),
            };
            end_stream = end_stream || end;
        }
        if end_stream {
            self.end_stream().await.map_err(|e| e.into_down())?;
        }
        Ok(end_stream)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.drain_timeout = timeout;
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    fn request_summary(&self) -> String {
        format!(
            "{} {}, Host: {}",
            self.req.method,
            self.req.uri.path_and_query().map_or("/", |p| p.as_str()),
            self.req.uri.authority().map_or("", |a| a.as_str()),
        )
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.response.as_deref()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.reset(Code::H3_INTERNAL_ERROR);
    }

    async fn abandon(&mut self, _ctx: &str) {
        self.reset(Code::H3_INTERNAL_ERROR);
    }

    fn is_body_done(&mut self) -> bool {
        self.body_empty || (self.body_done && self.pending.is_none())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.response.is_some() {
            self.end_stream().await
        } else {
            // Nothing was answered: the drop resets the stream.
            Ok(())
        }
    }

    fn is_body_empty(&mut self) -> bool {
        self.body_empty
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if no_body_expected || self.is_body_done() {
            // A finished request stream has nothing more to say; a client
            // that goes away shows up as a failed write instead.
            std::future::pending::<()>().await;
        }
        self.read_more().await
    }

    fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }

    fn body_bytes_read(&self) -> usize {
        self.body_read
    }

    fn digest(&self) -> Option<&Digest> {
        None
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        None
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.client.as_ref()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.server.as_ref()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.extend_from_slice(self.req.method.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(self.req.raw_path());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &self.req.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.freeze()
    }

    fn enable_retry_buffering(&mut self) {
        if self.retry_buffer.is_none() {
            self.retry_buffer = Some(BytesMut::new());
        }
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.retry_truncated
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        if self.retry_truncated {
            return None;
        }
        self.retry_buffer
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| Bytes::copy_from_slice(b))
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(&mut self) -> Option<MessageReader> {
        None
    }

    fn restore_custom_message_reader(&mut self, _reader: MessageReader) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}
