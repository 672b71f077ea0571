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
pub mod allocator;
mod appliance;
mod authn;
pub mod check;
mod client_stream;
mod conn;
pub mod demo;
mod edge;
mod framing;
mod h3;
mod inbound;
mod listen;
mod memory;
mod mesh;
mod metrics;
mod mirror;
mod notify;
mod reload;
mod resilience;
pub mod rotation;
mod runtime;
pub mod server;
pub mod sidecar;
mod status_page;
mod tls;
mod tls_stream;
mod trace;
mod upstream;

/// An error with its causes: reqwest's own message alone is often just
/// "error sending request".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
