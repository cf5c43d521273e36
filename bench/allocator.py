"""The cell's allocator setting: a heap that keeps its top against one that hands it back.

A cell process fixes glibc's mmap threshold (`--mmap-threshold`, 4 MiB), which also stops
glibc from raising its trim threshold with it: left at 128 KiB, every block under 4 MiB
freed at a heap's top went back to the kernel and came back as fresh pages. The cell now
sets the trim threshold to twice the mmap threshold. In one process, rounds alternate the
two trim thresholds (glibc takes either at any time) and time, under each:

  training  a plain GAN loop of --batches batches (the default MNIST perceptrons, Adam,
            one torch thread): the training phase's floor (`bench/overhead.py`);
  pull      one GetCentre pull of a --megabytes state from a cell server (`bench/exchange.py`).

Prints the median time of each and the minor page faults per round.

    python bench/allocator.py --data ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from exchange import grpc_pull, make_state
from lipizzaner_cell.cell_main import M_TRIM_THRESHOLD, fix_mmap_threshold
from lipizzaner_core.contract import CELL_FLAGS
from lipizzaner_core.spec import parse_run
from overhead import manifest, plain_loop
from rich.console import Console
from rich.table import Table

GLIBC_TRIM_DEFAULT = 128 << 10


def timed(work: Callable[[], object]) -> tuple[float, int]:
    """Seconds and minor page faults of one call."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--megabytes", type=int, default=10, help="the pulled state's size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mmap_threshold = int(CELL_FLAGS["mmap_threshold"].default or 0)
    if not fix_mmap_threshold(mmap_threshold):
        raise SystemExit("needs glibc")
    libc = ctypes.CDLL(None)
    settings = {"trim at 128 KiB (glibc's, before)": GLIBC_TRIM_DEFAULT}
    settings["trim at twice the mmap threshold (now)"] = 2 * mmap_threshold
    measured: dict[str, dict[str, list[float]]] = {
        label: {"training": [], "training faults": [], "pull": [], "pull faults": []}
        for label in settings
    }
    with tempfile.TemporaryDirectory() as output, grpc_pull(make_state(args.megabytes)) as pull:
        train = plain_loop(parse_run(manifest(args.data, 1, output)), args.batches)
        train()  # warm-up
        for _ in range(args.rounds):
            for label, trim in settings.items():
                libc.mallopt(M_TRIM_THRESHOLD, trim)
                row = measured[label]
                seconds, faults = timed(train)
                row["training"].append(seconds)
                row["training faults"].append(faults)
                seconds, faults = timed(pull)
                row["pull"].append(seconds)
                row["pull faults"].append(faults)

    table = Table(
        title=f"mmap threshold {mmap_threshold >> 20} MiB, medians of {args.rounds} rounds"
    )
    for column in (
        "heap",
        f"training: s / {args.batches} batches",
        "page faults",
        f"{args.megabytes} MB pull: ms",
        "page faults",
    ):
        table.add_column(column, justify="right")
    for label, row in measured.items():
        table.add_row(
            label,
            f"{statistics.median(row['training']):.3f}",
            f"{statistics.median(row['training faults']):,.0f}",
            f"{statistics.median(row['pull']) * 1000:.2f}",
            f"{statistics.median(row['pull faults']):,.0f}",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
