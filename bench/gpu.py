"""One cell's generation on CUDA against the CPU, for the MNIST perceptrons and a DCGAN.

A 2x2 MNIST grid in this process (so each cell scores its full neighbourhood), default
settings except the networks; the median seconds of one cell-generation after a warm-up
generation: on the CPU with one thread (a cell's default per core), on the CPU with every
core, and on CUDA. Then, on CUDA, the host-device synchronisations of one generation,
counted by torch's sync debug mode: the batch loop must make none. Grids of cell
processes sharing one GPU: `bench/scaling.py --device cuda`.

    python bench/gpu.py --data ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import warnings
from collections import defaultdict

import torch
from common import mnist_manifest
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import LipizzanerRun, parse_run
from rich.console import Console
from rich.table import Table

NETWORKS = {
    "mlp": {},
    "dcgan": {"generator": {"architecture": "dcgan"}, "discriminator": {"architecture": "dcgan"}},
}


def manifest(
    data: str, network: str, device: str, graphs: bool, generations: int, batches: int, out: str
):
    return mnist_manifest(
        f"gpu-{network}",
        2,
        data,
        generations,
        out,
        batches=batches,
        device=device,
        cuda_graphs=graphs,
        network=NETWORKS[network],
        checkpoint={"every": generations},
    )


def generation_seconds(run: LipizzanerRun) -> tuple[dict[str, float], CellEngine]:
    """Median seconds per cell-generation (total and training), and cell 0's engine."""
    seconds: dict[str, list[float]] = defaultdict(list)

    def record(_cell: int, report) -> None:
        if report.generation > 1:  # the first generation warms caches and kernels up
            seconds["total"].append(sum(report.seconds.values()))
            seconds["training"].append(report.seconds["training"])

    outcome = run_in_process(run, resume=False, on_report=record)
    return {k: statistics.median(v) for k, v in seconds.items()}, outcome.engines[0]


def count_syncs(engine: CellEngine) -> dict[str, int]:
    """Blocking host-device synchronisations: in the batch loop, and in a whole generation."""

    def syncs(action) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                action()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        # Not the one-time notice that the debug mode is a prototype.
        return sum("called a synchronizing" in str(w.message) for w in caught)

    players = engine.select(engine.snapshot_neighbourhood())
    return {"training": syncs(lambda: engine.train(players)), "generation": syncs(engine.step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--generations", type=int, default=3, help="the first is a warm-up")
    parser.add_argument(
        "--batches",
        type=int,
        nargs=2,
        default=[100, 20],
        metavar=("MLP", "DCGAN"),
        help="batches per generation for each network (the DCGAN is slow on one CPU core)",
    )
    parser.add_argument("--cuda-only", action="store_true", help="skip the CPU rows")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark compares CUDA with the CPU")
    cores = os.cpu_count() or 1
    settings = {}
    if not args.cuda_only:
        settings = {
            "CPU, 1 thread": ("cpu", 1, False),
            f"CPU, {cores} threads": ("cpu", cores, False),
        }
    settings["CUDA, plain steps"] = ("cuda", 1, False)
    settings["CUDA, graphs"] = ("cuda", 1, True)
    console = Console()
    table = Table(
        title=f"One cell-generation of a 2x2 MNIST grid: {torch.cuda.get_device_name()}, "
        f"{cores} cores ({platform.processor() or platform.machine()})"
    )
    for column in ("network", "batches", "device", "s / generation", "training s", "vs first"):
        table.add_column(column, justify="right")
    syncs = {}
    with tempfile.TemporaryDirectory() as out:
        for network, batches in zip(NETWORKS, args.batches, strict=True):
            baseline = None
            for label, (device, threads, graphs) in settings.items():
                torch.set_num_threads(threads)
                spec = manifest(args.data, network, device, graphs, args.generations, batches, out)
                run = parse_run(spec)
                seconds, engine = generation_seconds(run)
                baseline = baseline or seconds["total"]
                table.add_row(
                    network,
                    str(batches),
                    label,
                    f"{seconds['total']:.3f}",
                    f"{seconds['training']:.3f}",
                    f"{baseline / seconds['total']:.1f}x",
                )
                if device == "cuda":
                    syncs[f"{network}, {label}"] = count_syncs(engine)
    console.print(table)
    for setting, counted in syncs.items():
        console.print(
            f"{setting}: {counted['training']} synchronisations in the batch loop, "
            f"{counted['generation']} in a whole generation"
        )


if __name__ == "__main__":
    main()
