"""GAN losses on discriminator logits.

Every loss returns the quantity its player minimises, so a lower fitness is always better.
`mustangs` is not a loss of its own: each individual draws one of bce, mse and heuristic
for every batch (see `draw_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F


class Loss(Protocol):
    name: str
    gradient_penalty: float

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor: ...

    def discriminator(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor
    ) -> torch.Tensor: ...


def _bce_discriminator(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # -log D(x) - log(1 - D(G(z))), with D = sigmoid(logit)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


@dataclass(frozen=True)
class MinimaxLoss:
    """Goodfellow's minimax game: the generator minimises log(1 - D(G(z)))."""

    name: str = "bce"
    gradient_penalty: float = 0.0

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -F.softplus(fake_logits).mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return _bce_discriminator(real_logits, fake_logits)


@dataclass(frozen=True)
class HeuristicLoss:
    """Non-saturating: the generator minimises -log D(G(z))."""

    name: str = "heuristic"
    gradient_penalty: float = 0.0

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(-fake_logits).mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return _bce_discriminator(real_logits, fake_logits)


@dataclass(frozen=True)
class LeastSquaresLoss:
    """Least squares on D's probability, as the original Lipizzaner's MSE loss."""

    name: str = "mse"
    gradient_penalty: float = 0.0

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return ((torch.sigmoid(fake_logits) - 1) ** 2).mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real = ((torch.sigmoid(real_logits) - 1) ** 2).mean()
        return real + (torch.sigmoid(fake_logits) ** 2).mean()


@dataclass(frozen=True)
class WassersteinLoss:
    """WGAN critic loss; training adds `gradient_penalty` times the penalty term."""

    name: str = "wgan-gp"
    gradient_penalty: float = 10.0

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return fake_logits.mean() - real_logits.mean()


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (MinimaxLoss(), HeuristicLoss(), LeastSquaresLoss(), WassersteinLoss())
}
MUSTANGS_CHOICES = ("bce", "mse", "heuristic")


def draw_loss(name: str, rng: torch.Generator) -> Loss:
    """The loss an individual trains with for one batch."""
    if name == "mustangs":
        pick = int(torch.randint(len(MUSTANGS_CHOICES), (1,), generator=rng))
        return LOSSES[MUSTANGS_CHOICES[pick]]
    return LOSSES[name]


def fitness_loss(name: str) -> Loss:
    """The loss fitness is measured with: mustangs individuals are compared under bce."""
    return LOSSES["bce" if name == "mustangs" else name]


def gradient_penalty(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator
) -> torch.Tensor:
    """Gulrajani et al.: (||grad D(x_hat)|| - 1)^2 on random interpolates of real and fake."""
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    mix = torch.rand(shape, generator=rng, device=real.device)
    interpolates = (mix * real + (1 - mix) * fake).requires_grad_(True)
    (grads,) = torch.autograd.grad(
        discriminator(interpolates).sum(), interpolates, create_graph=True
    )
    return ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
