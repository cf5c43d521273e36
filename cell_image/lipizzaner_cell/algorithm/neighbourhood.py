"""What cells exchange, and the provider interface the engine pulls neighbours through.

The engine only sees `NeighbourhoodProvider`: an in-process exchange (here) and a gRPC
client (`exchange/client.py`) implement the same two calls, so the generation loop is one code path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from lipizzaner_cell.algorithm.individual import (
    UNKNOWN_ORIGIN,
    Individual,
    OptimizerName,
    Origin,
)


@dataclass(frozen=True)
class CentreState:
    """A cell's best generator and discriminator after a generation: immutable once made.

    A state a puller received is the exception: its tensors are views of a buffer the
    puller reuses for a later state once the state is neither its newest nor being read
    (`NeighbourhoodProvider.neighbour_states`).
    """

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
    # The generator centre's moving average (`training.generatorEma`); empty without one.
    generator_ema: dict[str, torch.Tensor] = field(default_factory=dict)
    # Where the two centres' lineages began (`Individual.origin`).
    generator_origin: Origin = UNKNOWN_ORIGIN
    discriminator_origin: Origin = UNKNOWN_ORIGIN


class NeighbourhoodProvider(Protocol):
    def neighbour_states(self, generation: int) -> AbstractContextManager[dict[int, CentreState]]:
        """The newest known state of each neighbour, by cell index; missing ones absent.

        `generation` is the one this cell has finished: a provider may wait, bounded, for
        neighbours' states of at least that generation (the in-process exchange always
        has them). The states stay as they are until the block ends; whatever must
        outlive it is copied (the engine copies them into its imported networks).
        """
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

    def neighbour_states(self, generation: int) -> AbstractContextManager[dict[int, CentreState]]:
        visible = self.exchange._visible
        return contextlib.nullcontext({i: visible[i] for i in self.neighbours if i in visible})

    def publish(self, state: CentreState) -> None:
        self.exchange._pending[state.cell] = state


@dataclass
class Neighbourhood:
    """Step 1's snapshot: local sub-populations first, then one import per neighbour."""

    generators: list[Individual]
    discriminators: list[Individual]
    neighbour_cells: list[int]
    # Per neighbour present: how many generations its state was behind this cell's.
    lags: list[int] = field(default_factory=list)


class NeighbourImports:
    """Neighbours' centres as individuals: each net built once per neighbour and role,
    then refilled from every new state (no allocation per generation)."""

    def __init__(
        self, build: Callable[[str], nn.Module], optimizer: OptimizerName, ema: bool = False
    ) -> None:
        self.build = build  # a fresh network of a role, on the cell's device
        self.optimizer = optimizer
        self.ema = ema  # imported generators carry their EMA copies
        self._imported: dict[tuple[str, int], Individual] = {}

    def individual(self, state: CentreState, role: str) -> Individual:
        """The centre of `role` in `state`, as an individual of this cell's."""
        key = (role, state.cell)
        if key not in self._imported:
            with torch.random.fork_rng(devices=[]):
                net = self.build(role)
                self._imported[key] = Individual.fresh(net, 0.0, state.cell, self.optimizer)
        imported = self._imported[key]
        generator = role == "generator"
        imported.net.load_state_dict(state.generator if generator else state.discriminator)
        imported.set_learning_rate(state.generator_lr if generator else state.discriminator_lr)
        imported.origin = state.generator_origin if generator else state.discriminator_origin
        # Without moments (not sent, or none yet) the optimizer is left empty, and a
        # selected import continues the local individual's (`CellEngine.select`).
        imported.load_moments(state.generator_moments if generator else state.discriminator_moments)
        if generator and self.ema:
            if imported.ema is None:
                imported.keep_ema()
            assert imported.ema is not None
            # A state without one (a neighbour's first) starts its average at its weights.
            imported.ema.load_state_dict(state.generator_ema or state.generator)
        return imported

    def net(self, role: str, cell: int) -> nn.Module:
        """The last imported centre of `role` from `cell`, as samples are drawn from it
        (a generator's EMA copy where it has one)."""
        return self._imported[(role, cell)].sample_net
