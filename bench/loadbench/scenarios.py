"""The measurements. Each one runs against one target and returns a row.

A row always has the keys of `ROW_KEYS` (None where a figure does not
apply), plus scenario-specific extras. CPU per request is the CPU time
(each process's CPU-time clock, in nanoseconds, plus the utime+stime of
children it reaped) the target's whole process tree used
while the load ran, divided by the requests the load generator completed;
for `direct` that is the origin's own tree.
"""

import http.client
import socket
import ssl
import time

from . import generators, procs, tools

ROW_KEYS = [
    "scenario", "proto", "mode", "target", "round", "tool", "pinning",
    "rps", "cpu_us_per_req", "p50_ms", "p90_ms", "p99_ms", "rss_mib", "errors",
    "requests", "duration_s", "status",
]


def row(**kw):
    r = dict.fromkeys(ROW_KEYS)
    r["status"] = "ok"
    r.update(kw)
    r["load1"] = (tools.loadavg() or [None])[0]
    return r


def _mib(kib):
    return round(kib / 1024.0, 2)


def _cpu_us_per_req(cpu_s, requests):
    return round(cpu_s * 1e6 / requests, 2) if requests else None


def _measure(ctx, target, load):
    """Run `load()` and return (result, cpu seconds of the target, cpu seconds
    of the origin, the target's RSS: its `peak` and `end` in KiB, and the
    context switches during the load: the target's (voluntary,
    involuntary) and the origin's)."""
    origin = ctx.origin
    t0, o0 = procs.cpu_seconds(target.tree()), procs.cpu_seconds(origin.tree())
    ts0, os0 = procs.switches_by_kind(target.tree()), procs.switches_by_kind(origin.tree())
    with procs.PeakRss(target.tree) as peak:
        res = load()
    t1, o1 = procs.cpu_seconds(target.tree()), procs.cpu_seconds(origin.tree())
    ts1, os1 = procs.switches_by_kind(target.tree()), procs.switches_by_kind(origin.tree())
    switches = {
        "target": tuple(b - a for a, b in zip(ts0, ts1)),
        "origin": tuple(b - a for a, b in zip(os0, os1)),
    }
    return res, t1 - t0, o1 - o0, peak, switches


def _per_req(n, requests):
    return round(n / requests, 3) if requests else None


def _load_row(ctx, target, base, load):
    try:
        res, cpu, ocpu, peak, switches = _measure(ctx, target, load)
    except generators.LoadError as e:
        return row(**base, status=f"failed: {e}"[:600])
    if not res["requests"] and res["errors"]:
        return row(**{"tool": res["tool"], **base}, errors=res["errors"],
                   status=f"failed: no request succeeded ({res['errors']} errors)")
    r = row(
        **{"tool": res["tool"], **base},
        rps=round(res["rps"], 1) if res["rps"] is not None else None,
        requests=res["requests"],
        errors=res["errors"],
        cpu_us_per_req=_cpu_us_per_req(cpu, res["requests"]),
        p50_ms=res["p50_ms"],
        p90_ms=res["p90_ms"],
        p99_ms=res["p99_ms"],
        rss_mib=_mib(peak.peak),
        rss_end_mib=_mib(peak.end),
    )
    # Where the target and the origin share a core (pinned), how often the
    # target was preempted and how often the origin went to sleep tell
    # whether the two took turns a request at a time or in batches.
    vol, invol = switches["target"]
    r["sleeps_per_req"] = _per_req(vol, res["requests"])
    r["preempted_per_req"] = _per_req(invol, res["requests"])
    if target.name != "direct":
        r["origin_cpu_us_per_req"] = _cpu_us_per_req(ocpu, res["requests"])
        r["origin_sleeps_per_req"] = _per_req(switches["origin"][0], res["requests"])
    for extra in ("socket_errors", "error_kinds", "bytes_per_conn"):
        if res.get(extra):
            r[extra] = res[extra]
    return r


# ------------------------------------------------------------ saturation

# (proto, tool) pairs measured closed-loop at saturation.
# The unary method the origin answers (targets.NginxOrigin).
GRPC_PATH = "/bench.Echo/Unary"

SATURATION = [("http1", "wrk"), ("http1", "h2load-h1"), ("http2", "h2load")]


def saturation(ctx, target, rnd, pinning, proto, tool):
    p = ctx.plan
    d = p.duration_s
    url = target.url(proto)
    if tool == "wrk":
        load = lambda: generators.wrk(  # noqa: E731
            url, p.conns, p.threads, d, cpus=ctx.loadgen_cpus, host=target.host)
    else:
        load = lambda: generators.h2load(  # noqa: E731
            url, p.conns, p.threads, d, streams=1 if tool == "h2load-h1" else p.h2_streams,
            h1=tool == "h2load-h1", cpus=ctx.loadgen_cpus, host=target.host,
        )
    base = dict(scenario="saturation", proto=proto, mode=pinning, pinning=pinning,
                target=target.name, round=rnd, duration_s=d, tool=tool)
    r = _load_row(ctx, target, base, load)
    r["conns"] = p.conns
    if proto == "http2":
        r["streams_per_conn"] = p.h2_streams
    return r


# ------------------------------------------------------------ fixed rate

def fixed_rate(ctx, target, rnd, pinning, proto, rate):
    p = ctx.plan
    d = p.fixed_duration_s
    mode = f"fixed-{rate // 1000}k" if rate % 1000 == 0 else f"fixed-{rate}"
    base = dict(scenario="fixed-rate", proto=proto, mode=mode, pinning=pinning,
                target=target.name, round=rnd, duration_s=d, tool="oha")

    def load():
        return generators.oha(ctx.oha, target.url(proto), rate, d, p.fixed_conns,
                              http2=proto == "http2", cpus=ctx.loadgen_cpus, host=target.host)

    r = _load_row(ctx, target, base, load)
    r["rate"] = rate
    r["conns"] = p.fixed_conns
    return r


# ------------------------------------------------------------ gRPC

def grpc_frame(message):
    """One uncompressed gRPC message frame."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_saturation(ctx, target, rnd, pinning):
    """Unary gRPC calls, closed loop: h2load with the request frame."""
    p = ctx.plan
    d = p.duration_s
    url = target.url("grpc", GRPC_PATH)
    load = lambda: generators.h2load(  # noqa: E731
        url, p.conns, p.threads, d, streams=p.h2_streams, cpus=ctx.loadgen_cpus, host=target.host,
        grpc=ctx.grpc_request)
    base = dict(scenario="saturation", proto="grpc", mode=pinning, pinning=pinning,
                target=target.name, round=rnd, duration_s=d, tool="h2load-grpc")
    r = _load_row(ctx, target, base, load)
    r["conns"] = p.conns
    r["streams_per_conn"] = p.h2_streams
    return r


def grpc_fixed_rate(ctx, target, rnd, pinning, rate):
    """Unary gRPC calls at a fixed rate: oha POSTing the request frame."""
    p = ctx.plan
    d = p.fixed_duration_s
    base = dict(scenario="fixed-rate", proto="grpc", mode=f"fixed-{rate // 1000}k", pinning=pinning,
                target=target.name, round=rnd, duration_s=d, tool="oha")

    def load():
        return generators.oha(ctx.oha, target.url("grpc", GRPC_PATH), rate, d, p.fixed_conns,
                              cpus=ctx.loadgen_cpus, host=target.host, grpc=ctx.grpc_request)

    r = _load_row(ctx, target, base, load)
    r["rate"] = rate
    r["conns"] = p.fixed_conns
    return r


# ------------------------------------------------------------ TLS handshakes

def tls_version(port):
    """The TLS version and cipher a default client negotiates (a check that
    TLS 1.3 is what is being measured)."""
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with c.wrap_socket(s) as t:
            return t.version(), t.cipher()[0]


# Concurrent `openssl s_time` clients: each is one connection at a time.
S_TIME_CLIENTS = 4


def tls_handshake(ctx, target, rnd, pinning, resume=False):
    """One request per connection, so one TLS 1.3 handshake per request.
    Full handshakes by default: `openssl s_time -new` never resumes a
    session. With `resume`, wrk with `Connection: close`: wrk keeps the
    session of its previous connection and resumes it (a PSK handshake,
    still with a fresh key exchange), as browsers and most clients do."""
    p = ctx.plan
    d = p.duration_s
    scenario = "tls-resumption" if resume else "tls-handshake"
    base = dict(scenario=scenario, proto="tls-handshake", mode=pinning, pinning=pinning,
                target=target.name, round=rnd, duration_s=d)

    def load():
        if resume:
            return generators.wrk(target.url("tls"), p.conns, p.threads, d, cpus=ctx.loadgen_cpus,
                                  close=True)
        return generators.s_time(target.ports["tls"], S_TIME_CLIENTS, d, cpus=ctx.loadgen_cpus)

    r = _load_row(ctx, target, base, load)
    try:
        r["tls_version"], r["tls_cipher"] = tls_version(target.ports["tls"])
    except (OSError, ssl.SSLError) as e:
        r["tls_version"] = f"error: {e}"
    if r.get("cpu_us_per_req"):
        r["handshakes_per_core_s"] = round(1e6 / r["cpu_us_per_req"], 1)
    return r


# ------------------------------------------------------------ memory

def rss_idle(ctx, target, rnd):
    kib = procs.rss_kib(target.tree())
    return row(scenario="rss-idle", proto="none", mode="idle", target=target.name, round=rnd,
               rss_mib=_mib(kib), processes=len(target.tree()))


def _settled_rss(target, limit_s=3.0):
    """RSS once two readings 200 ms apart agree (or after `limit_s`)."""
    last = procs.rss_kib(target.tree())
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = procs.rss_kib(target.tree())
        if now == last:
            break
        last = now
    return last


def _open_idle(port, n, use_tls, deadline, host=None):
    """Open n keep-alive connections, make one request on each (so the
    server has set the connection up completely), and leave them open."""
    ctxt = None
    if use_tls:
        ctxt = ssl.create_default_context()
        ctxt.check_hostname = False
        ctxt.verify_mode = ssl.CERT_NONE
        ctxt.minimum_version = ssl.TLSVersion.TLSv1_3
    conns = []
    req = f"GET / HTTP/1.1\r\nHost: {host or '127.0.0.1'}\r\nUser-Agent: meshgate-bench\r\n\r\n".encode()
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                raise TimeoutError(f"opened only {len(conns)} of {n} connections in time")
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if ctxt:
                s = ctxt.wrap_socket(s)
            conns.append(s)
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before the response")
                buf += chunk
            head, body = buf.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"unexpected response {head[:40]!r}")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            while len(body) < length:
                chunk = s.recv(4096)
                if not chunk:
                    break
                body += chunk
    except BaseException:
        for s in conns:
            s.close()
        raise
    return conns


# Connections opened (one request each) and closed before the baseline of
# `idle_conns`: the first ones fault in code and set up libraries once per
# process, which is not memory per connection. Few enough that what they
# free and the allocator keeps (about 10 connections' worth) hides at most
# 1% of the idle connections' cost.
IDLE_WARM_UP_CONNS = 10


def idle_conns(ctx, target, rnd, use_tls):
    n = ctx.plan.idle_conns
    proto = "tls" if use_tls else "http1"
    base = dict(scenario="idle-conns", proto=proto, mode="idle", target=target.name, round=rnd)
    try:
        warm = _open_idle(target.ports[proto], IDLE_WARM_UP_CONNS, use_tls, time.monotonic() + 30,
                          target.host)
    except (OSError, TimeoutError, ssl.SSLError) as e:
        return row(**base, status=f"failed: {e}"[:600])
    for s in warm:
        s.close()
    before = _settled_rss(target, 1.0)
    try:
        conns = _open_idle(target.ports[proto], n, use_tls, time.monotonic() + 60, target.host)
    except (OSError, TimeoutError, ssl.SSLError) as e:
        return row(**base, status=f"failed: {e}"[:600])
    try:
        after = _settled_rss(target)
    finally:
        for s in conns:
            s.close()
    return row(**base, rss_mib=_mib(after), conns=n, rss_before_mib=_mib(before),
               kib_per_conn=round((after - before) / n, 2))


# ------------------------------------------------------------ reload

def _get_status(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", path)
        return c.getresponse().status
    finally:
        c.close()


def reload_under_load(ctx, target, rnd, pinning):
    """64 keep-alive connections for `reload_duration_s`; the config is
    changed and reloaded at half time. Errors are wrk's socket errors plus
    non-2xx/3xx answers. Afterwards the marker route the new config added
    must answer 200, or the reload did not happen."""
    p = ctx.plan
    d = p.reload_duration_s
    base = dict(scenario="reload", proto="http1", mode=pinning, pinning=pinning,
                target=target.name, round=rnd, duration_s=d)
    url = target.url("http1")
    marker = {}

    def load():
        import threading

        def do_reload():
            try:
                marker["path"] = target.reload(ctx)
            except Exception as e:  # reported in the row, the run goes on
                marker["error"] = str(e)

        timer = threading.Timer(d / 2.0, do_reload)
        timer.start()
        try:
            return generators.wrk(url, p.conns, p.threads, d, cpus=ctx.loadgen_cpus)
        finally:
            timer.join()

    r = _load_row(ctx, target, base, load)
    applied = False
    if "path" in marker:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not applied:
            try:
                applied = _get_status(target.ports["http1"], marker["path"]) == 200
            except OSError:
                pass
            if not applied:
                time.sleep(0.1)
    r["reload_applied"] = applied
    if "error" in marker:
        r["status"] = f"failed: reload: {marker['error']}"[:600]
    elif not applied and r["status"] == "ok":
        r["status"] = "failed: the reloaded config never answered its marker route"
    return r


def warm_up(ctx, target):
    """One second of load before the first timed run of a round (pools, caches).
    A target with only a TLS port (Caddy) gets it over HTTP/2 with oha; not
    over HTTP/3, whose oha can linger for Caddy's QUIC idle timeout. The
    gRPC pair gets unary calls."""
    try:
        if "http1" in target.ports:
            generators.wrk(target.url("http1"), ctx.plan.conns, ctx.plan.threads, 1, host=target.host)
        elif "grpc" in target.ports:
            generators.h2load(target.url("grpc", GRPC_PATH), ctx.plan.conns, ctx.plan.threads, 1,
                              streams=ctx.plan.h2_streams, host=target.host, grpc=ctx.grpc_request)
        else:
            generators.oha(ctx.oha, target.url("tls"), None, 1, ctx.plan.conns, http2=True)
    except generators.LoadError:
        pass


def not_measured(target, scenario, proto, mode):
    return row(scenario=scenario, proto=proto, mode=mode, target=target.name, round=None,
               status=target.not_built)


# ------------------------------------------------------------ HTTP/3

class PendingRow:
    """A measurement whose load generator is still running in the
    background (oha over HTTP/3 waiting out a QUIC idle timeout, see
    generators.oha_start). The target's CPU and RSS were already read at
    the deadline; `finish()` collects oha and returns the row."""

    def __init__(self, base, target_name, client, cpu, ocpu, peak, duration_s, extra, deadline):
        self.base, self.target_name, self.client = base, target_name, client
        self.cpu, self.ocpu, self.peak = cpu, ocpu, peak
        self.duration_s, self.extra, self.deadline = duration_s, extra, deadline

    def finish(self):
        wait = self.deadline - time.monotonic()
        try:
            res = generators.oha_finish(self.client, self.duration_s, wait)
        except generators.LoadError as e:
            return row(**self.base, status=f"failed: {e}"[:600])
        r = row(
            **{"tool": res["tool"], **self.base},
            rps=round(res["rps"], 1) if res["rps"] is not None else None,
            requests=res["requests"],
            errors=res["errors"],
            cpu_us_per_req=_cpu_us_per_req(self.cpu, res["requests"]),
            p50_ms=res["p50_ms"],
            p90_ms=res["p90_ms"],
            p99_ms=res["p99_ms"],
            rss_mib=_mib(self.peak),
            origin_cpu_us_per_req=_cpu_us_per_req(self.ocpu, res["requests"]),
        )
        if res.get("error_kinds"):
            r["error_kinds"] = res["error_kinds"]
        r.update(self.extra)
        return r


# Grace after the deadline for the requests in flight (oha -w) before the
# target's CPU is read.
_GRACE_S = 0.5


def quic_load(ctx, target, rnd, scenario, proto, pinning, rate=None):
    """oha against the target's TLS port: `proto` "http3" (QUIC, the UDP
    port of the same number) or "http2-tls" (HTTP/2 over TLS 1.3, the same
    listener's TCP side, the baseline of the HTTP/3 CPU target). Closed
    loop with `plan.conns` connections for "saturation", else open loop at
    `rate` with `--latency-correction` and `plan.fixed_conns` connections.
    Returns a PendingRow."""
    p = ctx.plan
    if rate is None:
        d, conns, mode = p.duration_s, p.conns, pinning
    else:
        d, conns = p.fixed_duration_s, p.fixed_conns
        mode = f"fixed-{rate // 1000}k" if rate % 1000 == 0 else f"fixed-{rate}"
    base = dict(scenario=scenario, proto=proto, mode=mode, pinning=pinning, target=target.name,
                round=rnd, duration_s=d, tool="oha")
    version = "3" if proto == "http3" else "2"
    t0, o0 = procs.cpu_seconds(target.tree()), procs.cpu_seconds(ctx.origin.tree())
    with procs.PeakRss(target.tree) as peak:
        client = generators.oha_start(ctx.oha, target.url("tls"), rate, d, conns, version,
                                      cpus=ctx.loadgen_cpus)
        # Sleep through the run, but no longer than oha lives.
        end = time.monotonic() + d + _GRACE_S
        while time.monotonic() < end and client.popen.poll() is None:
            time.sleep(0.05)
    t1, o1 = procs.cpu_seconds(target.tree()), procs.cpu_seconds(ctx.origin.tree())
    extra = {"conns": conns, "http_version": version, "rss_end_mib": _mib(peak.end)}
    if rate is not None:
        extra["rate"] = rate
    deadline = time.monotonic() + generators.OHA_IDLE_WAIT_S
    return PendingRow(base, target.name, client, t1 - t0, o1 - o0, peak.peak, d, extra, deadline)
