//! The mesh control plane: the server that sidecars join, and the client a
//! sidecar runs to join it.
//!
//! Each sidecar keeps one long-lived TLS connection to the control plane
//! (default `127.0.0.1:15012`) and speaks newline-delimited JSON frames over
//! it ([`frame`]). On that connection the sidecar registers its instance
//! (service, address, labels), receives a workload certificate signed from
//! its own CSR (and renews it at half-life), and receives the sidecar config
//! ([`render_sidecar_config`]) whenever it changes, endpoints included.
//!
//! - [`ControlPlane`] is the server: join admission (token, or loopback only
//!   when there is none), the live registry of instances keyed by
//!   (service, address), heartbeat expiry, optional persistence of the
//!   registry across restarts, and pushing updates to every sidecar.
//! - [`run_client`] is the sidecar's side: connect, join, heartbeat, renew,
//!   and reconnect with backoff forever, reporting what it gets as
//!   [`Event`]s.
//!
//! What it does not do: issue certificates itself (the certificate authority
//! is behind the [`Signer`] trait), validate the operator's config against
//! the schema (the caller does that with `meshgate-config` before calling
//! [`ControlPlane::set_config`]), load TLS certificates from files, or run
//! any data path. Several control-plane replicas sharing one registry are
//! not handled here either: one process holds the registry.

mod client;
pub mod frame;
mod random;
mod registry;
mod render;
mod server;

pub use client::{ClientOptions, Event, KeyGenerator, NewKey, run_client};
pub use registry::Instance;
pub use render::render_sidecar_config;
pub use server::{ControlPlane, ServerOptions, SignedCert, Signer};

/// Where sidecars find the control plane unless told otherwise.
pub const DEFAULT_CONTROL_PLANE_ADDRESS: &str = "127.0.0.1:15012";

/// What can go wrong in the control plane outside a single connection:
/// rendering the operator's config, and the registry's state file.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The operator's config text is not TOML.
    #[error("the config is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// A key the control plane reads has the wrong shape.
    #[error("config key `{key}`: {message}")]
    Config {
        /// Where, e.g. `service[1].calls.timeout`.
        key: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// The rendered sidecar config could not be written as TOML.
    #[error("cannot write the sidecar config as TOML: {0}")]
    Render(#[from] toml::ser::Error),
    /// The registry's state file could not be read or written.
    #[error("registry state file {path}: {message}")]
    StateFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O or format error.
        message: String,
    },
}
