"""A gRPC server for meshgate's end-to-end tests, written against grpcio's
generic handlers so no protoc step is needed: messages are raw bytes.

Service meshgate.test.Echo:
  Unary         echoes b"echo:" + request; a request b"missing:NAME" fails
                with NOT_FOUND "no such item: NAME". Sets trailing metadata
                x-echo-trailer: unary.
  ServerStream  request b"N" or b"N:fail": streams b"item 0" .. b"item N-1",
                then, with ":fail", ends with RESOURCE_EXHAUSTED.
  Bidi          echoes every message as b"echo:" + message until the client
                half-closes.

Binds 127.0.0.1 on a port the OS picks and prints the port on stdout.
With --tls CERT KEY it serves TLS (ALPN h2) instead of h2c.
"""

import argparse
import concurrent.futures

import grpc

SERVICE = "meshgate.test.Echo"


def unary(request, context):
    if request.startswith(b"missing:"):
        name = request[len(b"missing:"):].decode()
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item: " + name)
    context.set_trailing_metadata((("x-echo-trailer", "unary"),))
    return b"echo:" + request


def server_stream(request, context):
    count, _, mode = request.decode().partition(":")
    for i in range(int(count)):
        yield b"item %d" % i
    if mode == "fail":
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream quota used up")


def bidi(requests, context):
    for message in requests:
        yield b"echo:" + message


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = ap.parse_args()

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if args.tls:
        with open(args.tls[0], "rb") as f:
            cert = f.read()
        with open(args.tls[1], "rb") as f:
            key = f.read()
        creds = grpc.ssl_server_credentials(((key, cert),))
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
