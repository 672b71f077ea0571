#!/usr/bin/env python3
"""Load benchmark of meshgate against direct, nginx and HAProxy, and against
Caddy over HTTP/3 (issue 4).

    make bench          # full: 3 rounds, 10 s runs, pinned and unpinned (about 57 min)
    make bench-quick    # 1 round, 2 s runs, pinned only, fewer rows (about 80 s)
    python3 bench/run.py --help

Installs what it needs (Debian packages with apt-get when root, oha with
HTTP/3 with cargo into a cache dir), starts an nginx origin and every target on free
loopback ports, measures them interleaved round by round, stops them all,
and writes bench/results/latest.json and latest.md. See bench/README.md.
"""

import argparse
import dataclasses
import datetime
import json
import os
import resource
import shlex
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loadbench import procs, report, scenarios, targets, tools  # noqa: E402


@dataclasses.dataclass
class Plan:
    name: str
    rounds: int
    duration_s: int
    fixed_duration_s: int
    reload_duration_s: int
    pinnings: list
    fixed_pinnings: list
    saturation: list
    fixed: list
    # HTTP/3 (meshgate and Caddy, oha): closed-loop runs in these pinning
    # modes, open-loop runs at these rates (also over HTTP/2+TLS, the
    # baseline of the HTTP/3 CPU target) in `fixed_pinnings`.
    h3_pinnings: list = dataclasses.field(default_factory=lambda: ["pinned", "unpinned"])
    h3_fixed: list = dataclasses.field(default_factory=lambda: [1000, 5000])
    # Unary gRPC at fixed rates (pinned), for the gRPC pair and direct.
    grpc_fixed: list = dataclasses.field(default_factory=lambda: [1000, 5000])
    conns: int = 64
    threads: int = 2
    h2_streams: int = 10
    fixed_conns: int = 32
    idle_conns: int = 1000
    # Seconds every target sits without traffic before the idle rows: RSS
    # at idle is a process's settled state, not the moment its start-up
    # returned (meshgate lets go of its start-up pages a second or two
    # after its first requests; gateway/src/memory.rs).
    idle_wait_s: float = 5.0
    # One second of load on each target before the first timed run of a round.
    warm_up: bool = True
    # Resumed TLS handshakes (wrk) beside the full ones (openssl s_time).
    tls_resumption: bool = True
    # Idle plain keep-alive connections (beside the TLS ones, which are a
    # target): they need every TLS target restarted afterwards.
    plain_idle_conns: bool = True
    # Rows measured on some targets only, by "<scenario> <proto> <rate>"
    # ("fixed-rate http1 1000") or by scenario ("tls-handshake"); every
    # target when a row is not named.
    row_targets: dict = dataclasses.field(default_factory=dict)


FULL = Plan(
    name="full",
    rounds=3,
    duration_s=10,
    fixed_duration_s=10,
    reload_duration_s=10,
    pinnings=["pinned", "unpinned"],
    fixed_pinnings=["pinned"],
    saturation=scenarios.SATURATION,
    fixed=[("http1", 1000), ("http1", 5000), ("http2", 1000), ("http2", 5000)],
    h3_pinnings=["pinned", "unpinned"],
    h3_fixed=[1000, 5000],
)

QUICK = Plan(
    name="quick",
    rounds=1,
    duration_s=2,
    fixed_duration_s=2,
    reload_duration_s=3,
    pinnings=["pinned"],
    fixed_pinnings=["pinned"],
    saturation=[("http1", "wrk"), ("http2", "h2load")],
    fixed=[("http1", 1000), ("http1", 5000), ("http2", 5000)],
    # HTTP/3: pinned saturation and 1k rps only (a rate both targets
    # sustain even on a busy machine, so the verdicts mean something).
    h3_pinnings=["pinned"],
    h3_fixed=[1000],
    grpc_fixed=[1000],
    # Fewer idle connections: 1000 TLS handshakes from Python take seconds per target.
    idle_conns=200,
    idle_wait_s=3.0,
    warm_up=False,
    tls_resumption=False,
    plain_idle_conns=False,
    # Within 90 s: the fixed-rate and handshake rows only on the targets
    # the verdicts compare (the pair's added latency at 1k rps against
    # direct; the gateway's added latency at 5k against nginx's; handshakes
    # per core against nginx).
    row_targets={
        "fixed-rate http1 1000": ("direct", "meshgate-sidecar", "haproxy-pair"),
        "fixed-rate http1 5000": ("direct", "meshgate", "nginx"),
        "fixed-rate http2 5000": ("direct", "meshgate", "nginx"),
        "tls-handshake": ("meshgate", "nginx"),
    },
)


class Ctx:
    """What every measurement needs: paths, the origin, the plan, the CPUs."""

    def __init__(self, plan, workdir, meshgate, oha, log):
        self.plan = plan
        self.workdir = workdir
        self.meshgate = meshgate
        self.oha = oha
        self.log = log
        self.certs = None
        self.grpc_request = None
        self.origin = None
        self.loadgen_cpus = None


def build_kind(meshgate):
    """Which build the meshgate binary is: scripts/pgo-build.sh leaves the
    profile-guided one in target/pgo/release/."""
    parts = os.path.normpath(meshgate).split(os.sep)
    return "profile-guided release build (scripts/pgo-build.sh)" if parts[-3:-1] == ["pgo", "release"] \
        else "release build"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick plan, about 80 s (make bench-quick)")
    ap.add_argument("--rounds", type=int, help="override the plan's number of rounds (1-10)")
    ap.add_argument("--duration", type=int, help="override the seconds per closed-loop run (1-60)")
    ap.add_argument("--targets",
                    help="comma-separated subset of direct,meshgate,nginx,haproxy,meshgate-sidecar,"
                         "meshgate-sidecar-plain,meshgate-sidecar-grpc,haproxy-pair,caddy (caddy is measured only "
                         "over HTTP/3 and HTTP/2+TLS, meshgate-sidecar-grpc only with gRPC); default: all, without "
                         "meshgate-sidecar-plain and haproxy-pair in the quick plan")
    ap.add_argument("--meshgate", default=os.path.join(HERE, "..", "target", "release", "meshgate"),
                    help="meshgate binary (default: target/release/meshgate)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the generated configs and logs")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: rewrite latest.md (quick.md, full.md) from the JSON files")
    args = ap.parse_args()
    if args.report_only:
        for base in ("latest", "quick", "full"):
            json_path = os.path.join(args.out, f"{base}.json")
            if not os.path.exists(json_path):
                continue
            with open(json_path) as f:
                doc = json.load(f)
            with open(os.path.join(args.out, f"{base}.md"), "w") as f:
                f.write(report.markdown(doc["header"], doc["rows"], base))
        return

    plan = dataclasses.replace(QUICK if args.quick else FULL)
    if args.rounds is not None:
        plan.rounds = max(1, min(10, args.rounds))
    if args.duration is not None:
        plan.duration_s = max(1, min(60, args.duration))
        plan.fixed_duration_s = plan.duration_s
        plan.reload_duration_s = max(2, plan.duration_s)

    started = time.monotonic()

    def log(msg):
        print(f"[bench {time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    meshgate = os.path.abspath(args.meshgate)
    if not os.access(meshgate, os.X_OK):
        sys.exit(f"{meshgate} not found: build it first with `cargo build --release --bin meshgate --bin meshgate-sidecar`")
    tools.ensure_debian_tools(log)
    oha = tools.ensure_oha(log)

    # 1000 idle connections on both ends, plus the load generators' sockets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000 if hard == resource.RLIM_INFINITY else min(hard, 20000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    ncpu = len(os.sched_getaffinity(0))
    if ncpu < 2 and "pinned" in plan.pinnings:
        log("fewer than 2 CPUs: skipping the pinned mode")
        plan.pinnings = [m for m in plan.pinnings if m != "pinned"] or ["unpinned"]
        plan.fixed_pinnings = ["unpinned"]
    all_cpus = os.sched_getaffinity(0)
    cpu_a, cpu_b = sorted(all_cpus)[:2] if ncpu >= 2 else (0, 0)

    workdir = tempfile.mkdtemp(prefix="meshgate-bench-")
    ctx = Ctx(plan, workdir, meshgate, oha, log)

    def on_signal(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    if args.targets is None:
        # The plaintext pair only prices mTLS and the HAProxy pair only
        # scales the sidecar pair: left out of the quick plan, which must
        # stay within 90 s.
        args.targets = "direct,meshgate,nginx,haproxy,meshgate-sidecar,meshgate-sidecar-grpc,caddy" + (
            "" if args.quick else ",meshgate-sidecar-plain,haproxy-pair")
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    header = {
        "command": os.environ.get("BENCH_COMMAND") or shlex.join(["python3", "bench/run.py", *sys.argv[1:]]),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "plan": dataclasses.asdict(plan),
        "machine": tools.machine(),
        "versions": tools.versions(oha, meshgate),
        "git": _git_rev(),
        "loadavg_start": tools.loadavg(),
        "pinned_layout": {"origin_and_proxy_cpu": cpu_a, "load_generator_cpu": cpu_b},
        "settings": {
            "origin": "nginx, 1 worker, return 200 \"ok\", keep-alive",
            "meshgate": f"{build_kind(meshgate)}, run --threads 1 --watch-interval-ms 0, access_log off, "
                        "max_idle_per_endpoint 256, TLS listener min_version 1.3, "
                        "protocols http1 http2 http3 (Alt-Svc off)",
            "caddy": "GOMAXPROCS=1, admin off, no access log, servers protocols h1 h2 h3, TLS 1.3 only, "
                     "reverse_proxy with keepalive 5m and 256 idle connections per host",
            "http3": "oha --http-version 3 --insecure on the TLS port's UDP side; baseline oha --http2 on "
                     "the same listener's TCP side; no direct row (the nginx origin has no HTTP/3)",
            "nginx": "1 worker, access_log off, upstream keepalive 256, proxy_http_version 1.1, TLSv1.3",
            "haproxy": "-W master-worker, nbthread 1, http-reuse always, no log, ssl-min-ver TLSv1.3",
            "certificate": "self-signed ECDSA P-256 (openssl req -newkey ec)",
            "meshgate-sidecar": "client sidecar -> mTLS, HTTP/2 -> server sidecar -> origin; both release, "
                                "--threads 1, access_log off; figures are the pair's (RSS rows also per sidecar)",
            "haproxy-pair": "the sidecar pair's peer: two HAProxy processes (-W, nbthread 1, no log, http-reuse "
                            "always), mTLS 1.3 and HTTP/2 between them (ECDSA P-256 leaves of one CA, both sides "
                            "verified), HTTP/1.1 to the origin",
            "meshgate-sidecar-plain": "the same pair in permissive mesh mode, plaintext HTTP/2 (prior "
                                      "knowledge) between the sidecars: prices mTLS",
            "meshgate-sidecar-grpc": "the mTLS pair carrying unary gRPC calls (h2load -d / oha -D with one "
                                     "request frame, content-type application/grpc), its server sidecar "
                                     "speaking h2c to the origin's HTTP/2 port, which answers a static reply "
                                     "frame with grpc-status 0 as a trailer",
        },
    }
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "latest.json")
    rows = []
    try:
        ctx.certs = targets.make_certs(workdir)
        ctx.grpc_request = os.path.join(workdir, "grpc-request")
        with open(ctx.grpc_request, "wb") as f:
            f.write(scenarios.grpc_frame(b"\n\x05hello"))
        for rnd in range(plan.rounds):
            rows += run_round(ctx, rnd, wanted, (cpu_a, cpu_b), all_cpus)
            report.write_json(json_path + ".partial.tmp", header, rows)
    finally:
        procs.stop_all()
        if not args.keep_workdir:
            _rmtree(workdir)
        else:
            log(f"configs and logs kept in {workdir}")
    rows += not_measured_rows()
    header["loadavg_end"] = tools.loadavg()
    header["elapsed_s"] = round(time.monotonic() - started, 1)
    # latest.* is what the README links; <plan>.* keeps the last run of each
    # plan side by side (quick.md next to full.md).
    for base in ("latest", plan.name):
        report.write_json(os.path.join(args.out, f"{base}.json"), header, rows)
        with open(os.path.join(args.out, f"{base}.md"), "w") as f:
            f.write(report.markdown(header, rows, base))
    try:
        os.remove(json_path + ".partial.tmp")
    except OSError:
        pass
    log(f"wrote {args.out}/latest.json, latest.md ({plan.name}.json, {plan.name}.md) in {header['elapsed_s']:.0f} s")
    for what, need, got, verdict in report.targets_check(rows):
        print(f"  {what}: {got} (need {need}) -> {verdict.replace('*', '')}")


def run_round(ctx, rnd, wanted, layout, all_cpus):
    """One round: start the origin and every target fresh, measure each
    scenario on each target in turn (the order rotates from round to round
    so no target always goes first), stop everything."""
    plan, log = ctx.plan, ctx.log
    ctx.origin = targets.NginxOrigin()
    candidates = [targets.Direct(ctx.origin), targets.Meshgate(), targets.NginxProxy(), targets.Haproxy(),
                  targets.SidecarPair(), targets.SidecarPairPlain(), targets.SidecarPairGrpc(), targets.HaproxyPair(),
                  targets.Caddy()]
    chosen = [t for t in candidates if t.name in wanted]
    shift = rnd % len(chosen)
    order = chosen[shift:] + chosen[:shift]
    rows = []
    log(f"round {rnd + 1}/{plan.rounds}: starting origin and {', '.join(t.name for t in order)}")
    ctx.origin.start(ctx)
    try:
        started = []
        for t in order:
            try:
                t.start(ctx)
                started.append(t)
            except RuntimeError as e:
                # One target that cannot start (a port taken in the meantime,
                # a bad build) costs its rows in this round, not the run.
                t.stop()
                rows.append(scenarios.row(scenario="start", proto="none", mode="idle", target=t.name,
                                          round=rnd, status=f"failed: {e}"[:600]))
                _log_row(log, rows[-1])
        order = started

        # The HTTP/3 targets (meshgate, Caddy) take turns going first from
        # round to round on their own: rotating the whole list would let one
        # of two go first in most rounds.
        h3_order = [t for t in chosen if t.h3 and t in order]
        if h3_order:
            k = rnd % len(h3_order)
            h3_order = h3_order[k:] + h3_order[:k]

        def each(fn, *a, only_proxies=False, tls=False, h3=False, grpc=False, row=None):
            only = plan.row_targets.get(row)
            for t in (h3_order if h3 else order):
                if only is not None and t.name not in only:
                    continue
                if only_proxies and (t.name == "direct" or not t.reloadable):
                    continue
                if tls and not t.client_tls:
                    continue
                if t.h3_only and not h3 or h3 and not t.h3:
                    continue
                if t.grpc_only and not grpc or grpc and "grpc" not in t.ports:
                    continue
                r = fn(ctx, t, rnd, *a)
                if isinstance(r, scenarios.PendingRow):
                    pending.append(r)
                    continue
                rows.append(r)
                _log_row(log, r)

        # HTTP/3 rows whose oha still waits out a QUIC idle timeout; the
        # figures of the target were taken at the deadline (scenarios.quic_load).
        pending = []

        def collect():
            while pending:
                r = pending.pop(0).finish()
                rows.append(r)
                _log_row(log, r)

        # Started, and then idle for a while: every target at once.
        time.sleep(plan.idle_wait_s)
        for t in order:
            rows.append(scenarios.rss_idle(ctx, t, rnd))
            _log_row(log, rows[-1])
        if plan.plain_idle_conns:
            each(scenarios.idle_conns, False)
            # The TLS connections are counted on a fresh process: an
            # allocator that keeps what the plain connections used
            # (mimalloc, glibc's arenas) would serve the TLS ones from it,
            # and they would look nearly free.
            for t in order:
                if t.client_tls and t.name != "direct":
                    t.stop()
                    t.start(ctx)
            time.sleep(plan.idle_wait_s)
        each(scenarios.idle_conns, True, tls=True)
        if plan.warm_up:
            for t in order:
                scenarios.warm_up(ctx, t)

        for pinning in plan.pinnings:
            servers = ctx.origin.tree() + [p for t in order for p in t.tree()]
            if pinning == "pinned":
                procs.set_affinity(servers, {layout[0]})
                ctx.loadgen_cpus = {layout[1]}
            else:
                procs.set_affinity(servers, all_cpus)
                ctx.loadgen_cpus = None
            # HTTP/3 first in the block: a Caddy oha that lingers for the
            # QUIC idle timeout then waits while the other rows run.
            if pinning in plan.h3_pinnings:
                each(scenarios.quic_load, "saturation", "http3", pinning, h3=True)
            if pinning in plan.fixed_pinnings:
                for rate in plan.h3_fixed:
                    each(scenarios.quic_load, "fixed-rate", "http3", pinning, rate, h3=True)
                    each(scenarios.quic_load, "fixed-rate", "http2-tls", pinning, rate, h3=True)
            for proto, tool in plan.saturation:
                each(scenarios.saturation, pinning, proto, tool)
            each(scenarios.tls_handshake, pinning, tls=True, row="tls-handshake")
            if plan.tls_resumption:
                each(scenarios.tls_handshake, pinning, True, tls=True)
            if pinning in plan.fixed_pinnings:
                for proto, rate in plan.fixed:
                    each(scenarios.fixed_rate, pinning, proto, rate, row=f"fixed-rate {proto} {rate}")
            each(scenarios.grpc_saturation, pinning, grpc=True)
            if pinning in plan.fixed_pinnings:
                for rate in plan.grpc_fixed:
                    each(scenarios.grpc_fixed_rate, pinning, rate, grpc=True)
        # Last: it changes the proxies' configs.
        each(scenarios.reload_under_load, plan.pinnings[-1], only_proxies=True)
        collect()
    finally:
        # On an error, whatever is still pending is killed by procs.stop_all.
        for t in order:
            t.stop()
        ctx.origin.stop()
        ctx.loadgen_cpus = None
    return rows


def not_measured_rows():
    """Rows for what issue 4 asks but the product cannot do yet."""
    rows = []
    for t in targets.not_built_targets():
        for proto in t.protos:
            rows.append(scenarios.not_measured(t, "saturation", proto, "pinned"))
    return rows


def _log_row(log, r):
    if r["status"] != "ok":
        log(f"  {r['scenario']} {r['proto']} {r['mode']} {r['target']}: {r['status'][:200]}")
        return
    bits = [f"{k}={r[k]}" for k in ("rps", "cpu_us_per_req", "p50_ms", "p99_ms", "rss_mib", "errors")
            if r.get(k) is not None]
    if r.get("kib_per_conn") is not None:
        bits.append(f"kib_per_conn={r['kib_per_conn']}")
    tool = f" {r['tool']}" if r.get("tool") else ""
    log(f"  {r['scenario']} {r['proto']}{tool} {r['mode']} {r['target']}: {' '.join(bits)}")


def _git_rev():
    rc, out, _ = procs.run(["git", "-C", HERE, "describe", "--always", "--dirty"], timeout=10)
    return out.strip() if rc == 0 else None


def _rmtree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        procs.stop_all()
        sys.exit("interrupted; every process the benchmark started was stopped")
