"""Fitness sample size: what a smaller sample costs in quality, and what it saves in time.

Fitness (step 2) and replacement (step 5) score every generator against every
discriminator of the neighbourhood on `fitness.sampleSize` real and fake samples, so
their time is proportional to it. This runs the same 2x2 MNIST grid at the default
settings once per sample size and seed, side by side in worker processes of one thread,
and prints the final ensemble's FID and TVD and the seconds both steps took per
cell-generation.

    python bench/fitness_samples.py --data ../shared/datasets/mnist --sizes 1000 500
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor

import torch
from common import mnist_manifest
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import parse_run
from rich.console import Console
from rich.table import Table


def manifest(data: str, size: int, seed: int, generations: int, output: str) -> dict:
    return mnist_manifest(
        f"fitness-{size}",
        2,
        data,
        generations,
        output,
        seed=seed,
        coevolution={"fitness": {"sampleSize": size}},
    )


def train(job: tuple[str, int, int, int]) -> dict:
    """One run in this worker (one thread): final scores, fitness + replacement seconds."""
    data, size, seed, generations = job
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as output:
        outcome = run_in_process(parse_run(manifest(data, size, seed, generations, output)))
    seconds = [
        r.seconds["fitness"] + r.seconds["replacement"]
        for cell in outcome.reports
        for r in cell
        if r.generation > 1
    ]
    scores = outcome.manifest["scores"]
    return {"size": size, "seed": seed, "seconds": statistics.median(seconds), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 500])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--generations", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    args = parser.parse_args()
    jobs = [
        (args.data, size, seed, args.generations)
        for size in args.sizes
        for seed in range(args.seeds)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(train, jobs))
    table = Table(title=f"2x2 MNIST, {args.generations} generations x 100 batches per cell")
    for column in ("fitness samples", "FID per seed", "mean FID", "mean TVD", "s / generation"):
        table.add_column(column, justify="right")
    for size in args.sizes:
        rows = [r for r in results if r["size"] == size]
        table.add_row(
            str(size),
            " ".join(f"{r['fid']:.0f}" for r in rows),
            f"{statistics.mean(r['fid'] for r in rows):.1f}",
            f"{statistics.mean(r['tvd'] for r in rows):.3f}",
            f"{statistics.median(r['seconds'] for r in rows):.3f}",
        )
    Console().print(table)
    Console().print("s / generation: fitness and replacement together, per cell-generation")


if __name__ == "__main__":
    main()
