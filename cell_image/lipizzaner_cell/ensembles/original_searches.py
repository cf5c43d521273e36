"""The original's ensemble searches (GECCO 2020, "Re-purposing heterogeneous generative
ensembles with evolutionary computation"; `src/enesmble_optimization/` of
ALFA-group/lipizzaner-gan), written anew over a `score` function as `search.py`'s are:

- `greedy_grid`: take the candidates one by one (in a random order, from the seed); with
  each added, try every weight vector of the members on a grid of tenths; keep the
  candidate if the best of them improves on the ensemble so far, else drop it; stop at
  `max_size` members, after `patience` candidates in a row that did not help (0: never),
  or when none is left.
- `reo_gen`: REO-GEN, a genetic algorithm over ensembles of exactly `size` distinct
  generators, each gene a generator and its weight in hundredths: tournaments of 3,
  two-point crossover repaired to keep the generators distinct and averaging the parents'
  weights, and one of three mutations (weights, generators, both).
- `nreo_gen`: NREO-GEN, the same over ensembles of `min_size` to `max_size` generators: a
  size, an order of every candidate (the first `size` are members) and a weight per
  position; a fourth mutation redraws the size.

Both GAs are DEAP's simple loop as the original ran it: a population of 5, crossover of
consecutive pairs with probability 0.8, mutation with 0.2, no elite, until `evaluations`
offspring have been scored; the result is the best of the last population.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from lipizzaner_cell.ensembles.search import Found, Score

GRID = 10  # greedy-grid's weights: tenths
HUNDREDTHS = 100  # the GAs' weights: hundredths


@dataclass(frozen=True)
class OriginalGaSettings:
    """The original's quickstart settings (`mnist-ga-reo-gen.yml`)."""

    population: int = 5
    crossover: float = 0.8
    mutation: float = 0.2
    tournament: int = 3


def weight_grid(members: int) -> Iterator[tuple[int, ...]]:
    """Every way to give `members` generators whole tenths that sum to one (zeros too)."""
    for cuts in itertools.combinations(range(GRID + members - 1), members - 1):
        bounds = (-1, *cuts, GRID + members - 1)
        yield tuple(bounds[i + 1] - bounds[i] - 1 for i in range(members))


def greedy_grid(
    score: Score, count: int, max_size: int, patience: int, rng: random.Random
) -> Found:
    order = list(range(count))
    rng.shuffle(order)
    members: list[int] = []
    best_weights, best, evaluations, misses = None, float("inf"), 0, 0
    for candidate in order:
        trial = [*members, candidate]
        found = None
        for shares in weight_grid(len(trial)):
            weights = _vector(count, trial, [s / GRID for s in shares])
            value = score(weights)
            evaluations += 1
            if found is None or value < found[0]:
                found = (value, weights)
        assert found is not None
        if found[0] < best:
            best, best_weights, members, misses = found[0], found[1], trial, 0
        else:
            misses += 1
        if len(members) == max_size or (patience and misses > patience):
            break
    assert best_weights is not None
    return Found(best_weights, best, evaluations)


Gene = list[int]  # REO-GEN: [generator, weight in hundredths]
Individual = TypeVar("Individual")


class Encoding(Protocol[Individual]):
    """How a GA's individuals are made, varied and read as weights over the candidates."""

    def create(self) -> Individual: ...

    def crossover(self, a: Individual, b: Individual) -> None: ...

    def mutate(self, one: Individual) -> None: ...

    def weights(self, one: Individual) -> torch.Tensor: ...


@dataclass
class Restricted:
    """REO-GEN's encoding: `size` genes of distinct generators whose weights sum to 100."""

    count: int
    size: int
    rng: random.Random

    def create(self) -> list[Gene]:
        generators = self.rng.sample(range(self.count), self.size)
        weights: list[int] = []
        for i in range(self.size):
            left = HUNDREDTHS - sum(weights)
            last = i == self.size - 1
            weights.append(left if last else self.rng.randint(0, left // (self.size - i)))
        return [[g, w] for g, w in zip(generators, weights, strict=True)]

    def crossover(self, a: list[Gene], b: list[Gene]) -> None:
        """Two-point, each child repaired to distinct generators, then both take the
        parents' mean weight at every position (odd sums alternate the extra hundredth)."""
        first, second = _cut_points(self.size, self.rng)
        parent_a, parent_b = [g[:] for g in a], [g[:] for g in b]
        a[first:second], b[first:second] = b[first:second], a[first:second]
        _repair(a, parent_a, first, second)
        _repair(b, parent_b, first, second)
        odd_to_a = True
        for gene_a, gene_b in zip(a, b, strict=True):
            total = gene_a[1] + gene_b[1]
            half = total // 2
            if total % 2:
                gene_a[1], gene_b[1] = (half + 1, half) if odd_to_a else (half, half + 1)
                odd_to_a = not odd_to_a
            else:
                gene_a[1] = gene_b[1] = half

    def mutate(self, genes: list[Gene]) -> None:
        """One kind for the whole individual, each gene taking it with chance 1/size:
        share its weight anew with another gene; take an unused generator; or both."""
        kind = self.rng.random()
        unused = set(range(self.count)) - {g for g, _ in genes}
        for i in range(self.size):
            if self.rng.random() >= 1 / self.size:
                continue
            if kind < 0.333 or kind >= 0.666:
                j = self.rng.choice([k for k in range(self.size) if k != i])
                total = genes[i][1] + genes[j][1]
                genes[i][1] = round(self.rng.uniform(0, total))
                genes[j][1] = total - genes[i][1]
            if kind >= 0.333:
                unused.add(genes[i][0])
                genes[i][0] = self.rng.choice(sorted(unused))
                unused.discard(genes[i][0])

    def weights(self, genes: list[Gene]) -> torch.Tensor:
        return _vector(self.count, [g for g, _ in genes], [w / HUNDREDTHS for _, w in genes])


@dataclass
class Ordered:
    """NREO-GEN's individual: the first `size` of `order` are the members, `weights[i]`
    (hundredths) is position i's."""

    size: int
    order: list[int]
    weights: list[int]


@dataclass
class Unrestricted:
    """NREO-GEN's encoding: between `min_size` and `max_size` members."""

    count: int
    min_size: int
    max_size: int
    rng: random.Random

    def create(self) -> Ordered:
        order = list(range(self.count))
        self.rng.shuffle(order)
        size = self.rng.randint(self.min_size, self.max_size)
        one = Ordered(size, order, [self.rng.randint(0, 10) for _ in order])
        _normalise(one)
        return one

    def crossover(self, a: Ordered, b: Ordered) -> None:
        """Two-point over the longer ensemble: each child takes the other's generators
        in the cut (by swaps, so its order stays a permutation) and its weights there."""
        first, second = _cut_points(max(a.size, b.size), self.rng)
        for position in range(first, second):
            for mine, theirs in ((a, b.order[position]), (b, a.order[position])):
                where = mine.order.index(theirs)
                mine.order[position], mine.order[where] = mine.order[where], mine.order[position]
        a.weights[first:second], b.weights[first:second] = (
            b.weights[first:second],
            a.weights[first:second],
        )
        _normalise(a)
        _normalise(b)

    def mutate(self, one: Ordered) -> None:
        """One of four: a new size; a new weight for a member; a member swapped for a
        candidate outside; or the last two, after which members without weight leave."""
        kind, rng = self.rng.random(), self.rng
        if kind < 0.25:
            one.size = rng.randint(self.min_size, self.max_size)
        if 0.25 <= kind < 0.5 or kind >= 0.75:
            one.weights[rng.randint(0, one.size - 1)] = rng.randint(0, HUNDREDTHS)
        if kind >= 0.5 and one.size < self.count:
            i, new = rng.randint(0, one.size - 1), rng.randint(one.size, self.count - 1)
            one.order[i], one.order[new] = one.order[new], one.order[i]
        if kind >= 0.75:
            kept = [i for i in range(one.size) if one.weights[i] > 0] or [0]
            moved = kept + [i for i in range(self.count) if i not in kept]
            one.order = [one.order[i] for i in moved]
            one.weights = [one.weights[i] for i in moved]
            one.size = len(kept)
        _normalise(one)

    def weights(self, one: Ordered) -> torch.Tensor:
        members = one.order[: one.size]
        return _vector(self.count, members, [w / HUNDREDTHS for w in one.weights[: one.size]])


def reo_gen(
    score: Score,
    count: int,
    size: int,
    evaluations: int,
    rng: random.Random,
    settings: OriginalGaSettings = OriginalGaSettings(),
) -> Found:
    """REO-GEN; `size` is cut to the candidates there are (at least 2 for its crossover)."""
    size = min(size, count)
    if size < 2:
        return _best_single(score, count)
    return simple_ga(Restricted(count, size, rng), score, evaluations, rng, settings)


def nreo_gen(
    score: Score,
    count: int,
    min_size: int,
    max_size: int,
    evaluations: int,
    rng: random.Random,
    settings: OriginalGaSettings = OriginalGaSettings(),
) -> Found:
    """NREO-GEN; the sizes are cut to the candidates there are."""
    max_size = min(max_size, count)
    if max_size < 2:
        return _best_single(score, count)
    encoding = Unrestricted(count, min(min_size, max_size), max_size, rng)
    return simple_ga(encoding, score, evaluations, rng, settings)


def simple_ga(
    encoding: Encoding[Individual],
    score: Score,
    evaluations: int,
    rng: random.Random,
    settings: OriginalGaSettings,
) -> Found:
    """DEAP's simple loop as the original's `evolutionary_loop` runs it: tournaments
    (with replacement) fill the next population with copies, consecutive pairs cross,
    each may mutate, the changed are scored; no elite. Stops once `evaluations`
    offspring were scored; the best of the last population is the result."""
    population = [encoding.create() for _ in range(settings.population)]
    values = [score(encoding.weights(one)) for one in population]
    spent = 0
    while spent < evaluations:
        picks = [_tournament(values, settings.tournament, rng) for _ in population]
        offspring = [copy.deepcopy(population[i]) for i in picks]
        changed = [False] * len(offspring)
        for k in range(0, len(offspring) - 1, 2):
            if rng.random() < settings.crossover:
                encoding.crossover(offspring[k], offspring[k + 1])
                changed[k] = changed[k + 1] = True
        for k, one in enumerate(offspring):
            if rng.random() < settings.mutation:
                encoding.mutate(one)
                changed[k] = True
        values = [
            score(encoding.weights(one)) if changed[k] else values[picks[k]]
            for k, one in enumerate(offspring)
        ]
        spent += sum(changed)
        population = offspring
    best = min(range(len(population)), key=values.__getitem__)
    return Found(encoding.weights(population[best]), values[best], settings.population + spent)


def _tournament(values: list[float], size: int, rng: random.Random) -> int:
    """DEAP's selTournament: the best of `size` drawn with replacement."""
    return min((rng.randrange(len(values)) for _ in range(size)), key=values.__getitem__)


def _cut_points(size: int, rng: random.Random) -> tuple[int, int]:
    """DEAP's two-point cut: 1 <= first < second <= size."""
    first, second = rng.randint(1, size), rng.randint(1, size - 1)
    return (first, second + 1) if second >= first else (second, first)


def _repair(child: list[Gene], parent: list[Gene], first: int, second: int) -> None:
    """After a cut, a generator the child now holds twice is replaced outside the cut by
    the parent's gene it displaced, or else by a generator of the parent it lacks."""
    outside = [*range(first), *range(second, len(child))]
    for i in range(first, second):
        twin = next((k for k in outside if child[k][0] == child[i][0]), None)
        if twin is None:
            continue
        held = {g for g, _ in child}
        if parent[i][0] not in held:
            child[twin] = parent[i][:]
        else:
            child[twin][0] = min({g for g, _ in parent} - held)


def _normalise(one: Ordered) -> None:
    """The members' weights to hundredths that sum to 100 (the last takes the rest)."""
    total = sum(one.weights[: one.size])
    if total == 0:
        one.weights[: one.size] = [1] * one.size
        total = one.size
    for i in range(one.size - 1):
        one.weights[i] = HUNDREDTHS * one.weights[i] // total
    one.weights[one.size - 1] = HUNDREDTHS - sum(one.weights[: one.size - 1])


def _vector(count: int, members: list[int], shares: list[float]) -> torch.Tensor:
    """Weights over the candidates, renormalised as the original's mixture did; members
    whose shares are all zero weigh the same."""
    weights = torch.zeros(count, dtype=torch.float64)
    for member, share in zip(members, shares, strict=True):
        weights[member] += share
    if weights.sum() <= 0:
        weights[members] = 1.0
    return weights / weights.sum()


def _best_single(score: Score, count: int) -> Found:
    """With one candidate (or room for one) a search is the best candidate alone."""
    values = [score(_vector(count, [k], [1.0])) for k in range(count)]
    best = min(range(count), key=values.__getitem__)
    return Found(_vector(count, [best], [1.0]), values[best], count)
