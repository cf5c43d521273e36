"""What a generation reports: its figures, and the seconds of each of its phases."""

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
    seconds: dict[str, float] = field(default_factory=dict)
    # Keep-best: the best mixture's score so far and its generation (None without).
    kept_score: float | None = None
    kept_generation: int | None = None
    # Semi-supervised runs: the centre discriminator's accuracy on the held-out data.
    accuracy: float | None = None


@contextmanager
def timed_phase(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's seconds to `seconds[name]` (a name of `GENERATION_PHASES`)."""
    start = time.perf_counter()
    yield
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
