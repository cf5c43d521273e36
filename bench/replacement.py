"""Replacement rules side by side: does the original's rule freeze the grid?

Runs the same 2x2 MNIST grid (population 1, selection on, 100 batches of 100 per
generation) once per rule and prints, per rule, the share of offspring accepted over the
run and in its last third, and the final ensemble's FID and TVD.

    python bench/replacement.py --data ../shared/datasets/mnist --generations 15
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import mnist_manifest
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import parse_run
from rich.console import Console
from rich.table import Table


def manifest(data: str, rule: str, generations: int, batches: int, output: str) -> dict:
    return mnist_manifest(
        f"replacement-{rule}",
        2,
        data,
        generations,
        output,
        batches=batches,
        seed=0,
        coevolution={"replacementRule": rule},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/datasets/mnist")
    parser.add_argument("--generations", type=int, default=15)
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = Table(title=f"2x2 MNIST, {args.generations} generations, {args.batches} batches each")
    for column in ("rule", "accepted (all)", "accepted (last third)", "FID", "TVD"):
        table.add_column(column, justify="right")
    for rule in ("faithful", "offspring"):
        with tempfile.TemporaryDirectory() as output:
            run = parse_run(manifest(args.data, rule, args.generations, args.batches, output))
            outcome = run_in_process(run, show_progress=True, resume=False)
        reports = [r for cell in outcome.reports for r in cell]
        late = [r for r in reports if r.generation > 2 * args.generations // 3]

        def share(rs: list) -> str:
            accepted = sum(r.offspring_accepted for r in rs)
            return f"{accepted / sum(r.offspring_offered for r in rs):.0%}"

        scores = outcome.manifest["scores"]
        table.add_row(
            rule, share(reports), share(late), f"{scores['fid']:.1f}", f"{scores['tvd']:.3f}"
        )
    Console().print(table)


if __name__ == "__main__":
    main()
