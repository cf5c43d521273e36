"""Options of the grid side by side: the same grid, seeds and budget, a field or two changed.

MNIST (the 10,000-digit split; 10 % held out), an S x S grid at the defaults for N
generations, once per variant and seed, in-process (deterministic). Each run's ensemble
(keep-best, as the run chooses it) is scored on 10,000 samples against the held-out digits
in the project's classifier's features: FID, TVD, precision and recall. The table gives
each variant's per-seed FID, its mean, its ratio to the baseline's (`no-ema`) mean, and on
how many seeds it beat the baseline (paired: the same seed, so the same data and initial
networks).

    python bench/grid_variants.py --data ../shared/datasets/mnist --seeds 0 1 2 \\
        --variants no-ema ema ema-slow unbiased constant
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
from grid_vs_single import run_once
from rich.console import Console
from rich.table import Table

# Each variant: the spec fields it sets. Each is compared with `no-ema`, the defaults as
# they were before this comparison made `ema` (decay 0.99) the default.
VARIANTS: dict[str, list[str]] = {
    "no-ema": ["training.generatorEma.decay=0"],
    "ema": ["training.generatorEma.decay=0.99"],
    "ema-slow": ["training.generatorEma.decay=0.999"],
    "unbiased": ["training.generatorEma.decay=0", "coevolution.mutation.rule=unbiased"],
    "constant": ["training.generatorEma.decay=0", "coevolution.mutation.probability=0"],
}
BASELINE = "no-ema"
SCORES = ("fid", "tvd", "precision", "recall")


def jobs_for(args: argparse.Namespace, root: str) -> list[dict[str, Any]]:
    return [
        {
            "data": args.data,
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
            "scores": {key: r["scores"][key] for key in SCORES},
        }
        for r in results
    ]


def summary(runs: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
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
        paired = [seed for seed in seeds if (BASELINE, seed) in by]
        if variant != BASELINE and paired:
            base = [by[(BASELINE, seed)]["fid"] for seed in paired]
            mine = [by[(variant, seed)]["fid"] for seed in paired]
            row["fid / baseline"] = statistics.mean(mine) / statistics.mean(base)
            row["wins over baseline"] = sum(m < b for m, b in zip(mine, base, strict=True))
            row["paired seeds"] = len(paired)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], title: str) -> Table:
    out = Table(
        title=f"{title}: held-out FID (lower is better), TVD (lower), precision and recall "
        "(higher); means over the seeds measured"
    )
    for column in ("variant", "seeds", "FID by seed", *SCORES, f"FID / {BASELINE}", "wins"):
        out.add_column(column, justify="right")
    for row in rows:
        paired = row.get("paired seeds")
        wins = f"{row['wins over baseline']} of {paired}" if paired else "-"
        out.add_row(
            row["variant"],
            " ".join(map(str, row["seeds"])),
            " ".join(f"{v:.1f}" for v in row["fid by seed"]),
            *(f"{row[key]:.3f}" for key in SCORES),
            f"{row.get('fid / baseline', float('nan')):.3f}",
            wins,
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
    context = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as root,
        ProcessPoolExecutor(args.workers, mp_context=context) as pool,
    ):
        return runs_of(list(pool.map(run_once, jobs_for(args, root))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_flags(parser)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", help="write every run's scores and the summary here")
    parser.add_argument("--plot", help="write the comparison here (PNG)")
    parser.add_argument(
        "--runs", help="summarise, print and plot the runs of an earlier --json instead"
    )
    args = parser.parse_args()
    runs = json.loads(Path(args.runs).read_text())["runs"] if args.runs else measure(args)
    rows = summary(runs, [v for v in args.variants if any(r["variant"] == v for r in runs)])
    title = f"MNIST, {args.side}x{args.side} grid, {args.generations} generations"
    Console(width=160).print(table(rows, title))
    if args.json and not args.runs:
        document = {"argv": sys.argv[1:], "runs": runs, "rows": rows}
        Path(args.json).write_text(json.dumps(document, indent=2))
    if args.plot:
        plot(rows, args.plot, title)


if __name__ == "__main__":
    main()
