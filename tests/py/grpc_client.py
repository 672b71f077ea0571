"""Calls meshgate.test.Echo (see grpc_echo_server.py) at TARGET over h2c
(naming AUTHORITY in :authority with `--authority AUTHORITY`) and
prints one JSON object describing what came back: messages, status codes,
details and trailing metadata. The Rust test judges the result.
"""

import json
import sys

import grpc

SERVICE = "/meshgate.test.Echo/"
TIMEOUT = 10


def outcome(call_error=None, call=None):
    """Status code name, details and trailing metadata of a finished call."""
    src = call_error if call_error is not None else call
    return {
        "code": src.code().name,
        "details": src.details(),
        "trailers": {k: v for k, v in (src.trailing_metadata() or ())},
    }


def main():
    target = sys.argv[1]
    # Never route loopback test traffic through an HTTP proxy from the environment.
    options = [("grpc.enable_http_proxy", 0)]
    if len(sys.argv) > 3 and sys.argv[2] == "--authority":
        # The :authority to send, when it is not TARGET: a sidecar's
        # outbound port routes by the service name in it.
        options.append(("grpc.default_authority", sys.argv[3]))
    channel = grpc.insecure_channel(target, options=options)
    unary = channel.unary_unary(SERVICE + "Unary")
    stream = channel.unary_stream(SERVICE + "ServerStream")
    bidi = channel.stream_stream(SERVICE + "Bidi")
    out = {}

    reply, call = unary.with_call(b"hello", timeout=TIMEOUT)
    out["unary"] = dict(outcome(call=call), reply=reply.decode())

    try:
        unary(b"missing:widget-7", timeout=TIMEOUT)
        out["unary_error"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["unary_error"] = outcome(call_error=e)

    call = stream(b"50", timeout=TIMEOUT)
    items = [m.decode() for m in call]
    out["server_stream"] = dict(outcome(call=call), items=items)

    call = stream(b"3:fail", timeout=TIMEOUT)
    items = []
    try:
        for m in call:
            items.append(m.decode())
        out["server_stream_error"] = {"code": "OK", "items": items}
    except grpc.RpcError as e:
        out["server_stream_error"] = dict(outcome(call_error=e), items=items)

    sent = ["m%d" % i for i in range(20)]
    call = bidi((m.encode() for m in sent), timeout=TIMEOUT)
    replies = [m.decode() for m in call]
    out["bidi"] = dict(outcome(call=call), replies=replies)

    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
