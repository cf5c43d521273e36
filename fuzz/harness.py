"""What the fuzzers share: the command line, the input framing and the target architecture.

Each fuzzer is a libFuzzer program run by atheris: corpus directories and libFuzzer's own
`-flag=value` options are its arguments (`-max_total_time=60`, `-rss_limit_mb=1024`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import atheris
import torch

OUR_PACKAGES = ["lipizzaner_cell", "lipizzaner_core"]  # instrumented for coverage; not torch
LENGTH_BYTES = 3  # a framed chunk: 3-byte little-endian length, then that many bytes


def frame(chunks: list[bytes]) -> bytes:
    """Chunks as one fuzzer input (how the seed corpus is written)."""
    return b"".join(len(c).to_bytes(LENGTH_BYTES, "little") + c for c in chunks)


def unframe(data: bytes) -> list[bytes]:
    """One fuzzer input as chunks; a short last length takes what is left."""
    chunks, position = [], 0
    while position < len(data):
        length = int.from_bytes(data[position : position + LENGTH_BYTES], "little")
        position += LENGTH_BYTES
        chunks.append(data[position : position + length])
        position += length
    return chunks


def target_state(generation: int = 3) -> dict[str, dict[str, torch.Tensor]]:
    """The tiny generator and discriminator every fuzzed state is decoded against."""
    torch.manual_seed(generation)
    generator = {
        "0.weight": torch.randn(4, 3),
        "0.bias": torch.randn(4),
        "1.steps": torch.tensor(7),
    }
    discriminator = {"0.weight": torch.randn(1, 4).double(), "0.bias": torch.randn(1).double()}
    return {"generator": generator, "discriminator": discriminator}


def run(
    test_one_input: Callable[[bytes], None], doc: str, seeds: Callable[[], dict[str, bytes]]
) -> None:
    """`--help` prints the script's doc, `--write-seeds DIR` writes its hand-made seeds
    (`seed-<name>`); anything else goes to libFuzzer."""
    if "--help" in sys.argv or "-h" in sys.argv:
        print(doc)
    elif sys.argv[1:2] == ["--write-seeds"]:
        folder = Path(sys.argv[2])
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (folder / f"seed-{name}").write_bytes(data)
    else:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
