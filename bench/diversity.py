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

`--distances` (28x28 data) also measures how far apart the cells' final generators are:
the FID between every two cells' samples, and each cell's FID to the held-out data, in
the project's classifier's features. Cells much closer to each other than to the data
are copies of one generator; cells as far from each other as from the data each miss
something different, which a mixture can cover.

    python bench/diversity.py RUN.yaml [--train] [--distances] [--plot docs/diversity.png]

RUN.yaml is the run's manifest; its output (finished, or still training) is read.
`--train` trains it in this process first (resuming what its output already has).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from typing import Any

import torch
from lipizzaner_cell.algorithm.networks import build_generator
from lipizzaner_cell.algorithm.weights import load_weights
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.history import read_history
from lipizzaner_cell.scores.scorers import ClassifierScorer, feature_statistics, frechet_distance
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun, load_run
from lipizzaner_core.storage import join
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


def cell_generators(run: LipizzanerRun, shape: tuple[int, ...]) -> list[torch.nn.Module]:
    """Each cell's own final generator (the one its last mixture holds), in eval mode."""
    spec, layout = run.spec, RunLayout.of(run)
    nets = []
    for cell in range(spec.grid.size):
        net = build_generator(spec.network.generator, spec.network.latent_size, shape)
        cell_layout = layout.cell(cell)
        uri = join(cell_layout.uri, cell_layout.mixture_generator(cell))
        nets.append(load_weights(net, layout.storage, uri))
    return nets


def generator_distances(run: LipizzanerRun, samples: int = 2000) -> dict[str, Any]:
    """`between`: the FID between every two cells' final generators (a symmetric matrix);
    `to_data`: each cell's FID to the held-out data; both from `samples` seeded samples
    per cell in the project's classifier's features."""
    spec = run.spec
    dataset = load_dataset(spec.dataset, spec.seed, RunLayout.of(run).storage)
    training, held_out = dataset.split(spec.dataset.validation_fraction)
    scorer = ClassifierScorer(held_out or training)
    statistics_ = []
    for cell, net in enumerate(cell_generators(run, dataset.shape)):
        noise = torch.randn(
            samples, spec.network.latent_size, generator=torch.Generator().manual_seed(cell)
        )
        with torch.no_grad():
            statistics_.append(feature_statistics(scorer.features(scorer.embed(net(noise)))))
    real = (scorer.real_mu, scorer.real_cov)
    between = [[frechet_distance(*a, *b) for b in statistics_] for a in statistics_]
    return {"between": between, "to_data": [frechet_distance(*a, *real) for a in statistics_]}


def distance_summary(distances: dict[str, Any]) -> dict[str, float]:
    """The mean FID between two different cells and the mean FID of a cell to the data:
    a ratio well below 1 says the cells are copies of each other."""
    between = distances["between"]
    pairs = [between[i][j] for i in range(len(between)) for j in range(len(between)) if i != j]
    to_data = statistics.mean(distances["to_data"])
    mean_between = statistics.mean(pairs) if pairs else 0.0
    return {"between": mean_between, "to_data": to_data, "ratio": mean_between / to_data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run's manifest (its spec.output.uri is read)")
    parser.add_argument("--train", action="store_true", help="train the run in-process first")
    parser.add_argument("--every", type=int, default=1, help="print every n-th generation")
    parser.add_argument(
        "--distances", action="store_true", help="also the FIDs between the cells' generators"
    )
    parser.add_argument("--plot", metavar="PNG", help="also draw the rows to this file")
    args = parser.parse_args()
    run = load_run(args.run)
    if args.train:
        run_in_process(run, show_progress=True)
    rows = diversity_rows(read_run(run))
    title = f"{run.metadata.name}, {run.spec.grid.rows}x{run.spec.grid.cols}, seed {run.spec.seed}"
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
    distances = generator_distances(run) if args.distances else None
    if distances:
        Console(width=120).print(distance_table(distances))
    if args.plot:
        plot(rows, title, args.plot, distances)


def distance_table(distances: dict[str, Any]) -> Table:
    """The matrix of FIDs between the cells' generators, and each cell's FID to the data."""
    cells = len(distances["to_data"])
    means = distance_summary(distances)
    table = Table(
        title=f"FID between the cells' final generators (mean between two cells "
        f"{means['between']:.1f}, mean to the data {means['to_data']:.1f})"
    )
    table.add_column("cell")
    for cell in range(cells):
        table.add_column(str(cell), justify="right")
    table.add_column("to data", justify="right")
    for cell, row in enumerate(distances["between"]):
        table.add_row(
            str(cell), *(f"{abs(v):.1f}" for v in row), f"{distances['to_data'][cell]:.1f}"
        )
    return table


def plot(
    rows: list[dict[str, float]], title: str, path: str, distances: dict[str, Any] | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    generations = [row["generation"] for row in rows]
    panels = 3 if distances else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.2))
    left, right = axes[0], axes[1]
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
    if distances:
        between, cells = distances["between"], range(len(distances["to_data"]))
        others = [statistics.mean(v for j, v in enumerate(between[i]) if j != i) for i in cells]
        width = 0.4
        axes[2].bar([c - width / 2 for c in cells], others, width, label="to the other cells")
        axes[2].bar(
            [c + width / 2 for c in cells], distances["to_data"], width, label="to the data"
        )
        axes[2].set_yscale("log")
        axes[2].set_xticks(list(cells))
        axes[2].set_xlabel("cell")
        axes[2].set_ylabel("FID of its final generator")
        axes[2].legend()
    fig.suptitle(title)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
