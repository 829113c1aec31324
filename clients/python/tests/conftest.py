"""Fixtures: the real server binary on a free port, and a TCP proxy that loses responses. The
client under test is the installed `todo-client` package (CI installs the built wheel into a
fresh venv), never the source tree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def workspace_binary(variable: str, name: str, *package: str) -> Path:
    """The binary named by environment `variable`, or the workspace's debug build of `name`
    (built if missing; `package` as cargo's `-p <crate>` when it is not the root crate)."""
    configured = os.environ.get(variable)
    if configured:
        return Path(configured)
    binary = REPO / "target" / "debug" / name
    if not binary.exists():
        subprocess.run(["cargo", "build", *package, "--bin", name], cwd=REPO, check=True)
    return binary


def server_binary() -> Path:
    """TODO_SERVER_BIN, or the workspace's debug build."""
    return workspace_binary("TODO_SERVER_BIN", "todo-server")


class Server:
    """A running todo-server process, its gRPC address, and its log lines."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.db = tmp_path / "todo.db"
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["RUST_LOG"] = "info"
        self.process = subprocess.Popen(
            [
                str(server_binary()),
                "--listen-addr",
                "127.0.0.1:0",
                "--metrics-enabled",
                "false",
                "--database-url",
                f"sqlite:{self.db}",
                "--log-format",
                "json",
                "--shutdown-drain",
                "0s",
                *extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.logs: list[dict] = []
        self.addr = None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            entry = json.loads(line)
            self.logs.append(entry)
            if entry.get("message") == "serving gRPC":
                self.addr = entry["addr"]
                break
        if self.addr is None:
            raise RuntimeError(f"the server did not start: {self.logs}")
        # Keep draining the pipe so the server never blocks on a full stdout.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.logs.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(tmp_path: Path):
    running = Server(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def client(server):
    from todo_client import TodoClient

    with TodoClient(server.addr) as connected:
        yield connected


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copies bytes from `source` to `sink` until either end closes, then shuts both down."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ResponseDroppingProxy:
    """Forwards TCP between a client and the server, but on the first `drops` connections it
    parses the server's HTTP/2 frames and, when the first response HEADERS frame arrives (the
    request has been fully processed), cuts both sockets: the response never reaches the
    client."""

    HEADERS = 0x1

    def __init__(self, target: str, drops: int = 1) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.drops_left = drops
        self.dropped = 0
        self.connections = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                drop = self.drops_left > 0
            upstream = socket.create_connection(self.target)
            threading.Thread(
                target=pipe, args=(downstream, upstream), daemon=True
            ).start()
            threading.Thread(
                target=self._responses, args=(upstream, downstream, drop), daemon=True
            ).start()


    def _responses(self, upstream: socket.socket, downstream: socket.socket, drop: bool) -> None:
        if not drop:
            pipe(upstream, downstream)
            return
        buffer = b""
        try:
            while data := upstream.recv(65536):
                buffer += data
                # Forward whole frames; stop at the first response HEADERS frame.
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[0:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    frame_type = buffer[3]
                    stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    if frame_type == self.HEADERS and stream_id != 0:
                        with self.lock:
                            if self.drops_left > 0:
                                self.drops_left -= 1
                                self.dropped += 1
                        for s in (upstream, downstream):
                            s.shutdown(socket.SHUT_RDWR)
                            s.close()
                        return
                    downstream.sendall(buffer[: 9 + length])
                    buffer = buffer[9 + length :]
        except OSError:
            pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()


@pytest.fixture
def lossy_proxy(server):
    proxy = ResponseDroppingProxy(server.addr, drops=1)
    yield proxy
    proxy.close()
