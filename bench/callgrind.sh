#!/bin/bash
# Instructions per proxied request, counted by callgrind: repeatable to the
# last digit, unlike timings on a shared machine (bench/README.md, "What
# the profiles say").
#
#   bench/callgrind.sh [h1|h2|h2tls|h3] [BINARY]
#
# Starts an nginx origin and the gateway (release build, --threads 1) under
# valgrind on free loopback ports, warms up, zeroes the counters, sends
# keep-alive requests and prints the count: h1, 20,000 requests from oha
# over HTTP/1.1 on 16 connections; h2, 20,000 from h2load over h2c on 4
# connections x 16 streams; h2tls and h3, 5,000 from oha on 16
# connections over HTTP/2 with TLS 1.3, or HTTP/3, to the same TLS
# listener (self-signed ECDSA P-256 certificate): the pair the HTTP/3 CPU
# target compares. Needs valgrind, nginx, openssl, oha and h2load (make
# bench installs the last three). With CALLGRIND_OUT=FILE the profile is
# kept there, for callgrind_annotate.
set -euo pipefail

mode=${1:-h1}
bin=${2:-target/release/meshgate}
case $mode in
h1 | h2) n=20000 ;;
h2tls | h3) n=5000 ;;
*) echo "usage: $0 [h1|h2|h2tls|h3] [BINARY]" >&2; exit 2 ;;
esac
oha=$(command -v oha || echo "$HOME/.cache/meshgate-bench/oha+http3/bin/oha")
work=$(mktemp -d /tmp/meshgate-callgrind.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port)
port=$(free_port)
tls_port=$(free_port)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work;
  proxy_temp_path $work;
  fastcgi_temp_path $work;
  uwsgi_temp_path $work;
  scgi_temp_path $work;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$origin; location / { return 200 "hello from origin\n"; } }
}
EOF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat >"$work/meshgate.toml" <<EOF
[[listener]]
name = "plain"
address = "127.0.0.1:$port"
protocols = ["http1", "h2c"]

[[listener]]
name = "tls"
address = "127.0.0.1:$tls_port"
protocols = ["http1", "http2", "http3"]
tls = { certificates = [{ cert = "$work/cert.pem", key = "$work/key.pem" }], min_version = "1.3" }

[[route]]
name = "origin"
service = "origin"

[[service]]
name = "origin"
endpoints = [{ address = "127.0.0.1:$origin" }]

[observability]
access_log = { format = "off" }
EOF

nginx -c "$work/nginx.conf" &
pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$bin" run --config "$work/meshgate.toml" --threads 1 >"$work/meshgate.log" 2>&1 &
vg=$!
pids+=($vg)
for _ in $(seq 1 120); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    kill -0 "$vg" 2>/dev/null || { cat "$work/meshgate.log"; exit 1; }
    sleep 0.5
done

case $mode in
h1) load=("$oha" --no-tui -n "$n" -c 16 --http-version 1.1 "http://127.0.0.1:$port/") ;;
h2) load=(h2load -n "$n" -c 4 -m 16 "http://127.0.0.1:$port/") ;;
h2tls) load=("$oha" --no-tui -n "$n" -c 16 --insecure --http-version 2 "https://127.0.0.1:$tls_port/") ;;
h3) load=("$oha" --no-tui -n "$n" -c 16 --insecure --http-version 3 "https://127.0.0.1:$tls_port/") ;;
esac
"${load[@]}" >/dev/null 2>&1
callgrind_control --zero "$vg" >/dev/null 2>&1
"${load[@]}" >"$work/load.txt" 2>&1
callgrind_control --dump "$vg" >/dev/null 2>&1
total=$(callgrind_annotate "$work/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
if [ -n "${CALLGRIND_OUT:-}" ]; then cp "$work/cg.out.1" "$CALLGRIND_OUT"; fi
echo "$mode: $total instructions for $n requests, $((total / n)) per request"
