"""Why does a cell in the grid learn more slowly than a lone GAN? Each cell's own generator
against its own training steps, under variants of the co-evolution.

Every variant runs the same S x S grid (2x2 by default) in one process, round by round,
with the same seeds: cell i starts from the same networks and sees the same batches in
each. Every `--every` generations each cell's own centre generator (not the mixture) is
scored alone, and so is its neighbourhood mixture, against the held-out digits. Variants:

- `independent`: the cells never see a neighbour: S x S lone GANs with the cells' seeds
  (a tournament of 1 and the `offspring` rule, as a lone cell needs);
- `grid`: the defaults (selection, the faithful replacement rule, the mixture ES);
- `no-selection`: `coevolution.selection: false` (cells train in place against the
  neighbourhood's opponents, nothing replaced);
- `offspring`: `replacementRule: offspring`;
- `local-moments`: `exchange.optimizerState: false` (a selected neighbour continues the
  Adam moments of the local individual it replaces, not its own);
- `no-mixing`: selection on, but a cell trains only against its own opponents' lineage
  (`coevolution.tournamentSize: 1`: the local individuals always win their tournament).

    python bench/cell_learning.py --data ../shared/datasets/mnist --generations 60 --every 10
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from common import mnist_manifest
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.mixture import sample_mixture
from lipizzaner_cell.algorithm.neighbourhood import InProcessExchange
from lipizzaner_cell.algorithm.selection import best
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.scores.scorers import ClassifierScorer
from lipizzaner_core.spec import parse_run
from rich.console import Console
from rich.table import Table

LONE = {"tournamentSize": 1, "replacementRule": "offspring"}
VARIANTS: dict[str, dict[str, Any]] = {
    "independent": {"coevolution": LONE},
    "grid": {},
    "no-selection": {"coevolution": {"selection": False}},
    "offspring": {"coevolution": {"replacementRule": "offspring"}},
    "local-moments": {"exchange": {"optimizerState": False}},
    "offspring-local-moments": {
        "coevolution": {"replacementRule": "offspring"},
        "exchange": {"optimizerState": False},
    },
    "no-mixing": {"coevolution": {"tournamentSize": 1}},
}


def trajectory(job: tuple[str, str, int, int, int, int, int]) -> dict[str, Any]:
    """One variant and seed: per cell, the own generator's and the mixture's scores."""
    data, variant, side, seed, generations, every, samples = job
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    overrides = VARIANTS[variant]
    spec = mnist_manifest(
        f"learning-{variant}",
        side,
        data,
        generations,
        "memory://unused",
        seed=seed,
        coevolution=overrides.get("coevolution"),
        **{k: v for k, v in overrides.items() if k != "coevolution"},
    )
    run = parse_run(spec)
    dataset = load_dataset(run.spec.dataset, seed)
    grid = run.spec.grid.topology()
    exchange = InProcessExchange()
    engines = []
    for i in range(grid.size):
        neighbours = [] if variant == "independent" else [n.index for n in grid.neighbours(i)]
        engines.append(CellEngine(run, i, exchange.provider(neighbours), dataset))
    scorer = ClassifierScorer(engines[0].validation_set or dataset)  # the held-out digits
    noise = torch.randn(
        samples, run.spec.network.latent_size, generator=torch.Generator().manual_seed(1)
    )
    for engine in engines:
        engine.publish_centre()
    exchange.commit()
    points = []
    for generation in range(1, generations + 1):
        for engine in engines:
            engine.step()
        exchange.commit()
        if generation % every:
            continue
        for engine in engines:
            own = sample_mixture([best(engine.generators).net], torch.ones(1), noise)
            cells, nets = engine.centres(engine.snapshot_neighbourhood(), "generator")
            mixed = sample_mixture(nets, engine.mixture.weights_of(cells), noise)
            points.append(
                {
                    "cell": engine.index,
                    "generation": generation,
                    "own": scorer.scores(own),
                    "mixture": scorer.scores(mixed),
                    "accepted": engine.offspring_accepted,
                    "offered": engine.offspring_offered,
                    "generatorSource": best(engine.generators).source_cell,
                }
            )
        own = [p["own"]["fid"] for p in points if p["generation"] == generation]
        Console().print(
            f"{variant} seed {seed} generation {generation}: own FID "
            + " ".join(f"{f:.0f}" for f in own)
        )
    return {"variant": variant, "seed": seed, "points": points}


def summary(results: list[dict[str, Any]], every: int, generations: int) -> Table:
    table = Table(title="each cell's own generator, FID (mean over cells and seeds)")
    table.add_column("variant")
    marks = list(range(every, generations + 1, every))
    for mark in marks:
        table.add_column(f"{mark * 100:,} steps", justify="right")
    table.add_column("mixture at end", justify="right")
    variants = dict.fromkeys(r["variant"] for r in results)
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant]
        row = [variant]
        for mark in marks:
            row.append(f"{_mean(runs, mark, 'own'):.1f}")
        row.append(f"{_mean(runs, marks[-1], 'mixture'):.1f}")
        table.add_row(*row)
    return table


def _mean(runs: list[dict[str, Any]], generation: int, which: str) -> float:
    return statistics.mean(
        p[which]["fid"] for r in runs for p in r["points"] if p["generation"] == generation
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--side", type=int, default=2)
    parser.add_argument("--generations", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--samples", type=int, default=5000, help="samples per FID")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    jobs = [
        (args.data, variant, args.side, seed, args.generations, args.every, args.samples)
        for seed in args.seeds
        for variant in args.variants
    ]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        results = list(pool.map(trajectory, jobs))
    Console().print(summary(results, args.every, args.generations))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
