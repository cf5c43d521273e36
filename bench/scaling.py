"""Weak scaling: 1, 4, 9 and 16 cells as local processes, one torch thread each.

Every cell does the same work per generation (MNIST, the default perceptrons, a fixed
number of batches), so on a machine with at least as many cores as cells the time per
generation (each cell's own timings in its history, the first generation left out as a
warm-up) should stay flat; on fewer cores it grows with cells / cores. The exchange
bytes each cell receives per generation come from the cells' own metrics and must not
grow with the grid (each cell talks to its four neighbours, whatever the grid's size).
Memory per cell is the peak, over the run, of the cell processes' resident sets (RSS)
summed and divided by the cells, and the same for their proportional sets (PSS: pages
shared with other processes, such as torch's libraries, count once in all), read from
/proc while it runs. `--cells-per-process` runs each grid once per grouping
(`spec.cell.cellsPerPod`; 0: the whole grid in one process), side by side;
`--stacking both` runs each grouping of several cells a process once more with them
stacked (`training.stacking.cells` = the cells of a process).
`--score auto` measures the default cell, FID classifier included; `--cell-env` sets
variables in the cells' environment (thread pools, say).

    python bench/scaling.py --data ../shared/datasets/mnist --sizes 1 2 3 4 --plot docs/scaling.png
    python bench/scaling.py --data ../shared/datasets/mnist --sizes 1 2 3 --score auto \
        --cells-per-process 1 0
    python bench/scaling.py --data ../shared/datasets/mnist --sizes 2 4 --score auto \
        --cells-per-process 1 0 --stacking both
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common import mnist_manifest
from lipizzaner_cell.algorithm.report import GENERATION_PHASES
from lipizzaner_cell.executors.local_processes import LocalRun
from lipizzaner_cell.runtime.history import read_history
from lipizzaner_core.spec import parse_run
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

WATCHED = ("lipizzaner_cell_generations_completed", "lipizzaner_cell_exchange_received_bytes")


@dataclass
class Setting:
    data: str
    generations: int
    batches: int
    device: str
    score: str  # the mixture's scoreType: none, or auto (FID on MNIST: the default)
    cell_env: dict[str, str]
    cuda_graphs: bool = True
    pin: bool = False  # each process on its own cores (os.sched_setaffinity)


def manifest(
    setting: Setting, side: int, output: str, per_process: int, stacked: bool = False
) -> dict:
    document = mnist_manifest(
        f"scaling-{side}x{side}",
        side,
        setting.data,
        setting.generations,
        output,
        batches=setting.batches,
        device=setting.device,
        cuda_graphs=setting.cuda_graphs,
        mixture={"scoreType": setting.score},
        checkpoint={"every": setting.generations},
    )
    document["spec"]["cell"] = {"cellsPerPod": per_process or side * side}
    if stacked:
        document["spec"]["training"]["stacking"] = {"cells": per_process or side * side}
    return document


def memory_mb(pid: int) -> dict[str, float]:
    """A process's resident and proportional set sizes in MB (Linux), or {} once gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key.lower()] = int(rest.split()[0]) / 1024
    return values


def scrape(port: int) -> dict[str, float]:
    """The watched totals of one cell (summed over labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        text = answer.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in WATCHED:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_total", "_sum", "_count")):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def measure(
    setting: Setting, side: int, per_process: int, stacked: bool = False
) -> dict[str, float]:
    """Run one grid to the end, scraping every process until it exits; per-cell averages."""
    cells = side * side
    with tempfile.TemporaryDirectory() as workdir:
        run = parse_run(manifest(setting, side, f"{workdir}/out", per_process, stacked))
        local = LocalRun(run, Path(workdir), threads=1)
        for process in local.processes:
            process.env = {**process.env, **setting.cell_env}
        last: dict[int, dict[str, float]] = {}
        peak = {"rss": 0.0, "pss": 0.0}
        local.start()
        if setting.pin:
            pin(local)
        started = time.perf_counter()
        try:
            while not local.tick():
                for index, port in enumerate(local.metrics_ports):
                    # Starting, or already done: then its last scrape stands.
                    with contextlib.suppress(OSError):
                        last[index] = scrape(port)
                sizes = [memory_mb(p.process.pid) for p in local.processes if p.process]
                for key in peak:
                    peak[key] = max(peak[key], sum(s.get(key, 0.0) for s in sizes) / cells)
                time.sleep(0.2)
        finally:
            local.stop_all()
            local.close()
        wall = time.perf_counter() - started
        # From each cell's own record: a fast cell may finish between two scrapes.
        # The first generation warms caches, kernels and graphs up.
        lines = [
            line
            for i in range(side * side)
            for line in read_history(local.layout.cell(i))
            if line["generation"] > 1
        ]
        timed = [sum(line["seconds"].values()) for line in lines]
        training = [line["seconds"]["training"] for line in lines]
        phases = {
            name: statistics.mean(line["seconds"].get(name, 0.0) for line in lines)
            for name in GENERATION_PHASES
        }
    generations_seen = [
        c.get("lipizzaner_cell_generations_completed_total", 0) for c in last.values()
    ]
    received = [c.get("lipizzaner_cell_exchange_received_bytes_total", 0) for c in last.values()]
    done = sum(generations_seen) or 1
    return {
        "cells": cells,
        "per_process": min(per_process or cells, cells),
        "grouping": per_process,
        "stacked": stacked,
        "seconds_per_generation": statistics.mean(timed),
        "training_per_generation": statistics.mean(training),
        "phases": phases,
        "wall": wall,
        "bytes_per_generation": sum(received) / done,
        "rss": peak["rss"],
        "pss": peak["pss"],
    }


def pin(local: LocalRun) -> None:
    """Process i on cores i*k .. i*k+k-1 (k: cores per process), while there are cores."""
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // len(local.processes))
    for i, process in enumerate(local.processes):
        mine = set(cores[i * share : (i + 1) * share])
        if process.process is not None and mine:
            os.sched_setaffinity(process.process.pid, mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4], help="grid sides")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--batches", type=int, default=50, help="batches per generation")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: every cell shares GPU 0"
    )
    parser.add_argument("--score", choices=["none", "auto"], default="none")
    parser.add_argument("--cell-env", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--plain-steps", action="store_true", help="CUDA: no graphs (training.cudaGraphs false)"
    )
    parser.add_argument(
        "--cells-per-process",
        type=int,
        nargs="+",
        default=[1],
        help="spec.cell.cellsPerPod of each run (0: the whole grid in one process)",
    )
    parser.add_argument(
        "--stacking",
        choices=["off", "on", "both"],
        default="off",
        help="stack the cells of a process (training.stacking); both: each way, side by side",
    )
    parser.add_argument("--pin", action="store_true", help="each process on its own cores")
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--plot", help="write a chart here (PNG)")
    args = parser.parse_args()
    cell_env = dict(item.split("=", 1) for item in args.cell_env)
    setting = Setting(
        args.data,
        args.generations,
        args.batches,
        args.device,
        args.score,
        cell_env,
        cuda_graphs=not args.plain_steps,
        pin=args.pin,
    )
    stackings = {"off": [False], "on": [True], "both": [False, True]}[args.stacking]
    results = [
        measure(setting, side, per_process, stacked)
        for side in args.sizes
        for per_process in args.cells_per_process
        for stacked in stackings
        if not stacked or min(per_process or side * side, side * side) > 1
    ]
    base = results[0]["seconds_per_generation"]
    cores = os.cpu_count() or 1
    machine = f"{cores} cores ({platform.processor() or platform.machine()})"
    if args.device == "cuda":
        import torch

        machine += f", cells sharing one {torch.cuda.get_device_name()}"
    extra = "".join(f", {k}={v}" for k, v in cell_env.items())
    steps = ", plain steps" if args.plain_steps and args.device == "cuda" else ""
    steps += ", pinned" if args.pin else ""
    table = Table(title=f"Weak scaling on {machine}, mixture score {args.score}{extra}{steps}")
    for column in (
        "cells",
        "cells / process",
        "s / generation / cell",
        "of which training",
        "vs 1 cell",
        "ideal on this machine",
        "cell-generations / s",
        "exchange MB / generation / cell",
        "peak RSS MB / cell",
        "peak PSS MB / cell",
        "wall s",
    ):
        table.add_column(column, justify="right")
    for result in results:
        ideal = max(1.0, result["cells"] / cores)
        table.add_row(
            str(result["cells"]),
            _per_process(result),
            f"{result['seconds_per_generation']:.2f}",
            f"{result['training_per_generation']:.2f}",
            f"{result['seconds_per_generation'] / base:.2f}x",
            f"{ideal:.2f}x",
            f"{result['cells'] / result['seconds_per_generation']:.2f}",
            f"{result['bytes_per_generation'] / 1e6:.2f}",
            f"{result['rss']:.0f}",
            f"{result['pss']:.0f}",
            f"{result['wall']:.0f}",
        )
    console = Console(width=160)
    console.print(table)
    console.print(phase_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": results}, indent=1))
    if args.plot:
        ideal_label = f"ideal on {cores} cores" if args.device == "cpu" else "ideal: flat"
        plot(results, cores, ideal_label, args.plot)


def phase_table(results: list[dict]) -> Table:
    """Each phase of a generation (the cells' own timings), so that what grows with the
    grid beyond training shows by name."""
    table = Table(title="Seconds per generation of one cell, by phase")
    for column in ("cells", "cells / process", *GENERATION_PHASES):
        table.add_column(column, justify="right")
    for result in results:
        table.add_row(
            str(result["cells"]),
            _per_process(result),
            *(f"{result['phases'][name]:.3f}" for name in GENERATION_PHASES),
        )
    return table


def _per_process(row: dict) -> str:
    return f"{row['per_process']}{', stacked' if row.get('stacked') else ''}"


def _label(row: dict) -> str:
    """A line of the plot: its own label, else its grouping."""
    if "label" in row:
        return row["label"]
    names = {0: "a process per grid", 1: "a process per cell"}
    name = names.get(row["grouping"], f"{row['grouping']:g} cells / process")
    return f"{name}, stacked" if row.get("stacked") else name


def plot(results: list[dict[str, float]], cores: int, ideal_label: str, path: str) -> None:
    """Time per generation, exchange and memory against cells: a line per grouping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = results[0]["seconds_per_generation"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.2))
    for label in dict.fromkeys(_label(r) for r in results):
        rows = [r for r in results if _label(r) == label]
        cells = [r["cells"] for r in rows]
        left.plot(cells, [r["seconds_per_generation"] / base for r in rows], "o-", label=label)
        middle.plot(cells, [r["bytes_per_generation"] / 1e6 for r in rows], "o-", label=label)
        right.plot(cells, [r["rss"] for r in rows], "o-", label=label)
    every = sorted({r["cells"] for r in results})
    left.plot(every, [max(1.0, c / cores) for c in every], "k--", label=ideal_label)
    left.set_ylabel("time per generation vs 1 cell")
    middle.set_ylabel("MB received / generation / cell")
    right.set_ylabel("peak RSS MB / cell")
    for axis in (left, middle, right):
        axis.set_xlabel("cells (one thread each)")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
