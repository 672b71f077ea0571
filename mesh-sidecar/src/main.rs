//! `meshgate-sidecar`: the per-instance mesh proxy.
//!
//! Thin on purpose: the sidecar runs the same request pipeline as the
//! gateway, so its code lives in the `meshgate` crate's `sidecar` module
//! (outbound listener for the local app, inbound mTLS listener for peers,
//! the control-plane stream). See that module for what it does.

#[global_allocator]
static ALLOCATOR: meshgate::allocator::Allocator = meshgate::allocator::Allocator;

fn main() -> std::process::ExitCode {
    meshgate::sidecar::main()
}
