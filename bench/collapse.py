"""Mode collapse on MNIST: a single GAN against a grid at equal total compute.

The single GAN (a 1x1 grid: the original's perceptrons, non-saturating loss, batch 100)
trains S x S x N generations; the S x S grid (2x2 by default) trains N generations in each
of its cells, so both spend the same number of training steps; the two run side by side
in two processes. Both use the same aggressive learning rate
(1e-3 by default), at which a single GAN tends to collapse onto a few digits. At each
checkpoint along the way the run's ensemble is scored on 10,000 samples: FID and the TVD
of its digit histogram from uniform (0.9: every sample the same digit).

    python bench/collapse.py --data ../shared/datasets/mnist --plot docs/collapse.png
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from common import mnist_manifest
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import parse_run
from rich.console import Console
from rich.table import Table


def manifest(data: str, side: int, generations: int, lr: float, output: str, device: str):
    return mnist_manifest(
        f"collapse-{side}x{side}",
        side,
        data,
        generations,
        output,
        device=device,
        coevolution={"learningRate": lr},
    )


def trajectory(job: tuple[str, int, int, int, float, str]) -> list[dict]:
    """Train in legs of `every` generations (each resumes the last); score after each."""
    data, side, generations, every, lr, device = job
    torch.set_num_threads(1)
    points = []
    with tempfile.TemporaryDirectory() as output:
        for end in range(every, generations + 1, every):
            spec = manifest(data, side, end, lr, output, device)
            spec["spec"]["checkpoint"] = {"every": every, "keep": 1}
            outcome = run_in_process(parse_run(spec))
            scores = outcome.manifest["scores"]
            steps = end * side * side * 100
            points.append({"generation": end, "steps": steps, **scores})
            Console().print(
                f"{side}x{side} generation {end}: FID {scores['fid']:.1f} TVD {scores['tvd']:.3f}"
            )
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--generations", type=int, default=25, help="N: the grid's generations")
    parser.add_argument("--every", type=int, default=5, help="score every this many generations")
    parser.add_argument("--side", type=int, default=2, help="S: the grid is S x S")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--plot", help="write the trajectories here (PNG)")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    cells = args.side * args.side
    jobs = [
        (args.data, 1, cells * args.generations, cells * args.every, args.lr, args.device),
        (args.data, args.side, args.generations, args.every, args.lr, args.device),
    ]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        single, grid = pool.map(trajectory, jobs)
    table = Table(
        title=f"MNIST at lr {args.lr}: equal training steps (100 batches = 1 cell-generation)"
    )
    grid_name = f"{args.side}x{args.side} ensemble"
    for column in ("training steps", "single GAN FID", "TVD", f"{grid_name} FID", "TVD"):
        table.add_column(column, justify="right")
    for one, four in zip(single, grid, strict=True):
        table.add_row(
            f"{one['steps']:,}",
            f"{one['fid']:.1f}",
            f"{one['tvd']:.3f}",
            f"{four['fid']:.1f}",
            f"{four['tvd']:.3f}",
        )
    best_single = min(p["fid"] for p in single)
    best_grid = min(p["fid"] for p in grid)
    table.add_row("best", f"{best_single:.1f}", "", f"{best_grid:.1f}", "", style="bold")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"single": single, "grid": grid}, indent=2))
    if args.plot:
        plot(single, grid, grid_name, args.lr, args.plot)


def plot(single: list[dict], grid: list[dict], grid_name: str, lr: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for points, label in ((single, "single GAN"), (grid, grid_name)):
        steps = [p["steps"] for p in points]
        left.plot(steps, [p["fid"] for p in points], "o-", label=label)
        right.plot(steps, [p["tvd"] for p in points], "o-", label=label)
    left.set_ylabel("FID (lower is better)")
    right.set_ylabel("TVD of the digit histogram")
    right.axhline(0.9, color="grey", linestyle=":", label="one digit only")
    for ax in (left, right):
        ax.set_xlabel(f"training steps (lr {lr})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
