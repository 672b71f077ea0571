//! Circuit breaking and outlier detection, in Envoy's terms.
//!
//! Two independent protections:
//!
//! - **Limits** ([`Limits`], [`LimitCounters`]): caps on how much work one
//!   service may have outstanding (connections, pending requests, active
//!   requests, active retries). When a cap is reached new work fails fast
//!   instead of queueing behind a slow upstream, which is what stops one
//!   sick service from exhausting the proxy's memory and sockets. Permits
//!   are RAII guards holding an `Arc`, so they are `'static` and can be held
//!   across `.await` points; dropping one releases the slot.
//!
//! - **Outlier detection** ([`OutlierState`]): per-endpoint health learned
//!   from real traffic. Too many consecutive failures, or too high a failure
//!   rate over a window, ejects the endpoint from load balancing for a time
//!   that grows with each ejection. When the time is up the endpoint is
//!   *half-open*: exactly one request (the probe) is let through, and its
//!   result decides between recovery and a longer ejection. One probe, not
//!   a flood, because the endpoint was just shown to be failing.
//!
//! All state is atomics; every transition is a single compare-and-swap on
//! the ejection word, so exactly one worker observes (and reports) each
//! ejection and recovery, and none ever blocks. Times are stored as
//! nanoseconds since an anchor `Instant` given at construction, since an
//! `Instant` itself cannot live in an atomic.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-service caps on outstanding work (Envoy's `circuit_breakers`
/// thresholds). A cap of 0 refuses everything of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Upstream connections open at once. Default 1024.
    pub max_connections: u32,
    /// Requests waiting for a connection. Default 1024.
    pub max_pending_requests: u32,
    /// Requests in flight. Default 1024.
    pub max_requests: u32,
    /// Retries in flight. Default 1024; keep it well below `max_requests`
    /// so retries cannot crowd out first tries.
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 1024,
        }
    }
}

impl Limits {
    /// The cap for `kind`.
    pub fn max(&self, kind: LimitKind) -> u32 {
        match kind {
            LimitKind::Connections => self.max_connections,
            LimitKind::PendingRequests => self.max_pending_requests,
            LimitKind::Requests => self.max_requests,
            LimitKind::Retries => self.max_retries,
        }
    }
}

/// The kinds of outstanding work [`Limits`] caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// An open upstream connection.
    Connections,
    /// A request waiting for a connection.
    PendingRequests,
    /// A request in flight.
    Requests,
    /// A retry in flight.
    Retries,
}

impl LimitKind {
    /// Every kind, for iterating metrics.
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Connections,
        LimitKind::PendingRequests,
        LimitKind::Requests,
        LimitKind::Retries,
    ];

    /// A stable `snake_case` label for metrics and access logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            LimitKind::Connections => "connections",
            LimitKind::PendingRequests => "pending_requests",
            LimitKind::Requests => "requests",
            LimitKind::Retries => "retries",
        }
    }

    const fn index(self) -> usize {
        match self {
            LimitKind::Connections => 0,
            LimitKind::PendingRequests => 1,
            LimitKind::Requests => 2,
            LimitKind::Retries => 3,
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Live counts of outstanding work for one service, shared by all workers
/// as `Arc<LimitCounters>`.
///
/// The caps are passed to [`try_acquire`](LimitCounters::try_acquire)
/// rather than stored, so a config reload applies new caps immediately
/// while the counts (which describe real connections and requests) carry
/// over.
#[derive(Debug, Default)]
pub struct LimitCounters {
    counts: [AtomicU32; 4],
}

impl LimitCounters {
    /// All counts at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one slot of `kind` if fewer than `limits.max(kind)` are taken;
    /// `None` means the breaker is open for that kind (fail fast and count
    /// an overflow). The slot is released when the permit is dropped.
    pub fn try_acquire(self: &Arc<Self>, kind: LimitKind, limits: &Limits) -> Option<LimitPermit> {
        let max = limits.max(kind);
        // A CAS loop rather than fetch_add-then-undo: a transient overshoot
        // would make a concurrent caller fail spuriously.
        self.counts[kind.index()]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < max).then(|| c + 1)
            })
            .ok()?;
        Some(LimitPermit {
            counters: Arc::clone(self),
            kind,
        })
    }

    /// Slots of `kind` currently held; for metrics and the admin API.
    pub fn current(&self, kind: LimitKind) -> u32 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }
}

/// One held slot of a [`LimitCounters`]; released on drop.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct LimitPermit {
    counters: Arc<LimitCounters>,
    kind: LimitKind,
}

impl LimitPermit {
    /// What kind of slot this permit holds.
    pub fn kind(&self) -> LimitKind {
        self.kind
    }
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        // Only permits decrement, and each was counted when it was made, so
        // the count is at least 1 here and cannot wrap.
        self.counters.counts[self.kind.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ejection on a high failure rate over a window (Envoy's
/// `failure_percentage_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRate {
    /// Eject when at least this percentage of requests in the window failed.
    /// Default 50; values above 100 never eject.
    pub threshold_percent: u8,
    /// Judge the rate only once the window holds this many requests, so a
    /// few unlucky requests on a quiet endpoint do not eject it. Default 20.
    pub min_requests: u32,
    /// Length of the (tumbling) window. Default 10 s; at least 100 ms.
    pub window: Duration,
}

impl Default for FailureRate {
    fn default() -> Self {
        Self {
            threshold_percent: 50,
            min_requests: 20,
            window: Duration::from_secs(10),
        }
    }
}

/// Outlier detection settings for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Eject after this many failures in a row. Default 5; 0 disables.
    pub consecutive_failures: u32,
    /// Eject on a high failure rate as well. Default `None` (off).
    pub failure_rate: Option<FailureRate>,
    /// Length of the first ejection; the n-th consecutive one lasts
    /// `n * base_ejection`. Also how long a probe may stay unreported before
    /// another is allowed (at least 1 s). Default 30 s.
    pub base_ejection: Duration,
    /// Longest ejection. Default 300 s; values above 24 h count as 24 h.
    pub max_ejection: Duration,
    /// Most endpoints of a service that may be ejected at once, as a
    /// percentage; see [`ejection_allowed`]. Default 50.
    pub max_ejected_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: None,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Whether one more endpoint may be ejected: `ejected` endpoints (ejected
/// or half-open, not counting the candidate) out of `total`, with at most
/// `max_percent` ejected afterwards.
///
/// With 50%: 0 of 2 ejected allows ejecting one (1 of 2 = 50%); 1 of 3
/// does not (2 of 3 = 67%); a lone endpoint is never ejected, because
/// routing to a sick endpoint beats routing nowhere. Percentages above 100
/// count as 100.
pub fn ejection_allowed(ejected: usize, total: usize, max_percent: u8) -> bool {
    let after = (ejected as u128).saturating_add(1);
    after * 100 <= (total as u128) * u128::from(max_percent.min(100))
}

/// An endpoint's state as seen by load balancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Takes traffic.
    Healthy,
    /// Takes no traffic until `until`.
    Ejected {
        /// When the ejection ends and the endpoint becomes half-open.
        until: Instant,
    },
    /// The ejection is over; one probe request decides what happens next.
    HalfOpen,
}

/// The answer of [`OutlierState::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send the request; report it with `probe = false`.
    Yes,
    /// Send it as the half-open probe; report it with `probe = true`.
    Probe,
    /// Do not send it here; pick another endpoint.
    No,
}

/// A change of health caused by [`OutlierState::record`], for logs and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The endpoint was ejected (again) for `for_`.
    Ejected {
        /// How long the ejection lasts.
        for_: Duration,
    },
    /// A probe succeeded; the endpoint is healthy again.
    Recovered,
}

impl Transition {
    /// A stable label for metrics: `"ejected"` or `"recovered"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transition::Ejected { .. } => "ejected",
            Transition::Recovered => "recovered",
        }
    }
}

/// Ejections never last longer than this, whatever the config says, so
/// stored deadlines stay far from overflow.
const EJECTION_CAP: Duration = Duration::from_secs(24 * 3600);
/// A probe is presumed lost after at least this long (see
/// [`OutlierConfig::base_ejection`]).
const MIN_PROBE_GRACE: Duration = Duration::from_secs(1);
/// Shortest failure-rate window; keeps the window tag from wrapping in less
/// than 19 days.
const MIN_WINDOW: Duration = Duration::from_millis(100);

/// `until` value meaning "not ejected".
const HEALTHY: u64 = 0;
/// `probe` value meaning "no probe in flight".
const NO_PROBE: u64 = 0;

// The failure-rate window is one word: a window tag (low bits of the window
// number) and two counts. One word so that starting a new window and
// counting into it is a single CAS: no increment can land in a window that
// is being reset.
const TAG_BITS: u32 = 24;
const COUNT_BITS: u32 = 20;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn pack_window(tag: u64, failures: u64, total: u64) -> u64 {
    (tag << (2 * COUNT_BITS)) | (failures << COUNT_BITS) | total
}

fn unpack_window(word: u64) -> (u64, u64, u64) {
    (
        word >> (2 * COUNT_BITS),
        (word >> COUNT_BITS) & COUNT_MASK,
        word & COUNT_MASK,
    )
}

/// Outlier-detection state of one endpoint, shared by all workers.
///
/// Ejection length grows with the number of ejections `n`:
/// `min(n * base_ejection, max_ejection)`. A successful probe does not
/// reset `n` at once, so an endpoint that flaps keeps getting longer
/// ejections; instead `n` decays by one for every `base_ejection` the
/// endpoint then stays healthy, applied when it is next ejected.
///
/// A probe whose report never arrives (its request was dropped) would leave
/// the endpoint half-open with no traffic forever, so a probe is presumed
/// lost after `base_ejection` (at least 1 s) and another may be admitted.
/// A late report from a presumed-lost probe is still honoured.
#[derive(Debug)]
pub struct OutlierState {
    anchor: Instant,
    /// Failures in a row while healthy.
    consecutive: AtomicU32,
    /// Failure-rate window, see [`pack_window`].
    window: AtomicU64,
    /// Ejections so far, decayed as described above.
    ejections: AtomicU32,
    /// [`HEALTHY`], or nanoseconds since `anchor` when the ejection ends.
    /// Every transition is a CAS on this word.
    until: AtomicU64,
    /// [`NO_PROBE`], or nanoseconds since `anchor` plus one when the probe
    /// was admitted.
    probe: AtomicU64,
    /// How long a probe may stay unreported, in nanoseconds.
    probe_grace: AtomicU64,
    /// Nanoseconds since `anchor` of the last recovery, for decay.
    recovered_at: AtomicU64,
}

impl OutlierState {
    /// A healthy endpoint. `now` anchors the stored times; any `Instant`
    /// near the present will do.
    pub fn new(now: Instant) -> Self {
        Self {
            anchor: now,
            consecutive: AtomicU32::new(0),
            window: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            until: AtomicU64::new(HEALTHY),
            probe: AtomicU64::new(NO_PROBE),
            probe_grace: AtomicU64::new(nanos(MIN_PROBE_GRACE)),
            recovered_at: AtomicU64::new(0),
        }
    }

    /// The endpoint's health at `now`.
    pub fn health(&self, now: Instant) -> Health {
        let until = self.until.load(Ordering::Acquire);
        if until == HEALTHY {
            return Health::Healthy;
        }
        if self.elapsed(now) < until {
            let at = self
                .anchor
                .checked_add(Duration::from_nanos(until))
                .unwrap_or(now);
            Health::Ejected { until: at }
        } else {
            Health::HalfOpen
        }
    }

    /// Ejections counted so far (after decay); for metrics.
    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// May a request be sent here now? Healthy: [`Admission::Yes`].
    /// Ejected: [`Admission::No`]. Half-open: [`Admission::Probe`] for
    /// exactly one caller (until its report, or until it is presumed lost),
    /// [`Admission::No`] for the rest.
    pub fn admit(&self, now: Instant) -> Admission {
        let until = self.until.load(Ordering::Acquire);
        if until == HEALTHY {
            return Admission::Yes;
        }
        let t = self.elapsed(now);
        if t < until {
            return Admission::No;
        }
        let held = self.probe.load(Ordering::Acquire);
        let free = held == NO_PROBE
            || t.saturating_sub(held - 1) >= self.probe_grace.load(Ordering::Relaxed);
        // The CAS from the value we inspected is what makes the probe
        // exclusive: of all callers that saw it free, exactly one wins.
        if free
            && self
                .probe
                .compare_exchange(
                    held,
                    t.saturating_add(1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            Admission::Probe
        } else {
            Admission::No
        }
    }

    /// Reports a finished request sent to this endpoint.
    ///
    /// `failure`: connect failure, reset, timeout or 5xx (the caller
    /// classifies). `probe`: the request was admitted as
    /// [`Admission::Probe`]. `may_eject`: false when the service already has
    /// `max_ejected_percent` of its endpoints ejected (see
    /// [`ejection_allowed`]; count half-open endpoints as ejected). A failed
    /// probe re-ejects regardless, since that endpoint is already counted.
    ///
    /// Reports of ordinary requests that finish while the endpoint is
    /// ejected or half-open were sent before the ejection and are ignored.
    /// Returns the transition this report caused, if any; of concurrent
    /// reports, only the one whose CAS won returns it.
    pub fn record(
        &self,
        failure: bool,
        probe: bool,
        now: Instant,
        cfg: &OutlierConfig,
        may_eject: bool,
    ) -> Option<Transition> {
        let t = self.elapsed(now);
        let until = self.until.load(Ordering::Acquire);
        if until != HEALTHY {
            if !probe {
                return None;
            }
            let transition = if t < until {
                // Another probe's failure already re-ejected it.
                None
            } else if failure {
                self.reeject(until, t, cfg)
            } else {
                self.recover(until, t)
            };
            // After the CAS above, so no second probe can slip in while the
            // endpoint is still half-open.
            self.probe.store(NO_PROBE, Ordering::Release);
            return transition;
        }
        // Healthy. A probe report landing here was overtaken by another
        // probe's recovery and counts as an ordinary request.
        let rate_tripped = match &cfg.failure_rate {
            Some(rate) => self.count_window(t, failure, rate),
            None => false,
        };
        if !failure {
            self.consecutive.store(0, Ordering::Relaxed);
            return None;
        }
        let streak =
            match self
                .consecutive
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    Some(c.saturating_add(1))
                }) {
                Ok(prev) | Err(prev) => prev.saturating_add(1),
            };
        let streak_tripped = cfg.consecutive_failures > 0 && streak >= cfg.consecutive_failures;
        if (streak_tripped || rate_tripped) && may_eject {
            self.eject(t, cfg)
        } else {
            None
        }
    }

    /// Ejects a healthy endpoint, applying the decay of the ejection count.
    fn eject(&self, t: u64, cfg: &OutlierConfig) -> Option<Transition> {
        let prior = self.ejections.load(Ordering::Relaxed);
        let healthy_for = t.saturating_sub(self.recovered_at.load(Ordering::Relaxed));
        let forgiven = healthy_for
            .checked_div(nanos(cfg.base_ejection))
            .unwrap_or(u64::MAX);
        let n = prior
            .saturating_sub(u32::try_from(forgiven).unwrap_or(u32::MAX))
            .saturating_add(1);
        let (for_, until) = self.ejection_end(t, n, cfg);
        self.until
            .compare_exchange(HEALTHY, until, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        // Only the CAS winner gets here, and nothing else writes these until
        // the endpoint is healthy again.
        self.ejections.store(n, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.window.store(0, Ordering::Relaxed);
        Some(Transition::Ejected { for_ })
    }

    /// Ejects a half-open endpoint whose probe failed, for longer.
    fn reeject(&self, seen: u64, t: u64, cfg: &OutlierConfig) -> Option<Transition> {
        let n = self.ejections.load(Ordering::Relaxed).saturating_add(1);
        let (for_, until) = self.ejection_end(t, n, cfg);
        self.until
            .compare_exchange(seen, until, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.ejections.store(n, Ordering::Relaxed);
        Some(Transition::Ejected { for_ })
    }

    /// Makes a half-open endpoint healthy after a successful probe.
    fn recover(&self, seen: u64, t: u64) -> Option<Transition> {
        // Clean slate before publishing health, so the first failures after
        // recovery are judged on their own. (They are normally zero already:
        // counts are reset at ejection and not kept while ejected.)
        self.consecutive.store(0, Ordering::Relaxed);
        self.window.store(0, Ordering::Relaxed);
        self.recovered_at.store(t, Ordering::Relaxed);
        self.until
            .compare_exchange(seen, HEALTHY, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(Transition::Recovered)
    }

    /// Length and end (nanoseconds since anchor, never [`HEALTHY`]) of the
    /// `n`-th ejection starting at `t`. Also records the probe grace of the
    /// coming half-open period; stored before the ejection is published,
    /// so a half-open reader always sees it.
    fn ejection_end(&self, t: u64, n: u32, cfg: &OutlierConfig) -> (Duration, u64) {
        let length = cfg
            .base_ejection
            .saturating_mul(n)
            .min(cfg.max_ejection)
            .min(EJECTION_CAP);
        let grace = cfg.base_ejection.clamp(MIN_PROBE_GRACE, EJECTION_CAP);
        self.probe_grace.store(nanos(grace), Ordering::Relaxed);
        (length, t.saturating_add(nanos(length)).max(1))
    }

    /// Counts one request into the failure-rate window and says whether the
    /// rate now calls for ejection. Only failures can trip it.
    fn count_window(&self, t: u64, failure: bool, rate: &FailureRate) -> bool {
        let width = nanos(rate.window.max(MIN_WINDOW));
        let tag = (t / width) & TAG_MASK;
        let mut current = self.window.load(Ordering::Relaxed);
        let (failures, total) = loop {
            let (held, f, n) = unpack_window(current);
            // A worker whose `now` is a hair older than another's may land
            // just after the window turned; it counts into the new window
            // rather than resetting it back.
            let just_behind = (held.wrapping_sub(tag) & TAG_MASK) == 1;
            let (next_tag, f, n) = if held == tag || just_behind {
                if n == COUNT_MASK {
                    // Saturated: the window keeps the rate of the requests
                    // it did count.
                    break (f, n);
                }
                (held, f + u64::from(failure), n + 1)
            } else {
                (tag, u64::from(failure), 1)
            };
            match self.window.compare_exchange_weak(
                current,
                pack_window(next_tag, f, n),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break (f, n),
                Err(actual) => current = actual,
            }
        };
        failure
            && total >= u64::from(rate.min_requests)
            && failures * 100 >= u64::from(rate.threshold_percent) * total
    }

    fn elapsed(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.anchor))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicUsize;

    const S: Duration = Duration::from_secs(1);

    fn fail_n(o: &OutlierState, n: u32, now: Instant, cfg: &OutlierConfig) -> Vec<Transition> {
        (0..n)
            .filter_map(|_| o.record(true, false, now, cfg, true))
            .collect()
    }

    #[test]
    fn breaker_consecutive_failures_eject() {
        let t0 = Instant::now();
        let cfg = OutlierConfig::default();
        let o = OutlierState::new(t0);
        assert!(fail_n(&o, 4, t0, &cfg).is_empty());
        assert_eq!(o.health(t0), Health::Healthy);
        assert_eq!(
            o.record(true, false, t0, &cfg, true),
            Some(Transition::Ejected { for_: 30 * S })
        );
        assert_eq!(o.health(t0), Health::Ejected { until: t0 + 30 * S });
        assert_eq!(o.admit(t0 + 29 * S), Admission::No);
        assert_eq!(o.ejection_count(), 1);
    }

    #[test]
    fn breaker_success_resets_streak() {
        let t0 = Instant::now();
        let cfg = OutlierConfig::default();
        let o = OutlierState::new(t0);
        for _ in 0..10 {
            assert!(fail_n(&o, 4, t0, &cfg).is_empty());
            assert_eq!(o.record(false, false, t0, &cfg, true), None);
        }
        assert_eq!(o.health(t0), Health::Healthy);
    }

    #[test]
    fn breaker_zero_consecutive_disables() {
        let t0 = Instant::now();
        let cfg = OutlierConfig {
            consecutive_failures: 0,
            ..OutlierConfig::default()
        };
        let o = OutlierState::new(t0);
        assert!(fail_n(&o, 1000, t0, &cfg).is_empty());
        assert_eq!(o.admit(t0), Admission::Yes);
    }

    #[test]
    fn breaker_may_eject_false_holds_ejection() {
        let t0 = Instant::now();
        let cfg = OutlierConfig::default();
        let o = OutlierState::new(t0);
        for _ in 0..10 {
            assert_eq!(o.record(true, false, t0, &cfg, false), None);
        }
        assert_eq!(o.health(t0), Health::Healthy);
        // Once ejection is allowed again, the streak still counts.
        assert!(matches!(
            o.record(true, false, t0, &cfg, true),
            Some(Transition::Ejected { .. })
        ));
    }

    fn rate_cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 0,
            failure_rate: Some(FailureRate::default()),
            ..OutlierConfig::default()
        }
    }

    #[test]
    fn breaker_failure_rate_needs_min_requests() {
        let t0 = Instant::now();
        let cfg = rate_cfg();
        let o = OutlierState::new(t0);
        // 19 straight failures: 100% but below min_requests.
        assert!(fail_n(&o, 19, t0, &cfg).is_empty());
        assert_eq!(
            o.record(true, false, t0, &cfg, true),
            Some(Transition::Ejected { for_: 30 * S })
        );

        let o = OutlierState::new(t0);
        for _ in 0..10 {
            o.record(false, false, t0, &cfg, true);
        }
        // 9 of 19 failed: judged only from 20 requests on.
        assert!(fail_n(&o, 9, t0, &cfg).is_empty());
        // 10 of 20 = 50%: at the threshold.
        assert!(o.record(true, false, t0, &cfg, true).is_some());
    }

    #[test]
    fn breaker_failure_rate_below_threshold_keeps_endpoint() {
        let t0 = Instant::now();
        let cfg = rate_cfg();
        let o = OutlierState::new(t0);
        for i in 0..1000 {
            // 40% failures.
            assert_eq!(o.record(i % 5 < 2, false, t0, &cfg, true), None);
        }
        assert_eq!(o.health(t0), Health::Healthy);
    }

    #[test]
    fn breaker_failure_rate_window_tumbles() {
        let t0 = Instant::now();
        let cfg = rate_cfg();
        let o = OutlierState::new(t0);
        assert!(fail_n(&o, 15, t0, &cfg).is_empty());
        // The next window starts empty: 15 old failures are forgotten.
        let t1 = t0 + 10 * S;
        assert!(fail_n(&o, 19, t1, &cfg).is_empty());
        assert!(o.record(true, false, t1, &cfg, true).is_some());
    }

    #[test]
    fn breaker_ejection_grows_and_caps() {
        let t0 = Instant::now();
        let cfg = OutlierConfig::default();
        let o = OutlierState::new(t0);
        let mut now = t0;
        let mut lengths = vec![];
        let first = fail_n(&o, 5, now, &cfg);
        assert_eq!(first, vec![Transition::Ejected { for_: 30 * S }]);
        let mut length = 30 * S;
        for _ in 0..12 {
            now += length;
            assert_eq!(o.health(now), Health::HalfOpen);
            assert_eq!(o.admit(now), Admission::Probe);
            match o.record(true, true, now, &cfg, true) {
                Some(Transition::Ejected { for_ }) => length = for_,
                other => panic!("{other:?}"),
            }
            lengths.push(length.as_secs());
        }
        assert_eq!(
            lengths,
            [60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300]
        );
    }

    #[test]
    fn breaker_probe_success_recovers() {
        let t0 = Instant::now();
        let cfg = OutlierConfig::default();
        let o = OutlierState::new(t0);
        fail_n(&o, 5, t0, &cfg);
        let t1 = t0 + 30 * S;
        assert_eq!(o.admit(t1), Admission::Probe);
        assert_eq!(o.admit(t1), Admission::No);
        // Ordinary requests sent before the ejection are ignored.
        assert_eq!(o.record(false, false, t1, &cfg, true), None);
        assert_eq!(o.health(t1), Health::HalfOpen);
        assert_eq!(
            o.record(false, true, t1, &cfg, true),
            Some(Transition::Recovered)
        );
        assert_eq!(o.health(t1), Health::Healthy);
        assert_eq!(o.admit(t1), Admission::Yes);
        // The streak starts over after recovery.
        assert!(fail_n(&o, 4, t1, &cfg).is_empty());
    }

    #[test]
    fn breaker_ejection_count_decays_while_healthy() {
        let t0 = Instant::now();
        let cfg = OutlierConfig::default();
        let o = OutlierState::new(t0);
        fail_n(&o, 5, t0, &cfg);
        let mut now = t0 + 30 * S;
        // Two failed probes: third ejection, 90 s.
        for _ in 0..2 {
            assert_eq!(o.admit(now), Admission::Probe);
            let Some(Transition::Ejected { for_ }) = o.record(true, true, now, &cfg, true) else {
                panic!("probe failure must re-eject");
            };
            now += for_;
        }
        assert_eq!(o.ejection_count(), 3);
        assert_eq!(o.admit(now), Admission::Probe);
        assert_eq!(
            o.record(false, true, now, &cfg, true),
            Some(Transition::Recovered)
        );
        // Flapping right away: the next ejection is longer still.
        assert_eq!(
            fail_n(&o, 5, now, &cfg),
            vec![Transition::Ejected { for_: 120 * S }]
        );
        now += 120 * S;
        assert_eq!(o.admit(now), Admission::Probe);
        assert_eq!(
            o.record(false, true, now, &cfg, true),
            Some(Transition::Recovered)
        );
        // Healthy for 60 s (two base ejections) forgives two of four.
        now += 60 * S;
        assert_eq!(
            fail_n(&o, 5, now, &cfg),
            vec![Transition::Ejected { for_: 90 * S }]
        );
        now += 90 * S;
        assert_eq!(o.admit(now), Admission::Probe);
        assert_eq!(
            o.record(false, true, now, &cfg, true),
            Some(Transition::Recovered)
        );
        // Healthy for an hour: back to the base ejection.
        now += 3600 * S;
        assert_eq!(
            fail_n(&o, 5, now, &cfg),
            vec![Transition::Ejected { for_: 30 * S }]
        );
    }

    #[test]
    fn breaker_half_open_admits_one_probe_across_threads() {
        let t0 = Instant::now();
        let cfg = OutlierConfig::default();
        let o = OutlierState::new(t0);
        fail_n(&o, 5, t0, &cfg);
        let t1 = t0 + 30 * S;
        let probes = AtomicUsize::new(0);
        let others = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        match o.admit(t1) {
                            Admission::Probe => probes.fetch_add(1, Ordering::Relaxed),
                            Admission::No => others.fetch_add(1, Ordering::Relaxed),
                            Admission::Yes => panic!("half-open must not admit freely"),
                        };
                    }
                });
            }
        });
        assert_eq!(probes.load(Ordering::Relaxed), 1);
        assert_eq!(others.load(Ordering::Relaxed), 7999);
    }

    #[test]
    fn breaker_lost_probe_is_replaced_after_grace() {
        let t0 = Instant::now();
        let cfg = OutlierConfig::default();
        let o = OutlierState::new(t0);
        fail_n(&o, 5, t0, &cfg);
        let t1 = t0 + 30 * S;
        assert_eq!(o.admit(t1), Admission::Probe);
        assert_eq!(o.admit(t1 + 29 * S), Admission::No);
        // The first probe never reported; after base_ejection another goes.
        assert_eq!(o.admit(t1 + 30 * S), Admission::Probe);
        assert_eq!(o.admit(t1 + 30 * S), Admission::No);
        assert_eq!(
            o.record(false, true, t1 + 31 * S, &cfg, true),
            Some(Transition::Recovered)
        );
        // The lost probe's late report counts as an ordinary request.
        assert_eq!(o.record(true, true, t1 + 32 * S, &cfg, true), None);
        assert_eq!(o.health(t1 + 32 * S), Health::Healthy);
    }

    #[test]
    fn breaker_ejection_allowed_math() {
        assert!(ejection_allowed(0, 2, 50), "1 of 2 at 50%");
        assert!(!ejection_allowed(1, 3, 50), "2 of 3 at 50%");
        assert!(!ejection_allowed(1, 2, 50), "2 of 2 at 50%");
        assert!(ejection_allowed(1, 4, 50), "2 of 4 at 50%");
        assert!(!ejection_allowed(0, 1, 50), "the only endpoint");
        assert!(ejection_allowed(0, 1, 100));
        assert!(!ejection_allowed(1, 1, 100));
        assert!(!ejection_allowed(0, 10, 0));
        assert!(!ejection_allowed(0, 0, 100));
        assert!(ejection_allowed(9, 10, 255), "above 100 counts as 100");
        assert!(!ejection_allowed(usize::MAX, usize::MAX, 100));
        assert!(ejection_allowed(usize::MAX - 1, usize::MAX, 100));
    }

    #[test]
    fn breaker_limits_count_and_release() {
        let counters = Arc::new(LimitCounters::new());
        let limits = Limits {
            max_requests: 3,
            ..Limits::default()
        };
        let held: Vec<_> = (0..3)
            .map(|_| counters.try_acquire(LimitKind::Requests, &limits).unwrap())
            .collect();
        assert_eq!(counters.current(LimitKind::Requests), 3);
        assert!(counters.try_acquire(LimitKind::Requests, &limits).is_none());
        // Other kinds are counted separately.
        let conn = counters
            .try_acquire(LimitKind::Connections, &limits)
            .unwrap();
        assert_eq!(conn.kind(), LimitKind::Connections);
        assert_eq!(counters.current(LimitKind::Connections), 1);
        drop(held);
        assert_eq!(counters.current(LimitKind::Requests), 0);
        assert!(counters.try_acquire(LimitKind::Requests, &limits).is_some());
        drop(conn);
        for kind in LimitKind::ALL {
            assert_eq!(counters.current(kind), 0, "{kind}");
        }
    }

    #[test]
    fn breaker_limits_zero_refuses_and_defaults() {
        let counters = Arc::new(LimitCounters::new());
        let limits = Limits {
            max_retries: 0,
            ..Limits::default()
        };
        assert!(counters.try_acquire(LimitKind::Retries, &limits).is_none());
        assert_eq!(Limits::default().max(LimitKind::PendingRequests), 1024);
    }

    #[test]
    fn breaker_limits_hold_across_threads() {
        let counters = Arc::new(LimitCounters::new());
        let limits = Limits {
            max_connections: 5,
            ..Limits::default()
        };
        let peak = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        if let Some(p) = counters.try_acquire(LimitKind::Connections, &limits) {
                            peak.fetch_max(
                                counters.current(LimitKind::Connections),
                                Ordering::Relaxed,
                            );
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 5);
        assert_eq!(counters.current(LimitKind::Connections), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Admit,
        Record {
            failure: bool,
            probe: bool,
            may_eject: bool,
        },
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..120_000).prop_map(Op::Advance),
            Just(Op::Admit),
            (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(failure, probe, may_eject)| {
                    Op::Record {
                        failure,
                        probe,
                        may_eject,
                    }
                }
            ),
        ]
    }

    fn cfg_strategy() -> impl Strategy<Value = OutlierConfig> {
        (
            0u32..8,
            proptest::option::of((any::<u8>(), 0u32..30, 0u64..20_000)),
            0u64..60_000,
            0u64..600_000,
            any::<u8>(),
        )
            .prop_map(
                |(consecutive_failures, rate, base, max, max_ejected_percent)| OutlierConfig {
                    consecutive_failures,
                    failure_rate: rate.map(|(threshold_percent, min_requests, window)| {
                        FailureRate {
                            threshold_percent,
                            min_requests,
                            window: Duration::from_millis(window),
                        }
                    }),
                    base_ejection: Duration::from_millis(base),
                    max_ejection: Duration::from_millis(max),
                    max_ejected_percent,
                },
            )
    }

    proptest! {
           #[test]
           fn breaker_random_sequences_stay_consistent(
               cfg in cfg_strategy(),
               ops in proptest::collection::vec(op_strategy(), 0..200),
           ) {
               let t0 = Instant::now();
               let o = OutlierState::new(t0);
               let mut now = t0;
               // Whether a probe has been admitted and not reported, and when.
               let mut probe_out: Option<Instant> = None;
               let grace = cfg.base_ejection.max(MIN_PROBE_GRACE);
               for op in ops {
                   match op {
                       Op::Advance(ms) => now += Duration::from_millis(ms),
                       Op::Admit => {
                           let health = o.health(now);
                           let admission = o.admit(now);
                           match health {
                               Health::Healthy => prop_assert_eq!(admission, Admission::Yes),
                               Health::Ejected { until } => {
                                   prop_assert!(until > now);
                                   prop_assert_eq!(admission, Admission::No);
                               }
                               Health::HalfOpen => {
                                   prop_assert_ne!(admission, Admission::Yes);
                                   if admission == Admission::Probe {
                                       // Never two probes out within the grace.
                                       if let Some(at) = probe_out {
                                           prop_assert!(now.duration_since(at) >= grace);
                                       }
                                       probe_out = Some(now);
                                   }
                               }
                           }
                       }
                       Op::Record { failure, probe, may_eject } => {
                           let before = o.health(now);
                           let transition = o.record(failure, probe, now, &cfg, may_eject);
                           let after = o.health(now);
                           if probe {
                               probe_out = None;
                           }
                           match transition {
                               None => prop_assert_eq!(before, after),
                               Some(Transition::Recovered) => {
                                   prop_assert_eq!(before, Health::HalfOpen);
                                   prop_assert!(probe && !failure);
                                   prop_assert_eq!(after, Health::Healthy);
                               }
                               Some(Transition::Ejected { for_ }) => {
                                   prop_assert!(failure);
                                   prop_assert!(for_ <= cfg.max_ejection.min(EJECTION_CAP));
                                   if before == Health::Healthy {
                                       prop_assert!(may_eject);
                                   } else {
                                       prop_assert_eq!(before, Health::HalfOpen);
                                   }
                                   if for_.is_zero() {
                                       // Zero-length ejections end at once
                                       // (stored as 1 ns when at the anchor).
                                       let ended = matches!(after, Health::HalfOpen | Health::Ejected { .. });
    prop_assert!(ended);
                                   } else {
                                       prop_assert_eq!(after, Health::Ejected { until: now + for_ });
                                   }
                               }
                           }
                       }
                   }
               }
           }

           #[test]
           fn breaker_arbitrary_times_never_panic(
               offsets in proptest::collection::vec(any::<u64>(), 1..40),
               base in any::<u64>(),
               max in any::<u64>(),
               bits in any::<u64>(),
           ) {
               let t0 = Instant::now();
               let cfg = OutlierConfig {
                   consecutive_failures: 1,
                   failure_rate: Some(FailureRate { threshold_percent: 1, min_requests: 0, window: Duration::from_nanos(base) }),
                   base_ejection: Duration::from_nanos(base),
                   max_ejection: Duration::from_nanos(max),
                   max_ejected_percent: 100,
               };
               let o = OutlierState::new(t0);
               for (i, off) in offsets.iter().enumerate() {
                   // Times may jump backwards as well as forwards.
                   let now = t0.checked_add(Duration::from_nanos(*off)).unwrap_or(t0);
                   let bit = |k: usize| (bits >> ((i * 3 + k) % 64)) & 1 == 1;
                   let _ = o.admit(now);
                   let _ = o.health(now);
                   let _ = o.record(bit(0), bit(1), now, &cfg, bit(2));
               }
           }
       }
}
