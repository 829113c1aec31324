"""The Python client against the real server: every RPC, the replay marker, error details, and
a retry after a lost response."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from todo_client import (
    InvalidArgumentError,
    KeyReusedError,
    OutcomeUnknownError,
    RejectedError,
    RetryPolicy,
    TodoClient,
    load_service_config,
    todo_pb2,
)


def error_details(error: grpc.RpcError, kind):
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    raise AssertionError(f"no {kind.DESCRIPTOR.full_name} in {status.details}")


def test_create_get_list_update_delete(client: TodoClient):
    created = client.create_todo("Buy milk", "two litres")
    assert not created.replayed
    todo = created.todo
    assert uuid.UUID(todo.id).version == 7
    assert (todo.title, todo.description, todo.completed) == ("Buy milk", "two litres", False)
    assert todo.create_time == todo.update_time
    assert client.get_todo(todo.id.upper()) == todo

    second = client.create_todo("Walk the dog").todo
    assert [t.id for t in client.list_todos(page_size=1)] == [todo.id, second.id]

    done = todo_pb2.Todo(id=todo.id, completed=True, etag=todo.etag)
    updated = client.update_todo(done, ["completed"])
    assert not updated.replayed
    assert updated.todo.completed and updated.todo.title == "Buy milk"
    assert updated.todo.etag != todo.etag
    assert [t.id for t in client.list_todos(completed=True)] == [todo.id]

    client.delete_todo(todo.id)
    client.delete_todo(todo.id)  # again: still OK
    with pytest.raises(grpc.RpcError) as missing:
        client.get_todo(todo.id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_same_key_replays_with_the_marker(client: TodoClient):
    first = client.create_todo("once")
    again = client.create_todo("once", idempotency_key=first.idempotency_key)
    assert not first.replayed
    assert again.replayed
    assert again.todo == first.todo
    assert [t.id for t in client.list_todos()] == [first.todo.id]


def test_each_logical_write_gets_its_own_key(client: TodoClient):
    a = client.create_todo("same title")
    b = client.create_todo("same title")
    assert a.idempotency_key != b.idempotency_key
    assert a.todo.id != b.todo.id


def test_update_replays_with_the_marker(client: TodoClient):
    todo = client.create_todo("v1").todo
    change = todo_pb2.Todo(id=todo.id, title="v2", etag=todo.etag)
    first = client.update_todo(change, ["title"])
    retry = client.update_todo(change, ["title"], idempotency_key=first.idempotency_key)
    assert retry.replayed and retry.todo == first.todo


def test_key_reuse_carries_error_info(client: TodoClient):
    first = client.create_todo("milk")
    with pytest.raises(grpc.RpcError) as reused:
        client.create_todo("bread", idempotency_key=first.idempotency_key)
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_details(reused.value, error_details_pb2.ErrorInfo)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert len(list(client.list_todos())) == 1


def test_invalid_input_names_the_field(client: TodoClient):
    with pytest.raises(grpc.RpcError) as blank:
        client.create_todo("   ")
    assert blank.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = error_details(blank.value, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["todo.title"]

    with pytest.raises(grpc.RpcError) as bad_id:
        client.get_todo("not-a-uuid")
    bad_request = error_details(bad_id.value, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["id"]

    todo = client.create_todo("x").todo
    with pytest.raises(grpc.RpcError) as bad_mask:
        client.update_todo(todo, ["etag"])
    bad_request = error_details(bad_mask.value, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["update_mask"]


def test_stale_etag_is_aborted(client: TodoClient):
    todo = client.create_todo("guarded").todo
    client.update_todo(todo_pb2.Todo(id=todo.id, title="changed"), ["title"])
    with pytest.raises(RejectedError) as stale:
        client.delete_todo(todo.id, etag=todo.etag)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert stale.value.attempts == 1, "a final answer is not retried"


def test_service_config_is_valid_json_with_a_retry_policy():
    import json

    config = json.loads(load_service_config())
    method = config["methodConfig"][0]
    assert method["name"] == [{"service": "todo.v1.TodoService"}]
    assert method["waitForReady"] is True
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_a_lost_response_is_retried_with_the_same_key(server, lossy_proxy):
    with TodoClient(lossy_proxy.addr) as through_proxy:
        result = through_proxy.create_todo("survives a lost response")
    assert lossy_proxy.dropped == 1, "the first response was cut off"
    assert lossy_proxy.connections >= 2, "the retry used a new connection"
    assert result.replayed, "the retry found the first attempt's response"
    with TodoClient(server.addr) as direct:
        todos = list(direct.list_todos())
    assert [t.id for t in todos] == [result.todo.id], "exactly one row"


def test_without_gRPC_retries_the_lost_response_is_an_error(server, lossy_proxy):
    # Control for the test above: the same loss without a retry policy fails, so it is the
    # retry (with its key) that saved the call.
    no_retries = '{"methodConfig": [{"name": [{"service": "todo.v1.TodoService"}]}]}'
    with TodoClient(
        lossy_proxy.addr, service_config=no_retries, retry_policy=RetryPolicy.none()
    ) as through_proxy:
        with pytest.raises(OutcomeUnknownError) as lost:
            through_proxy.create_todo("lost")
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert lost.value.idempotency_key, "the key to retry the write with"
    with TodoClient(server.addr) as direct:
        assert len(list(direct.list_todos())) == 1, "the write happened; only its answer was lost"


def test_key_reuse_is_a_typed_error_and_not_retried(client: TodoClient):
    first = client.create_todo("first")
    with pytest.raises(KeyReusedError) as reused:
        client.create_todo("another request", idempotency_key=first.idempotency_key)
    assert reused.value.idempotency_key == first.idempotency_key
    assert reused.value.attempts == 1
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_final_answers_are_typed_and_not_retried(client: TodoClient):
    with pytest.raises(InvalidArgumentError) as blank:
        client.create_todo("")
    assert blank.value.violations[0][0] == "todo.title"
    assert blank.value.attempts == 1
    with pytest.raises(RejectedError) as missing:
        client.get_todo(str(uuid.uuid4()))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_callers_deadline_bounds_the_retries():
    import socket
    import time

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        addr = "127.0.0.1:%d" % unused.getsockname()[1]
    with TodoClient(addr) as nobody:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknownError) as gave_up:
            nobody.create_todo("nobody answers", deadline=started + 0.8)
        elapsed = time.monotonic() - started
    # wait_for_ready: the attempt waits for a connection until the deadline.
    assert gave_up.value.attempts >= 1
    assert gave_up.value.idempotency_key
    assert gave_up.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    assert elapsed < 1.2, elapsed


def test_the_client_under_test_is_the_installed_package():
    """CI installs the built wheel into a fresh venv; the source tree is not on sys.path."""
    import json
    from pathlib import Path

    import todo_client

    assert "site-packages" in todo_client.__file__, todo_client.__file__
    repo_config = Path(__file__).resolve().parents[2] / "service-config.json"
    assert json.loads(load_service_config()) == json.loads(repo_config.read_text())


def test_complete_todos_completes_all_in_order_and_replays_with_its_key(client):
    a = client.create_todo("a").todo
    b = client.create_todo("b").todo
    done = client.complete_todos([b.id, a.id])
    assert [todo.id for todo in done.todos] == [b.id, a.id]
    assert all(todo.completed for todo in done.todos)
    assert not done.replayed
    again = client.complete_todos([b.id, a.id], idempotency_key=done.idempotency_key)
    assert again.replayed
    assert again.todos == done.todos
    with pytest.raises(RejectedError) as missing:
        client.complete_todos([a.id, str(uuid.uuid4())])
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_token_provider_is_asked_for_the_current_token_before_every_call(tmp_path):
    import hashlib

    from conftest import Server

    tokens = {"alice": "alice-secret-1", "bob": "bob-secret-2"}
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(
        "".join(f"{caller} {hashlib.sha256(t.encode()).hexdigest()}\n" for caller, t in tokens.items())
    )
    server = Server(tmp_path, "--tokens-file", str(tokens_file))
    try:
        current = [tokens["alice"]]
        with pytest.raises(ValueError):
            TodoClient(server.addr, token="x", token_provider=lambda: "y")
        with TodoClient(server.addr, token_provider=lambda: current[0]) as client:
            alices = client.create_todo("alice's").todo
            current[0] = tokens["bob"]  # the credential rotates under the running client
            with pytest.raises(RejectedError) as hidden:
                client.get_todo(alices.id)
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
            current[0] = "revoked"
            with pytest.raises(RejectedError) as refused:
                client.create_todo("nobody's")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop()
