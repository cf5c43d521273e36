"""Semi-supervised co-evolution against the same classifier trained on its labels alone.

For each seed: a 2x2 MNIST grid with `semiSupervised` (each cell may use `--per-class`
labels of every digit, drawn from its own seed, or with `--labels shared` one subset drawn
from the run's seed for every cell; the rest of its digits unlabelled), run in one
process. Then the same discriminator network, as a plain classifier, trained on
labelled digits only, with the same optimizer, learning rate, labelled batch size and
number of steps: once on the best cell's labelled digits, once on every cell's together
(the grid as a whole saw those). Every classifier is scored on the same held-out digits,
which no run trained on.

    python bench/semi_supervised.py --data ../shared/datasets/mnist --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import add_result_flags, mnist_manifest, parse_result_args, print_rows
from lipizzaner_cell.algorithm.individual import new_optimizer
from lipizzaner_cell.algorithm.networks import build_discriminator
from lipizzaner_cell.algorithm.semi_supervised import accuracy, classification_loss, labelled_rows
from lipizzaner_cell.commands.cli import main as lipizzaner
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_core.spec import parse_run
from lipizzaner_core.topology import cell_seed

COLUMNS = (
    "seed",
    "labels a cell",
    "distinct labels",
    "grid: best cell's D",
    "grid: its neighbourhood's vote",
    "alone: best cell's labels",
    "alone: every cell's labels",
    "minutes",
)


def ssl_run(output: str, seed: int, args: argparse.Namespace) -> dict:
    manifest = mnist_manifest(
        "mnist-ssl", 2, args.data, args.generations, output, batches=args.batches
    )
    semi = {"enabled": True, "labels": args.labels, "generatorLoss": args.generator_loss}
    manifest["spec"].update(seed=seed, semiSupervised=semi)
    return manifest


def with_rate(manifest: dict, per_class: int) -> dict:
    """Set dataset.labelRate so that each cell may use `per_class` digits of each class."""
    spec = parse_run(manifest).spec
    training, _ = load_dataset(spec.dataset, spec.seed).split(spec.dataset.validation_fraction)
    manifest["spec"]["dataset"]["labelRate"] = per_class * 10 / len(training)
    return manifest


def supervised_only(manifest: dict, cells: list[int], steps: int) -> float:
    """The run's discriminator network trained on the labelled digits of `cells` alone;
    its accuracy on the run's held-out digits."""
    run = parse_run(manifest)
    spec = run.spec
    dataset = load_dataset(spec.dataset, spec.seed)
    training, held_out = dataset.split(spec.dataset.validation_fraction)
    assert training.labels is not None and held_out is not None and held_out.labels is not None
    rate = spec.dataset.label_rate
    shared = spec.semi_supervised.labels == "shared"
    seeds = {spec.seed} if shared else {cell_seed(spec.seed, c) for c in cells}
    rows = torch.cat([labelled_rows(training.labels, 10, rate, seed) for seed in seeds]).unique()
    samples, classes = training.data[rows], training.labels[rows]
    torch.manual_seed(spec.seed)
    net = build_discriminator(spec.network.discriminator, dataset.shape, 10)
    optimizer = new_optimizer(net, "adam", spec.initial_rate("discriminator"))
    rng = torch.Generator().manual_seed(spec.seed)
    for _ in range(steps):
        pick = torch.randint(len(rows), (spec.semi_supervised.labelled_batch_size,), generator=rng)
        loss = classification_loss(net, samples[pick], classes[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return accuracy([net], held_out.data, held_out.labels)


def measure(manifest: dict, workdir: Path) -> dict[str, float]:
    path = workdir / f"ssl-{manifest['spec']['seed']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    started = time.perf_counter()
    assert lipizzaner(["run", str(path), "--in-process", "--quiet", "--threads", "1"]) == 0
    minutes = (time.perf_counter() - started) / 60
    output = manifest["spec"]["output"]["uri"]
    ensemble = json.loads(Path(output, "ensemble", "manifest.json").read_text())
    found = ensemble["classifier"]
    spec = manifest["spec"]
    steps = spec["generations"] * spec["training"]["batchesPerGeneration"]
    return {
        "labels a cell": found["labelled"],
        "distinct labels": found["distinctLabelled"],
        "grid: best cell's D": found["accuracy"]["discriminator"],
        "grid: its neighbourhood's vote": found["accuracy"]["neighbourhood"],
        "alone: best cell's labels": supervised_only(manifest, [ensemble["bestCell"]], steps),
        "alone: every cell's labels": supervised_only(manifest, [0, 1, 2, 3], steps),
        "minutes": minutes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=10, help="labels a cell may use")
    parser.add_argument(
        "--labels", choices=("per-cell", "shared"), default="per-cell", help="semiSupervised.labels"
    )
    parser.add_argument(
        "--generator-loss",
        choices=("gan", "feature-matching"),
        default="gan",
        help="semiSupervised.generatorLoss",
    )
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--batches", type=int, default=50, help="per generation")
    add_result_flags(parser, "bars of each seed's accuracies")
    args = parse_result_args(parser)
    rows = json.loads(Path(args.rows).read_text())["rows"] if args.rows else run_seeds(args)
    print_rows("MNIST, 2x2 grid: held-out accuracy of the classifiers", COLUMNS, rows, ".4f")
    if args.json and not args.rows:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "plot", "rows")}
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    if args.plot:
        plot(rows, args.plot)


def run_seeds(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            manifest = ssl_run(f"{workdir}/{seed}", seed, args)
            row = {"seed": seed, **measure(with_rate(manifest, args.per_class), Path(workdir))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    bars = COLUMNS[3:7]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    width = 0.8 / len(bars)
    for k, name in enumerate(bars):
        xs = [i + k * width for i in range(len(rows))]
        ax.bar(xs, [row[name] for row in rows], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"seed {row['seed']}" for row in rows])
    low = min(row[name] for row in rows for name in bars)
    ax.set_ylim(max(0.0, low - 0.1), 1.04)
    ax.set_ylabel("held-out accuracy")
    distinct = rows[0].get("distinct labels")
    of_run = f", {distinct} distinct in the run" if distinct else ""
    ax.set_title(f"MNIST, {rows[0]['labels a cell']} labelled digits a cell{of_run}")
    ax.legend(fontsize=8, loc="upper center", ncol=4)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
