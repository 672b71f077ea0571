#!/usr/bin/env bash
# Installs what meshgate needs on a Debian machine that has only the Rust
# toolchain, gcc and python3.
#   prereqs.sh build   build prerequisites (cmake for pingora's zlib-ng)
#   prereqs.sh test    build prerequisites + the real clients the tests use
# As root it installs with apt-get; otherwise it prints the exact command.
set -euo pipefail

mode="${1:-build}"
# command:package pairs
needs=(cmake:cmake)
if [[ "$mode" == "test" ]]; then
    needs+=(curl:curl nghttp:nghttp2-client h2load:nghttp2-client openssl:openssl)
fi

missing=()
for pair in "${needs[@]}"; do
    if ! command -v "${pair%%:*}" >/dev/null 2>&1; then
        missing+=("${pair#*:}")
    fi
done
# de-duplicate package names
if ((${#missing[@]} > 0)); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
fi

if ((${#missing[@]} == 0)); then
    exit 0
fi

if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "error: missing packages: ${missing[*]}" >&2
    echo "install them with:  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
