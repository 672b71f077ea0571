#!/usr/bin/env bash
# Runs the whole test suite and ends with one summary line,
# "tests: N passed, N failed", added up over every test binary (cargo prints
# one result line per binary, the last of which is often an empty doc-test
# run). The exit status is cargo's.
set -uo pipefail
cd "$(dirname "$0")/.."

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

read -r passed failed < <(awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) p += $(i - 1)
            if ($(i) ~ /^failed;?$/) f += $(i - 1)
        }
    }
    END { print p + 0, f + 0 }' "$log")
echo
echo "tests: ${passed} passed, ${failed} failed"
if [[ "$status" == 0 && "$passed" == 0 ]]; then
    echo "error: no test ran" >&2
    exit 1
fi
exit "$status"
