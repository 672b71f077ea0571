//! `meshgate-sidecar`: the per-instance mesh proxy.
//!
//! It will sit beside one service instance: an outbound listener for the
//! local application and an inbound mTLS listener for peers, enforcing the
//! policy pushed by the control plane. The data plane arrives with the mesh
//! work; until then this binary parses its command line and says plainly
//! that it cannot run yet, rather than pretending to proxy.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

/// meshgate-sidecar — the mesh proxy that runs beside each service instance.
#[derive(Debug, Parser)]
#[command(name = "meshgate-sidecar", version, about, long_about)]
struct Cli {
    /// Control plane address of the meshgate appliance.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15012")]
    control_plane: SocketAddr,
    /// Name of the local service.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// Labels of this instance, e.g. `version=v2` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Address of the local application.
    #[arg(long, value_name = "ADDR")]
    app: SocketAddr,
    /// File holding the join token.
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    for l in &cli.labels {
        if l.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            eprintln!("error: label \"{l}\" is not KEY=VALUE");
            return ExitCode::from(2);
        }
    }
    eprintln!(
        "error: meshgate-sidecar cannot run yet: the mesh data plane (mTLS, control-plane \
         stream) is not part of this build. Service \"{}\" at {} was not started.",
        cli.service, cli.app
    );
    ExitCode::from(3)
}
