"""The neighbourhood's generator mixture: sampling by weight, one (1+1)-ES step, and the
record keep-best keeps of the best mixture seen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lipizzaner_cell.algorithm.networks import evaluation_mode
from lipizzaner_cell.algorithm.state import State


def allocate(weights: torch.Tensor, total: int) -> list[int]:
    """Split `total` samples by weight with largest remainders (deterministic, exact sum)."""
    exact = weights.double() / weights.sum() * total
    counts = exact.floor().long()
    remainder = total - int(counts.sum())
    if remainder:
        order = torch.argsort(exact - counts, descending=True, stable=True)
        counts[order[:remainder]] += 1
    return counts.tolist()


@torch.no_grad()
def sample_mixture(
    generators: list[nn.Module], weights: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Samples of the mixture, each generator drawing its share of the given noise rows."""
    parts, start = [], 0
    for generator, count in zip(generators, allocate(weights, noise.shape[0]), strict=True):
        if count:
            with evaluation_mode(generator):
                parts.append(generator(noise[start : start + count]))
            start += count
    return torch.cat(parts)


class MixtureEmbeddings:
    """The ES objective's view of a mixture: embedded samples, cached per generator.

    Generator k draws from its own noise block `noise[k]` and a mixture takes the first
    `count_k` of its rows, so a candidate whose weights moved by sigma shares almost all
    its samples with the current mixture: only the rows it adds are generated and embedded.
    """

    def __init__(
        self,
        generators: list[nn.Module],
        noise: torch.Tensor,
        embed: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        if noise.shape[0] != len(generators):
            raise ValueError(f"one noise block per generator, got {noise.shape[0]}")
        self.generators, self.noise, self.embed = generators, noise, embed
        self._rows: list[torch.Tensor | None] = [None] * len(generators)

    def of(self, weights: torch.Tensor) -> torch.Tensor:
        counts = allocate(weights, self.noise.shape[1])
        return torch.cat([self._prefix(k, count) for k, count in enumerate(counts) if count])

    @torch.no_grad()
    def _prefix(self, k: int, count: int) -> torch.Tensor:
        have = self._rows[k]
        start = 0 if have is None else have.shape[0]
        if have is None or count > start:
            with evaluation_mode(self.generators[k]) as generator:
                added = self.embed(generator(self.noise[k, start:count]))
            have = added if have is None else torch.cat([have, added])
            self._rows[k] = have
        return have[:count]


def es_step(
    weights: torch.Tensor,
    current_score: float,
    sigma: float,
    score: Callable[[torch.Tensor], float],
    rng: torch.Generator,
) -> tuple[torch.Tensor, float, bool]:
    """Perturb with N(0, sigma), clip at 0, renormalise; keep only if the score improves."""
    candidate = (weights + sigma * torch.randn(weights.shape, generator=rng).double()).clamp(min=0)
    if candidate.sum() <= 0:
        return weights, current_score, False
    candidate = candidate / candidate.sum()
    candidate_score = score(candidate)
    if candidate_score < current_score:
        return candidate, candidate_score, True
    return weights, current_score, False


@dataclass(frozen=True)
class KeptMixture:
    """The best-scoring mixture a cell has seen: its generators' weights (CPU copies),
    the mixture weights by cell, its score and the generation it came from."""

    generation: int
    score: float
    weights: dict[int, float]
    generators: dict[int, dict[str, torch.Tensor]]

    def state_dict(self) -> State:
        weights = {str(cell): weight for cell, weight in self.weights.items()}
        state = State(
            values={"generation": self.generation, "score": self.score, "weights": weights}
        )
        for cell, generator in self.generators.items():
            state.nest(str(cell), State(generator))
        return state

    @classmethod
    def from_state_dict(cls, state: State) -> KeptMixture:
        weights = {int(cell): weight for cell, weight in state.values["weights"].items()}
        return cls(
            generation=state.values["generation"],
            score=state.values["score"],
            weights=weights,
            generators={cell: state.child(str(cell)).tensors for cell in weights},
        )
