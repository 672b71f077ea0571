//! `meshgate-sidecar`: the mesh proxy beside one service instance.
//!
//! - **Outbound** (`--outbound`, loopback): the application calls its
//!   sidecar as an HTTP proxy, naming the target service in `Host`. The
//!   request runs the same pipeline as the gateway's (routes, splits,
//!   peak-EWMA, retries within budget, breakers, outlier ejection,
//!   timeouts) and leaves over mTLS, HTTP/2 between sidecars.
//! - **Inbound** (`--inbound`): mTLS; the caller's certificate must
//!   chain to the mesh trust bundle and its SPIFFE ID must be allowed by
//!   this service's authorization rules; then plaintext to `--app`
//!   (HTTP/1.1, or h2c for gRPC: `--app-protocol`). In
//!   permissive mesh mode plaintext callers too, without an identity.
//! - **Control plane**: one TLS stream to the appliance. The sidecar joins
//!   with its service name, labels and a key it generated (only a CSR
//!   leaves the process), gets its workload certificate and the sidecar
//!   config (TOML, rendered by the control plane with the live endpoints),
//!   heart-beats, and renews the certificate at half its lifetime. If the
//!   control plane goes away the sidecar keeps serving with the last good
//!   config and certificate and reconnects with backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use clap::Parser;
use meshgate_config::{ConfigSource, ConfigStore, MeshMode, ReloadOutcome, Snapshot};
use meshgate_control::{ClientOptions, Event, NewKey};
use meshgate_identity::{SpiffeId, WorkloadKey};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::authn::Authn;
use crate::inbound::Inbound;
use crate::mesh::MeshTls;
use crate::runtime::Runtimes;

/// meshgate-sidecar — the mesh proxy that runs beside each service instance.
#[derive(Debug, Parser)]
#[command(name = "meshgate-sidecar", version, about, long_about)]
pub struct Cli {
    /// Control plane address of the meshgate appliance.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15012")]
    control_plane: String,
    /// The mesh's SPIFFE trust domain (as in the appliance's `[mesh]`).
    #[arg(long, value_name = "NAME", default_value = "meshgate.local")]
    trust_domain: String,
    /// Trust bundle (PEM) to verify the control plane with: the mesh CA's
    /// root, as written by the appliance to its state directory.
    #[arg(long, value_name = "FILE")]
    ca_file: PathBuf,
    /// Name of the local service.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// Labels of this instance, e.g. `version=v2` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Address of the local application.
    #[arg(long, value_name = "ADDR")]
    app: SocketAddr,
    /// What to speak to the application: `auto` is HTTP/2 with prior
    /// knowledge (h2c) for gRPC calls and HTTP/1.1 for the rest; `http1`
    /// and `h2c` use one for every request.
    #[arg(long, value_name = "PROTOCOL", value_enum, default_value = "auto")]
    app_protocol: crate::inbound::AppProtocol,
    /// How long a connection to the application is kept for reuse after
    /// its last request. Below the keep-alive timeouts application servers
    /// commonly use (2 to 5 s), so the application rarely closes a
    /// connection just as the sidecar reuses it, and a burst's connections
    /// do not outlive it by long.
    #[arg(long, value_name = "DURATION", default_value = "3s")]
    app_idle_timeout: String,
    /// Where mesh peers connect (mTLS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15006")]
    inbound: SocketAddr,
    /// The inbound address peers should dial, when it differs from
    /// --inbound (required when --inbound is a wildcard address).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,
    /// Where the local application sends its outbound calls.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    /// File holding the join token.
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// Worker threads per listener.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// Serve the admin API here: `/metrics` (Prometheus), `/healthz`,
    /// `/readyz`, `/config`, `/services`, `/certificates`... (off when not
    /// given). Read-only unless --admin-token-file is given; an address
    /// beyond loopback needs the token.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// File holding the admin API's bearer token: enables writes (`PUT
    /// /log-level`, `POST /drain`, split overrides) for requests that carry
    /// it, and is required for every request when --admin is not loopback.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
}

/// `--app-idle-timeout`: a duration (`500ms`, `3s`, `1m`) in the range of
/// a service's pool `idle_timeout`.
fn app_idle_timeout(text: &str) -> Result<Duration, String> {
    use meshgate_config::{POOL_IDLE_TIMEOUT_MAX, POOL_IDLE_TIMEOUT_MIN};
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("--app-idle-timeout {text}: {e} (e.g. 3s or 500ms)"))?;
    if !(POOL_IDLE_TIMEOUT_MIN..=POOL_IDLE_TIMEOUT_MAX).contains(&d) {
        return Err(format!("--app-idle-timeout {text}: use 100ms to 24h"));
    }
    Ok(d)
}

/// What the control-plane thread and the server share.
#[derive(Debug, Default)]
struct Pending {
    store: Option<Arc<ConfigStore>>,
    first: Option<Snapshot>,
}

#[derive(Debug)]
struct Shared {
    mesh: Arc<MeshTls>,
    pending: Mutex<Pending>,
    ready: Condvar,
    outbound: SocketAddr,
}

/// Runs the sidecar; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let mut labels = BTreeMap::new();
    for l in &cli.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_owned(), v.to_owned());
            }
            _ => return Err(format!("label \"{l}\" is not KEY=VALUE")),
        }
    }
    let app_idle_timeout = app_idle_timeout(&cli.app_idle_timeout)?;
    let advertise = match cli.advertise {
        Some(a) => a,
        None if cli.inbound.ip().is_unspecified() => {
            return Err(format!(
                "--inbound {} is a wildcard address; say which address peers dial with --advertise",
                cli.inbound
            ));
        }
        None => cli.inbound,
    };
    let admin_token = match &cli.admin_token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read --admin-token-file {}: {e}", p.display()))?
                .trim()
                .to_owned();
            if t.len() < 16 {
                return Err(format!(
                    "--admin-token-file {}: the token is shorter than 16 characters",
                    p.display()
                ));
            }
            Some(t)
        }
        None => None,
    };
    if let Some(a) = cli.admin
        && !a.ip().is_loopback()
        && admin_token.is_none()
    {
        return Err(format!(
            "--admin {a} is not a loopback address: give --admin-token-file, \
             or bind the admin API to 127.0.0.1"
        ));
    }
    let id = SpiffeId::service(&cli.trust_domain, &cli.service)
        .map_err(|e| format!("service \"{}\": {e}", cli.service))?;
    let cp_name = SpiffeId::control_plane(&cli.trust_domain)
        .and_then(|i| i.dns_name())
        .map_err(|e| format!("trust domain \"{}\": {e}", cli.trust_domain))?;
    let mesh = MeshTls::new(&cli.trust_domain);
    let cp_tls = control_plane_tls(&cli.ca_file, &mesh)?;
    let join_token = match &cli.join_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read join token file {}: {e}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let mut own = vec![("outbound", cli.outbound), ("inbound", cli.inbound)];
    if let Some(a) = cli.admin {
        own.push(("admin", a));
    }
    for (what, addr) in own {
        crate::listen::check_free(addr).map_err(|e| format!("{what} address {addr}: {e}"))?;
    }
    crate::server::init_logging_filter("info");
    crate::trace::set_sidecar(&cli.service);

    let shared = Arc::new(Shared {
        mesh,
        pending: Mutex::new(Pending::default()),
        ready: Condvar::new(),
        outbound: cli.outbound,
    });
    let opts = ClientOptions {
        address: cli.control_plane.clone(),
        server_name: cp_name,
        tls: cp_tls,
        join_token,
        service: cli.service.clone(),
        labels,
        address_for_peers: advertise,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(5),
    };
    let new_key = Arc::new(move || -> Result<NewKey, String> {
        let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
        let csr_pem = key.csr_pem(&id).map_err(|e| e.to_string())?;
        Ok(NewKey {
            key_pem: key.key_pem(),
            csr_pem,
        })
    });
    {
        let shared = shared.clone();
        let mesh = shared.mesh.clone();
        crate::server::spawn_runtime("control-plane", async move {
            tokio::join!(control_loop(opts, new_key, shared), watch_expiry(mesh));
        })?;
    }
    tracing::info!(
        control_plane = %cli.control_plane,
        service = %cli.service,
        "waiting for a certificate and config from the control plane"
    );
    let snap = {
        let mut p = shared
            .pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        loop {
            if shared.mesh.material().is_some()
                && let Some(s) = p.first.take()
            {
                break s;
            }
            p = shared
                .ready
                .wait(p)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    };
    let store = Arc::new(ConfigStore::new(snap, ConfigSource::ControlPlane));
    {
        let mut p = shared
            .pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // A config that arrived while we were starting wins.
        if let Some(newer) = p.first.take() {
            store.install(newer);
        }
        p.store = Some(store.clone());
    }
    let snap = store.current();
    crate::access_log::init(&snap).map_err(|e| format!("cannot open the access log: {e}"))?;

    let mut server = crate::server::new_server(&snap, Some(cli.threads));
    let runtimes = Arc::new(Runtimes::default());
    let authn = Arc::new(Authn::new(&snap));
    crate::server::add_edge_listeners(&mut server, &store, &runtimes, &authn, &shared.mesh)?;

    // The mesh's own hop: the defaults of the config's listeners, but for
    // the size of a request head. Its callers are the gateway and other
    // sidecars, which forward heads their own listeners' limits allowed and
    // add headers of their own (forwarding, trace, claims): this hop checks
    // a head's syntax and framing, not its size, beyond the most any
    // listener may allow.
    let defaults = meshgate_config::ListenerLimits {
        max_header_bytes: meshgate_config::MAX_HEADER_BYTES,
        max_headers: usize::MAX,
        ..meshgate_config::ListenerLimits::default()
    };
    let inbound = Inbound {
        service: cli.service.clone(),
        app: cli.app,
        app_protocol: cli.app_protocol,
        app_h2_turns: Default::default(),
        store: store.clone(),
        connect_timeout: Duration::from_secs(1),
        app_idle_timeout,
        head_limits: crate::framing::HeadLimits::from(&defaults),
        in_flight: crate::metrics::InFlight::gauge("inbound"),
    };
    let limits = crate::conn::ConnLimits::from(&defaults);
    let refusals = crate::access_log::Refusals {
        listener: "inbound".into(),
        inbound: true,
        store: store.clone(),
    };
    // The inbound side only ever speaks plaintext to the application: its
    // proxy needs no CA certificates.
    let inbound_conf = crate::server::plaintext_upstream_conf(&snap, Some(cli.threads))
        .unwrap_or_else(|| server.configuration.clone());
    let mut proxy = pingora::proxy::http_proxy(&inbound_conf, inbound);
    // Plaintext callers (permissive mode) may speak HTTP/2 with prior
    // knowledge; TLS callers pick by ALPN.
    let mut opts = pingora::apps::HttpServerOptions::default();
    opts.h2c = true;
    proxy.server_options = Some(opts);
    // Callers are sidecars and gateways, which put up to this many streams
    // on one connection rather than open more (`upstream`).
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(crate::upstream::MESH_H2_STREAMS);
    proxy.h2_options = Some(h2);
    let app = Arc::new(crate::conn::Listener::new(
        Arc::new(proxy),
        limits,
        refusals,
    ));
    let (resolver, verifier) = shared.mesh.server_hooks();
    let tls = crate::tls::mesh_listener_tls("inbound", resolver, verifier)
        .map_err(|e| format!("inbound TLS: {e}"))?;
    let max_connections = defaults.max_connections as usize;
    let svc =
        crate::listen::TcpListener::bind("inbound", cli.inbound, Some(tls), app, max_connections)
            .map_err(|e| format!("inbound address {}: {e}", cli.inbound))?;
    let mode = store.clone();
    let svc = svc.plaintext_when(Arc::new(move || {
        mode.current().mesh.mode == MeshMode::Permissive
    }));
    server.add_service(svc);

    if let Some(address) = cli.admin {
        crate::admin::start(crate::admin::AdminOptions {
            address,
            metrics_path: Some("/metrics".into()),
            token: admin_token,
            store: store.clone(),
            runtimes: runtimes.clone(),
            mesh: shared.mesh.clone(),
            ready_when: vec![cli.outbound, cli.inbound],
            // No `PUT /config` (the control plane owns the config), so no
            // listener certificates to swap.
            certs: Default::default(),
            config_writes: false,
        })?;
    }
    tracing::info!(
        service = %cli.service,
        outbound = %cli.outbound,
        inbound = %cli.inbound,
        app = %cli.app,
        "meshgate-sidecar started"
    );
    crate::server::drain_on_terminate(&server, crate::server::drain_limit(&snap));
    crate::server::when_running(&server);
    server.run_forever()
}

/// The outbound listener the sidecar adds to the pushed config.
fn with_listener(config: &str, outbound: SocketAddr) -> String {
    format!(
        "{config}\n\n# Added by the sidecar.\n[[listener]]\nname = \"outbound\"\n\
         address = \"{outbound}\"\nprotocols = [\"http1\", \"h2c\"]\n"
    )
}

fn control_plane_tls(
    ca_file: &Path,
    mesh: &Arc<MeshTls>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let text = std::fs::read_to_string(ca_file)
        .map_err(|e| format!("cannot read --ca-file {}: {e}", ca_file.display()))?;
    let mut roots = Vec::new();
    for c in CertificateDer::pem_slice_iter(text.as_bytes()) {
        let c = c.map_err(|e| format!("--ca-file {}: {e}", ca_file.display()))?;
        let mut check = rustls::RootCertStore::empty();
        check
            .add(c.clone())
            .map_err(|e| format!("--ca-file {}: {e}", ca_file.display()))?;
        roots.push(c);
    }
    if roots.is_empty() {
        return Err(format!(
            "--ca-file {} holds no certificate",
            ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ControlPlaneVerifier {
        file_roots: roots,
        mesh: mesh.clone(),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("control-plane TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Verifies the control plane against the `--ca-file` roots plus the trust
/// bundle the control plane last pushed, so that after a CA rotation the
/// sidecar still reconnects (the new root arrives in the bundle before any
/// certificate from it is used). Standard WebPKI verification otherwise,
/// including the name `control-plane.<trust domain>`.
#[derive(Debug)]
struct ControlPlaneVerifier {
    file_roots: Vec<CertificateDer<'static>>,
    mesh: Arc<MeshTls>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for ControlPlaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut store = rustls::RootCertStore::empty();
        let pushed = self
            .mesh
            .material()
            .map(|m| m.bundle.clone())
            .unwrap_or_default();
        for c in self.file_roots.iter().chain(pushed.iter()) {
            // Duplicates and unusable roots are skipped; the file's roots
            // were checked at start.
            let _ = store.add(c.clone());
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?
        .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn control_loop(
    opts: ClientOptions,
    new_key: Arc<dyn Fn() -> Result<NewKey, String> + Send + Sync>,
    shared: Arc<Shared>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(meshgate_control::run_client(opts, new_key, tx));
    while let Some(event) = rx.recv().await {
        handle(&shared, event);
    }
}

fn handle(shared: &Shared, event: Event) {
    match event {
        Event::Connected { identity } => {
            tracing::info!(%identity, "connected to the control plane")
        }
        Event::Disconnected { error } => tracing::warn!(
            error = %error,
            "control plane unreachable; serving with the last config and certificate"
        ),
        Event::Certificate {
            key_pem,
            chain_pem,
            trust_bundle_pem,
            not_after,
            ..
        } => match shared.mesh.install(&chain_pem, &key_pem, &trust_bundle_pem) {
            Ok(m) => {
                tracing::info!(identity = %m.id, expires_in = ?remaining(not_after), "workload certificate installed");
                shared.ready.notify_all();
            }
            Err(e) => {
                tracing::error!(error = %e, "workload certificate refused; keeping the old one")
            }
        },
        Event::Config {
            epoch,
            version,
            config,
        } => {
            let text = with_listener(&config, shared.outbound);
            let origin = format!("control-plane config v{version}");
            let snap = match meshgate_config::load_str(&text, &origin, Path::new("/")) {
                Ok(s) => s,
                Err(d) => {
                    tracing::error!(
                        version,
                        "config from the control plane refused; keeping the running one:\n{d}"
                    );
                    return;
                }
            };
            let mut p = shared
                .pending
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let was = p.store.as_ref().map(|s| s.current().mesh.mode);
            let now = snap.mesh.mode;
            match &p.store {
                Some(store) => match store.install(snap) {
                    ReloadOutcome::Applied {
                        version: local,
                        diff,
                    } => {
                        tracing::info!(epoch, version, local, changes = %diff, "config applied")
                    }
                    ReloadOutcome::Unchanged { .. } => {
                        tracing::debug!(epoch, version, "config unchanged")
                    }
                },
                None => {
                    p.first = Some(snap);
                    shared.ready.notify_all();
                }
            }
            // Once installed: the line says what new connections get.
            say_mode(was, now);
        }
    }
}

/// Logs the mesh mode when it is new or changed: permissive is a warning,
/// as plaintext reaches the application.
fn say_mode(was: Option<MeshMode>, now: MeshMode) {
    if was == Some(now) {
        return;
    }
    match now {
        MeshMode::Permissive => tracing::warn!(
            "mesh mode is permissive: the inbound port also takes plaintext callers, without identity"
        ),
        MeshMode::Strict if was.is_some() => {
            tracing::info!("mesh mode is strict: the inbound port takes mTLS only")
        }
        MeshMode::Strict => {}
    }
}

fn remaining(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Warns while the certificate is close to expiry (the control plane
/// should have renewed it at half its life) and errors once it expired.
/// Runs beside the control-plane stream, on its thread: a thread of its
/// own cost a sidecar a stack and allocator pages for a check every 10 s.
async fn watch_expiry(mesh: Arc<MeshTls>) {
    let every = Duration::from_secs(10);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = mesh.material() else { continue };
        let now = SystemTime::now();
        let life = m.not_after.duration_since(m.not_before).unwrap_or_default();
        match m.not_after.duration_since(now) {
            Err(_) => {
                tracing::error!(identity = %m.id, "workload certificate has expired; mesh peers will refuse this instance")
            }
            Ok(left) if left < life / 4 => {
                tracing::warn!(identity = %m.id, expires_in = ?left, "workload certificate not renewed and close to expiry")
            }
            Ok(_) => {}
        }
    }
}
