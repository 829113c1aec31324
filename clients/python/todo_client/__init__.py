"""A small TodoService client whose writes are safe to retry.

- Every logical CreateTodo / UpdateTodo gets a fresh UUID `idempotency-key`, and every attempt
  of that call sends the same key, so the service performs it once and replays the stored
  response to the others (`WriteResult.replayed`).
- Retries happen here, in the application layer, not only in the channel: gRPC's A6 retry
  policy (the service config) never retries a call once response headers arrived, and gives up
  after 5 attempts. `RetryPolicy` retries every failure whose outcome is unknown (UNAVAILABLE,
  DEADLINE_EXCEEDED of one attempt, CANCELLED, a stream reset by the connection) with
  exponential backoff and jitter, inside an overall budget and the caller's deadline.
- Answers a retry cannot change are raised at once as typed errors: `KeyReusedError`
  (FAILED_PRECONDITION, IDEMPOTENCY_KEY_REUSED), `InvalidArgumentError` (with the fields
  named), `RejectedError` (NOT_FOUND, ABORTED, UNAUTHENTICATED, ...). When time runs out,
  `OutcomeUnknownError` carries the key to retry the write with later. All are
  `grpc.RpcError`s (`code()`, `details()`, `trailing_metadata()` of the last attempt).
- The channel also carries the recommended service config (shipped in the package as
  `service-config.json`, a copy of the repository's `clients/service-config.json`).
- The bearer token is fixed (`token=`) or asked for before every attempt (`token_provider=`, a
  function returning the current token), so a rotating credential (a projected
  service-account token re-read from disk) works without a new client.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Iterator, Optional, Sequence

import grpc
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from todo_client._proto.todo.v1 import todo_pb2, todo_pb2_grpc

__all__ = [
    "CompleteResult",
    "InvalidArgumentError",
    "KeyReusedError",
    "OutcomeUnknownError",
    "RejectedError",
    "RetryPolicy",
    "TodoCallError",
    "TodoClient",
    "WriteResult",
    "is_retryable",
    "load_service_config",
    "todo_pb2",
    "todo_pb2_grpc",
]

REPLAYED_HEADER = "idempotent-replayed"
KEY_REUSED_REASON = "IDEMPOTENCY_KEY_REUSED"

# Failures after which the same request may succeed; for a write the outcome is unknown.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
# How grpcio reports a stream that the connection (not the server) ended.
CONNECTION_FAILURES = ("RST_STREAM", "Stream removed", "Socket closed", "Connection reset")


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often one logical call is tried."""

    budget: float = 30.0
    """Seconds one logical call may take, every attempt and pause included."""
    attempt_timeout: float = 10.0
    """Seconds one attempt may take (its gRPC deadline)."""
    initial_backoff: float = 0.05
    """The pause before the first retry, doubling (`multiplier`) up to `max_backoff`; each
    pause is drawn uniformly from [half, all] of that value."""
    max_backoff: float = 2.0
    multiplier: float = 2.0
    max_attempts: int = 1_000_000
    """1: no retries at all (for comparisons)."""

    @classmethod
    def none(cls) -> "RetryPolicy":
        return cls(max_attempts=1)

    def backoff(self, retry: int) -> float:
        ceiling = min(self.initial_backoff * self.multiplier ** (retry - 1), self.max_backoff)
        return ceiling * random.uniform(0.5, 1.0)


def is_retryable(error: grpc.RpcError) -> bool:
    """Whether a failed attempt may succeed if sent again (its outcome is unknown)."""
    code = error.code()
    if code in RETRYABLE:
        return True
    details = error.details() or ""
    return code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and any(
        marker in details for marker in CONNECTION_FAILURES
    )


class TodoCallError(grpc.RpcError):
    """A logical call that did not succeed; `code()`, `details()` and `trailing_metadata()`
    are the last attempt's."""

    def __init__(self, error: grpc.RpcError, attempts: int) -> None:
        super().__init__(f"{error.code()}: {error.details()}")
        self.error = error
        self.attempts = attempts

    def code(self) -> grpc.StatusCode:
        return self.error.code()

    def details(self) -> str:
        return self.error.details()

    def trailing_metadata(self):
        return self.error.trailing_metadata()


class KeyReusedError(TodoCallError):
    """FAILED_PRECONDITION: the key was first used with a different request. Not retried."""

    def __init__(self, error: grpc.RpcError, attempts: int, idempotency_key: str) -> None:
        super().__init__(error, attempts)
        self.idempotency_key = idempotency_key


class InvalidArgumentError(TodoCallError):
    """INVALID_ARGUMENT; `violations` lists (field, description) pairs. Not retried."""

    def __init__(self, error: grpc.RpcError, attempts: int) -> None:
        super().__init__(error, attempts)
        self.violations = [
            (violation.field, violation.description)
            for violation in _details(error, error_details_pb2.BadRequest).field_violations
        ]


class RejectedError(TodoCallError):
    """Any other answer a retry would not change (NOT_FOUND, ABORTED, UNAUTHENTICATED, ...)."""


class OutcomeUnknownError(TodoCallError):
    """Every attempt failed with an unknown outcome and the budget, deadline or attempt limit
    ran out. A write may or may not have happened: retry it later with `idempotency_key`."""

    def __init__(
        self, error: grpc.RpcError, attempts: int, idempotency_key: Optional[str]
    ) -> None:
        super().__init__(error, attempts)
        self.idempotency_key = idempotency_key


def _details(error: grpc.RpcError, kind):
    """The first detail of type `kind` in the error's google.rpc.Status, or an empty one."""
    try:
        status = rpc_status.from_call(error)
    except Exception:  # a malformed or mismatched status is no detail at all
        status = None
    for detail in status.details if status is not None else []:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return kind()


def _final(error: grpc.RpcError, attempts: int, key: Optional[str]) -> TodoCallError:
    code = error.code()
    if (
        code == grpc.StatusCode.FAILED_PRECONDITION
        and _details(error, error_details_pb2.ErrorInfo).reason == KEY_REUSED_REASON
    ):
        return KeyReusedError(error, attempts, key or "")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(error, attempts)
    return RejectedError(error, attempts)


def load_service_config() -> str:
    """The recommended service config JSON (shipped in this package), compacted, for the
    `grpc.service_config` channel option."""
    text = (resources.files("todo_client") / "service-config.json").read_text()
    return json.dumps(json.loads(text))


@dataclass(frozen=True)
class WriteResult:
    """A write's answer: the todo, whether it was a replay, and the key it was sent with."""

    todo: todo_pb2.Todo
    replayed: bool
    idempotency_key: str
    attempts: int = 1
    failures: list = field(default_factory=list)
    """The code of each failed attempt, in order."""


@dataclass(frozen=True)
class CompleteResult:
    """CompleteTodos' answer: the todos in request order, whether it was a replay, the key."""

    todos: list
    """The `todo_pb2.Todo`s after the change, in the order of the request's ids."""
    replayed: bool
    idempotency_key: str
    attempts: int = 1


class TodoClient:
    """TodoService over one channel. Use as a context manager, or call close()."""

    def __init__(
        self,
        target: str,
        *,
        token: Optional[str] = None,
        token_provider: Optional[Callable[[], str]] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        service_config: Optional[str] = None,
        retry_policy: Optional[RetryPolicy] = None,
    ) -> None:
        if token is not None and token_provider is not None:
            raise ValueError("pass token or token_provider, not both")
        self._policy = retry_policy or RetryPolicy()
        options = [
            ("grpc.service_config", service_config or load_service_config()),
            ("grpc.enable_retries", 1),
            # Reconnect quickly after a restart (grpc's default starts at 1 s, grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = todo_pb2_grpc.TodoServiceStub(self._channel)
        self._token_provider: Optional[Callable[[], str]] = (
            token_provider if token is None else (lambda: token)
        )

    def __enter__(self) -> "TodoClient":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _metadata(self, idempotency_key: Optional[str] = None) -> list[tuple[str, str]]:
        metadata = []
        if self._token_provider is not None:
            # Asked again for every attempt: the credential may have rotated since.
            metadata.append(("authorization", f"Bearer {self._token_provider().strip()}"))
        if idempotency_key is not None:
            metadata.append(("idempotency-key", idempotency_key))
        return metadata

    def _call(
        self,
        method: Callable,
        request,
        idempotency_key: Optional[str] = None,
        deadline: Optional[float] = None,
    ):
        """Sends `request` until answered, the answer is final, or time or attempts run out.
        `deadline` is the caller's, as a `time.monotonic()` value. Returns (response, call,
        failures)."""
        policy = self._policy
        end = time.monotonic() + policy.budget
        if deadline is not None:
            end = min(end, deadline)
        failures: list = []
        while True:
            timeout = max(0.0, min(policy.attempt_timeout, end - time.monotonic()))
            try:
                response, call = method.with_call(
                    request,
                    metadata=self._metadata(idempotency_key),
                    timeout=timeout,
                    # Without retries of our own, the service config decides.
                    wait_for_ready=True if policy.max_attempts > 1 else None,
                )
                return response, call, failures
            except grpc.RpcError as error:
                attempts = len(failures) + 1
                if not is_retryable(error):
                    raise _final(error, attempts, idempotency_key) from None
                failures.append(error.code())
                pause = policy.backoff(attempts)
                if attempts >= policy.max_attempts or time.monotonic() + pause >= end:
                    raise OutcomeUnknownError(error, attempts, idempotency_key) from None
                time.sleep(pause)

    def _write(
        self, method, request, idempotency_key: Optional[str], deadline: Optional[float]
    ) -> WriteResult:
        key = idempotency_key or str(uuid.uuid4())
        todo, call, failures = self._call(method, request, key, deadline)
        replayed = dict(call.initial_metadata()).get(REPLAYED_HEADER) == "true"
        return WriteResult(
            todo=todo,
            replayed=replayed,
            idempotency_key=key,
            attempts=len(failures) + 1,
            failures=failures,
        )

    def create_todo(
        self,
        title: str,
        description: str = "",
        completed: bool = False,
        *,
        idempotency_key: Optional[str] = None,
        deadline: Optional[float] = None,
    ) -> WriteResult:
        """Creates a todo. Pass `idempotency_key` only to retry an earlier logical call (after
        an `OutcomeUnknownError`); `deadline` is a `time.monotonic()` value."""
        request = todo_pb2.CreateTodoRequest(
            todo=todo_pb2.Todo(title=title, description=description, completed=completed)
        )
        return self._write(self._stub.CreateTodo, request, idempotency_key, deadline)

    def update_todo(
        self,
        todo: todo_pb2.Todo,
        update_mask: Optional[Sequence[str]] = None,
        *,
        idempotency_key: Optional[str] = None,
        deadline: Optional[float] = None,
    ) -> WriteResult:
        """Replaces `todo` (by todo.id; todo.etag, if set, must match), or only the fields in
        `update_mask` (`title`, `description`, `completed`)."""
        request = todo_pb2.UpdateTodoRequest(
            todo=todo,
            update_mask=field_mask_pb2.FieldMask(paths=list(update_mask or [])),
        )
        return self._write(self._stub.UpdateTodo, request, idempotency_key, deadline)

    def complete_todos(
        self,
        ids: Sequence[str],
        *,
        idempotency_key: Optional[str] = None,
        deadline: Optional[float] = None,
    ) -> CompleteResult:
        """Marks the caller's todos with `ids` completed, all of them or none (NOT_FOUND, as a
        `RejectedError`, if one is not the caller's)."""
        request = todo_pb2.CompleteTodosRequest(ids=list(ids))
        written = self._write(self._stub.CompleteTodos, request, idempotency_key, deadline)
        return CompleteResult(
            todos=list(written.todo.todos),
            replayed=written.replayed,
            idempotency_key=written.idempotency_key,
            attempts=written.attempts,
        )

    def get_todo(self, todo_id: str) -> todo_pb2.Todo:
        return self._call(self._stub.GetTodo, todo_pb2.GetTodoRequest(id=todo_id))[0]

    def list_page(
        self, page_size: int = 0, page_token: str = "", completed: Optional[bool] = None
    ) -> todo_pb2.ListTodosResponse:
        request = todo_pb2.ListTodosRequest(page_size=page_size, page_token=page_token)
        if completed is not None:
            request.completed = completed
        return self._call(self._stub.ListTodos, request)[0]

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
        """Deletes a todo; succeeds whether or not it existed (so it is retried like a read)."""
        self._call(self._stub.DeleteTodo, todo_pb2.DeleteTodoRequest(id=todo_id, etag=etag))
