"""Where a generation's time goes, against the compute floor of a plain GAN loop.

A 2x2 MNIST grid at the default settings (the original's four-layer perceptrons,
population 1, tournament 2, 100 batches of 100 per generation, FID as the mixture score),
all cells in this process with one torch thread, next to a plain single-GAN PyTorch loop
over the same number of batches with the same networks, loss and optimizer (the floor).
Prints each step's share of a generation and the training loop's speed against the floor,
at the defaults and, side by side, with the original's 1,000 fitness samples (--samples).

    python bench/overhead.py --data ../shared/datasets/mnist --plot docs/overhead.png
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict

import torch
from common import mnist_manifest
from lipizzaner_cell.algorithm.individual import ADAM_BETAS
from lipizzaner_cell.algorithm.losses import LOSSES
from lipizzaner_cell.algorithm.networks import build_discriminator, build_generator
from lipizzaner_cell.algorithm.report import GENERATION_PHASES
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.checkpoint import save_checkpoint
from lipizzaner_core.spec import LipizzanerRun, parse_run
from rich.console import Console
from rich.table import Table


def manifest(data: str, generations: int, output: str, samples: int | None = None) -> dict:
    """The defaults, except the data's location, the run's length and the fitness samples."""
    sized = None if samples is None else {"fitness": {"sampleSize": samples}}
    return mnist_manifest("overhead", 2, data, generations, output, coevolution=sized)


def plain_loop_seconds(run: LipizzanerRun, batches: int, repeats: int) -> float:
    """One generation's worth of batches in a plain GAN loop: the compute floor."""
    spec = run.spec
    data = load_dataset(spec.dataset, spec.seed).data
    generator = build_generator(spec.network.generator, spec.network.latent_size, data.shape[1:])
    discriminator = build_discriminator(spec.network.discriminator, data.shape[1:])
    g_lr, d_lr = spec.initial_rate("generator"), spec.initial_rate("discriminator")
    batch = spec.training.batch_size
    g_opt = torch.optim.Adam(generator.parameters(), lr=g_lr, betas=ADAM_BETAS, fused=True)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=d_lr, betas=ADAM_BETAS, fused=True)
    loss = LOSSES[spec.loss]
    rng = torch.Generator().manual_seed(0)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        order = torch.randperm(len(data), generator=rng)
        for step in range(batches):
            real = data[order[step * batch : (step + 1) * batch]]
            with torch.no_grad():
                fake = generator(torch.randn(batch, spec.network.latent_size, generator=rng))
            logits = discriminator(torch.cat([real, fake]))
            d_loss = loss.discriminator(logits[:batch], logits[batch:])
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            noise = torch.randn(batch, spec.network.latent_size, generator=rng)
            g_loss = loss.generator(discriminator(generator(noise)))
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def grid_step_seconds(run: LipizzanerRun) -> tuple[dict[str, float], float]:
    """Median seconds per step per cell-generation, and one checkpoint's seconds."""
    per_step: dict[str, list[float]] = defaultdict(list)

    def record(_cell: int, report) -> None:
        if report.generation > 1:  # the first generation warms caches up
            for step, seconds in report.seconds.items():
                per_step[step].append(seconds)

    outcome = run_in_process(run, resume=False, on_report=record)
    engine = outcome.engines[0]
    with tempfile.TemporaryDirectory() as scratch:
        saves = []
        for _ in range(3):
            started = time.perf_counter()
            save_checkpoint(engine, scratch, keep=1)
            saves.append(time.perf_counter() - started)
    return {s: statistics.median(v) for s, v in per_step.items()}, statistics.median(saves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the MNIST IDX files")
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument(
        "--samples", type=int, default=1000, help="the fitness sample size to compare with"
    )
    parser.add_argument("--plot", help="write a bar chart here (PNG)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = {"defaults": None, f"{args.samples} fitness samples": args.samples}
    measured = {}
    with tempfile.TemporaryDirectory() as output:
        floor = plain_loop_seconds(parse_run(manifest(args.data, 1, output)), 100, repeats=5)
        for label, samples in settings.items():
            run = parse_run(manifest(args.data, args.generations, output, samples))
            steps, checkpoint = grid_step_seconds(run)
            steps["checkpoint"] = checkpoint / run.spec.checkpoint.every  # amortised
            measured[label] = steps

    table = Table(title="One generation of one cell (2x2 MNIST, 100 batches of 100, 1 thread)")
    table.add_column("step")
    for label in measured:
        table.add_column(f"{label}: s", justify="right")
        table.add_column("share", justify="right")
    totals = {label: sum(steps.values()) for label, steps in measured.items()}
    for step in [*GENERATION_PHASES, "checkpoint"]:
        cells = []
        for label, steps in measured.items():
            cells += [f"{steps[step]:.3f}", f"{steps[step] / totals[label]:.1%}"]
        table.add_row(step, *cells)
    table.add_row(
        "total", *[c for t in totals.values() for c in (f"{t:.3f}", "100%")], style="bold"
    )
    console = Console()
    console.print(table)
    console.print(f"plain GAN loop, 100 batches: {floor:.3f} s ({100 / floor:.0f} steps/s)")
    for label, steps in measured.items():
        total = totals[label]
        console.print(
            f"{label}: training {100 / steps['training']:.0f} steps/s "
            f"({floor / steps['training']:.0%} of the plain loop's speed); everything beyond "
            f"training {(total - steps['training']) / total:.1%} of a generation "
            f"(target <= 15%); a generation costs {total / floor:.2f}x the plain loop"
        )
    if args.plot:
        plot(measured, floor, args.plot)


def plot(measured: dict[str, dict[str, float]], floor: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    colours = plt.get_cmap("tab10")
    for row, (label, steps) in enumerate(measured.items()):
        left = 0.0
        for i, step in enumerate([*GENERATION_PHASES, "checkpoint"]):
            ax.barh(
                label, steps[step], left=left, color=colours(i), label=step if not row else None
            )
            left += steps[step]
    ax.barh("plain GAN loop", floor, color="black", label="plain loop")
    ax.set_xlabel("seconds per generation of one cell (100 batches of 100, 1 thread)")
    ax.legend(ncol=4, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
