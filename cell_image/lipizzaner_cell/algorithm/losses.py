"""GAN losses on discriminator logits, named as in the original Lipizzaner.

Every loss returns the quantity its player minimises, so a lower fitness is always better.
The discriminator's last layer gives a logit; D = sigmoid(logit) is the original's
sigmoid output, computed stably.

| name | generator minimises | discriminator | the original's |
| --- | --- | --- | --- |
| `bce` | -log D(G(z)) (non-saturating) | BCE | `bceloss` |
| `heuristic` | -0.5 log D(G(z)) | BCE | `heuristicloss` (inside Mustangs) |
| `minimax` | log(1 - D(G(z))) (Goodfellow's saturating form) | BCE | none |
| `mse` | (D(G(z)) - 1)^2 | (D(x) - 1)^2 + D(G(z))^2 | `mseloss` |
| `wgan` | -critic(G(z)) | weight-clipped critic, RMSprop, 5 critic steps | its settings |
| `wgan-gp` | -critic(G(z)) | critic with gradient penalty 10, Adam | none |
| `wgan-original` | D(G(z)) | D(x) - D(G(z)), clipped, RMSprop, critic blocks | `lipizzaner_wgan` |

`mustangs` is not a loss of its own: each player trains with one of bce, mse and
heuristic (`StepLosses`), drawn every batch (`mustangs.draw: per-batch`) or once when the
cell is created (`at-creation`, the original's default); a discriminator that draws
heuristic trains with BCE, as the original's does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from lipizzaner_cell.algorithm.individual import OptimizerName


class Loss(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def gradient_penalty(self) -> float: ...

    @property
    def clip(self) -> float:
        """Weight clipping of the critic after each of its steps (0: none)."""

    @property
    def critic_steps(self) -> int:
        """Discriminator steps per generator step; each takes a batch of its own."""

    @property
    def optimizer(self) -> OptimizerName: ...

    @property
    def critic_blocks(self) -> bool:
        """The original's WGAN schedule: a generator step, then a block of critic steps
        (`training.BatchTrainer.schedule`)."""

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor: ...

    def discriminator(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor
    ) -> torch.Tensor: ...


def _bce_discriminator(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # -log D(x) - log(1 - D(G(z))), with D = sigmoid(logit)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


@dataclass(frozen=True)
class BinaryCrossEntropyLoss:
    """The original's `bceloss`: BCE against "real" labels, i.e. -log D(G(z))."""

    name: str = "bce"
    scale: float = 1.0
    gradient_penalty: float = 0.0
    clip: float = 0.0
    critic_steps: int = 1
    optimizer: OptimizerName = "adam"
    critic_blocks: bool = False

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return self.scale * F.softplus(-fake_logits).mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return _bce_discriminator(real_logits, fake_logits)


@dataclass(frozen=True)
class MinimaxLoss:
    """Goodfellow's minimax game: the generator minimises log(1 - D(G(z)))."""

    name: str = "minimax"
    gradient_penalty: float = 0.0
    clip: float = 0.0
    critic_steps: int = 1
    optimizer: OptimizerName = "adam"
    critic_blocks: bool = False

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -F.softplus(fake_logits).mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return _bce_discriminator(real_logits, fake_logits)


@dataclass(frozen=True)
class LeastSquaresLoss:
    """Least squares on D's probability, as the original's `mseloss`."""

    name: str = "mse"
    gradient_penalty: float = 0.0
    clip: float = 0.0
    critic_steps: int = 1
    optimizer: OptimizerName = "adam"
    critic_blocks: bool = False

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return ((torch.sigmoid(fake_logits) - 1) ** 2).mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real = ((torch.sigmoid(real_logits) - 1) ** 2).mean()
        return real + (torch.sigmoid(fake_logits) ** 2).mean()


@dataclass(frozen=True)
class WassersteinLoss:
    """The WGAN critic loss; `wgan` clips the critic's weights, `wgan-gp` penalises its
    gradient instead.

    `wgan-original` is the original's WGAN trainer as it ran on its sigmoid
    discriminators: the critic is -D with D = sigmoid(logit), so the critic pushes D down
    on real data and up on fakes and the generator pushes D(G(z)) down (the sign of
    Arjovsky et al.'s code). Its fitness stays BCE (`fitness_loss`), which ranks such a
    critic, and its generators, upside down: docs/algorithm.md, "Losses"."""

    name: str
    gradient_penalty: float = 0.0
    clip: float = 0.0
    critic_steps: int = 1
    optimizer: OptimizerName = "adam"
    critic_blocks: bool = False
    sigmoid_critic: bool = False

    def critic(self, logits: torch.Tensor) -> torch.Tensor:
        return -torch.sigmoid(logits) if self.sigmoid_critic else logits

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -self.critic(fake_logits).mean()

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return self.critic(fake_logits).mean() - self.critic(real_logits).mean()


_ALL: tuple[Loss, ...] = (
    BinaryCrossEntropyLoss(),
    BinaryCrossEntropyLoss(name="heuristic", scale=0.5),
    MinimaxLoss(),
    LeastSquaresLoss(),
    # The original WGAN trainer's settings on a raw critic: clip to [-0.01, 0.01], 5 critic
    # steps, RMSprop (wgan-original is that trainer as it ran).
    WassersteinLoss(name="wgan", clip=0.01, critic_steps=5, optimizer="rmsprop"),
    WassersteinLoss(name="wgan-gp", gradient_penalty=10.0),
    WassersteinLoss(
        name="wgan-original",
        clip=0.01,
        critic_steps=5,
        optimizer="rmsprop",
        critic_blocks=True,
        sigmoid_critic=True,
    ),
)
LOSSES: dict[str, Loss] = {loss.name: loss for loss in _ALL}
MUSTANGS_CHOICES = ("bce", "mse", "heuristic")


def draw_loss(name: str, rng: torch.Generator) -> Loss:
    """The loss a player trains with for one batch."""
    if name == "mustangs":
        pick = int(torch.randint(len(MUSTANGS_CHOICES), (1,), generator=rng))
        return LOSSES[MUSTANGS_CHOICES[pick]]
    return LOSSES[name]


@dataclass(frozen=True)
class StepLosses:
    """The loss each training step uses: the run's own; under mustangs a fresh draw per
    player and batch, or the cell's one draw at its creation."""

    name: str  # the spec's loss
    fixed: Loss | None  # what every step uses; None: a draw per step

    @classmethod
    def of(cls, name: str, draw: str, seed: int) -> StepLosses:
        """`seed`: the cell's, so the draw at creation is the same on every resume."""
        if name != "mustangs":
            return cls(name, LOSSES[name])
        if draw == "at-creation":
            return cls(name, LOSSES[random.Random(seed).choice(MUSTANGS_CHOICES)])
        return cls(name, None)

    def draw(self, rng: torch.Generator) -> Loss:
        return self.fixed if self.fixed is not None else draw_loss(self.name, rng)

    @property
    def trained_with(self) -> str:
        """The loss's name, for results and logs: the drawn one when it is fixed."""
        return self.name if self.fixed is None else self.fixed.name


def spec_loss(name: str) -> Loss:
    """The loss that fixes a run's training schedule and optimizer: mustangs trains on
    bce's."""
    return LOSSES["bce" if name == "mustangs" else name]


# Losses whose individuals the original compared under BCE: mustangs (its draws differ)
# and its WGAN trainer (whose networks kept the bceloss of the configuration).
BCE_FITNESS = ("mustangs", "wgan-original")


def fitness_loss(name: str) -> Loss:
    """The loss fitness (steps 2 and 5) is measured with."""
    return LOSSES["bce" if name in BCE_FITNESS else name]


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
