//! Retry policy: whether to try again, when, and whether we can afford it.
//!
//! The data path classifies how a try ended into an [`Outcome`]; this
//! module turns it into a [`RetryDecision`]. The decision is deliberately a
//! fixed sequence of gates (retryable? attempts left? safe to resend? how
//! long to wait? within the deadline? within the budget?) so that every
//! "no" has exactly one stable reason ([`GiveUp::as_str`]) for the access
//! log and the metrics label.
//!
//! Two things keep retries from making an outage worse:
//! - exponential backoff with *full* jitter ([`Backoff`]), so a fleet of
//!   clients that failed together does not retry together;
//! - a retry budget ([`RetryBudget`], as in Linkerd and Finagle) that lets
//!   retries add only a fraction of the original traffic, so a failing
//!   upstream sees at most `1 + ratio` times its normal load instead of
//!   `1 + max_retries` times.
//!
//! Time and randomness are arguments; the budget is shared between worker
//! threads through atomics only, so consulting it never blocks.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::deadline::Deadline;
use crate::random::Random;

/// The longest delay [`RetryPolicy::decide`] ever asks for: one hour.
///
/// Longer configured backoffs or Retry-After caps are treated as this, so a
/// caller's `now + after` can never overflow and a typo cannot park a
/// request for days.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Parsed Retry-After values are capped at 2^31 seconds (about 68 years),
/// the same bound RFC 9111 §1.2.2 sets for delta-seconds, so absurd
/// header values stay representable; [`RetryPolicy::max_retry_after`]
/// then rejects them.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(1 << 31);

/// What ended one try. The data path classifies; policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The try produced a response the caller considers final (typically a
    /// 1xx-4xx status it did not ask to retry). Never retried. Responses the
    /// caller is unsure about should be reported as [`Outcome::Response`] so
    /// the retry conditions decide.
    Success,
    /// No connection could be established (refused, unreachable, TLS
    /// handshake failure). Nothing of the request was sent.
    ConnectFailure,
    /// The connection or stream was reset after the request started.
    Reset,
    /// The per-try timeout fired before a response arrived.
    Timeout,
    /// A complete response head arrived.
    Response {
        /// HTTP status code.
        status: u16,
        /// `grpc-status` from trailers (or a trailers-only response), if any.
        grpc_status: Option<u32>,
        /// The response's Retry-After, already parsed (see
        /// [`parse_retry_after`]).
        retry_after: Option<Duration>,
    },
}

/// A set of HTTP status codes in `100..=599`, stored as a 500-bit bitmap so
/// matching a response is one shift and mask, with no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet {
    bits: [u64; 8],
}

impl StatusSet {
    /// The lowest status a set can hold.
    pub const MIN: u16 = 100;
    /// The highest status a set can hold.
    pub const MAX: u16 = 599;

    /// An empty set.
    pub const fn new() -> Self {
        Self { bits: [0; 8] }
    }

    /// Adds `status`; returns `false` (and changes nothing) when it is
    /// outside `100..=599`.
    pub fn insert(&mut self, status: u16) -> bool {
        match Self::slot(status) {
            Some((word, bit)) => {
                self.bits[word] |= bit;
                true
            }
            None => false,
        }
    }

    /// Whether `status` is in the set; statuses outside `100..=599` never are.
    pub fn contains(&self, status: u16) -> bool {
        Self::slot(status).is_some_and(|(word, bit)| self.bits[word] & bit != 0)
    }

    /// Whether the set holds no status.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The statuses in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (Self::MIN..=Self::MAX).filter(|s| self.contains(*s))
    }

    fn slot(status: u16) -> Option<(usize, u64)> {
        if !(Self::MIN..=Self::MAX).contains(&status) {
            return None;
        }
        let i = usize::from(status - Self::MIN);
        Some((i / 64, 1u64 << (i % 64)))
    }
}

impl fmt::Debug for StatusSet {
    // The bitmap is unreadable in config dumps; list the codes instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// gRPC status codes (0-16), as a bitmask.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcCodeSet {
    bits: u32,
}

impl GrpcCodeSet {
    /// An empty set.
    pub const fn new() -> Self {
        Self { bits: 0 }
    }

    /// Adds `code`; returns `false` (and changes nothing) for codes above
    /// 16, which gRPC does not define.
    pub fn insert(&mut self, code: u32) -> bool {
        if code > 16 {
            return false;
        }
        self.bits |= 1 << code;
        true
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: u32) -> bool {
        code <= 16 && self.bits & (1 << code) != 0
    }

    /// Whether the set holds no code.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// The codes in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..=16).filter(|c| self.contains(*c))
    }
}

impl fmt::Debug for GrpcCodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Every word [`RetryOn::parse_condition`] accepts, besides a bare status
/// code; for error messages and "did you mean" suggestions.
pub const CONDITIONS: &[&str] = &[
    "connect-failure",
    "reset",
    "timeout",
    "5xx",
    "gateway-error",
    "retriable-4xx",
    "grpc-cancelled",
    "grpc-deadline-exceeded",
    "grpc-resource-exhausted",
    "grpc-internal",
    "grpc-unavailable",
];

/// Which outcomes are retryable, in Envoy's `retry_on` vocabulary.
///
/// Unlike Envoy, the status words (`5xx`, `gateway-error`) cover responses
/// only; connection failures and resets are retried only when
/// `connect-failure` / `reset` are listed too. One word, one meaning, so a
/// config reads exactly as it behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// Retry when no connection could be made (`connect-failure`).
    pub connect_failure: bool,
    /// Retry when the connection or stream was reset (`reset`).
    pub reset: bool,
    /// Retry when the per-try timeout fired (`timeout`).
    pub timeout: bool,
    /// Retry responses with these HTTP statuses (`5xx`, `gateway-error`,
    /// `retriable-4xx`, or explicit codes such as `503`).
    pub statuses: StatusSet,
    /// Retry responses with these gRPC statuses (`grpc-unavailable`, ...).
    pub grpc: GrpcCodeSet,
}

impl RetryOn {
    /// Nothing is retryable. Same as `RetryOn::default()`.
    pub const fn none() -> Self {
        Self {
            connect_failure: false,
            reset: false,
            timeout: false,
            statuses: StatusSet::new(),
            grpc: GrpcCodeSet::new(),
        }
    }

    /// The default set: `connect-failure`, `reset`, `gateway-error`.
    ///
    /// These are the failures where the upstream most likely did not act on
    /// the request; a plain 500 may have had side effects, so it is opt-in.
    pub fn standard() -> Self {
        let mut on = Self::none();
        on.connect_failure = true;
        on.reset = true;
        for s in [502, 503, 504] {
            on.statuses.insert(s);
        }
        on
    }

    /// Builds a set from condition words, starting from nothing.
    pub fn from_conditions<'a>(
        words: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, RetryError> {
        let mut on = Self::none();
        for w in words {
            on.parse_condition(w)?;
        }
        Ok(on)
    }

    /// Adds one condition: `connect-failure`, `reset`, `timeout`, `5xx`,
    /// `gateway-error` (502, 503, 504), `retriable-4xx` (409), a three-digit
    /// status from 100 to 599, or `grpc-cancelled` (1),
    /// `grpc-deadline-exceeded` (4), `grpc-resource-exhausted` (8),
    /// `grpc-internal` (13), `grpc-unavailable` (14). Words are
    /// case-sensitive, as in Envoy; surrounding whitespace is ignored.
    pub fn parse_condition(&mut self, word: &str) -> Result<(), RetryError> {
        let word = word.trim();
        match word {
            "connect-failure" => self.connect_failure = true,
            "reset" => self.reset = true,
            "timeout" => self.timeout = true,
            "5xx" => {
                for s in 500..=599 {
                    self.statuses.insert(s);
                }
            }
            "gateway-error" => {
                for s in [502, 503, 504] {
                    self.statuses.insert(s);
                }
            }
            "retriable-4xx" => {
                self.statuses.insert(409);
            }
            "grpc-cancelled" => {
                self.grpc.insert(1);
            }
            "grpc-deadline-exceeded" => {
                self.grpc.insert(4);
            }
            "grpc-resource-exhausted" => {
                self.grpc.insert(8);
            }
            "grpc-internal" => {
                self.grpc.insert(13);
            }
            "grpc-unavailable" => {
                self.grpc.insert(14);
            }
            _ if word.len() == 3 && word.bytes().all(|b| b.is_ascii_digit()) => {
                // Three ASCII digits always fit in a u16.
                let status = word
                    .bytes()
                    .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
                if !self.statuses.insert(status) {
                    return Err(RetryError::StatusOutOfRange { status });
                }
            }
            _ => {
                return Err(RetryError::UnknownCondition {
                    word: word.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Whether `outcome` is retryable under these conditions.
    /// [`Outcome::Success`] never is.
    pub fn matches(&self, outcome: &Outcome) -> bool {
        match *outcome {
            Outcome::Success => false,
            Outcome::ConnectFailure => self.connect_failure,
            Outcome::Reset => self.reset,
            Outcome::Timeout => self.timeout,
            Outcome::Response {
                status,
                grpc_status,
                ..
            } => {
                self.statuses.contains(status) || grpc_status.is_some_and(|g| self.grpc.contains(g))
            }
        }
    }
}

/// Exponential backoff with full jitter: the delay before retry `n`
/// (counting from 0) is uniform in `[0, min(max, base * 2^n)]`.
///
/// Full jitter rather than "base plus a little noise" because it spreads a
/// synchronized burst of failures over the whole interval, which is what
/// actually relieves a struggling upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay. Default 25 ms.
    pub base: Duration,
    /// Largest ceiling, however many retries were made. Default 250 ms;
    /// values above [`MAX_DELAY`] count as [`MAX_DELAY`].
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay before retry `retries_done` (0 for the
    /// first retry): `min(max, base * 2^retries_done, MAX_DELAY)`.
    pub fn ceiling(&self, retries_done: u32) -> Duration {
        let cap = duration_nanos(self.max.min(MAX_DELAY));
        // 2^63 nanoseconds is centuries, so clamping the exponent loses
        // nothing and keeps the shift defined.
        let grown = duration_nanos(self.base).saturating_mul(1u64 << retries_done.min(63));
        Duration::from_nanos(grown.min(cap))
    }

    /// A jittered delay before retry `retries_done`: uniform in
    /// `[0, ceiling(retries_done)]`, nanosecond resolution.
    pub fn delay(&self, retries_done: u32, rng: &mut impl Random) -> Duration {
        let ceiling = duration_nanos(self.ceiling(retries_done));
        Duration::from_nanos(rng.below(ceiling.saturating_add(1)))
    }
}

/// Why a request is not retried. Each reason has a stable
/// [`as_str`](GiveUp::as_str) for access logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUp {
    /// The try succeeded; nothing to retry.
    Succeeded,
    /// The outcome does not match the route's retry conditions.
    NotRetryable,
    /// `max_retries` retries were already made.
    AttemptsExhausted,
    /// The method is not idempotent and the request may have reached the
    /// upstream, so resending could repeat its effect.
    NonIdempotent,
    /// Waiting for the backoff would reach the request's deadline.
    DeadlineExceeded,
    /// The retry budget for this service or route is spent.
    BudgetExhausted,
    /// The upstream asked us to come back later than `max_retry_after`.
    RetryAfterTooLong,
}

impl GiveUp {
    /// A stable `snake_case` label; never changes once released.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::NotRetryable => "not_retryable",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::NonIdempotent => "non_idempotent",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::BudgetExhausted => "budget_exhausted",
            Self::RetryAfterTooLong => "retry_after_too_long",
        }
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Retry after waiting `after` (at most [`MAX_DELAY`]). A retry has
    /// already been withdrawn from the budget.
    Retry {
        /// How long to wait before the next try.
        after: Duration,
    },
    /// Return the last outcome to the client.
    GiveUp(GiveUp),
}

/// Is `method` idempotent per RFC 9110 §9.2.2 (GET, HEAD, OPTIONS, PUT,
/// DELETE, TRACE)? Resending an idempotent request is safe even if the
/// first copy was processed.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (so at most `max_retries + 1` tries).
    /// Default 2.
    pub max_retries: u32,
    /// Which outcomes are retried. Default [`RetryOn::standard`]:
    /// `connect-failure`, `reset`, `gateway-error`.
    pub on: RetryOn,
    /// Timeout of each try; `None` means bounded only by the overall
    /// deadline. Default `None`.
    pub per_try_timeout: Option<Duration>,
    /// Delay between tries. Default 25 ms base, 250 ms max.
    pub backoff: Backoff,
    /// Retry non-idempotent requests (POST, PATCH, ...) on any matching
    /// outcome, accepting that they may be applied twice. Default `false`.
    pub retry_non_idempotent: bool,
    /// Wait at least the upstream's Retry-After before retrying. Default
    /// `true`.
    pub honor_retry_after: bool,
    /// Give up rather than retry when Retry-After asks for longer than this.
    /// Default 10 s; values above [`MAX_DELAY`] count as [`MAX_DELAY`].
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            on: RetryOn::standard(),
            per_try_timeout: None,
            backoff: Backoff::default(),
            retry_non_idempotent: false,
            honor_retry_after: true,
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Decides whether to retry after a try ended with `outcome`.
    ///
    /// `retries_done` is the number of retries already made (0 after the
    /// first try). `idempotent` is true when the method is idempotent (see
    /// [`is_idempotent`]). A client's `Idempotency-Key` header does not
    /// count: only the operator knows whether the upstream honours it
    /// (`retry_non_idempotent`).
    ///
    /// Gates, in order, each with its own [`GiveUp`] reason:
    /// 1. success or an outcome not in [`RetryPolicy::on`];
    /// 2. `retries_done >= max_retries`;
    /// 3. idempotency: a non-idempotent request is retried only on
    ///    [`Outcome::ConnectFailure`], because then no byte of it reached the
    ///    upstream and resending cannot apply it twice (a reset or 5xx may
    ///    come after the upstream acted), unless `retry_non_idempotent`;
    /// 4. the delay: jittered backoff, raised to Retry-After when honored
    ///    and larger; a Retry-After above `max_retry_after` gives up;
    /// 5. the deadline: give up if `now + delay` reaches it (no time would
    ///    be left for the try);
    /// 6. the budget: withdraw one retry, or give up if it is spent. This is
    ///    last so that only retries actually made are charged.
    #[allow(
        clippy::too_many_arguments,
        reason = "sans-I/O: time, randomness and shared state are explicit inputs; \
                  a wrapper struct would be built and torn down on every try"
    )]
    pub fn decide(
        &self,
        retries_done: u32,
        outcome: &Outcome,
        idempotent: bool,
        deadline: &Deadline,
        budget: &RetryBudget,
        now: Instant,
        rng: &mut impl Random,
    ) -> RetryDecision {
        match self.retry_delay(retries_done, outcome, idempotent, deadline, now, rng) {
            Err(g) => RetryDecision::GiveUp(g),
            Ok(_) if !budget.try_withdraw(now) => RetryDecision::GiveUp(GiveUp::BudgetExhausted),
            Ok(after) => RetryDecision::Retry { after },
        }
    }

    /// Gates 1-5 of [`decide`](Self::decide), without touching the budget:
    /// the delay before the retry, or why there is none. For a caller with
    /// a gate of its own between these and the budget (a limit on retries
    /// in flight), so that a retry its gate refuses is not charged; it then
    /// calls [`RetryBudget::try_withdraw`] itself.
    pub fn retry_delay(
        &self,
        retries_done: u32,
        outcome: &Outcome,
        idempotent: bool,
        deadline: &Deadline,
        now: Instant,
        rng: &mut impl Random,
    ) -> Result<Duration, GiveUp> {
        if *outcome == Outcome::Success {
            return Err(GiveUp::Succeeded);
        }
        if !self.on.matches(outcome) {
            return Err(GiveUp::NotRetryable);
        }
        if retries_done >= self.max_retries {
            return Err(GiveUp::AttemptsExhausted);
        }
        if !idempotent && !self.retry_non_idempotent && *outcome != Outcome::ConnectFailure {
            return Err(GiveUp::NonIdempotent);
        }

        let mut after = self.backoff.delay(retries_done, rng);
        let asked = match *outcome {
            Outcome::Response { retry_after, .. } if self.honor_retry_after => retry_after,
            _ => None,
        };
        if let Some(asked) = asked {
            if asked > self.max_retry_after.min(MAX_DELAY) {
                return Err(GiveUp::RetryAfterTooLong);
            }
            after = after.max(asked);
        }

        if deadline.remaining(now).is_some_and(|left| after >= left) {
            return Err(GiveUp::DeadlineExceeded);
        }
        Ok(after)
    }
}

/// Errors building a [`RetryOn`] from config words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    /// A word that is neither a known condition nor a status code.
    #[error(
        "unknown retry condition {word:?}; expected one of connect-failure, reset, timeout, \
         5xx, gateway-error, retriable-4xx, a status code from 100 to 599, grpc-cancelled, \
         grpc-deadline-exceeded, grpc-resource-exhausted, grpc-internal, grpc-unavailable"
    )]
    UnknownCondition {
        /// The word as written (trimmed).
        word: String,
    },
    /// A three-digit status outside 100-599.
    #[error("retry status {status} is out of range; expected a status code from 100 to 599")]
    StatusOutOfRange {
        /// The status as written.
        status: u16,
    },
}

/// Retry budget limits: retries may add at most `ratio` of the original
/// requests seen in the last `ttl`, plus `min_per_second * ttl` as a floor so
/// low-traffic services can still retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per original request, e.g. 0.2 = 20%. Default 0.2.
    /// Negative or NaN counts as 0; resolution is one millionth.
    pub ratio: f64,
    /// Retries per second allowed regardless of traffic. Default 10.
    pub min_per_second: u32,
    /// How far back requests and retries are counted. Default 10 s; the
    /// window advances in tenths of `ttl` (at least 1 ms each).
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Buckets in the sliding window. Ten gives the window a 10% granularity:
/// counts expire within one tenth of `ttl` of their due time.
const BUCKETS: usize = 10;

/// Shortest bucket. Bounds how soon the 32-bit epoch tags can alias (see
/// `window_sum`): 5 * 2^32 buckets, about 248 days of complete idleness.
const MIN_BUCKET: Duration = Duration::from_millis(1);

/// A retry budget shared by all workers for one service or route.
///
/// Requests and retries are counted in a ring of ten time buckets
/// spanning `ttl`. Each bucket is one `AtomicU64` holding the bucket's epoch
/// (low 32 bits of `elapsed / bucket_width`) and its count, updated with a
/// CAS loop; a bucket whose epoch is stale is reset by whoever touches it
/// first. Packing the epoch with the count is what makes the reset atomic
/// without a lock: a separate epoch word could be bumped while another
/// thread increments the old count.
///
/// The budget is approximate by design: two workers that both see one
/// retry left may both withdraw it, so it can be overdrawn by at most one
/// retry per concurrent caller. Exactness would need a lock on every
/// request, which costs more than the overdraft.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    origin: Instant,
    bucket_nanos: u64,
    /// `ratio` in parts per million, so the allowance is integer arithmetic
    /// and 0.29 * 100 is 29, not 28.999.
    ratio_ppm: u64,
    /// `min_per_second * ttl`, the allowance with no traffic.
    floor: u64,
    /// The newest epoch any caller has seen. A worker holding a slightly
    /// stale `now` uses this instead, so it neither resets a newer bucket
    /// (losing its counts) nor reads an outdated window.
    latest_epoch: AtomicU64,
    requests: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

impl RetryBudget {
    /// The settings this budget was built with (a data path keeps the
    /// budget across config reloads only while these stay the same).
    pub fn config(&self) -> &RetryBudgetConfig {
        &self.config
    }

    /// An empty budget (only the floor is available) whose clock starts at
    /// `now`.
    pub fn new(cfg: RetryBudgetConfig, now: Instant) -> Self {
        let bucket = (cfg.ttl / BUCKETS as u32).max(MIN_BUCKET);
        // `as` saturates: NaN and negatives become 0, huge values u64::MAX.
        let ratio_ppm = (cfg.ratio * 1_000_000.0).round() as u64;
        let floor = u128::from(cfg.min_per_second) * cfg.ttl.as_millis() / 1000;
        Self {
            config: cfg,
            origin: now,
            bucket_nanos: duration_nanos(bucket),
            ratio_ppm,
            floor: u64::try_from(floor).unwrap_or(u64::MAX),
            latest_epoch: AtomicU64::new(0),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Counts one original request (not a retry) at `now`.
    pub fn deposit(&self, now: Instant) {
        let epoch = self.epoch(now);
        bump(&self.requests[slot_index(epoch)], epoch);
    }

    /// Takes one retry at `now`. Returns `false`, and counts nothing, when
    /// the budget is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        if self.available_at(epoch) == 0 {
            return false;
        }
        bump(&self.retries[slot_index(epoch)], epoch);
        true
    }

    /// Retries that may still be made at `now`; for metrics and the admin
    /// API.
    pub fn available(&self, now: Instant) -> u64 {
        self.available_at(self.epoch(now))
    }

    fn available_at(&self, epoch: u64) -> u64 {
        let requests = window_sum(&self.requests, epoch);
        let retries = window_sum(&self.retries, epoch);
        let earned = u128::from(requests) * u128::from(self.ratio_ppm) / 1_000_000;
        let allowance = u64::try_from(earned)
            .unwrap_or(u64::MAX)
            .saturating_add(self.floor);
        allowance.saturating_sub(retries)
    }

    fn epoch(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        // bucket_nanos >= 1 ms, so the division is defined.
        let mine = u64::try_from(elapsed / u128::from(self.bucket_nanos)).unwrap_or(u64::MAX);
        let seen = self.latest_epoch.load(Ordering::Relaxed);
        if mine > seen {
            self.latest_epoch.fetch_max(mine, Ordering::Relaxed);
            mine
        } else {
            seen
        }
    }
}

fn slot_index(epoch: u64) -> usize {
    (epoch % BUCKETS as u64) as usize
}

fn pack(tag: u32, count: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// Adds one to the bucket for `epoch`, resetting it if it holds another
/// epoch. A bucket already holding a *newer* epoch, at most two rings ahead
/// (this caller was preempted for a whole `ttl` after reading the epoch),
/// is counted into as-is rather than reset, so a late caller never erases
/// fresher counts. The bound matters: a bucket idle for 2^31 epochs must
/// not look "newer" and swallow counts forever.
fn bump(slot: &AtomicU64, epoch: u64) {
    let tag = epoch as u32;
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        let (held, count) = unpack(current);
        let ahead = held.wrapping_sub(tag);
        let newer = ahead != 0 && ahead <= 2 * BUCKETS as u32;
        let next = if held == tag || newer {
            pack(held, count.saturating_add(1))
        } else {
            pack(tag, 1)
        };
        match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// Sum of the buckets whose epoch lies in the window ending at `epoch`.
///
/// Each slot `i` can only hold epochs `≡ i (mod BUCKETS)`, so it is counted
/// only if it holds exactly the one such epoch inside the window. Matching
/// the full expected tag, not just "close to `epoch`", is what keeps a slot
/// left untouched for 2^32 epochs from passing as current: that needs
/// 5 * 2^32 epochs, since 2^32 is not a multiple of ten.
fn window_sum(slots: &[AtomicU64; BUCKETS], epoch: u64) -> u64 {
    let newest_slot = slot_index(epoch);
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let age = (newest_slot + BUCKETS - i) % BUCKETS;
            // Slots "older" than the budget itself hold nothing yet.
            let expected = epoch.checked_sub(age as u64)?;
            let (held, count) = unpack(s.load(Ordering::Relaxed));
            (held == expected as u32).then_some(u64::from(count))
        })
        .sum()
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Parses a Retry-After header value (RFC 9110 §10.2.3): delta-seconds
/// (`"120"`) or an IMF-fixdate (`"Sun, 06 Nov 1994 08:49:37 GMT"`), the
/// latter relative to the wall clock `now_wall`.
///
/// Dates in the past give `Some(Duration::ZERO)`; anything else malformed
/// gives `None` (so the caller falls back to its own backoff). Values are
/// capped at 2^31 seconds. The obsolete RFC 850 and asctime date forms are
/// not accepted: senders have been required to use IMF-fixdate since
/// RFC 7231, and a refused value only means we use our own backoff.
pub fn parse_retry_after(value: &str, now_wall: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate instead of failing: a huge delay is still a clear "not
        // soon", which max_retry_after turns into a give-up.
        let secs = value.bytes().fold(0u64, |acc, b| {
            acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        });
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP));
    }
    let target = parse_imf_fixdate(value.as_bytes())?;
    let now = match now_wall.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    let wait = i128::from(target) * 1_000_000_000 - now;
    if wait <= 0 {
        return Some(Duration::ZERO);
    }
    let nanos = u64::try_from(wait).unwrap_or(u64::MAX);
    Some(Duration::from_nanos(nanos).min(RETRY_AFTER_CAP))
}

/// Seconds since the Unix epoch of an IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`. Strict: fixed widths, case-sensitive
/// names, a real calendar date, and a day name that matches it.
fn parse_imf_fixdate(s: &[u8]) -> Option<i64> {
    const DAYS: [&[u8]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    if s.len() != 29 || &s[3..5] != b", " || &s[25..] != b" GMT" {
        return None;
    }
    if s[7] != b' ' || s[11] != b' ' || s[16] != b' ' || s[19] != b':' || s[22] != b':' {
        return None;
    }
    let day = digits(&s[5..7])?;
    let month = MONTHS.iter().position(|m| *m == &s[8..11])? as u32 + 1;
    let year = digits(&s[12..16])?;
    let hour = digits(&s[17..19])?;
    let minute = digits(&s[20..22])?;
    // RFC 9110 allows second 60 for a leap second; it simply rolls over.
    let second = digits(&s[23..25])?;
    if day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_epoch(i64::from(year), month, day);
    // 1970-01-01 was a Thursday, hence DAYS starting at "Thu".
    if DAYS[days.rem_euclid(7) as usize] != &s[..3] {
        return None;
    }
    Some(days * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

fn digits(s: &[u8]) -> Option<u32> {
    s.iter().try_fold(0u32, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date. Counts from March so
/// the leap day falls at the end of the counting year; 400-year eras repeat
/// exactly (146,097 days), which keeps this constant-time.
fn days_from_epoch(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    // Month lengths from March repeat 31,30,31,30,31 days; (153m+2)/5 sums
    // them.
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days separate 0000-03-01 from 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::random::SplitMix64;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn resp(status: u16) -> Outcome {
        Outcome::Response {
            status,
            grpc_status: None,
            retry_after: None,
        }
    }

    fn grpc(code: u32) -> Outcome {
        Outcome::Response {
            status: 200,
            grpc_status: Some(code),
            retry_after: None,
        }
    }

    fn roomy_budget(now: Instant) -> RetryBudget {
        RetryBudget::new(
            RetryBudgetConfig {
                ratio: 0.0,
                min_per_second: 1_000_000,
                ttl: Duration::from_secs(10),
            },
            now,
        )
    }

    fn on(word: &str) -> RetryOn {
        RetryOn::from_conditions([word]).unwrap()
    }

    #[test]
    fn retry_condition_words() {
        assert!(on("connect-failure").matches(&Outcome::ConnectFailure));
        assert!(!on("connect-failure").matches(&Outcome::Reset));
        assert!(on("reset").matches(&Outcome::Reset));
        assert!(!on("reset").matches(&Outcome::Timeout));
        assert!(on("timeout").matches(&Outcome::Timeout));
        assert!(!on("timeout").matches(&resp(504)));

        let five = on("5xx");
        assert!(five.matches(&resp(500)) && five.matches(&resp(599)));
        assert!(!five.matches(&resp(499)) && !five.matches(&Outcome::Reset));

        let gw = on("gateway-error");
        assert!(gw.matches(&resp(502)) && gw.matches(&resp(503)) && gw.matches(&resp(504)));
        assert!(!gw.matches(&resp(500)) && !gw.matches(&Outcome::ConnectFailure));

        assert!(on("retriable-4xx").matches(&resp(409)));
        assert!(!on("retriable-4xx").matches(&resp(404)));

        assert!(on("429").matches(&resp(429)) && !on("429").matches(&resp(430)));
        assert!(on("100").matches(&resp(100)) && on("599").matches(&resp(599)));

        for (word, code) in [
            ("grpc-cancelled", 1),
            ("grpc-deadline-exceeded", 4),
            ("grpc-resource-exhausted", 8),
            ("grpc-internal", 13),
            ("grpc-unavailable", 14),
        ] {
            let o = on(word);
            assert!(o.matches(&grpc(code)), "{word}");
            assert!(!o.matches(&grpc(code + 1)), "{word}");
            assert!(!o.matches(&resp(503)), "{word}");
        }
        assert!(!RetryOn::standard().matches(&Outcome::Success));
        assert!(!on("5xx").matches(&Outcome::Success));
    }

    #[test]
    fn retry_condition_errors() {
        let err = RetryOn::from_conditions(["reset", "bogus"]).unwrap_err();
        assert_eq!(
            err,
            RetryError::UnknownCondition {
                word: "bogus".into()
            }
        );
        let msg = err.to_string();
        for w in CONDITIONS {
            assert!(msg.contains(w), "{msg} lacks {w}");
        }
        assert_eq!(
            RetryOn::from_conditions(["600"]).unwrap_err(),
            RetryError::StatusOutOfRange { status: 600 }
        );
        assert_eq!(
            RetryOn::from_conditions(["099"]).unwrap_err(),
            RetryError::StatusOutOfRange { status: 99 }
        );
        for bad in ["5000", "50", "", "5XX", "+50", "Reset"] {
            assert!(RetryOn::from_conditions([bad]).is_err(), "{bad:?}");
        }
        for w in CONDITIONS {
            assert!(RetryOn::from_conditions([*w]).is_ok(), "{w}");
        }
    }

    #[test]
    fn retry_idempotent_methods() {
        use http::Method;
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }

    #[test]
    fn retry_post_only_on_connect_failure() {
        let t0 = Instant::now();
        let p = RetryPolicy::default();
        let b = roomy_budget(t0);
        let d = Deadline::none();
        let mut rng = SplitMix64::new(1);
        let idem = is_idempotent(&http::Method::POST);
        assert_eq!(
            p.decide(0, &resp(503), idem, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::NonIdempotent)
        );
        assert_eq!(
            p.decide(0, &Outcome::Reset, idem, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::NonIdempotent)
        );
        assert!(matches!(
            p.decide(0, &Outcome::ConnectFailure, idem, &d, &b, t0, &mut rng),
            RetryDecision::Retry { .. }
        ));
        assert!(matches!(
            p.decide(0, &resp(503), true, &d, &b, t0, &mut rng),
            RetryDecision::Retry { .. }
        ));
    }

    #[test]
    fn retry_non_idempotent_override() {
        let t0 = Instant::now();
        let p = RetryPolicy {
            retry_non_idempotent: true,
            ..RetryPolicy::default()
        };
        let b = roomy_budget(t0);
        let mut rng = SplitMix64::new(1);
        assert!(matches!(
            p.decide(0, &resp(503), false, &Deadline::none(), &b, t0, &mut rng),
            RetryDecision::Retry { .. }
        ));
    }

    #[test]
    fn retry_gives_up_for_success_and_unmatched() {
        let t0 = Instant::now();
        let p = RetryPolicy::default();
        let b = roomy_budget(t0);
        let d = Deadline::none();
        let mut rng = SplitMix64::new(1);
        assert_eq!(
            p.decide(0, &Outcome::Success, true, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::Succeeded)
        );
        assert_eq!(
            p.decide(0, &resp(500), true, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::NotRetryable)
        );
        assert_eq!(
            p.decide(0, &Outcome::Timeout, true, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::NotRetryable)
        );
    }

    #[test]
    fn retry_attempts_exhausted() {
        let t0 = Instant::now();
        let p = RetryPolicy::default();
        let b = roomy_budget(t0);
        let d = Deadline::none();
        let mut rng = SplitMix64::new(1);
        for n in 0..2 {
            assert!(matches!(
                p.decide(n, &Outcome::Reset, true, &d, &b, t0, &mut rng),
                RetryDecision::Retry { .. }
            ));
        }
        assert_eq!(
            p.decide(2, &Outcome::Reset, true, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::AttemptsExhausted)
        );
        assert_eq!(
            p.decide(u32::MAX, &Outcome::Reset, true, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::AttemptsExhausted)
        );
    }

    #[test]
    fn retry_backoff_grows_and_is_bounded() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), 25 * MS);
        assert_eq!(b.ceiling(1), 50 * MS);
        assert_eq!(b.ceiling(2), 100 * MS);
        assert_eq!(b.ceiling(3), 200 * MS);
        assert_eq!(b.ceiling(4), 250 * MS);
        assert_eq!(b.ceiling(u32::MAX), 250 * MS);

        let mut rng = SplitMix64::new(42);
        for n in 0..8 {
            let ceiling = b.ceiling(n);
            let delays: Vec<_> = (0..2000).map(|_| b.delay(n, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            // Full jitter: the draws cover the whole range, not just the top.
            assert!(delays.iter().any(|d| *d < ceiling / 10), "n={n}");
            assert!(delays.iter().any(|d| *d > ceiling * 9 / 10), "n={n}");
        }
    }

    #[test]
    fn retry_backoff_replays_with_seed() {
        let b = Backoff::default();
        let run = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..10).map(|n| b.delay(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn retry_backoff_huge_values_are_capped() {
        let b = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(b.ceiling(7), MAX_DELAY);
        let zero = Backoff {
            base: Duration::ZERO,
            max: Duration::MAX,
        };
        let mut rng = SplitMix64::new(3);
        assert_eq!(zero.delay(5, &mut rng), Duration::ZERO);
    }

    #[test]
    fn retry_after_honored_and_capped() {
        let t0 = Instant::now();
        let b = roomy_budget(t0);
        let d = Deadline::none();
        let mut rng = SplitMix64::new(5);
        let asked = |secs| Outcome::Response {
            status: 503,
            grpc_status: None,
            retry_after: Some(Duration::from_secs(secs)),
        };
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(0, &asked(3), true, &d, &b, t0, &mut rng),
            RetryDecision::Retry {
                after: Duration::from_secs(3)
            }
        );
        assert_eq!(
            p.decide(0, &asked(11), true, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::RetryAfterTooLong)
        );
        // A zero Retry-After never shortens our own backoff below its draw.
        let mut again = SplitMix64::new(5);
        let jitter = p.backoff.delay(0, &mut again);
        let mut rng = SplitMix64::new(5);
        assert_eq!(
            p.decide(0, &asked(0), true, &d, &b, t0, &mut rng),
            RetryDecision::Retry { after: jitter }
        );

        let ignore = RetryPolicy {
            honor_retry_after: false,
            ..RetryPolicy::default()
        };
        match ignore.decide(0, &asked(60), true, &d, &b, t0, &mut rng) {
            RetryDecision::Retry { after } => assert!(after <= 25 * MS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_deadline_bounds_retries() {
        let t0 = Instant::now();
        let b = roomy_budget(t0);
        let p = RetryPolicy {
            backoff: Backoff {
                base: 100 * MS,
                max: 100 * MS,
            },
            ..RetryPolicy::default()
        };
        let d = Deadline::new(t0, Some(Duration::from_secs(1)));
        let mut rng = SplitMix64::new(8);
        // Plenty of time: always retried.
        for _ in 0..100 {
            assert!(matches!(
                p.decide(0, &Outcome::Reset, true, &d, &b, t0, &mut rng),
                RetryDecision::Retry { .. }
            ));
        }
        // Past the deadline: never.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(
            p.decide(0, &Outcome::Reset, true, &d, &b, late, &mut rng),
            RetryDecision::GiveUp(GiveUp::DeadlineExceeded)
        );
        // A Retry-After that lands beyond the deadline: give up now rather
        // than wait and fail anyway.
        let asked = Outcome::Response {
            status: 503,
            grpc_status: None,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            p.decide(0, &asked, true, &d, &b, t0, &mut rng),
            RetryDecision::GiveUp(GiveUp::DeadlineExceeded)
        );
        // Any delay that is granted leaves time for the try.
        let near = t0 + 950 * MS;
        for _ in 0..100 {
            if let RetryDecision::Retry { after } =
                p.decide(0, &Outcome::Reset, true, &d, &b, near, &mut rng)
            {
                assert!(after < 50 * MS);
            }
        }
    }

    #[test]
    fn retry_budget_ratio_plus_floor() {
        let t0 = Instant::now();
        let b = RetryBudget::new(RetryBudgetConfig::default(), t0);
        assert_eq!(b.available(t0), 100, "floor is 10/s * 10 s");
        let now = t0 + Duration::from_secs(1);
        for _ in 0..100 {
            b.deposit(now);
        }
        assert_eq!(b.available(now), 120);
        let granted = (0..200).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 120);
        assert_eq!(b.available(now), 0);
        assert!(!b.try_withdraw(now));
    }

    /// A retry budget whose deposits count for 10 s.
    fn budget_10s(ratio: f64, min_per_second: u32, t0: Instant) -> RetryBudget {
        let ttl = Duration::from_secs(10);
        RetryBudget::new(
            RetryBudgetConfig {
                ratio,
                min_per_second,
                ttl,
            },
            t0,
        )
    }

    #[test]
    fn retry_budget_refills_after_ttl() {
        let t0 = Instant::now();
        let b = budget_10s(0.5, 0, t0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!((0..10).filter(|_| b.try_withdraw(t0)).count(), 5);
        // Deposits and withdrawals from t0 expire together...
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.available(later), 0);
        for _ in 0..10 {
            b.deposit(later);
        }
        // ...so the old withdrawals no longer count against new traffic.
        assert_eq!(b.available(later), 5);
        // Within the window, old withdrawals still count.
        let c = budget_10s(0.5, 0, t0);
        for _ in 0..10 {
            c.deposit(t0);
        }
        assert_eq!((0..10).filter(|_| c.try_withdraw(t0)).count(), 5);
        let mid = t0 + Duration::from_secs(5);
        for _ in 0..10 {
            c.deposit(mid);
        }
        assert_eq!(c.available(mid), 5);
    }

    #[test]
    fn retry_budget_stale_now_does_not_erase_counts() {
        let t0 = Instant::now();
        let b = budget_10s(1.0, 0, t0);
        let late = t0 + Duration::from_secs(20);
        for _ in 0..4 {
            b.deposit(late);
        }
        // A worker that took its `now` long ago counts into the current
        // window instead of resetting a bucket.
        b.deposit(t0 + Duration::from_secs(10));
        assert_eq!(b.available(late), 5);
    }

    #[test]
    fn retry_budget_survives_long_idle_with_tiny_buckets() {
        let t0 = Instant::now();
        let cfg = RetryBudgetConfig {
            ratio: 1.0,
            min_per_second: 0,
            ttl: Duration::from_millis(10),
        };
        let b = RetryBudget::new(cfg, t0);
        b.deposit(t0);
        // 1 ms buckets: past 2^31 epochs (old tags look "ahead" in wrapping
        // arithmetic) and past 2^32 (tags wrap), counts still land.
        for ms in [(1u64 << 31) + 5, (1u64 << 32) + 3, (1u64 << 33) + 7] {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..10 {
                b.deposit(now);
            }
            assert_eq!(b.available(now), 10, "at {ms} ms");
        }
    }

    #[test]
    fn retry_budget_denies_decide() {
        let t0 = Instant::now();
        let b = budget_10s(0.0, 0, t0);
        let mut rng = SplitMix64::new(2);
        assert_eq!(
            RetryPolicy::default().decide(
                0,
                &Outcome::Reset,
                true,
                &Deadline::none(),
                &b,
                t0,
                &mut rng
            ),
            RetryDecision::GiveUp(GiveUp::BudgetExhausted)
        );
    }

    #[test]
    fn retry_delay_leaves_the_budget_alone() {
        let t0 = Instant::now();
        let b = budget_10s(0.0, 1, t0);
        let before = b.available(t0);
        assert!(before > 0);
        let mut rng = SplitMix64::new(3);
        let p = RetryPolicy::default();
        for _ in 0..before + 2 {
            let after = p.retry_delay(0, &Outcome::Reset, true, &Deadline::none(), t0, &mut rng);
            assert!(after.is_ok(), "{after:?}");
        }
        assert_eq!(b.available(t0), before);
        // The same gates as decide's, with the same reasons.
        assert_eq!(
            p.retry_delay(0, &Outcome::Reset, false, &Deadline::none(), t0, &mut rng),
            Err(GiveUp::NonIdempotent)
        );
        // decide is retry_delay and then the budget.
        assert!(matches!(
            p.decide(
                0,
                &Outcome::Reset,
                true,
                &Deadline::none(),
                &b,
                t0,
                &mut rng
            ),
            RetryDecision::Retry { .. }
        ));
        assert_eq!(b.available(t0), before - 1);
    }
    #[test]
    fn retry_budget_degenerate_configs() {
        let t0 = Instant::now();
        for cfg in [
            RetryBudgetConfig {
                ratio: f64::NAN,
                min_per_second: 0,
                ttl: Duration::ZERO,
            },
            RetryBudgetConfig {
                ratio: -1.0,
                min_per_second: u32::MAX,
                ttl: Duration::MAX,
            },
            RetryBudgetConfig {
                ratio: f64::INFINITY,
                min_per_second: 1,
                ttl: Duration::from_nanos(1),
            },
        ] {
            let b = RetryBudget::new(cfg, t0);
            b.deposit(t0);
            let _ = b.try_withdraw(t0 + Duration::from_secs(1));
            let _ = b.available(t0 + Duration::from_secs(3600));
        }
    }

    #[test]
    fn retry_give_up_labels_are_stable() {
        let all = [
            (GiveUp::Succeeded, "succeeded"),
            (GiveUp::NotRetryable, "not_retryable"),
            (GiveUp::AttemptsExhausted, "attempts_exhausted"),
            (GiveUp::NonIdempotent, "non_idempotent"),
            (GiveUp::DeadlineExceeded, "deadline_exceeded"),
            (GiveUp::BudgetExhausted, "budget_exhausted"),
            (GiveUp::RetryAfterTooLong, "retry_after_too_long"),
        ];
        for (g, s) in all {
            assert_eq!(g.as_str(), s);
            assert_eq!(g.to_string(), s);
        }
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        // 1994-11-06T08:49:37Z
        let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", date),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", date), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", date),
            Some(Duration::ZERO)
        );
        let before = date - Duration::from_millis(1500);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", before),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", date),
            Some(Duration::from_secs(60))
        );
        // Past dates mean "now".
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", date),
            Some(Duration::ZERO)
        );
        // Leap day and the epoch itself.
        let epoch = UNIX_EPOCH;
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", epoch),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", epoch),
            Some(Duration::from_secs(1_709_164_800))
        );
        assert_eq!(
            parse_retry_after("Wed, 01 Mar 2000 00:00:00 GMT", epoch),
            Some(Duration::from_secs(951_868_800))
        );
        // Huge values saturate at the cap.
        assert_eq!(
            parse_retry_after("99999999999999999999999", date),
            Some(RETRY_AFTER_CAP)
        );
    }

    #[test]
    fn retry_after_rejects_garbage() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        for bad in [
            "",
            " ",
            "-1",
            "+5",
            "1.5",
            "soon",
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
            "Sun, 06 Nov 1994 08:49:37 UTC", // not GMT
            "sun, 06 Nov 1994 08:49:37 GMT", // case-sensitive
            "Sun, 06 nov 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",  // fixed width
            "Sun, 31 Nov 1994 08:49:37 GMT", // no such day
            "Thu, 29 Feb 2023 00:00:00 GMT", // not a leap year
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT", // obsolete RFC 850
            "Sun Nov  6 08:49:37 1994",       // obsolete asctime
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after(" Sun, 06 Nov 1994 08:49:37 GMT ", now),
            Some(Duration::ZERO)
        );
        // Non-ASCII input must not split a char or panic.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GM\u{e9}", now),
            None
        );
        assert_eq!(
            parse_retry_after("\u{e9}\u{e9}\u{e9}, 06 Nov 1994 08:49:37 GMT", now),
            None
        );
    }

    #[test]
    fn retry_after_leap_second_and_pre_epoch_clock() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:60 GMT", now),
            Some(Duration::from_secs(23))
        );
        let ancient = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:05 GMT", ancient),
            Some(Duration::from_secs(15))
        );
    }

    fn outcome_strategy() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Success),
            Just(Outcome::ConnectFailure),
            Just(Outcome::Reset),
            Just(Outcome::Timeout),
            (
                any::<u16>(),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(status, grpc_status, ra)| Outcome::Response {
                    status,
                    grpc_status,
                    retry_after: ra.map(Duration::from_nanos),
                }),
        ]
    }

    fn duration_strategy() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..2_000_000_000).prop_map(Duration::from_nanos),
            any::<u64>().prop_map(Duration::from_nanos),
            Just(Duration::ZERO),
            Just(Duration::MAX),
        ]
    }

    proptest! {
        #[test]
        fn retry_decide_never_panics_and_bounds_delay(
            retries_done in any::<u32>(),
            outcome in outcome_strategy(),
            idempotent in any::<bool>(),
            max_retries in 0u32..10,
            base in duration_strategy(),
            max in duration_strategy(),
            max_retry_after in duration_strategy(),
            honor in any::<bool>(),
            timeout in proptest::option::of(duration_strategy()),
            elapsed in duration_strategy(),
            seed in any::<u64>(),
            ratio in any::<f64>(),
            min_per_second in any::<u32>(),
            ttl in duration_strategy(),
            deposits in 0usize..50,
        ) {
            let t0 = Instant::now();
            let now = t0.checked_add(elapsed).unwrap_or(t0);
            let policy = RetryPolicy {
                max_retries,
                on: RetryOn::from_conditions(
                    ["connect-failure", "reset", "timeout", "5xx", "grpc-unavailable"],
                )
                .unwrap(),
                per_try_timeout: None,
                backoff: Backoff { base, max },
                retry_non_idempotent: false,
                honor_retry_after: honor,
                max_retry_after,
            };
            let budget = RetryBudget::new(RetryBudgetConfig { ratio, min_per_second, ttl }, t0);
            for _ in 0..deposits {
                budget.deposit(now);
            }
            let deadline = Deadline::new(t0, timeout);
            let mut rng = SplitMix64::new(seed);
            let decision =
                policy.decide(retries_done, &outcome, idempotent, &deadline, &budget, now, &mut rng);
            if let RetryDecision::Retry { after } = decision {
                let asked = match outcome {
                    Outcome::Response { retry_after: Some(ra), .. } if honor => ra,
                    _ => Duration::ZERO,
                };
                let backoff_cap = max.min(MAX_DELAY);
                let asked_cap = max_retry_after.min(MAX_DELAY);
                prop_assert!(asked <= asked_cap);
                prop_assert!(after <= backoff_cap.max(asked));
                prop_assert!(retries_done < max_retries);
                if let Some(left) = deadline.remaining(now) {
                    prop_assert!(after < left);
                }
            }
        }

        #[test]
        fn retry_backoff_never_exceeds_max(
            base in duration_strategy(),
            max in duration_strategy(),
            n in any::<u32>(),
            seed in any::<u64>(),
        ) {
            let b = Backoff { base, max };
            let mut rng = SplitMix64::new(seed);
            let d = b.delay(n, &mut rng);
            prop_assert!(d <= b.ceiling(n));
            prop_assert!(d <= max.min(MAX_DELAY));
        }

        #[test]
        fn retry_after_parse_never_panics(s in ".{0,40}", secs in any::<u64>()) {
            let now = UNIX_EPOCH.checked_add(Duration::from_secs(secs % (1 << 40))).unwrap_or(UNIX_EPOCH);
            if let Some(d) = parse_retry_after(&s, now) {
                prop_assert!(d <= RETRY_AFTER_CAP);
            }
        }
    }
}
