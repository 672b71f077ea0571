//! The wire protocol between a sidecar and the control plane.
//!
//! One JSON object per line (`\n`), each at most [`MAX_FRAME_BYTES`], with
//! its kind in a `type` field:
//!
//! ```text
//! sidecar → control plane                 control plane → sidecar
//! {"type":"join","token":…,"service":…,   {"type":"joined","identity":…,"heartbeat_interval_ms":…}
//!  "labels":{…},"address":"ip:port",      {"type":"certificate","chain_pem":…,"trust_bundle_pem":…,
//!  "csr":"-----BEGIN…"}                     "not_before_unix":…,"not_after_unix":…}
//! {"type":"heartbeat"}                    {"type":"update","epoch":…,"version":…,"config":"…"}
//! {"type":"renew","csr":…}                {"type":"error","message":…}   (then the server closes)
//! ```
//!
//! `join` comes first, then `heartbeat` every interval and `renew` when the
//! sidecar wants a fresh certificate. The server answers a join with
//! `joined`, `certificate` and `update`, sends `certificate` again after each
//! renew (and when the trust bundle rotates), and `update` whenever the
//! sidecar config changes.
//!
//! Unknown fields are ignored rather than refused, so that either side can
//! add a field without breaking the other during a rolling upgrade; unknown
//! frame types are refused, since their meaning cannot be guessed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The longest frame either side accepts, newline excluded. A longer line is
/// a protocol error: the reader never buffers more than this.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// A frame from a sidecar to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientFrame {
    /// The first frame: who this instance is, and a CSR for its certificate.
    Join {
        /// The shared join token; `None` where the control plane admits
        /// loopback peers without one.
        token: Option<String>,
        /// The service this instance belongs to (a `discovery = "mesh"`
        /// service of the config).
        service: String,
        /// The instance's labels (e.g. `version = "v2"`), used by subsets.
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// Where peers reach this instance's inbound listener.
        address: SocketAddr,
        /// A PEM certificate signing request for the instance's new key.
        csr: String,
    },
    /// "Still here"; sent every heartbeat interval.
    Heartbeat {},
    /// A request for a fresh certificate for a new key.
    Renew {
        /// A PEM certificate signing request.
        csr: String,
    },
}

impl ClientFrame {
    /// The frame's `type`, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Heartbeat {} => "heartbeat",
            Self::Renew { .. } => "renew",
        }
    }
}

/// A frame from the control plane to a sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame {
    /// The join was accepted.
    Joined {
        /// The identity (SPIFFE ID) the instance's certificate carries.
        identity: String,
        /// How often the sidecar must send `heartbeat`, in milliseconds.
        heartbeat_interval_ms: u64,
    },
    /// A certificate signed from the sidecar's latest CSR, or the current
    /// one again with a new trust bundle.
    Certificate {
        /// The leaf certificate (then any intermediates), PEM.
        chain_pem: String,
        /// The roots peers' certificates are verified against, PEM.
        trust_bundle_pem: String,
        /// Validity start, seconds since the Unix epoch.
        not_before_unix: u64,
        /// Validity end, seconds since the Unix epoch.
        not_after_unix: u64,
    },
    /// The config the sidecar runs with.
    Update {
        /// Random per control-plane process start: a new epoch means the
        /// control plane restarted and `version` started again.
        epoch: u64,
        /// Grows with every change within one epoch.
        version: u64,
        /// The sidecar config, TOML.
        config: String,
    },
    /// Why the control plane is closing the connection.
    Error {
        /// A human-readable reason.
        message: String,
    },
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame longer than the {limit}-byte limit")]
    TooLong { limit: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("malformed frame: {0}")]
    Malformed(serde_json::Error),
}

/// Reads frames one line at a time from a byte stream.
///
/// Cancel-safe: bytes taken from the stream are kept in `self` until their
/// line is complete, so `read_frame` can sit in a `select!` next to timers.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner: BufReader::new(inner),
            line: Vec::new(),
        }
    }

    /// The next frame, or `None` when the peer closed cleanly between
    /// frames. Blank lines are skipped.
    pub(crate) async fn read_frame<T: DeserializeOwned>(
        &mut self,
    ) -> Result<Option<T>, FrameError> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return if self.line.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            let (chunk, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(end) => (&available[..end], true),
                None => (available, false),
            };
            if self.line.len() + chunk.len() > MAX_FRAME_BYTES {
                return Err(FrameError::TooLong {
                    limit: MAX_FRAME_BYTES,
                });
            }
            self.line.extend_from_slice(chunk);
            let used = chunk.len() + usize::from(complete);
            self.inner.consume(used);
            if !complete {
                continue;
            }
            let line = std::mem::take(&mut self.line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&line)
                .map(Some)
                .map_err(FrameError::Malformed);
        }
    }
}

/// Writes one frame and flushes it.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    out: &mut W,
    frame: &T,
) -> Result<(), FrameError> {
    let mut bytes = serde_json::to_vec(frame).map_err(FrameError::Malformed)?;
    // Refuse to send what the peer would refuse to read: it would only
    // close the connection, and then we would send it again.
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLong {
            limit: MAX_FRAME_BYTES,
        });
    }
    bytes.push(b'\n');
    out.write_all(&bytes).await?;
    out.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all<T: DeserializeOwned>(input: &[u8]) -> Vec<Result<Option<T>, String>> {
        let mut reader = FrameReader::new(input);
        let mut out = Vec::new();
        loop {
            let next = reader.read_frame::<T>().await;
            let stop = !matches!(next, Ok(Some(_)));
            out.push(next.map_err(|e| e.to_string()));
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn frames_round_trip_in_the_documented_shape() {
        let mut buf = Vec::new();
        let join = ClientFrame::Join {
            token: Some("t".into()),
            service: "product-catalog".into(),
            labels: BTreeMap::from([("version".into(), "v2".into())]),
            address: "127.0.0.1:9104".parse().expect("address"),
            csr: "CSR".into(),
        };
        write_frame(&mut buf, &join).await.expect("write");
        write_frame(&mut buf, &ClientFrame::Heartbeat {})
            .await
            .expect("write");
        let text = String::from_utf8(buf.clone()).expect("utf-8");
        assert_eq!(
            text,
            "{\"type\":\"join\",\"token\":\"t\",\"service\":\"product-catalog\",\
             \"labels\":{\"version\":\"v2\"},\"address\":\"127.0.0.1:9104\",\"csr\":\"CSR\"}\n\
             {\"type\":\"heartbeat\"}\n"
        );
        let frames = read_all::<ClientFrame>(&buf).await;
        assert_eq!(
            frames,
            vec![
                Ok(Some(join)),
                Ok(Some(ClientFrame::Heartbeat {})),
                Ok(None)
            ]
        );
    }

    #[tokio::test]
    async fn unknown_fields_are_ignored_and_blank_lines_skipped() {
        let input = b"\n{\"type\":\"heartbeat\",\"from_the_future\":1}\r\n\n{\"type\":\"renew\",\"csr\":\"x\"}\n";
        let frames = read_all::<ClientFrame>(input).await;
        assert_eq!(
            frames,
            vec![
                Ok(Some(ClientFrame::Heartbeat {})),
                Ok(Some(ClientFrame::Renew { csr: "x".into() })),
                Ok(None)
            ]
        );
    }

    #[tokio::test]
    async fn garbage_is_a_malformed_frame() {
        for input in [
            &b"not json\n"[..],
            b"{\"type\":\"launch-missiles\"}\n",
            b"{\"type\":\"renew\"}\n",
            b"[1,2,3]\n",
        ] {
            let mut reader = FrameReader::new(input);
            let err = reader
                .read_frame::<ClientFrame>()
                .await
                .expect_err("garbage must not parse");
            assert!(matches!(err, FrameError::Malformed(_)), "{err}");
            assert!(err.to_string().starts_with("malformed frame: "), "{err}");
        }
    }

    #[tokio::test]
    async fn an_oversized_line_is_refused_before_it_is_buffered() {
        // A line that never ends: the reader must give up at the limit
        // instead of waiting for a newline that may never come.
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = 0;
            while sent <= 2 * MAX_FRAME_BYTES {
                if tx.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
        });
        let mut reader = FrameReader::new(rx);
        let err = reader
            .read_frame::<ClientFrame>()
            .await
            .expect_err("oversized");
        assert!(matches!(err, FrameError::TooLong { .. }), "{err}");
        assert!(reader.line.len() <= MAX_FRAME_BYTES);
        drop(reader);
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_accepted() {
        let csr = "x".repeat(MAX_FRAME_BYTES - r#"{"type":"renew","csr":""}"#.len());
        let mut buf = Vec::new();
        write_frame(&mut buf, &ClientFrame::Renew { csr: csr.clone() })
            .await
            .expect("write at the limit");
        assert_eq!(buf.len(), MAX_FRAME_BYTES + 1);
        let mut reader = FrameReader::new(&buf[..]);
        assert_eq!(
            reader.read_frame::<ClientFrame>().await.expect("read"),
            Some(ClientFrame::Renew { csr })
        );

        let mut big = Vec::new();
        let err = write_frame(
            &mut big,
            &ClientFrame::Renew {
                csr: "x".repeat(MAX_FRAME_BYTES),
            },
        )
        .await
        .expect_err("over the limit");
        assert!(matches!(err, FrameError::TooLong { .. }));
        assert!(big.is_empty(), "nothing is sent");
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_truncation() {
        let mut reader = FrameReader::new(&b"{\"type\":\"heart"[..]);
        let err = reader
            .read_frame::<ClientFrame>()
            .await
            .expect_err("truncated");
        assert!(matches!(err, FrameError::Truncated), "{err}");
    }

    #[test]
    fn server_frames_use_kebab_case_tags() {
        let frame = ServerFrame::Joined {
            identity: "spiffe://x/service/y".into(),
            heartbeat_interval_ms: 2000,
        };
        let json = serde_json::to_string(&frame).expect("json");
        assert!(json.starts_with("{\"type\":\"joined\""), "{json}");
        let error = serde_json::to_string(&ServerFrame::Error {
            message: "no".into(),
        })
        .expect("json");
        assert_eq!(error, "{\"type\":\"error\",\"message\":\"no\"}");
    }
}
