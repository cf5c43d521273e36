"""Tournament selection and replacement; fitness is a loss, so lower is better."""

from __future__ import annotations

import torch

from lipizzaner_cell.individual import Individual


def tournament_select(
    pool: list[Individual], count: int, tournament_size: int, rng: torch.Generator
) -> list[Individual]:
    """`count` winners, each the fittest of a random draw without replacement from `pool`.

    Winners are clones, so training them never touches the pool.
    """
    size = min(tournament_size, len(pool))
    winners = []
    for _ in range(count):
        contestants = torch.randperm(len(pool), generator=rng)[:size].tolist()
        best = min(contestants, key=lambda i: (pool[i].fitness, i))
        winners.append(pool[best].clone())
    return winners


def replace(
    population: list[Individual], offspring: list[Individual], count: int, rule: str
) -> int:
    """Put the best offspring in place of the worst local individuals; return how many.

    `faithful` (the original's rule) accepts an offspring only if its fitness beats the
    individual it replaces. `offspring` always accepts the best `count` offspring.
    """
    ranked_offspring = sorted(offspring, key=lambda ind: ind.fitness)[:count]
    worst_first = sorted(range(len(population)), key=lambda i: -population[i].fitness)
    accepted = 0
    for slot, child in zip(worst_first, ranked_offspring, strict=False):
        if rule == "offspring" or child.fitness < population[slot].fitness:
            population[slot] = child
            accepted += 1
    return accepted


def best(population: list[Individual]) -> Individual:
    return min(population, key=lambda ind: ind.fitness)
