"""An OTLP/HTTP trace receiver for meshgate's end-to-end tests.

Accepts `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`,
decodes it with the official OpenTelemetry classes (PyPI package
`opentelemetry-proto`), and prints one JSON object per span on stdout, so
the Rust test asserts on what a real collector would have understood:

    {"trace_id": hex, "span_id": hex, "parent_span_id": hex or "",
     "name", "kind": "SPAN_KIND_SERVER", "start": ns, "end": ns,
     "flags": int, "trace_state": str,
     "attributes": {key: value}, "status": {"code": "STATUS_CODE_ERROR",
     "message": str}, "resource": {key: value}, "scope": {"name", "version"}}

A request that is not a valid protobuf export (wrong method, path,
content type or body) is answered 400 and printed as {"bad_request": why}.
Binds 127.0.0.1 on a port the OS picks and prints the port first.

To play a collector in trouble: `--status N` answers every valid export
with status N (its spans are not printed, a {"refused": N} line is), and
`--hang` never answers at all.
"""

import argparse
import http.server
import json
import sys
import threading
import time

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

out_lock = threading.Lock()
args = None


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def any_value(v):
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def attributes(kvs):
    out = {}
    for kv in kvs:
        if kv.key in out:
            raise ValueError("attribute %r repeated" % kv.key)
        out[kv.key] = any_value(kv.value)
    return out


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def refuse(self, why):
        emit({"bad_request": why})
        body = why.encode()
        self.send_response(400)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        if args.hang:
            emit({"hanging": len(body)})
            while True:
                time.sleep(3600)
        if self.path != "/v1/traces":
            return self.refuse("path %s" % self.path)
        ctype = self.headers.get("content-type") or ""
        if ctype != "application/x-protobuf":
            return self.refuse("content-type %r" % ctype)
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
            spans = []
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    scope = {"name": ss.scope.name, "version": ss.scope.version}
                    for s in ss.spans:
                        if len(s.trace_id) != 16 or len(s.span_id) != 8:
                            raise ValueError("id lengths %d/%d" % (len(s.trace_id), len(s.span_id)))
                        if s.parent_span_id and len(s.parent_span_id) != 8:
                            raise ValueError("parent id length %d" % len(s.parent_span_id))
                        spans.append({
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "trace_state": s.trace_state,
                            "name": s.name,
                            "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "flags": s.flags,
                            "attributes": attributes(s.attributes),
                            "status": {
                                "code": trace_pb2.Status.StatusCode.Name(s.status.code),
                                "message": s.status.message,
                            },
                            "resource": resource,
                            "scope": scope,
                        })
        except (DecodeError, ValueError) as e:
            return self.refuse("undecodable export: %s" % e)
        if args.status != 200:
            emit({"refused": args.status, "spans": len(spans)})
            self.send_response(args.status)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        for s in spans:
            emit(s)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def main():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
