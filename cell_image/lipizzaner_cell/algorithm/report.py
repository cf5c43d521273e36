"""What a generation reports: its figures, and the seconds of each of its phases.

`GenerationReport` is the one list of a generation's figures, and `FIGURES` says how each
reader names the plain ones: the gauges (`runtime/metrics.py`), TensorBoard
(`runtime/history.py`), the status the exchange serves (`runtime/cell_life.py`) and the
status line (`status_line`). History keeps the report whole. A new figure is a field here
and a row of `FIGURES`; the readers iterate, none re-spells it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# The timed steps of a generation, in the order `CellEngine.step` runs them: the keys of
# `GenerationReport.seconds` (and of each history line's "seconds").
GENERATION_PHASES = (
    "neighbourhood",
    "fitness",
    "selection",
    "training",
    "replacement",
    "mixture",
    "publish",
)


@dataclass
class GenerationReport:
    """One generation of one cell: what its driver logs, its history keeps and its metrics
    export."""

    generation: int
    generator_loss: float
    discriminator_loss: float
    generator_fitness: float
    discriminator_fitness: float
    generator_lr: float
    discriminator_lr: float
    mixture_score: float | None
    offspring_offered: int
    offspring_accepted: int
    neighbours_present: int
    samples_trained: int
    # How many generations the neighbours' states were behind this cell's, the mean over
    # those present (None without any): 0 in-process, where every cell sees its
    # neighbours' last generation; cell processes may see older ones.
    neighbour_lag: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    # Keep-best: the best mixture's score so far and its generation (None without).
    kept_score: float | None = None
    kept_generation: int | None = None
    # Semi-supervised runs: the centre discriminator's accuracy on the held-out data.
    accuracy: float | None = None
    # Diversity: the mixture weights' entropy (nats), and where the lineages of the local
    # generators and discriminators began ([cell, generation] each, best first).
    mixture_entropy: float | None = None
    generator_origins: list[list[int]] = field(default_factory=list)
    discriminator_origins: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class Figure:
    """A figure of `GenerationReport` (`field`) as each reader names it."""

    field: str
    gauge: str  # lipizzaner_cell_<gauge>, with `help`; "": labelled by the score's name
    help: str
    tensorboard: str  # its tag; "": tagged by the score's name
    on_wire: bool = False  # a field of the exchange's CellStatus of the same name
    short: str = ""  # its name on the status line; "": not shown there


FIGURES = (
    Figure(
        "generator_loss",
        "generator_loss",
        "Best generator's training loss",
        "loss/generator",
        on_wire=True,
        short="G",
    ),
    Figure(
        "discriminator_loss",
        "discriminator_loss",
        "Best discriminator's training loss",
        "loss/discriminator",
        on_wire=True,
        short="D",
    ),
    Figure("mixture_score", "", "The mixture's score (lower is better)", "", short="score"),
    Figure(
        "generator_fitness",
        "generator_fitness",
        "Best generator's fitness (its loss; lower is better)",
        "fitness/generator",
        on_wire=True,
    ),
    Figure(
        "discriminator_fitness",
        "discriminator_fitness",
        "Best discriminator's fitness (lower is better)",
        "fitness/discriminator",
        on_wire=True,
    ),
    Figure(
        "generator_lr",
        "generator_learning_rate",
        "Best generator's Adam learning rate",
        "learning_rate/generator",
    ),
    Figure(
        "discriminator_lr",
        "discriminator_learning_rate",
        "Best discriminator's Adam learning rate",
        "learning_rate/discriminator",
    ),
    Figure(
        "neighbours_present",
        "neighbours_present",
        "Neighbours whose state the generation had",
        "exchange/neighbours_present",
    ),
    Figure(
        "neighbour_lag",
        "neighbour_lag_generations",
        "Generations the neighbours' states were behind this cell's (mean over neighbours)",
        "exchange/neighbour_lag",
    ),
    Figure(
        "mixture_entropy",
        "mixture_entropy",
        "Entropy of the mixture weights in nats (0: one generator; ln n: n evenly)",
        "mixture/entropy",
    ),
    Figure(
        "accuracy",
        "classifier_accuracy",
        "Semi-supervised runs: the best discriminator's accuracy on the held-out data",
        "accuracy/discriminator",
        short="accuracy",
    ),
)


def figures(report: GenerationReport) -> dict[Figure, float]:
    """The figures the report has (a score only where the run scores, an accuracy only
    in semi-supervised runs)."""
    values = {figure: getattr(report, figure.field) for figure in FIGURES}
    return {figure: value for figure, value in values.items() if value is not None}


def status_line(report: GenerationReport, digits: int = 3) -> str:
    """`G 0.693 D 1.386 score 0.412 accuracy 0.91`: the status board's and log's line."""
    shown = ((f.short, value) for f, value in figures(report).items() if f.short)
    return " ".join(f"{name} {value:.{digits}f}" for name, value in shown)


@contextmanager
def timed_phase(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's seconds to `seconds[name]` (a name of `GENERATION_PHASES`)."""
    start = time.perf_counter()
    yield
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
