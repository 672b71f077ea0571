#!/bin/bash
# Instructions per proxied request, counted by callgrind: repeatable to the
# last digit, unlike timings on a shared machine (bench/README.md, "What
# the profiles say").
#
#   bench/callgrind.sh [h1|h2] [BINARY]
#
# Starts an nginx origin and the gateway (release build, --threads 1) under
# valgrind on free loopback ports, warms up, zeroes the counters, sends
# 20,000 keep-alive requests (oha over HTTP/1.1 on 16 connections, or
# h2load over h2c on 4 connections x 16 streams), and prints the count.
# Needs valgrind, nginx, oha and h2load (make bench installs the last three).
set -euo pipefail

mode=${1:-h1}
bin=${2:-target/release/meshgate}
n=20000
oha=$(command -v oha || echo "$HOME/.cache/meshgate-bench/oha+http3/bin/oha")
work=$(mktemp -d /tmp/meshgate-callgrind.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port)
port=$(free_port)
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
cat >"$work/meshgate.toml" <<EOF
[[listener]]
name = "plain"
address = "127.0.0.1:$port"
protocols = ["http1", "h2c"]

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
*) echo "usage: $0 [h1|h2] [BINARY]" >&2; exit 2 ;;
esac
"${load[@]}" >/dev/null 2>&1
callgrind_control --zero "$vg" >/dev/null 2>&1
"${load[@]}" >"$work/load.txt" 2>&1
callgrind_control --dump "$vg" >/dev/null 2>&1
total=$(callgrind_annotate "$work/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$mode: $total instructions for $n requests, $((total / n)) per request"
