"""The standing comparison: does the grid beat one GAN at the default settings?

MNIST (the 10,000-digit split; 10 % held out for scoring), every setting at its default,
several seeds. At equal total training steps (a cell-generation is 100 batches of 100):

- `single`: one GAN (a 1x1 grid) for S x S x N generations: the same compute as the grid;
- `single-n`: one GAN for N generations: the same wall-clock as the grid with a core per cell;
- `grid`: the S x S grid for N generations, its ensemble as the run chooses it (keep-best);
- `grid-offspring`: the same with `replacementRule: offspring` (every offspring replaces);
- `grid-no-coevolution`: the same grid with selection off (no selection, no replacement:
  each cell trains its own pair in place; the mixture ES still runs);
- `independent`: S x S lone GANs of N generations each (the honest control): the best
  of them alone, and all of them mixed with equal weights;
- `grid-all-uniform`: the grid's cells' own generators (from the mixtures they ended
  with), all mixed with equal weights, against the run's ensemble (the best cell's
  neighbourhood mixture with its ES weights).

Every run keeps its best mixture (the default) and is scored on 10,000 samples against
the held-out digits: FID and the TVD of the digit histogram from uniform, in the project's
MNIST classifier's features, plus precision and recall.

    python bench/grid_vs_single.py --data ../shared/datasets/mnist --generations 40 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from common import (
    add_grid_flags,
    apply_assignments,
    assignment,
    bars_with_seeds,
    mnist_manifest,
)
from lipizzaner_cell.algorithm.mixture import sample_mixture
from lipizzaner_cell.algorithm.networks import build_generator
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.ensembles.samples import load_ensemble
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.scores.scorers import ClassifierScorer
from lipizzaner_core.spec import parse_run
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

SAMPLES = 10_000
CONFIGS = ("single", "single-n", "grid", "grid-offspring", "grid-no-coevolution", "independent")
COLUMNS = (*CONFIGS[:-1], "grid-all-uniform", "independent-best", "independent-uniform")


def run_once(job: dict[str, Any]) -> dict[str, Any]:
    """One run in-process, into its own output folder; its ensemble's final scores."""
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    spec = mnist_manifest(
        job["config"],
        job["side"],
        job["data"],
        job["generations"],
        job["output"],
        seed=job["run_seed"],
        coevolution=job["coevolution"],
        device=job["device"],
    )
    apply_assignments(spec["spec"], job["every_run"])
    if job["side"] > 1:  # data dieting: each grid cell its own subset (not a lone GAN)
        spec["spec"]["dataset"]["samplingRatio"] = job["sampling_ratio"]
        apply_assignments(spec["spec"], job["grids_only"])
    started = time.perf_counter()
    manifest = run_in_process(parse_run(spec), resume=False).manifest
    Console().print(f"{job['config']} seed {job['seed']}: FID {manifest['scores']['fid']:.1f}")
    return {
        "config": job["config"],
        "seed": job["seed"],
        "output": job["output"],
        "scores": manifest["scores"],
        "trainScores": manifest["trainScores"],
        "mixtureGeneration": manifest["mixtureGeneration"],
        "seconds": time.perf_counter() - started,
    }


def jobs_for(
    data: str, side: int, generations: int, seed: int, root: str, **settings: Any
) -> list[dict]:
    """Every run of one seed. `settings`: device, sampling_ratio, every_run and grids_only
    (spec overrides, as `common.assignment` reads them)."""
    cells = side * side
    plans = [
        ("single", 1, cells * generations, seed, {}),
        ("single-n", 1, generations, seed, {}),
        ("grid", side, generations, seed, {}),
        ("grid-offspring", side, generations, seed, {"replacementRule": "offspring"}),
        ("grid-no-coevolution", side, generations, seed, {"selection": False}),
    ]
    # Run seeds apart from the others' (a 1x1 run's cell seeds from its run seed).
    plans += [("independent", 1, generations, 1000 * (seed + 1) + i, {}) for i in range(cells)]
    return [
        {
            "data": data,
            "config": config,
            "side": grid_side,
            "generations": count,
            "seed": seed,
            "run_seed": run_seed,
            "coevolution": coevolution,
            "device": "cpu",
            "sampling_ratio": 1.0,
            "every_run": [],
            "grids_only": [],
            **settings,
            "output": str(Path(root) / f"{config}-{seed}-{run_seed}"),
        }
        for config, grid_side, count, run_seed, coevolution in plans
    ]


def uniform_mixture(sources: list[str], data: str) -> dict[str, float]:
    """Generators mixed with equal weights, scored as the runs score (10,000 samples
    against the held-out digits). A source is an ensemble folder or one generator's file."""
    spec = parse_run(mnist_manifest("mixture", 1, data, 1, "unused")).spec
    nets = []
    for source in sources:
        if source.endswith(".safetensors"):
            net = build_generator(spec.network.generator, spec.network.latent_size, (1, 28, 28))
            net.load_state_dict(load_file(source))
            nets.append(net.eval())
        else:
            nets += load_ensemble(source).generators
    _, validation = load_dataset(spec.dataset, 0).split(spec.dataset.validation_fraction)
    scorer = ClassifierScorer(validation)
    noise = torch.randn(
        SAMPLES, spec.network.latent_size, generator=torch.Generator().manual_seed(0)
    )
    weights = torch.ones(len(nets), dtype=torch.float64)
    return scorer.final_scores(scorer.embed(sample_mixture(nets, weights, noise)))


def summarise(results: list[dict[str, Any]], data: str, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        mine = [r for r in results if r["seed"] == seed]
        row: dict[str, Any] = {"seed": seed}
        for r in mine:
            if r["config"] != "independent":
                row[r["config"]] = r["scores"] | {
                    "mixtureGeneration": r["mixtureGeneration"],
                    "seconds": r["seconds"],
                }
            if r["config"] == "grid":
                row["grid-all-uniform"] = uniform_mixture(cell_generators(r["output"]), data)
        independents = [r["output"] for r in mine if r["config"] == "independent"]
        if independents:
            outputs = [str(Path(o) / "ensemble") for o in independents]
            row["independent-best"] = min(
                (r["scores"] for r in mine if r["config"] == "independent"), key=lambda s: s["fid"]
            )
            row["independent-uniform"] = uniform_mixture(outputs, data)
        rows.append(row)
    return rows


def cell_generators(output: str) -> list[str]:
    """Each cell's own generator from the mixture it ended with, as a one-member ensemble
    folder's worth of files: `cells/<i>/mixture/generator-<i>.safetensors`."""
    cells = sorted(Path(output, "cells").iterdir(), key=lambda p: int(p.name))
    return [str(cell / "mixture" / f"generator-{cell.name}.safetensors") for cell in cells]


def table(rows: list[dict], side: int, generations: int) -> Table:
    columns = [c for c in COLUMNS if c in rows[0]]
    out = Table(
        title=f"MNIST, defaults, {side}x{side} grid of {generations} generations vs equal compute "
        "(held-out FID / TVD; mean over seeds)"
    )
    out.add_column("seed")
    for column in columns:
        out.add_column(column, justify="right")
    for row in [*rows, mean_row(rows, columns)]:
        out.add_row(
            str(row["seed"]),
            *(f"{row[c]['fid']:.1f} / {row[c]['tvd']:.3f}" for c in columns),
        )
    return out


def mean_row(rows: list[dict], columns: list[str]) -> dict:
    mean: dict[str, Any] = {"seed": "mean"}
    for column in columns:
        mean[column] = {
            key: statistics.mean(row[column][key] for row in rows) for key in ("fid", "tvd")
        }
    return mean


def plot(rows: list[dict], path: str, title: str) -> None:
    """Held-out FID per configuration: a bar for the mean, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in COLUMNS if c in rows[0]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, label in ((left, "fid", "held-out FID (lower is better)"), (right, "tvd", "TVD")):
        per_seed = [[row[c][key] for row in rows] for c in columns]
        bars_with_seeds(ax, columns, per_seed, label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_flags(parser)
    parser.add_argument(
        "--sampling-ratio",
        type=float,
        default=1.0,
        help="data dieting for the grids' cells (dataset.samplingRatio); lone GANs keep all",
    )
    parser.add_argument(
        "--set",
        type=assignment,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a spec field in every run, e.g. coevolution.learningRate=1e-3",
    )
    parser.add_argument(
        "--grid-set",
        type=assignment,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a spec field in the grids' runs only (not in the lone GANs)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS, help="run only these"
    )
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--plot", help="write the comparison here (PNG)")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as root:
        jobs = [
            job
            for seed in args.seeds
            for job in jobs_for(
                args.data,
                args.side,
                args.generations,
                seed,
                root,
                device=args.device,
                sampling_ratio=args.sampling_ratio,
                every_run=args.set,
                grids_only=args.grid_set,
            )
            if job["config"] in args.configs
        ]
        jobs.sort(key=lambda job: -(job["side"] ** 2) * job["generations"])  # the longest first
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            results = list(pool.map(run_once, jobs))
        rows = summarise(results, args.data, args.seeds)
    Console(width=160).print(table(rows, args.side, args.generations))
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=2))
    if args.plot:
        title = f"{args.side}x{args.side} grid, {args.generations} generations, equal compute"
        plot(rows, args.plot, title)


if __name__ == "__main__":
    main()
