//! Load balancing: which endpoint of a service receives the next request.
//!
//! The default is power-of-two-choices (P2C) over a peak-EWMA latency
//! estimate, the balancer Finagle introduced and Linkerd kept: sample two
//! endpoints, send to the cheaper one, where cost is the latency estimate
//! times the number of requests already waiting there. Two random samples
//! need no global view or sorting, yet keep every endpoint away from the
//! worst of the load; the "peak" estimate reacts at once when an endpoint
//! slows down and forgives it only gradually. Round robin, least-request
//! and consistent hashing cover the cases where predictability or affinity
//! matters more than latency.
//!
//! The module is sans-I/O like the rest of the crate: [`EndpointLoad`] is
//! the only mutable state, it is made of atomics so that every worker
//! thread can update and read it without a lock, and it outlives config
//! reloads because the data path keys it by endpoint address. The time and
//! the random source come in as arguments so tests replay them exactly.
//! [`Balancer::pick`] allocates nothing; every algorithm is one or two
//! passes over the candidate slice, which the caller has already filtered
//! to the endpoints that may take traffic.
//!
//! Endpoint weights mean the same thing everywhere: a candidate's share of
//! the choices is proportional to its weight, and weight 0 drains it (it is
//! never picked while any candidate has a positive weight). When every
//! candidate has weight 0 they are treated as equal, because the caller has
//! already decided they may serve and some answer beats none.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::random::{Random, stable_hash};

/// How a [`Balancer`] chooses among candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Power-of-two-choices on peak-EWMA latency times outstanding
    /// requests; adapts to slow endpoints without coordination.
    #[default]
    PeakEwma,
    /// Smooth weighted round robin: each endpoint's picks are spread
    /// evenly over a cycle instead of arriving in bursts.
    RoundRobin,
    /// Power-of-two-choices on the number of outstanding requests alone,
    /// for backends whose latency says little about their load.
    LeastRequest,
    /// Weighted rendezvous hashing on a per-request key, so one key keeps
    /// reaching one endpoint; without a key it behaves like `PeakEwma`.
    ConsistentHash,
}

/// Tuning of the peak-EWMA latency estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EwmaConfig {
    /// Time constant of the decay toward faster observations, and of the
    /// drift back toward `default_rtt` while an endpoint gets no responses.
    /// Default 10s.
    pub decay: Duration,
    /// Latency assumed for an endpoint with no observations yet. Default
    /// 30ms: high enough that a new endpoint does not attract a flood before
    /// its first response, low enough that it is not starved either.
    pub default_rtt: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

/// Bit pattern stored before the first latency observation. It is a NaN
/// that no arithmetic in this module produces, so it cannot collide with a
/// real estimate.
const NO_SAMPLE: u64 = u64::MAX;

/// Live load of one endpoint, shared by all workers (atomics only).
/// Survives config reloads (the data path keys it by address).
///
/// Two quantities are tracked: requests in flight, and a latency estimate
/// in nanoseconds. The estimate is a time-weighted EWMA of observed round
/// trips that jumps straight up to any slower observation ("peak") and
/// moves toward faster ones with time constant [`EwmaConfig::decay`]. While
/// no response arrives, reads let it drift back toward
/// [`EwmaConfig::default_rtt`]: an endpoint P2C stopped choosing because it
/// was slow is therefore probed again after a while, and one that was idle
/// is treated like a new endpoint. Finagle lets the estimate decay to zero
/// instead, which floods an endpoint returning from idleness because a
/// near-zero estimate makes the in-flight multiplier useless.
///
/// Every access is `Relaxed`: these atomics publish no other memory, and
/// each one is a load signal where a value a few nanoseconds stale makes no
/// difference to the decision.
#[derive(Debug)]
pub struct EndpointLoad {
    /// Origin of `stamp_ns`; an `Instant` cannot live in an atomic, an
    /// offset from it can.
    epoch: Instant,
    in_flight: AtomicU32,
    /// `f64` bits of the latency estimate in nanoseconds, or `NO_SAMPLE`.
    rtt_ns: AtomicU64,
    /// When the estimate last took an observation, in nanoseconds since
    /// `epoch`.
    stamp_ns: AtomicU64,
}

impl EndpointLoad {
    /// A fresh endpoint: nothing in flight, latency assumed to be the
    /// configured default until the first response.
    pub fn new(now: Instant) -> Self {
        Self {
            epoch: now,
            in_flight: AtomicU32::new(0),
            rtt_ns: AtomicU64::new(NO_SAMPLE),
            stamp_ns: AtomicU64::new(0),
        }
    }

    /// Requests sent to this endpoint that have not finished yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request was sent to this endpoint. Pair every call with one
    /// [`EndpointLoad::end`].
    pub fn begin(&self) {
        // Saturating rather than wrapping: a leak of four billion requests
        // must not turn into "idle".
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }

    /// A request finished. `rtt` is its round-trip time, or `None` for a
    /// failure that says nothing about latency (connection refused, reset,
    /// local timeout).
    ///
    /// A failure leaves the estimate alone on purpose: counting a fast
    /// failure as a fast response would make a broken endpoint look like the
    /// best one and pull traffic into it. Ejecting failing endpoints is the
    /// circuit breaker's job.
    pub fn end(&self, rtt: Option<Duration>, now: Instant, cfg: &EwmaConfig) {
        // Never below zero, even if a caller ends more than it began.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let Some(rtt) = rtt else {
            return;
        };
        let sample = nanos_f64(rtt);
        let now_ns = self.since_epoch(now);
        // A compare-exchange loop rather than load-then-store: with a plain
        // store, a fast response computed from a stale estimate could
        // overwrite a concurrent slow one, and losing a peak is exactly the
        // mistake this estimator exists to avoid. On a retry the slow value
        // is seen and the peak rule keeps it. The timestamp is a separate
        // atomic and may lag by one racing update, which only shifts the
        // decay by that update's interval.
        let mut current = self.rtt_ns.load(Ordering::Relaxed);
        loop {
            let next = if current == NO_SAMPLE {
                sample
            } else {
                let stored = f64::from_bits(current);
                if sample >= stored {
                    sample
                } else {
                    let elapsed = now_ns.saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
                    let keep = retention(elapsed, cfg.decay);
                    sample + (stored - sample) * keep
                }
            };
            match self.rtt_ns.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        // `fetch_max`: callers on other threads may pass a slightly older
        // `now`, and time must not run backwards for the decay.
        self.stamp_ns.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// The latency estimate at `now`, in nanoseconds.
    pub fn rtt_estimate(&self, now: Instant, cfg: &EwmaConfig) -> f64 {
        let default = nanos_f64(cfg.default_rtt);
        let bits = self.rtt_ns.load(Ordering::Relaxed);
        if bits == NO_SAMPLE {
            return default;
        }
        let stored = f64::from_bits(bits);
        let elapsed = self
            .since_epoch(now)
            .saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
        // Computed on read, never stored: reads are frequent and must not
        // contend on the cache line, and storing would make the result
        // depend on how often somebody looked.
        default + (stored - default) * retention(elapsed, cfg.decay)
    }

    /// The P2C cost: latency estimate (ns) times the requests the new one
    /// would queue behind, plus one for itself. Only comparable with other
    /// endpoints under the same config.
    pub fn cost(&self, now: Instant, cfg: &EwmaConfig) -> f64 {
        self.rtt_estimate(now, cfg) * (f64::from(self.in_flight()) + 1.0)
    }

    fn since_epoch(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }
}

/// How much of the old estimate survives `elapsed_ns` at time constant
/// `decay`. No elapsed time keeps everything, and a zero decay otherwise
/// keeps nothing, instead of evaluating 0/0.
fn retention(elapsed_ns: u64, decay: Duration) -> f64 {
    let tau = nanos_f64(decay);
    if elapsed_ns == 0 {
        return 1.0;
    }
    if tau <= 0.0 {
        return 0.0;
    }
    (-(elapsed_ns as f64) / tau).exp()
}

fn nanos_f64(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// One pickable endpoint as the data path sees it for this request.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The endpoint's shared load.
    pub load: &'a EndpointLoad,
    /// Relative share of traffic; 0 drains the endpoint.
    pub weight: u32,
    /// Stable identity such as `"10.0.0.1:8080"`, hashed by consistent
    /// hashing so that every replica maps a key to the same endpoint.
    pub key: &'a str,
}

/// Chooses endpoints for one service. Cheap to share between workers: the
/// only mutable part is the round-robin counter.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    ewma: EwmaConfig,
    /// Round-robin position; wraps silently after `usize::MAX` picks.
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer using `algorithm`, with `ewma` for the latency estimate of
    /// the P2C algorithms.
    pub fn new(algorithm: Algorithm, ewma: EwmaConfig) -> Self {
        Self {
            algorithm,
            ewma,
            next: AtomicUsize::new(0),
        }
    }

    /// The configured algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The latency-estimate config; the data path passes it to
    /// [`EndpointLoad::end`] so reads and updates agree.
    pub fn ewma_config(&self) -> &EwmaConfig {
        &self.ewma
    }

    /// Pick among candidates (already filtered to available ones by the
    /// caller). None if empty.
    ///
    /// `hash_key` is only used by [`Algorithm::ConsistentHash`]; requests
    /// without one are balanced by peak EWMA so they still avoid slow
    /// endpoints.
    pub fn pick(
        &self,
        candidates: &[Candidate<'_>],
        hash_key: Option<u64>,
        now: Instant,
        rng: &mut impl Random,
    ) -> Option<usize> {
        match candidates.len() {
            0 => return None,
            // Nothing to decide, whatever the weight says.
            1 => return Some(0),
            _ => {}
        }
        let weights = Weights::of(candidates);
        let picked = match (self.algorithm, hash_key) {
            (Algorithm::RoundRobin, _) => self.round_robin(candidates, &weights),
            (Algorithm::LeastRequest, _) => {
                p2c(candidates, &weights, rng, |c| f64::from(c.load.in_flight()))
            }
            (Algorithm::ConsistentHash, Some(key)) => rendezvous(candidates, &weights, key),
            (Algorithm::PeakEwma | Algorithm::ConsistentHash, _) => {
                p2c(candidates, &weights, rng, |c| c.load.cost(now, &self.ewma))
            }
        };
        Some(picked)
    }

    /// Smooth weighted round robin without per-endpoint state.
    ///
    /// The counter `t` selects position `p = t mod W` in a cycle of length
    /// `W` (the total weight); `p` is spread by multiplying with a stride
    /// coprime to `W`, close to `W / golden ratio`, and the result is looked
    /// up in the cumulative weights. Multiplying by a coprime permutes the
    /// cycle, so every full cycle gives each endpoint exactly its weight;
    /// the golden stride interleaves the endpoints like nginx's smooth
    /// round robin instead of sending a heavy endpoint its whole share in a
    /// burst. With equal weights the stride is skipped and this is plain
    /// rotation. When the candidate set changes, the cycle is recomputed
    /// from the new weights, which is fine for a balancer that keeps no
    /// memory of who was served.
    fn round_robin(&self, candidates: &[Candidate<'_>], weights: &Weights) -> usize {
        let tick = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        let position = tick % weights.total;
        if weights.uniform {
            // Each candidate counts once, so the position is the index (and
            // below `len`, so the cast is lossless).
            return position as usize;
        }
        let stride = golden_stride(weights.total);
        // Reduced modulo a u64, so it fits back in one.
        let spread = (u128::from(position) * u128::from(stride) % u128::from(weights.total)) as u64;
        weighted_index(candidates, weights, spread, None).unwrap_or(0)
    }
}

/// Effective weights of one candidate set, from a single pass.
#[derive(Debug)]
struct Weights {
    /// Sum of effective weights; at least 1 because there are candidates.
    total: u64,
    /// Every candidate has the same weight (including all zero), so each
    /// counts as 1 and uniform draws suffice.
    uniform: bool,
}

impl Weights {
    fn of(candidates: &[Candidate<'_>]) -> Self {
        let first = candidates.first().map_or(0, |c| c.weight);
        let uniform = candidates.iter().all(|c| c.weight == first);
        let total = if uniform {
            candidates.len() as u64
        } else {
            // Saturating only matters past four billion candidates.
            candidates
                .iter()
                .fold(0u64, |sum, c| sum.saturating_add(u64::from(c.weight)))
        };
        Self { total, uniform }
    }

    fn of_candidate(&self, c: &Candidate<'_>) -> u64 {
        if self.uniform { 1 } else { u64::from(c.weight) }
    }
}

/// The candidate whose slice of the cumulative weights contains `point`,
/// ignoring `skip`. `None` only if `point` is beyond the total.
fn weighted_index(
    candidates: &[Candidate<'_>],
    weights: &Weights,
    mut point: u64,
    skip: Option<usize>,
) -> Option<usize> {
    for (i, c) in candidates.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let w = weights.of_candidate(c);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// Power of two choices: sample two distinct candidates in proportion to
/// their weights, keep the one with the lower `load`. Ties go to the first
/// sample, which is itself random, so ties do not favour low indices.
fn p2c(
    candidates: &[Candidate<'_>],
    weights: &Weights,
    rng: &mut impl Random,
    load: impl Fn(&Candidate<'_>) -> f64,
) -> usize {
    let (first, second) = sample_two(candidates, weights, rng);
    let Some(second) = second else {
        return first;
    };
    match (candidates.get(first), candidates.get(second)) {
        (Some(a), Some(b)) if load(b) < load(a) => second,
        _ => first,
    }
}

/// Two distinct indices drawn without replacement, proportionally to
/// weight. The second is `None` when only one candidate has weight.
fn sample_two(
    candidates: &[Candidate<'_>],
    weights: &Weights,
    rng: &mut impl Random,
) -> (usize, Option<usize>) {
    let n = candidates.len() as u64;
    if weights.uniform {
        // The common case, in O(1): draw from n, then from the n - 1 others
        // by shifting past the first. Both are below `len`, so the casts
        // are lossless.
        let first = rng.below(n);
        let mut second = rng.below(n - 1);
        if second >= first {
            second += 1;
        }
        return (first as usize, Some(second as usize));
    }
    // The draw is below the total, so the lookup always succeeds; 0 only
    // keeps the function total.
    let first = weighted_index(candidates, weights, rng.below(weights.total), None).unwrap_or(0);
    let first_weight = candidates.get(first).map_or(0, |c| weights.of_candidate(c));
    let rest = weights.total - first_weight;
    if rest == 0 {
        return (first, None);
    }
    let second = weighted_index(candidates, weights, rng.below(rest), Some(first));
    (first, second)
}

/// Weighted rendezvous hashing: every candidate scores the key, the best
/// score wins. Removing a candidate only moves the keys it won, adding one
/// only takes keys for itself, and nothing is built per request (a ring
/// would have to be rebuilt whenever the available set changes).
fn rendezvous(candidates: &[Candidate<'_>], weights: &Weights, key: u64) -> usize {
    let mut best = 0;
    let mut best_score = f64::NEG_INFINITY;
    for (i, c) in candidates.iter().enumerate() {
        let w = weights.of_candidate(c);
        if w == 0 {
            continue;
        }
        let score = rendezvous_score(key, stable_hash(c.key.as_bytes()), w as f64);
        if score > best_score {
            best = i;
            best_score = score;
        }
    }
    best
}

/// Score of `member` for `key` in weighted rendezvous hashing; the highest
/// score across members wins.
///
/// The score is `ln(u) / weight` with `u` a hash of the pair, uniform in
/// (0, 1]. `-ln(u)` is exponentially distributed, so this is a race of
/// exponential clocks with rates equal to the weights, and a member wins
/// with probability exactly `weight / total`. Raising one member's weight
/// only raises its own score, so keys only ever move onto it: shares follow
/// the weights exactly and changes are monotone.
///
/// Stability across processes rests on `stable_hash`, integer mixing and
/// `f64::ln`; the platform logarithm may differ in the last bit between
/// libms, which can only flip keys whose two best scores are within one ulp
/// (about one key in 2^50).
pub(crate) fn rendezvous_score(key: u64, member: u64, weight: f64) -> f64 {
    let h = mix64(key ^ member);
    // 53 bits into (0, 1]: never 0, so the logarithm stays finite.
    let u = ((h >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64);
    u.ln() / weight
}

/// A 64-bit finaliser (Murmur3's) so that keys differing in one bit give
/// unrelated scores.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A multiplier coprime to `total` near `total / golden ratio`; multiplying
/// positions by it permutes `0..total` while scattering neighbours as far
/// apart as possible.
fn golden_stride(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    // 2^64 / golden ratio, the Fibonacci-hashing constant.
    let start = ((u128::from(total) * 0x9E37_79B9_7F4A_7C15) >> 64) as u64;
    let mut stride = start.clamp(1, total - 1);
    // Terminates: total - 1 is always coprime to total, and gaps between
    // coprimes are short, so this is a handful of iterations.
    while gcd(stride, total) != 1 {
        stride += 1;
    }
    stride
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::random::SplitMix64;
    use proptest::prelude::*;

    fn loads(n: usize, now: Instant) -> Vec<EndpointLoad> {
        (0..n).map(|_| EndpointLoad::new(now)).collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn candidates<'a>(
        loads: &'a [EndpointLoad],
        keys: &'a [String],
        weights: &[u32],
    ) -> Vec<Candidate<'a>> {
        loads
            .iter()
            .zip(keys)
            .zip(weights)
            .map(|((load, key), &weight)| Candidate { load, weight, key })
            .collect()
    }

    fn counts(
        balancer: &Balancer,
        cands: &[Candidate<'_>],
        picks: usize,
        now: Instant,
        seed: u64,
    ) -> Vec<usize> {
        let mut rng = SplitMix64::new(seed);
        let mut seen = vec![0; cands.len()];
        for _ in 0..picks {
            seen[balancer.pick(cands, None, now, &mut rng).unwrap()] += 1;
        }
        seen
    }

    #[test]
    fn empty_gives_none_and_single_gives_it() {
        let now = Instant::now();
        let ls = loads(1, now);
        let ks = keys(1);
        let mut rng = SplitMix64::new(1);
        for algorithm in [
            Algorithm::PeakEwma,
            Algorithm::RoundRobin,
            Algorithm::LeastRequest,
            Algorithm::ConsistentHash,
        ] {
            let b = Balancer::new(algorithm, EwmaConfig::default());
            assert_eq!(b.pick(&[], Some(7), now, &mut rng), None);
            let one = candidates(&ls, &ks, &[0]);
            assert_eq!(b.pick(&one, Some(7), now, &mut rng), Some(0));
        }
    }

    #[test]
    fn defaults_match_the_documented_values() {
        assert_eq!(Algorithm::default(), Algorithm::PeakEwma);
        let cfg = EwmaConfig::default();
        assert_eq!(cfg.decay, Duration::from_secs(10));
        assert_eq!(cfg.default_rtt, Duration::from_millis(30));
    }

    #[test]
    fn new_endpoint_costs_the_default_rtt() {
        let now = Instant::now();
        let cfg = EwmaConfig::default();
        let load = EndpointLoad::new(now);
        assert_eq!(load.cost(now, &cfg), 30e6);
        load.begin();
        assert_eq!(load.cost(now, &cfg), 60e6);
    }

    #[test]
    fn peak_ewma_avoids_an_endpoint_with_a_huge_estimate() {
        let now = Instant::now();
        let cfg = EwmaConfig::default();
        let ls = loads(3, now);
        let ks = keys(3);
        for (i, load) in ls.iter().enumerate() {
            let rtt = if i == 1 { 5_000 } else { 10 };
            load.begin();
            load.end(Some(Duration::from_millis(rtt)), now, &cfg);
        }
        let cands = candidates(&ls, &ks, &[1, 1, 1]);
        let b = Balancer::new(Algorithm::PeakEwma, cfg);
        let seen = counts(&b, &cands, 3_000, now, 11);
        // P2C compares two distinct endpoints, so the slow one always loses.
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 1_000 && seen[2] > 1_000, "{seen:?}");
    }

    #[test]
    fn peak_ewma_avoids_an_endpoint_with_many_in_flight() {
        let now = Instant::now();
        let ls = loads(2, now);
        let ks = keys(2);
        for _ in 0..50 {
            ls[0].begin();
        }
        let cands = candidates(&ls, &ks, &[1, 1]);
        let b = Balancer::new(Algorithm::PeakEwma, EwmaConfig::default());
        // With two candidates both are always sampled; if the two samples
        // could coincide, the busy one would win some of these.
        assert_eq!(counts(&b, &cands, 1_000, now, 5), vec![0, 1_000]);
    }

    #[test]
    fn one_slow_sample_raises_cost_at_once_then_decays() {
        let start = Instant::now();
        let cfg = EwmaConfig::default();
        let load = EndpointLoad::new(start);
        let mut now = start;
        for _ in 0..100 {
            now += Duration::from_millis(100);
            load.end(Some(Duration::from_millis(10)), now, &cfg);
        }
        let settled = load.cost(now, &cfg);
        assert!((settled - 10e6).abs() < 1e6, "{settled}");

        load.end(Some(Duration::from_secs(1)), now, &cfg);
        assert_eq!(load.cost(now, &cfg), 1e9, "the peak is taken at once");

        // One time constant of fast responses removes about 1 - 1/e of the
        // excess; five remove nearly all of it.
        for _ in 0..100 {
            now += Duration::from_millis(100);
            load.end(Some(Duration::from_millis(10)), now, &cfg);
        }
        let after_one = load.cost(now, &cfg);
        assert!(after_one > 300e6 && after_one < 450e6, "{after_one}");
        for _ in 0..400 {
            now += Duration::from_millis(100);
            load.end(Some(Duration::from_millis(10)), now, &cfg);
        }
        let after_five = load.cost(now, &cfg);
        assert!(after_five < 20e6, "{after_five}");
    }

    #[test]
    fn an_idle_estimate_drifts_back_to_the_default() {
        let now = Instant::now();
        let cfg = EwmaConfig::default();
        let load = EndpointLoad::new(now);
        load.end(Some(Duration::from_secs(2)), now, &cfg);
        let later = now + Duration::from_secs(100);
        let cost = load.cost(later, &cfg);
        assert!((cost - 30e6).abs() < 1e6, "{cost}");
        // Reading does not change what an update starts from.
        load.end(Some(Duration::from_secs(2)), later, &cfg);
        assert_eq!(load.cost(later, &cfg), 2e9);
    }

    #[test]
    fn failures_without_latency_keep_the_estimate() {
        let now = Instant::now();
        let cfg = EwmaConfig::default();
        let load = EndpointLoad::new(now);
        load.begin();
        load.end(Some(Duration::from_millis(200)), now, &cfg);
        load.begin();
        assert_eq!(load.in_flight(), 1);
        load.end(None, now, &cfg);
        assert_eq!(load.in_flight(), 0);
        assert_eq!(load.cost(now, &cfg), 200e6);
    }

    #[test]
    fn unbalanced_end_does_not_underflow() {
        let now = Instant::now();
        let load = EndpointLoad::new(now);
        load.end(None, now, &EwmaConfig::default());
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn zero_decay_and_backwards_time_stay_finite() {
        let now = Instant::now();
        let cfg = EwmaConfig {
            decay: Duration::ZERO,
            default_rtt: Duration::ZERO,
        };
        let load = EndpointLoad::new(now);
        load.end(Some(Duration::from_millis(50)), now, &cfg);
        assert_eq!(load.cost(now, &cfg), 50e6);
        // Without memory, any later moment falls back to the default.
        let later = now + Duration::from_millis(1);
        load.end(Some(Duration::from_millis(5)), later, &cfg);
        assert_eq!(load.cost(later, &cfg), 5e6);
        assert_eq!(load.cost(later + Duration::from_millis(1), &cfg), 0.0);
        let earlier = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        load.end(Some(Duration::from_millis(1)), earlier, &cfg);
        assert!(load.cost(earlier, &cfg).is_finite());
        load.end(Some(Duration::MAX), now, &cfg);
        assert!(load.cost(now, &cfg).is_finite());
    }

    #[test]
    fn round_robin_cycles_through_all() {
        let now = Instant::now();
        let ls = loads(4, now);
        let ks = keys(4);
        let cands = candidates(&ls, &ks, &[3, 3, 3, 3]);
        let b = Balancer::new(Algorithm::RoundRobin, EwmaConfig::default());
        let mut rng = SplitMix64::new(0);
        let order: Vec<usize> = (0..8)
            .map(|_| b.pick(&cands, None, now, &mut rng).unwrap())
            .collect();
        assert_eq!(order, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn round_robin_respects_weights_in_every_cycle() {
        let now = Instant::now();
        let ls = loads(4, now);
        let ks = keys(4);
        let weights = [5, 1, 0, 3];
        let cands = candidates(&ls, &ks, &weights);
        let b = Balancer::new(Algorithm::RoundRobin, EwmaConfig::default());
        let mut rng = SplitMix64::new(0);
        let order: Vec<usize> = (0..900)
            .map(|_| b.pick(&cands, None, now, &mut rng).unwrap())
            .collect();
        // Any window as long as the total weight holds one full cycle.
        for window in order.windows(9) {
            for (i, &w) in weights.iter().enumerate() {
                let seen = window.iter().filter(|&&p| p == i).count();
                assert_eq!(seen, w as usize, "{window:?}");
            }
        }
        // Smooth: the heavy endpoint never gets its five picks in a row.
        assert!(order.windows(3).all(|w| w.iter().any(|&p| p != 0)));
    }

    #[test]
    fn round_robin_survives_counter_wrap() {
        let now = Instant::now();
        let ls = loads(3, now);
        let ks = keys(3);
        let cands = candidates(&ls, &ks, &[2, 1, 1]);
        let b = Balancer::new(Algorithm::RoundRobin, EwmaConfig::default());
        b.next.store(usize::MAX - 2, Ordering::Relaxed);
        let mut rng = SplitMix64::new(0);
        for _ in 0..6 {
            assert!(b.pick(&cands, None, now, &mut rng).unwrap() < 3);
        }
    }

    #[test]
    fn least_request_prefers_fewer_in_flight() {
        let now = Instant::now();
        let cfg = EwmaConfig::default();
        let ls = loads(3, now);
        let ks = keys(3);
        for _ in 0..5 {
            ls[0].begin();
        }
        ls[1].begin();
        // Latency must not matter to this algorithm.
        ls[2].end(Some(Duration::from_secs(10)), now, &cfg);
        let cands = candidates(&ls, &ks, &[1, 1, 1]);
        let b = Balancer::new(Algorithm::LeastRequest, cfg);
        let seen = counts(&b, &cands, 3_000, now, 9);
        assert_eq!(seen[0], 0);
        // Endpoint 2 wins every pair it is in (two of three pairs).
        assert!(seen[2] > 1_800 && seen[1] > 800, "{seen:?}");
    }

    #[test]
    fn p2c_samples_in_proportion_to_weight() {
        let now = Instant::now();
        let ls = loads(3, now);
        let ks = keys(3);
        let cands = candidates(&ls, &ks, &[1, 0, 3]);
        let b = Balancer::new(Algorithm::PeakEwma, EwmaConfig::default());
        let seen = counts(&b, &cands, 40_000, now, 3);
        assert_eq!(seen[1], 0, "weight 0 is drained");
        let share = seen[2] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{seen:?}");
    }

    fn hash_picks(b: &Balancer, cands: &[Candidate<'_>], n: u64) -> Vec<usize> {
        let now = Instant::now();
        let mut rng = SplitMix64::new(0);
        (0..n)
            .map(|k| {
                let key = stable_hash(format!("user-{k}").as_bytes());
                b.pick(cands, Some(key), now, &mut rng).unwrap()
            })
            .collect()
    }

    #[test]
    fn consistent_hash_same_key_same_endpoint() {
        let now = Instant::now();
        let cfg = EwmaConfig::default();
        let ls = loads(5, now);
        let ks = keys(5);
        let cands = candidates(&ls, &ks, &[1; 5]);
        let b = Balancer::new(Algorithm::ConsistentHash, cfg);
        let before = hash_picks(&b, &cands, 1_000);
        // Load does not move keys.
        ls[before[0]].end(Some(Duration::from_secs(9)), now, &cfg);
        ls[before[0]].begin();
        assert_eq!(hash_picks(&b, &cands, 1_000), before);
    }

    #[test]
    fn consistent_hash_removal_moves_only_the_removed_keys() {
        let now = Instant::now();
        let ls = loads(10, now);
        let ks = keys(10);
        let all = candidates(&ls, &ks, &[1; 10]);
        let b = Balancer::new(Algorithm::ConsistentHash, EwmaConfig::default());
        let before = hash_picks(&b, &all, 10_000);
        let removed = 3;
        let mut fewer = all.clone();
        fewer.remove(removed);
        let after = hash_picks(&b, &fewer, 10_000);
        let mut moved = 0;
        for (old, new) in before.iter().zip(&after) {
            // Map the shortened slice back to original indices.
            let new = if *new >= removed { new + 1 } else { *new };
            if *old == removed {
                moved += 1;
            } else {
                assert_eq!(*old, new, "a key not on the removed endpoint moved");
            }
        }
        assert!((700..1_300).contains(&moved), "{moved} of 10000 moved");
    }

    #[test]
    fn consistent_hash_respects_weights() {
        let now = Instant::now();
        let ls = loads(4, now);
        let ks = keys(4);
        let weights = [1, 2, 0, 5];
        let cands = candidates(&ls, &ks, &weights);
        let b = Balancer::new(Algorithm::ConsistentHash, EwmaConfig::default());
        let picks = hash_picks(&b, &cands, 40_000);
        for (i, &w) in weights.iter().enumerate() {
            let share = picks.iter().filter(|&&p| p == i).count() as f64 / 40_000.0;
            assert!((share - f64::from(w) / 8.0).abs() < 0.015, "{i}: {share}");
        }
    }

    #[test]
    fn consistent_hash_without_a_key_balances_by_latency() {
        let now = Instant::now();
        let cfg = EwmaConfig::default();
        let ls = loads(2, now);
        let ks = keys(2);
        ls[0].end(Some(Duration::from_secs(3)), now, &cfg);
        let cands = candidates(&ls, &ks, &[1, 1]);
        let b = Balancer::new(Algorithm::ConsistentHash, cfg);
        assert_eq!(counts(&b, &cands, 500, now, 2), vec![0, 500]);
    }

    #[test]
    fn golden_stride_is_coprime() {
        for total in 1..2_000 {
            let s = golden_stride(total);
            assert!(s >= 1 && (s < total || total == 1));
            assert_eq!(gcd(s, total), 1, "{total}");
        }
    }

    fn algorithm() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            Just(Algorithm::PeakEwma),
            Just(Algorithm::RoundRobin),
            Just(Algorithm::LeastRequest),
            Just(Algorithm::ConsistentHash),
        ]
    }

    fn weight() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..4, Just(u32::MAX), any::<u32>()]
    }

    proptest! {
        #[test]
        fn pick_is_always_in_range(
            algorithm in algorithm(),
            endpoints in prop::collection::vec((weight(), 0u32..20, prop::option::of(0u64..5_000)), 0..24),
            hash_key in prop::option::of(any::<u64>()),
            seed in any::<u64>(),
            counter in any::<usize>(),
        ) {
            let now = Instant::now();
            let cfg = EwmaConfig::default();
            let ls = loads(endpoints.len(), now);
            let ks = keys(endpoints.len());
            let mut weights = Vec::new();
            for (load, (w, in_flight, rtt)) in ls.iter().zip(&endpoints) {
                load.end(rtt.map(Duration::from_millis), now, &cfg);
                for _ in 0..*in_flight {
                    load.begin();
                }
                weights.push(*w);
            }
            let cands = candidates(&ls, &ks, &weights);
            let b = Balancer::new(algorithm, cfg);
            b.next.store(counter, Ordering::Relaxed);
            let mut rng = SplitMix64::new(seed);
            for _ in 0..20 {
                match b.pick(&cands, hash_key, now, &mut rng) {
                    None => prop_assert!(cands.is_empty()),
                    Some(i) => {
                        prop_assert!(i < cands.len());
                        let any_weight = weights.iter().any(|&w| w > 0);
                        prop_assert!(cands.len() == 1 || !any_weight || weights[i] > 0);
                    }
                }
            }
        }
    }
}
