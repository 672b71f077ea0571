//! meshgate's configuration: the one TOML file that describes the edge and
//! the mesh.
//!
//! Loading goes text → [`raw`] structs (shape only) → one validation pass →
//! an immutable [`Snapshot`] of `meshgate_policy` types. Every problem is
//! reported at once as a [`Diagnostic`] with file, line, column and a hint.
//! [`ConfigStore`] holds the live snapshot behind `arc-swap` and replaces it
//! only with a snapshot that compiled cleanly.
//!
//! What it does not do: watch files or handle signals (the binaries decide
//! when to reload), or open sockets.

mod diag;
mod diff;
mod parse;
mod raw;
mod snapshot;
mod store;
mod validate;

use std::path::Path;

pub use diag::{Diagnostic, Diagnostics};
pub use diff::{Change, ChangeKind, ConfigDiff};
pub use snapshot::*;
pub use store::{
    ConfigSource, ConfigStore, Discovered, ReloadOutcome, SplitOverrideError, SplitOverrides,
};

/// The configuration `meshgate run` uses when given no `--config`: a
/// plaintext listener on 127.0.0.1:8080 that serves the status page.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Name used for the embedded default in diagnostics and the admin API.
pub const EMBEDDED_ORIGIN: &str = "<embedded default>";

/// Loads and compiles a config file. Relative paths inside it (certificates,
/// keys, JWKS files) are resolved from the file's directory.
pub fn load_file(path: &Path) -> Result<Snapshot, Diagnostics> {
    let shown = path.display().to_string();
    let text = match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                return Err(single(
                    &shown,
                    format!(
                        "the file is not UTF-8 (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                    "save the file as UTF-8",
                ));
            }
        },
        Err(e) => {
            return Err(single(
                &shown,
                format!("cannot read the config file: {e}"),
                "check the path and the file's permissions",
            ));
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, &shown, base)
}

/// Compiles config text. `origin` names it in diagnostics; `base` is the
/// directory relative paths are resolved from.
pub fn load_str(text: &str, origin: &str, base: &Path) -> Result<Snapshot, Diagnostics> {
    let mut sink = diag::Sink::new(origin, text);
    let raw = parse::parse_raw(&mut sink, text);
    let snapshot =
        raw.and_then(|raw| validate::compile(raw, &mut sink, base, origin, digest(text)));
    match snapshot {
        Some(mut s) if sink.is_empty() => {
            s.source_text = std::sync::Arc::from(text);
            Ok(s)
        }
        _ => Err(sink.finish()),
    }
}

/// The embedded default, compiled.
pub fn load_embedded() -> Result<Snapshot, Diagnostics> {
    load_str(EMBEDDED_DEFAULT, EMBEDDED_ORIGIN, Path::new("."))
}

fn single(file: &str, message: String, hint: &str) -> Diagnostics {
    let mut sink = diag::Sink::new(file, "");
    sink.error_hint(0..0, message, hint);
    sink.finish()
}

/// A short hex digest of config text, to tell versions apart.
fn digest(text: &str) -> String {
    format!(
        "{:016x}",
        meshgate_policy::random::stable_hash(text.as_bytes())
    )
}
