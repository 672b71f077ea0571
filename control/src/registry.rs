//! The registered instances, and their state file.
//!
//! The state file exists so that a restarted control plane does not tell
//! every sidecar that a service has no endpoints while the sidecars are
//! still reconnecting. It is JSON, written to a temporary file and renamed
//! over the old one, so a crash leaves either the old or the new registry,
//! never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ControlError;

/// One registered service instance (one sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The service it belongs to.
    pub service: String,
    /// Where peers reach its inbound listener.
    pub address: SocketAddr,
    /// Its labels, as sent at join.
    pub labels: BTreeMap<String, String>,
    /// The identity (SPIFFE ID) its certificate names.
    pub identity: String,
    /// When it joined (for an instance loaded from the state file: when it
    /// first joined the previous control plane).
    pub joined_at: SystemTime,
}

/// The state file's shape. `format` lets a later version tell an old file
/// from a new one.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    instances: Vec<StoredInstance>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredInstance {
    service: String,
    address: SocketAddr,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    identity: String,
    joined_at_unix_ms: u64,
}

const FORMAT: u32 = 1;

/// Reads the registry saved at `path`; a missing file is an empty registry.
pub(crate) fn load(path: &Path) -> Result<Vec<Instance>, ControlError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_error(path, e.to_string())),
    };
    let state: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| state_error(path, e.to_string()))?;
    if state.format != FORMAT {
        return Err(state_error(
            path,
            format!(
                "format {} is not the supported format {FORMAT}",
                state.format
            ),
        ));
    }
    Ok(state
        .instances
        .into_iter()
        .map(|stored| Instance {
            service: stored.service,
            address: stored.address,
            labels: stored.labels,
            identity: stored.identity,
            joined_at: UNIX_EPOCH + Duration::from_millis(stored.joined_at_unix_ms),
        })
        .collect())
}

/// Replaces the registry saved at `path` with `instances`, atomically.
pub(crate) fn save(path: &Path, instances: &[Instance]) -> Result<(), ControlError> {
    let state = StateFile {
        format: FORMAT,
        instances: instances
            .iter()
            .map(|instance| StoredInstance {
                service: instance.service.clone(),
                address: instance.address,
                labels: instance.labels.clone(),
                identity: instance.identity.clone(),
                joined_at_unix_ms: instance
                    .joined_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
            })
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&state).map_err(|e| state_error(path, e.to_string()))?;
    let temp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        // The rename must not become visible before the data it points to.
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        state_error(path, e.to_string())
    })
}

/// `<file>.tmp` beside the file: a rename is only atomic within one file
/// system.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn state_error(path: &Path, message: String) -> ControlError {
    ControlError::StateFile {
        path: path.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "meshgate-control-registry-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn saved_registry_loads_back() {
        let dir = dir("round-trip");
        let path = dir.join("registry.json");
        assert_eq!(load(&path).expect("missing file"), Vec::new());
        let instances = vec![Instance {
            service: "product-catalog".into(),
            address: "127.0.0.1:9101".parse().expect("address"),
            labels: BTreeMap::from([("version".into(), "v1".into())]),
            identity: "spiffe://t/service/product-catalog".into(),
            joined_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        }];
        save(&path, &instances).expect("save");
        assert!(!temp_path(&path).exists());
        assert_eq!(load(&path).expect("load"), instances);
        save(&path, &[]).expect("save empty");
        assert_eq!(load(&path).expect("load"), Vec::new());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = dir("corrupt");
        let path = dir.join("registry.json");
        std::fs::write(&path, b"{ not json").expect("write");
        let err = load(&path).expect_err("corrupt");
        assert!(err.to_string().contains("registry.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
