"""A real Redis and the test rate-limit service (tests/support/rls-server, built by
`make integration`), on loopback ports."""

import socket
import subprocess
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from .servers import free_port
from .wire import as_bytes

RLS_BIN = Path(__file__).resolve().parent / "rls-server" / "target" / "release" / "meshguard-test-rls"


def wait_for_port(port, process, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Process:
    def __init__(self, command, port):
        self.port = port
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, self.process)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_server():
    port = free_port()
    return Process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], port)


def rls_server(redis_port, limit, unit="minute"):
    port = free_port()
    command = [str(RLS_BIN), "--listen", f"127.0.0.1:{port}", "--redis", f"redis://127.0.0.1:{redis_port}", "--limit", str(limit), "--unit", unit]
    return Process(command, port)


def grpc_frame(payload):
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class _Listener:
    """A loopback TCP listener handing each connection to `_on_connection`."""

    def __init__(self):
        self.port = free_port()
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", self.port))
        self._socket.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            self._on_connection(conn)

    def _on_connection(self, conn):
        raise NotImplementedError

    def stop(self):
        self._socket.close()


class Silent(_Listener):
    """Accepts connections and never answers: a hanging rate-limit service."""

    def __init__(self):
        self._held = []
        super().__init__()

    def _on_connection(self, conn):
        self._held.append(conn)

    def stop(self):
        super().stop()
        for conn in self._held:
            conn.close()


class Hostile(_Listener):
    """Something in the rate-limit service's place that answers every call badly. `mode`:
    bytes (not HTTP/2 at all), not grpc (HTTP/2 500 with an HTML page), grpc error (gRPC status
    UNAVAILABLE), bad message (gRPC OK with bytes that are not a RateLimitResponse), truncated
    (gRPC OK with a frame shorter than it says); or a well-formed answer, ok or over limit, whose
    initial and trailing metadata carry `metadata` ([(name, value)], bytes or latin-1 text, sent
    unchecked). `calls` counts the calls answered."""

    # RateLimitResponse: overall_code OK; overall_code OVER_LIMIT with one descriptor status
    # (limit 10 a minute, 0 remaining, reset in 42 s).
    ANSWERS = {
        "ok": bytes([0x08, 1]),
        "over limit": bytes([0x08, 2, 0x12, 14, 0x08, 2, 0x12, 4, 0x08, 10, 0x10, 2, 0x18, 0, 0x22, 2, 0x08, 42]),
    }

    def __init__(self, mode, metadata=()):
        self.mode = mode
        self.metadata = list(metadata)
        self.calls = 0
        super().__init__()

    def _on_connection(self, conn):
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                if self.mode == "bytes":
                    conn.recv(65535)
                    self.calls += 1
                    conn.sendall(b"\x00\xffnot a protocol\r\n" * 64)
                    return
                # Outgoing headers unchecked: hostile metadata goes out as given.
                config = h2.config.H2Configuration(client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False)
                peer = h2.connection.H2Connection(config=config)
                peer.initiate_connection()
                conn.sendall(peer.data_to_send())
                while data := conn.recv(65535):
                    for event in peer.receive_data(data):
                        if isinstance(event, h2.events.DataReceived):
                            peer.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        elif isinstance(event, h2.events.StreamEnded):
                            self.calls += 1
                            self._answer(peer, event.stream_id)
                    conn.sendall(peer.data_to_send())
            except (OSError, h2.exceptions.ProtocolError):
                return

    def _answer(self, peer, stream_id):
        grpc = [(":status", "200"), ("content-type", "application/grpc")]
        if self.mode == "not grpc":
            peer.send_headers(stream_id, [(":status", "500"), ("content-type", "text/html")])
            peer.send_data(stream_id, b"<html><body>upstream error</body></html>", end_stream=True)
        elif self.mode == "grpc error":
            peer.send_headers(stream_id, grpc + [("grpc-status", "14"), ("grpc-message", "overloaded")], end_stream=True)
        elif self.mode in self.ANSWERS:
            payload = self.ANSWERS[self.mode]
            metadata = [(as_bytes(name), as_bytes(value)) for name, value in self.metadata]
            peer.send_headers(stream_id, grpc + metadata)
            peer.send_data(stream_id, grpc_frame(payload))
            peer.send_headers(stream_id, [("grpc-status", "0")] + metadata, end_stream=True)
        else:
            payload = b"\xff" * 12  # a varint that never ends: not a protobuf message
            frame = grpc_frame(payload)
            if self.mode == "truncated":
                frame = b"\x00" + (1000).to_bytes(4, "big") + payload
            peer.send_headers(stream_id, grpc)
            peer.send_data(stream_id, frame)
            peer.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
