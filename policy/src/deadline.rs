//! A request's overall deadline.
//!
//! The client's patience is one number, not one per try: every try and every
//! backoff between tries spends from the same deadline. Keeping it as an
//! absolute instant (rather than a countdown that each layer decrements)
//! means retries, per-try timeouts and backoff all agree on how much time is
//! left without passing durations around and accumulating rounding.
//!
//! Like the rest of `policy`, it never reads a clock: callers pass `now`.

use std::time::{Duration, Instant};

/// A request's overall deadline; bounds all tries and backoffs.
///
/// `Copy` and two words wide, so it travels with the request by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline {
    /// When the request must be finished; `None` means no overall limit.
    at: Option<Instant>,
}

impl Deadline {
    /// A deadline `timeout` after `start`; `None` means no overall limit.
    ///
    /// A timeout so large that `start + timeout` is not representable is
    /// treated as no limit rather than panicking: no request outlives it.
    pub fn new(start: Instant, timeout: Option<Duration>) -> Self {
        Self {
            at: timeout.and_then(|t| start.checked_add(t)),
        }
    }

    /// No overall limit; each try is still bounded by its per-try timeout.
    pub fn none() -> Self {
        Self { at: None }
    }

    /// Time left at `now`: `None` when unbounded, `Some(Duration::ZERO)`
    /// once the deadline has passed.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.at.map(|at| at.saturating_duration_since(now))
    }

    /// Whether there is a deadline at all.
    pub fn is_bounded(&self) -> bool {
        self.at.is_some()
    }

    /// Whether the deadline has passed at `now` (never, when unbounded).
    pub fn expired(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| now >= at)
    }

    /// Timeout for the next try: `min(per_try, remaining)`; `None` means
    /// unbounded (neither a per-try timeout nor an overall deadline).
    ///
    /// Returns `Some(Duration::ZERO)` once the deadline has passed, so a
    /// caller that forgets to check [`Deadline::expired`] fails fast instead
    /// of waiting forever.
    pub fn try_timeout(&self, now: Instant, per_try: Option<Duration>) -> Option<Duration> {
        match (per_try, self.remaining(now)) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (Some(p), None) => Some(p),
            (None, r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn deadline_remaining_counts_down_and_stops_at_zero() {
        let t0 = Instant::now();
        let d = Deadline::new(t0, Some(100 * MS));
        assert_eq!(d.remaining(t0), Some(100 * MS));
        assert_eq!(d.remaining(t0 + 40 * MS), Some(60 * MS));
        assert_eq!(d.remaining(t0 + 100 * MS), Some(Duration::ZERO));
        assert_eq!(d.remaining(t0 + 500 * MS), Some(Duration::ZERO));
        assert!(!d.expired(t0 + 99 * MS));
        assert!(d.expired(t0 + 100 * MS));
    }

    #[test]
    fn deadline_none_is_unbounded() {
        let t0 = Instant::now();
        for d in [
            Deadline::none(),
            Deadline::new(t0, None),
            Deadline::default(),
        ] {
            assert_eq!(d.remaining(t0 + 1000 * MS), None);
            assert!(!d.expired(t0 + 1000 * MS));
            assert_eq!(d.try_timeout(t0, None), None);
            assert_eq!(d.try_timeout(t0, Some(5 * MS)), Some(5 * MS));
        }
    }

    #[test]
    fn deadline_try_timeout_is_min_of_per_try_and_remaining() {
        let t0 = Instant::now();
        let d = Deadline::new(t0, Some(100 * MS));
        assert_eq!(d.try_timeout(t0, Some(30 * MS)), Some(30 * MS));
        assert_eq!(d.try_timeout(t0 + 80 * MS, Some(30 * MS)), Some(20 * MS));
        assert_eq!(d.try_timeout(t0 + 80 * MS, None), Some(20 * MS));
        assert_eq!(
            d.try_timeout(t0 + 200 * MS, Some(30 * MS)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn deadline_huge_timeout_does_not_panic() {
        let t0 = Instant::now();
        let d = Deadline::new(t0, Some(Duration::MAX));
        assert!(!d.expired(t0));
        assert_eq!(d.try_timeout(t0, Some(MS)), Some(MS));
    }
}
