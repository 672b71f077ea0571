#!/usr/bin/env bash
# Installs what meshgate needs on a Debian machine that has only the Rust
# toolchain, gcc and python3.
#   prereqs.sh build   build prerequisites (cmake for pingora's zlib-ng)
#   prereqs.sh test    build prerequisites + the real clients the tests use:
#                      curl, nghttp/h2load, openssl (test certificates),
#                      prometheus (scrapes the admin API in one test) and
#                      the Python packages grpcio, websockets, PyYAML and
#                      opentelemetry-proto;
#                      for the packaging test debootstrap, dpkg-dev,
#                      systemd (systemd-analyze) and iproute2
# As root it installs with apt-get; otherwise it prints the exact command.
set -euo pipefail

mode="${1:-build}"
# command:package pairs
needs=(cmake:cmake)
# Python modules the tests import, and the pip requirements that provide them
# (websockets 13 brought the `websockets.asyncio` API the helpers use).
# PyYAML: the packaging test parses packaging/compose.yaml.
# aioquic: the HTTP/3 client of the HTTP/3 tests (tests/py/h3_client.py).
# opentelemetry-proto (with protobuf): the OTLP receiver of the tracing test
# decodes exported spans with the official generated classes.
# h2 (with hpack): the HTTP/2 origin that reports how each header field
# arrived (tests/py/h2_origin.py).
py_modules="grpc, websockets.asyncio.client, yaml, aioquic.h3.connection, opentelemetry.proto.collector.trace.v1.trace_service_pb2, h2.connection, hpack"
py_requirements=(grpcio "websockets>=13" PyYAML "aioquic>=1.2" opentelemetry-proto "h2>=4")
need_py=0
if [[ "$mode" == "test" ]]; then
    needs+=(curl:curl nghttp:nghttp2-client h2load:nghttp2-client openssl:openssl prometheus:prometheus)
    # The packaging test (tests/packaging/run.sh): a fresh Debian root, the
    # package tools, systemd-analyze for the units, ip for a private loopback.
    needs+=(debootstrap:debootstrap dpkg-shlibdeps:dpkg-dev systemd-analyze:systemd ip:iproute2)
    if ! python3 -c "import ${py_modules}" >/dev/null 2>&1; then
        need_py=1
        if ! python3 -m pip --version >/dev/null 2>&1; then
            needs+=(:python3-pip)
        fi
    fi
fi

missing=()
for pair in "${needs[@]}"; do
    cmd="${pair%%:*}"
    if [[ -z "$cmd" ]] || ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("${pair#*:}")
    fi
done
# de-duplicate package names
if ((${#missing[@]} > 0)); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
fi

if ((${#missing[@]} > 0)); then
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
fi

if ((need_py)); then
    echo "installing Python packages: ${py_requirements[*]}"
    pip=(python3 -m pip install --quiet --disable-pip-version-check)
    # A distribution's own python3 refuses pip installs outside a virtual
    # environment (PEP 668); the test machine's is ours to change.
    if ! "${pip[@]}" "${py_requirements[@]}" 2>/dev/null; then
        "${pip[@]}" --break-system-packages "${py_requirements[@]}"
    fi
    if ! python3 -c "import ${py_modules}"; then
        echo "error: python3 still cannot import ${py_modules}" >&2
        exit 1
    fi
fi
