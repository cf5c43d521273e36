"""The grid's diversity over a run, read from its cells' histories: lineages and mixtures.

Every individual carries its lineage's origin, the cell and generation its founder was
created in (offspring and a neighbour's copies keep it). Per generation this prints:

  centre lineages   how many distinct lineages the cells' best generators descend from
                    (at most the grid's cells; 1: one founder has taken the grid over);
  all lineages      the same over every local generator of every cell;
  largest share     the fraction of cells whose best generator descends from the most
                    common founder;
  entropy           the mixture weights' entropy in nats, the mean and the lowest over
                    the cells (0: a cell's mixture is one generator; ln n: n evenly).

    python bench/diversity.py RUN.yaml [--train] [--plot docs/diversity.png]

RUN.yaml is the run's manifest; its output (finished, or still training) is read.
`--train` trains it in this process first (resuming what its output already has).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from typing import Any

from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.history import read_history
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun, load_run
from rich.console import Console
from rich.table import Table


def diversity_rows(histories: list[list[dict[str, Any]]]) -> list[dict[str, float]]:
    """One row per generation that every cell has recorded (a pure function)."""
    by_generation = [{line["generation"]: line for line in cell} for cell in histories]
    shared = set.intersection(*(set(cell) for cell in by_generation)) if histories else set()
    rows = []
    for generation in sorted(shared):
        lines = [cell[generation] for cell in by_generation]
        centres = [tuple(line["generator_origins"][0]) for line in lines]
        everyone = {tuple(o) for line in lines for o in line["generator_origins"]}
        entropies = [line["mixture_entropy"] for line in lines]
        rows.append(
            {
                "generation": generation,
                "centre_lineages": len(set(centres)),
                "all_lineages": len(everyone),
                "largest_share": Counter(centres).most_common(1)[0][1] / len(centres),
                "entropy_mean": statistics.mean(entropies),
                "entropy_min": min(entropies),
            }
        )
    return rows


def read_run(run: LipizzanerRun) -> list[list[dict[str, Any]]]:
    """Every cell's history, from the run's output."""
    layout = RunLayout.of(run)
    return [read_history(layout.cell(cell)) for cell in range(run.spec.grid.size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run's manifest (its spec.output.uri is read)")
    parser.add_argument("--train", action="store_true", help="train the run in-process first")
    parser.add_argument("--every", type=int, default=1, help="print every n-th generation")
    parser.add_argument("--plot", metavar="PNG", help="also draw the rows to this file")
    args = parser.parse_args()
    run = load_run(args.run)
    if args.train:
        run_in_process(run, show_progress=True)
    rows = diversity_rows(read_run(run))
    title = f"{run.metadata.name}, {run.spec.grid.rows}x{run.spec.grid.cols}"
    table = Table(title=f"Diversity of {title}")
    columns = ("generation", "centre lineages", "all lineages", "largest share")
    for column in (*columns, "entropy mean", "entropy min"):
        table.add_column(column, justify="right")
    for row in rows:
        if row["generation"] % args.every and row is not rows[-1]:
            continue
        table.add_row(
            str(row["generation"]),
            str(row["centre_lineages"]),
            str(row["all_lineages"]),
            f"{row['largest_share']:.2f}",
            f"{row['entropy_mean']:.3f}",
            f"{row['entropy_min']:.3f}",
        )
    Console(width=120).print(table)
    if args.plot:
        plot(rows, title, args.plot)


def plot(rows: list[dict[str, float]], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    generations = [row["generation"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    for key, label in (("centre_lineages", "centres' lineages"), ("all_lineages", "all")):
        left.plot(generations, [row[key] for row in rows], label=label)
    left.set_xlabel("generation")
    left.set_ylabel("distinct lineages")
    left.legend()
    for key, label in (("entropy_mean", "mean over cells"), ("entropy_min", "lowest cell")):
        right.plot(generations, [row[key] for row in rows], label=label)
    right.set_xlabel("generation")
    right.set_ylabel("mixture entropy (nats)")
    right.legend()
    fig.suptitle(title)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
