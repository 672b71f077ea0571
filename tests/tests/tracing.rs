//! Distributed tracing end to end: real gateways, sidecars and demo
//! services, and a real OTLP/HTTP receiver (`tests/py/otlp_receiver.py`)
//! that decodes every export with the official OpenTelemetry protobuf
//! classes (`opentelemetry-proto`, installed by `make test`).
//!
//! Checked from the outside: one trace across gateway → sidecar → sidecar
//! with every SERVER span under the previous hop's CLIENT span; an
//! incoming `traceparent` (and `tracestate`) continued, B3 accepted and
//! answered in kind, malformed context replaced by a new trace; parent-based
//! and ratio sampling (nothing exported, context still propagated); HTTP
//! attributes and ERROR status on 5xx and on each retried try; HTTP/1.1
//! and h2c; a collector that is down or a full queue never failing a
//! request, but counted in the metrics; and a reload turning export on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use meshgate_tests::http1::Client;
use meshgate_tests::mesh::{LabOptions, MeshLab, TRUST_DOMAIN, service_id};
use meshgate_tests::{
    CurlResponse, Gateway, Origin, PyServer, curl, free_port, metric, seen_headers, wait_for,
};
use serde_json::Value;

/// The OTLP receiver and the spans it decoded.
struct Collector {
    server: PyServer,
}

impl Collector {
    fn start() -> Result<Collector> {
        Collector::start_with(&[])
    }

    /// With the receiver's `--status N` or `--hang`.
    fn start_with(args: &[&str]) -> Result<Collector> {
        Ok(Collector {
            server: PyServer::start("otlp_receiver.py", args)?,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.server.addr)
    }

    /// Every JSON line the receiver printed after its port.
    fn lines(&self) -> Vec<Value> {
        self.server
            .proc
            .stdout()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("the receiver prints JSON"))
            .collect()
    }

    fn spans_of(&self, trace_id: &str) -> Vec<Value> {
        let lines = self.lines();
        let bad: Vec<&Value> = lines
            .iter()
            .filter(|l| l.get("bad_request").is_some())
            .collect();
        assert!(bad.is_empty(), "the receiver refused exports: {bad:?}");
        lines
            .into_iter()
            .filter(|s| s["trace_id"] == trace_id)
            .collect()
    }

    /// Waits until `n` spans of `trace_id` arrived.
    fn trace(&self, trace_id: &str, n: usize) -> Result<Vec<Value>> {
        wait_for(Duration::from_secs(20), "spans at the collector", || {
            self.spans_of(trace_id).len() >= n
        })
        .with_context(|| {
            format!(
                "want {n} spans of trace {trace_id}; the receiver has:\n{}\nstderr: {}",
                self.server.proc.stdout(),
                self.server.proc.stderr()
            )
        })?;
        Ok(self.spans_of(trace_id))
    }
}

fn tracing_table(endpoint: &str, extra: &str) -> String {
    format!(
        "[observability.tracing]\notlp_endpoint = \"{endpoint}\"\nflush_interval = \"50ms\"\n{extra}\n"
    )
}

/// A `traceparent` as `(trace id, parent id, flags)`, checked for shape.
fn traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v:?}");
    assert_eq!(parts[0], "00", "traceparent {v:?}");
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2),
        "traceparent {v:?}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn attr(span: &Value, key: &str) -> Value {
    span["attributes"][key].clone()
}

/// The one span among `spans` that `pred` picks.
fn one<'a>(spans: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: {} matches among {spans:#?}",
        found.len()
    );
    found[0]
}

fn is(span: &Value, service: &str, kind: &str) -> bool {
    span["resource"]["service.name"] == service && span["kind"] == kind
}

/// `child` hangs directly under `parent`.
fn assert_child(child: &Value, parent: &Value) {
    assert_eq!(
        child["parent_span_id"], parent["span_id"],
        "{} must be a child of {}",
        child["name"], parent["name"]
    );
    assert_eq!(child["trace_id"], parent["trace_id"]);
}

/// In one process, a CLIENT span lies within its SERVER span.
fn assert_within(inner: &Value, outer: &Value) {
    let n = |v: &Value| v.as_u64().expect("nanoseconds");
    assert!(
        n(&outer["start"]) <= n(&inner["start"]) && n(&inner["end"]) <= n(&outer["end"]),
        "{} must lie within {}",
        inner["name"],
        outer["name"]
    );
}

const SPAN_FLAGS_HAS_IS_REMOTE: u64 = 0x100;
const SPAN_FLAGS_IS_REMOTE: u64 = 0x200;

/// The access-log `trace_id` of the request for `path`.
fn logged_trace_id(log: &[Value], path: &str) -> Option<String> {
    log.iter()
        .rfind(|l| l["path"] == path)
        .and_then(|l| l["trace_id"].as_str())
        .map(str::to_owned)
}

#[test]
fn one_trace_crosses_the_gateway_and_both_sidecars() -> Result<()> {
    let collector = Collector::start()?;
    // The appliance's service_name is its own: the control plane does not
    // pass it to sidecars, which report their service's name.
    let table = tracing_table(
        &collector.endpoint(),
        "sampling_ratio = 1.0\nservice_name = \"edge-gateway\"",
    );
    let mut lab = MeshLab::start_with(LabOptions::default(), &table)?;
    let catalog = lab.add("product-catalog", "v1", None)?;
    let orders = lab.add("order-processing", "v1", Some("product-catalog"))?;
    lab.wait_serving("/orders/1", &["v1"])?;

    // 1. A request without trace context: the gateway starts the trace.
    let mut c = Client::new(lab.edge);
    let r = c.get("/orders/42", &[("x-user-id", "alice"), ("x-canary", "v1")])?;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut trace_id = None;
    wait_for(Duration::from_secs(10), "the access-log line", || {
        trace_id = logged_trace_id(&lab.appliance.access_log(), "/orders/42");
        trace_id.is_some()
    })?;
    let trace_id = trace_id.context("trace id")?;
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    let spans = collector.trace(&trace_id, 8)?;

    let gw_server = one(&spans, "gateway SERVER", |s| {
        is(s, "edge-gateway", "SPAN_KIND_SERVER")
    });
    let gw_client = one(&spans, "gateway CLIENT", |s| {
        is(s, "edge-gateway", "SPAN_KIND_CLIENT")
    });
    let inbound = |s: &Value| attr(s, "meshgate.direction") == "inbound";
    let outbound = |s: &Value| attr(s, "meshgate.direction") == "outbound";
    let op_in = one(&spans, "order-processing inbound SERVER", |s| {
        is(s, "order-processing", "SPAN_KIND_SERVER") && inbound(s)
    });
    let op_in_client = one(&spans, "order-processing inbound CLIENT", |s| {
        is(s, "order-processing", "SPAN_KIND_CLIENT") && s["parent_span_id"] == op_in["span_id"]
    });
    let op_out = one(&spans, "order-processing outbound SERVER", |s| {
        is(s, "order-processing", "SPAN_KIND_SERVER") && outbound(s)
    });
    let op_out_client = one(&spans, "order-processing outbound CLIENT", |s| {
        is(s, "order-processing", "SPAN_KIND_CLIENT") && s["parent_span_id"] == op_out["span_id"]
    });
    let pc_in = one(&spans, "product-catalog inbound SERVER", |s| {
        is(s, "product-catalog", "SPAN_KIND_SERVER") && inbound(s)
    });
    let pc_in_client = one(&spans, "product-catalog inbound CLIENT", |s| {
        is(s, "product-catalog", "SPAN_KIND_CLIENT")
    });

    // The chain: each hop's SERVER span under the previous hop's CLIENT
    // span; order-processing's app carried the context from its inbound
    // request to its outbound call.
    assert_eq!(
        gw_server["parent_span_id"], "",
        "the gateway started the trace"
    );
    assert_child(gw_client, gw_server);
    assert_child(op_in, gw_client);
    assert_child(op_in_client, op_in);
    assert_child(op_out, op_in_client);
    assert_child(op_out_client, op_out);
    assert_child(pc_in, op_out_client);
    assert_child(pc_in_client, pc_in);
    for (inner, outer) in [
        (gw_client, gw_server),
        (op_in_client, op_in),
        (op_out_client, op_out),
        (pc_in_client, pc_in),
    ] {
        assert_within(inner, outer);
    }
    // Span flags: sampled, and whether the parent was in another process.
    let flags = |s: &Value| s["flags"].as_u64().unwrap_or(0);
    for s in &spans {
        assert_eq!(flags(s) & 0xff, 1, "sampled: {s}");
        assert_ne!(flags(s) & SPAN_FLAGS_HAS_IS_REMOTE, 0, "{s}");
        let remote = flags(s) & SPAN_FLAGS_IS_REMOTE != 0;
        let expect_remote = s["kind"] == "SPAN_KIND_SERVER" && s["parent_span_id"] != "";
        assert_eq!(remote, expect_remote, "is_remote of {}", s["name"]);
        assert_eq!(s["status"]["code"], "STATUS_CODE_UNSET", "{s}");
        assert_eq!(s["scope"]["name"], "meshgate");
    }

    // Attributes: HTTP semantic conventions and meshgate's own.
    assert_eq!(gw_server["name"], "GET orders");
    assert_eq!(attr(gw_server, "http.request.method"), "GET");
    assert_eq!(attr(gw_server, "url.path"), "/orders/42");
    assert_eq!(attr(gw_server, "url.scheme"), "http");
    assert_eq!(attr(gw_server, "http.response.status_code"), 200);
    assert_eq!(attr(gw_server, "server.address"), "127.0.0.1");
    assert_eq!(attr(gw_server, "server.port"), lab.edge.port());
    assert_eq!(attr(gw_server, "network.protocol.version"), "1.1");
    assert_eq!(attr(gw_server, "client.address"), "127.0.0.1");
    assert_eq!(attr(gw_server, "meshgate.route"), "orders");
    assert_eq!(attr(gw_server, "meshgate.service"), "order-processing");
    assert_eq!(attr(gw_server, "meshgate.listener"), "edge");
    assert_eq!(gw_server["resource"]["meshgate.proxy"], "gateway");
    let op_inbound = lab.instances[orders].inbound;
    assert_eq!(attr(gw_client, "server.address"), "127.0.0.1");
    assert_eq!(attr(gw_client, "server.port"), op_inbound.port());
    assert_eq!(attr(gw_client, "http.response.status_code"), 200);
    assert_eq!(attr(gw_client, "meshgate.service"), "order-processing");

    assert_eq!(op_in["resource"]["meshgate.proxy"], "sidecar");
    assert_eq!(attr(op_in, "url.scheme"), "https");
    assert_eq!(attr(op_in, "url.path"), "/orders/42");
    assert_eq!(
        attr(op_in, "meshgate.peer.identity"),
        format!("spiffe://{TRUST_DOMAIN}/gateway").as_str()
    );
    assert_eq!(
        attr(op_in_client, "server.port"),
        lab.instances[orders].app_addr.port()
    );
    assert_eq!(attr(op_out, "meshgate.route"), "mesh-product-catalog");
    assert_eq!(attr(op_out, "server.address"), "product-catalog");
    assert_eq!(attr(op_out, "meshgate.listener"), "outbound");
    assert_eq!(attr(op_out_client, "meshgate.service"), "product-catalog");
    assert_eq!(attr(op_out_client, "meshgate.subset"), "v1");
    assert_eq!(
        attr(op_out_client, "server.port"),
        lab.instances[catalog].inbound.port()
    );
    let catalog_path = attr(op_out, "url.path");
    let catalog_path = catalog_path.as_str().context("url.path")?;
    assert!(catalog_path.starts_with("/items"), "{catalog_path}");
    assert_eq!(attr(pc_in, "url.path"), catalog_path);
    assert_eq!(
        attr(pc_in, "meshgate.peer.identity"),
        service_id("order-processing").as_str()
    );
    assert_eq!(pc_in["resource"]["service.name"], "product-catalog");
    assert_eq!(attr(pc_in_client, "http.response.status_code"), 200);

    // The sidecars' access logs carry the same trace id, inbound and
    // outbound.
    wait_for(Duration::from_secs(10), "sidecar access-log lines", || {
        let out = lab.instances[orders].sidecar.stdout();
        let lines: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &Value| l["trace_id"] == trace_id.as_str())
            .collect();
        lines.iter().any(|l| l["listener"] == "inbound")
            && lines.iter().any(|l| l["listener"] == "outbound")
    })?;

    // 2. A caller's traceparent and tracestate are continued through
    // every hop.
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let r = c.get(
        "/orders/7",
        &[
            ("x-canary", "v1"),
            (
                "traceparent",
                &format!("00-{caller_trace}-{caller_span}-01"),
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )?;
    assert_eq!(r.status, 200, "{}", r.body);
    let spans = collector.trace(caller_trace, 8)?;
    let gw_server = one(&spans, "gateway SERVER", |s| {
        is(s, "edge-gateway", "SPAN_KIND_SERVER")
    });
    assert_eq!(gw_server["parent_span_id"], caller_span);
    assert_ne!(flags(gw_server) & SPAN_FLAGS_IS_REMOTE, 0);
    for s in &spans {
        assert_eq!(s["trace_state"], "congo=t61rcWkgMzE", "{}", s["name"]);
    }
    assert_eq!(
        logged_trace_id(&lab.appliance.access_log(), "/orders/7").as_deref(),
        Some(caller_trace)
    );

    // 3. A caller that decided not to sample: no hop records anything,
    // yet the request is served. A sampled request sent after it is
    // exported through the same queues, so once it arrives the first
    // would have too.
    let unsampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = c.get(
        "/orders/8",
        &[
            ("x-canary", "v1"),
            (
                "traceparent",
                &format!("00-{unsampled}-00f067aa0ba902b7-00"),
            ),
        ],
    )?;
    assert_eq!(r.status, 200, "{}", r.body);
    let marker = "5bf92f3577b34da6a3ce929d0e0e4736";
    let r = c.get(
        "/orders/9",
        &[
            ("x-canary", "v1"),
            ("traceparent", &format!("00-{marker}-00f067aa0ba902b7-01")),
        ],
    )?;
    assert_eq!(r.status, 200, "{}", r.body);
    collector.trace(marker, 8)?;
    assert_eq!(collector.spans_of(unsampled), Vec::<Value>::new());
    Ok(())
}

/// A gateway with one plain-HTTP origin behind it: `/fail` retries twice on
/// gateway errors, `/local` answers by itself, everything else is proxied.
fn edge_gateway(origin: SocketAddr, tracing: &str) -> Result<(Gateway, SocketAddr)> {
    Gateway::start_web(
        "protocols = [\"http1\", \"h2c\"]",
        &format!(
            r#"[[route]]
name = "fail"
match = {{ path_prefix = "/fail" }}
service = "web"
retry = {{ max_retries = 2, on = ["gateway-error"], backoff_base = "1ms", backoff_max = "5ms" }}

[[route]]
name = "local"
match = {{ path = "/local" }}
respond = {{ status = 200, body = "here" }}

[[route]]
name = "web"
match = {{ path_prefix = "/" }}
service = "web"

[[service]]
name = "web"
endpoints = [{{ address = "{origin}" }}]

{tracing}"#
        ),
    )
}

fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Result<CurlResponse> {
    let url = format!("http://{addr}{path}");
    let mut args = vec![url.as_str()];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    curl(&args)
}

/// The one value of request header `name` the origin saw.
fn seen_one(seen: &BTreeMap<String, Vec<String>>, name: &str) -> Option<String> {
    match seen.get(name).map(Vec::as_slice) {
        None => None,
        Some([v]) => Some(v.clone()),
        Some(vs) => panic!("{name} sent {} times: {vs:?}", vs.len()),
    }
}

#[test]
fn the_edge_starts_continues_and_translates_trace_context() -> Result<()> {
    let collector = Collector::start()?;
    let origin = Origin::start("web")?;
    let (gw, addr) = edge_gateway(
        origin.addr,
        &tracing_table(&collector.endpoint(), "service_name = \"edge-test\""),
    )?;

    // No context: a new sampled trace, whose CLIENT span is the parent the
    // origin sees.
    let r = get(addr, "/new", &[])?;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = seen_headers(&r)?;
    let (trace, parent, flags) =
        traceparent(&seen_one(&seen, "traceparent").context("traceparent")?);
    assert_eq!(flags, "01", "the default sampling ratio is 1.0");
    assert_eq!(seen_one(&seen, "tracestate"), None);
    let spans = collector.trace(&trace, 2)?;
    let server = one(&spans, "SERVER", |s| s["kind"] == "SPAN_KIND_SERVER");
    let client = one(&spans, "CLIENT", |s| s["kind"] == "SPAN_KIND_CLIENT");
    assert_eq!(server["parent_span_id"], "");
    assert_child(client, server);
    assert_eq!(client["span_id"], parent.as_str());
    assert_eq!(server["resource"]["service.name"], "edge-test");
    assert_eq!(server["name"], "GET web");
    assert_eq!(client["name"], "GET web");
    assert_eq!(attr(client, "server.port"), origin.addr.port());
    assert_eq!(attr(server, "url.path"), "/new");
    wait_for(Duration::from_secs(5), "the access-log line", || {
        logged_trace_id(&gw.access_log(), "/new").as_deref() == Some(trace.as_str())
    })?;

    // The forwarding headers written beside the trace context: the client
    // appended to `x-forwarded-for`, the scheme, a fresh 128-bit
    // `x-request-id` (a caller's is kept), and stale B3 headers beside a
    // valid traceparent are dropped, not passed on with the wrong span.
    assert_eq!(
        seen_one(&seen, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        seen_one(&seen, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    let id = seen_one(&seen, "x-request-id").context("x-request-id")?;
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        addr,
        "/forwarded",
        &[
            "X-Forwarded-For: 203.0.113.9",
            "X-Request-Id: caller-chosen",
            &format!("traceparent: {tp}"),
            "X-B3-SpanId: a2fb4a1d1a96d312",
            "X-B3-Sampled: 0",
        ],
    )?;
    let seen = seen_headers(&r)?;
    assert_eq!(
        seen_one(&seen, "x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(
        seen_one(&seen, "x-request-id").as_deref(),
        Some("caller-chosen")
    );
    let (t, _, flags) = traceparent(&seen_one(&seen, "traceparent").context("traceparent")?);
    assert_eq!(
        (t.as_str(), flags.as_str()),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "01")
    );
    assert_eq!(seen_one(&seen, "x-b3-spanid"), None);
    assert_eq!(seen_one(&seen, "x-b3-sampled"), None);

    // The same over HTTP/2 (h2c): the version is on the SERVER span.
    let url = format!("http://{addr}/h2");
    let r = curl(&["--http2-prior-knowledge", &url])?;
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    let seen = seen_headers(&r)?;
    let (h2_trace, parent, _) =
        traceparent(&seen_one(&seen, "traceparent").context("traceparent")?);
    let spans = collector.trace(&h2_trace, 2)?;
    let server = one(&spans, "SERVER", |s| s["kind"] == "SPAN_KIND_SERVER");
    let client = one(&spans, "CLIENT", |s| s["kind"] == "SPAN_KIND_CLIENT");
    assert_eq!(attr(server, "network.protocol.version"), "2");
    assert_eq!(attr(server, "url.path"), "/h2");
    assert_eq!(client["span_id"], parent.as_str());

    // An invalid traceparent starts a new trace, and its tracestate is
    // not passed on.
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let r = get(
        addr,
        "/bad",
        &[
            &format!("traceparent: {bad}"),
            "tracestate: congo=t61rcWkgMzE",
        ],
    )?;
    let seen = seen_headers(&r)?;
    let (fresh, _, _) = traceparent(&seen_one(&seen, "traceparent").context("traceparent")?);
    assert_ne!(fresh, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(seen_one(&seen, "tracestate"), None);
    let spans = collector.trace(&fresh, 2)?;
    let server = one(&spans, "SERVER", |s| s["kind"] == "SPAN_KIND_SERVER");
    assert_eq!(server["parent_span_id"], "");

    // B3, single header: the trace is continued, and the origin gets both
    // a traceparent and a b3 naming this hop's spans.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3_span = "e457b5a2e4d86bd1";
    let r = get(addr, "/b3", &[&format!("b3: {b3_trace}-{b3_span}-1")])?;
    let seen = seen_headers(&r)?;
    let (t, parent, flags) = traceparent(&seen_one(&seen, "traceparent").context("traceparent")?);
    assert_eq!((t.as_str(), flags.as_str()), (b3_trace, "01"));
    let spans = collector.trace(b3_trace, 2)?;
    let server = one(&spans, "SERVER", |s| s["kind"] == "SPAN_KIND_SERVER");
    let client = one(&spans, "CLIENT", |s| s["kind"] == "SPAN_KIND_CLIENT");
    assert_eq!(server["parent_span_id"], b3_span);
    assert_eq!(client["span_id"], parent.as_str());
    let server_id = server["span_id"].as_str().context("span id")?;
    assert_eq!(
        seen_one(&seen, "b3"),
        Some(format!("{b3_trace}-{parent}-1-{server_id}"))
    );

    // B3, multiple headers with a 64-bit trace id: widened to 128 bits.
    let r = get(
        addr,
        "/b3-multi",
        &[
            "X-B3-TraceId: 463ac35c9f6413ad",
            "X-B3-SpanId: a2fb4a1d1a96d312",
            "X-B3-Sampled: 1",
        ],
    )?;
    let seen = seen_headers(&r)?;
    let wide = "0000000000000000463ac35c9f6413ad";
    let (t, parent, _) = traceparent(&seen_one(&seen, "traceparent").context("traceparent")?);
    assert_eq!(t, wide);
    assert_eq!(seen_one(&seen, "x-b3-traceid").as_deref(), Some(wide));
    assert_eq!(seen_one(&seen, "x-b3-spanid"), Some(parent.clone()));
    assert_eq!(seen_one(&seen, "x-b3-sampled").as_deref(), Some("1"));
    let spans = collector.trace(wide, 2)?;
    let server = one(&spans, "SERVER", |s| s["kind"] == "SPAN_KIND_SERVER");
    assert_eq!(server["parent_span_id"], "a2fb4a1d1a96d312");
    assert_eq!(
        seen_one(&seen, "x-b3-parentspanid").as_deref(),
        server["span_id"].as_str()
    );

    // 5xx and retries: every try is a CLIENT span with ERROR status, the
    // retries counted, and the SERVER span ERROR too.
    let failing = "1bf92f3577b34da6a3ce929d0e0e4736";
    let r = get(
        addr,
        "/fail",
        &[
            "x-want-status: 503",
            &format!("traceparent: 00-{failing}-00f067aa0ba902b7-01"),
        ],
    )?;
    assert_eq!(r.status, 503);
    let spans = collector.trace(failing, 4)?;
    let server = one(&spans, "SERVER", |s| s["kind"] == "SPAN_KIND_SERVER");
    assert_eq!(server["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(attr(server, "http.response.status_code"), 503);
    assert_eq!(attr(server, "meshgate.retries"), 2);
    assert_eq!(attr(server, "meshgate.route"), "fail");
    let mut tries: Vec<&Value> = spans
        .iter()
        .filter(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .collect();
    assert_eq!(tries.len(), 3, "{spans:#?}");
    tries.sort_by_key(|s| s["start"].as_u64());
    for (i, t) in tries.iter().enumerate() {
        assert_child(t, server);
        assert_eq!(t["status"]["code"], "STATUS_CODE_ERROR");
        assert_eq!(t["status"]["message"], "HTTP 503");
        assert_eq!(attr(t, "error.type"), "503");
        assert_eq!(attr(t, "http.response.status_code"), 503);
        let resend = if i == 0 { Value::Null } else { Value::from(i) };
        assert_eq!(attr(t, "http.request.resend_count"), resend);
    }
    // The origin saw three tries; the answer that reached the client (the
    // last try's) names the last try's own span as its parent.
    let at_origin = origin.requests();
    let fails = at_origin.iter().filter(|l| l.contains("/fail")).count();
    assert_eq!(fails, 3, "{at_origin:?}");
    let seen = seen_headers(&r)?;
    let (_, parent, _) = traceparent(&seen_one(&seen, "traceparent").context("traceparent")?);
    assert_eq!(tries[2]["span_id"], parent.as_str());
    assert_ne!(tries[0]["span_id"], tries[2]["span_id"]);
    Ok(())
}

#[test]
fn ratio_zero_exports_nothing_but_still_propagates() -> Result<()> {
    let collector = Collector::start()?;
    let origin = Origin::start("web")?;
    let (gw, addr) = edge_gateway(
        origin.addr,
        &tracing_table(&collector.endpoint(), "sampling_ratio = 0"),
    )?;
    let mut unsampled = Vec::new();
    for i in 0..5 {
        let r = get(addr, &format!("/quiet/{i}"), &[])?;
        assert_eq!(r.status, 200);
        let seen = seen_headers(&r)?;
        let (trace, _, flags) =
            traceparent(&seen_one(&seen, "traceparent").context("traceparent")?);
        assert_eq!(flags, "00", "not sampled, but propagated");
        unsampled.push(trace);
    }
    // A caller's "sampled" decision still wins (parent-based sampling);
    // once its spans arrive, the earlier requests' would have.
    let marker = "2bf92f3577b34da6a3ce929d0e0e4736";
    let r = get(
        addr,
        "/loud",
        &[&format!("traceparent: 00-{marker}-00f067aa0ba902b7-01")],
    )?;
    let seen = seen_headers(&r)?;
    assert_eq!(
        traceparent(&seen_one(&seen, "traceparent").context("tp")?).2,
        "01"
    );
    collector.trace(marker, 2)?;
    for t in &unsampled {
        assert_eq!(collector.spans_of(t), Vec::<Value>::new(), "trace {t}");
    }
    // The access log still names each request's trace.
    let log = gw.access_log();
    for (i, t) in unsampled.iter().enumerate() {
        assert_eq!(
            logged_trace_id(&log, &format!("/quiet/{i}")).as_deref(),
            Some(t.as_str())
        );
    }
    Ok(())
}

#[test]
fn a_collector_that_is_down_fails_no_request() -> Result<()> {
    let origin = Origin::start("web")?;
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let (gw, addr) = edge_gateway(origin.addr, &tracing_table(&endpoint, ""))?;
    let dropped = |gw: &Gateway| {
        gw.metrics()
            .ok()
            .and_then(|m| {
                metric(
                    &m,
                    "meshgate_trace_spans_dropped_total",
                    &["reason=\"export_failed\""],
                )
            })
            .unwrap_or(0.0)
    };
    for i in 0..5 {
        let r = get(addr, &format!("/down/{i}"), &[])?;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    wait_for(Duration::from_secs(20), "failed exports counted", || {
        dropped(&gw) >= 10.0
    })
    .with_context(|| gw.proc.stderr())?;
    // A second failing batch: the warning is not repeated.
    let r = get(addr, "/down/again", &[])?;
    assert_eq!(r.status, 200);
    wait_for(
        Duration::from_secs(20),
        "more failed exports counted",
        || dropped(&gw) >= 12.0,
    )?;
    let stderr = gw.proc.stderr();
    let warnings = stderr.matches("span export failed").count();
    assert_eq!(warnings, 1, "one rate-limited warning:\n{stderr}");
    let m = gw.metrics()?;
    assert_eq!(
        metric(&m, "meshgate_trace_spans_exported_total", &[]),
        Some(0.0)
    );
    Ok(())
}

#[test]
fn a_full_export_queue_drops_and_counts_spans() -> Result<()> {
    let collector = Collector::start()?;
    let origin = Origin::start("web")?;
    // Room for one span: a proxied request has two (SERVER and CLIENT)
    // and is dropped whole; a local answer has one and gets through.
    let (gw, addr) = edge_gateway(
        origin.addr,
        &tracing_table(&collector.endpoint(), "queue_capacity = 1\nbatch_size = 1"),
    )?;
    let r = get(addr, "/proxied", &[])?;
    assert_eq!(r.status, 200);
    let proxied = traceparent(&seen_one(&seen_headers(&r)?, "traceparent").context("tp")?).0;
    let r = get(addr, "/local", &[])?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "here");
    let mut local = None;
    wait_for(Duration::from_secs(5), "the access-log line", || {
        local = logged_trace_id(&gw.access_log(), "/local");
        local.is_some()
    })?;
    let local = local.context("trace id")?;
    let spans = collector.trace(&local, 1)?;
    assert_eq!(spans[0]["name"], "GET local");
    assert_eq!(spans[0]["kind"], "SPAN_KIND_SERVER");
    assert_eq!(collector.spans_of(&proxied), Vec::<Value>::new());
    // The receiver prints the span before it answers, so the exporter may
    // count it a moment later.
    wait_for(
        Duration::from_secs(10),
        "one span counted as exported",
        || {
            gw.metrics()
                .is_ok_and(|m| metric(&m, "meshgate_trace_spans_exported_total", &[]) == Some(1.0))
        },
    )?;
    let m = gw.metrics()?;
    assert_eq!(
        metric(
            &m,
            "meshgate_trace_spans_dropped_total",
            &["reason=\"queue_full\""]
        ),
        Some(2.0),
        "{m}"
    );
    Ok(())
}

#[test]
fn a_reload_turns_export_on() -> Result<()> {
    let collector = Collector::start()?;
    let origin = Origin::start("web")?;
    // No [observability.tracing]: context is propagated, nothing exported.
    let (gw, addr) = edge_gateway(origin.addr, "")?;
    let r = get(addr, "/before", &[])?;
    let before = traceparent(&seen_one(&seen_headers(&r)?, "traceparent").context("tp")?);
    assert_eq!(
        before.2, "01",
        "sampled by the default ratio, though not exported"
    );

    let file = gw.config.clone().context("the gateway's config file")?;
    let text = std::fs::read_to_string(&file)? + &tracing_table(&collector.endpoint(), "");
    std::fs::write(&file, text)?;
    gw.proc.signal("HUP")?;
    wait_for(Duration::from_secs(10), "the reload to apply", || {
        gw.metrics()
            .is_ok_and(|m| metric(&m, "meshgate_config_version", &[]) == Some(2.0))
    })?;
    let r = get(addr, "/after", &[])?;
    let after = traceparent(&seen_one(&seen_headers(&r)?, "traceparent").context("tp")?);
    let spans = collector.trace(&after.0, 2)?;
    assert!(
        spans
            .iter()
            .all(|s| s["resource"]["service.name"] == "meshgate")
    );
    assert_eq!(collector.spans_of(&before.0), Vec::<Value>::new());
    Ok(())
}

#[test]
fn spans_waiting_at_sigterm_are_exported_before_the_exit() -> Result<()> {
    let collector = Collector::start()?;
    let origin = Origin::start("web")?;
    // A batch would wait a minute: only the shutdown flush can send it.
    let (mut gw, addr) = edge_gateway(
        origin.addr,
        &format!(
            "[observability.tracing]\notlp_endpoint = \"{}\"\nflush_interval = \"60s\"\n",
            collector.endpoint()
        ),
    )?;
    let r = get(addr, "/last", &[])?;
    let tp = traceparent(&seen_one(&seen_headers(&r)?, "traceparent").context("tp")?);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        collector.spans_of(&tp.0),
        Vec::<Value>::new(),
        "not sent yet"
    );
    gw.proc.signal("TERM")?;
    let code = gw.proc.wait_exit(Duration::from_secs(20))?;
    assert_eq!(code, Some(0));
    let spans = collector.trace(&tp.0, 2)?;
    assert_eq!(spans.len(), 2, "{spans:?}");
    Ok(())
}

#[test]
fn a_collector_that_refuses_or_hangs_fails_no_request() -> Result<()> {
    let origin = Origin::start("web")?;
    let failed = |gw: &Gateway| {
        gw.metrics()
            .ok()
            .and_then(|m| {
                metric(
                    &m,
                    "meshgate_trace_spans_dropped_total",
                    &["reason=\"export_failed\""],
                )
            })
            .unwrap_or(0.0)
    };

    // A collector answering 503: the batch is counted as failed.
    let refusing = Collector::start_with(&["--status", "503"])?;
    let (gw, addr) = edge_gateway(origin.addr, &tracing_table(&refusing.endpoint(), ""))?;
    let r = get(addr, "/refused", &[])?;
    assert_eq!(r.status, 200);
    wait_for(
        Duration::from_secs(20),
        "the refused export counted",
        || failed(&gw) >= 2.0,
    )?;
    assert!(refusing.lines().iter().any(|l| l["refused"] == 503));
    let m = gw.metrics()?;
    assert_eq!(
        metric(&m, "meshgate_trace_spans_exported_total", &[]),
        Some(0.0)
    );
    assert!(gw.proc.stderr().contains("the collector answered 503"));

    // A collector that never answers: the export times out; requests
    // meanwhile are served as ever.
    let hanging = Collector::start_with(&["--hang"])?;
    let (gw, addr) = edge_gateway(
        origin.addr,
        &tracing_table(&hanging.endpoint(), "export_timeout = \"300ms\""),
    )?;
    let r = get(addr, "/first", &[])?;
    assert_eq!(r.status, 200);
    wait_for(
        Duration::from_secs(20),
        "an export to reach the collector",
        || hanging.lines().iter().any(|l| l.get("hanging").is_some()),
    )?;
    for i in 0..10 {
        let r = get(addr, &format!("/while-hanging/{i}"), &[])?;
        assert_eq!(r.status, 200, "request {i} while the collector hangs");
    }
    wait_for(
        Duration::from_secs(20),
        "the timed-out export counted",
        || failed(&gw) >= 2.0,
    )
    .with_context(|| gw.proc.stderr())?;
    Ok(())
}

/// What `tests/py/h2_origin.py` saw of one request's header fields.
fn wire_fields(body: &str) -> Result<(Vec<String>, Vec<String>)> {
    let v: Value = serde_json::from_str(body).with_context(|| format!("origin said {body:?}"))?;
    let names = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok((names("never_indexed"), names("other")))
}

/// The trace and request ids the gateway writes are new on every request,
/// so over HTTP/2 they go as never-indexed HPACK literals: indexed, each
/// would take a slot in both ends' dynamic tables and push out the
/// headers that do repeat. Headers that repeat stay indexable, and so does
/// a request id the client chose. The origin is a real HTTP/2 server
/// (the `h2` package) whose HPACK decoder reports each field's form.
#[test]
fn per_request_ids_reach_an_http2_upstream_never_indexed() -> Result<()> {
    let origin = PyServer::start("h2_origin.py", &[])?;
    let (_gw, addr) = Gateway::start_web(
        "protocols = [\"http1\"]",
        &format!(
            r#"[[route]]
name = "h2"
match = {{ path_prefix = "/" }}
service = "h2"

[[service]]
name = "h2"
protocol = "http2"
endpoints = [{{ address = "{}" }}]
"#,
            origin.addr
        ),
    )?;
    let cases: [(&[&str], &[&str], &[&str]); 4] = [
        // (request headers, must arrive never-indexed, must not)
        (
            &[],
            &["traceparent", "x-request-id"],
            &["x-forwarded-for", "x-forwarded-proto"],
        ),
        (
            &["b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"],
            &["b3", "traceparent", "x-request-id"],
            &["x-forwarded-proto"],
        ),
        (
            &[
                "x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7",
                "x-b3-spanid: e457b5a2e4d86bd1",
                "x-b3-sampled: 1",
            ],
            &[
                "traceparent",
                "x-b3-traceid",
                "x-b3-spanid",
                "x-b3-parentspanid",
            ],
            &["x-b3-sampled", "x-forwarded-proto"],
        ),
        (
            &["x-request-id: chosen-by-the-client"],
            &["traceparent"],
            &["x-request-id", "x-forwarded-proto"],
        ),
    ];
    for (sent, never, other) in cases {
        let r = get(addr, "/", sent)?;
        assert_eq!(r.status, 200, "{sent:?}: {}", r.body);
        let (got_never, got_other) = wire_fields(&r.body)?;
        for name in never {
            assert!(
                got_never.iter().any(|n| n == name),
                "{sent:?}: {name} not never-indexed; never-indexed {got_never:?}, other {got_other:?}"
            );
        }
        for name in other {
            assert!(
                got_other.iter().any(|n| n == name),
                "{sent:?}: {name} not sent indexable; never-indexed {got_never:?}, other {got_other:?}"
            );
        }
    }
    Ok(())
}
