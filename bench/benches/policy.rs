//! Micro-benchmarks of the per-request policy calls: route lookup, endpoint
//! pick and its bookkeeping, split pick, the retry decision, and outlier
//! admission.
//!
//! Fixtures come from `meshgate_bench` and are built outside the timed
//! closures; each closure makes exactly the calls a data path makes for one
//! request. Before timing, every case checks that it takes the path its
//! name claims (a hit hits, a retry is granted), so a change in the fixture
//! cannot silently turn one measurement into another.
//!
//! Run with `cargo bench -p meshgate-bench --bench policy`; see
//! `bench/README.md` for what each id measures.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use meshgate_bench::{
    EndpointSet, Probe, RequestParts, STICKY_KEY, TableShape, canary_split, probes, route_table,
    routes_toml,
};
use meshgate_policy::breaker::{Admission, FailureRate, OutlierConfig, OutlierState};
use meshgate_policy::deadline::Deadline;
use meshgate_policy::lb::{Algorithm, Balancer, EndpointLoad, EwmaConfig};
use meshgate_policy::random::{SplitMix64, stable_hash};
use meshgate_policy::retry::{Outcome, RetryBudget, RetryBudgetConfig, RetryDecision, RetryPolicy};
use meshgate_policy::route::RouteTable;

/// Seed for every generator, so runs draw the same sequences.
const SEED: u64 = 0x6d65_7368_6761_7465;

/// Short runs: these calls take nanoseconds, so a second and a half still
/// gives millions of iterations per case, and the 35 cases finish in about
/// 75 seconds.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
}

fn shape_id(shape: TableShape) -> String {
    format!("{}_routes", shape.routes())
}

/// Fails the run if `probe` does not reach the route it names.
fn check_probe(table: &RouteTable, probe: &Probe, parts: &RequestParts, source: &str) {
    let found = table.find(&probe.view(parts)).map(|r| r.name.as_str());
    assert_eq!(
        found,
        probe.expect.as_deref(),
        "{source} table: probe {} reached the wrong route",
        probe.label
    );
}

fn route_find(c: &mut Criterion) {
    let parts = RequestParts::typical();
    let mut group = c.benchmark_group("route_find");
    for shape in [TableShape::SMALL, TableShape::LARGE] {
        let table = route_table(shape);
        for probe in probes(shape) {
            check_probe(&table, &probe, &parts, "direct");
            let view = probe.view(&parts);
            group.bench_function(BenchmarkId::new(probe.label, shape_id(shape)), |b| {
                b.iter(|| black_box(&table).find(black_box(&view)).is_some())
            });
        }
    }

    // An exact-host hit through a table compiled by the config loader
    // from TOML, to show the loader yields the same structure as the
    // direct build.
    let shape = TableShape::LARGE;
    let snapshot = meshgate_config::load_str(&routes_toml(shape), "bench", Path::new("."))
        .expect("the generated bench config compiles");
    let table = &snapshot
        .listeners
        .first()
        .expect("the bench config has one listener")
        .routes;
    let probe = probes(shape)
        .into_iter()
        .find(|p| p.label == "exact_hit")
        .expect("the probes include an exact-host hit");
    check_probe(table, &probe, &parts, "config");
    let view = probe.view(&parts);
    group.bench_function(BenchmarkId::new("config_exact_hit", shape_id(shape)), |b| {
        b.iter(|| black_box(table.as_ref()).find(black_box(&view)).is_some())
    });
    group.finish();
}

fn lb_pick(c: &mut Criterion) {
    let cfg = EwmaConfig::default();
    let observed = Instant::now();
    // Two seconds after the last observation: the P2C cost reads decay the
    // estimate, as they do between responses in real traffic.
    let now = observed + Duration::from_secs(2);
    let hash_key = stable_hash(STICKY_KEY);
    let mut group = c.benchmark_group("lb_pick");
    for n in [3, 10, 100] {
        let endpoints = EndpointSet::new(n, observed, &cfg);
        let candidates = endpoints.candidates();
        for (label, algorithm, key) in [
            ("peak_ewma", Algorithm::PeakEwma, None),
            ("round_robin", Algorithm::RoundRobin, None),
            ("least_request", Algorithm::LeastRequest, None),
            ("consistent_hash", Algorithm::ConsistentHash, Some(hash_key)),
        ] {
            let balancer = Balancer::new(algorithm, cfg);
            let mut rng = SplitMix64::new(SEED);
            assert!(
                balancer.pick(&candidates, key, now, &mut rng).is_some(),
                "{label} picked nothing from {n} candidates"
            );
            group.bench_function(BenchmarkId::new(label, n), |b| {
                b.iter(|| {
                    balancer.pick(
                        black_box(&candidates),
                        black_box(key),
                        black_box(now),
                        &mut rng,
                    )
                })
            });
        }
    }
    group.finish();

    c.bench_function("endpoint_load/begin_end", |b| {
        let start = Instant::now();
        let load = EndpointLoad::new(start);
        // Alternate a slower and a faster response, and let time pass
        // between them, so both the peak path and the decay path (with
        // its `exp`) of the estimate run.
        let rtts = [Duration::from_millis(12), Duration::from_millis(8)];
        let step = Duration::from_micros(50);
        let mut now = start;
        let mut turn = 0;
        b.iter(|| {
            now += step;
            turn ^= 1;
            load.begin();
            load.end(Some(black_box(rtts[turn])), black_box(now), &cfg);
        })
    });
}

fn split_pick(c: &mut Criterion) {
    let split = canary_split();
    let mut rng = SplitMix64::new(SEED);
    assert_eq!(split.pick(None, Some("v3"), &mut rng), 2);
    let mut group = c.benchmark_group("split_pick");
    group.bench_function("random_draw", |b| {
        b.iter(|| split.pick(black_box(None), black_box(None), &mut rng))
    });
    group.bench_function("sticky_16b_key", |b| {
        b.iter(|| {
            split.pick(
                black_box(Some(STICKY_KEY.as_slice())),
                black_box(None),
                &mut rng,
            )
        })
    });
    group.bench_function("override", |b| {
        b.iter(|| split.pick(black_box(None), black_box(Some("v3")), &mut rng))
    });
    group.finish();
}

fn retry(c: &mut Criterion) {
    let start = Instant::now();
    let now = start + Duration::from_secs(1);
    let policy = RetryPolicy::default();
    let outcome = Outcome::Response {
        status: 503,
        grpc_status: None,
        retry_after: None,
    };
    let deadline = Deadline::new(start, Some(Duration::from_secs(30)));
    // The floor is set high so that the budget cannot run dry over the
    // millions of iterations of one run and every decision is a granted
    // retry. What the gate costs (summing the request and retry windows,
    // then one CAS) does not depend on the size of the counts.
    let budget = RetryBudget::new(
        RetryBudgetConfig {
            min_per_second: u32::MAX,
            ..RetryBudgetConfig::default()
        },
        start,
    );
    for _ in 0..1_000 {
        budget.deposit(now);
    }
    let mut rng = SplitMix64::new(SEED);
    let first = policy.decide(0, &outcome, true, &deadline, &budget, now, &mut rng);
    assert!(
        matches!(first, RetryDecision::Retry { .. }),
        "a retryable 503 was not retried: {first:?}"
    );

    let mut group = c.benchmark_group("retry");
    group.bench_function("decide_503_granted", |b| {
        b.iter(|| {
            policy.decide(
                black_box(0),
                black_box(&outcome),
                black_box(true),
                &deadline,
                &budget,
                black_box(now),
                &mut rng,
            )
        })
    });
    group.bench_function("budget_deposit", |b| {
        b.iter(|| budget.deposit(black_box(now)))
    });
    group.finish();
}

fn outlier(c: &mut Criterion) {
    let start = Instant::now();
    let now = start + Duration::from_secs(1);
    let mut group = c.benchmark_group("outlier");
    for (label, failure_rate) in [
        ("admit_record_success", None),
        (
            "admit_record_success_with_rate",
            Some(FailureRate::default()),
        ),
    ] {
        let cfg = OutlierConfig {
            failure_rate,
            ..OutlierConfig::default()
        };
        let state = OutlierState::new(start);
        assert_eq!(state.admit(now), Admission::Yes);
        // Time moves 100us per request (10k requests per second to this
        // endpoint), so the failure-rate window turns over every 100k
        // iterations as in traffic, instead of filling up and taking the
        // cheaper saturated path.
        let step = Duration::from_micros(100);
        let mut now = now;
        group.bench_function(label, |b| {
            b.iter(|| {
                now += step;
                let admitted = state.admit(black_box(now));
                let transition = state.record(false, false, black_box(now), &cfg, true);
                (admitted, transition)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = policy;
    config = config();
    targets = route_find, lb_pick, split_pick, retry, outlier
}
criterion_main!(policy);
