//! The live key sets, one per JWT provider, kept across config reloads.
//!
//! Requests read keys with two atomic loads (the provider map, then the
//! provider's key set) and never take a lock. Writers are the sync step
//! (on a new config snapshot: re-read files, start or retire URL
//! providers) and the fetch tasks (a new JWKS from a URL); both build a
//! complete set off the request path and swap it in whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use jsonwebtoken::{Algorithm, Validation};
use meshgate_config::{JwtKeySource, JwtProviderSpec, Snapshot};
use tokio::sync::{Notify, watch};

use super::jwks::{self, KeySet};

/// Forced fetches (a token with an unknown `kid`, or no keys yet) happen at
/// most this often per provider, so a stream of tokens with made-up key
/// ids cannot turn the gateway into a load generator against the issuer.
pub(crate) const FORCED_FETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Where a provider's keys come from, as far as the key set cares. The
/// refresh interval of a URL is not part of it: changing only the interval
/// keeps the keys and the fetch task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    File(PathBuf),
    Secret(PathBuf),
    Url(String),
}

impl Source {
    fn of(spec: &JwtProviderSpec) -> Source {
        match &spec.keys {
            JwtKeySource::JwksFile(p) => Source::File(p.clone()),
            JwtKeySource::SecretFile(p) => Source::Secret(p.clone()),
            JwtKeySource::JwksUrl(u) => Source::Url(u.clone()),
        }
    }
}

/// `jsonwebtoken` validation settings for one provider spec, one per
/// pinned algorithm; built when a snapshot is synced, so the request path
/// does not build hash sets.
#[derive(Debug)]
pub(crate) struct Validations {
    spec: Arc<JwtProviderSpec>,
    by_alg: Vec<(Algorithm, Validation)>,
}

impl Validations {
    pub(crate) fn build(spec: &Arc<JwtProviderSpec>) -> Validations {
        let by_alg = spec
            .algorithms
            .iter()
            .map(|&a| {
                let alg = jwks::jose(a);
                (alg, validation(spec, alg))
            })
            .collect();
        Validations {
            spec: spec.clone(),
            by_alg,
        }
    }

    /// Built for exactly this spec (the same `Arc`, so the same snapshot)?
    pub(crate) fn is_for(&self, spec: &Arc<JwtProviderSpec>) -> bool {
        Arc::ptr_eq(&self.spec, spec)
    }

    pub(crate) fn get(&self, alg: Algorithm) -> Option<&Validation> {
        self.by_alg.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }
}

/// The checks a provider asks for: `exp` required, `nbf` when present,
/// `iss` exact, `aud` one of the audiences, with the provider's leeway.
pub(crate) fn validation(spec: &JwtProviderSpec, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    // jsonwebtoken counts leeway in whole seconds; round up so a leeway
    // of "500ms" is not silently zero.
    let l = spec.leeway;
    v.leeway = l.as_secs() + u64::from(l.subsec_nanos() > 0);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[spec.issuer.as_str()]);
    if spec.audiences.is_empty() {
        // Config validation refuses this; without audiences there is
        // nothing to compare with.
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "iss"]);
    } else {
        v.set_audience(&spec.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
    }
    v
}

/// One provider's keys and, for a URL, the state of its fetches.
#[derive(Debug)]
pub(crate) struct ProviderKeys {
    pub(crate) name: String,
    pub(crate) source: Source,
    keys: ArcSwap<KeySet>,
    validations: ArcSwapOption<Validations>,
    /// URL only: how often to fetch, in milliseconds (updated on reload).
    refresh_ms: AtomicU64,
    /// URL only: wakes the fetch task early (forced fetch, retirement).
    pub(crate) wake: Notify,
    /// URL only: counts finished fetch attempts, good or bad.
    fetched: watch::Sender<u64>,
    in_flight: AtomicBool,
    /// Milliseconds since `epoch` of the last forced fetch; `u64::MAX`
    /// before the first.
    last_forced: AtomicU64,
    epoch: Instant,
    retired: AtomicBool,
    /// A fetch task runs for this provider (set by the refresher).
    pub(crate) task_started: AtomicBool,
}

impl ProviderKeys {
    fn new(name: &str, source: Source, spec: &Arc<JwtProviderSpec>) -> ProviderKeys {
        ProviderKeys {
            name: name.to_owned(),
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            validations: ArcSwapOption::from_pointee(Validations::build(spec)),
            refresh_ms: AtomicU64::new(millis(spec.refresh_interval)),
            wake: Notify::new(),
            fetched: watch::Sender::new(0),
            in_flight: AtomicBool::new(false),
            last_forced: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            retired: AtomicBool::new(false),
            task_started: AtomicBool::new(false),
        }
    }

    /// The current key set: an atomic load and a reference count, no lock.
    pub(crate) fn keys_full(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Number of keys held now (for logs).
    pub(crate) fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// The validations built at the last sync; the caller checks they
    /// belong to its own snapshot's spec.
    pub(crate) fn validations_full(&self) -> Option<Arc<Validations>> {
        self.validations.load_full()
    }

    pub(crate) fn url(&self) -> Option<&str> {
        match &self.source {
            Source::Url(u) => Some(u),
            _ => None,
        }
    }

    pub(crate) fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.refresh_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Installs a freshly fetched key set.
    pub(crate) fn install(&self, set: KeySet) {
        self.keys.store(Arc::new(set));
    }

    /// The fetch task brackets each attempt with these two calls.
    pub(crate) fn fetch_started(&self) {
        self.in_flight.store(true, Ordering::Release);
    }

    pub(crate) fn fetch_finished(&self) {
        self.in_flight.store(false, Ordering::Release);
        self.fetched.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// For a URL provider: asks for a fetch now unless one was forced in
    /// the last [`FORCED_FETCH_INTERVAL`], and waits up to `bound` for a
    /// fetch (this one or one already running) to finish. Returns whether
    /// a fetch finished, so the caller knows a second look may help.
    pub(crate) async fn fetch_now_and_wait(&self, bound: Duration) -> bool {
        if self.url().is_none() {
            return false;
        }
        let mut done = self.fetched.subscribe();
        // The first fetch (at start, or after the URL changed) or one
        // already running will do: wait for it without spending the
        // forced-fetch allowance.
        if *done.borrow() == 0 || self.in_flight.load(Ordering::Acquire) {
            return matches!(
                tokio::time::timeout(bound, done.changed()).await,
                Ok(Ok(()))
            );
        }
        let now = millis(self.epoch.elapsed());
        let last = self.last_forced.load(Ordering::Acquire);
        let gap = millis(FORCED_FETCH_INTERVAL);
        let may_force = last == u64::MAX || now.saturating_sub(last) >= gap;
        let forced = may_force
            && self
                .last_forced
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if forced {
            tracing::info!(provider = %self.name, "no key for a token: fetching the JWKS now");
            self.wake.notify_one();
        } else if !self.in_flight.load(Ordering::Acquire) {
            return false;
        }
        matches!(
            tokio::time::timeout(bound, done.changed()).await,
            Ok(Ok(()))
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Every provider's keys, by provider name.
#[derive(Debug)]
pub(crate) struct KeyStore {
    providers: ArcSwap<HashMap<String, Arc<ProviderKeys>>>,
    /// The snapshot version last synced.
    version: AtomicU64,
    sync_lock: Mutex<()>,
    /// Wakes the refresher when URL providers appear or go.
    pub(crate) changed: Notify,
}

impl Default for KeyStore {
    fn default() -> Self {
        KeyStore {
            providers: ArcSwap::from_pointee(HashMap::new()),
            version: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            changed: Notify::new(),
        }
    }
}

impl KeyStore {
    /// A provider's keys, without locking.
    pub(crate) fn provider(&self, name: &str) -> Option<Arc<ProviderKeys>> {
        self.providers.load().get(name).cloned()
    }

    /// Every provider with a JWKS URL.
    pub(crate) fn url_providers(&self) -> Vec<Arc<ProviderKeys>> {
        self.providers
            .load()
            .values()
            .filter(|p| p.url().is_some())
            .cloned()
            .collect()
    }

    /// Brings the key sets in line with `snap` if it is newer than the last
    /// snapshot synced. Cheap when it is not (one atomic load). Files are
    /// re-read on every new snapshot: the config store only publishes a
    /// new version when the TOML or a referenced file changed.
    pub(crate) fn sync(&self, snap: &Snapshot) {
        if snap.version <= self.version.load(Ordering::Acquire) {
            return;
        }
        let _guard = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        if snap.version <= self.version.load(Ordering::Acquire) {
            return;
        }
        let old = self.providers.load_full();
        let mut next = HashMap::with_capacity(snap.jwt_providers.len());
        let mut urls_changed = false;
        for (name, spec) in &snap.jwt_providers {
            let source = Source::of(spec);
            let entry = match old.get(name) {
                Some(e) if e.source == source => {
                    e.validations
                        .store(Some(Arc::new(Validations::build(spec))));
                    let refresh = millis(spec.refresh_interval);
                    if e.refresh_ms.swap(refresh, Ordering::Relaxed) != refresh {
                        // New interval: fetch now and sleep by the new one.
                        e.wake.notify_one();
                    }
                    e.clone()
                }
                _ => {
                    urls_changed |= matches!(source, Source::Url(_));
                    Arc::new(ProviderKeys::new(name, source, spec))
                }
            };
            match &entry.source {
                Source::File(p) => load_file(&entry, p, |bytes| {
                    KeySet::from_jwks(bytes).map(|(set, skipped)| {
                        for s in skipped {
                            tracing::warn!(provider = %name, file = %p.display(), "JWKS key skipped: {s}");
                        }
                        set
                    })
                }),
                Source::Secret(p) => load_file(&entry, p, |bytes| {
                    let secret = trim_line_end(bytes);
                    if secret.is_empty() {
                        return Err("the secret file is empty".to_owned());
                    }
                    if secret.len() < 32 {
                        tracing::warn!(
                            provider = %name,
                            "the HMAC secret is shorter than 32 bytes; use at least as many bytes as the hash (32 for HS256)"
                        );
                    }
                    Ok(KeySet::from_secret(secret))
                }),
                Source::Url(_) => {}
            }
            next.insert(name.clone(), entry);
        }
        for (name, e) in old.iter() {
            let kept = next.get(name).is_some_and(|n| Arc::ptr_eq(n, e));
            if !kept {
                urls_changed |= e.url().is_some();
                e.retired.store(true, Ordering::Release);
                e.wake.notify_one();
            }
        }
        self.providers.store(Arc::new(next));
        self.version.store(snap.version, Ordering::Release);
        if urls_changed {
            self.changed.notify_one();
        }
    }
}

/// Reads a key file and installs what `parse` makes of it; on failure the
/// provider keeps the keys it had (none, the first time) and the error is
/// logged. The config check read the same file moments ago, so a failure
/// here means the file changed in between.
fn load_file<E: std::fmt::Display>(
    entry: &ProviderKeys,
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Result<KeySet, E>,
) {
    let result = match std::fs::read(path) {
        Ok(bytes) => parse(&bytes).map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot read it: {e}")),
    };
    match result {
        Ok(set) => {
            tracing::debug!(provider = %entry.name, file = %path.display(), keys = set.len(), "keys loaded");
            entry.install(set);
        }
        Err(e) => tracing::error!(
            provider = %entry.name,
            file = %path.display(),
            keys = entry.key_count(),
            "cannot load the provider's keys, keeping the previous ones: {e}"
        ),
    }
}

/// Secret files usually end with a newline the editor added; it is not
/// part of the secret.
fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_lose_only_their_line_end() {
        assert_eq!(trim_line_end(b"abc\r\n"), b"abc");
        assert_eq!(trim_line_end(b"abc \n\n"), b"abc ");
        assert_eq!(trim_line_end(b"\n"), b"");
        assert_eq!(trim_line_end(b""), b"");
    }
}
