"""Quality against mode collapse: 1x1 vs 2x2 vs 3x3 grids at equal per-cell compute.

Part 1, 2-D: the 8-Gaussian ring and the 25-Gaussian grid, several seeds per grid size,
every cell training the same generations x batches; the final ensemble's modes covered
and high-quality fraction (10,000 samples). Part 2, MNIST (the 10,000-digit split): 1x1
vs 2x2 (and 3x3 with --mnist-sides 1 2 3) after the same generations; the final
ensemble's FID and TVD under the project's classifier, next to that classifier's own
reference points (real vs real, uniform noise), which make the numbers comparable.

    python bench/quality.py --data ../shared/datasets/mnist --plot docs/quality.png
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from common import grid_coevolution, run_manifest
from diversity import cell_generators
from lipizzaner_cell.algorithm.mixture import sample_mixture
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.scores.scorers import ClassifierScorer, ModeScorer
from lipizzaner_core.spec import LipizzanerRun, parse_run
from rich.console import Console
from rich.table import Table

TWO_D = {
    "ring": {"name": "gaussian-ring", "modes": 8, "std": 0.1},
    "grid": {"name": "gaussian-grid", "modesPerSide": 5, "std": 0.05},
}
TWO_D_NAMES = {dataset["name"] for dataset in TWO_D.values()}
SAMPLES = 10_000  # as the run's own final scores


def manifest(side: int, seed: int, spec: dict, output: str) -> dict:
    coevolution = {**spec.get("coevolution", {}), **grid_coevolution(side)}
    sections = {**spec, "coevolution": coevolution}
    return run_manifest(
        f"quality-{side}x{side}", side, side, seed=seed, output={"uri": output}, **sections
    )


def two_d_spec(dataset: dict, generations: int, batches: int, hidden: list[int]) -> dict:
    """The quickstart's settings (examples/quickstart.yaml) on either 2-D data set."""
    return {
        "generations": generations,
        "dataset": dataset,
        "network": {
            "latentSize": 64,
            "generator": {"hiddenSizes": hidden, "output": "linear"},
            "discriminator": {"hiddenSizes": hidden},
        },
        "coevolution": {"learningRate": 0.0005, "replacementRule": "offspring"},
        "mixture": {"sigma": 0.05},
        "training": {"batchSize": 100, "batchesPerGeneration": batches, "device": "cpu"},
    }


def train(job: tuple[int, int, dict]) -> dict:
    """One run in this worker process (one torch thread); the ensemble's scores, and on
    2-D data what the cells' own generators cover."""
    side, seed, spec = job
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as output:
        run = parse_run(manifest(side, seed, spec, output))
        outcome = run_in_process(run, resume=False)
        cells = cell_coverage(run) if spec["dataset"]["name"] in TWO_D_NAMES else {}
    return {"side": side, "seed": seed, **outcome.manifest["scores"], **cells}


def cell_coverage(run: LipizzanerRun) -> dict:
    """`cell_modes`: the modes each cell's own final generator covers; `all_cells_modes`:
    those all of them cover mixed with equal weights. Equal counts with an all-cells figure
    no higher than one cell's say the cells are copies (takeover)."""
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    assert dataset.modes is not None and dataset.mode_std is not None
    scorer = ModeScorer(dataset.modes, dataset.mode_std)
    nets = cell_generators(run, dataset.shape)
    seeded = torch.Generator().manual_seed(0)
    noise = torch.randn(SAMPLES, run.spec.network.latent_size, generator=seeded)
    with torch.no_grad():
        each = [net(noise) for net in nets]
        together = sample_mixture(nets, torch.ones(len(nets), dtype=torch.float64), noise)
    return {
        "cell_modes": [scorer.scores_of(scorer.embed(x))["modes_covered"] for x in each],
        "all_cells_modes": scorer.scores_of(scorer.embed(together))["modes_covered"],
    }


def run_jobs(jobs: list[tuple[int, int, dict]], workers: int) -> list[dict]:
    # spawn: a forked worker cannot use CUDA.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(train, jobs))


def two_d(args: argparse.Namespace) -> dict[str, list[dict]]:
    results = {}
    for name in args.datasets:
        dataset = TWO_D[name]
        jobs = [
            (side, seed, two_d_spec(dataset, generations(args, side), args.batches, args.hidden))
            for side in args.sides
            for seed in range(args.seeds)
        ]
        results[name] = run_jobs(jobs, args.workers)
        Console().print(two_d_table(name, results[name], args))
    return results


def generations(args: argparse.Namespace, side: int) -> int:
    """A side x side grid's generations: --generations each, or with --equal-steps the
    largest grid's --generations and smaller grids longer, for the same total steps."""
    if not args.equal_steps:
        return args.generations
    return args.generations * max(args.sides) ** 2 // side**2


def two_d_table(name: str, rows: list[dict], args: argparse.Namespace) -> Table:
    budget = "equal total steps" if args.equal_steps else "equal steps per cell"
    table = Table(title=f"{name}: {args.batches} batches per generation, {budget}")
    for column in (
        "grid",
        "generations",
        "modes covered (per seed)",
        "mean",
        "high-quality fraction",
        "cells' own (mean)",
        "all cells mixed (mean)",
    ):
        table.add_column(column, justify="right")
    for side in args.sides:
        mine = [r for r in rows if r["side"] == side]
        covered = [int(r["modes_covered"]) for r in mine]
        own = [m for r in mine for m in r["cell_modes"]]
        table.add_row(
            f"{side}x{side}",
            str(generations(args, side)),
            " ".join(map(str, covered)),
            f"{statistics.mean(covered):.1f} / {int(mine[0]['modes_total'])}",
            f"{statistics.mean(r['high_quality_fraction'] for r in mine):.2f}",
            f"{statistics.mean(own):.1f}",
            f"{statistics.mean(r['all_cells_modes'] for r in mine):.1f}",
        )
    return table


def mnist(args: argparse.Namespace) -> list[dict]:
    spec = {
        "generations": args.mnist_generations,
        "dataset": {"name": "mnist", "path": args.data},
        "training": {"batchesPerGeneration": 100, "device": args.mnist_device},
    }
    jobs = [(side, 0, spec) for side in args.mnist_sides]
    results = run_jobs(jobs, args.workers)
    real = load_dataset(parse_run(manifest(1, 0, spec, "unused")).spec.dataset, 0)
    scorer = ClassifierScorer(real)
    generator = torch.Generator().manual_seed(1)
    held = real.data[torch.randperm(len(real.data), generator=generator)[:5000]]
    noise = torch.rand((5000, *real.shape), generator=generator) * 2 - 1
    references = {
        "real vs real (5,000 digits)": scorer.scores(held),
        "uniform noise": scorer.scores(noise),
    }
    table = Table(
        title=f"MNIST: ensembles after {args.mnist_generations} generations x 100 batches"
    )
    for column in ("", "FID", "TVD"):
        table.add_column(column, justify="right")
    for result in results:
        side = result["side"]
        table.add_row(f"{side}x{side} ensemble", f"{result['fid']:.1f}", f"{result['tvd']:.3f}")
    for label, scores in references.items():
        table.add_row(label, f"{scores['fid']:.1f}", f"{scores['tvd']:.3f}", style="dim")
    Console().print(table)
    return [*results, *({"reference": k, **v} for k, v in references.items())]


def plot(results: dict[str, list[dict]], sides: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items(), strict=True):
        for offset, side in enumerate(sides):
            mine = [r for r in rows if r["side"] == side]
            jitter = [offset * 0.08 - 0.08 + 0.02 * i for i in range(len(mine))]
            ax.scatter(
                [r["high_quality_fraction"] for r in mine],
                [r["modes_covered"] + j for r, j in zip(mine, jitter, strict=True)],
                label=f"{side}x{side}",
                s=30,
            )
        ax.set_title(f"{name} ({int(rows[0]['modes_total'])} modes)")
        ax.set_xlabel("high-quality fraction")
        ax.set_ylabel("modes covered")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="directory of the MNIST IDX files (part 2)")
    parser.add_argument("--sides", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--datasets", nargs="+", choices=list(TWO_D), default=list(TWO_D))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument(
        "--equal-steps",
        action="store_true",
        help="--generations is the largest grid's; smaller grids run longer, for equal total steps",
    )
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=[128, 128], help="2-D networks' hidden layers"
    )
    parser.add_argument("--mnist-sides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mnist-generations", type=int, default=10)
    parser.add_argument("--mnist-device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--skip-2d", action="store_true")
    parser.add_argument("--plot", help="scatter plot of part 1 (PNG)")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    record: dict = {}
    if not args.skip_2d:
        record["two_d"] = two_d(args)
        if args.plot:
            plot(record["two_d"], args.sides, args.plot)
    if args.data:
        record["mnist"] = mnist(args)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
