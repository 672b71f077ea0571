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

use meshgate_policy::split::{Split, SplitTarget};

use crate::diag::Diagnostics;
use crate::diff::ConfigDiff;
use crate::snapshot::{Discovery, EndpointSpec, ServiceSpec, Snapshot, SplitSpec};

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

/// Split weights set at run time (the admin API), by service name. They
/// are laid over every snapshot the store installs — a file reload, `PUT
/// /config`, a control-plane push, a registry change — until cleared, and
/// dropped when a new config no longer has the service or one of the
/// subsets (the config's own split then applies again).
pub type SplitOverrides = BTreeMap<String, Vec<SplitTarget>>;

/// Why a split override was refused; the running config is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitOverrideError {
    /// No such service in the running config.
    #[error("no service named \"{0}\"")]
    UnknownService(String),
    /// The service defines no subsets.
    #[error("service \"{0}\" has no subsets to split over; define [[service.subset]] first")]
    NoSubsets(String),
    /// No targets.
    #[error("a split needs at least one target")]
    Empty,
    /// A target names a subset the service does not have.
    #[error("service \"{service}\" has no subset \"{subset}\" (defined: {known})")]
    UnknownSubset {
        /// The service.
        service: String,
        /// The unknown name.
        subset: String,
        /// The subsets it has, comma-separated.
        known: String,
    },
    /// A subset appears twice.
    #[error("subset \"{0}\" appears twice in the split")]
    Duplicate(String),
    /// Weights are percentages.
    #[error("split weights add up to {0}, not 100 (weights are percentages)")]
    Sum(u64),
}

/// Checks `targets` as a split of `spec`, as the config does.
fn check_split(spec: &ServiceSpec, targets: &[SplitTarget]) -> Result<(), SplitOverrideError> {
    if spec.subsets.is_empty() {
        return Err(SplitOverrideError::NoSubsets(spec.name.clone()));
    }
    if targets.is_empty() {
        return Err(SplitOverrideError::Empty);
    }
    for (i, t) in targets.iter().enumerate() {
        if !spec.subsets.iter().any(|s| s.name == t.name) {
            return Err(SplitOverrideError::UnknownSubset {
                service: spec.name.clone(),
                subset: t.name.clone(),
                known: spec
                    .subsets
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if targets[..i].iter().any(|o| o.name == t.name) {
            return Err(SplitOverrideError::Duplicate(t.name.clone()));
        }
    }
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total != 100 {
        return Err(SplitOverrideError::Sum(total));
    }
    Ok(())
}

/// `spec` with its split replaced by `targets` (already checked), keeping
/// the configured sticky key and override header.
fn with_split(spec: &ServiceSpec, targets: &[SplitTarget]) -> Option<ServiceSpec> {
    let split = Split::new(targets.to_vec()).ok()?;
    let target_subsets = targets
        .iter()
        .map(|t| spec.subsets.iter().position(|s| s.name == t.name))
        .collect::<Option<Vec<usize>>>()?;
    let mut out = spec.clone();
    let (sticky, override_header) = spec
        .split
        .as_ref()
        .map(|s| (s.sticky.clone(), s.override_header.clone()))
        .unwrap_or_default();
    out.split = Some(SplitSpec {
        split,
        target_subsets,
        sticky,
        override_header,
    });
    Some(out)
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
    writer: Mutex<Layers>,
}

/// What the store lays over each compiled config.
#[derive(Debug)]
struct Layers {
    /// The last installed config as compiled, before any layer: what a
    /// cleared override falls back to.
    base: Arc<Snapshot>,
    /// Discovered endpoints (None until the control plane sets them),
    /// which every installed snapshot gets for its `discovery = "mesh"`
    /// services.
    discovered: Option<Discovered>,
    /// Split weights set at run time.
    splits: SplitOverrides,
}

impl Layers {
    /// The base with every layer applied; overrides that no longer fit
    /// are dropped.
    fn candidate(&mut self) -> Snapshot {
        let mut snap = Snapshot::clone(&self.base);
        overlay(&mut snap, self.discovered.as_ref(), &mut self.splits);
        snap
    }
}

impl ConfigStore {
    /// A store serving `initial`, reloading from `source`.
    pub fn new(mut initial: Snapshot, source: ConfigSource) -> Self {
        initial.version = 1;
        let base = Arc::new(initial.clone());
        Self {
            current: ArcSwap::from_pointee(initial),
            source,
            next_version: AtomicU64::new(2),
            writer: Mutex::new(Layers {
                base,
                discovered: None,
                splits: SplitOverrides::new(),
            }),
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
                // A file truncated to be rewritten in place reads empty,
                // which is a valid config without listeners or routes:
                // never swap that in for the running one.
                if std::fs::metadata(p).is_ok_and(|m| m.len() == 0) {
                    return Err(crate::single(
                        &p.display().to_string(),
                        "the config file is empty".to_owned(),
                        "write the whole config; the running one serves until then",
                    ));
                }
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

    /// Swaps in an already compiled snapshot (unless identical), with the
    /// discovered endpoints and split overrides laid over it.
    pub fn install(&self, candidate: Snapshot) -> ReloadOutcome {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        guard.base = Arc::new(candidate);
        let candidate = guard.candidate();
        self.swap(candidate)
    }

    /// Replaces the discovered endpoints and re-applies the running
    /// config with them (a new version when any mesh service changed).
    pub fn set_discovered(&self, discovered: Discovered) -> ReloadOutcome {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        guard.discovered = Some(discovered);
        let candidate = guard.candidate();
        self.swap(candidate)
    }

    /// Sets `service`'s split to `targets` at run time: checked like the
    /// config's (subsets exist, no repeats, percentages summing to 100),
    /// then applied atomically as a new version. It stays over reloads
    /// until [`ConfigStore::clear_split`] (see [`SplitOverrides`]).
    pub fn set_split(
        &self,
        service: &str,
        targets: Vec<SplitTarget>,
    ) -> Result<ReloadOutcome, SplitOverrideError> {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let spec = guard
            .base
            .service(service)
            .cloned()
            .ok_or_else(|| SplitOverrideError::UnknownService(service.to_owned()))?;
        check_split(&spec, &targets)?;
        guard.splits.insert(service.to_owned(), targets);
        let candidate = guard.candidate();
        Ok(self.swap(candidate))
    }

    /// Removes `service`'s run-time split: the config's applies again.
    /// `None` when it had none.
    pub fn clear_split(&self, service: &str) -> Option<ReloadOutcome> {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        guard.splits.remove(service)?;
        let candidate = guard.candidate();
        Some(self.swap(candidate))
    }

    /// The split overrides in force.
    pub fn split_overrides(&self) -> SplitOverrides {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        guard.splits.clone()
    }

    /// The running config as compiled, without discovered endpoints or
    /// split overrides: what the operator's file says.
    pub fn configured(&self) -> Arc<Snapshot> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        guard.base.clone()
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
/// every overridden service its run-time split, and folds both into the
/// digest, so a registry or split change is a new version. Overrides whose
/// service or subsets are gone are dropped from `splits`.
fn overlay(snap: &mut Snapshot, discovered: Option<&Discovered>, splits: &mut SplitOverrides) {
    if discovered.is_none() && splits.is_empty() {
        return;
    }
    let mut text = snap.source_digest.clone();
    if let Some(discovered) = discovered {
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
    }
    splits.retain(|name, targets| {
        let Some(i) = snap.service_index.get(name).copied() else {
            return false;
        };
        let Some(svc) = snap.services.get_mut(i) else {
            return false;
        };
        if check_split(svc, targets).is_err() {
            return false;
        }
        let Some(spec) = with_split(svc, targets) else {
            return false;
        };
        text.push_str(&format!("|split:{name}"));
        for t in targets.iter() {
            text.push_str(&format!(":{}={}", t.name, t.weight));
        }
        *svc = Arc::new(spec);
        true
    });
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

    const SPLIT: &str = r#"
[[service]]
name = "catalog"
endpoints = [
  { address = "127.0.0.1:9001", labels = { version = "v1" } },
  { address = "127.0.0.1:9002", labels = { version = "v2" } },
]
[[service.subset]]
name = "v1"
labels = { version = "v1" }
[[service.subset]]
name = "v2"
labels = { version = "v2" }
[service.split]
targets = [{ subset = "v1", weight = 90 }, { subset = "v2", weight = 10 }]
sticky = { header = "x-user" }
"#;

    fn weights(s: &ConfigStore) -> Vec<(String, u32)> {
        let snap = s.current();
        let svc = snap.service("catalog").expect("catalog");
        let sp = svc.split.as_ref().expect("split");
        sp.split
            .targets()
            .iter()
            .map(|t| (t.name.clone(), t.weight))
            .collect()
    }

    fn targets(list: &[(&str, u32)]) -> Vec<SplitTarget> {
        list.iter()
            .map(|(n, w)| SplitTarget {
                name: (*n).to_owned(),
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn split_overrides_are_checked_applied_kept_over_reloads_and_cleared() {
        let snap = crate::load_str(SPLIT, "t.toml", Path::new(".")).expect("valid");
        let s = ConfigStore::new(snap, ConfigSource::Embedded);
        for (bad, want) in [
            (vec![], SplitOverrideError::Empty),
            (
                targets(&[("v1", 50), ("v3", 50)]),
                SplitOverrideError::UnknownSubset {
                    service: "catalog".into(),
                    subset: "v3".into(),
                    known: "v1, v2".into(),
                },
            ),
            (
                targets(&[("v1", 50), ("v1", 50)]),
                SplitOverrideError::Duplicate("v1".into()),
            ),
            (
                targets(&[("v1", 50), ("v2", 40)]),
                SplitOverrideError::Sum(90),
            ),
        ] {
            assert_eq!(s.set_split("catalog", bad).err(), Some(want));
        }
        assert_eq!(
            s.set_split("nope", targets(&[("v1", 100)])).err(),
            Some(SplitOverrideError::UnknownService("nope".into()))
        );
        assert_eq!(s.current().version, 1, "refusals change nothing");

        let out = s.set_split("catalog", targets(&[("v1", 20), ("v2", 80)]));
        assert!(
            matches!(out, Ok(ReloadOutcome::Applied { version: 2, .. })),
            "{out:?}"
        );
        assert_eq!(weights(&s), [("v1".into(), 20), ("v2".into(), 80)]);
        let snap = s.current();
        let sp = snap
            .service("catalog")
            .and_then(|c| c.split.as_ref())
            .expect("split");
        assert!(sp.sticky.is_some(), "the sticky key stays");
        assert_eq!(sp.target_subsets, [0, 1]);

        // A reload keeps it...
        let edited = format!("{SPLIT}\n# edited\n");
        assert!(matches!(
            s.apply_text(&edited, "t.toml"),
            Ok(ReloadOutcome::Applied { .. })
        ));
        assert_eq!(weights(&s), [("v1".into(), 20), ("v2".into(), 80)]);
        assert_eq!(
            s.configured()
                .service("catalog")
                .and_then(|c| c.split.as_ref())
                .map(|sp| sp.split.targets()[0].weight),
            Some(90)
        );
        // ...clearing it brings the config's back...
        assert!(matches!(
            s.clear_split("catalog"),
            Some(ReloadOutcome::Applied { .. })
        ));
        assert_eq!(weights(&s), [("v1".into(), 90), ("v2".into(), 10)]);
        assert!(s.clear_split("catalog").is_none());
        // ...and a config without the subset drops it.
        s.set_split("catalog", targets(&[("v2", 100)]))
            .expect("valid");
        let without_v2 = SPLIT
            .replace(
                "[[service.subset]]\nname = \"v2\"\nlabels = { version = \"v2\" }\n",
                "",
            )
            .replace(", { subset = \"v2\", weight = 10 }", "")
            .replace("\"v1\", weight = 90", "\"v1\", weight = 100");
        s.apply_text(&without_v2, "t.toml").expect("valid");
        assert_eq!(weights(&s), [("v1".into(), 100)]);
        assert!(s.split_overrides().is_empty());
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
