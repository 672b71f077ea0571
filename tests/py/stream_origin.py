"""An HTTP/1.1 origin for meshgate's streaming tests (standard library only).

  POST /sha256            reads the whole request body, Content-Length or
                          chunked, and answers JSON {"bytes", "sha256",
                          "chunked"} about what arrived.
  GET  /download?path=P   streams file P in 64 KiB writes with a
                          Content-Length.
  GET  /chunked?id=I      answers Transfer-Encoding: chunked; sends the chunk
                          "first part\n", then holds the rest until
                          GET /release?id=I arrives (at most 30 s), then
                          sends "second part\n", "last part\n" and the end.
  GET  /release?id=I      releases /chunked?id=I (before or after it starts).
  GET  anything else      a short text answer.

Binds 127.0.0.1 on a port the OS picks and prints the port on stdout.
"""

import hashlib
import http.server
import json
import threading
import urllib.parse

PIECE = 64 * 1024
HOLD_LIMIT = 30.0

_events = {}
_events_lock = threading.Lock()


def event(name):
    with _events_lock:
        return _events.setdefault(name, threading.Event())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status, body, content_type="text/plain"):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body_pieces(self):
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailer section: lines up to the empty one
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, PIECE))
                    if not data:
                        raise ConnectionError("body ended inside a chunk")
                    left -= len(data)
                    yield data
                self.rfile.readline()  # CRLF after the chunk
        else:
            left = int(self.headers.get("content-length") or 0)
            while left:
                data = self.rfile.read(min(left, PIECE))
                if not data:
                    raise ConnectionError("body ended early")
                left -= len(data)
                yield data

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        digest = hashlib.sha256()
        total = 0
        for piece in self._body_pieces():
            digest.update(piece)
            total += len(piece)
        if url.path != "/sha256":
            return self._reply(404, b"not found\n")
        chunked = "chunked" in (self.headers.get("transfer-encoding") or "").lower()
        body = json.dumps({"bytes": total, "sha256": digest.hexdigest(), "chunked": chunked})
        self._reply(200, body.encode(), "application/json")

    do_PUT = do_POST

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/download":
            with open(query["path"], "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(0)
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(size))
                self.end_headers()
                while True:
                    data = f.read(PIECE)
                    if not data:
                        break
                    self.wfile.write(data)
        elif url.path == "/chunked":
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self._chunk(b"first part\n")
            released = event(query.get("id", "")).wait(HOLD_LIMIT)
            self._chunk(b"second part\n" if released else b"never released\n")
            self._chunk(b"last part\n")
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/release":
            event(query.get("id", "")).set()
            self._reply(200, b"released\n")
        else:
            self._reply(200, ("stream origin path=%s\n" % self.path).encode())

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class Server(http.server.ThreadingHTTPServer):
    # The standard library's backlog of 5 drops SYNs when a load generator
    # opens dozens of upstream connections at once.
    request_queue_size = 256
    daemon_threads = True


def main():
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
