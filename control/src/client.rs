//! The sidecar's side of the control-plane connection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use crate::frame::{ClientFrame, FrameError, FrameReader, ServerFrame, write_frame};
use crate::{DEFAULT_CONTROL_PLANE_ADDRESS, random};

/// How long connecting, the TLS handshake, the answer to a join and each
/// write may take before the connection counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest heartbeat interval the client follows, whatever the
/// control plane says, so that a zero cannot make it spin.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// The shortest wait before a renewal, so that a certificate that arrives
/// already past half of its life (tiny lifetimes, clock skew) causes one
/// renewal a second rather than a storm.
const MIN_RENEW_WAIT: Duration = Duration::from_secs(1);

/// Makes a new private key and a CSR for it.
pub type KeyGenerator = Arc<dyn Fn() -> Result<NewKey, String> + Send + Sync>;

/// How a sidecar reaches and joins the control plane.
#[derive(Clone)]
pub struct ClientOptions {
    /// The control plane's `host:port`. Default `127.0.0.1:15012`.
    pub address: String,
    /// The DNS name the control plane's certificate must carry.
    pub server_name: String,
    /// TLS settings, with the roots that the control plane's certificate is
    /// verified against.
    pub tls: Arc<rustls::ClientConfig>,
    /// The join token; `None` for a control plane that admits loopback
    /// peers without one. Default none.
    pub join_token: Option<String>,
    /// The `discovery = "mesh"` service this instance belongs to.
    pub service: String,
    /// This instance's labels (e.g. `version = "v2"`). Default none.
    pub labels: BTreeMap<String, String>,
    /// Where peers reach this instance's inbound listener.
    pub address_for_peers: SocketAddr,
    /// The first reconnect delay. Default 100 ms.
    pub backoff_min: Duration,
    /// The longest reconnect delay. Default 5 s.
    pub backoff_max: Duration,
}

impl ClientOptions {
    /// Options with every default: the default address, no token, no
    /// labels, backoff from 100 ms to 5 s.
    pub fn new(
        server_name: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
        service: impl Into<String>,
        address_for_peers: SocketAddr,
    ) -> Self {
        Self {
            address: DEFAULT_CONTROL_PLANE_ADDRESS.to_owned(),
            server_name: server_name.into(),
            tls,
            join_token: None,
            service: service.into(),
            labels: BTreeMap::new(),
            address_for_peers,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("service", &self.service)
            .field("labels", &self.labels)
            .field("address_for_peers", &self.address_for_peers)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .finish_non_exhaustive()
    }
}

/// A fresh private key and a CSR for it, both PEM.
#[derive(Clone)]
pub struct NewKey {
    /// The private key; handed back in [`Event::Certificate`] once a
    /// certificate for it arrives.
    pub key_pem: String,
    /// The certificate signing request sent to the control plane.
    pub csr_pem: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// What the client reports to the sidecar.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// The control plane accepted the join.
    Connected {
        /// The identity (SPIFFE ID) this instance's certificates carry.
        identity: String,
    },
    /// A certificate to serve and call with, and the key it was issued for.
    /// Also sent again, same key and chain, when the trust bundle changes.
    Certificate {
        /// The private key whose CSR this certificate was signed from.
        key_pem: String,
        /// The leaf certificate, then any intermediates.
        chain_pem: String,
        /// The roots to verify peers against.
        trust_bundle_pem: String,
        /// Validity start.
        not_before: SystemTime,
        /// Validity end.
        not_after: SystemTime,
    },
    /// A new sidecar config.
    Config {
        /// Changes when the control plane restarts (and `version` with it).
        epoch: u64,
        /// Grows with every change within one epoch.
        version: u64,
        /// The config, TOML.
        config: String,
    },
    /// The connection ended or could not be made; the client retries.
    Disconnected {
        /// Why, including the control plane's own message if it refused.
        error: String,
    },
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected { identity } => f
                .debug_struct("Connected")
                .field("identity", identity)
                .finish(),
            Self::Certificate {
                chain_pem,
                not_before,
                not_after,
                ..
            } => f
                .debug_struct("Certificate")
                .field("key_pem", &"<redacted>")
                .field("chain_pem", &format_args!("<{} bytes>", chain_pem.len()))
                .field("not_before", not_before)
                .field("not_after", not_after)
                .finish_non_exhaustive(),
            Self::Config {
                epoch,
                version,
                config,
            } => f
                .debug_struct("Config")
                .field("epoch", epoch)
                .field("version", version)
                .field("config", &format_args!("<{} bytes>", config.len()))
                .finish(),
            Self::Disconnected { error } => f
                .debug_struct("Disconnected")
                .field("error", error)
                .finish(),
        }
    }
}

/// Keeps a sidecar joined to the control plane.
///
/// Connects, joins with a fresh key from `new_key`, and forwards what the
/// control plane sends to `events`: [`Event::Connected`] once joined, then
/// [`Event::Certificate`] and [`Event::Config`]. Sends a heartbeat every
/// interval the control plane asks for, and at half of a certificate's
/// lifetime asks for a new one for a fresh key. On any failure, a refused
/// join included (the control plane's message is logged and reported), it
/// reports [`Event::Disconnected`] and connects again after an exponential
/// backoff with jitter between `backoff_min` and `backoff_max`; the backoff
/// starts over after each successful join.
///
/// Runs until `events` has no receiver. Drain `events` promptly: while an
/// event waits for room, heartbeats wait too.
pub async fn run_client(opts: ClientOptions, new_key: KeyGenerator, events: mpsc::Sender<Event>) {
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    loop {
        let mut joined = false;
        let error = match session(&opts, &new_key, &events, &mut joined).await {
            Err(error) => error,
            Ok(never) => match never {},
        };
        if matches!(error, ClientError::EventsClosed) {
            debug!("control-plane client stopping: no one receives its events");
            return;
        }
        if joined {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        match &error {
            ClientError::Refused(message) => {
                warn!(address = %opts.address, "the control plane refused this sidecar: {message}; retrying in {wait:?}");
            }
            error => {
                warn!(address = %opts.address, "control-plane connection lost: {error}; retrying in {wait:?}");
            }
        }
        let report = Event::Disconnected {
            error: error.to_string(),
        };
        if events.send(report).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Why one connection to the control plane ended.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("cannot connect to the control plane at {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS handshake with the control plane failed: {0}")]
    Tls(std::io::Error),
    #[error("{what} took longer than {limit:?}")]
    Timeout { what: &'static str, limit: Duration },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the control plane refused: {0}")]
    Refused(String),
    #[error("cannot make a key and CSR: {0}")]
    KeyGen(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("the control plane closed the connection")]
    Closed,
    #[error("no one receives the events")]
    EventsClosed,
}

/// The keys of one connection: the one in use and the one whose CSR is
/// waiting for its certificate.
#[derive(Default)]
struct Keys {
    current: Option<String>,
    chain: Option<String>,
    pending: Option<String>,
}

impl Keys {
    /// The key that `chain_pem` certifies, which becomes the current key.
    fn accept(&mut self, chain_pem: &str) -> Option<String> {
        if self.chain.as_deref() == Some(chain_pem) {
            // The same certificate again, sent for a new trust bundle.
            return self.current.clone();
        }
        let key = self.pending.take()?;
        self.current = Some(key.clone());
        self.chain = Some(chain_pem.to_owned());
        Some(key)
    }
}

/// One connection, from connecting until it fails.
async fn session(
    opts: &ClientOptions,
    new_key: &KeyGenerator,
    events: &mpsc::Sender<Event>,
    joined: &mut bool,
) -> Result<Infallible, ClientError> {
    let tcp = timeout(IO_TIMEOUT, TcpStream::connect(opts.address.as_str()))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "connecting to the control plane",
            limit: IO_TIMEOUT,
        })?
        .map_err(|source| ClientError::Connect {
            address: opts.address.clone(),
            source,
        })?;
    // Heartbeats are tiny and should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(opts.server_name.clone())
        .map_err(|_| ClientError::ServerName(opts.server_name.clone()))?;
    let stream = timeout(
        IO_TIMEOUT,
        TlsConnector::from(Arc::clone(&opts.tls)).connect(name, tcp),
    )
    .await
    .map_err(|_| ClientError::Timeout {
        what: "the TLS handshake with the control plane",
        limit: IO_TIMEOUT,
    })?
    .map_err(ClientError::Tls)?;
    let (read, mut writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read);

    let key = generate(new_key).await?;
    send(
        &mut writer,
        &ClientFrame::Join {
            token: opts.join_token.clone(),
            service: opts.service.clone(),
            labels: opts.labels.clone(),
            address: opts.address_for_peers,
            csr: key.csr_pem,
        },
    )
    .await?;
    let mut keys = Keys {
        pending: Some(key.key_pem),
        ..Keys::default()
    };

    // Until `joined` arrives, the heartbeat timer is the deadline for it.
    let mut heartbeat: Option<Duration> = None;
    let mut next_heartbeat = Instant::now() + IO_TIMEOUT;
    let mut renew_at: Option<Instant> = None;
    loop {
        tokio::select! {
            frame = reader.read_frame::<ServerFrame>() => match frame? {
                None => return Err(ClientError::Closed),
                Some(ServerFrame::Error { message }) => return Err(ClientError::Refused(message)),
                Some(ServerFrame::Joined { identity, heartbeat_interval_ms }) => {
                    if heartbeat.is_some() {
                        return Err(ClientError::Protocol("a second `joined` frame"));
                    }
                    let every = Duration::from_millis(heartbeat_interval_ms).max(MIN_HEARTBEAT);
                    heartbeat = Some(every);
                    next_heartbeat = Instant::now() + every;
                    *joined = true;
                    info!(address = %opts.address, %identity, "joined the control plane");
                    emit(events, Event::Connected { identity }).await?;
                }
                Some(ServerFrame::Certificate { chain_pem, trust_bundle_pem, not_before_unix, not_after_unix }) => {
                    let renewal = keys.chain.as_deref() != Some(chain_pem.as_str());
                    let Some(key_pem) = keys.accept(&chain_pem) else {
                        return Err(ClientError::Protocol("a certificate arrived for no pending request"));
                    };
                    let not_before = UNIX_EPOCH + Duration::from_secs(not_before_unix);
                    let not_after = UNIX_EPOCH + Duration::from_secs(not_after_unix);
                    if renewal {
                        renew_at = Some(renewal_time(not_before, not_after, SystemTime::now()));
                    }
                    emit(events, Event::Certificate { key_pem, chain_pem, trust_bundle_pem, not_before, not_after }).await?;
                }
                Some(ServerFrame::Update { epoch, version, config }) => {
                    debug!(epoch, version, "sidecar config update");
                    emit(events, Event::Config { epoch, version, config }).await?;
                }
            },
            () = tokio::time::sleep_until(next_heartbeat) => {
                let Some(every) = heartbeat else {
                    return Err(ClientError::Timeout { what: "waiting for the answer to the join", limit: IO_TIMEOUT });
                };
                send(&mut writer, &ClientFrame::Heartbeat {}).await?;
                next_heartbeat = Instant::now() + every;
            }
            () = tokio::time::sleep_until(renew_at.unwrap_or(next_heartbeat)), if renew_at.is_some() => {
                renew_at = None;
                let key = generate(new_key).await?;
                debug!("renewing the workload certificate");
                send(&mut writer, &ClientFrame::Renew { csr: key.csr_pem }).await?;
                keys.pending = Some(key.key_pem);
            }
        }
    }
}

/// Runs the caller's key generator off the async threads: RSA key
/// generation, for one, takes long enough to stall them.
async fn generate(new_key: &KeyGenerator) -> Result<NewKey, ClientError> {
    let new_key = Arc::clone(new_key);
    tokio::task::spawn_blocking(move || new_key())
        .await
        .map_err(|e| ClientError::KeyGen(e.to_string()))?
        .map_err(ClientError::KeyGen)
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &ClientFrame,
) -> Result<(), ClientError> {
    timeout(IO_TIMEOUT, write_frame(writer, frame))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "sending to the control plane",
            limit: IO_TIMEOUT,
        })?
        .map_err(ClientError::from)
}

async fn emit(events: &mpsc::Sender<Event>, event: Event) -> Result<(), ClientError> {
    events
        .send(event)
        .await
        .map_err(|_| ClientError::EventsClosed)
}

/// When to renew a certificate valid from `not_before` to `not_after`:
/// at half of the lifetime left from now (or from `not_before`, if that is
/// later), and no sooner than [`MIN_RENEW_WAIT`]. The CA backdates
/// `not_before` for clock skew, so half of the nominal lifetime would come
/// too early, or already be past for short-lived certificates.
fn renewal_time(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Instant {
    let from = now.max(not_before);
    let left = not_after.duration_since(from).unwrap_or_default();
    let wait = (from.duration_since(now).unwrap_or_default() + left / 2).max(MIN_RENEW_WAIT);
    Instant::now() + wait
}

/// Exponential reconnect backoff with jitter.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The next delay: the ceiling doubles from `min` up to `max` with each
    /// failure, and the delay is drawn from the ceiling's upper half, so that
    /// sidecars that lost the control plane together do not all come back
    /// at the same instant.
    fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        random::between((ceiling / 2).max(self.min), ceiling)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], min, "the first delay is the minimum");
        for delay in &delays {
            assert!(*delay >= min && *delay <= max, "{delay:?}");
        }
        assert!(delays[11] >= max / 2, "the ceiling reaches the maximum");
        backoff.reset();
        assert_eq!(backoff.next_delay(), min);

        let mut inverted = Backoff::new(Duration::from_secs(1), Duration::from_millis(1));
        assert_eq!(inverted.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn renewal_is_at_half_life_but_not_too_soon() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let before = Instant::now();
        let at = renewal_time(start, start + Duration::from_secs(3600), start);
        let wait = at - before;
        assert!(
            wait >= Duration::from_secs(1800) && wait < Duration::from_secs(1801),
            "{wait:?}"
        );
        let late = renewal_time(
            start,
            start + Duration::from_secs(2),
            start + Duration::from_secs(5),
        );
        assert!(late - before >= MIN_RENEW_WAIT);
        // Backdated by a minute for clock skew, valid ten seconds more:
        // renew in five seconds, not at once.
        let now = start + Duration::from_secs(60);
        let at = renewal_time(start, now + Duration::from_secs(10), now);
        let wait = at - Instant::now();
        assert!(
            wait > Duration::from_millis(4900) && wait <= Duration::from_secs(5),
            "{wait:?}"
        );
    }

    #[test]
    fn certificates_are_paired_with_the_key_that_asked_for_them() {
        let mut keys = Keys {
            pending: Some("key-1".into()),
            ..Keys::default()
        };
        assert_eq!(keys.accept("chain-1").as_deref(), Some("key-1"));
        // A renewal is in flight when the trust bundle rotates.
        keys.pending = Some("key-2".into());
        assert_eq!(keys.accept("chain-1").as_deref(), Some("key-1"));
        assert_eq!(keys.accept("chain-2").as_deref(), Some("key-2"));
        assert_eq!(keys.accept("chain-3"), None, "no request pending");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let event = Event::Certificate {
            key_pem: "PRIVATE".into(),
            chain_pem: "CHAIN".into(),
            trust_bundle_pem: "ROOTS".into(),
            not_before: UNIX_EPOCH,
            not_after: UNIX_EPOCH,
        };
        assert!(!format!("{event:?}").contains("PRIVATE"));
        let key = NewKey {
            key_pem: "PRIVATE".into(),
            csr_pem: "CSR".into(),
        };
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }
}
