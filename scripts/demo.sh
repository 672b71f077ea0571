#!/usr/bin/env bash
# `make demo`: the seed shop of config/examples/seed.toml in the mesh, with a
# guided tour. Checks the example configs, then runs `meshgate demo`: the
# appliance, five small demo services each behind its own meshgate-sidecar,
# and a tour of what the mesh does with their traffic (README.md, "The
# demo"); then keeps everything running until Ctrl-C.
#
# DEMO_EXIT=1      stop after the tour; exit 1 if a step did not show what
#                  it should (the test suite and CI use this)
# DEMO_ADDR        move the gateway's plaintext listener off 127.0.0.1:8080
# DEMO_DIR         the demo's keys, certificates, config and logs
#                  (default target/meshgate-demo, rewritten on every start)
# MESHGATE_BIN     use this meshgate binary (meshgate-sidecar must be next
#                  to it) instead of building target/release/meshgate
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${MESHGATE_BIN:-}" ]]; then
    # `make demo` has built both already, which makes this a no-op; run on
    # its own, the script builds what it runs.
    ./scripts/prereqs.sh build
    "${CARGO:-cargo}" build --release --bin meshgate --bin meshgate-sidecar
fi
bin="${MESHGATE_BIN:-target/release/meshgate}"
addr="${DEMO_ADDR:-127.0.0.1:8080}"
dir="${DEMO_DIR:-target/meshgate-demo}"

if ! "$bin" --version >/dev/null; then
    echo "error: $bin is missing; run 'make demo' from the repository root" >&2
    exit 1
fi
if [[ ! -x "$(dirname "$bin")/meshgate-sidecar" ]]; then
    echo "error: $(dirname "$bin")/meshgate-sidecar is missing; build it next to meshgate" >&2
    exit 1
fi

echo "== checking the example configs"
"$bin" check config/examples/*.toml
echo

args=(demo --dir "$dir" --listen "$addr")
if [[ "${DEMO_EXIT:-0}" == "1" ]]; then
    args+=(--exit-after-tour)
fi
# exec: Ctrl-C and SIGTERM go straight to meshgate, which stops its children.
exec "$bin" "${args[@]}"
