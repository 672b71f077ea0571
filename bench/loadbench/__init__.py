"""Load benchmarks of meshgate against its peers (issue 4).

`bench/run.py` is the entry point (`make bench`, `make bench-quick`). This
package starts an origin and every target on free loopback ports, drives
them with wrk, h2load and oha, reads CPU time and memory from /proc, and
writes `bench/results/latest.json` and `latest.md`.

It does not tune the machine, and it never talks to anything but
127.0.0.1. Every process it starts is in its own session and is stopped
when the run ends, whether it ends normally, on an error or on Ctrl-C.
"""
