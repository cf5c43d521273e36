"""Ensembles searched over the whole grid against the run's own (the best cell's mixture).

Trains a 3x3 grid on the 8-Gaussian ring (the quickstart's networks and settings) and a
2x2 grid on MNIST, in one process each, then runs `lipizzaner ensemble optimize` with
both methods on each run. All three ensembles of a run are scored on the same held-out
samples, side by side.

    python bench/ensemble_search.py --data ../shared/datasets/mnist --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import yaml
from common import mnist_manifest
from lipizzaner_cell.cli import main as lipizzaner
from rich.console import Console
from rich.table import Table

COLUMNS = ("run", "seed", "objective", "best cell", "greedy", "greedy size", "ga", "ga size")
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
    for method in ("greedy", "ga"):
        arguments = ["ensemble", "optimize", output, "--method", method, "--samples", str(samples)]
        assert lipizzaner(arguments) == 0
        found = json.loads(Path(output, f"ensemble-{method}", "manifest.json").read_text())
        row["best cell"] = found["search"]["bestCell"]["objective"]
        row[method] = found["objective"]["value"]
        row[f"{method} size"] = len(found["generators"])
        row["objective"] = found["objective"]["name"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ring-generations", type=int, default=30)
    parser.add_argument("--mnist-generations", type=int, default=20)
    parser.add_argument("--samples", type=int, default=2000, help="per candidate generator")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
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
    table = Table(title="The run's own ensemble against ensembles searched over the grid")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            *(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS)
        )
    Console(width=140).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
