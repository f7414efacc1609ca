"""Real HTTP servers on loopback: an upstream that echoes what reached it, and an identity
provider whose JWKS endpoint can be healthy, slow, down or broken."""

import hashlib
import json
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without TCP_NODELAY the body waits for Envoy's
    # delayed ACK (40 ms a response on a keep-alive connection).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass


class _HttpServer(ThreadingHTTPServer):
    """Remembers its open connections, so that stopping it can close them: a handler thread
    would otherwise go on serving a keep-alive connection Envoy holds, and a stopped server
    would still answer."""

    daemon_threads = True

    def __init__(self, address, handler):
        self.connections = set()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # Envoy resets an upstream stream whose client left (the soak's hang-ups do it on
        # purpose): a write into it failing is the expected end, not a fault to print.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self):
        for conn in list(self.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server:
    def __init__(self, handler, port=None):
        self.port = port or free_port()
        self._handler = handler
        self._httpd = None

    def start(self):
        self._httpd = _HttpServer(("127.0.0.1", self.port), self._handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        """Stops as a dead server would: no new connections, open ones closed."""
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()
            self._httpd = None


class Upstream(_Server):
    """Answers every request, whatever its method, with the method, path and headers it
    received, and its body's length and SHA-256, as JSON; a request with `x-test-delay-ms` is held that long first (a request in
    flight)."""

    def __init__(self, port=None):
        class Echo(_Handler):
            def _echo(self):
                length = int(self.headers.get("content-length") or 0)
                received = self.rfile.read(length) if length else b""
                time.sleep(int(self.headers.get("x-test-delay-ms") or 0) / 1000)
                headers = {}
                for name, value in self.headers.items():
                    headers.setdefault(name.lower(), []).append(value)
                echo = {"method": self.command, "path": self.path, "headers": headers,
                        "body_length": len(received), "body_sha256": hashlib.sha256(received).hexdigest()}
                # `x-test-response-bytes`: that many bytes of padding in the answer (a long body).
                echo["padding"] = "x" * int(self.headers.get("x-test-response-bytes") or 0)
                body = json.dumps(echo).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def __getattr__(self, name):
                # Made-up and lower-case methods too (the request fuzzer sends them).
                if name.startswith("do_"):
                    return self._echo
                raise AttributeError(name)

        super().__init__(Echo, port)


class Idp(_Server):
    """Serves `jwks` at any path. `mode`: healthy, slow (sleeps `delay` s), garbage (HTML),
    error (500), empty (no usable keys), huge (a 10 MB document), body (serves `body` as
    application/json). `headers` ([(name, value)], values sent as latin-1, byte for byte) go on
    every answer and replace a header of the same name. `slow_share`: the share of answers, drawn
    at random, that sleep `delay` s first whatever the mode. `fetches` counts requests."""

    def __init__(self, jwks, port=None):
        self.jwks = jwks
        self.headers = []
        self.mode = "healthy"
        self.delay = 0.0
        self.slow_share = 0.0
        self._random = random.Random(7)
        self.body = b""
        self.fetches = 0
        self._lock = threading.Lock()
        idp = self

        class Handler(_Handler):
            def do_GET(self):
                with idp._lock:
                    idp.fetches += 1
                    late = idp._random.random() < idp.slow_share
                if late:
                    time.sleep(idp.delay)
                mode = idp.mode
                status, body, ctype = 200, idp.jwks.encode(), "application/json"
                if mode == "slow":
                    time.sleep(idp.delay)
                elif mode == "garbage":
                    body, ctype = b"<html><body>Bad gateway</body></html>", "text/html"
                elif mode == "error":
                    status, body = 500, b'{"error":"boom"}'
                elif mode == "empty":
                    body = b'{"keys":[]}'
                elif mode == "huge":
                    # Valid JSON with the real keys, padded to 10 MB.
                    body = b'{"padding":"' + b"x" * (10 * 2**20) + b'",' + idp.jwks.encode()[1:]
                elif mode == "body":
                    body = idp.body
                extra = list(idp.headers)
                replaced = {name.lower() for name, _ in extra}
                try:
                    self.send_response(status)
                    if "content-type" not in replaced:
                        self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(body)))
                    for name, value in extra:
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        super().__init__(Handler, port)
