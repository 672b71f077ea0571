"""An HTTP/3 client for meshgate's tests, driving aioquic (PyPI).

QUIC, TLS 1.3, HTTP/3 framing and QPACK are all aioquic's; this script
only sends the requests it is told to and prints what came back as one
JSON object on stdout:

  {"responses": [{"status", "headers", "trailers", "body_bytes",
                  "sha256", "body", "error"}...], "error"}

  h3_client.py URL [--connect HOST:PORT] [--cafile PEM] [--method M]
               [--header "name: value"]... [--data-file F]
               [--count N] [--concurrency C] [--out F]
               [--zero-rtt] [--timeout S]

A --header naming a pseudo-header (":path: http://other.example/x")
replaces the client's own value of that field, so a test can send a
malformed request; all the pseudo-headers go before the other fields.

--count sends N requests over one connection, --concurrency at a time.
--out writes the body of the last response to a file. --zero-rtt makes a
first connection to collect a session ticket, then sends the requests as
0-RTT early data on a second one. --hold S keeps the connection open for
up to S seconds after the responses (saying "holding" on stderr) until the
server sends GOAWAY or closes it; the JSON then also has "goaway" (the
stream ID of the server's GOAWAY, or null) and "closed" (how the server
closed the connection, or null).

aioquic reads the server's control stream but reports no GOAWAY, so this
client reads the frames on that stream too (RFC 9114 section 7).
"""

import argparse
import asyncio
import hashlib
import json
import ssl
import sys
import urllib.parse

from aioquic.asyncio.client import connect
from aioquic.buffer import Buffer, BufferReadError
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset

PIECE = 64 * 1024
CONTROL_STREAM = 0x00
GOAWAY = 0x07


class Exchange:
    def __init__(self):
        self.headers = None
        self.trailers = {}
        self.body = hashlib.sha256()
        self.size = 0
        self.keep = bytearray()
        self.done = asyncio.get_running_loop().create_future()
        self.out = None


class Client(QuicConnectionProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.h3 = H3Connection(self._quic)
        self.exchanges = {}
        # The server's unidirectional streams, as read so far, and what
        # its control stream said.
        self.uni = {}
        self.goaway = None
        self.closed = None
        self.changed = asyncio.Event()

    def read_control(self, event):
        """Keeps the bytes of server-initiated unidirectional streams and
        records the last GOAWAY on the control stream among them."""
        if event.stream_id % 4 != 3:
            return
        data = self.uni.setdefault(event.stream_id, bytearray())
        data += event.data
        buf = Buffer(data=bytes(data))
        try:
            if buf.pull_uint_var() != CONTROL_STREAM:
                return
            while not buf.eof():
                kind = buf.pull_uint_var()
                length = buf.pull_uint_var()
                payload = buf.pull_bytes(length)
                if kind == GOAWAY:
                    self.goaway = Buffer(data=payload).pull_uint_var()
                    self.changed.set()
        except BufferReadError:
            pass  # a frame not complete yet; read again with more bytes

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self.read_control(event)
        if isinstance(event, StreamReset) and event.stream_id in self.exchanges:
            ex = self.exchanges[event.stream_id]
            if not ex.done.done():
                ex.done.set_exception(RuntimeError(f"stream reset, code {event.error_code}"))
        if isinstance(event, ConnectionTerminated):
            self.closed = {"error_code": event.error_code, "reason": event.reason_phrase}
            self.changed.set()
            for ex in self.exchanges.values():
                if not ex.done.done():
                    ex.done.set_exception(
                        RuntimeError(f"connection closed: {event.error_code} {event.reason_phrase}")
                    )
        for ev in self.h3.handle_event(event):
            ex = self.exchanges.get(getattr(ev, "stream_id", None))
            if ex is None:
                continue
            if isinstance(ev, HeadersReceived):
                fields = {k.decode(): v.decode() for k, v in ev.headers}
                if ex.headers is None:
                    ex.headers = fields
                else:
                    ex.trailers.update(fields)
            elif isinstance(ev, DataReceived):
                ex.body.update(ev.data)
                ex.size += len(ev.data)
                if ex.out is not None:
                    ex.out.write(ev.data)
                elif len(ex.keep) < 4096:
                    ex.keep += ev.data[: 4096 - len(ex.keep)]
            if getattr(ev, "stream_ended", False) and not ex.done.done():
                ex.done.set_result(None)

    async def request(self, method, url, headers, body_path, out_path):
        u = urllib.parse.urlsplit(url)
        path = (u.path or "/") + (("?" + u.query) if u.query else "")
        sid = self._quic.get_next_available_stream_id()
        ex = Exchange()
        self.exchanges[sid] = ex
        ours = {":method": method, ":scheme": "https", ":authority": u.netloc, ":path": path}
        given = [(k.lower(), v) for k, v in headers]
        replaced = {k for k, _ in given if k.startswith(":")}
        fields = [(k, v) for k, v in ours.items() if k not in replaced]
        fields += sorted(given, key=lambda f: not f[0].startswith(":"))
        fields = [(k.encode(), v.encode()) for k, v in fields]
        self.h3.send_headers(sid, fields, end_stream=body_path is None)
        self.transmit()
        if body_path is not None:
            with open(body_path, "rb") as f:
                while True:
                    piece = f.read(PIECE)
                    self.h3.send_data(sid, piece, end_stream=not piece)
                    self.transmit()
                    if not piece:
                        break
                    # Let acknowledgements and flow-control credit in.
                    await asyncio.sleep(0)
        if out_path is not None:
            ex.out = open(out_path, "wb")
        try:
            await ex.done
        finally:
            if ex.out is not None:
                ex.out.close()
        return {
            "status": int(ex.headers.get(":status", "0")) if ex.headers else 0,
            "headers": {k: v for k, v in (ex.headers or {}).items() if not k.startswith(":")},
            "trailers": ex.trailers,
            "body_bytes": ex.size,
            "sha256": ex.body.hexdigest(),
            "body": ex.keep.decode("utf-8", "replace"),
        }


def configuration(args, ticket_store):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    if args.cafile:
        config.load_verify_locations(args.cafile)
    else:
        config.verify_mode = ssl.CERT_NONE
    config.server_name = urllib.parse.urlsplit(args.url).hostname
    if ticket_store.get("ticket") is not None:
        config.session_ticket = ticket_store["ticket"]
    return config


async def run(args):
    u = urllib.parse.urlsplit(args.url)
    host, port = u.hostname, u.port or 443
    if args.connect:
        host, _, p = args.connect.rpartition(":")
        port = int(p)
    headers = []
    for h in args.header:
        # A pseudo-header's name keeps its leading colon.
        lead = ":" if h.startswith(":") else ""
        k, _, v = h[len(lead):].partition(":")
        headers.append((lead + k.strip(), v.strip()))
    tickets = {}

    def keep_ticket(t):
        tickets["ticket"] = t

    if args.zero_rtt:
        async with connect(
            host, port, configuration=configuration(args, tickets),
            create_protocol=Client, session_ticket_handler=keep_ticket,
        ) as c:
            await c.request("GET", args.url, headers, None, None)
            await asyncio.sleep(0.2)
        if "ticket" not in tickets:
            return {"responses": [], "error": "no session ticket from the server"}

    responses = []
    async with connect(
        host, port, configuration=configuration(args, tickets),
        create_protocol=Client, session_ticket_handler=keep_ticket,
        wait_connected=not args.zero_rtt,
    ) as c:
        sem = asyncio.Semaphore(args.concurrency)

        async def one(i):
            async with sem:
                out = args.out if i == args.count - 1 else None
                try:
                    return await c.request(args.method, args.url, headers, args.data_file, out)
                except Exception as e:  # reported, not raised: the test reads it
                    return {"status": 0, "error": str(e)}

        responses = await asyncio.gather(*(one(i) for i in range(args.count)))
        if args.hold is None:
            return {"responses": responses, "error": None}
        sys.stderr.write("holding\n")
        sys.stderr.flush()
        try:
            await asyncio.wait_for(c.changed.wait(), args.hold)
        except asyncio.TimeoutError:
            pass
        return {"responses": responses, "error": None, "goaway": c.goaway, "closed": c.closed}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--connect")
    p.add_argument("--cafile")
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--data-file")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--zero-rtt", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--hold", type=float)
    args = p.parse_args()
    try:
        result = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except Exception as e:
        result = {"responses": [], "error": f"{type(e).__name__}: {e}"}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
