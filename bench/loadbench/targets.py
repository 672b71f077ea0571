"""The origin and the targets: their configs, start, reload and stop.

Every proxy gets the same treatment: one worker (thread), access log off,
a keep-alive pool to the origin (HTTP/1.1), long client idle timeouts, the
same ECDSA P-256 certificate with TLS 1.3 only (where the proxy lets us say
so) on its TLS port. Each target listens on:

- `http1`: plaintext HTTP/1.1,
- `http2`: plaintext HTTP/2 with prior knowledge (h2c),
- `tls`:   HTTPS (HTTP/1.1 and h2 by ALPN), and for meshgate and Caddy
           HTTP/3 on the UDP port of the same number,

each on a free loopback port. A reload adds a route for
`/__bench_reload_<n>` answering 200, so the harness can check afterwards
that the reload really took effect.

The sidecar pair is a client sidecar (the load generator is its
application, naming the service in `Host`) and a server sidecar in front of
the origin, with mTLS and HTTP/2 between them, set up by a meshgate
appliance (control plane and CA) that is not itself measured. Its peer,
`haproxy-pair`, puts two HAProxy processes in the sidecars' places with
the same mTLS and HTTP/2 between them.

Caddy is only the HTTP/3 peer: it has just a TLS port (HTTP/1.1, h2 and
HTTP/3) and is measured only in the HTTP/3 rows and their HTTP/2-over-TLS
baseline. Targets not built yet can be declared with `not_built`, so the
report lists them as "not measured".
"""

import http.client
import os
import signal
import subprocess
import textwrap
import time

from . import procs, scenarios

BODY = "ok"


def make_certs(workdir):
    """A self-signed ECDSA P-256 certificate for 127.0.0.1, made with the openssl CLI."""
    cert = os.path.join(workdir, "cert.pem")
    key = os.path.join(workdir, "key.pem")
    procs.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=bench.meshgate.invalid",
            "-addext", "subjectAltName=DNS:bench.meshgate.invalid,IP:127.0.0.1",
        ],
        timeout=30,
        check=True,
    )
    combined = os.path.join(workdir, "cert+key.pem")
    with open(combined, "w") as out:
        for path in (cert, key):
            with open(path) as f:
                out.write(f.read())
    return {"cert": cert, "key": key, "combined": combined}


class Target:
    name = "?"
    # Why this target cannot be measured yet, or None.
    not_built = None
    # Which `kind` of thing it is, for the report: origin, gateway, peer, sidecar.
    role = "peer"
    # The authority (Host / :authority) load generators must name, when it
    # is not the URL's.
    host = None
    # Whether it has a TLS port for clients (handshake and idle-TLS rows)
    # and a config reload to measure.
    client_tls = True
    reloadable = True
    # Whether it serves HTTP/3 on the UDP side of its `tls` port, and
    # whether that is all it is measured on (Caddy, the HTTP/3 peer).
    h3 = False
    h3_only = False
    # Whether it is measured only in the gRPC rows.
    grpc_only = False

    def __init__(self):
        self.proc = None
        self.ports = {}
        self.reloads = 0

    def url(self, proto, path="/"):
        scheme = "https" if proto == "tls" else "http"
        return f"{scheme}://127.0.0.1:{self.ports[proto]}{path}"

    def tree(self):
        return self.proc.tree() if self.proc else []

    def start(self, ctx):
        raise NotImplementedError

    def reload(self, ctx):
        """Apply a changed config while serving; returns the marker path the
        new config answers. None when the target has no reload."""
        return None

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def _wait(self):
        for port in self.ports.values():
            procs.wait_port(port, self.proc)


def _nginx_common(workdir, name):
    tmp = os.path.join(workdir, f"{name}-tmp")
    os.makedirs(tmp, exist_ok=True)
    return textwrap.dedent(f"""\
        worker_processes 1;
        daemon off;
        master_process on;
        pid {workdir}/{name}.pid;
        error_log {workdir}/{name}.log error;
        worker_rlimit_nofile 16384;
        events {{ worker_connections 8192; }}
        """), textwrap.dedent(f"""\
            access_log off;
            keepalive_timeout 300s;
            keepalive_requests 100000000;
            client_body_temp_path {tmp}/body;
            proxy_temp_path {tmp}/proxy;
            ssl_protocols TLSv1.3;
        """)


class NginxOrigin(Target):
    """The origin every target forwards to: nginx, one worker, `return 200 "ok"`.
    On its HTTP/2 port it also answers the unary gRPC method
    `scenarios.GRPC_PATH`: a static gRPC reply frame and `grpc-status: 0`
    as a trailer (POST to a static file turns into the file's GET through
    `error_page 405 =200`)."""

    name = "origin"
    role = "origin"

    def start(self, ctx):
        self.ports = {p: procs.free_port() for p in ("http1", "http2", "tls")}
        self.ports["grpc"] = self.ports["http2"]
        reply = os.path.join(ctx.workdir, "grpc-reply")
        with open(reply, "wb") as f:
            f.write(scenarios.grpc_frame(b"\n\x02ok"))
        # nginx's worker (not root) reads the file: let it through the
        # private work directory to it.
        os.chmod(reply, 0o644)
        os.chmod(ctx.workdir, 0o711)
        head, http = _nginx_common(ctx.workdir, "origin")
        certs = ctx.certs
        conf = head + "http {\n" + textwrap.indent(http, "    ") + textwrap.indent(
            textwrap.dedent(f"""\
            ssl_certificate {certs['cert']};
            ssl_certificate_key {certs['key']};
            server {{
                listen 127.0.0.1:{self.ports['http1']} backlog=4096;
                listen 127.0.0.1:{self.ports['http2']} http2 backlog=4096;
                listen 127.0.0.1:{self.ports['tls']} ssl http2 backlog=4096;
                location / {{ return 200 "{BODY}"; }}
                location = {scenarios.GRPC_PATH} {{
                    alias {reply};
                    types {{ }}
                    default_type application/grpc;
                    add_trailer grpc-status 0;
                    error_page 405 =200 $uri;
                }}
            }}
            """), "    ") + "}\n"
        self.conf = os.path.join(ctx.workdir, "origin.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = procs.Proc(
            "origin",
            ["nginx", "-e", os.path.join(ctx.workdir, "origin.log"), "-p", ctx.workdir, "-c", self.conf],
            ctx.workdir,
        )
        self._wait()


class Direct(Target):
    """The client talks to the origin itself: the physical limit."""

    name = "direct"
    role = "baseline"

    def __init__(self, origin):
        super().__init__()
        self.origin = origin

    def start(self, ctx):
        self.ports = self.origin.ports

    def tree(self):
        return self.origin.tree()

    def stop(self):
        pass


class Meshgate(Target):
    """meshgate's gateway: release build, --threads 1, access log off."""

    name = "meshgate"
    role = "gateway"
    h3 = True

    def _config(self, ctx):
        marker = ""
        if self.reloads:
            marker = textwrap.dedent(f"""\
                [[route]]
                name = "bench-reload-{self.reloads}"
                match = {{ path = "/__bench_reload_{self.reloads}" }}
                respond = {{ status = 200, body = "{BODY}" }}

                """)
        c = ctx.certs
        return textwrap.dedent(f"""\
            # Generated by bench/run.py for one benchmark run.
            [[listener]]
            name = "plain"
            address = "127.0.0.1:{self.ports['http1']}"
            protocols = ["http1", "h2c"]
            limits = {{ idle_timeout = "5m" }}

            # HTTP/3 on the UDP side of the same port. No Alt-Svc header on
            # the TCP side's responses, so the TCP rows stay as they were.
            [[listener]]
            name = "tls"
            address = "127.0.0.1:{self.ports['tls']}"
            protocols = ["http1", "http2", "http3"]
            limits = {{ idle_timeout = "5m" }}
            tls = {{ certificates = [{{ cert = "{c['cert']}", key = "{c['key']}" }}], min_version = "1.3" }}
            http3 = {{ idle_timeout = "5m", alt_svc_max_age = "0s" }}

            """) + marker + textwrap.dedent(f"""\
            [[route]]
            name = "origin"
            service = "origin"

            [[service]]
            name = "origin"
            endpoints = [{{ address = "127.0.0.1:{ctx.origin.ports['http1']}" }}]
            idle_timeout = "5m"
            max_idle_per_endpoint = 256

            [observability]
            log_level = "warn"
            access_log = {{ format = "off" }}
            """)

    def start(self, ctx):
        port = procs.free_port()
        # One listener serves HTTP/1.1 and h2c on the same port.
        self.ports = {"http1": port, "http2": port, "tls": procs.free_port()}
        self.conf = os.path.join(ctx.workdir, "meshgate.toml")
        with open(self.conf, "w") as f:
            f.write(self._config(ctx))
        self.proc = procs.Proc(
            "meshgate",
            [ctx.meshgate, "run", "--config", self.conf, "--threads", "1", "--watch-interval-ms", "0"],
            ctx.workdir,
        )
        self._wait()

    def reload(self, ctx):
        self.reloads += 1
        tmp = self.conf + ".new"
        with open(tmp, "w") as f:
            f.write(self._config(ctx))
        os.replace(tmp, self.conf)
        os.kill(self.proc.pid, signal.SIGHUP)
        return f"/__bench_reload_{self.reloads}"


class NginxProxy(Target):
    """nginx as a reverse proxy: 1 worker, upstream keepalive 256, HTTP/1.1 to the origin."""

    name = "nginx"

    def _config(self, ctx):
        head, http = _nginx_common(ctx.workdir, "nginx")
        c = ctx.certs
        marker = ""
        if self.reloads:
            marker = f'    location = /__bench_reload_{self.reloads} {{ return 200 "{BODY}"; }}\n'
        return head + "http {\n" + textwrap.indent(http, "    ") + textwrap.indent(
            textwrap.dedent(f"""\
            ssl_certificate {c['cert']};
            ssl_certificate_key {c['key']};
            upstream origin {{
                server 127.0.0.1:{ctx.origin.ports['http1']};
                keepalive 256;
                keepalive_requests 100000000;
                keepalive_timeout 300s;
            }}
            server {{
                listen 127.0.0.1:{self.ports['http1']} backlog=4096;
                listen 127.0.0.1:{self.ports['http2']} http2 backlog=4096;
                listen 127.0.0.1:{self.ports['tls']} ssl http2 backlog=4096;
                location / {{
                    proxy_pass http://origin;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                }}
            """) + marker + "}\n", "    ") + "}\n"

    def start(self, ctx):
        self.ports = {p: procs.free_port() for p in ("http1", "http2", "tls")}
        self.conf = os.path.join(ctx.workdir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(self._config(ctx))
        self.argv = ["nginx", "-e", os.path.join(ctx.workdir, "nginx.log"), "-p", ctx.workdir, "-c", self.conf]
        self.proc = procs.Proc("nginx", self.argv, ctx.workdir)
        self._wait()

    def reload(self, ctx):
        self.reloads += 1
        with open(self.conf, "w") as f:
            f.write(self._config(ctx))
        procs.run(self.argv + ["-s", "reload"], timeout=10, check=True)
        return f"/__bench_reload_{self.reloads}"


# Both HAProxy targets' defaults: HTTP mode, long client and keep-alive
# timeouts, every idle server connection reusable by any request.
HAPROXY_DEFAULTS = textwrap.dedent("""\
    defaults
        mode http
        timeout connect 5s
        timeout client 300s
        timeout server 300s
        timeout http-keep-alive 300s
        http-reuse always

    """)


class Haproxy(Target):
    """HAProxy: master-worker (-W), nbthread 1, http-reuse always, no logs."""

    name = "haproxy"

    def _config(self, ctx):
        marker = ""
        if self.reloads:
            marker = (
                f"    http-request return status 200 content-type text/plain "
                f'string "{BODY}" if {{ path /__bench_reload_{self.reloads} }}\n'
            )
        return textwrap.dedent(f"""\
            global
                nbthread 1
                maxconn 8000
                pidfile {ctx.workdir}/haproxy.pid

            """) + HAPROXY_DEFAULTS + textwrap.dedent(f"""\
            frontend bench
                bind 127.0.0.1:{self.ports['http1']}
                bind 127.0.0.1:{self.ports['http2']} proto h2
                bind 127.0.0.1:{self.ports['tls']} ssl crt {ctx.certs['combined']} ssl-min-ver TLSv1.3 alpn h2,http/1.1
            """) + marker + textwrap.dedent(f"""\
                default_backend origin

            backend origin
                server origin 127.0.0.1:{ctx.origin.ports['http1']}
            """)

    def start(self, ctx):
        self.ports = {p: procs.free_port() for p in ("http1", "http2", "tls")}
        self.conf = os.path.join(ctx.workdir, "haproxy.cfg")
        with open(self.conf, "w") as f:
            f.write(self._config(ctx))
        self.proc = procs.Proc("haproxy", ["haproxy", "-W", "-db", "-f", self.conf], ctx.workdir)
        self._wait()

    def reload(self, ctx):
        self.reloads += 1
        with open(self.conf, "w") as f:
            f.write(self._config(ctx))
        os.kill(self.proc.pid, signal.SIGUSR2)
        return f"/__bench_reload_{self.reloads}"


class Caddy(Target):
    """Caddy (Debian package), the HTTP/3 peer: GOMAXPROCS=1 (one worker
    like the others), admin API off, no access log (Caddy logs requests
    only with a `log` directive), HTTP/1.1, h2 and HTTP/3 on one TLS port
    with the shared certificate and TLS 1.3 only, `reverse_proxy` to the
    origin over HTTP/1.1 with a keep-alive pool of 256 idle connections."""

    name = "caddy"
    h3 = True
    h3_only = True
    # Measured only over HTTP/3 and HTTP/2+TLS, not in the TCP/TLS scenarios.
    client_tls = False
    reloadable = False

    def _config(self, ctx):
        c = ctx.certs
        return textwrap.dedent(f"""\
            # Generated by bench/run.py for one benchmark run.
            {{
            	admin off
            	auto_https off
            	http_port {self.http_port}
            	https_port {self.ports['tls']}
            	storage file_system {ctx.workdir}/caddy-data
            	servers {{
            		protocols h1 h2 h3
            		timeouts {{
            			idle 5m
            		}}
            	}}
            }}

            https://:{self.ports['tls']} {{
            	bind 127.0.0.1
            	tls {c['cert']} {c['key']} {{
            		protocols tls1.3
            	}}
            	reverse_proxy 127.0.0.1:{ctx.origin.ports['http1']} {{
            		transport http {{
            			keepalive 5m
            			keepalive_idle_conns 256
            			keepalive_idle_conns_per_host 256
            		}}
            	}}
            }}
            """)

    def start(self, ctx):
        self.ports = {"tls": procs.free_port()}
        # Never used (auto_https off): set so Caddy does not try port 80.
        self.http_port = procs.free_port()
        self.conf = os.path.join(ctx.workdir, "Caddyfile")
        with open(self.conf, "w") as f:
            f.write(self._config(ctx))
        home = os.path.join(ctx.workdir, "caddy-home")
        os.makedirs(home, exist_ok=True)
        env = dict(os.environ, GOMAXPROCS="1", HOME=home, XDG_DATA_HOME=os.path.join(home, "data"),
                   XDG_CONFIG_HOME=os.path.join(home, "config"))
        self.proc = procs.Proc("caddy", ["caddy", "run", "--config", self.conf, "--adapter", "caddyfile"],
                               ctx.workdir, env=env)
        self._wait()


class NotBuilt(Target):
    """A target of issue 4 that does not exist yet: reported, never started."""

    def __init__(self, name, role, reason, protos):
        super().__init__()
        self.name = name
        self.role = role
        self.not_built = reason
        self.protos = protos

    def start(self, ctx):
        raise RuntimeError(f"{self.name}: {self.not_built}")


class ProxyPair(Target):
    """Two proxies between the load generator and the origin: `proc` the
    client side, `server` the server side, measured as the two process
    trees together. No client TLS port and no reload."""

    role = "sidecar"
    client_tls = False
    reloadable = False

    def __init__(self):
        super().__init__()
        self.server = None

    def tree(self):
        return (self.proc.tree() if self.proc else []) + (self.server.tree() if self.server else [])

    def stop(self):
        for p in (self.proc, self.server):
            if p:
                p.stop()
        self.proc = self.server = None


class SidecarPair(ProxyPair):
    """Client sidecar -> mTLS (HTTP/2) -> server sidecar -> origin. Both
    sidecars: release build, --threads 1, access log off."""

    name = "meshgate-sidecar"
    host = "origin"

    def __init__(self):
        super().__init__()
        self.appliance = None

    # The mesh's mode: the mTLS pair's is strict.
    mode = "strict"

    def extra_services(self, server_inbound):
        return ""

    def server_app(self, ctx):
        """The server sidecar's application port and its flags for it."""
        return ctx.origin.ports["http1"], []

    def served(self, outbound):
        return {"http1": outbound, "http2": outbound}

    def start(self, ctx):
        state = os.path.join(ctx.workdir, f"{self.name}-state")
        cp = procs.free_port()
        token = os.path.join(ctx.workdir, "join-token")
        with open(token, "w") as f:
            f.write("bench-join-token-0123456789\n")
        server_inbound = procs.free_port()
        conf = os.path.join(ctx.workdir, f"{self.name}-appliance.toml")
        with open(conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                # Generated by bench/run.py: the control plane for the sidecar pair.
                [[listener]]
                name = "unused"
                address = "127.0.0.1:{procs.free_port()}"

                [[service]]
                name = "origin"
                discovery = "mesh"
                idle_timeout = "5m"
                max_idle_per_endpoint = 256

                [[service]]
                name = "bench-client"
                discovery = "mesh"
                """) + self.extra_services(server_inbound) + textwrap.dedent(f"""\

                [mesh]
                trust_domain = "bench.meshgate.test"
                mode = "{self.mode}"
                control_plane_address = "127.0.0.1:{cp}"
                state_dir = "{state}"
                join_token_file = "{token}"

                [observability]
                log_level = "warn"
                access_log = {{ format = "off" }}
                """))
        self.appliance = procs.Proc("appliance", [ctx.meshgate, "run", "--config", conf, "--threads", "1",
                                                  "--watch-interval-ms", "0"], ctx.workdir)
        bundle = os.path.join(state, "ca", "trust-bundle.pem")
        deadline = time.monotonic() + 15
        while not os.path.exists(bundle):
            if time.monotonic() > deadline:
                raise RuntimeError("the appliance wrote no trust bundle")
            time.sleep(0.05)
        sidecar = os.path.join(os.path.dirname(ctx.meshgate), "meshgate-sidecar")

        def start_sidecar(name, service, app, inbound, flags=()):
            outbound = procs.free_port()
            p = procs.Proc(name, [
                sidecar, "--control-plane", f"127.0.0.1:{cp}", "--trust-domain", "bench.meshgate.test",
                "--ca-file", bundle, "--service", service, "--app", f"127.0.0.1:{app}",
                "--inbound", f"127.0.0.1:{inbound}", "--outbound", f"127.0.0.1:{outbound}",
                "--join-token-file", token, "--threads", "1", *flags,
            ], ctx.workdir)
            procs.wait_port(outbound, p)
            return p, outbound

        app, flags = self.server_app(ctx)
        self.server, _ = start_sidecar(f"{self.name}-server", "origin", app, server_inbound, flags)
        self.proc, out = start_sidecar(f"{self.name}-client", "bench-client", 1, procs.free_port())
        self.ports = self.served(out)
        # Ready when the client sidecar reaches the server sidecar.
        deadline = time.monotonic() + 15
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", out, timeout=2)
                c.request("GET", "/", headers={"Host": self.host})
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the sidecar pair never answered through the mesh")
            time.sleep(0.1)

    def stop(self):
        super().stop()
        if self.appliance:
            self.appliance.stop()
            self.appliance = None


def make_mesh_certs(workdir):
    """A CA and two ECDSA P-256 leaf certificates it signed, one for each
    proxy of a peer mTLS pair (made with the openssl CLI): each proxy shows
    its own certificate and accepts only the other's CA."""
    d = os.path.join(workdir, "mesh-pki")
    os.makedirs(d, exist_ok=True)
    ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    procs.run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
               "-subj", "/CN=bench mesh CA"], timeout=30, check=True)
    out = {"ca": ca}
    for name in ("client", "server"):
        key, csr, cert = (os.path.join(d, f"{name}.{x}") for x in ("key", "csr", "pem"))
        ext = os.path.join(d, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName=DNS:{name}.bench.meshgate.invalid\n")
        procs.run(["openssl", "req", "-new", *ec, "-keyout", key, "-out", csr,
                   "-subj", f"/CN={name}.bench.meshgate.invalid"], timeout=30, check=True)
        procs.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                   "-days", "2", "-extfile", ext, "-out", cert], timeout=30, check=True)
        combined = os.path.join(d, f"{name}+key.pem")
        with open(combined, "w") as w:
            for path in (cert, key):
                with open(path) as f:
                    w.write(f.read())
        out[name] = combined
    return out


SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


class HaproxyPair(ProxyPair):
    """The peer of the sidecar pair: two HAProxy processes in the sidecars'
    places, each -W master-worker with nbthread 1 and no logs. The client
    side takes HTTP/1.1 (and h2c) from the application and forwards over
    HTTP/2 with mutual TLS 1.3 (its own certificate, the server side's
    verified against the pair's CA) to the server side, which verifies the
    client's certificate the same way and forwards over HTTP/1.1 to the
    origin; `http-reuse always` on both hops. What a pair of general-purpose
    proxies costs where the mesh puts two sidecars."""

    name = "haproxy-pair"

    def _common(self, ctx, side):
        return textwrap.dedent(f"""\
            global
                nbthread 1
                maxconn 8000
                pidfile {ctx.workdir}/haproxy-pair-{side}.pid
                ssl-default-bind-options ssl-min-ver TLSv1.3
                ssl-default-server-options ssl-min-ver TLSv1.3
                # AES-128-GCM first, as the sidecars choose.
                ssl-default-bind-ciphersuites {SUITES}
                ssl-default-server-ciphersuites {SUITES}

            """) + HAPROXY_DEFAULTS

    def start(self, ctx):
        pki = make_mesh_certs(ctx.workdir)
        inbound = procs.free_port()
        app, h2c = procs.free_port(), procs.free_port()
        server_conf = self._common(ctx, "server") + textwrap.dedent(f"""\
            frontend inbound
                bind 127.0.0.1:{inbound} ssl crt {pki['server']} ca-file {pki['ca']} verify required alpn h2
                default_backend app

            backend app
                server origin 127.0.0.1:{ctx.origin.ports['http1']}
            """)
        client_conf = self._common(ctx, "client") + textwrap.dedent(f"""\
            frontend outbound
                bind 127.0.0.1:{app}
                bind 127.0.0.1:{h2c} proto h2
                # A response that came over HTTP/2 has no reason phrase, and
                # h2load's HTTP/1.1 client counts "HTTP/1.1 200 " as failed.
                http-response set-status 200 reason OK if {{ status 200 }}
                default_backend mesh

            backend mesh
                server peer 127.0.0.1:{inbound} ssl crt {pki['client']} ca-file {pki['ca']} verify required verifyhost server.bench.meshgate.invalid alpn h2
            """)
        procs_started = []
        for side, conf in (("server", server_conf), ("client", client_conf)):
            path = os.path.join(ctx.workdir, f"haproxy-pair-{side}.cfg")
            with open(path, "w") as f:
                f.write(conf)
            procs_started.append(procs.Proc(f"haproxy-pair-{side}", ["haproxy", "-W", "-db", "-f", path],
                                            ctx.workdir))
        self.server, self.proc = procs_started
        procs.wait_port(inbound, self.server)
        self.ports = {"http1": app, "http2": h2c}
        self._wait()


class SidecarPairPlain(SidecarPair):
    """The same pair with plaintext between the sidecars: the mesh in
    permissive mode, and the client naming a static service whose endpoint
    is the server sidecar's inbound port (HTTP/2 with prior knowledge, as
    the mTLS pair speaks HTTP/2). The difference to `meshgate-sidecar` is
    what mTLS costs."""

    name = "meshgate-sidecar-plain"
    host = "origin-plain"
    mode = "permissive"

    def extra_services(self, server_inbound):
        return textwrap.dedent(f"""\

            [[service]]
            name = "origin-plain"
            endpoints = [{{ address = "127.0.0.1:{server_inbound}" }}]
            protocol = "http2"
            idle_timeout = "5m"
            max_idle_per_endpoint = 256
            """)


class SidecarPairGrpc(SidecarPair):
    """The mTLS pair carrying unary gRPC calls, measured only in the gRPC
    rows: the server sidecar speaks HTTP/2 with prior knowledge to the
    origin's HTTP/2 port (`--app-protocol h2c`; nginx 1.22 takes h2c only
    on a port of its own, so the HTTP/1.1 pair cannot carry gRPC too)."""

    name = "meshgate-sidecar-grpc"
    grpc_only = True

    def server_app(self, ctx):
        return ctx.origin.ports["http2"], ["--app-protocol", "h2c"]

    def served(self, outbound):
        return {"grpc": outbound}


def not_built_targets():
    """Targets of issue 4 that cannot run yet (none at the moment)."""
    return []
