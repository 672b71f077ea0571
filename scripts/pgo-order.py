#!/usr/bin/env python3
"""Link order for a profile-guided binary: the functions its training ran.

    scripts/pgo-order.py PROFILES INSTRUMENTED_BIN FINAL_BIN ORDER_FILE
    scripts/pgo-order.py --check ORDER_FILE LINKED_BIN

scripts/pgo-build.sh calls this after the optimized build. Of a release
binary's 14 MB of code, a sidecar runs about 4 MB, but those functions are
spread over the whole `.text`, and the kernel maps a faulting page's cached
neighbours with it (64 KiB around it), so nearly all of the code ends up in
every process's RSS. Listing the functions the training ran first, for
lld's --symbol-ordering-file, puts them side by side at the start of
`.text`, so what a process runs is what it maps.

- PROFILES: the training's .profraw files, one per process. Each holds
  the build id of the binary that wrote it; only INSTRUMENTED_BIN's are
  read (the gateway and the sidecar run different code, so each gets its
  own order). The counts start when a process's start-up has settled
  (gateway/src/memory.rs), so start-up's own loops do not rank among the
  request path.
- FINAL_BIN: the profile-guided binary, linked once. The order must name
  its symbols as that link wrote them: ThinLTO renames the local functions
  it promotes (`name.llvm.123`), which the profile knows without the suffix.
- ORDER_FILE: one symbol per line: what every process ran first, then
  what fewer processes ran, one set of processes at a time, the most often
  run first within each (`rank`).

--check reads the binary linked with the order and fails unless it holds
every listed symbol at ascending addresses: a renamed symbol is only a
warning to the linker, and the build would silently lose its order.
"""

import collections
import os
import re
import subprocess
import sys


def llvm_tool(name):
    host = re.search(r"^host: (\S+)", run(["rustc", "-vV"]), re.M).group(1)
    sysroot = run(["rustc", "--print", "sysroot"]).strip()
    return os.path.join(sysroot, "lib", "rustlib", host, "bin", name)


def run(argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def build_id(binary):
    out = run([llvm_tool("llvm-readobj"), "--notes", binary])
    m = re.search(r"Build ID: ([0-9a-f]+)", out)
    if not m:
        sys.exit(f"pgo-order: {binary} has no build id")
    return m.group(1)


def profile_counts(profdata, path):
    """{function name: its largest counter} for the functions that ran.
    Local functions are named `file;symbol` in the profile."""
    counts = {}
    name = None
    for line in run([profdata, "show", "--all-functions", "--counts", path]).splitlines():
        if line.startswith("  ") and not line.startswith("   ") and line.endswith(":"):
            name = line.strip()[:-1].rsplit(";", 1)[-1]
        elif name and line.startswith("    Block counts:"):
            top = max((int(n) for n in re.findall(r"\d+", line)), default=0)
            if top:
                counts[name] = max(top, counts.get(name, 0))
            name = None
    return counts


def function_symbols(binary):
    """(address, name) of the binary's function symbols."""
    out = []
    for line in run([llvm_tool("llvm-nm"), "--defined-only", binary]).splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tTwW":
            out.append((int(fields[0], 16), fields[2]))
    return out


def check(order, binary):
    address = {name: a for a, name in function_symbols(binary)}
    with open(order) as f:
        listed = f.read().split()
    missing = [s for s in listed if s not in address]
    if missing:
        sys.exit(f"pgo-order: {len(missing)} of {len(listed)} symbols in {order} are not in {binary}, "
                 f"for example {missing[0]}")
    at = [address[s] for s in listed]
    # Functions LLVM found identical share one body under several names:
    # a name may sit at a body already placed for an earlier one.
    seen, top, behind = set(), 0, 0
    for a in at:
        if a < top and a not in seen:
            behind += 1
        seen.add(a)
        top = max(top, a)
    if behind:
        sys.exit(f"pgo-order: {binary} does not follow {order}: {behind} symbols sit before the one listed before them")
    print(f"pgo-order: {os.path.basename(binary)} holds its {len(listed)} listed functions in "
          f"the first {(top - min(at, default=0)) / 2**20:.1f} MiB of its code", file=sys.stderr)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--check":
        return check(sys.argv[2], sys.argv[3])
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    profiles, instrumented, final, order = sys.argv[1:]
    profdata = llvm_tool("llvm-profdata")
    want = build_id(instrumented)
    runs = []
    for entry in sorted(os.listdir(profiles)):
        path = os.path.join(profiles, entry)
        if entry.endswith(".profraw") and want in run([profdata, "show", "--binary-ids", path]):
            runs.append(profile_counts(profdata, path))
    if not runs:
        sys.exit(f"pgo-order: no profile in {profiles} was written by {instrumented}")
    ranked = rank(runs)

    # The final binary's function symbols, by their name in the profile.
    symbols = collections.defaultdict(list)
    for _, name in function_symbols(final):
        symbols[re.sub(r"\.llvm\.\d+$", "", name)].append(name)
    listed = [s for name in ranked for s in symbols.get(name, ())]
    with open(order, "w") as f:
        f.write("".join(s + "\n" for s in listed))
    print(f"pgo-order: {len(ranked)} functions ran in {len(runs)} processes of "
          f"{os.path.basename(instrumented)}'s training; "
          f"{len(listed)} symbols of {os.path.basename(final)} listed in {order}", file=sys.stderr)


def rank(runs):
    """The functions that ran, given {function: count} per process: those
    every process ran first, then those fewer processes ran, each set of
    processes together, and by count within it. A process's functions then
    sit in fewer places than when all are ranked by count alone, which
    interleaves what different processes run (a client sidecar's outbound
    path and a server sidecar's inbound one)."""
    counts = collections.Counter()
    ran_in = collections.defaultdict(set)
    for i, one in enumerate(runs):
        for name, n in one.items():
            counts[name] = max(counts[name], n)
            ran_in[name].add(i)
    return sorted(counts, key=lambda name: (-len(ran_in[name]), sorted(ran_in[name]), -counts[name], name))


if __name__ == "__main__":
    main()
