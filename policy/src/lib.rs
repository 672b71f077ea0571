//! Sans-I/O decision logic shared by every meshgate data path: the pingora
//! listeners of the gateway, its HTTP/3 listener and the sidecar.
//!
//! Everything here takes the current time (`std::time::Instant`) and
//! randomness ([`random::Random`]) as arguments and returns decisions. The
//! crate owns no sockets, tasks, timers or locks; shared per-endpoint state
//! (load, ejection, budgets) is kept in atomics so that many worker threads
//! can consult it without blocking each other.
//!
//! What it does not do: parse TOML (that is `meshgate-config`), touch the
//! network, or read a clock.

pub mod authz;
pub mod breaker;
pub mod deadline;
pub mod lb;
pub mod path;
pub mod random;
pub mod retry;
pub mod route;
pub mod split;
