"""Batched fitness: every generator against every discriminator of the neighbourhood.

Each generator produces its fakes once from shared noise; each discriminator then scores
the real samples and all generators' fakes in one forward pass. That is G + D forward
passes for a G x D table of losses, instead of 2 x G x D.
"""

from __future__ import annotations

import torch

from lipizzaner_cell.individual import Individual
from lipizzaner_cell.losses import Loss

_COMBINE = {
    "average": lambda table, dim: table.mean(dim),
    "worst": lambda table, dim: table.max(dim).values,
    "best": lambda table, dim: table.min(dim).values,
}


@torch.no_grad()
def loss_tables(
    generators: list[Individual],
    discriminators: list[Individual],
    real: torch.Tensor,
    noise: torch.Tensor,
    loss: Loss,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G x D generator losses, D x G discriminator losses)."""
    fakes = []
    for generator in generators:
        generator.net.eval()
        fakes.append(generator.net(noise))
        generator.net.train()
    batch = torch.cat([real, *fakes])
    n = real.shape[0]
    g_columns, d_rows = [], []
    for discriminator in discriminators:
        logits = discriminator.net(batch)
        real_logits, fake_logits = logits[:n], logits[n:].view(len(generators), n)
        g_columns.append(torch.stack([loss.generator(fake) for fake in fake_logits]))
        d_rows.append(torch.stack([loss.discriminator(real_logits, f) for f in fake_logits]))
    # One device-to-host copy for the whole table.
    return torch.stack(g_columns, 1).double().cpu(), torch.stack(d_rows).double().cpu()


def evaluate_fitness(
    generators: list[Individual],
    discriminators: list[Individual],
    real: torch.Tensor,
    noise: torch.Tensor,
    loss: Loss,
    mode: str,
    *,
    assign: tuple[str, ...] = ("g", "d"),
) -> None:
    """Set fitness (losses against all opponents, combined per mode) on the sides in `assign`.

    `assign=("g",)` scores generators without touching their opponents' fitness.
    """
    g_table, d_table = loss_tables(generators, discriminators, real, noise, loss)
    sides = {"g": (generators, g_table), "d": (discriminators, d_table)}
    for side in assign:
        individuals, table = sides[side]
        for individual, value in zip(individuals, _COMBINE[mode](table, 1).tolist(), strict=True):
            individual.fitness = value
