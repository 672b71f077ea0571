//! Live per-service state that outlives config snapshots: each endpoint's
//! load (in-flight requests, peak-EWMA latency) and outlier state, and each
//! service's balancer, retry budget and limit counters. Keyed by service
//! name and endpoint address, so a reload that keeps an endpoint keeps what
//! we learned about it (an ejected endpoint stays ejected).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use meshgate_config::{EndpointSpec, ServiceSpec, Snapshot};
use meshgate_policy::breaker::{Admission, Health, LimitCounters, OutlierState, ejection_allowed};
use meshgate_policy::lb::{Balancer, Candidate, EndpointLoad};
use meshgate_policy::random::{Random, SplitMix64};
use meshgate_policy::retry::RetryBudget;

/// One endpoint as the data path sees it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) spec: EndpointSpec,
    pub(crate) key: String,
    pub(crate) load: Arc<EndpointLoad>,
    pub(crate) outlier: Arc<OutlierState>,
    /// Turns at getting an HTTP/2 connection to it.
    pub(crate) h2_connect: crate::upstream::ConnectTurns,
}

/// One service's live state.
#[derive(Debug)]
pub(crate) struct ServiceState {
    pub(crate) balancer: Balancer,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// For each of the service's subsets (same order as in its spec), the
    /// indices of its member endpoints; computed once, not per request.
    subset_members: Vec<Vec<usize>>,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) limits: Arc<LimitCounters>,
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoEndpoint {
    /// The subset has no members at all.
    Empty,
    /// Every member is ejected (or being probed by another request).
    AllEjected,
}

impl ServiceState {
    /// Picks an endpoint within subset number `subset` (when given),
    /// skipping ejected endpoints and `avoid` (the endpoint a retry just
    /// failed on) when another is available. Returns the endpoint and
    /// whether this request is its half-open probe.
    pub(crate) fn pick(
        &self,
        subset: Option<usize>,
        hash_key: Option<u64>,
        avoid: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(Arc<Endpoint>, bool), NoEndpoint> {
        let members: &[usize] = match subset {
            Some(i) => self.subset_members.get(i).map_or(&[], Vec::as_slice),
            None => &[],
        };
        let all = subset.is_none();
        let mut usable: Vec<&Arc<Endpoint>> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| all || members.contains(i))
            .map(|(_, e)| e)
            .filter(|e| !matches!(e.outlier.health(now), Health::Ejected { .. }))
            .collect();
        if self.endpoints.is_empty() || (!all && members.is_empty()) {
            return Err(NoEndpoint::Empty);
        }
        if usable.len() > 1
            && let Some(a) = avoid
        {
            usable.retain(|e| e.spec.address != a);
        }
        // A half-open endpoint admits one probe; when another request holds
        // it, drop the endpoint and pick again.
        let mut candidates: Vec<Candidate<'_>> = Vec::with_capacity(usable.len());
        while !usable.is_empty() {
            candidates.clear();
            candidates.extend(usable.iter().map(|e| Candidate {
                load: &e.load,
                weight: e.spec.weight,
                key: &e.key,
            }));
            let Some(i) = with_rng(|rng| self.balancer.pick(&candidates, hash_key, now, rng))
            else {
                break;
            };
            let chosen = usable[i];
            match chosen.outlier.health(now) {
                Health::HalfOpen => match chosen.outlier.admit(now) {
                    Admission::Probe => return Ok((chosen.clone(), true)),
                    Admission::Yes => return Ok((chosen.clone(), false)),
                    Admission::No => {
                        usable.remove(i);
                    }
                },
                _ => return Ok((chosen.clone(), false)),
            }
        }
        Err(NoEndpoint::AllEjected)
    }

    /// A healthy endpoint, drawn at random, for traffic whose outcome is
    /// not reported (mirrored copies): never an ejected one, nor a
    /// half-open one whose single probe it would take.
    pub(crate) fn pick_healthy(&self, now: Instant) -> Option<Arc<Endpoint>> {
        let healthy = |e: &&Arc<Endpoint>| matches!(e.outlier.health(now), Health::Healthy);
        let n = self.endpoints.iter().filter(healthy).count();
        let i = usize::try_from(below(n as u64)).ok()?;
        self.endpoints.iter().filter(healthy).nth(i).cloned()
    }

    /// May `candidate` be ejected now? `max_percent` holds for the whole
    /// service and for every subset the candidate is in: a canary subset
    /// has no other endpoints to fall back on (a split sends its share of
    /// requests there whatever their health), so its lone endpoint is kept
    /// as the service's would be.
    pub(crate) fn may_eject(&self, candidate: &Endpoint, max_percent: u8, now: Instant) -> bool {
        let unhealthy =
            |i: usize| !matches!(self.endpoints[i].outlier.health(now), Health::Healthy);
        let allowed = |members: &mut dyn Iterator<Item = usize>| {
            let (mut total, mut ejected) = (0, 0);
            for i in members {
                total += 1;
                ejected += usize::from(unhealthy(i));
            }
            ejection_allowed(ejected, total, max_percent)
        };
        let Some(at) = self
            .endpoints
            .iter()
            .position(|e| std::ptr::eq(e.as_ref(), candidate))
        else {
            return false;
        };
        allowed(&mut (0..self.endpoints.len()))
            && self
                .subset_members
                .iter()
                .filter(|m| m.contains(&at))
                .all(|m| allowed(&mut m.iter().copied()))
    }
}

#[derive(Debug, Default)]
struct Generation {
    version: u64,
    services: HashMap<String, Arc<ServiceState>>,
}

/// Service states for the newest snapshot seen.
#[derive(Debug, Default)]
pub(crate) struct Runtimes {
    current: ArcSwap<Generation>,
    rebuild: Mutex<()>,
}

impl Runtimes {
    /// The state of `service` as configured in `snap`.
    pub(crate) fn service(&self, snap: &Snapshot, service: &ServiceSpec) -> Arc<ServiceState> {
        let gen_ = self.current.load_full();
        if gen_.version < snap.version {
            self.advance(snap);
        }
        let gen_ = self.current.load_full();
        match gen_.services.get(&service.name) {
            // A request still on an older snapshot whose service changed
            // meanwhile gets state built for its own view of the service.
            Some(s) if gen_.version == snap.version => s.clone(),
            Some(s) if same_endpoints(s, service) => s.clone(),
            _ => Arc::new(build(service, None)),
        }
    }

    fn advance(&self, snap: &Snapshot) {
        let _g = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        if old.version >= snap.version {
            return;
        }
        let services = snap
            .services
            .iter()
            .map(|s| {
                let state = build(s, old.services.get(&s.name).map(Arc::as_ref));
                (s.name.clone(), Arc::new(state))
            })
            .collect();
        self.current.store(Arc::new(Generation {
            version: snap.version,
            services,
        }));
    }
}

fn same_endpoints(state: &ServiceState, spec: &ServiceSpec) -> bool {
    state.endpoints.len() == spec.endpoints.len()
        && state
            .endpoints
            .iter()
            .zip(&spec.endpoints)
            .all(|(a, b)| a.spec == *b)
}

/// Builds a service's state, carrying over what `previous` learned about
/// endpoints that are still configured, and its budget and counters.
fn build(spec: &ServiceSpec, previous: Option<&ServiceState>) -> ServiceState {
    let now = Instant::now();
    let old: HashMap<SocketAddr, &Arc<Endpoint>> = previous
        .map(|p| p.endpoints.iter().map(|e| (e.spec.address, e)).collect())
        .unwrap_or_default();
    let subset_members = spec
        .subsets
        .iter()
        .map(|sub| {
            spec.endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| sub.selects(&e.labels))
                .map(|(i, _)| i)
                .collect()
        })
        .collect();
    ServiceState {
        balancer: Balancer::new(spec.lb, spec.ewma),
        subset_members,
        endpoints: spec
            .endpoints
            .iter()
            .map(|e| {
                let prev = old.get(&e.address);
                Arc::new(Endpoint {
                    key: e.address.to_string(),
                    load: prev.map_or_else(|| Arc::new(EndpointLoad::new(now)), |p| p.load.clone()),
                    outlier: prev
                        .map_or_else(|| Arc::new(OutlierState::new(now)), |p| p.outlier.clone()),
                    h2_connect: prev.map(|p| p.h2_connect.clone()).unwrap_or_default(),
                    spec: e.clone(),
                })
            })
            .collect(),
        // A changed budget config starts a fresh window; otherwise keep
        // the counts so a reload cannot be used to reset the budget.
        budget: previous
            .map(|p| p.budget.clone())
            .filter(|b| b.config() == &spec.retry_budget)
            .unwrap_or_else(|| Arc::new(RetryBudget::new(spec.retry_budget, now))),
        limits: previous.map_or_else(|| Arc::new(LimitCounters::new()), |p| p.limits.clone()),
    }
}

thread_local! {
    static RNG: RefCell<SplitMix64> = RefCell::new(SplitMix64::new(seed()));
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    t ^ (std::ptr::addr_of!(local) as u64).rotate_left(32)
}

/// Runs `f` with this thread's generator (fast, not cryptographic).
pub(crate) fn with_rng<T>(f: impl FnOnce(&mut SplitMix64) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// A uniform draw in `0..n` from this thread's generator.
pub(crate) fn below(n: u64) -> u64 {
    with_rng(|r| r.below(n))
}
