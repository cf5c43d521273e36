"""Options of the grid side by side: the same grid, seeds and budget, a field or two changed.

MNIST (the 10,000-digit split; 10 % held out), an S x S grid at the defaults for N
generations, once per variant and seed, in-process (deterministic). Each run's ensemble
(keep-best, as the run chooses it) is scored on 10,000 samples against the held-out digits
in the project's classifier's features: FID, TVD, precision and recall. The table gives
each variant's per-seed FID, its mean, its ratio to the baseline's mean (`--baseline`),
and on how many seeds it beat the baseline (paired: the same seed, so the same data and
initial networks).

The quality levers of issue 34, each against today's defaults:

    python bench/grid_variants.py --data ../shared/datasets/mnist --generations 30 \\
        --seeds 0 1 2 3 4 --baseline defaults \\
        --variants defaults moore population-2 no-ema unbiased-rate offspring
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import add_grid_flags, assignment, bars_with_seeds
from grid_vs_single import ensemble_scores, run_once
from protocol import Judges, paired
from rich.console import Console
from rich.table import Table

# Each variant: the spec fields it sets. The EMA study compared the first five with
# `no-ema`, the defaults before it made `ema` (decay 0.99) the default; the levers of
# issue 34 (the last five) are compared with `defaults`.
VARIANTS: dict[str, list[str]] = {
    "no-ema": ["training.generatorEma.decay=0"],
    "ema": ["training.generatorEma.decay=0.99"],
    "ema-slow": ["training.generatorEma.decay=0.999"],
    "unbiased": ["training.generatorEma.decay=0", "coevolution.mutation.rule=unbiased"],
    "constant": ["training.generatorEma.decay=0", "coevolution.mutation.probability=0"],
    "defaults": [],
    "moore": ["grid.neighbourhood=moore"],
    "population-2": ["coevolution.populationSize=2"],
    "unbiased-rate": ["coevolution.mutation.rule=unbiased"],
    "offspring": ["coevolution.replacementRule=offspring"],
}
SCORES = ("fid", "fid2", "tvd", "precision", "recall", "recall2")


def jobs_for(args: argparse.Namespace, root: str) -> list[dict[str, Any]]:
    return [
        {
            "dataset": {"name": "mnist", "path": args.data},
            "config": f"grid-{variant}",
            "side": args.side,
            "generations": args.generations,
            "seed": seed,
            "run_seed": seed,
            "coevolution": {},
            "device": "cpu",
            "sampling_ratio": 1.0,
            "every_run": [assignment(text) for text in VARIANTS[variant]],
            "grids_only": [],
            "output": str(Path(root) / f"{variant}-{seed}"),
        }
        for seed in args.seeds
        for variant in args.variants
    ]


def runs_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a result file keeps of each run: its variant, seed and held-out scores."""
    return [
        {
            "variant": r["config"].removeprefix("grid-"),
            "seed": r["seed"],
            "scores": {key: r["scores"][key] for key in SCORES if key in r["scores"]},
        }
        for r in results
    ]


def summary(runs: list[dict[str, Any]], variants: list[str], baseline: str) -> list[dict[str, Any]]:
    """A row per variant: per-seed FID, each score's mean over the seeds that have it,
    the FID ratio to the baseline's and the paired wins over it (lower FID, same seed)."""
    by = {(r["variant"], r["seed"]): r["scores"] for r in runs}
    rows = []
    for variant in variants:
        seeds = sorted(seed for name, seed in by if name == variant)
        scores = [by[(variant, seed)] for seed in seeds]
        row: dict[str, Any] = {"variant": variant, "seeds": seeds}
        row["fid by seed"] = [s["fid"] for s in scores]
        for key in SCORES:
            measured = [s[key] for s in scores if key in s]
            row[key] = statistics.mean(measured) if measured else float("nan")
        both = [
            {"seed": seed, "mine": by[(variant, seed)], "base": by[(baseline, seed)]}
            for seed in seeds
            if (baseline, seed) in by
        ]
        if variant != baseline and both:
            mine, base = ([pair[k]["fid"] for pair in both] for k in ("mine", "base"))
            row["fid / baseline"] = statistics.mean(mine) / statistics.mean(base)
            row["wins over baseline"] = paired(both, "mine", "base").wins
            row["paired seeds"] = len(both)
            if all("fid2" in pair["mine"] and "fid2" in pair["base"] for pair in both):
                row["wins over baseline (2nd)"] = paired(both, "mine", "base", "fid2").wins
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], title: str, baseline: str) -> Table:
    out = Table(
        title=f"{title}: held-out FID (lower is better), TVD (lower), precision and recall "
        "(higher); means over the seeds measured"
    )
    columns = ("variant", "seeds", "FID by seed", *SCORES, f"FID / {baseline}", "wins")
    for column in (*columns, "wins (2nd)"):
        out.add_column(column, justify="right")
    for row in rows:
        seeds = row.get("paired seeds")
        wins = f"{row['wins over baseline']} of {seeds}" if seeds else "-"
        second = row.get("wins over baseline (2nd)")
        wins2 = f"{second} of {seeds}" if second is not None else "-"
        out.add_row(
            row["variant"],
            " ".join(map(str, row["seeds"])),
            " ".join(f"{v:.1f}" for v in row["fid by seed"]),
            *(f"{row[key]:.3f}" for key in SCORES),
            f"{row.get('fid / baseline', float('nan')):.3f}",
            wins,
            wins2,
        )
    return out


def plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Held-out FID per variant: a bar for the mean, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels, per_seed = [row["variant"] for row in rows], [row["fid by seed"] for row in rows]
    bars_with_seeds(ax, labels, per_seed, "held-out FID (lower is better)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every variant and seed trained, and its ensemble scored in both feature spaces."""
    context = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as scratch,
        ProcessPoolExecutor(args.workers, mp_context=context) as pool,
    ):
        results = list(pool.map(run_once, jobs_for(args, args.keep or scratch)))
        judges = Judges.mnist(args.data, Path(scratch))
        for result in results:
            result["scores"] = ensemble_scores(judges, [str(Path(result["output"]) / "ensemble")])
        return runs_of(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_flags(parser)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--keep", metavar="DIR", help="keep every run's output here")
    parser.add_argument(
        "--baseline", default="no-ema", choices=list(VARIANTS), help="what the others beat"
    )
    parser.add_argument("--json", help="write every run's scores and the summary here")
    parser.add_argument("--plot", help="write the comparison here (PNG)")
    parser.add_argument(
        "--runs", help="summarise, print and plot the runs of an earlier --json instead"
    )
    args = parser.parse_args()
    runs = json.loads(Path(args.runs).read_text())["runs"] if args.runs else measure(args)
    measured = [v for v in args.variants if any(r["variant"] == v for r in runs)]
    rows = summary(runs, measured, args.baseline)
    title = f"MNIST, {args.side}x{args.side} grid, {args.generations} generations"
    Console(width=160).print(table(rows, title, args.baseline))
    if args.json and not args.runs:
        document = {"argv": sys.argv[1:], "runs": runs, "rows": rows}
        Path(args.json).write_text(json.dumps(document, indent=2))
    if args.plot:
        plot(rows, args.plot, title)


if __name__ == "__main__":
    main()
