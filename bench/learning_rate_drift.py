"""How far the learning-rate mutation moves the rate over a run, by rule.

Runs the cell's own `mutate_learning_rate` on a generator and a discriminator for every
batch of a run's budget (by default `examples/paper/mnist-2x2.yaml`'s: 200 generations of
600 batches, the discriminator on every other batch, p 0.5, alpha 1e-4, lr0 2e-4), under
the original's rule and the unbiased one, over several seeds. No training: only the rate.

    python bench/learning_rate_drift.py --seeds 5 --plot docs/learning-rate-drift.png
"""

from __future__ import annotations

import argparse
import statistics

import torch
from lipizzaner_cell.algorithm.individual import Individual, mutate_learning_rate
from torch import nn

RULES = ("original", "unbiased")
# Which batches each player trains on (and so mutates): discriminatorSkipEveryNth 1.
EVERY = {"generator": 1, "discriminator": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--batches", type=int, default=600, help="batches per generation")
    parser.add_argument("--probability", type=float, default=0.5)
    parser.add_argument("--alpha", type=float, default=1e-4)
    parser.add_argument("--rate", type=float, default=2e-4, help="the initial rate, lr0")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--plot", help="the rate over the run, by rule and player, as PNG")
    return parser.parse_args(argv)


def trajectory(args: argparse.Namespace, rule: str, player: str, seed: int) -> list[float]:
    """The rate relative to lr0 at the end of each generation."""
    rng = torch.Generator().manual_seed(seed)
    individual = Individual.fresh(nn.Linear(1, 1), args.rate, source_cell=0)
    ratios = []
    for _ in range(args.generations):
        for batch in range(args.batches):
            if batch % EVERY[player] == 0:
                mutate_learning_rate(individual, args.probability, args.alpha, args.rate, rng, rule)
        ratios.append(individual.learning_rate / args.rate)
    return ratios


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = {
        (rule, player): [trajectory(args, rule, player, seed) for seed in range(args.seeds)]
        for rule in RULES
        for player in EVERY
    }
    print("| rule | player | mutations a run (expected) | final rate / lr0: median | min | max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (rule, player), paths in runs.items():
        finals = [path[-1] for path in paths]
        mutations = args.generations * args.batches / EVERY[player] * args.probability
        print(
            f"| {rule} | {player} | {mutations:,.0f} | {statistics.median(finals):.3f} "
            f"| {min(finals):.3f} | {max(finals):.3f} |"
        )
    if args.plot:
        plot(runs, args.plot)


def plot(runs: dict[tuple[str, str], list[list[float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for (rule, player), paths in runs.items():
        median = [statistics.median(step) for step in zip(*paths, strict=True)]
        style = "-" if rule == "original" else "--"
        axis.plot(range(1, len(median) + 1), median, style, label=f"{rule}, {player}")
    axis.axhline(1.0, color="grey", linewidth=0.5)
    axis.set_ylim(bottom=0)
    axis.set_xlabel("generation")
    axis.set_ylabel("learning rate / initial rate (median of seeds)")
    axis.set_title("The learning-rate mutation over the paper's MNIST 2x2 budget")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
