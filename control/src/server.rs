//! The control-plane server: admission, the registry, and pushing
//! certificates and config to every joined sidecar.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use toml::Table;
use tracing::{debug, error, info, warn};

use crate::frame::{ClientFrame, FrameError, FrameReader, ServerFrame, write_frame};
use crate::registry::{self, Instance};
use crate::render::{header, mesh_services, render_body};
use crate::{ControlError, random};

/// How long a new connection may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to pause after `accept` fails (typically out of file
/// descriptors), so that the loop does not spin while it cannot accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The mesh certificate authority, as the control plane sees it.
pub trait Signer: Send + Sync + 'static {
    /// Issues a certificate for an instance of `service` from its PEM CSR.
    /// The signer decides the identity (a SPIFFE ID) and the validity; an
    /// error is a message the sidecar will be shown.
    fn sign(&self, service: &str, csr_pem: &str) -> Result<SignedCert, String>;
    /// The PEM roots that workload certificates are verified against.
    fn trust_bundle_pem(&self) -> String;
}

/// A certificate the [`Signer`] issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCert {
    /// The identity (SPIFFE ID) the certificate names.
    pub identity: String,
    /// The leaf certificate, then any intermediates, PEM.
    pub chain_pem: String,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
}

/// How the control plane admits and watches sidecars.
#[derive(Clone)]
pub struct ServerOptions {
    /// The token every join must carry, compared in constant time. `None`:
    /// only loopback peers may join (default).
    pub join_token: Option<String>,
    /// How often sidecars send a heartbeat. Default 2 s.
    pub heartbeat_interval: Duration,
    /// How long an instance may stay silent before it is removed. Default
    /// three heartbeat intervals (6 s).
    pub heartbeat_timeout: Duration,
    /// Where the registry is saved across restarts. Default none.
    pub state_file: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let heartbeat_interval = Duration::from_secs(2);
        Self {
            join_token: None,
            heartbeat_interval,
            heartbeat_timeout: heartbeat_interval * 3,
            state_file: None,
        }
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("state_file", &self.state_file)
            .finish()
    }
}

/// The control-plane server. See the crate documentation.
pub struct ControlPlane {
    signer: Arc<dyn Signer>,
    opts: ServerOptions,
    epoch: u64,
    /// When the registry was loaded: loaded instances count as seen then.
    started: Instant,
    state: Mutex<State>,
    /// Bumped on every registry or rendered-config change.
    changes: watch::Sender<u64>,
    /// The latest sidecar config; every connection pushes it when it moves.
    updates: watch::Sender<Option<Arc<Update>>>,
    /// Bumped when the trust bundle rotates.
    trust: watch::Sender<u64>,
    next_connection: AtomicU64,
    /// Whether a `serve` call has started expiry and saving.
    background_started: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// The operator's config, once set.
    config: Option<Table>,
    /// The services whose sidecars may join.
    mesh_services: BTreeSet<String>,
    instances: BTreeMap<(String, SocketAddr), Entry>,
    /// The last rendered sidecar config (without its header), to tell
    /// whether a change needs a new version.
    body: Option<String>,
    version: u64,
}

#[derive(Debug)]
struct Entry {
    instance: Instance,
    /// The connection that registered it; `None` for an instance loaded
    /// from the state file that has not reconnected yet.
    owner: Option<u64>,
}

#[derive(Debug)]
struct Update {
    version: u64,
    config: String,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("ControlPlane")
            .field("epoch", &self.epoch)
            .field("opts", &self.opts)
            .field("version", &state.version)
            .field("instances", &state.instances.len())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// A control plane with no config yet (every join is refused until
    /// [`set_config`](Self::set_config)) and the registry from
    /// `opts.state_file`, if any. An unreadable state file is logged and
    /// ignored: starting empty is better than not starting.
    pub fn new(signer: Arc<dyn Signer>, opts: ServerOptions) -> Arc<Self> {
        if opts.heartbeat_timeout <= opts.heartbeat_interval {
            warn!(
                "the heartbeat timeout ({:?}) is not longer than the heartbeat interval ({:?}): \
                 healthy sidecars will be dropped; make it about three intervals",
                opts.heartbeat_timeout, opts.heartbeat_interval
            );
        }
        let loaded = match &opts.state_file {
            Some(path) => registry::load(path).unwrap_or_else(|e| {
                warn!("{e}; starting with an empty registry");
                Vec::new()
            }),
            None => Vec::new(),
        };
        if !loaded.is_empty() {
            info!(
                instances = loaded.len(),
                "loaded the registry; instances that do not reconnect within {:?} will be removed",
                opts.heartbeat_timeout
            );
        }
        let instances = loaded
            .into_iter()
            .map(|instance| {
                let key = (instance.service.clone(), instance.address);
                (
                    key,
                    Entry {
                        instance,
                        owner: None,
                    },
                )
            })
            .collect();
        Arc::new(Self {
            signer,
            opts,
            epoch: random::random_u64(),
            started: Instant::now(),
            state: Mutex::new(State {
                config: None,
                mesh_services: BTreeSet::new(),
                instances,
                body: None,
                version: 0,
            }),
            changes: watch::Sender::new(0),
            updates: watch::Sender::new(None),
            trust: watch::Sender::new(0),
            next_connection: AtomicU64::new(1),
            background_started: AtomicBool::new(false),
        })
    }

    /// Takes the operator's whole TOML config and, if the sidecar config
    /// rendered from it changed, pushes the new one to every sidecar. On
    /// error the previous config stays in force.
    ///
    /// Only the keys the control plane reads are checked here; validate the
    /// file with `meshgate-config` first. Instances of a service that stops
    /// being a mesh service stay registered until they disconnect, but are
    /// no longer rendered; new joins for it are refused.
    pub fn set_config(&self, source_toml: &str) -> Result<(), ControlError> {
        let config: Table = source_toml.parse()?;
        let services = mesh_services(&config)?;
        let mut state = self.lock();
        let body = render_body(&config, &state.instance_list())?;
        state.config = Some(config);
        state.mesh_services = services;
        if self.publish(&mut state, body) {
            self.bump_changes();
        }
        Ok(())
    }

    /// Accepts sidecar connections on `listener` forever, one task per
    /// connection.
    ///
    /// Every task it starts belongs to this future: dropping it (aborting
    /// the task that runs it) closes every sidecar connection too. The first
    /// call also expires loaded instances that do not come back and saves
    /// the registry to the state file; further calls (more listeners) only
    /// accept connections.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = TlsAcceptor::from(tls);
        let mut tasks = JoinSet::new();
        // One expiry and one writer of the state file per control plane,
        // even when several listeners are served.
        if !self.background_started.swap(true, Ordering::AcqRel) {
            tasks.spawn(self.clone().expire_loaded());
            if let Some(path) = self.opts.state_file.clone() {
                tasks.spawn(self.clone().persist(path));
            }
        }
        if let Ok(local) = listener.local_addr() {
            info!(address = %local, epoch = self.epoch, "control plane listening");
        }
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(self.clone().connection(acceptor.clone(), tcp, peer, id));
                    }
                    Err(e) => {
                        warn!("cannot accept a control-plane connection: {e}");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
                Some(done) = tasks.join_next() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        error!("a control-plane task panicked: {e}");
                    }
                }
            }
        }
    }

    /// The live registry, ordered by service then address.
    pub fn instances(&self) -> Vec<Instance> {
        self.lock().instance_list()
    }

    /// A receiver whose value changes whenever the registry or the rendered
    /// sidecar config changes; re-read [`instances`](Self::instances) then.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Sends every joined sidecar its current certificate again with the
    /// signer's new trust bundle (after a root rotation).
    pub fn trust_bundle_changed(&self) {
        self.trust.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// This process's epoch, as sent in every `update`.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (every change
        // is one insert or remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump_changes(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes `body` the current sidecar config if it differs from the last
    /// one; returns whether it did.
    fn publish(&self, state: &mut State, body: String) -> bool {
        if state.body.as_deref() == Some(body.as_str()) {
            return false;
        }
        state.version += 1;
        let config = format!("{}{body}", header(Some((state.version, self.epoch))));
        state.body = Some(body);
        self.updates.send_replace(Some(Arc::new(Update {
            version: state.version,
            config,
        })));
        true
    }

    /// Re-renders after the registry changed, and tells watchers.
    fn registry_changed(&self, state: &mut State) {
        if let Some(config) = &state.config {
            match render_body(config, &state.instance_list()) {
                Ok(body) => {
                    self.publish(state, body);
                }
                // Cannot happen for a config that rendered before; keep
                // the last good one if it does.
                Err(e) => error!("cannot render the sidecar config: {e}"),
            }
        }
        self.bump_changes();
    }

    fn register(&self, instance: Instance, connection: u64) {
        let mut state = self.lock();
        let key = (instance.service.clone(), instance.address);
        state.instances.insert(
            key,
            Entry {
                instance,
                owner: Some(connection),
            },
        );
        self.registry_changed(&mut state);
    }

    /// Removes the instance at `key` if `connection` still owns it: a
    /// sidecar that reconnected has replaced it with a newer entry.
    fn deregister(&self, key: &(String, SocketAddr), connection: u64) {
        let mut state = self.lock();
        if state.instances.get(key).and_then(|e| e.owner) == Some(connection) {
            state.instances.remove(key);
            self.registry_changed(&mut state);
        }
    }

    /// Removes the loaded instances that did not reconnect within one
    /// heartbeat timeout of the start.
    async fn expire_loaded(self: Arc<Self>) {
        tokio::time::sleep_until(self.started + self.opts.heartbeat_timeout).await;
        let mut state = self.lock();
        let before = state.instances.len();
        state.instances.retain(|_, entry| entry.owner.is_some());
        let removed = before - state.instances.len();
        if removed > 0 {
            info!(
                removed,
                "removed instances from the saved registry that did not reconnect"
            );
            self.registry_changed(&mut state);
        }
    }

    /// Saves the registry whenever it changes. Writes happen one at a time
    /// in this task, so the file always ends up with the latest registry.
    async fn persist(self: Arc<Self>, path: PathBuf) {
        let mut changes = self.changes.subscribe();
        let mut saved = self.instances();
        while changes.changed().await.is_ok() {
            let current = self.instances();
            if current == saved {
                continue;
            }
            let (file, snapshot) = (path.clone(), current.clone());
            match tokio::task::spawn_blocking(move || registry::save(&file, &snapshot)).await {
                Ok(Ok(())) => saved = current,
                // Left unsaved, it is tried again at the next change.
                Ok(Err(e)) => warn!("{e}"),
                Err(e) => warn!("saving the registry failed: {e}"),
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        acceptor: TlsAcceptor,
        tcp: TcpStream,
        peer: SocketAddr,
        id: u64,
    ) {
        // Frames are small and pushes should arrive at once.
        let _ = tcp.set_nodelay(true);
        let stream = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                debug!(%peer, "control-plane TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!(%peer, "control-plane TLS handshake took longer than {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let (read, write) = tokio::io::split(stream);
        let mut session = Session {
            plane: &self,
            id,
            peer,
            reader: FrameReader::new(read),
            writer: write,
            registered: None,
            certificate: None,
            sent_version: 0,
        };
        let outcome = session.run().await;
        match &outcome {
            Ok(()) => debug!(%peer, "sidecar disconnected"),
            Err(e) => {
                info!(%peer, "closing a sidecar connection: {e}");
                if e.tell_peer() {
                    let message = e.to_string();
                    let _ = session.send(&ServerFrame::Error { message }).await;
                }
            }
        }
        let _ = timeout(self.opts.heartbeat_timeout, session.writer.shutdown()).await;
        if let Some(key) = session.registered.take() {
            self.deregister(&key, id);
        }
    }
}

impl State {
    fn instance_list(&self) -> Vec<Instance> {
        self.instances
            .values()
            .map(|entry| entry.instance.clone())
            .collect()
    }
}

/// Why a sidecar connection was closed.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("expected a join frame first, got {0}")]
    NotJoin(&'static str),
    #[error("no join frame within {0:?} of connecting")]
    NoJoin(Duration),
    #[error("the join token is wrong")]
    BadToken,
    #[error("the control plane's join token is empty, so it admits no one; set a non-empty token")]
    EmptyToken,
    #[error(
        "this control plane has no join token configured, so only loopback peers may join, \
         and {0} is not loopback; configure a join token to admit remote sidecars"
    )]
    LoopbackOnly(SocketAddr),
    #[error("the control plane has no config yet; try again shortly")]
    NoConfig,
    #[error(
        "service `{0}` is not a mesh service: the config needs a [[service]] named `{0}` \
         with discovery = \"mesh\""
    )]
    UnknownService(String),
    #[error("cannot issue a certificate for service `{service}`: {message}")]
    Sign { service: String, message: String },
    #[error("a second join on one connection; reconnect to join again")]
    JoinedTwice,
    #[error("nothing received for {0:?} (the heartbeat timeout)")]
    Silent(Duration),
    #[error("the sidecar took longer than {0:?} to take a frame")]
    WriteTimeout(Duration),
}

impl SessionError {
    /// Whether the sidecar can still be told why: not when the connection
    /// itself is what failed.
    fn tell_peer(&self) -> bool {
        !matches!(
            self,
            Self::Frame(FrameError::Io(_) | FrameError::Truncated) | Self::WriteTimeout(_)
        )
    }
}

/// Decides whether a join may proceed.
fn admit(
    expected: Option<&str>,
    peer: SocketAddr,
    offered: Option<&str>,
) -> Result<(), SessionError> {
    match expected {
        Some("") => Err(SessionError::EmptyToken),
        // Constant time, so that response timing does not reveal how much
        // of a guessed token was right. (The length can still leak.)
        Some(expected) => match bool::from(
            offered
                .unwrap_or_default()
                .as_bytes()
                .ct_eq(expected.as_bytes()),
        ) {
            true => Ok(()),
            false => Err(SessionError::BadToken),
        },
        // Secure by default: without a token, only this host's sidecars.
        None if peer.ip().to_canonical().is_loopback() => Ok(()),
        None => Err(SessionError::LoopbackOnly(peer)),
    }
}

/// One sidecar connection.
struct Session<'a> {
    plane: &'a ControlPlane,
    id: u64,
    peer: SocketAddr,
    reader: FrameReader<ReadHalf<TlsStream<TcpStream>>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
    /// The registry key this connection registered, for removal at the end.
    registered: Option<(String, SocketAddr)>,
    /// The last certificate sent, to send again with a new trust bundle.
    certificate: Option<SignedCert>,
    sent_version: u64,
}

impl Session<'_> {
    async fn run(&mut self) -> Result<(), SessionError> {
        let plane = self.plane;
        let silence = plane.opts.heartbeat_timeout;
        let first = timeout(silence, self.reader.read_frame::<ClientFrame>())
            .await
            .map_err(|_| SessionError::NoJoin(silence))??;
        let (token, service, labels, address, csr) = match first {
            None => return Ok(()),
            Some(ClientFrame::Join {
                token,
                service,
                labels,
                address,
                csr,
            }) => (token, service, labels, address, csr),
            Some(other) => return Err(SessionError::NotJoin(other.kind())),
        };
        admit(
            plane.opts.join_token.as_deref(),
            self.peer,
            token.as_deref(),
        )?;
        {
            let state = plane.lock();
            if state.config.is_none() {
                return Err(SessionError::NoConfig);
            }
            if !state.mesh_services.contains(&service) {
                return Err(SessionError::UnknownService(service));
            }
        }
        let signed = self.sign(&service, csr).await?;

        // Subscribe before registering, so the update that includes this
        // instance is the first one it is sent.
        let mut updates = plane.updates.subscribe();
        let mut trust = plane.trust.subscribe();
        let identity = signed.identity.clone();
        info!(peer = %self.peer, %service, %address, %identity, "sidecar joined");
        self.registered = Some((service.clone(), address));
        plane.register(
            Instance {
                service: service.clone(),
                address,
                labels,
                identity: identity.clone(),
                joined_at: SystemTime::now(),
            },
            self.id,
        );
        let heartbeat_interval_ms =
            u64::try_from(plane.opts.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        self.send(&ServerFrame::Joined {
            identity,
            heartbeat_interval_ms,
        })
        .await?;
        self.send_certificate(signed).await?;
        self.push_update(&mut updates).await?;

        let mut deadline = Instant::now() + silence;
        loop {
            tokio::select! {
                frame = self.reader.read_frame::<ClientFrame>() => {
                    match frame? {
                        None => return Ok(()),
                        Some(ClientFrame::Heartbeat {}) => {}
                        Some(ClientFrame::Renew { csr }) => {
                            let signed = self.sign(&service, csr).await?;
                            self.send_certificate(signed).await?;
                        }
                        Some(ClientFrame::Join { .. }) => return Err(SessionError::JoinedTwice),
                    }
                    deadline = Instant::now() + silence;
                }
                () = tokio::time::sleep_until(deadline) => return Err(SessionError::Silent(silence)),
                changed = updates.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.push_update(&mut updates).await?;
                }
                changed = trust.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    trust.borrow_and_update();
                    if let Some(certificate) = self.certificate.take() {
                        self.send_certificate(certificate).await?;
                    }
                }
            }
        }
    }

    async fn sign(&self, service: &str, csr: String) -> Result<SignedCert, SessionError> {
        let signer = Arc::clone(&self.plane.signer);
        let for_service = service.to_owned();
        // Signing is CPU work (and a CA may do I/O): keep it off the
        // threads that drive every other connection.
        let signed = tokio::task::spawn_blocking(move || signer.sign(&for_service, &csr)).await;
        match signed {
            Ok(Ok(signed)) => Ok(signed),
            Ok(Err(message)) => Err(SessionError::Sign {
                service: service.to_owned(),
                message,
            }),
            Err(e) => Err(SessionError::Sign {
                service: service.to_owned(),
                message: format!("the signer failed: {e}"),
            }),
        }
    }

    async fn send_certificate(&mut self, signed: SignedCert) -> Result<(), SessionError> {
        let frame = ServerFrame::Certificate {
            chain_pem: signed.chain_pem.clone(),
            trust_bundle_pem: self.plane.signer.trust_bundle_pem(),
            not_before_unix: unix_seconds(signed.not_before),
            not_after_unix: unix_seconds(signed.not_after),
        };
        self.certificate = Some(signed);
        self.send(&frame).await
    }

    async fn push_update(
        &mut self,
        updates: &mut watch::Receiver<Option<Arc<Update>>>,
    ) -> Result<(), SessionError> {
        let latest = updates.borrow_and_update().clone();
        if let Some(update) = latest
            && update.version > self.sent_version
        {
            self.send(&ServerFrame::Update {
                epoch: self.plane.epoch,
                version: update.version,
                config: update.config.clone(),
            })
            .await?;
            self.sent_version = update.version;
        }
        Ok(())
    }

    /// Sends one frame. A sidecar that cannot take a frame for as long as
    /// it may stay silent counts as gone.
    async fn send(&mut self, frame: &ServerFrame) -> Result<(), SessionError> {
        let limit = self.plane.opts.heartbeat_timeout;
        timeout(limit, write_frame(&mut self.writer, frame))
            .await
            .map_err(|_| SessionError::WriteTimeout(limit))?
            .map_err(SessionError::from)
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(address: &str) -> SocketAddr {
        address.parse().expect("address")
    }

    #[test]
    fn token_must_match() {
        let remote = peer("192.0.2.7:5000");
        assert!(admit(Some("s3cret"), remote, Some("s3cret")).is_ok());
        for offered in [Some("s3cre"), Some("s3cret!"), Some(""), None] {
            let err = admit(Some("s3cret"), remote, offered).expect_err("wrong token");
            assert_eq!(err.to_string(), "the join token is wrong");
        }
    }

    #[test]
    fn an_empty_configured_token_admits_no_one() {
        let err = admit(Some(""), peer("127.0.0.1:1"), Some("")).expect_err("empty");
        assert!(matches!(err, SessionError::EmptyToken));
    }

    #[test]
    fn without_a_token_only_loopback_may_join() {
        for local in [
            "127.0.0.1:1",
            "127.8.9.10:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(admit(None, peer(local), None).is_ok(), "{local}");
        }
        let err = admit(None, peer("192.0.2.7:5000"), Some("anything")).expect_err("remote");
        let message = err.to_string();
        assert!(
            message.contains("only loopback peers may join") && message.contains("192.0.2.7"),
            "{message}"
        );
    }

    #[test]
    fn default_options() {
        let opts = ServerOptions::default();
        assert_eq!(opts.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(opts.heartbeat_timeout, Duration::from_secs(6));
        assert!(opts.join_token.is_none() && opts.state_file.is_none());
        let shown = format!(
            "{:?}",
            ServerOptions {
                join_token: Some("s3cret".into()),
                ..opts
            }
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
