//! `meshgate`: the edge-to-mesh gateway appliance.
//!
//! The binary is thin: parse the command line, load and check the config,
//! then either print diagnostics (`check`) or build and run the pingora
//! server (`run`). Decisions live in `meshgate-policy`, the schema in
//! `meshgate-config`; this crate adapts them to pingora's request phases.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshgate::{check, demo, rotation, server};

#[global_allocator]
static ALLOCATOR: meshgate::allocator::Allocator = meshgate::allocator::Allocator;

/// meshgate — an edge gateway and service mesh in one appliance.
///
/// Terminates HTTP/1.1 and HTTP/2 (and HTTP/3) at the edge, authenticates
/// users, routes into the mesh and applies retries, timeouts, circuit
/// breaking and load balancing on the way. One TOML file configures it all;
/// see config/README.md for every key.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    ///
    /// Without --config it serves the embedded default: a status page on
    /// http://127.0.0.1:8080/. SIGHUP or a change to the config file reloads
    /// it (a bad file is rejected and the running config keeps serving);
    /// SIGTERM drains in-flight requests and exits; SIGINT exits at once.
    Run {
        /// Config file (TOML). Omit to run the embedded default.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// With the embedded default only: serve the status page on this
        /// address instead of 127.0.0.1:8080.
        #[arg(long, value_name = "ADDR", conflicts_with = "config")]
        listen: Option<std::net::SocketAddr>,
        /// With the embedded default only: serve the admin API on this
        /// address instead of 127.0.0.1:9901 (so two can run on one host).
        #[arg(long, value_name = "ADDR", conflicts_with = "config")]
        admin: Option<std::net::SocketAddr>,
        /// Worker threads per listener (default: number of CPUs).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Check the config for changes every this many milliseconds
        /// (0 turns the file watch off; SIGHUP still reloads).
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        watch_interval_ms: u64,
    },
    /// Check config files without running anything.
    ///
    /// Exits 0 when every file is valid. Otherwise prints every problem as
    /// `FILE:LINE:COL: error: WHAT` with the offending line and a hint, and
    /// exits 1. With --diff OLD NEW, checks both and prints what reloading
    /// from OLD to NEW would change (routes, services, split weights,
    /// endpoints, listeners) without applying anything.
    Check {
        /// Print what changes between two files (exactly two FILES: OLD NEW).
        #[arg(long)]
        diff: bool,
        /// Config files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run the seed shop in the mesh on this machine, with a guided tour.
    ///
    /// Starts the appliance on config/examples/seed.toml and five demo
    /// service instances (user-account, product-catalog v1 twice and v2,
    /// order-processing), each behind its own meshgate-sidecar; then shows
    /// authentication, mTLS identities, the sticky canary and retries
    /// around a flaky instance, prints commands to try, and runs until
    /// Ctrl-C. Keys, certificates, config and logs go to --dir.
    Demo(demo::DemoArgs),
    /// Mesh operations on a config's mesh CA.
    #[command(subcommand)]
    Mesh(MeshCommand),
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// Start a root rotation of the generated mesh CA: write a new CA and
    /// keep trusting the old root. A running appliance picks it up within
    /// a second and moves every workload to the new CA as it renews.
    RotateCa {
        /// The appliance's config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Finish a root rotation: stop trusting the previous roots. Run it
    /// once every workload has renewed (one workload_cert_ttl after
    /// rotate-ca).
    RetireRoots {
        /// The appliance's config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { diff, files } => check::run(diff, &files),
        Command::Run {
            config,
            listen,
            admin,
            threads,
            watch_interval_ms,
        } => server::run(
            config,
            server::Embedded { listen, admin },
            threads,
            watch_interval_ms,
        ),
        Command::Demo(args) => demo::main(args),
        Command::Mesh(MeshCommand::RotateCa { config }) => {
            rotation::run(rotation::Step::Rotate, &config)
        }
        Command::Mesh(MeshCommand::RetireRoots { config }) => {
            rotation::run(rotation::Step::Retire, &config)
        }
    }
}
