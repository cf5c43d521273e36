"""Batched fitness: every generator against every discriminator of the neighbourhood.

Each generator produces its fakes once from shared noise; each discriminator then scores
the real samples and all generators' fakes in one forward pass. That is G + D forward
passes for a G x D table of losses, instead of 2 x G x D. The fakes are returned to the
caller so that replacement, later in the same generation, reuses them: the
neighbourhood's networks do not change in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lipizzaner_cell.algorithm.individual import Individual
from lipizzaner_cell.algorithm.losses import Loss
from lipizzaner_cell.algorithm.networks import evaluation_mode

_COMBINE = {
    "average": lambda table, dim: table.mean(dim),
    "worst": lambda table, dim: table.max(dim).values,
    "best": lambda table, dim: table.min(dim).values,
}


@torch.no_grad()
def generator_fakes(generators: list[Individual], noise: torch.Tensor) -> list[torch.Tensor]:
    """Each generator's samples of the same noise, in evaluation mode."""
    fakes = []
    for generator in generators:
        with evaluation_mode(generator.net) as net:
            fakes.append(net(noise))
    return fakes


@torch.no_grad()
def loss_tables(
    fakes: list[torch.Tensor],
    discriminators: list[Individual],
    real: torch.Tensor | None,
    loss: Loss,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(G x D generator losses, D x G discriminator losses) for the generators' `fakes`.

    Without `real` only the generator table is computed, and the discriminators see
    only fakes.
    """
    batch = torch.cat(fakes if real is None else [real, *fakes])
    n = fakes[0].shape[0]
    g_columns, d_rows = [], []
    for discriminator in discriminators:
        logits = discriminator.net(batch)
        fake_logits = logits[-n * len(fakes) :].view(len(fakes), n)
        g_columns.append(torch.stack([loss.generator(fake) for fake in fake_logits]))
        if real is not None:
            real_logits = logits[: real.shape[0]]
            d_rows.append(torch.stack([loss.discriminator(real_logits, f) for f in fake_logits]))
    # One device-to-host copy per table.
    g_table = torch.stack(g_columns, 1).double().cpu()
    return g_table, (torch.stack(d_rows).double().cpu() if d_rows else None)


@dataclass(frozen=True)
class LabelAware:
    """The original's label-aware discriminator fitness (semi-supervised runs): the GAN
    loss weighted by `unsupervised`, plus each discriminator's classification loss on the
    generation's labelled samples weighted by `supervised`."""

    unsupervised: float
    supervised: float
    classification: torch.Tensor  # per discriminator, in their order

    def weigh(self, d_table: torch.Tensor) -> torch.Tensor:
        extra = self.supervised * self.classification.double().cpu()
        return self.unsupervised * d_table + extra[:, None]


def evaluate_fitness(
    generators: list[Individual],
    discriminators: list[Individual],
    real: torch.Tensor | None,
    fakes: list[torch.Tensor],
    loss: Loss,
    mode: str,
    *,
    assign: tuple[str, ...] = ("g", "d"),
    label_aware: LabelAware | None = None,
) -> None:
    """Set fitness (losses against all opponents, combined per mode) on the sides in `assign`.

    `fakes` are the generators' samples (`generator_fakes`); `assign=("g",)` scores
    generators without touching their opponents' fitness, and needs no real data.
    """
    if "d" in assign and real is None:
        raise ValueError("discriminator fitness needs real samples")
    g_table, d_table = loss_tables(fakes, discriminators, real, loss)
    if label_aware is not None and d_table is not None:
        d_table = label_aware.weigh(d_table)
    sides = {"g": (generators, g_table), "d": (discriminators, d_table)}
    for side in assign:
        individuals, table = sides[side]
        for individual, value in zip(individuals, _COMBINE[mode](table, 1).tolist(), strict=True):
            individual.fitness = value
