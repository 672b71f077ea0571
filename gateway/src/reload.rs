//! Hot reload: on SIGHUP, and when the config file changes on disk.
//!
//! The candidate is compiled here, off the request path; only a clean
//! snapshot is swapped in. A rejected file is logged with every diagnostic
//! and the running version keeps serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use meshgate_config::{ConfigSource, ConfigStore, ReloadOutcome};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::tls::LiveCerts;

/// The reload task.
#[derive(Debug)]
pub(crate) struct Reloader {
    store: Arc<ConfigStore>,
    watch: Option<Duration>,
    /// Live certificates of each TLS listener, by listener name.
    certs: HashMap<String, Arc<LiveCerts>>,
    /// The config file's stamp from before it was loaded: a change made
    /// after that, even before this task starts, is a change to apply.
    loaded: Option<Stamp>,
}

impl Reloader {
    /// `loaded` is the file's [`stamp`] taken before the store read it.
    pub(crate) fn new(
        store: Arc<ConfigStore>,
        watch_ms: u64,
        certs: HashMap<String, Arc<LiveCerts>>,
        loaded: Option<Stamp>,
    ) -> Self {
        Self {
            store,
            watch: (watch_ms > 0).then(|| Duration::from_millis(watch_ms)),
            certs,
            loaded,
        }
    }

    fn reload_certificates(&self) {
        reload_certificates(&self.store, &self.certs);
    }

    fn reload(&self, why: &str) {
        let running = self.store.current().version;
        match self.store.reload() {
            Ok(ReloadOutcome::Unchanged { version }) => {
                crate::metrics::config_reload("unchanged", version);
                tracing::info!(version, trigger = why, "config unchanged");
            }
            Ok(ReloadOutcome::Applied { version, diff }) => {
                crate::metrics::config_reload("applied", version);
                tracing::info!(version, trigger = why, "config reloaded:\n{diff}");
                self.reload_certificates();
                for c in diff.needs_restart() {
                    tracing::warn!(
                        "{} \"{}\" changed: this takes effect only after a restart",
                        c.section,
                        c.name
                    );
                }
            }
            Err(diags) => {
                crate::metrics::config_reload("rejected", running);
                tracing::error!(
                    running_version = running,
                    trigger = why,
                    "config reload rejected, still serving version {running}:\n{diags}"
                );
            }
        }
    }
}

/// Keeps a SIGHUP from ending the process (its default action) from now
/// on. Called first thing at start-up: a reload sent right after the
/// listeners accept would otherwise kill a gateway whose reload task has
/// not started listening yet. tokio's handler, once registered, stays for
/// the life of the process; a SIGHUP that comes before the reload task
/// listens is dropped, and the task then reloads if the file changed.
pub(crate) fn ignore_sighup_until_listening() {
    // tokio's signal handling runs on its I/O driver.
    let registered = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async { signal(SignalKind::hangup()).map(drop) })
                .map_err(|e| e.to_string())
        });
    if let Err(e) = registered {
        tracing::warn!("cannot register for SIGHUP yet: {e}");
    }
}

/// Swaps in each TLS listener's certificates from the store's current
/// snapshot (after a reload or `PUT /config`). A listener whose new
/// certificates fail to load keeps its old ones.
pub(crate) fn reload_certificates(store: &ConfigStore, certs: &HashMap<String, Arc<LiveCerts>>) {
    let snap = store.current();
    for l in &snap.listeners {
        let (Some(tls), Some(live)) = (&l.tls, certs.get(&l.name)) else {
            continue;
        };
        match live.reload(tls) {
            Ok(()) => tracing::debug!(listener = %l.name, "certificates reloaded"),
            Err(e) => tracing::error!(
                listener = %l.name,
                "certificates not reloaded, still serving the previous ones: {e}"
            ),
        }
    }
}

/// What we compare to notice a file change without reading it: the
/// modification time and the length.
pub(crate) type Stamp = (SystemTime, u64);

/// The file's [`Stamp`], if it can be read.
pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload by signal is off: {e}");
                return;
            }
        };
        let path = match self.store.source() {
            ConfigSource::File(p) => Some(p.clone()),
            ConfigSource::Embedded | ConfigSource::ControlPlane => None,
        };
        // The file as last applied, and as seen at the previous tick. A
        // change is applied once the file has stayed the same for a whole
        // tick: a script or editor that rewrites it in place could
        // otherwise be read half-written (and a prefix of a config can
        // be a valid config with fewer routes).
        let mut last = self.loaded;
        let mut seen = last;
        // A SIGHUP sent during start-up, before `hup` listened, was
        // ignored (see `ignore_sighup_until_listening`); the file it was
        // about has changed since it was loaded.
        let now = path.as_deref().and_then(stamp);
        if now != last {
            last = now;
            seen = now;
            self.reload("changed during start-up");
        }
        let tick = self.watch.unwrap_or(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup.recv() => {
                    last = path.as_deref().and_then(stamp);
                    seen = last;
                    self.reload("SIGHUP");
                }
                _ = tokio::time::sleep(tick), if self.watch.is_some() && path.is_some() => {
                    let now = path.as_deref().and_then(stamp);
                    if now.is_some() && now != last {
                        if now == seen {
                            last = now;
                            self.reload("file change");
                        } else {
                            seen = now;
                        }
                    }
                }
            }
        }
    }
}
