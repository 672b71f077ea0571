#!/usr/bin/env python3
"""Instructions per request in each sidecar of the mTLS pair, by callgrind.

    python3 bench/callgrind_pair.py [--bin-dir DIR] [--requests N] [--keep DIR]

The sidecar pair's counterpart of bench/callgrind.sh: the nginx origin,
the appliance and the two sidecars as bench/run.py starts them (release
build, --threads 1), both sidecars under `valgrind --tool=callgrind`; oha
sends N HTTP/1.1 requests on 16 keep-alive connections to the client
sidecar as a warm-up, the counters are zeroed, the same load runs again
and each sidecar's count is divided by N. Repeatable to within a few
hundred instructions, unlike timings on a shared machine. With --keep the
two profiles stay in DIR (cg.client.out.1, cg.server.out.1) for
callgrind_annotate. Needs valgrind and what `make bench` installs.
"""

import argparse
import glob
import os
import shutil
import stat
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402
from loadbench import targets, tools  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(HERE, "..", "target", "release"),
                    help="directory with meshgate and meshgate-sidecar (default: target/release)")
    ap.add_argument("--requests", type=int, default=10000, help="requests per run (default 10000)")
    ap.add_argument("--keep", help="directory to keep the two profiles in")
    args = ap.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    bin_dir = os.path.abspath(args.bin_dir)
    for name in ("meshgate", "meshgate-sidecar"):
        if not os.access(os.path.join(bin_dir, name), os.X_OK):
            sys.exit(f"{bin_dir}/{name} is not an executable (cargo build --release, or --bin-dir)")
    if shutil.which("valgrind") is None:
        sys.exit("needs valgrind (apt-get install valgrind)")
    tools.ensure_debian_tools(log)
    oha = tools.ensure_oha(log)
    work = tempfile.mkdtemp(prefix="meshgate-callgrind-pair-")
    out = os.path.abspath(args.keep) if args.keep else work
    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "cg.*.out*")):
        os.remove(old)
    # The pair finds meshgate-sidecar beside meshgate: a directory with the
    # real meshgate and a meshgate-sidecar that runs the real one under
    # callgrind, its profile named by the side it plays.
    wrapped = os.path.join(work, "bin")
    os.makedirs(wrapped)
    os.symlink(os.path.join(bin_dir, "meshgate"), os.path.join(wrapped, "meshgate"))
    sidecar = os.path.join(wrapped, "meshgate-sidecar")
    with open(sidecar, "w") as f:
        f.write(f"""#!/bin/sh
side=server
for a in "$@"; do [ "$a" = bench-client ] && side=client; done
exec valgrind --tool=callgrind --callgrind-out-file={out}/cg.$side.out \\
    {os.path.join(bin_dir, "meshgate-sidecar")} "$@"
""")
    os.chmod(sidecar, stat.S_IRWXU)

    ctx = bench.Ctx(bench.QUICK, work, os.path.join(wrapped, "meshgate"), oha, log)
    ctx.certs = targets.make_certs(work)
    ctx.origin = targets.NginxOrigin()
    pair = targets.SidecarPair()
    try:
        ctx.origin.start(ctx)
        pair.start(ctx)
        load = [oha, "--no-tui", "-n", str(args.requests), "-c", "16", "--http-version", "1.1",
                "-H", f"Host: {pair.host}", f"http://127.0.0.1:{pair.ports['http1']}/"]
        subprocess.run(load, capture_output=True, timeout=900, check=True)
        pids = [str(pair.proc.pid), str(pair.server.pid)]
        for pid in pids:
            subprocess.run(["callgrind_control", "--zero", pid], capture_output=True, timeout=60)
        r = subprocess.run(load, capture_output=True, text=True, timeout=900, check=True)
        for pid in pids:
            subprocess.run(["callgrind_control", "--dump", pid], capture_output=True, timeout=60)
        if f"[200] {args.requests} responses" not in r.stdout:
            sys.exit(f"not every request got a 200:\n{r.stdout}")
    finally:
        pair.stop()
        ctx.origin.stop()
    for side in ("client", "server"):
        dumps = sorted(glob.glob(os.path.join(out, f"cg.{side}.out.*")))
        if not dumps:
            sys.exit(f"no profile from the {side} sidecar")
        text = subprocess.run(["callgrind_annotate", dumps[-1]], capture_output=True, text=True,
                              timeout=300).stdout
        total = next(int(line.split()[0].replace(",", "")) for line in text.splitlines()
                     if "PROGRAM TOTALS" in line)
        kept = f" ({dumps[-1]})" if args.keep else ""
        print(f"{side} sidecar: {total // args.requests} instructions per request{kept}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
