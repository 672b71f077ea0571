//! `meshgate run`: build the pingora server from the config and run it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use meshgate_config::{ConfigSource, ConfigStore, Snapshot, load_embedded};
use pingora::apps::HttpServerOptions;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use tracing_subscriber::EnvFilter;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pingora::server::ExecutionPhase;

use crate::authn::Authn;
use crate::edge::{Edge, IN_FLIGHT};
use crate::framing::HeadLimits;
use crate::mesh::MeshTls;
use crate::reload::Reloader;
use crate::runtime::Runtimes;
use crate::tls::LiveCerts;

/// Where the embedded default (`run` without a config file) serves, when
/// not on its own addresses.
#[derive(Debug, Default, Clone, Copy)]
pub struct Embedded {
    /// The status page's listener (default 127.0.0.1:8080).
    pub listen: Option<SocketAddr>,
    /// The admin API (default 127.0.0.1:9901).
    pub admin: Option<SocketAddr>,
}

pub fn run(
    config: Option<PathBuf>,
    embedded: Embedded,
    threads: Option<usize>,
    watch_ms: u64,
) -> ExitCode {
    crate::reload::ignore_sighup_until_listening();
    // Taken before the file is read: a rewrite from here on is one the
    // watcher must apply, however soon it comes.
    let loaded = config.as_deref().and_then(crate::reload::stamp);
    let store = match &config {
        Some(path) => match ConfigStore::from_file(path) {
            Ok(s) => s,
            Err(diags) => {
                eprintln!("{diags}");
                return ExitCode::FAILURE;
            }
        },
        None => match load_embedded() {
            Ok(mut s) => {
                if let (Some(addr), Some(l)) = (embedded.listen, s.listeners.first_mut()) {
                    l.address = addr;
                }
                if let Some(addr) = embedded.admin {
                    // The embedded default has no admin token, and the
                    // admin API beyond loopback needs one.
                    if !addr.ip().is_loopback() {
                        eprintln!(
                            "error: --admin {addr} is not a loopback address: the embedded \
                             default has no admin token; write a config file with an \
                             [admin] token to serve the admin API beyond loopback"
                        );
                        return ExitCode::FAILURE;
                    }
                    s.admin.address = addr;
                }
                ConfigStore::new(s, ConfigSource::Embedded)
            }
            Err(diags) => {
                eprintln!("the embedded default config is invalid (a build defect):\n{diags}");
                return ExitCode::FAILURE;
            }
        },
    };
    let store = Arc::new(store);
    let snap = store.current();
    init_logging(&snap);
    if let Err(e) = crate::access_log::init(&snap) {
        eprintln!("error: cannot open the access log: {e}");
        return ExitCode::FAILURE;
    }
    // Bind-test every listener first, so a taken port is one clear line
    // instead of a failure deep inside the server's start-up.
    for l in &snap.listeners {
        if let Err(e) = crate::listen::check_free(l.address) {
            eprintln!(
                "error: listener \"{}\" cannot bind {}: {e}",
                l.name, l.address
            );
            return ExitCode::FAILURE;
        }
    }

    let mut server = new_server(&snap, threads);
    let runtimes = Arc::new(Runtimes::default());
    let authn = Arc::new(Authn::new(&snap));
    let mesh = MeshTls::new(&snap.mesh.trust_domain);
    let certs = match add_edge_listeners(&mut server, &store, &runtimes, &authn, &mesh) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if snap.admin.enabled
        && let Err(e) = crate::admin::start(crate::admin::AdminOptions {
            address: snap.admin.address,
            metrics_path: snap
                .observability
                .metrics_enabled
                .then(|| snap.observability.metrics_path.clone()),
            token: snap.admin.token.as_ref().map(|t| t.expose().to_owned()),
            store: store.clone(),
            runtimes: runtimes.clone(),
            mesh: mesh.clone(),
            ready_when: snap.listeners.iter().map(|l| l.address).collect(),
            certs: certs.clone(),
            config_writes: true,
        })
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if crate::appliance::wanted(&snap)
        && let Err(e) = crate::appliance::start(&store, &mesh)
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    server.add_service(background_service(
        "config reload",
        Reloader::new(store.clone(), watch_ms, certs, loaded),
    ));
    server.add_service(background_service(
        "jwks refresh",
        authn.refresher(store.clone()),
    ));

    for l in &snap.listeners {
        tracing::info!(
            listener = %l.name,
            address = %l.address,
            protocols = %l.protocols.words().join(","),
            "listening"
        );
    }
    tracing::info!(origin = %snap.origin, version = snap.version, "meshgate started");
    drain_on_terminate(&server, drain_limit(&snap));
    when_running(&server);
    server.run_forever()
}

/// Once pingora reports its services running (its listeners are started
/// by then): tells systemd `READY=1` when started by it, and lets go of
/// its start-up pages of code and constants ([`crate::memory`]), and once
/// more when start-up has settled (after the first requests, at most 30 s
/// later). On a thread of its own, which ends there. Call it just before
/// `run_forever`.
pub(crate) fn when_running(server: &Server) {
    let mut phases = server.watch_execution_phase();
    let watcher = std::thread::Builder::new()
        .name("started".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::Running) => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
            crate::notify::ready();
            match crate::memory::release_startup_pages() {
                Ok(bytes) => tracing::debug!(bytes, "start-up pages released"),
                Err(e) => tracing::debug!("start-up pages kept: {e}"),
            }
            match crate::memory::release_once_settled() {
                Ok(bytes) => tracing::debug!(bytes, "start-up settled, pages released again"),
                Err(e) => tracing::debug!("start-up settled, pages kept: {e}"),
            }
        });
    if let Err(e) = watcher {
        tracing::warn!("cannot watch the start-up: {e}");
    }
}

/// Runs `task` on a thread of its own with a single-threaded tokio
/// runtime, apart from pingora's workers: the admin endpoint and the
/// control plane stay responsive however busy the data path is.
pub(crate) fn spawn_runtime<F>(name: &str, task: F) -> Result<(), String>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let label = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(task),
                Err(e) => tracing::error!(error = %e, thread = %label, "cannot start a runtime"),
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// The longest listener drain timeout: how long SIGTERM waits for
/// in-flight requests.
pub(crate) fn drain_limit(snap: &Snapshot) -> Duration {
    snap.listeners
        .iter()
        .map(|l| l.limits.drain_timeout)
        .max()
        .unwrap_or(Duration::from_secs(30))
}

/// A bootstrapped pingora server sized for `snap`.
pub(crate) fn new_server(snap: &Snapshot, threads: Option<usize>) -> Server {
    let mut server = Server::new_with_opt_and_conf(None, server_conf(snap, threads));
    server.bootstrap();
    server
}

/// pingora's settings for a server sized for `snap`.
fn server_conf(snap: &Snapshot, threads: Option<usize>) -> ServerConf {
    let threads = threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let drain = drain_limit(snap).as_secs();
    let runtime_dir = std::env::temp_dir();
    let pid = std::process::id();
    ServerConf {
        threads,
        pid_file: runtime_dir
            .join(format!("meshgate-{pid}.pid"))
            .display()
            .to_string(),
        upgrade_sock: runtime_dir
            .join(format!("meshgate-{pid}-upgrade.sock"))
            .display()
            .to_string(),
        // pingora keeps serving in-flight requests through the grace
        // period and then drops whatever is left; `drain_on_terminate`
        // ends the process as soon as nothing is in flight.
        // pingora keeps one pool of idle upstream connections for all
        // services; size it so every endpoint can keep its configured
        // `max_idle_per_endpoint` (and never below pingora's 128).
        upstream_keepalive_pool_size: snap
            .services
            .iter()
            .map(|s| s.max_idle_per_endpoint as usize * s.endpoints.len().max(1))
            .sum::<usize>()
            .max(128),
        grace_period_seconds: Some(drain),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// The path [`plaintext_upstream_conf`] names as the CA file: it reads as
/// empty, which pingora turns into an empty root store.
const NO_CA_FILE: &str = "/dev/null";

/// pingora's settings for a proxy whose upstream connections are never
/// TLS (a sidecar's inbound side, which speaks plaintext to its local
/// application): those of a server sized for `snap` and `threads`,
/// except that the proxy's upstream connectors load no CA certificates.
/// pingora builds two connectors for every proxy, each with its own root
/// store, from the system's certificates unless `ca_file` names a file
/// (145 certificates on Debian: about 170 KiB of heap per connector).
/// `None` when that empty file cannot be read: pingora would panic on it,
/// and the caller keeps the server's settings instead.
pub(crate) fn plaintext_upstream_conf(
    snap: &Snapshot,
    threads: Option<usize>,
) -> Option<Arc<ServerConf>> {
    match std::fs::read(NO_CA_FILE) {
        Ok(bytes) if bytes.is_empty() => Some(Arc::new(ServerConf {
            ca_file: Some(NO_CA_FILE.to_string()),
            ..server_conf(snap, threads)
        })),
        _ => None,
    }
}

/// Adds one proxy service per configured listener, all running the edge
/// pipeline over `store`. Returns each TLS listener's live certificates,
/// for reloads.
pub(crate) fn add_edge_listeners(
    server: &mut Server,
    store: &Arc<ConfigStore>,
    runtimes: &Arc<Runtimes>,
    authn: &Arc<Authn>,
    mesh: &Arc<MeshTls>,
) -> Result<HashMap<String, Arc<LiveCerts>>, String> {
    let snap = store.current();
    let mut certs = HashMap::new();
    for l in &snap.listeners {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        let edge = Edge {
            listener: l.name.clone(),
            scheme,
            store: store.clone(),
            runtimes: runtimes.clone(),
            head_limits: HeadLimits::from(&l.limits),
            max_body: l.limits.max_request_body_bytes,
            idle_secs: l.limits.idle_timeout.as_secs_f64().ceil() as u64,
            authn: authn.clone(),
            mesh: mesh.clone(),
            alt_svc: crate::h3::alt_svc(l),
            in_flight: crate::metrics::InFlight::gauge(&l.name),
        };
        // One proxy per listener, shared by its TCP and HTTP/3 sides: the
        // same pipeline and the same upstream connection pools.
        let mut proxy = pingora::proxy::http_proxy(&server.configuration, edge);
        let mut opts = HttpServerOptions::default();
        opts.h2c = l.protocols.h2c;
        proxy.server_options = Some(opts);
        let proxy = Arc::new(proxy);
        let refusals = crate::access_log::Refusals {
            listener: l.name.clone(),
            inbound: false,
            store: store.clone(),
        };
        let app = Arc::new(crate::conn::Listener::new(
            proxy.clone(),
            (&l.limits).into(),
            refusals.clone(),
        ));
        let mut http3 = None;
        let tls = match &l.tls {
            None => None,
            Some(tls) => {
                let (t, live) = crate::tls::listener_tls(&l.name, &l.protocols, tls)
                    .map_err(|e| format!("listener \"{}\": {e}", l.name))?;
                certs.insert(l.name.clone(), live.clone());
                if l.protocols.http3 {
                    http3 = Some(
                        crate::h3::H3Listener::bind(l, tls, live, proxy, refusals)
                            .map_err(|e| format!("listener \"{}\": {e}", l.name))?,
                    );
                }
                Some(t)
            }
        };
        let tcp = crate::listen::TcpListener::bind(
            &l.name,
            l.address,
            tls,
            app,
            l.limits.max_connections as usize,
        )
        .map_err(|e| {
            format!(
                "listener \"{}\": cannot listen on {}: {e}",
                l.name, l.address
            )
        })?;
        let tcp = match http3 {
            Some(h3) => tcp.with_http3(h3),
            None => tcp,
        };
        server.add_service(tcp);
    }
    Ok(certs)
}

/// Set once SIGTERM or `POST /drain` starts the drain: `/readyz` answers
/// 503 from then on, so load balancers stop sending new requests, and
/// HTTP/1.1 keep-alive connections close after their current request (or
/// at once, if idle). Set through [`start_drain`].
pub(crate) static DRAINING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The drain as a signal for what waits: HTTP/1.1 connections idle
/// between requests.
static DRAIN_SIGNAL: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(false));

/// Starts the drain; `true` if it had already started.
pub(crate) fn start_drain() -> bool {
    let already = DRAINING.swap(true, Ordering::Relaxed);
    DRAIN_SIGNAL.send_replace(true);
    already
}

/// Resolves once the drain has started.
pub(crate) fn drain_signal() -> tokio::sync::watch::Receiver<bool> {
    DRAIN_SIGNAL.subscribe()
}

/// The server's shutdown or the drain, whichever starts first, as one
/// signal: what tells HTTP/2 and HTTP/3 connections to send GOAWAY, so
/// that their clients (a load balancer, a client sidecar's pool) open new
/// connections elsewhere while the requests already sent finish here. It
/// starts out `false` and turns `true` from a task of the calling runtime,
/// also when the drain has already started: a connection made later sees
/// the change and gets its GOAWAY at once. Create it once per listener;
/// the task ends when every receiver is gone.
pub(crate) fn closing_signal(
    shutdown: &pingora::server::ShutdownWatch,
) -> pingora::server::ShutdownWatch {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut shutdown = shutdown.clone();
    let mut drain = drain_signal();
    tokio::spawn(async move {
        // A watch whose sender is gone ends too: the server is stopping.
        tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => {}
            _ = drain.wait_for(|draining| *draining) => {}
            () = tx.closed() => return,
        }
        tx.send_replace(true);
    });
    rx
}

/// On SIGTERM pingora stops accepting and waits out its grace period;
/// this watcher ends the process as soon as no request is in flight (or
/// the drain deadline passes), so an idle gateway stops at once and a busy
/// one finishes what it started.
pub(crate) fn drain_on_terminate(server: &Server, limit: Duration) {
    let mut phases = server.watch_execution_phase();
    std::thread::spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownStarted) => break,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
        start_drain();
        crate::notify::stopping();
        let start = Instant::now();
        tracing::info!(in_flight = IN_FLIGHT.load(Ordering::Relaxed), "draining");
        // Requests in flight, and QUIC connections still delivering their
        // last responses (they close once the client has them).
        let busy = || IN_FLIGHT.load(Ordering::Relaxed) > 0 || crate::h3::open_connections() > 0;
        while busy() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The spans of the last requests go out before the exit.
        crate::trace::flush(Duration::from_secs(2));
        let left = IN_FLIGHT.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(in_flight = left, "drain deadline passed, exiting");
        } else {
            tracing::info!(took = ?start.elapsed(), "drained, exiting");
        }
        std::process::exit(0);
    });
}

pub(crate) fn init_logging(snap: &Snapshot) {
    init_logging_filter(&snap.observability.log_level);
}

/// The live log filter, replaceable through the admin API.
static LOG_FILTER: OnceLock<
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
> = OnceLock::new();

/// Logs to stderr, filtered by `RUST_LOG` or else `default`. The filter
/// sits behind a reload layer so `PUT /log-level` can replace it.
pub(crate) fn init_logging_filter(default: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = LOG_FILTER.set(handle);
    }
}

/// Replaces the log filter (`debug`, `meshgate=debug,warn`...).
pub(crate) fn set_log_filter(directives: &str) -> Result<(), String> {
    use tracing::level_filters::LevelFilter;
    let filter = EnvFilter::try_new(directives)
        .map_err(|e| format!("invalid log filter {directives:?}: {e}"))?;
    let handle = LOG_FILTER
        .get()
        .ok_or_else(|| "logging was set up elsewhere; its filter cannot be changed".to_owned())?;
    let hint = filter.max_level_hint();
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log filter: {e}"))?;
    // Records of the `log` crate (pingora's) are cut at the global `log`
    // level before the filter sees them; keep it as verbose as the filter.
    log::set_max_level(match hint {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::connectors::ConnectorOptions;

    fn snapshot() -> Snapshot {
        let text = "[[service]]\nname = \"app\"\n\
                    endpoints = [{ address = \"127.0.0.1:9000\" }]\n\
                    max_idle_per_endpoint = 300\n";
        meshgate_config::load_str(text, "test.toml", std::path::Path::new("."))
            .unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn a_plaintext_upstream_proxy_names_an_empty_ca_file_and_keeps_the_rest() {
        let snap = snapshot();
        let conf = plaintext_upstream_conf(&snap, Some(3)).expect("/dev/null reads as empty");
        assert_eq!(conf.ca_file.as_deref(), Some(NO_CA_FILE));
        let server = server_conf(&snap, Some(3));
        assert_eq!(
            server.ca_file, None,
            "the server's own proxies keep the system roots"
        );
        assert_eq!(conf.threads, 3);
        assert_eq!(conf.upstream_keepalive_pool_size, 300);
        assert_eq!(conf.grace_period_seconds, server.grace_period_seconds);
        // pingora reads the file when it builds a proxy's connectors and
        // panics when it cannot: this builds them as the proxy does.
        let options = ConnectorOptions::from_server_conf(&conf);
        let _connector = pingora::connectors::http::Connector::new(Some(options));
    }
}
