"""What cells exchange, and the provider interface the engine pulls neighbours through.

The engine only sees `NeighbourhoodProvider`: an in-process exchange (here) and a gRPC
client (issue 3) implement the same two calls, so the generation loop is one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class CentreState:
    """A cell's best generator and discriminator after a generation: immutable once made."""

    cell: int
    generation: int
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor]
    generator_lr: float
    discriminator_lr: float
    generator_fitness: float
    discriminator_fitness: float
    mixture_weights: dict[int, float] = field(default_factory=dict)
    # The two centres' optimizer moments (`Individual.moments()`); empty when not sent.
    generator_moments: dict[str, torch.Tensor] = field(default_factory=dict)
    discriminator_moments: dict[str, torch.Tensor] = field(default_factory=dict)


class NeighbourhoodProvider(Protocol):
    def neighbour_states(self) -> dict[int, CentreState]:
        """The newest known state of each neighbour, by cell index; missing ones absent."""
        ...

    def publish(self, state: CentreState) -> None: ...


class InProcessExchange:
    """A board of centre states for cells that run in one process, round by round.

    States published during a round become visible at `commit()`, so every cell of a round
    sees the same neighbourhood whatever order the cells run in: a run is reproducible.
    """

    def __init__(self) -> None:
        self._visible: dict[int, CentreState] = {}
        self._pending: dict[int, CentreState] = {}

    def commit(self) -> None:
        self._visible.update(self._pending)
        self._pending.clear()

    def provider(self, neighbours: list[int]) -> InProcessProvider:
        return InProcessProvider(self, neighbours)


@dataclass
class InProcessProvider:
    exchange: InProcessExchange
    neighbours: list[int]

    def neighbour_states(self) -> dict[int, CentreState]:
        visible = self.exchange._visible
        return {i: visible[i] for i in self.neighbours if i in visible}

    def publish(self, state: CentreState) -> None:
        self.exchange._pending[state.cell] = state
