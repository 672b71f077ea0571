//! The meshgate data path and appliance, as a library for the two binaries.
//!
//! `meshgate` (the appliance: edge gateway and control plane) and
//! `meshgate-sidecar` (the per-instance mesh proxy) run the same pingora
//! request pipeline, so it lives here once: routing, authentication,
//! splits, balancing, retries and breakers on the outbound side, mTLS and
//! identity authorization on the inbound side. Decisions live in
//! `meshgate-policy` and the schema in `meshgate-config`; this crate
//! adapts them to pingora's request phases and owns the sockets.

mod access_log;
mod admin;
mod appliance;
mod authn;
pub mod check;
pub mod demo;
mod edge;
mod framing;
mod h3;
mod inbound;
mod mesh;
mod metrics;
mod notify;
mod reload;
mod resilience;
pub mod rotation;
mod runtime;
pub mod server;
pub mod sidecar;
mod status_page;
mod tls;
mod trace;
mod upstream;
