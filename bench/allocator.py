"""The cell's allocator setting: a heap that keeps its top against one that hands it back.

A cell process fixes glibc's mmap threshold (`--mmap-threshold`, 4 MiB), which also stops
glibc from raising its trim threshold with it: left at 128 KiB, every block under 4 MiB
freed at a heap's top went back to the kernel and came back as fresh pages. The cell now
sets the trim threshold to twice the mmap threshold. In one process, the two trim
thresholds alternate (glibc takes either at any time), and under each it times:

  generation  a 2x2 MNIST grid's cell-generations (the default perceptrons, --batches
              batches, no mixture score, one torch thread), all cells in this process,
              the setting switched between generations; the first is a warm-up;
  pull        one GetCentre pull of a --megabytes state from a cell server, in turns.

Prints medians, and the minor page faults of each.

    python bench/allocator.py --data ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import tempfile
import time

import torch
from common import mnist_manifest
from exchange import grpc_pull, make_state
from lipizzaner_cell.algorithm.report import GenerationReport
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.cell_process import M_TRIM_THRESHOLD, fix_mmap_threshold
from lipizzaner_core.contract import CELL_FLAGS
from lipizzaner_core.spec import parse_run
from rich.console import Console
from rich.table import Table

GLIBC_TRIM_DEFAULT = 128 << 10
COLUMNS = ("generation", "training", "fitness + replacement", "faults", "pull", "pull faults")


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--generations", type=int, default=13)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--megabytes", type=int, default=10, help="the pulled state's size")
    parser.add_argument("--pulls", type=int, default=30, help="pulls under each setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mmap_threshold = int(CELL_FLAGS["mmap_threshold"].default or 0)
    if not fix_mmap_threshold(mmap_threshold):
        raise SystemExit("needs glibc")
    libc = ctypes.CDLL(None)
    trims = {"trim at 128 KiB (glibc's, before)": GLIBC_TRIM_DEFAULT}
    trims["trim at twice the mmap threshold (now)"] = 2 * mmap_threshold
    labels = list(trims)
    measured = {label: {column: [] for column in COLUMNS} for label in labels}
    # Generation g runs under labels[g % 2]; each report's faults are those since the last.
    state = {"faults": page_faults(), "reports": 0}
    cells = 4

    def on_report(_cell: int, report: GenerationReport) -> None:
        faults = page_faults()
        if report.generation > 1:
            row = measured[labels[report.generation % 2]]
            row["generation"].append(sum(report.seconds.values()))
            row["training"].append(report.seconds["training"])
            row["fitness + replacement"].append(
                report.seconds["fitness"] + report.seconds["replacement"]
            )
            row["faults"].append(faults - state["faults"])
        state["reports"] += 1
        if state["reports"] % cells == 0:  # the next generation's setting
            libc.mallopt(M_TRIM_THRESHOLD, trims[labels[(report.generation + 1) % 2]])
        state["faults"] = page_faults()

    with tempfile.TemporaryDirectory() as output:
        manifest = mnist_manifest(
            "allocator",
            2,
            args.data,
            args.generations,
            output,
            batches=args.batches,
            mixture={"scoreType": "none"},
        )
        libc.mallopt(M_TRIM_THRESHOLD, trims[labels[1]])  # generation 1
        run_in_process(parse_run(manifest), resume=False, on_report=on_report)

    with grpc_pull(make_state(args.megabytes)) as pull:
        pull()
        for _ in range(args.pulls):
            for label, trim in trims.items():
                libc.mallopt(M_TRIM_THRESHOLD, trim)
                faults, started = page_faults(), time.perf_counter()
                pull()
                measured[label]["pull"].append(time.perf_counter() - started)
                measured[label]["pull faults"].append(page_faults() - faults)

    table = Table(title=f"mmap threshold {mmap_threshold >> 20} MiB: medians")
    for column in (
        "heap",
        "s / cell-generation",
        "of which training",
        "fitness + replacement",
        "page faults / cell-generation",
        f"{args.megabytes} MB pull: ms",
        "page faults / pull",
    ):
        table.add_column(column, justify="right")
    for label, row in measured.items():
        median = {column: statistics.median(values) for column, values in row.items()}
        table.add_row(
            label,
            f"{median['generation']:.3f}",
            f"{median['training']:.3f}",
            f"{median['fitness + replacement']:.3f}",
            f"{median['faults']:,.0f}",
            f"{median['pull'] * 1000:.2f}",
            f"{median['pull faults']:,.0f}",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
