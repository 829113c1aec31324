"""The shared fault scenario's workload (see `todo-faults --help`): TODO_WRITES logical creates
titled `{TODO_PREFIX}-{i}`, TODO_CONCURRENCY at a time, through the installed todo_client;
prints the report as the last line of stdout. TODO_RETRIES=off turns every retry off (the
client's and the channel's): the control run."""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from todo_client import RetryPolicy, TodoClient, TodoCallError

NO_RETRY_CONFIG = '{"methodConfig": [{"name": [{"service": "todo.v1.TodoService"}]}]}'


def main() -> None:
    target = os.environ["TODO_TARGET"]
    prefix = os.environ["TODO_PREFIX"]
    writes = int(os.environ["TODO_WRITES"])
    concurrency = int(os.environ["TODO_CONCURRENCY"])
    pause = int(os.environ["TODO_PAUSE_MS"]) / 1000
    retries = os.environ.get("TODO_RETRIES", "on") == "on"

    # TODO_RETRY_MODE=channel: only the channel's A6 retry policy (../service-config.json),
    # no retries of the client's own; for measuring what the service config alone rides out.
    mode = os.environ.get("TODO_RETRY_MODE") or ("client" if retries else "none")
    if mode == "client":
        client = TodoClient(target)
    elif mode == "channel":
        client = TodoClient(target, retry_policy=RetryPolicy.none())
    else:
        client = TodoClient(
            target, service_config=NO_RETRY_CONFIG, retry_policy=RetryPolicy.none()
        )
    lock = threading.Lock()
    next_index = iter(range(writes))
    report = {"ok": 0, "errors": 0, "codes": collections.Counter()}

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            try:
                client.create_todo(f"{prefix}-{i}")
                with lock:
                    report["ok"] += 1
            except TodoCallError as error:
                with lock:
                    report["errors"] += 1
                    report["codes"][error.code().name] += 1
            time.sleep(pause)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
