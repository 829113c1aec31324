"""Generates the Python gRPC code for proto/todo/v1/todo.proto into ./generated.

Run it after installing requirements.txt (the tests run it themselves):

    .venv/bin/python generate.py

The generated package is `todo.v1` (`todo_pb2`, `todo_pb2_grpc`); put ./generated on
PYTHONPATH (pytest.ini does) to import it.
"""

from importlib import resources
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
OUT = HERE / "generated"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        str(PROTO_ROOT / "todo" / "v1" / "todo.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Make `todo` and `todo.v1` regular packages.
    for package in (OUT / "todo", OUT / "todo" / "v1"):
        (package / "__init__.py").touch()


if __name__ == "__main__":
    main()
