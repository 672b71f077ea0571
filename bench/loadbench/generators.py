"""Load generators: wrk, h2load and oha, run with a hard time limit and parsed.

Each function returns a dict with `requests` (completed), `rps`, `errors`
and, where the tool reports them, `p50_ms`, `p90_ms`, `p99_ms`. A tool that
fails or is killed raises `LoadError` with the tail of its output.

Closed-loop latencies (wrk, h2load) are kept for reference only: they
suffer from coordinated omission. The latency figures the report compares
come from oha at a fixed rate with `--latency-correction`.
"""

import json
import urllib.parse
import re

from . import procs


class LoadError(RuntimeError):
    pass


def _ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


# What makes a POST a gRPC call.
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def _host_args(tool, host):
    """Arguments that make wrk or h2load name `host` as the request's
    authority instead of the URL's (the sidecar routes by it): a Host
    header for wrk, the :authority pseudo-header for h2load. h2load makes
    its HTTP/1.1 Host header from :authority; given a `Host` header it
    sends two, and a request with two Host headers gets a 400."""
    if host is None:
        return []
    if tool == "h2load":
        return ["-H", f":authority: {host}"]
    return ["-H", f"Host: {host}"]


def wrk(url, conns, threads, duration_s, cpus=None, close=False, host=None):
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration_s}s", "--latency", "--timeout", "5s"]
    argv += _host_args("wrk", host)
    if close:
        # One request per connection: every request is a new TCP (and TLS) handshake.
        argv += ["-H", "Connection: close"]
    argv.append(url)
    rc, out, err = procs.run(argv, timeout=duration_s + 30, cpus=cpus)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if rc != 0 or not m:
        raise LoadError(f"wrk failed (rc {rc}): {(out + err)[-800:]}")
    requests = int(m.group(1))
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    errors = 0
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = {}
    if s:
        socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, s.groups())))
        errors += sum(socket_errors.values())
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        errors += int(n.group(1))
    pct = {}
    for p, v, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        pct[p] = _ms(v, unit)
    return {
        "tool": "wrk",
        "requests": requests,
        "rps": rps,
        "errors": errors,
        "socket_errors": socket_errors,
        "p50_ms": pct.get("50"),
        "p90_ms": pct.get("90"),
        "p99_ms": pct.get("99"),
    }


def s_time(port, clients, duration_s, cpus=None):
    """Full TLS handshakes: `clients` copies of `openssl s_time -new`, each
    connecting over and over for `duration_s`, with a new session every
    time (no resumption; wrk resumes TLS sessions), sending
    `GET / HTTP/1.0` and reading the answer until the server closes."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-www", "/",
            "-time", str(duration_s)]
    running = [procs.Client(argv, cpus=cpus) for _ in range(clients)]
    requests, per_conn = 0, []
    failure = None
    for c in running:
        rc, out, err = c.finish(duration_s + 30)
        m = re.search(r"(\d+) connections in [\d.]+ real seconds, (\d+) bytes read per connection", out)
        if rc != 0 or not m:
            failure = failure or f"openssl s_time failed (rc {rc}): {(out + err)[-800:]}"
            continue
        requests += int(m.group(1))
        per_conn.append(int(m.group(2)))
    if failure:
        raise LoadError(failure)
    # A connection that ended before its answer reads nothing.
    if not requests or min(per_conn) == 0:
        raise LoadError(f"openssl s_time read no answers ({requests} connections)")
    return {
        "tool": "openssl-s_time",
        "requests": requests,
        "rps": requests / duration_s,
        "errors": 0,
        "bytes_per_conn": min(per_conn),
        "p50_ms": None,
        "p90_ms": None,
        "p99_ms": None,
    }


def h2load(url, conns, threads, duration_s, streams, h1=False, cpus=None, host=None, grpc=None):
    """h2load closed loop; with `grpc` (a file holding one gRPC request
    frame) every request is a unary gRPC call: POST of that frame with the
    gRPC headers."""
    argv = ["h2load", f"-t{threads}", f"-c{conns}", f"-m{streams}", "-D", str(duration_s)]
    argv += _host_args("h2load", host)
    if grpc:
        argv += ["-d", grpc] + [a for h in GRPC_HEADERS for a in ("-H", h)]
    if h1:
        argv.append("--h1")
    argv.append(url)
    rc, out, err = procs.run(argv, timeout=duration_s + 30, cpus=cpus)
    fin = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", out)
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if rc != 0 or not fin or not req:
        raise LoadError(f"h2load failed (rc {rc}): {(out + err)[-800:]}")
    total, started, done, ok, failed, errored, timeout = map(int, req.groups())
    return {
        "tool": "h2load-h1" if h1 else "h2load-grpc" if grpc else "h2load",
        "requests": ok,
        "rps": float(fin.group(3)),
        # h2load's "failed" already includes the errored and timed-out
        # requests and those answered with a status other than 2xx/3xx.
        "errors": failed,
        "p50_ms": None,
        "p90_ms": None,
        "p99_ms": None,
    }


def _oha_argv(binary, url, rate, duration_s, conns, http_version, host, grpc=None):
    argv = [
        binary, "--no-tui", "--output-format", "json",
        "-z", f"{duration_s}s", "-c", str(conns), "--insecure",
        # Let the requests in flight at the deadline finish instead of counting them as errors.
        "--wait-ongoing-requests-after-deadline",
    ]
    if rate is not None:
        # Open loop: latency measured from each request's scheduled start
        # (coordinated-omission correction).
        argv += ["--latency-correction", "-q", str(rate)]
    if http_version != "1.1":
        argv += ["--http-version", http_version]
    if grpc:
        argv += ["-m", "POST", "-D", grpc] + [a for h in GRPC_HEADERS for a in ("-H", h)]
    if host is not None:
        # oha's Host header would differ from its HTTP/2 :authority (a
        # malformed request meshgate refuses); name the host in the URL
        # and point the connection at the real address instead.
        port = urllib.parse.urlsplit(url).port
        url = url.replace("127.0.0.1", host, 1)
        argv += ["--connect-to", f"{host}:{port}:127.0.0.1:{port}"]
    argv.append(url)
    return argv


def _oha_parse(rc, out, err, duration_s=None):
    try:
        doc = json.loads(out)
    except ValueError:
        raise LoadError(f"oha failed (rc {rc}): {(out + err)[-800:]}") from None
    codes = doc.get("statusCodeDistribution") or {}
    ok = sum(n for code, n in codes.items() if 200 <= int(code) < 400)
    bad = sum(n for code, n in codes.items() if not 200 <= int(code) < 400)
    # oha cancels the requests still in flight when the duration ends (some
    # remain with HTTP/2 even with -w); they are not the target's errors.
    kinds = doc.get("errorDistribution") or {}
    errs = sum(n for kind, n in kinds.items() if "aborted due to deadline" not in kind)
    lat = doc.get("latencyPercentiles") or {}

    def ms(key):
        v = lat.get(key)
        return None if v is None else v * 1000.0

    rps = doc["summary"].get("requestsPerSec")
    if duration_s:
        # oha divides by its whole run time, which over HTTP/3 can include
        # waiting out the QUIC idle timeout after the last request.
        rps = ok / float(duration_s)
    return {
        "tool": "oha",
        "requests": ok,
        "rps": rps,
        "errors": bad + errs,
        "error_kinds": kinds,
        "p50_ms": ms("p50"),
        "p90_ms": ms("p90"),
        "p99_ms": ms("p99"),
    }


def oha(binary, url, rate, duration_s, conns, http2=False, cpus=None, host=None, http_version=None,
        grpc=None):
    """oha for `duration_s`: open loop at `rate` requests/s with
    `--latency-correction`, or closed loop when `rate` is None. With `grpc`
    (a file holding one gRPC request frame), unary gRPC calls over HTTP/2."""
    version = http_version or ("2" if http2 or grpc else "1.1")
    argv = _oha_argv(binary, url, rate, duration_s, conns, version, host, grpc)
    rc, out, err = procs.run(argv, timeout=duration_s + 30, cpus=cpus)
    return _oha_parse(rc, out, err)


# oha over HTTP/3 waits, after its last request, until each QUIC connection
# is closed; a quinn server (meshgate) closes it at once, but quic-go
# (Caddy) leaves it to the 30 s idle timeout. So HTTP/3 runs are started in
# the background and collected later, and the harness reads the target's
# CPU at the deadline rather than when oha exits.
OHA_IDLE_WAIT_S = 40


def oha_start(binary, url, rate, duration_s, conns, http_version, cpus=None):
    """Start oha in the background; returns a `procs.Client`."""
    argv = _oha_argv(binary, url, rate, duration_s, conns, http_version, None)
    return procs.Client(argv, cpus=cpus)


def oha_finish(client, duration_s, timeout):
    """Collect a background oha (killed after `timeout` s); rps is completed
    requests / `duration_s`."""
    rc, out, err = client.finish(timeout)
    return _oha_parse(rc, out, err, duration_s)
