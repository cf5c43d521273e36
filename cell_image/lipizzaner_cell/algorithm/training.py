"""Step 4 of a generation: the original's batch loop over the selected players.

On each batch the generators step, each against one discriminator drawn for them all, then
the discriminators (on the batches `discriminatorSkipEveryNth` leaves them) against one
drawn generator; every step first mutates the player's learning rate. Kept apart from the
engine so the loop reads on its own; it shares the engine's generators, so a checkpoint of
the engine's RNG states covers it.

How one player's step runs is a `Steps` object's business: `EagerSteps` runs it as plain
PyTorch; `graphed.GraphedSteps` replays it as a captured CUDA graph. The loop draws every
decision and every random tensor itself, in the same order for both, so both compute the
same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from lipizzaner_core.spec import RunSpecBody
from torch import nn

from lipizzaner_cell.algorithm.individual import Individual, mutate_learning_rate
from lipizzaner_cell.algorithm.losses import Loss, StepLosses, gradient_penalty
from lipizzaner_cell.algorithm.semi_supervised import SemiSupervision, feature_matching


@dataclass
class Players:
    """Step 3's outcome: who trains in step 4, and against whom.

    With selection, the tournament winners (clones) train against each other; without,
    as in the original's `enable_selection: False`, the local individuals train in place
    against the whole neighbourhood.
    """

    generators: list[Individual]
    discriminators: list[Individual]
    generator_opponents: list[Individual]
    discriminator_opponents: list[Individual]


@dataclass
class PlayerStep:
    """One player's step with its decisions drawn: who, against whom, on what."""

    role: str  # "g" or "d"
    player: Individual
    opponent: Individual
    loss: Loss
    noise: torch.Tensor
    real: torch.Tensor  # the batch's real samples


class Tally:
    """A generation's running training losses, ticks (a role's turn on a batch) and
    batches: what step 4 reports."""

    def __init__(self, device: torch.device) -> None:
        self.totals = {"g": torch.zeros((), device=device), "d": torch.zeros((), device=device)}
        self.ticks = {"g": 0, "d": 0}
        self.batches = 0

    def add(self, role: str, value: torch.Tensor) -> None:
        self.totals[role] += value

    def means(self, generators: int, discriminators: int) -> tuple[float, float, int]:
        """The mean generator and discriminator losses per player step, and the batches."""
        return (
            float(self.totals["g"]) / max(1, self.ticks["g"] * generators),
            float(self.totals["d"]) / max(1, self.ticks["d"] * discriminators),
            self.batches,
        )


class Steps(Protocol):
    """One player's optimisation step against one opponent; returns the detached loss."""

    def begin(self, players: Players) -> None:
        """Before a generation's batch loop."""

    def end(self, players: Players) -> None:
        """After it, also when it stopped early."""

    def generator(
        self,
        player: Individual,
        opponent: Individual,
        loss: Loss,
        noise: torch.Tensor,
        real: torch.Tensor,
    ) -> torch.Tensor:
        """`real`: the batch's real samples (only feature matching reads them)."""

    def discriminator(
        self,
        player: Individual,
        opponent: Individual,
        loss: Loss,
        real: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor: ...

    def live(self, player: Individual) -> nn.Module:
        """The network that holds `player`'s weights during the batch loop (its own, or a
        copy the steps train in its place until `end`): what its EMA averages."""


def generator_value(
    player: nn.Module, opponent: nn.Module, loss: Loss, noise: torch.Tensor
) -> torch.Tensor:
    """The generator's loss on one batch: what every way of stepping computes."""
    return loss.generator(opponent(player(noise)))


def discriminator_value(
    player: nn.Module, opponent: nn.Module, loss: Loss, real: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's loss on real data and the opponent's fakes; and the fakes."""
    with torch.no_grad():
        fake = opponent(noise)
    logits = player(torch.cat([real, fake]))
    return loss.discriminator(logits[: real.shape[0]], logits[real.shape[0] :]), fake


def clip_weights(net: nn.Module, clip: float) -> None:
    """WGAN's critic: every weight back into [-clip, clip] after its step."""
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.clamp_(-clip, clip)


@dataclass
class EagerSteps:
    """Each step as plain PyTorch: the reference every other way of stepping must match.
    With `labelled` (semi-supervised runs) a discriminator's loss adds its classification
    loss on a labelled batch."""

    device_rng: torch.Generator  # gradient-penalty mixing, labelled batches
    labelled: SemiSupervision | None = None

    def begin(self, players: Players) -> None:
        pass

    def end(self, players: Players) -> None:
        pass

    def live(self, player: Individual) -> nn.Module:
        return player.net

    def generator(
        self,
        player: Individual,
        opponent: Individual,
        loss: Loss,
        noise: torch.Tensor,
        real: torch.Tensor,
    ) -> torch.Tensor:
        if self.labelled is not None and self.labelled.feature_matching:
            value = feature_matching(opponent.net, player.net(noise), real)
        else:
            value = generator_value(player.net, opponent.net, loss, noise)
        player.optimizer.zero_grad(set_to_none=True)
        value.backward()
        player.optimizer.step()
        return value.detach()

    def discriminator(
        self,
        player: Individual,
        opponent: Individual,
        loss: Loss,
        real: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        value, fake = discriminator_value(player.net, opponent.net, loss, real, noise)
        if loss.gradient_penalty:
            penalty = gradient_penalty(player.net, real, fake, self.device_rng)
            value = value + loss.gradient_penalty * penalty
        if self.labelled is not None:
            value = self.labelled.discriminator_loss(player.net, value, self.device_rng)
        player.optimizer.zero_grad(set_to_none=True)
        value.backward()
        player.optimizer.step()
        if loss.clip:
            clip_weights(player.net, loss.clip)
        return value.detach()


@dataclass
class BatchTrainer:
    spec: RunSpecBody
    loss: Loss  # the run's loss: it fixes the schedule (critic steps)
    losses: StepLosses  # each step's: the run's loss, or mustangs' draws
    data: torch.Tensor  # the cell's data, on the training device
    batches: int  # per generation
    rng: torch.Generator  # decisions: opponents, mutations, mustangs' draws
    device_rng: torch.Generator  # batch order, gradient-penalty mixing
    noise: Callable[[int], torch.Tensor]
    steps: Steps  # how one player's step runs: EagerSteps, or graphed.GraphedSteps
    generator_steps: int = 0  # the cell's, over its life: the original WGAN's warm-up counts them

    def run(
        self, players: Players, should_stop: Callable[[], bool] | None = None
    ) -> tuple[float, float, int]:
        """Step 4: the original's batch loop, each player step run by `self.steps`.

        Returns the mean generator and discriminator training losses and the batches run
        (fewer than planned when `should_stop` turned true).
        """
        tally = Tally(self.data.device)
        self.steps.begin(players)
        try:
            for step in self.player_steps(players, tally, should_stop):
                if step.role == "g":
                    value = self.steps.generator(
                        step.player, step.opponent, step.loss, step.noise, step.real
                    )
                else:
                    value = self.steps.discriminator(
                        step.player, step.opponent, step.loss, step.real, step.noise
                    )
                tally.add(step.role, value)
                if step.role == "g" and step.player.ema is not None:
                    decay = self.spec.training.generator_ema.decay
                    step.player.update_ema(decay, self.steps.live(step.player))
        finally:
            self.steps.end(players)
        return tally.means(len(players.generators), len(players.discriminators))

    def player_steps(
        self,
        players: Players,
        tally: Tally,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[PlayerStep]:
        """The generation's player steps in order, each with its decisions drawn (opponent,
        rate mutation, loss, noise) just before it is yielded: a consumer that runs each
        step before asking for the next draws every random number in the eager order.
        `tally` counts the batches and ticks."""
        batch_size = self.spec.training.batch_size
        order = torch.randperm(len(self.data), generator=self.device_rng, device=self.data.device)
        offsets = torch.arange(batch_size, device=self.data.device)
        real = self.data[:0]
        for batch, role, mutate in self.schedule():
            if batch == tally.batches:  # a new batch
                if should_stop is not None and batch and should_stop():
                    break
                tally.batches += 1
                real = self.data[order[(batch * batch_size + offsets) % len(self.data)]]
            tally.ticks[role] += 1
            if role == "g":
                opponent = self._opponent(players.generator_opponents)
                team, rate = players.generators, "generator"
            else:
                opponent = self._opponent(players.discriminator_opponents)
                team, rate = players.discriminators, "discriminator"
            for player in team:
                if mutate:
                    self._mutate(player, rate)
                loss = self.losses.draw(self.rng)
                noise = self.noise(real.shape[0])
                yield PlayerStep(role, player, opponent, loss, noise, real)

    def schedule(self) -> Iterator[tuple[int, str, bool]]:
        """The generation's steps in order: (batch, "g" or "d", whether the step first
        mutates the players' rates).

        - Most losses: on each batch the generators, then the discriminators on the
          batches `discriminatorSkipEveryNth` leaves them; every step mutates.
        - `wgan`: the critic on every batch and the generators after each
          `critic_steps` batches.
        - `wgan-original`, as the original's WGAN trainer: a generator step, then a block
          of critic steps, one batch each, from the same batch on; the block is 100 steps
          while the cell's generator steps number fewer than 25 and at every 500th, else
          `critic_steps`, cut at the generation's end. Rates mutate once per block.
        """
        if self.loss.critic_blocks:
            batch = 0
            while batch < self.batches:
                yield batch, "g", True
                self.generator_steps += 1
                warming = self.generator_steps < 25 or self.generator_steps % 500 == 0
                block = min(100 if warming else self.loss.critic_steps, self.batches - batch)
                for k in range(block):
                    yield batch + k, "d", k == 0
                batch += block
            return
        for batch in range(self.batches):
            for role in self.roles_training_on(batch):
                yield batch, role, True

    def roles_training_on(self, batch: int) -> tuple[str, ...]:
        """Who steps on this batch, in order: "g" generators, "d" discriminators."""
        critic_steps = self.loss.critic_steps
        if critic_steps > 1:
            last = batch == self.batches - 1
            return ("d", "g") if (batch + 1) % critic_steps == 0 or last else ("d",)
        skip = self.spec.coevolution.discriminator_skip_every_nth
        return ("g", "d") if skip == 0 or batch % (skip + 1) == 0 else ("g",)

    def _mutate(self, individual: Individual, role: str) -> None:
        co = self.spec.coevolution
        rate = self.spec.initial_rate(role)
        mutation = co.mutation
        mutate_learning_rate(
            individual, mutation.probability, mutation.alpha, rate, self.rng, mutation.rule
        )

    def _opponent(self, opponents: list[Individual]) -> Individual:
        """One opponent per batch for all of a role's players, as the original draws."""
        return opponents[int(torch.randint(len(opponents), (1,), generator=self.rng))]
