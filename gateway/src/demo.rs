//! `meshgate demo`: the seed shop of `config/examples/seed.toml`, running
//! in the mesh on one machine, with a guided tour.
//!
//! It exists so that one command shows what meshgate is for, with real
//! processes and real traffic: the appliance (`meshgate run` on the seed
//! config), five small demo services (user-account, product-catalog v1 ×2
//! and v2, order-processing) each behind its own `meshgate-sidecar`, and a
//! tour that sends requests through them and checks what comes back. The
//! same binary provides the pieces:
//!
//! - `meshgate demo [--dir DIR]` sets up DIR ([`setup`]), starts and
//!   supervises the processes ([`supervisor`]), runs the tour ([`tour`])
//!   and keeps everything running until Ctrl-C (or exits after the tour
//!   with `--exit-after-tour` / `DEMO_EXIT=1`, non-zero if a step failed);
//! - `meshgate demo token --user NAME` signs a token with the demo's
//!   identity provider ([`issuer`]);
//! - `meshgate demo service ...` is one demo service ([`service`]).
//!
//! Nothing here is part of the gateway's request path.

mod h3get;
mod issuer;
mod service;
mod setup;
mod supervisor;
mod tour;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use meshgate_config::Snapshot;

use issuer::Issuer;
use setup::Layout;
use supervisor::{Supervisor, Waiting, accepts};

/// Where the demo keeps its files unless told otherwise.
const DEFAULT_DIR: &str = "./meshgate-demo";
/// The seed's plain listener address.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How long each start-up stage may take before the demo gives up.
const START_LIMIT: Duration = Duration::from_secs(30);

/// `meshgate demo`: run the seed shop in the mesh and tour it.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    command: Option<DemoCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum DemoCommand {
    /// Print a token from the demo's identity provider.
    ///
    /// An ES256 JWT signed with the key `meshgate demo` wrote into DIR,
    /// for the seed's `shop-users` provider: iss
    /// https://id.seed.meshgate.local, aud seed-shop, sub NAME, valid for
    /// one hour. Use it as `authorization: Bearer TOKEN`.
    Token(TokenArgs),
    /// Run one demo service (`meshgate demo` starts these itself).
    ///
    /// Answers every request with JSON naming the service, version and
    /// instance, the path, the user (`x-user-id`) and the caller's mesh
    /// identity (`x-meshgate-peer-identity`). With --upstream-service it
    /// first calls that service through --outbound and embeds the answer as
    /// `catalog`. `POST /demo/flaky?percent=N` makes it answer 503 to N% of
    /// requests (0 turns that off); `GET /demo/flaky` reports it.
    Service(service::ServiceArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The user: the token's `sub`, which the gateway forwards as
    /// `x-user-id`.
    #[arg(long, value_name = "NAME")]
    user: String,
    /// The demo directory whose key signs the token.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// The token's `scope` claim (the `/orders` route requires `orders`).
    #[arg(long, value_name = "SCOPE", default_value = "orders")]
    scope: String,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Directory for the demo's keys, certificates, config, state and logs.
    /// Rewritten on every start.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Stop everything after the tour; exit 0 only if every step showed
    /// what it should. DEMO_EXIT=1 does the same.
    #[arg(long)]
    exit_after_tour: bool,
    /// The gateway's plaintext (HTTP/1.1 and h2c) address, instead of the
    /// seed's 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
}

/// Why the demo could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    #[error("{action} {}: {source}", .path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no demo signing key at {}: run `meshgate demo` first (with the same --dir)", .0.display())]
    NoKey(PathBuf),
    #[error("cannot make {what}: {source}")]
    Keygen {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("the token signing key is not an uncompressed P-256 public point")]
    KeyShape,
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("cannot draw random bytes for the join token: {0}")]
    Random(getrandom::Error),
    #[error(
        "{} is not empty and was not made by `meshgate demo`; choose another --dir",
        .0.display()
    )]
    ForeignDir(PathBuf),
    #[error(
        "config/examples/seed.toml no longer has exactly one `{0}` line, so --listen cannot move that listener (a build defect)"
    )]
    SeedShape(&'static str),
    #[error("the demo config {} is invalid:\n{diagnostics}", .path.display())]
    Config { path: PathBuf, diagnostics: String },
    #[error("the demo config has no {0} listener")]
    NoListener(&'static str),
    #[error("{what} cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        what: String,
        source: std::io::Error,
    },
    #[error("{addr} ({what}) is taken: {source}; is another demo or meshgate still running?")]
    PortTaken {
        addr: SocketAddr,
        what: String,
        source: std::io::Error,
    },
    #[error("cannot find the running meshgate executable: {0}")]
    Exe(std::io::Error),
    #[error(
        "{} not found; the demo runs the sidecar binary next to meshgate (build both: `cargo build --release --bin meshgate --bin meshgate-sidecar`)",
        .0.display()
    )]
    NoSidecar(PathBuf),
    #[error("cannot start {name} ({}): {source}", .program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{name} stopped ({}); the end of {}:\n{tail}",
        supervisor::describe(.status),
        .log.display()
    )]
    ChildExited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("gave up after {secs}s waiting for {what}; the logs in {} say why", .logs.display())]
    Timeout {
        what: String,
        secs: u64,
        logs: PathBuf,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("{0} tour check(s) failed (marked FAIL above)")]
    TourFailed(usize),
}

/// One demo service instance and its sidecar.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Instance {
    pub(crate) service: &'static str,
    pub(crate) version: &'static str,
    pub(crate) id: &'static str,
    /// The application.
    pub(crate) app: SocketAddr,
    /// The sidecar's outbound listener, for the application's calls.
    pub(crate) outbound: SocketAddr,
    /// The sidecar's inbound listener, for mTLS from mesh peers.
    pub(crate) inbound: SocketAddr,
    /// The service this one calls for every request.
    pub(crate) upstream: Option<&'static str>,
}

const fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// The demo's instances, on fixed ports so the printed commands and the
/// README can name them: applications on 9101-9105, sidecar outbound
/// listeners on 15001-15005 and inbound listeners on 15101-15105.
pub(crate) const INSTANCES: [Instance; 5] = [
    Instance {
        service: "user-account",
        version: "v1",
        id: "user-account-1",
        app: local(9101),
        outbound: local(15001),
        inbound: local(15101),
        upstream: None,
    },
    Instance {
        service: "product-catalog",
        version: "v1",
        id: "product-catalog-v1-1",
        app: local(9102),
        outbound: local(15002),
        inbound: local(15102),
        upstream: None,
    },
    Instance {
        service: "product-catalog",
        version: "v1",
        id: "product-catalog-v1-2",
        app: local(9103),
        outbound: local(15003),
        inbound: local(15103),
        upstream: None,
    },
    Instance {
        service: "product-catalog",
        version: "v2",
        id: "product-catalog-v2-1",
        app: local(9104),
        outbound: local(15004),
        inbound: local(15104),
        upstream: None,
    },
    Instance {
        service: "order-processing",
        version: "v1",
        id: "order-processing-1",
        app: local(9105),
        outbound: local(15005),
        inbound: local(15105),
        upstream: Some("product-catalog"),
    },
];

/// What the demo reads from the seed config rather than hard-coding, so
/// the config stays the one place these are decided.
#[derive(Debug, Clone)]
pub(crate) struct Appliance {
    /// The plaintext listener (HTTP/1.1 and h2c).
    pub(crate) edge: SocketAddr,
    /// The TLS listener.
    pub(crate) edge_tls: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) metrics_path: String,
    pub(crate) control_plane: SocketAddr,
    pub(crate) trust_domain: String,
    /// The mesh CA's root, written by the appliance when it starts.
    pub(crate) trust_bundle: PathBuf,
}

impl Appliance {
    fn from_snapshot(snap: &Snapshot) -> Result<Appliance, DemoError> {
        let plain = snap
            .listeners
            .iter()
            .find(|l| l.tls.is_none())
            .ok_or(DemoError::NoListener("plaintext"))?;
        let tls = snap
            .listeners
            .iter()
            .find(|l| l.tls.is_some())
            .ok_or(DemoError::NoListener("TLS"))?;
        Ok(Appliance {
            edge: plain.address,
            edge_tls: tls.address,
            admin: snap.admin.address,
            metrics_path: snap.observability.metrics_path.clone(),
            control_plane: snap.mesh.control_plane_address,
            trust_domain: snap.mesh.trust_domain.clone(),
            trust_bundle: snap.mesh.state_dir.join("ca/trust-bundle.pem"),
        })
    }

    /// The SPIFFE ID of a service's workloads.
    pub(crate) fn service_id(&self, service: &str) -> String {
        format!("spiffe://{}/service/{service}", self.trust_domain)
    }

    /// The gateway's SPIFFE ID.
    pub(crate) fn gateway_id(&self) -> String {
        format!("spiffe://{}/gateway", self.trust_domain)
    }
}

/// Runs `meshgate demo` and its subcommands; the whole of `main` for them.
pub fn main(args: DemoArgs) -> ExitCode {
    // reqwest is built without a bundled crypto provider and panics
    // without one, even for plain HTTP; use ring, like the rest of
    // meshgate.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match args.command {
        Some(DemoCommand::Token(t)) => token(&t),
        Some(DemoCommand::Service(s)) => service::run(s),
        None => run(&args.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: &TokenArgs) -> Result<(), DemoError> {
    let issuer = Issuer::load(&args.dir)?;
    println!("{}", issuer.token(&args.user, &args.scope)?);
    Ok(())
}

pub(crate) use crate::error_chain;

/// Resolves on SIGINT or SIGTERM, with the signal's name.
pub(crate) async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the signals keep their default action, which
        // ends the process anyway.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

fn run(args: &RunArgs) -> Result<(), DemoError> {
    let exit_after_tour =
        args.exit_after_tour || std::env::var("DEMO_EXIT").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?;
    let mut sup = Supervisor::default();
    let result = rt.block_on(async {
        tokio::select! {
            // Ctrl-C reaches the children too; seeing the signal first
            // keeps their exit from being reported as a failure.
            biased;
            signal = shutdown_signal() => {
                println!("\n{signal}: stopping the demo");
                Ok(())
            }
            r = orchestrate(args, exit_after_tour, &mut sup) => r,
        }
    });
    sup.stop();
    result
}

/// Every address the demo will bind, checked before anything starts so a
/// leftover process is one clear line instead of a child dying later.
fn check_ports(appliance: Option<&Appliance>, listen: SocketAddr) -> Result<(), DemoError> {
    let mut wanted = vec![(listen, "the gateway".to_owned())];
    if let Some(a) = appliance {
        wanted.extend([
            (a.edge_tls, "the gateway's TLS listener".to_owned()),
            (a.admin, "the admin API".to_owned()),
            (a.control_plane, "the control plane".to_owned()),
        ]);
    }
    for i in &INSTANCES {
        wanted.push((i.app, format!("demo service {}", i.id)));
        wanted.push((i.outbound, format!("{}'s sidecar, outbound", i.id)));
        wanted.push((i.inbound, format!("{}'s sidecar, inbound", i.id)));
    }
    for (addr, what) in wanted {
        crate::listen::check_free(addr).map_err(|source| DemoError::PortTaken {
            addr,
            what,
            source,
        })?;
    }
    Ok(())
}

fn arg(s: impl ToString) -> String {
    s.to_string()
}

async fn orchestrate(
    args: &RunArgs,
    exit_after_tour: bool,
    sup: &mut Supervisor,
) -> Result<(), DemoError> {
    let exe = std::env::current_exe().map_err(DemoError::Exe)?;
    let sidecar = exe.with_file_name("meshgate-sidecar");
    if !sidecar.is_file() {
        return Err(DemoError::NoSidecar(sidecar));
    }
    // The fixed ports first: a demo still running (perhaps on the same
    // directory) holds them, and must not have its files rewritten.
    check_ports(None, args.listen)?;
    let (layout, snap) = setup::prepare(&args.dir, args.listen)?;
    let appliance = Appliance::from_snapshot(&snap)?;
    check_ports(Some(&appliance), args.listen)?;
    print_intro(&layout, &appliance);

    println!(
        "starting the appliance: meshgate run --config {}",
        layout.config().display()
    );
    sup.spawn(
        "the appliance",
        &exe,
        &[arg("run"), arg("--config"), arg(layout.config().display())],
        layout.log("appliance"),
    )?;
    let w = Waiting::new(
        "the appliance's listeners and control plane",
        START_LIMIT,
        layout.logs(),
    );
    while !(appliance.trust_bundle.is_file()
        && accepts(appliance.control_plane).await
        && accepts(appliance.edge).await
        && accepts(appliance.edge_tls).await)
    {
        w.again(sup).await?;
    }
    println!("  ready in {:.1?}", w.elapsed());

    println!("starting the services, each behind its own sidecar:");
    for i in &INSTANCES {
        start_instance(sup, &exe, &sidecar, &layout, &appliance, i)?;
    }
    let w = Waiting::new(
        "the demo services and their sidecars to listen",
        START_LIMIT,
        layout.logs(),
    );
    for i in &INSTANCES {
        for addr in [i.app, i.outbound, i.inbound] {
            while !accepts(addr).await {
                w.again(sup).await?;
            }
        }
    }
    let issuer = Issuer::load(&layout.dir)?;
    let mut tour = tour::Tour::new(&appliance, &layout, &issuer)?;
    let w = Waiting::new(
        "every instance to join the mesh and be reachable through the gateway",
        START_LIMIT,
        layout.logs(),
    );
    loop {
        let missing = tour.not_reached_yet().await;
        if missing.is_empty() {
            break;
        }
        w.again_missing(sup, &missing).await?;
    }
    println!(
        "  every instance joined the mesh; ready in {:.1?}",
        w.elapsed()
    );

    let failed = tour.run().await;
    tour.print_try_it(&exe);
    if exit_after_tour {
        return match failed {
            0 => Ok(()),
            n => Err(DemoError::TourFailed(n)),
        };
    }
    if failed > 0 {
        println!(
            "{failed} tour check(s) failed (marked FAIL above); the demo keeps running so you can look."
        );
    }
    println!("Running until Ctrl-C.");
    loop {
        sup.check()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn start_instance(
    sup: &mut Supervisor,
    exe: &Path,
    sidecar: &Path,
    layout: &Layout,
    appliance: &Appliance,
    i: &Instance,
) -> Result<(), DemoError> {
    println!(
        "  {:<17} {}  {:<21} app {}  sidecar inbound {} outbound {}",
        i.service, i.version, i.id, i.app, i.inbound, i.outbound
    );
    let mut app = vec![
        arg("demo"),
        arg("service"),
        arg("--name"),
        arg(i.service),
        arg("--version"),
        arg(i.version),
        arg("--instance"),
        arg(i.id),
        arg("--listen"),
        arg(i.app),
    ];
    if let Some(up) = i.upstream {
        app.extend([
            arg("--upstream-service"),
            arg(up),
            arg("--outbound"),
            arg(i.outbound),
        ]);
    }
    sup.spawn(i.id, exe, &app, layout.log(i.id))?;
    let side = [
        arg("--control-plane"),
        arg(appliance.control_plane),
        arg("--trust-domain"),
        arg(&appliance.trust_domain),
        arg("--ca-file"),
        arg(appliance.trust_bundle.display()),
        arg("--service"),
        arg(i.service),
        arg("--label"),
        format!("version={}", i.version),
        arg("--app"),
        arg(i.app),
        arg("--inbound"),
        arg(i.inbound),
        arg("--outbound"),
        arg(i.outbound),
        arg("--join-token-file"),
        arg(layout.join_token().display()),
    ];
    let name = format!("{}-sidecar", i.id);
    sup.spawn(&name, sidecar, &side, layout.log(&name))
}

fn print_intro(layout: &Layout, a: &Appliance) {
    println!("meshgate demo: the seed shop of config/examples/seed.toml, in the mesh");
    println!("  directory      {}", layout.dir.display());
    println!("                 seed.toml (the config), tls/ca.pem (the gateway's CA), logs/");
    println!("  gateway        http://{}  https://{}", a.edge, a.edge_tls);
    println!(
        "  control plane  {} (trust domain {})",
        a.control_plane, a.trust_domain
    );
    println!("  admin API      {}", a.admin);
}
