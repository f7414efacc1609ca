"""Requests written byte by byte, so that a test can send what no HTTP library would: any byte in
a header value, lower-case or made-up methods, repeated headers in a chosen order. HTTP/1.1 over
a raw socket, and HTTP/2 with cleartext prior knowledge (h2c) through the `h2` library with its
checks of outgoing headers turned off. Both keep their connection open between requests and
open a new one when Envoy has closed it.

A request Envoy's codec refuses before any filter runs is answered as Envoy does it: over
HTTP/1.1 a `400` (or `431`, `413`...) with `connection: close`, or a connection closed without an
answer; over HTTP/2 a reset stream or a GOAWAY. `Response.refused_by_codec` tells those apart
from answers that went through the filter chain."""

import json
import socket
import threading
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class Response:
    """What came back for one request. `status` is None when there was no answer at all (a
    closed connection, a reset stream, a GOAWAY); `error` then says which."""

    status: int | None
    headers: list = field(default_factory=list)  # [(lower-case name bytes, value bytes)]
    body: bytes = b""
    error: str | None = None
    closed: bool = False  # Envoy closed the connection after this answer

    def header(self, name):
        """The first value of a response header, as text (latin-1, byte for byte), or None."""
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    def json(self):
        """The body as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def local_reply(self):
        """meshguard's `{"error": ..., "reason": ...}` body, or None if this is not one."""
        body = self.json()
        if isinstance(body, dict) and set(body) == {"error", "reason"}:
            return body
        return None

    def upstream_echo(self):
        """What the test upstream saw (`support.servers.Upstream`), or None if the request
        never reached it."""
        body = self.json()
        if self.status == 200 and isinstance(body, dict) and {"method", "path", "headers"} <= set(body):
            return body
        return None

    @property
    def timed_out(self):
        return self.error == TIMEOUT

    @property
    def refused_by_codec(self):
        """Envoy's codec refused the request before any filter ran: no answer at all (but not a
        hang), or an answer that is neither meshguard's nor the upstream's and closes the
        connection."""
        if self.status is None:
            return not self.timed_out
        return self.closed and self.status in (400, 413, 414, 426, 431, 501, 505) and self.local_reply() is None

    def describe(self):
        if self.status is None:
            return f"no answer ({self.error})"
        return f"{self.status} {self.body[:200]!r}"


TIMEOUT = "no answer within the timeout"


class ConnectionClosed(Exception):
    pass


class Http1:
    """HTTP/1.1 on one keep-alive socket, reopened after Envoy closes it."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self._socket = None
        self._buffer = b""

    def close(self):
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._buffer = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        """Writes raw bytes (a request that is not even HTTP, say); no answer is read."""
        self._connect()
        self._socket.sendall(data)

    def request(self, method, target, headers=(), body=b""):
        """Sends `method target HTTP/1.1` and exactly `headers` ([(name, value)], bytes or text;
        text is sent as latin-1, one byte per character), then `body` with its content-length."""
        lines = [as_bytes(method) + b" " + as_bytes(target) + b" HTTP/1.1"]
        lines += [as_bytes(name) + b": " + as_bytes(value) for name, value in headers]
        if body:
            lines.append(b"content-length: " + str(len(body)).encode())
        message = b"\r\n".join(lines) + b"\r\n\r\n" + body
        for attempt in range(2):
            fresh = self._socket is None
            try:
                self._connect()
                self._socket.sendall(message)
                return self._read_response(head_only=as_bytes(method) == b"HEAD")
            except TimeoutError:
                self.close()
                return Response(None, error=TIMEOUT, closed=True)
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError) as error:
                self.close()
                # A kept-alive connection Envoy had already closed: try once on a new one.
                if fresh or attempt == 1:
                    return Response(None, error=f"connection closed without an answer ({type(error).__name__})", closed=True)
        raise AssertionError("unreachable")

    def _connect(self):
        if self._socket is None:
            self._socket = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _fill(self):
        data = self._socket.recv(65536)
        if not data:
            raise ConnectionClosed()
        self._buffer += data

    def _read_until(self, marker):
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, size):
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _read_response(self, head_only):
        while True:
            head = self._read_until(b"\r\n\r\n")
            status_line, *lines = head.split(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            headers = []
            for line in lines:
                name, _, value = line.partition(b":")
                headers.append((name.strip().lower(), value.strip()))
            if 100 <= status < 200:
                continue  # 100 Continue: the answer follows
            response = Response(status, headers)
            if head_only or status in (204, 304):
                body = b""
            elif (response.header("transfer-encoding") or "").lower() == "chunked":
                body = self._read_chunked()
            elif response.header("content-length") is not None:
                body = self._read_exactly(int(response.header("content-length")))
            else:
                body = self._read_to_close()
            response.body = body
            response.closed = (response.header("connection") or "").lower() == "close"
            if response.closed:
                self.close()
            return response

    def _read_chunked(self):
        body = b""
        while True:
            size = int(self._read_until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                self._read_until(b"\r\n")  # no trailers from Envoy or the test upstream
                return body
            body += self._read_exactly(size)
            self._read_exactly(2)

    def _read_to_close(self):
        try:
            while True:
                self._fill()
        except (ConnectionClosed, ConnectionResetError):
            body, self._buffer = self._buffer, b""
            return body


class Http2:
    """HTTP/2 with prior knowledge on one connection, reopened after a GOAWAY. Headers go out
    as given, pseudo-headers included: nothing is validated, lower-cased or reordered."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self._socket = None
        self._connection = None

    def close(self):
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _connect(self):
        if self._socket is not None:
            return
        self._socket = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self._connection = h2.connection.H2Connection(config=config)
        self._connection.initiate_connection()
        self._socket.sendall(self._connection.data_to_send())

    def request(self, headers, body=b""):
        """Sends one request: `headers` is the whole header block, pseudo-headers first
        ([(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x"), ...])."""
        self._connect()
        connection = self._connection
        stream_id = connection.get_next_available_stream_id()
        block = [(as_bytes(name), as_bytes(value)) for name, value in headers]
        try:
            connection.send_headers(stream_id, block, end_stream=not body)
            if body:
                connection.send_data(stream_id, body, end_stream=True)
            self._socket.sendall(connection.data_to_send())
        except (OSError, h2.exceptions.ProtocolError) as error:
            self.close()
            return Response(None, error=f"could not send ({type(error).__name__}: {error})", closed=True)
        response = Response(None)
        received = b""
        while True:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                self.close()
                response.error, response.closed = TIMEOUT, True
                return response
            except OSError as error:
                self.close()
                response.error, response.closed = f"connection error ({type(error).__name__})", True
                return response
            if not data:
                self.close()
                response.error, response.closed = "connection closed", True
                return response
            try:
                events = connection.receive_data(data)
            except h2.exceptions.ProtocolError as error:
                self.close()
                response.error, response.closed = f"protocol error from Envoy ({error})", True
                return response
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    response.headers = [(bytes(n).lower(), bytes(v)) for n, v in event.headers if not bytes(n).startswith(b":")]
                    response.status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    received += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    response.body = received
                    self._socket.sendall(connection.data_to_send())
                    return response
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                    self._socket.sendall(connection.data_to_send())
                    response.status, response.error = None, f"stream reset ({event.error_code!r})"
                    return response
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.close()
                    response.status = response.status if event.last_stream_id >= stream_id else None
                    response.error, response.closed = f"GOAWAY ({event.error_code!r})", True
                    response.body = received
                    return response
            self._socket.sendall(connection.data_to_send())


def as_bytes(value):
    """Bytes as they are; text as latin-1, one byte per character."""
    return value if isinstance(value, bytes) else str(value).encode("latin-1")


@dataclass
class Request:
    """One request for either protocol. `headers` holds `host` for HTTP/1.1; over HTTP/2 it
    becomes `:authority` (after `:method`, `:scheme`, in front of the rest)."""

    method: bytes | str
    target: bytes | str
    headers: list
    body: bytes = b""

    def send(self, connection):
        if isinstance(connection, Http2):
            authority = next((value for name, value in self.headers if as_bytes(name).lower() == b"host"), b"")
            rest = [(name, value) for name, value in self.headers if as_bytes(name).lower() != b"host"]
            block = [(":method", self.method), (":scheme", "http"), (":authority", authority), (":path", self.target)] + rest
            return connection.request(block, self.body)
        return connection.request(self.method, self.target, self.headers, self.body)


PROTOCOLS = {"http1": Http1, "http2": Http2}


def send_all(port, requests, protocol="http1", connections=4):
    """Sends `requests` over `connections` kept-alive connections at once (one thread each) and
    returns the responses in the order of `requests`."""
    requests = list(requests)
    responses = [None] * len(requests)
    lock = threading.Lock()
    pending = iter(range(len(requests)))

    def worker():
        with PROTOCOLS[protocol](port) as connection:
            while True:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                responses[index] = requests[index].send(connection)

    threads = [threading.Thread(target=worker) for _ in range(min(connections, len(requests)) or 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses
