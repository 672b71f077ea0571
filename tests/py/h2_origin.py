"""An HTTP/2 (prior knowledge, h2c) origin that reports how each request
header arrived on the wire, for meshgate's header-compression tests.

Every request is answered 200 with a JSON body:
  {"never_indexed": [names], "other": [names]}
`never_indexed` lists the header fields the peer's HPACK encoder sent as
never-indexed literals (RFC 7541 6.2.3), as the `hpack` decoder reports
them; `other` the rest (indexed, or literals that may be indexed).
Pseudo-headers are left out. Each connection runs on its own thread.

Binds 127.0.0.1 on a port the OS picks and prints the port on stdout.
Needs the `h2` package (installed by `make test`).
"""

import json
import socket
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hpack import NeverIndexedHeaderTuple


def report(headers):
    never, other = [], []
    for field in headers:
        name = field[0].decode() if isinstance(field[0], bytes) else field[0]
        if name.startswith(":"):
            continue
        (never if isinstance(field, NeverIndexedHeaderTuple) else other).append(name)
    return json.dumps({"never_indexed": sorted(never), "other": sorted(other)}).encode()


def serve(sock):
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, validate_inbound_headers=True)
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    body = report(event.headers)
                    conn.send_headers(
                        event.stream_id,
                        [
                            (":status", "200"),
                            ("content-type", "application/json"),
                            ("content-length", str(len(body))),
                        ],
                    )
                    conn.send_data(event.stream_id, body, end_stream=True)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    except (ConnectionError, h2.exceptions.ProtocolError):
        return
    finally:
        sock.close()


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
