"""Generates the Python gRPC code for proto/todo/v1/todo.proto into the package, as
`todo_client._proto.todo.v1` (`todo_pb2`, `todo_pb2_grpc`, and `.pyi` stubs), and copies the
recommended service config (../service-config.json) into the package. The generated code is
checked in: the wheel ships it, and CI runs `generate.py --check`, which fails when the
checked-in copy no longer matches the proto.

    .venv/bin/pip install -r requirements.txt
    .venv/bin/python generate.py            # regenerate after changing the proto
    .venv/bin/python generate.py --check    # what CI runs
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
SERVICE_CONFIG = HERE.parent / "service-config.json"
PACKAGE = HERE / "todo_client"
GENERATED = PACKAGE / "_proto"
# protoc writes `from todo.v1 import todo_pb2`; inside the package that module is here:
IMPORT_FROM = "from todo.v1 import"
IMPORT_TO = "from todo_client._proto.todo.v1 import"


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / "todo" / "v1" / "todo.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in (out, out / "todo", out / "todo" / "v1"):
        (package / "__init__.py").touch()
    for module in (out / "todo" / "v1").glob("*.py*"):
        text = module.read_text()
        module.write_text(text.replace(IMPORT_FROM, IMPORT_TO))


def differences(expected: Path, actual: Path) -> list[str]:
    """Files that differ between two generated trees (relative paths)."""
    names = sorted(
        {p.relative_to(expected).as_posix() for p in expected.rglob("*") if p.is_file()}
        | {p.relative_to(actual).as_posix() for p in actual.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    )
    return [
        name
        for name in names
        if not (expected / name).is_file()
        or not (actual / name).is_file()
        or not filecmp.cmp(expected / name, actual / name, shallow=False)
    ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as scratch:
            fresh = Path(scratch) / "_proto"
            generate(fresh)
            stale = differences(fresh, GENERATED)
        if not filecmp.cmp(SERVICE_CONFIG, PACKAGE / "service-config.json", shallow=False):
            stale.append("service-config.json")
        if stale:
            print(f"stale generated files (run generate.py): {stale}", file=sys.stderr)
            return 1
        print("generated code and service config match the proto")
        return 0
    if GENERATED.exists():
        shutil.rmtree(GENERATED)
    generate(GENERATED)
    shutil.copyfile(SERVICE_CONFIG, PACKAGE / "service-config.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
