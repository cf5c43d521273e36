"""Ensembles from every generator of the grid (Lipizzaner 2.0's ensemble optimisation).

The run's own ensemble is the best cell's neighbourhood mixture. Here every generator the
cells ended with is a candidate, and a search picks which to mix and with what weights:

- `greedy`: Caruana et al.'s ensemble selection. Start from nothing, add the candidate
  (repeats allowed) that lowers the objective most, mix the picks uniformly, stop at
  `max_size` picks or when no candidate helps.
- `ga`: a genetic algorithm over weight vectors with at most `max_size` non-zero weights:
  tournaments of two, uniform crossover, Gaussian mutation that also adds and drops
  members, one elite. Its first population holds the best cell's mixture, so it never
  ends worse than the run's own ensemble.

Both score a mixture on the same held-out samples the run's scores use, through
`MixtureEmbeddings` (each candidate's samples embedded once). Pure over a `score`
function, so the searches are tested on their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Score = Callable[[torch.Tensor], float]  # weights over the candidates -> objective (lower)


@dataclass(frozen=True)
class Found:
    weights: torch.Tensor  # over the candidates, summing to 1
    objective: float
    evaluations: int


def greedy(score: Score, count: int, max_size: int) -> Found:
    """Forward selection with repeats; the weights are each candidate's share of picks."""
    picks = torch.zeros(count, dtype=torch.float64)
    best, evaluations = math.inf, 0
    while picks.sum() < max_size:
        trials = []
        for k in range(count):
            trial = picks.clone()
            trial[k] += 1
            trials.append((score(trial / trial.sum()), k))
        evaluations += count
        value, k = min(trials)
        if value >= best:
            break
        picks[k] += 1
        best = value
    return Found(picks / picks.sum(), best, evaluations)


@dataclass(frozen=True)
class GeneticSettings:
    population: int = 20
    generations: int = 30
    sigma: float = 0.1  # of the Gaussian added to the weights
    membership: float = 0.2  # chance to add a member, and to drop one, per child


def genetic(
    score: Score,
    count: int,
    max_size: int,
    rng: torch.Generator,
    start: list[torch.Tensor],
    settings: GeneticSettings = GeneticSettings(),
) -> Found:
    """The best weights a seeded genetic algorithm finds; `start` joins the first
    population (the best cell's mixture, so the result is never worse)."""
    population = [_trim(w.double(), max_size, rng) for w in start]
    while len(population) < settings.population:
        population.append(_random_member(count, max_size, rng))
    values = [score(w) for w in population]
    evaluations = len(population)
    for _ in range(settings.generations):
        elite = min(range(len(population)), key=values.__getitem__)
        children = [population[elite]]
        child_values = [values[elite]]
        while len(children) < settings.population:
            a, b = (_tournament(values, rng) for _ in range(2))
            mask = torch.rand(count, generator=rng) < 0.5
            child = torch.where(mask, population[a], population[b])
            child = _trim(_mutate(child, max_size, settings, rng), max_size, rng)
            children.append(child)
            child_values.append(score(child))
            evaluations += 1
        population, values = children, child_values
    best = min(range(len(population)), key=values.__getitem__)
    return Found(population[best], values[best], evaluations)


def _tournament(values: list[float], rng: torch.Generator) -> int:
    a, b = torch.randint(len(values), (2,), generator=rng).tolist()
    return a if values[a] <= values[b] else b


def _random_member(count: int, max_size: int, rng: torch.Generator) -> torch.Tensor:
    size = int(torch.randint(1, max_size + 1, (1,), generator=rng))
    chosen = torch.randperm(count, generator=rng)[:size]
    weights = torch.zeros(count, dtype=torch.float64)
    weights[chosen] = torch.rand(len(chosen), generator=rng, dtype=torch.float64) + 0.1
    return weights / weights.sum()


def _mutate(
    weights: torch.Tensor, max_size: int, settings: GeneticSettings, rng: torch.Generator
) -> torch.Tensor:
    noise = torch.randn(weights.shape, generator=rng, dtype=torch.float64) * settings.sigma
    mutated = torch.where(weights > 0, weights + noise, weights).clamp(min=0)
    if torch.rand(1, generator=rng) < settings.membership:
        mutated[int(torch.randint(len(weights), (1,), generator=rng))] += 1 / max_size
    members = mutated.nonzero().flatten()
    if len(members) > 1 and torch.rand(1, generator=rng) < settings.membership:
        mutated[members[int(torch.randint(len(members), (1,), generator=rng))]] = 0
    return mutated


def _trim(weights: torch.Tensor, max_size: int, rng: torch.Generator) -> torch.Tensor:
    """At most `max_size` members (the heaviest), summing to 1; never empty."""
    weights = weights.clone()
    if (weights > 0).sum() > max_size:
        weights[weights.argsort(descending=True)[max_size:]] = 0
    if weights.sum() <= 0:
        weights[int(torch.randint(len(weights), (1,), generator=rng))] = 1
    return weights / weights.sum()
