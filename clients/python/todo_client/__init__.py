"""A small TodoService client whose writes are safe to retry.

- Every logical CreateTodo / UpdateTodo gets a fresh UUID `idempotency-key`, and every retry
  of that call (gRPC's own retries, or yours if you pass the key back in) sends the same key,
  so the service performs it once and replays the stored response to the others.
- The channel carries the recommended service config (../service-config.json): wait for the
  server to be ready, and retry UNAVAILABLE with exponential backoff.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import grpc
from google.protobuf import field_mask_pb2

from todo.v1 import todo_pb2, todo_pb2_grpc

SERVICE_CONFIG_PATH = Path(__file__).resolve().parents[2] / "service-config.json"
REPLAYED_HEADER = "idempotent-replayed"


def load_service_config(path: Path = SERVICE_CONFIG_PATH) -> str:
    """The service config JSON, compacted, for the `grpc.service_config` channel option."""
    return json.dumps(json.loads(path.read_text()))


@dataclass(frozen=True)
class WriteResult:
    """A write's answer: the todo, whether it was a replay, and the key it was sent with."""

    todo: todo_pb2.Todo
    replayed: bool
    idempotency_key: str


class TodoClient:
    """TodoService over one channel. Use as a context manager, or call close()."""

    def __init__(
        self,
        target: str,
        *,
        token: Optional[str] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        service_config: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        options = [
            ("grpc.service_config", service_config or load_service_config()),
            ("grpc.enable_retries", 1),
        ]
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = todo_pb2_grpc.TodoServiceStub(self._channel)
        self._token = token
        self._timeout = timeout

    def __enter__(self) -> "TodoClient":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _metadata(self, idempotency_key: Optional[str] = None) -> list[tuple[str, str]]:
        metadata = []
        if self._token is not None:
            metadata.append(("authorization", f"Bearer {self._token}"))
        if idempotency_key is not None:
            metadata.append(("idempotency-key", idempotency_key))
        return metadata

    def _write(self, method, request, idempotency_key: Optional[str]) -> WriteResult:
        key = idempotency_key or str(uuid.uuid4())
        todo, call = method.with_call(
            request,
            metadata=self._metadata(key),
            timeout=self._timeout,
            wait_for_ready=True,
        )
        replayed = dict(call.initial_metadata()).get(REPLAYED_HEADER) == "true"
        return WriteResult(todo=todo, replayed=replayed, idempotency_key=key)

    def create_todo(
        self,
        title: str,
        description: str = "",
        completed: bool = False,
        *,
        idempotency_key: Optional[str] = None,
    ) -> WriteResult:
        """Creates a todo. Pass `idempotency_key` only to retry an earlier logical call."""
        request = todo_pb2.CreateTodoRequest(
            todo=todo_pb2.Todo(title=title, description=description, completed=completed)
        )
        return self._write(self._stub.CreateTodo, request, idempotency_key)

    def update_todo(
        self,
        todo: todo_pb2.Todo,
        update_mask: Optional[Sequence[str]] = None,
        *,
        idempotency_key: Optional[str] = None,
    ) -> WriteResult:
        """Replaces `todo` (by todo.id; todo.etag, if set, must match), or only the fields in
        `update_mask` (`title`, `description`, `completed`)."""
        request = todo_pb2.UpdateTodoRequest(
            todo=todo,
            update_mask=field_mask_pb2.FieldMask(paths=list(update_mask or [])),
        )
        return self._write(self._stub.UpdateTodo, request, idempotency_key)

    def get_todo(self, todo_id: str) -> todo_pb2.Todo:
        return self._stub.GetTodo(
            todo_pb2.GetTodoRequest(id=todo_id),
            metadata=self._metadata(),
            timeout=self._timeout,
            wait_for_ready=True,
        )

    def list_page(
        self, page_size: int = 0, page_token: str = "", completed: Optional[bool] = None
    ) -> todo_pb2.ListTodosResponse:
        request = todo_pb2.ListTodosRequest(page_size=page_size, page_token=page_token)
        if completed is not None:
            request.completed = completed
        return self._stub.ListTodos(
            request, metadata=self._metadata(), timeout=self._timeout, wait_for_ready=True
        )

    def list_todos(
        self, page_size: int = 0, completed: Optional[bool] = None
    ) -> Iterator[todo_pb2.Todo]:
        """Every todo, in id (creation) order, following page tokens."""
        token = ""
        while True:
            page = self.list_page(page_size, token, completed)
            yield from page.todos
            if not page.next_page_token:
                return
            token = page.next_page_token

    def delete_todo(self, todo_id: str, etag: str = "") -> None:
        """Deletes a todo; succeeds whether or not it existed."""
        self._stub.DeleteTodo(
            todo_pb2.DeleteTodoRequest(id=todo_id, etag=etag),
            metadata=self._metadata(),
            timeout=self._timeout,
            wait_for_ready=True,
        )
