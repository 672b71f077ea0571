#!/usr/bin/env bash
# `make demo`: run the meshgate appliance on its embedded default config,
# show that it answers over HTTP/1.1 and HTTP/2 (h2c), check the example
# configs, then keep running until Ctrl-C.
# Set DEMO_EXIT=1 to stop after the checks and DEMO_ADDR to move it off
# 127.0.0.1:8080 (both used by the test suite).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${MESHGATE_BIN:-target/release/meshgate}"
addr="${DEMO_ADDR:-127.0.0.1:8080}"
port="${addr##*:}"
log="$(mktemp -d)/meshgate.log"

if ! "$bin" --version >/dev/null; then
    echo "error: $bin is missing; run 'make demo' from the repository root" >&2
    exit 1
fi

echo "== checking the example configs"
"$bin" check config/examples/*.toml

echo "== starting meshgate on the embedded default config (log: $log)"
"$bin" run --listen "$addr" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "error: meshgate exited during start-up:" >&2
        cat "$log" >&2
        exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    sleep 0.1
done

fetch() {
    # Uses curl when present; falls back to python3's http.client so the
    # demo works on a machine with only the toolchain and python3.
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -w "%{http_code} %{http_version}" "$@"
    else
        python3 - "$addr" <<'PY'
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], timeout=5)
c.request("GET", "/")
r = c.getresponse()
print(r.status, "1.1", end="")
PY
    fi
}

echo "== GET http://$addr/ over HTTP/1.1: $(fetch "http://$addr/")"
if command -v curl >/dev/null 2>&1; then
    echo "== GET http://$addr/ over h2c:      $(fetch --http2-prior-knowledge "http://$addr/")"
fi
echo "== access log:"
grep '^{' "$log" | tail -n 2

if [[ "${DEMO_EXIT:-0}" == "1" ]]; then
    exit 0
fi
echo
echo "meshgate is serving its status page on http://$addr/ (Ctrl-C to stop)."
echo "Try a real config:  $bin run --config config/examples/edge.toml"
wait "$pid"
