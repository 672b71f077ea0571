"""Checks how scripts/pgo-order.py turns the training's profiles into the
profile-guided build's link order.

Run by `cargo test -p meshgate-bench` (tests/harness.rs). The counts are
written out here, and `llvm-profdata show`'s output is given as text: the
tool comes with rustup's llvm-tools component, which `make test` does not
install, and an instrumented build and its training take many minutes.
What decides which functions lead the order is the code below.
"""

import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "pgo_order", os.path.join(HERE, "..", "..", "scripts", "pgo-order.py"))
pgo_order = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pgo_order)

SHOW = """Counters:
  _ZN4main4hot17h01E:
    Hash: 0x0a4d0ad3efffffff
    Counters: 2
    Block counts: [4000, 120]
  crate.abc-cgu.0;_RNvCs1_4main4dup:
    Hash: 0x0a4d0ad3efffffff
    Counters: 1
    Block counts: [30]
  crate.abc-cgu.1;_RNvCs1_4main4dup:
    Hash: 0x0a4d0ad3efffffff
    Counters: 1
    Block counts: [50]
  _ZN4main5never17h02E:
    Hash: 0x01b6bfe695af1ee8
    Counters: 1
    Block counts: [0]
Instrumentation level: IR
"""

# One process's profile as the script reads it: each function's largest
# counter; a local function of the same name in two codegen units counts
# once, with the larger; a function that never ran is left out.
pgo_order.run = lambda argv: SHOW
counts = pgo_order.profile_counts("llvm-profdata", "1234.profraw")
assert counts == {"_ZN4main4hot17h01E": 4000, "_RNvCs1_4main4dup": 50}, counts

# Three processes: a client sidecar, a server sidecar, and a second client.
client = {"runtime": 900, "tls": 500, "outbound": 300, "h1_server": 800}
server = {"runtime": 700, "tls": 400, "inbound": 600, "h1_client": 650}
client2 = {"runtime": 50, "tls": 40, "outbound": 20, "h2_server": 30}
order = pgo_order.rank([client, server, client2])
# What all three ran leads, by count; then what two ran (both clients);
# then each process's own, one process at a time, by count. Ranking by
# count alone would have put the server's inbound path between the
# client's functions.
assert order == ["runtime", "tls", "outbound", "h1_server", "h1_client", "inbound", "h2_server"], order
assert sorted(order) == sorted(set(client) | set(server) | set(client2))

# One process: by count alone.
assert pgo_order.rank([{"a": 1, "b": 3, "c": 2}]) == ["b", "c", "a"]

print("ok")
