"""What the quality protocol measures (issue 34): generators scored in two feature spaces,
and configurations compared seed by seed.

One feature network is no yardstick: two MNIST classifiers can rank the same two runs
differently. Every ensemble is therefore scored twice on the same held-out digits and the
same 10,000 samples: in the project's packaged classifier's features (`fid`, `tvd`,
`precision`, `recall`) and in a second classifier's (`fid2` and the other three with a 2),
one of the same architecture trained here from another seed, with another data order and
other shifts. A conclusion stands where the two spaces agree.

Seed noise is larger than most effects, so comparisons are paired: the grid and a baseline
run with the same seed form a pair, and `paired` counts the grid's wins and takes the
median of the differences.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lipizzaner_cell.algorithm.mixture import sample_mixture
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.scores.mnist_classifier import train_classifier
from lipizzaner_cell.scores.scorers import ClassifierScorer, Scorer
from lipizzaner_core.spec.datasets import MnistSpec

SAMPLES = 10_000
SECOND_SEED = 1  # the packaged classifier was trained from seed 0
SPACES = ("", "2")  # score-name suffixes: the project's classifier, the second one


class Judges:
    """Two feature spaces over the same held-out data; `second_accuracy`: the second
    network's held-out accuracy, which says how much its features can be trusted."""

    def __init__(self, scorers: tuple[Scorer, Scorer], second_accuracy: float) -> None:
        self.scorers = scorers
        self.second_accuracy = second_accuracy

    @classmethod
    def mnist(cls, data: str, workdir: Path, validation_fraction: float = 0.1) -> Judges:
        """Over the held-out split of the MNIST files in `data`: the packaged classifier,
        and one of its architecture trained here from SECOND_SEED."""
        dataset = load_dataset(MnistSpec(name="mnist", path=data), 0)
        assert dataset.labels is not None  # MNIST always has its labels
        second = workdir / f"mnist-classifier-seed{SECOND_SEED}.safetensors"
        report = train_classifier(dataset.data, dataset.labels, second, seed=SECOND_SEED)
        _, held_out = dataset.split(validation_fraction)
        assert held_out is not None
        scorers = (ClassifierScorer(held_out), ClassifierScorer(held_out, weights=str(second)))
        return cls(scorers, report.test_accuracy)

    def score(
        self, generators: list[torch.nn.Module], weights: torch.Tensor, latent: int
    ) -> dict[str, float]:
        """A mixture's scores in both spaces, from the same seeded samples."""
        noise = torch.randn(SAMPLES, latent, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            samples = sample_mixture(generators, weights, noise)
        scores: dict[str, float] = {}
        for suffix, scorer in zip(SPACES, self.scorers, strict=True):
            own = scorer.final_scores(scorer.embed(samples))
            scores |= {f"{name}{suffix}": value for name, value in own.items()}
        return scores


def higher_is_better(key: str) -> bool:
    return key.startswith(("precision", "recall"))


@dataclass(frozen=True)
class Paired:
    """One configuration against a baseline over the seeds both ran."""

    wins: int  # seeds where the configuration scored better (a tie is no win)
    seeds: int
    median_difference: float  # configuration minus baseline
    worst: float  # the configuration's worst seed
    baseline_median: float
    higher_is_better: bool

    @property
    def worst_beats_median(self) -> bool:
        if self.higher_is_better:
            return self.worst > self.baseline_median
        return self.worst < self.baseline_median


def paired(rows: list[dict[str, Any]], config: str, baseline: str, key: str = "fid") -> Paired:
    """`config` against `baseline` on `key`, seed by seed (a pure function of the rows)."""
    pairs = [
        (row[config][key], row[baseline][key]) for row in rows if config in row and baseline in row
    ]
    if not pairs:
        raise ValueError(f"no seed has both {config} and {baseline}")
    mine, theirs = zip(*pairs, strict=True)
    higher = higher_is_better(key)
    return Paired(
        wins=sum((a > b) if higher else (a < b) for a, b in pairs),
        seeds=len(pairs),
        median_difference=statistics.median(a - b for a, b in pairs),
        worst=min(mine) if higher else max(mine),
        baseline_median=statistics.median(theirs),
        higher_is_better=higher,
    )


def summary(rows: list[dict[str, Any]], config: str, key: str) -> dict[str, float]:
    """The mean and the worst seed of one configuration's `key` (worst: the highest FID or
    TVD, the lowest precision or recall)."""
    values = [row[config][key] for row in rows if config in row]
    worst = min(values) if higher_is_better(key) else max(values)
    return {"mean": statistics.mean(values), "worst": worst}
