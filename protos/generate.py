"""Regenerate the committed Python stubs from protos/ with grpcio-tools.

    python protos/generate.py            # writes core/lipizzaner_core/wire/
The stubs are committed (the cell image needs no protoc at build time);
tests/test_wire.py regenerates them into a temporary folder and fails if they differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "protos" / "lipizzaner" / "v1"
TARGET = ROOT / "core" / "lipizzaner_core" / "wire"
GENERATED = ("cell_pb2.py", "cell_pb2.pyi")  # messages only: see wire/service.py


def generate(target: Path = TARGET) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={target}",
            f"--pyi_out={target}",
            str(PROTO_DIR / "cell.proto"),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    return [target / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET):
        print(path)
