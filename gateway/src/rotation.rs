//! `meshgate mesh rotate-ca` and `meshgate mesh retire-roots`: a root
//! rotation of the generated mesh CA, in two steps the operator runs.
//!
//! 1. `rotate-ca` writes a new CA into `state_dir/ca` and keeps the old
//!    root in `previous-roots.pem`. A running appliance notices within a
//!    second: it pushes the trust bundle holding both roots to every
//!    sidecar, then issues from the new CA. Sidecars move to the new CA as
//!    they renew (at half their lifetime), and peers on either CA keep
//!    trusting each other meanwhile.
//! 2. `retire-roots`, once every workload has renewed (after one
//!    `workload_cert_ttl`), drops the old root from the bundle.
//!
//! An operator-supplied CA (`ca_cert_file`) is rotated by replacing its
//! files instead; the appliance keeps trusting the old root until restart.

use std::path::Path;
use std::process::ExitCode;

use meshgate_config::CaSource;

/// What to do.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Start a rotation.
    Rotate,
    /// Finish it.
    Retire,
}

/// Runs one rotation step for the CA of the config at `config`.
pub fn run(step: Step, config: &Path) -> ExitCode {
    let snap = match meshgate_config::load_file(config) {
        Ok(s) => s,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::FAILURE;
        }
    };
    if let CaSource::Files { cert, .. } = &snap.mesh.ca {
        eprintln!(
            "error: the mesh CA is the operator's ({}); rotate it by replacing ca_cert_file and \
             ca_key_file (the running appliance keeps trusting the old root until restart)",
            cert.display()
        );
        return ExitCode::FAILURE;
    }
    let dir = snap.mesh.state_dir.join("ca");
    let td = &snap.mesh.trust_domain;
    let result = match step {
        Step::Rotate => meshgate_identity::rotate(&dir, td).map(|ca| {
            println!(
                "new mesh CA written to {}; the bundle trusts {} roots until `meshgate mesh \
                 retire-roots` (run it after {} or later)",
                dir.display(),
                ca.trust_bundle_pem().matches("BEGIN CERTIFICATE").count(),
                humantime::format_duration(snap.mesh.workload_cert_ttl)
            );
        }),
        Step::Retire => meshgate_identity::retire_previous_roots(&dir).map(|()| {
            println!("previous mesh roots retired in {}", dir.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
