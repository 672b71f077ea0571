//! The mesh's identities and its certificate authority.
//!
//! Every workload in a meshgate mesh is named by a SPIFFE ID
//! ([`SpiffeId`]: `spiffe://<trust-domain>/service/<name>`, `/gateway`,
//! `/control-plane`) and proves it with a short-lived X.509 certificate that
//! carries the ID as a URI SAN, plus a DNS SAN so that ordinary hostname
//! verification works too. The control plane (in the `meshgate` appliance)
//! runs the [`Ca`]; sidecars generate a [`WorkloadKey`], send its CSR and
//! get back an [`Issued`] chain. All keys are ECDSA P-256.
//!
//! What it does:
//! - parse and format SPIFFE IDs strictly per the SPIFFE spec;
//! - generate, load and persist the root ([`Ca::load_or_generate`]), and
//!   rotate it with an overlap period ([`rotate`], [`retire_previous_roots`]);
//! - sign CSRs for an identity the *caller* chooses: a CSR only proves
//!   possession of a key, the names in it are ignored;
//! - read back what a certificate says ([`validity`], [`spiffe_id_of`]).
//!
//! What it does not do: decide who a workload is (the control plane
//! authenticates the requester before calling [`Ca::sign_csr`]), transport
//! CSRs, renew certificates on a timer, verify TLS peers (rustls does, with
//! [`Ca::trust_bundle_pem`] as roots), keep revocation lists (leaves are
//! short-lived instead), or issue intermediate CAs.

mod ca;
mod certificate;
mod error;
mod spiffe;
mod store;
mod workload;

pub use ca::{Ca, Issued};
pub use certificate::{certs_der, spiffe_id_of, validity};
pub use error::IdentityError;
pub use spiffe::SpiffeId;
pub use store::{retire_previous_roots, rotate};
pub use workload::WorkloadKey;
