"""Step 6 for one cell: the weights over its neighbourhood's centre generators, the
(1+1)-ES that moves them, and keep-best's record of the best mixture so far. The engine
hands it the centres; it owns the weights and the kept mixture."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lipizzaner_core.spec.outcome import MixtureSpec
from torch import nn

from lipizzaner_cell.algorithm.mixture import KeptMixture, MixtureEmbeddings, es_step
from lipizzaner_cell.scores.scorers import Scorer


class CellMixture:
    def __init__(self, spec: MixtureSpec, cells: list[int]) -> None:
        self.spec = spec
        self.weights: dict[int, float] = {cell: 1 / len(cells) for cell in cells}
        self.kept: KeptMixture | None = None

    def entropy(self) -> float:
        """The weights' entropy in nats: 0 when one generator has them all, ln n when n
        share them evenly (how many generators the mixture really uses: e ** entropy)."""
        weights = torch.tensor(list(self.weights.values()), dtype=torch.float64)
        shares = weights[weights > 0] / weights.sum()
        return float(-(shares * shares.log()).sum())

    def weights_of(self, cells: list[int]) -> torch.Tensor:
        """The weights of these cells, renormalised to sum to 1."""
        weights = torch.tensor([self.weights[c] for c in cells], dtype=torch.float64)
        return weights / weights.sum()

    def evolve(
        self,
        cells: list[int],
        nets: list[nn.Module],
        steps: int,
        scorer: Scorer | None,
        noise: Callable[[int], torch.Tensor],
        rng: torch.Generator,
    ) -> float | None:
        """`steps` (1+1)-ES steps on the weights of these centres; the mixture's score,
        or None when nothing was scored (no score, or no steps: `schedule: end` during
        training). Weights of neighbours missing this generation are left as they were."""
        if scorer is None or not steps:
            return None
        mass = sum(self.weights[c] for c in cells)
        samples = self.spec.score_sample_size
        blocks = noise(len(nets) * samples).view(len(nets), samples, -1)
        embeddings = MixtureEmbeddings(nets, blocks, scorer.embed)

        def score(weights: torch.Tensor) -> float:
            return scorer.objective_of(embeddings.of(weights))

        weights = self.weights_of(cells)
        current = score(weights)
        for _ in range(steps):
            weights, current, _ = es_step(weights, current, self.spec.sigma, score, rng)
        for cell, weight in zip(cells, (weights * mass).tolist(), strict=True):
            self.weights[cell] = weight
        return current

    def keep_if_best(
        self, generation: int, score: float | None, cells: list[int], nets: list[nn.Module]
    ) -> None:
        """Keep-best: remember this mixture if it scores better than any before it
        (`mixture.keep: best`)."""
        if self.spec.keep != "best" or score is None:
            return
        if self.kept is not None and score >= self.kept.score:
            return
        weights = self.weights_of(cells).tolist()
        self.kept = KeptMixture(
            generation=generation,
            score=score,
            weights=dict(zip(cells, weights, strict=True)),
            generators={c: frozen_copy(n.state_dict()) for c, n in zip(cells, nets, strict=True)},
        )


def frozen_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies that no later step can change."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}
