"""Ensembles searched over the whole grid against the run's own (the best cell's mixture).

Trains a 3x3 grid on the 8-Gaussian ring (the quickstart's networks and settings) and a
2x2 grid on MNIST, in one process each, then runs `lipizzaner ensemble optimize` with
every method, this project's (greedy, ga) and the original's (greedy-grid, reo-gen,
nreo-gen), on each run. Every ensemble of a run is scored on the same held-out samples,
side by side, with the evaluations each search took.

    python bench/ensemble_search.py --data ../shared/datasets/mnist --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import yaml
from common import add_result_flags, mnist_manifest, parse_result_args, print_rows
from lipizzaner_cell.commands.cli import main as lipizzaner

# This project's searches and the original's (docs/ensembles.md), at the same samples per
# candidate and the defaults of `spec.ensemble` (the GAs: 600 offspring, about `ga`'s 620).
METHODS = ("greedy", "ga", "greedy-grid", "reo-gen", "nreo-gen")
# Two tables, so that each fits a terminal: the objectives, then what each search cost.
OBJECTIVES = ("run", "seed", "objective", "best cell", *METHODS)
COSTS = ("run", "seed", *(f"{m}{part}" for m in METHODS for part in (" size", " evaluations")))
QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


def ring_run(output: str, seed: int, generations: int) -> dict:
    manifest = yaml.safe_load(QUICKSTART.read_text())
    manifest["metadata"]["name"] = "ring-3x3"
    manifest["spec"].update(grid={"rows": 3, "cols": 3}, seed=seed, generations=generations)
    manifest["spec"]["output"] = {"uri": output}
    return manifest


def mnist_run(output: str, seed: int, generations: int, data: str) -> dict:
    manifest = mnist_manifest("mnist-2x2", 2, data, generations, output, batches=50)
    manifest["spec"]["seed"] = seed
    return manifest


def measure(manifest: dict, workdir: Path, samples: int) -> dict[str, float]:
    """Train the run, then search it both ways; each ensemble's objective."""
    path = workdir / f"{manifest['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(manifest)))
    assert lipizzaner(["run", str(path), "--in-process", "--quiet", "--threads", "1"]) == 0
    output = manifest["spec"]["output"]["uri"]
    row: dict[str, float] = {}
    for method in METHODS:
        arguments = ["ensemble", "optimize", output, "--method", method, "--samples", str(samples)]
        assert lipizzaner(arguments) == 0
        found = json.loads(Path(output, f"ensemble-{method}", "manifest.json").read_text())
        row["best cell"] = found["search"]["bestCell"]["objective"]
        row[method] = found["objective"]["value"]
        row[f"{method} size"] = len(found["generators"])
        row[f"{method} evaluations"] = found["search"]["evaluations"]
        row["objective"] = found["objective"]["name"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ring-generations", type=int, default=30)
    parser.add_argument("--mnist-generations", type=int, default=20)
    parser.add_argument("--samples", type=int, default=2000, help="per candidate generator")
    add_result_flags(parser, "each search's objective over the run's own")
    args = parse_result_args(parser)
    rows = json.loads(Path(args.rows).read_text()) if args.rows else run_all(args)
    title = "The run's own ensemble against ensembles searched over the grid"
    print_rows(title, OBJECTIVES, rows, ".4g")
    print_rows("Each search's ensemble size and evaluations (ensembles scored)", COSTS, rows, "g")
    if args.json and not args.rows:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)


def run_all(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            runs = (
                ("3x3 ring", ring_run(f"{workdir}/ring-{seed}", seed, args.ring_generations)),
                (
                    "2x2 MNIST",
                    mnist_run(f"{workdir}/mnist-{seed}", seed, args.mnist_generations, args.data),
                ),
            )
            for name, manifest in runs:
                row = measure(manifest, Path(workdir), args.samples)
                rows.append({"run": name, "seed": seed, **row})
    return rows


def plot(rows: list[dict], path: str) -> None:
    """Each search's objective as a share of the best cell's mixture's (below 1: better)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    labels = [f"{row['run']}\nseed {row['seed']}" for row in rows]
    methods = [m for m in METHODS if m in rows[0]]  # older result files have two
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        shares = [row[method] / row["best cell"] for row in rows]
        ax.bar([i + width * k for i in range(len(rows))], shares, width, label=method)
    ax.axhline(1.0, color="black", linewidth=1, label="the best cell's mixture")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(0.8, 1.08)
    ax.set_ylabel("objective / the best cell's")
    ax.set_title("Ensembles searched over the grid (lower is better)")
    ax.legend(fontsize=8, loc="upper right", ncol=3)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
