"""The shared fault scenarios (`todo-faults`, the project's own proxy and fault injector) with
this client: with retries, 0 errors reach the application and every logical write leaves
exactly one row; with every retry off (the control), the same fault surfaces errors."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import workspace_binary

HERE = Path(__file__).resolve().parent
WORKLOAD = f"{shlex.quote(sys.executable)} {shlex.quote(str(HERE / 'workload.py'))}"


def faults_binary() -> Path:
    """TODO_FAULTS_BIN, or the workspace's debug build."""
    return workspace_binary("TODO_FAULTS_BIN", "todo-faults", "-p", "todo-bench")


@pytest.mark.parametrize(
    "scenario", ["cut-after-headers", "cut-before-headers", "postgres-outage", "server-restart"]
)
@pytest.mark.parametrize("retries", ["on", "off"])
def test_fault_scenario(scenario: str, retries: str):
    command = [str(faults_binary()), "--scenario", scenario, "--retries", retries]
    command += ["--client-cmd", WORKLOAD]
    if os.environ.get("TODO_SERVER_BIN"):
        command += ["--server-bin", os.environ["TODO_SERVER_BIN"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    print(result.stdout, result.stderr)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, (report, result.stderr)
    if retries == "on":
        assert report["errors"] == 0, report
        assert report["missing"] == 0 and report["duplicated"] == 0, report
        assert report["rows"] == report["writes"], report
    else:
        assert report["errors"] > 0, report
