//! Fixtures for meshgate's micro-benchmarks (`benches/policy.rs`): route
//! tables shaped like an edge deployment, the requests that probe them, the
//! same routes as config text, and endpoint sets with uneven load.
//!
//! Everything here is built once, outside the timed loops, so the benches
//! measure only the policy call they name. Each probe carries the route it
//! must reach, and the benches check that before timing: a "hit" that had
//! quietly become a miss would still produce a plausible number.
//!
//! What it does not do: time anything, or serve as test data for the proxy.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method};
use meshgate_policy::lb::{Candidate, EndpointLoad, EwmaConfig};
use meshgate_policy::route::{
    Action, HostPattern, PathMatch, RequestView, Route, RouteEntry, RouteMatch, RouteTable,
};
use meshgate_policy::split::{Split, SplitTarget};
use regex::Regex;

/// Path prefix of every exact-host route.
const EXACT_PREFIX: &str = "/api";
/// Path prefix of every wildcard route.
const WILDCARD_PREFIX: &str = "/app";
/// Path prefix of the host-less catch-all route; anything else on an
/// unknown host is a 404.
const CATCH_ALL_PREFIX: &str = "/healthz";
/// Host of the path-regex route.
const REGEX_HOST: &str = "orders.example.org";
/// Path regex of the path-regex route (matched against the whole path).
const REGEX_PATH: &str = "/users/[0-9]+/orders/[0-9]+";
/// Name of the path-regex route.
const REGEX_ROUTE: &str = "orders-by-user";
/// Name of the catch-all route.
const CATCH_ALL_ROUTE: &str = "catch-all";

/// How many routes of each kind a benchmark route table holds. Besides
/// these, every table has one path-regex route and one host-less
/// catch-all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableShape {
    /// Routes bound to one exact host each (`svc{i}.example.com`, prefix
    /// `/api`).
    pub exact_hosts: usize,
    /// Routes bound to one wildcard each (`*.tenant{j}.example.net`, prefix
    /// `/app`).
    pub wildcard_hosts: usize,
}

impl TableShape {
    /// Ten routes: 7 exact hosts, 1 wildcard, the regex route, the
    /// catch-all. A single-site gateway.
    pub const SMALL: TableShape = TableShape {
        exact_hosts: 7,
        wildcard_hosts: 1,
    };

    /// 552 routes: 500 exact hosts, 50 wildcards, the regex route, the
    /// catch-all. A multi-tenant edge.
    pub const LARGE: TableShape = TableShape {
        exact_hosts: 500,
        wildcard_hosts: 50,
    };

    /// Total number of routes in a table of this shape.
    pub fn routes(self) -> usize {
        self.exact_hosts + self.wildcard_hosts + 2
    }
}

fn exact_host(i: usize) -> String {
    format!("svc{i}.example.com")
}

fn wildcard_suffix(j: usize) -> String {
    format!("tenant{j}.example.net")
}

fn route(name: String, path: PathMatch) -> Route {
    let action = Action::Respond {
        status: 200,
        body: name.clone(),
    };
    let matcher = RouteMatch {
        path,
        ..RouteMatch::default()
    };
    Route::new(name, matcher, action)
}

fn host(pattern: &str) -> HostPattern {
    HostPattern::parse(pattern).expect("fixture host patterns are valid")
}

/// The routes of a table of `shape`, in config order: exact hosts,
/// wildcards, the regex route, then the catch-all.
pub fn route_entries(shape: TableShape) -> Vec<RouteEntry> {
    let mut entries = Vec::with_capacity(shape.routes());
    for i in 0..shape.exact_hosts {
        entries.push(RouteEntry {
            hosts: vec![host(&exact_host(i))],
            route: route(
                format!("exact-{i}"),
                PathMatch::Prefix(EXACT_PREFIX.to_owned()),
            ),
        });
    }
    for j in 0..shape.wildcard_hosts {
        entries.push(RouteEntry {
            hosts: vec![host(&format!("*.{}", wildcard_suffix(j)))],
            route: route(
                format!("wildcard-{j}"),
                PathMatch::Prefix(WILDCARD_PREFIX.to_owned()),
            ),
        });
    }
    entries.push(RouteEntry {
        hosts: vec![host(REGEX_HOST)],
        route: route(
            REGEX_ROUTE.to_owned(),
            PathMatch::Regex(Regex::new(REGEX_PATH).expect("fixture regex is valid")),
        ),
    });
    entries.push(RouteEntry {
        hosts: Vec::new(),
        route: route(
            CATCH_ALL_ROUTE.to_owned(),
            PathMatch::Prefix(CATCH_ALL_PREFIX.to_owned()),
        ),
    });
    entries
}

/// A compiled table of `shape`, built directly from policy types.
pub fn route_table(shape: TableShape) -> RouteTable {
    RouteTable::new(route_entries(shape))
}

/// The same routes as [`route_entries`], as a meshgate config file with
/// one listener, for `meshgate_config::load_str`.
pub fn routes_toml(shape: TableShape) -> String {
    let mut out = String::from(
        "[[listener]]\nname = \"bench\"\naddress = \"127.0.0.1:8080\"\nprotocols = [\"http1\"]\n",
    );
    // Writing into a String cannot fail; the results are ignored for that
    // reason only.
    for i in 0..shape.exact_hosts {
        let _ = write!(
            out,
            "\n[[route]]\nname = \"exact-{i}\"\n\
             match = {{ hosts = [\"{}\"], path_prefix = \"{EXACT_PREFIX}\" }}\n\
             respond = {{ status = 200, body = \"exact-{i}\" }}\n",
            exact_host(i)
        );
    }
    for j in 0..shape.wildcard_hosts {
        let _ = write!(
            out,
            "\n[[route]]\nname = \"wildcard-{j}\"\n\
             match = {{ hosts = [\"*.{}\"], path_prefix = \"{WILDCARD_PREFIX}\" }}\n\
             respond = {{ status = 200, body = \"wildcard-{j}\" }}\n",
            wildcard_suffix(j)
        );
    }
    let _ = write!(
        out,
        "\n[[route]]\nname = \"{REGEX_ROUTE}\"\n\
         match = {{ hosts = [\"{REGEX_HOST}\"], path_regex = \"{REGEX_PATH}\" }}\n\
         respond = {{ status = 200, body = \"{REGEX_ROUTE}\" }}\n\
         \n[[route]]\nname = \"{CATCH_ALL_ROUTE}\"\n\
         match = {{ path_prefix = \"{CATCH_ALL_PREFIX}\" }}\n\
         respond = {{ status = 200, body = \"{CATCH_ALL_ROUTE}\" }}\n"
    );
    out
}

/// One request the route benches look up.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Benchmark id, e.g. `exact_hit`.
    pub label: &'static str,
    /// Host as the client sent it (lower-case, no port, so the lookup
    /// borrows rather than allocates, as for most real traffic).
    pub host: String,
    /// Path without the query.
    pub path: &'static str,
    /// Query string, if any.
    pub query: Option<&'static str>,
    /// Name of the route the lookup must return; `None` for a 404.
    pub expect: Option<String>,
}

impl Probe {
    /// The probe as routing sees it, borrowing prebuilt request parts.
    pub fn view<'a>(&'a self, parts: &'a RequestParts) -> RequestView<'a> {
        RequestView {
            host: &self.host,
            path: self.path,
            query: self.query,
            method: &parts.method,
            headers: &parts.headers,
        }
    }
}

/// The probes for a table of `shape`: hits in the middle of the exact and
/// wildcard ranges (not the first entry a linear scan would find), a
/// path-regex hit, and two kinds of 404.
pub fn probes(shape: TableShape) -> Vec<Probe> {
    let i = shape.exact_hosts / 2;
    let j = shape.wildcard_hosts / 2;
    vec![
        Probe {
            label: "exact_hit",
            host: exact_host(i),
            path: "/api/v1/items/42",
            query: Some("limit=10"),
            expect: Some(format!("exact-{i}")),
        },
        Probe {
            label: "wildcard_hit",
            host: format!("shop.{}", wildcard_suffix(j)),
            path: "/app/cart",
            query: None,
            expect: Some(format!("wildcard-{j}")),
        },
        Probe {
            label: "regex_hit",
            host: REGEX_HOST.to_owned(),
            path: "/users/1234/orders/987",
            query: None,
            expect: Some(REGEX_ROUTE.to_owned()),
        },
        // Unknown host: only the host-less routes are candidates.
        Probe {
            label: "miss_unknown_host",
            host: "unknown.example.io".to_owned(),
            path: "/missing",
            query: None,
            expect: None,
        },
        // Known host, unrouted path: its own routes, then the host-less
        // ones, all rejected.
        Probe {
            label: "miss_known_host",
            host: exact_host(i),
            path: "/missing",
            query: None,
            expect: None,
        },
    ]
}

/// The method and headers of a typical API request, built once so the
/// timed loop only borrows them.
#[derive(Debug, Clone)]
pub struct RequestParts {
    /// Request method.
    pub method: Method,
    /// Request headers.
    pub headers: HeaderMap,
}

impl RequestParts {
    /// A GET with the half-dozen headers an API client usually sends.
    pub fn typical() -> Self {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("user-agent", "meshgate-bench/1.0"),
            ("accept", "application/json"),
            ("accept-encoding", "gzip, br"),
            ("x-request-id", "5f0c2d7e-9a41-4b8e-a3c1-0d2e6f7a8b9c"),
            ("cookie", "session=3f9a1c; theme=dark"),
            ("x-user-id", "u-7f3a9c21e4b05d"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        Self {
            method: Method::GET,
            headers,
        }
    }
}

/// A 16-byte sticky key, the size of a typical user or session id.
pub const STICKY_KEY: &[u8; 16] = b"u-7f3a9c21e4b05d";

/// A canary split: `v1` at 90, `v2` at 9, `v3` at 1.
pub fn canary_split() -> Split {
    Split::new(vec![
        SplitTarget {
            name: "v1".to_owned(),
            weight: 90,
        },
        SplitTarget {
            name: "v2".to_owned(),
            weight: 9,
        },
        SplitTarget {
            name: "v3".to_owned(),
            weight: 1,
        },
    ])
    .expect("fixture split is valid")
}

/// Endpoints of one service with uneven, already-observed load, so the
/// balancers compare real costs rather than identical defaults.
#[derive(Debug)]
pub struct EndpointSet {
    loads: Vec<EndpointLoad>,
    keys: Vec<String>,
}

impl EndpointSet {
    /// `n` endpoints whose estimates were last updated at `observed`:
    /// latencies spread over 5-40ms and 0-3 requests in flight each.
    /// Pass a later `now` to the balancer so the estimates decay on read
    /// as they do in traffic.
    pub fn new(n: usize, observed: Instant, cfg: &EwmaConfig) -> Self {
        let mut loads = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            let load = EndpointLoad::new(observed);
            let rtt_ms = 5 + (i as u64 * 7) % 36;
            load.begin();
            load.end(Some(Duration::from_millis(rtt_ms)), observed, cfg);
            for _ in 0..i % 4 {
                load.begin();
            }
            loads.push(load);
            keys.push(format!("10.1.{}.{}:8080", i / 250, i % 250 + 1));
        }
        Self { loads, keys }
    }

    /// Every endpoint as a weight-1 candidate.
    pub fn candidates(&self) -> Vec<Candidate<'_>> {
        self.loads
            .iter()
            .zip(&self.keys)
            .map(|(load, key)| Candidate {
                load,
                weight: 1,
                key,
            })
            .collect()
    }
}
