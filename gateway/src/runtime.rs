//! Live per-service state that outlives config snapshots: each endpoint's
//! load (in-flight requests, peak-EWMA latency) and each service's
//! balancer. Keyed by service name and endpoint address, so a reload that
//! keeps an endpoint keeps what we learned about it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use meshgate_config::{EndpointSpec, ServiceSpec, Snapshot, SubsetSpec};
use meshgate_policy::lb::{Balancer, Candidate, EndpointLoad};
use meshgate_policy::random::{Random, SplitMix64};

/// One endpoint as the data path sees it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) spec: EndpointSpec,
    pub(crate) key: String,
    pub(crate) load: Arc<EndpointLoad>,
}

/// One service's live state.
#[derive(Debug)]
pub(crate) struct ServiceState {
    pub(crate) balancer: Balancer,
    pub(crate) endpoints: Vec<Endpoint>,
}

impl ServiceState {
    /// Picks an endpoint, within `subset` when given.
    pub(crate) fn pick(
        &self,
        subset: Option<&SubsetSpec>,
        hash_key: Option<u64>,
        now: Instant,
    ) -> Option<&Endpoint> {
        let members: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| subset.is_none_or(|s| s.selects(&e.spec.labels)))
            .collect();
        let candidates: Vec<Candidate<'_>> = members
            .iter()
            .map(|e| Candidate {
                load: &e.load,
                weight: e.spec.weight,
                key: &e.key,
            })
            .collect();
        let i = with_rng(|rng| self.balancer.pick(&candidates, hash_key, now, rng))?;
        members.get(i).copied()
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
            _ => Arc::new(build(service, &HashMap::new())),
        }
    }

    fn advance(&self, snap: &Snapshot) {
        let _g = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        if old.version >= snap.version {
            return;
        }
        let loads: HashMap<(String, SocketAddr), Arc<EndpointLoad>> = old
            .services
            .iter()
            .flat_map(|(name, s)| {
                s.endpoints
                    .iter()
                    .map(move |e| ((name.clone(), e.spec.address), e.load.clone()))
            })
            .collect();
        let services = snap
            .services
            .iter()
            .map(|s| (s.name.clone(), Arc::new(build(s, &loads))))
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

fn build(
    spec: &ServiceSpec,
    loads: &HashMap<(String, SocketAddr), Arc<EndpointLoad>>,
) -> ServiceState {
    let now = Instant::now();
    ServiceState {
        balancer: Balancer::new(spec.lb, spec.ewma),
        endpoints: spec
            .endpoints
            .iter()
            .map(|e| Endpoint {
                key: e.address.to_string(),
                load: loads
                    .get(&(spec.name.clone(), e.address))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointLoad::new(now))),
                spec: e.clone(),
            })
            .collect(),
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
