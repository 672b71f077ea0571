//! Resilience on the data path: per-try bookkeeping (endpoint load, outlier
//! detection), retry decisions, deadlines and service limits. The policy
//! crate decides; this module feeds it what pingora reports and keeps the
//! per-request state those decisions need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshgate_config::ServiceSpec;
use meshgate_policy::breaker::{LimitKind, LimitPermit, Transition};
use meshgate_policy::deadline::Deadline;
use meshgate_policy::retry::{GiveUp, Outcome, RetryPolicy, parse_retry_after};
use pingora::http::ResponseHeader;

use crate::runtime::{Endpoint, ServiceState, with_rng};

/// One try in flight.
#[derive(Debug)]
pub(crate) struct Try {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) probe: bool,
    pub(crate) started: Instant,
}

/// The resilience half of a request's state.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    pub(crate) state: Option<Arc<ServiceState>>,
    pub(crate) deadline: Deadline,
    /// The endpoint picked for the next try (picked early so that "no
    /// healthy endpoint" is answered before anything is proxied).
    pub(crate) next: Option<(Arc<Endpoint>, bool)>,
    pub(crate) current: Option<Try>,
    pub(crate) last_failed: Option<SocketAddr>,
    pub(crate) retries_done: u32,
    /// Set when a retry was decided: wait this long before the next try.
    pub(crate) backoff: Option<Duration>,
    /// Set by `upstream_response_filter` when it turned a retryable
    /// response into an error, so `error_while_proxy` keeps the decision.
    pub(crate) response_retry: bool,
    /// A free retry after a pooled connection turned out to be stale.
    pub(crate) stale_retry_used: bool,
    pub(crate) give_up: Option<&'static str>,
    pub(crate) request_permit: Option<LimitPermit>,
    pub(crate) connection_permit: Option<LimitPermit>,
    pub(crate) retry_permit: Option<LimitPermit>,
    /// This try's turn at getting an HTTP/2 connection, held until it has
    /// one or failed.
    pub(crate) connect_turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Refusal from the service's limits.
#[derive(Debug)]
pub(crate) struct LimitExceeded(pub(crate) LimitKind);

impl Flight {
    /// Takes the per-request permits of the service's circuit-breaker
    /// limits. HTTP/1.1 upstreams carry one request per connection, so the
    /// connection limit is also counted per request there.
    pub(crate) fn admit(&mut self, svc: &ServiceSpec, http1: bool) -> Result<(), LimitExceeded> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        self.request_permit = Some(
            state
                .limits
                .try_acquire(LimitKind::Requests, &svc.limits)
                .ok_or(LimitExceeded(LimitKind::Requests))?,
        );
        if http1 {
            self.connection_permit = Some(
                state
                    .limits
                    .try_acquire(LimitKind::Connections, &svc.limits)
                    .ok_or(LimitExceeded(LimitKind::Connections))?,
            );
        }
        Ok(())
    }

    /// Starts a try on the endpoint picked for it.
    pub(crate) fn begin(&mut self, now: Instant) -> Option<SocketAddr> {
        let (endpoint, probe) = self.next.take()?;
        endpoint.load.begin();
        let addr = endpoint.spec.address;
        self.current = Some(Try {
            endpoint,
            probe,
            started: now,
        });
        Some(addr)
    }

    /// For an HTTP/2 endpoint: waits for the current try's turn at getting
    /// a connection ([`ConnectTurns`](crate::upstream::ConnectTurns)),
    /// held until `end_connect_turn`.
    pub(crate) async fn wait_connect_turn(&mut self, limit: Duration) {
        let Some(t) = &self.current else {
            return;
        };
        self.connect_turn = t.endpoint.h2_connect.wait(limit).await;
    }

    /// The try has its connection, or failed to get one: the next may go.
    pub(crate) fn end_connect_turn(&mut self) {
        self.connect_turn = None;
    }

    /// Ends the current try without an outcome (the endpoint's answer was
    /// never seen: the client went away, or a pooled connection turned out
    /// stale), so neither its latency nor its health learns anything.
    /// Returns the try, for a caller that tries the same endpoint again.
    pub(crate) fn abandon(&mut self, svc: &ServiceSpec, now: Instant) -> Option<Try> {
        let t = self.current.take()?;
        t.endpoint.load.end(None, now, &svc.ewma);
        Some(t)
    }

    /// Ends the current try: records its latency and its outcome for
    /// outlier detection. Idempotent (a try is recorded once).
    pub(crate) fn finish(&mut self, svc: &ServiceSpec, failure: bool, now: Instant) {
        let Some(t) = self.current.take() else {
            return;
        };
        let rtt = (!failure).then(|| now.saturating_duration_since(t.started));
        t.endpoint.load.end(rtt, now, &svc.ewma);
        if failure {
            self.last_failed = Some(t.endpoint.spec.address);
        }
        // Asked only of a failure: a success never ejects.
        let may_eject = failure
            && self
                .state
                .as_ref()
                .is_some_and(|s| s.may_eject(&t.endpoint, svc.outlier.max_ejected_percent, now));
        match t
            .endpoint
            .outlier
            .record(failure, t.probe, now, &svc.outlier, may_eject)
        {
            Some(Transition::Ejected { for_ }) => {
                if let Some(m) = crate::metrics::metrics() {
                    m.ejections.with_label_values(&[svc.name.as_str()]).inc();
                }
                tracing::warn!(
                    service = %svc.name,
                    endpoint = %t.endpoint.spec.address,
                    ejected_for = ?for_,
                    "endpoint ejected"
                )
            }
            Some(Transition::Recovered) => tracing::info!(
                service = %svc.name,
                endpoint = %t.endpoint.spec.address,
                "endpoint recovered"
            ),
            None => {}
        }
    }

    /// Asks the route's retry policy whether to try again after `outcome`.
    /// `replayable` is false when the request body can no longer be sent
    /// again. On yes, the backoff is stored for the next `upstream_peer`.
    pub(crate) fn decide(
        &mut self,
        policy: Option<&RetryPolicy>,
        svc: &ServiceSpec,
        outcome: &Outcome,
        idempotent: bool,
        replayable: bool,
        now: Instant,
    ) -> bool {
        let (Some(policy), Some(state)) = (policy, self.state.clone()) else {
            return false;
        };
        if !replayable {
            self.give_up = Some("body_not_replayable");
            return false;
        }
        let delay = with_rng(|rng| {
            policy.retry_delay(
                self.retries_done,
                outcome,
                idempotent,
                &self.deadline,
                now,
                rng,
            )
        });
        let after = match delay {
            Ok(after) => after,
            Err(g) => {
                self.give_up = Some(g.as_str());
                return false;
            }
        };
        // This request's previous retry is over: its slot does not count
        // against its next one.
        self.retry_permit = None;
        // The service's limit on retries in flight before the budget: a
        // retry the limit refuses is not charged to the budget.
        let Some(permit) = state.limits.try_acquire(LimitKind::Retries, &svc.limits) else {
            self.give_up = Some("retry_limit");
            return false;
        };
        if !state.budget.try_withdraw(now) {
            crate::metrics::retry_budget_exhausted(&svc.name);
            self.give_up = Some(GiveUp::BudgetExhausted.as_str());
            return false;
        }
        self.retry_permit = Some(permit);
        self.retries_done += 1;
        self.backoff = Some(after);
        self.give_up = None;
        true
    }
}

/// What a response means to the retry policy.
pub(crate) fn response_outcome(resp: &ResponseHeader) -> Outcome {
    let header = |name: &str| resp.headers.get(name).and_then(|v| v.to_str().ok());
    Outcome::Response {
        status: resp.status.as_u16(),
        grpc_status: header("grpc-status").and_then(|v| v.trim().parse().ok()),
        retry_after: header("retry-after").and_then(|v| parse_retry_after(v, SystemTime::now())),
    }
}

/// Whether the policy would retry this response at all (before counting
/// attempts, budget and deadline).
pub(crate) fn retryable_response(policy: Option<&RetryPolicy>, outcome: &Outcome) -> bool {
    policy.is_some_and(|p| p.on.matches(outcome))
}
