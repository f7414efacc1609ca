"""A real Redis and the test rate-limit service (tests/support/rls-server, built by
`make integration`), on loopback ports."""

import socket
import subprocess
import threading
import time
from pathlib import Path

from .servers import free_port

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


class Silent:
    """Accepts connections and never answers: a hanging rate-limit service."""

    def __init__(self):
        self.port = free_port()
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", self.port))
        self._socket.listen(64)
        self._held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            self._held.append(conn)

    def stop(self):
        self._socket.close()
        for conn in self._held:
            conn.close()
