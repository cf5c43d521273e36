"""Tournament selection and replacement; fitness is a loss, so lower is better."""

from __future__ import annotations

import torch

from lipizzaner_cell.algorithm.individual import Individual


def tournament_select(
    pool: list[Individual], count: int, tournament_size: int, rng: torch.Generator
) -> list[Individual]:
    """`count` winners, each the fittest of a random draw without replacement from `pool`.

    Winners are clones, so training them never touches the pool. A tournament larger
    than the pool is an error, as in the original (the caller decides what to do when
    neighbours are missing).
    """
    if not 0 < tournament_size <= len(pool):
        raise ValueError(f"tournament of {tournament_size} from a pool of {len(pool)}")
    winners = []
    for _ in range(count):
        contestants = torch.randperm(len(pool), generator=rng)[:tournament_size].tolist()
        best = min(contestants, key=lambda i: (pool[i].fitness, i))
        winners.append(pool[best].clone())
    return winners


def sort_by_fitness(population: list[Individual]) -> None:
    """Best first, in place; a stable sort, so ties keep their order."""
    population.sort(key=lambda individual: individual.fitness)


def replace(
    population: list[Individual], offspring: list[Individual], count: int, rule: str
) -> int:
    """Put offspring in place of the worst local individuals; return how many.

    The original's pairing: both sorted best first, the i-th best offspring is compared
    with `population[i - count]`, so the best offspring meets the best of the `count`
    worst and the `count`-th best offspring meets the very worst. `faithful` (the
    original's rule) accepts an offspring only if it is fitter than the individual it
    would replace; `offspring` always accepts. The population ends sorted best first.
    """
    ranked = sorted(offspring, key=lambda individual: individual.fitness)
    sort_by_fitness(population)
    accepted = 0
    for i in range(min(count, len(ranked), len(population))):
        slot = i - count
        if rule == "offspring" or ranked[i].fitness < population[slot].fitness:
            population[slot] = ranked[i]
            accepted += 1
    sort_by_fitness(population)
    return accepted


def best(population: list[Individual]) -> Individual:
    return min(population, key=lambda ind: ind.fitness)
