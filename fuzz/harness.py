"""What the fuzzers share: the command line, the input framing and the target architecture.

Each fuzzer is a libFuzzer program run by atheris: corpus directories and libFuzzer's own
`-flag=value` options are its arguments (`-max_total_time=60`); memory is watched by
`MemoryGuard`.
"""

from __future__ import annotations

import os
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
    """The tiny generator and discriminator (with optimizer moments) every fuzzed state
    is decoded against, as `CentreState` keyword arguments."""
    torch.manual_seed(generation)
    generator = {
        "0.weight": torch.randn(4, 3),
        "0.bias": torch.randn(4),
        "1.steps": torch.tensor(7),
    }
    discriminator = {"0.weight": torch.randn(1, 4).double(), "0.bias": torch.randn(1).double()}
    return {
        "generator": generator,
        "discriminator": discriminator,
        "generator_moments": {"0.step": torch.tensor(2.0), "0.exp_avg": torch.randn(4, 3)},
        "discriminator_moments": {"0.step": torch.tensor(2.0), "0.exp_avg_sq": torch.rand(1, 4)},
        "generator_ema": {name: tensor.clone() for name, tensor in generator.items()},
    }


def resident_mb() -> float:
    """This process's resident memory now (Linux), not its peak."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemoryGuard:
    """Fails an input once resident memory has grown past `limit_mb` over what it was
    after the first `settle` inputs: unbounded memory is a finding.

    libFuzzer's own -rss_limit_mb reads the peak RSS, which Linux carries over from the
    parent process through fork and exec (a test runner's peak, say), so it is off.
    """

    def __init__(self, limit_mb: float = 256, settle: int = 2000, every: int = 500) -> None:
        self.limit_mb, self.settle, self.every = limit_mb, settle, every
        self.calls = 0
        self.baseline: float | None = None

    def check(self) -> None:
        self.calls += 1
        if self.calls == self.settle:
            self.baseline = resident_mb()
        elif self.baseline is not None and self.calls % self.every == 0:
            grown = resident_mb() - self.baseline
            if grown > self.limit_mb:
                raise MemoryError(f"resident memory grew {grown:.0f} MB in {self.calls} inputs")


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
        guard = MemoryGuard()

        def guarded(data: bytes) -> None:
            test_one_input(data)
            guard.check()

        atheris.Setup([*sys.argv, "-rss_limit_mb=0"], guarded)
        atheris.Fuzz()
