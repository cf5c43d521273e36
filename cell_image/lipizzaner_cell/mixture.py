"""The neighbourhood's generator mixture: sampling by weight, and one (1+1)-ES step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


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
            was_training = generator.training
            generator.eval()
            parts.append(generator(noise[start : start + count]))
            generator.train(was_training)
            start += count
    return torch.cat(parts)


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
