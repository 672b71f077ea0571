//! Randomness for reconnect jitter and the per-process epoch.
//!
//! Neither needs cryptographic strength: jitter only spreads reconnecting
//! sidecars over time, and the epoch only has to differ between two starts
//! of the control plane. std's `RandomState` is seeded from the operating
//! system's random source, which is enough for both and saves a dependency.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fresh, well-spread random number.
pub(crate) fn random_u64() -> u64 {
    // A new `RandomState` per call steps its keys, and the counter keeps two
    // calls on one thread apart even if they did not.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    RandomState::new().hash_one((CALLS.fetch_add(1, Ordering::Relaxed), nanos))
}

/// A duration drawn uniformly from `low..=high` (`low` if `high < low`).
pub(crate) fn between(low: Duration, high: Duration) -> Duration {
    let span = high.saturating_sub(low).as_nanos();
    if span == 0 {
        return low;
    }
    let span = u64::try_from(span).unwrap_or(u64::MAX);
    low + Duration::from_nanos(random_u64() % span.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_stays_in_range() {
        let (low, high) = (Duration::from_millis(100), Duration::from_millis(200));
        for _ in 0..1000 {
            let d = between(low, high);
            assert!(d >= low && d <= high, "{d:?}");
        }
        assert_eq!(between(high, low), high);
    }

    #[test]
    fn values_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
