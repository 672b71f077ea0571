//! The live configuration: one `Arc<Snapshot>` behind `arc-swap`.
//!
//! Readers (every request) take the current snapshot with one atomic load
//! and keep it for the request's lifetime. Writers (SIGHUP, file watch,
//! admin API) compile a candidate off the request path and swap it in only
//! if it compiled cleanly; on error the running snapshot stays and the
//! diagnostics are returned to whoever asked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::diag::Diagnostics;
use crate::diff::ConfigDiff;
use crate::snapshot::{Discovery, EndpointSpec, ServiceSpec, Snapshot};

/// Where the live configuration is re-read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file on disk.
    File(PathBuf),
    /// The embedded default (reload re-reads nothing).
    Embedded,
    /// Pushed by the mesh control plane (a sidecar's config); reload
    /// re-reads nothing, updates arrive through `apply_text`.
    ControlPlane,
}

/// Endpoints registered with the control plane, by service name: what
/// `discovery = "mesh"` services balance over in the appliance.
pub type Discovered = BTreeMap<String, Vec<EndpointSpec>>;

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
    // Serialises writers only; readers never touch it. Holds the
    // discovered endpoints (None until the control plane sets them), which
    // every installed snapshot gets for its `discovery = "mesh"` services.
    writer: Mutex<Option<Discovered>>,
}

impl ConfigStore {
    /// A store serving `initial`, reloading from `source`.
    pub fn new(mut initial: Snapshot, source: ConfigSource) -> Self {
        initial.version = 1;
        Self {
            current: ArcSwap::from_pointee(initial),
            source,
            next_version: AtomicU64::new(2),
            writer: Mutex::new(None),
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
            ConfigSource::Embedded | ConfigSource::ControlPlane => Ok(ReloadOutcome::Unchanged {
                version: self.current().version,
            }),
        }
    }

    /// Compiles `text` (e.g. from `PUT /config`) and applies it if clean.
    /// Relative paths resolve against the source file's directory.
    pub fn apply_text(&self, text: &str, origin: &str) -> Result<ReloadOutcome, Diagnostics> {
        let base = match &self.source {
            ConfigSource::File(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ConfigSource::Embedded | ConfigSource::ControlPlane => PathBuf::from("."),
        };
        let candidate = crate::load_str(text, origin, &base)?;
        Ok(self.install(candidate))
    }

    /// Swaps in an already compiled snapshot (unless identical).
    pub fn install(&self, mut candidate: Snapshot) -> ReloadOutcome {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = guard.as_ref() {
            overlay(&mut candidate, d);
        }
        self.swap(candidate)
    }

    /// Replaces the discovered endpoints and re-applies the running
    /// config with them (a new version when any mesh service changed).
    pub fn set_discovered(&self, discovered: Discovered) -> ReloadOutcome {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut candidate = Snapshot::clone(&self.current.load_full());
        overlay(&mut candidate, &discovered);
        *guard = Some(discovered);
        self.swap(candidate)
    }

    // Callers hold the writer lock.
    fn swap(&self, mut candidate: Snapshot) -> ReloadOutcome {
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

/// Gives every `discovery = "mesh"` service its discovered endpoints and
/// folds them into the digest, so a registry change is a new version.
fn overlay(snap: &mut Snapshot, discovered: &Discovered) {
    let mut text = snap.source_digest.clone();
    for svc in &mut snap.services {
        if svc.discovery != Discovery::Mesh {
            continue;
        }
        let endpoints = discovered.get(&svc.name).cloned().unwrap_or_default();
        for e in &endpoints {
            text.push_str(&format!("|{}={}{:?}", svc.name, e.address, e.labels));
        }
        if svc.endpoints != endpoints {
            let mut spec = ServiceSpec::clone(svc);
            spec.endpoints = endpoints;
            *svc = Arc::new(spec);
        }
    }
    snap.digest = format!(
        "{:016x}",
        meshgate_policy::random::stable_hash(text.as_bytes())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[[service]]
name = "fixed"
endpoints = [{ address = "127.0.0.1:9000" }]

[[service]]
name = "meshed"
discovery = "mesh"
"#;

    fn store() -> ConfigStore {
        let snap = crate::load_str(TEXT, "t.toml", Path::new(".")).expect("valid");
        ConfigStore::new(snap, ConfigSource::Embedded)
    }

    fn endpoint(addr: &str, version: &str) -> EndpointSpec {
        EndpointSpec {
            address: addr.parse().expect("address"),
            labels: BTreeMap::from([("version".to_owned(), version.to_owned())]),
            weight: 1,
        }
    }

    #[test]
    fn discovered_endpoints_reach_mesh_services_only() {
        let s = store();
        assert!(
            s.current()
                .service("meshed")
                .expect("meshed")
                .endpoints
                .is_empty()
        );
        let d = Discovered::from([
            ("meshed".to_owned(), vec![endpoint("127.0.0.1:7001", "v1")]),
            ("fixed".to_owned(), vec![endpoint("127.0.0.1:7002", "v1")]),
        ]);
        let out = s.set_discovered(d.clone());
        assert!(
            matches!(out, ReloadOutcome::Applied { version: 2, .. }),
            "{out:?}"
        );
        let snap = s.current();
        assert_eq!(
            snap.service("meshed").expect("meshed").endpoints,
            d["meshed"]
        );
        assert_eq!(
            snap.service("fixed").expect("fixed").endpoints[0]
                .address
                .port(),
            9000,
            "static services keep their own endpoints"
        );
        // The same registry again changes nothing.
        assert!(matches!(
            s.set_discovered(d),
            ReloadOutcome::Unchanged { .. }
        ));
    }

    #[test]
    fn a_reloaded_config_keeps_the_discovered_endpoints() {
        let s = store();
        let d = Discovered::from([("meshed".to_owned(), vec![endpoint("127.0.0.1:7001", "v2")])]);
        s.set_discovered(d.clone());
        let edited = format!("{TEXT}\n# edited\n");
        let out = s.apply_text(&edited, "t.toml").expect("valid");
        assert!(matches!(out, ReloadOutcome::Applied { .. }), "{out:?}");
        assert_eq!(
            s.current().service("meshed").expect("meshed").endpoints,
            d["meshed"]
        );
        // An instance leaving is a change too.
        assert!(matches!(
            s.set_discovered(Discovered::new()),
            ReloadOutcome::Applied { .. }
        ));
        assert!(
            s.current()
                .service("meshed")
                .expect("meshed")
                .endpoints
                .is_empty()
        );
    }
}
