//! The live configuration: one `Arc<Snapshot>` behind `arc-swap`.
//!
//! Readers (every request) take the current snapshot with one atomic load
//! and keep it for the request's lifetime. Writers (SIGHUP, file watch,
//! admin API) compile a candidate off the request path and swap it in only
//! if it compiled cleanly; on error the running snapshot stays and the
//! diagnostics are returned to whoever asked.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::diag::Diagnostics;
use crate::diff::ConfigDiff;
use crate::snapshot::Snapshot;

/// Where the live configuration is re-read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file on disk.
    File(PathBuf),
    /// The embedded default (reload re-reads nothing).
    Embedded,
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The candidate was identical to the running config.
    Unchanged {
        /// The running version.
        version: u64,
    },
    /// A new snapshot is live.
    Applied {
        /// Its version.
        version: u64,
        /// What changed.
        diff: ConfigDiff,
    },
}

/// Holds the live snapshot and swaps it atomically.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    source: ConfigSource,
    next_version: AtomicU64,
    // Serialises writers only; readers never touch it.
    writer: Mutex<()>,
}

impl ConfigStore {
    /// A store serving `initial`, reloading from `source`.
    pub fn new(mut initial: Snapshot, source: ConfigSource) -> Self {
        initial.version = 1;
        Self {
            current: ArcSwap::from_pointee(initial),
            source,
            next_version: AtomicU64::new(2),
            writer: Mutex::new(()),
        }
    }

    /// Loads `path` and serves it.
    pub fn from_file(path: &Path) -> Result<Self, Diagnostics> {
        let snap = crate::load_file(path)?;
        Ok(Self::new(snap, ConfigSource::File(path.to_owned())))
    }

    /// The live snapshot. Cheap: one atomic load and a reference count.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Where reloads read from.
    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Re-reads the source and applies it if it compiles.
    pub fn reload(&self) -> Result<ReloadOutcome, Diagnostics> {
        match &self.source {
            ConfigSource::File(p) => {
                let candidate = crate::load_file(p)?;
                Ok(self.install(candidate))
            }
            ConfigSource::Embedded => Ok(ReloadOutcome::Unchanged {
                version: self.current().version,
            }),
        }
    }

    /// Compiles `text` (e.g. from `PUT /config`) and applies it if clean.
    /// Relative paths resolve against the source file's directory.
    pub fn apply_text(&self, text: &str, origin: &str) -> Result<ReloadOutcome, Diagnostics> {
        let base = match &self.source {
            ConfigSource::File(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ConfigSource::Embedded => PathBuf::from("."),
        };
        let candidate = crate::load_str(text, origin, &base)?;
        Ok(self.install(candidate))
    }

    /// Swaps in an already compiled snapshot (unless identical).
    pub fn install(&self, mut candidate: Snapshot) -> ReloadOutcome {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        if old.digest == candidate.digest {
            return ReloadOutcome::Unchanged {
                version: old.version,
            };
        }
        let diff = ConfigDiff::between(&old, &candidate);
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        candidate.version = version;
        self.current.store(Arc::new(candidate));
        ReloadOutcome::Applied { version, diff }
    }
}
