#!/usr/bin/env python3
"""The sidecar pair's added latency at a fixed rate, alone and repeated.

    python3 bench/pair_latency.py [--meshgate BIN] [--rounds N] [--rate R]
                                  [--duration S] [--plain] [--haproxy]

A focused look at one row of `make bench`: the same nginx origin, the same
mTLS sidecar pair (and with --plain the plaintext pair) as bench/run.py
starts them, pinned the same way (origin and sidecars on CPU 0, oha on CPU
1), then oha over HTTP/1.1 at `--rate` requests/s with
`--latency-correction` and 32 connections, alternating direct and each pair
for `--rounds` rounds. With --haproxy also the peer pair (`haproxy-pair`:
two HAProxy processes with mTLS and HTTP/2 between them). Prints p50 and p99 per round and what each pair
adds to direct's, and each sidecar's CPU time and context switches (all
its threads, from /proc) per request. Writes no results file: it is for
profiling a change, not for the README's table. Needs what `make bench`
installs.
"""

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402
from loadbench import generators, procs, targets, tools  # noqa: E402

CONNS = 32


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshgate", default="target/release/meshgate",
                    help="meshgate binary; meshgate-sidecar is taken from the same directory")
    ap.add_argument("--rounds", type=int, default=3, choices=range(1, 11), metavar="1-10")
    ap.add_argument("--rate", type=int, default=1000, help="requests per second (default 1000)")
    ap.add_argument("--duration", type=int, default=10, choices=range(1, 61), metavar="1-60",
                    help="seconds per run (default 10)")
    ap.add_argument("--plain", action="store_true", help="also the plaintext pair")
    ap.add_argument("--haproxy", action="store_true", help="also the HAProxy mTLS pair, the peer")
    args = ap.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    meshgate = os.path.abspath(args.meshgate)
    if not os.access(meshgate, os.X_OK):
        sys.exit(f"{meshgate} is not an executable (cargo build --release, or --meshgate)")
    tools.ensure_debian_tools(log)
    oha = tools.ensure_oha(log)
    work = tempfile.mkdtemp(prefix="meshgate-pair-latency-")
    ctx = bench.Ctx(bench.QUICK, work, meshgate, oha, log)
    ctx.certs = targets.make_certs(work)
    ctx.origin = targets.NginxOrigin()
    pairs = {"mtls": targets.SidecarPair()}
    if args.plain:
        pairs["plain"] = targets.SidecarPairPlain()
    if args.haproxy:
        pairs["haproxy"] = targets.HaproxyPair()
    started = []
    try:
        ctx.origin.start(ctx)
        started.append(ctx.origin)
        for pair in pairs.values():
            pair.start(ctx)
            started.append(pair)
        # The bench's pinned layout: servers on the first CPU, oha on the
        # second.
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            sys.exit("needs two CPUs: one for the servers, one for oha")
        procs.set_affinity([p for t in started for p in t.tree()], {cpus[0]})

        def measure(url, host, sidecars=()):
            """p50 and p99, and per sidecar its CPU µs and context switches
            (all its threads) per request while the run went."""
            trees = [s.tree() for s in sidecars]
            before = [(procs.cpu_seconds(t), procs.context_switches(t)) for t in trees]
            r = generators.oha(oha, url, args.rate, args.duration, CONNS, cpus={cpus[1]}, host=host)
            n = max(r["requests"], 1)
            per_req = [((procs.cpu_seconds(t) - c) * 1e6 / n, (procs.context_switches(t) - x) / n)
                       for t, (c, x) in zip(trees, before)]
            return r["p50_ms"], r["p99_ms"], per_req

        direct_url = f"http://127.0.0.1:{ctx.origin.ports['http1']}/"
        for n in range(1, args.rounds + 1):
            d50, d99, _ = measure(direct_url, None)
            line = f"round {n}: direct p50 {d50:.3f} p99 {d99:.3f} ms"
            costs = []
            for name, pair in pairs.items():
                p50, p99, per_req = measure(f"http://127.0.0.1:{pair.ports['http1']}/", pair.host,
                                            (pair.proc, pair.server))
                line += (f" | {name} p50 {p50:.3f} (+{p50 - d50:.3f})"
                         f" p99 {p99:.3f} (+{p99 - d99:.3f})")
                costs.append(f"{name} " + ", ".join(
                    f"{side} {us:.0f} µs {cs:.2f} switches"
                    for side, (us, cs) in zip(("client", "server"), per_req)))
            print(line, flush=True)
            print(f"  per request: {'; '.join(costs)}", flush=True)
    finally:
        for t in reversed(started):
            t.stop()


if __name__ == "__main__":
    main()
