"""Step 4's player steps as captured CUDA graphs: the same kernels, without Python's cost.

A default MNIST step is launch-bound on a GPU: 2.8 ms of Python and kernel launches on an
H100 for arithmetic that takes a fraction of that. Captured once and replayed, the same
step takes 0.41 ms and gives bit-identical parameters (`bench/gpu_throughput.py`).

A graph reads and writes fixed tensors, while each generation trains new individuals
(clones of the tournament winners). So every network that takes part gets a fixed *slot*:
a copy of its architecture, with a capturable optimizer for players. `begin` copies the
individuals' parameters, buffers and optimizer state into their slots, `end` copies them
back; the graphs (one per player slot, opponent slot and loss) are captured once, the
first time that combination is needed, and replayed ever after. The batch loop still draws
every decision, rate and noise tensor itself; a replay only gets its inputs copied into
the graph's static buffers and its player's rate written into a device tensor.

`capture=False` runs the same slots and buffers without capturing, on any device: how the
slot bookkeeping is tested bit for bit on a CPU.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from lipizzaner_cell.algorithm.individual import ADAM_BETAS, Individual
from lipizzaner_cell.algorithm.losses import Loss
from lipizzaner_cell.algorithm.training import (
    Players,
    clip_weights,
    discriminator_value,
    generator_value,
)

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE

WARM_UP_STEPS = 3  # before capturing: creates the optimizer state and autograd's buffers


def graphable(loss: Loss) -> bool:
    """Losses whose steps can be captured: Adam, and no gradient penalty (its mixing
    draws from the cell's own device generator, which a graph would freeze)."""
    return loss.optimizer == "adam" and not loss.gradient_penalty


@dataclass
class Slot:
    """A fixed copy of one network, and for a player its optimizer and rate tensor."""

    net: nn.Module
    optimizer: torch.optim.Adam | None = None
    rate: torch.Tensor | None = None  # with capture: the rate a replay's Adam step reads

    @classmethod
    def of(cls, individual: Individual, trains: bool, capture: bool) -> Slot:
        net = copy.deepcopy(individual.net)
        if not trains:
            net.requires_grad_(False)  # an opponent's own gradients are never used
            return cls(net)
        device = next(net.parameters()).device
        rate = torch.tensor(individual.learning_rate, device=device) if capture else None
        optimizer = torch.optim.Adam(
            net.parameters(),
            lr=individual.learning_rate if rate is None else rate,
            betas=ADAM_BETAS,
            fused=True,
            capturable=capture,
        )
        for parameter in net.parameters():  # Adam's state, made now so `load` can fill it
            optimizer.state[parameter] = {
                "step": torch.zeros((), dtype=torch.float32, device=device),
                "exp_avg": torch.zeros_like(parameter),
                "exp_avg_sq": torch.zeros_like(parameter),
            }
        return cls(net, optimizer, rate)

    def set_rate(self, value: float) -> None:
        if self.rate is not None:
            self.rate.fill_(value)
        elif self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = value

    def load(self, individual: Individual) -> None:
        """The individual's parameters, buffers and optimizer state into this slot."""
        with torch.no_grad():
            for mine, theirs in zip(_tensors(self.net), _tensors(individual.net), strict=True):
                mine.copy_(theirs)
        if self.optimizer is None:
            return
        for mine, theirs in zip(self.net.parameters(), individual.net.parameters(), strict=True):
            state = individual.optimizer.state.get(theirs)
            for key, value in self.optimizer.state[mine].items():
                if state:
                    value.copy_(state[key])
                else:
                    value.zero_()  # a fresh individual: Adam starts from zero moments

    def store(self, individual: Individual) -> None:
        """This slot's tensors back into the individual (a player: its optimizer too)."""
        with torch.no_grad():
            for mine, theirs in zip(_tensors(self.net), _tensors(individual.net), strict=True):
                theirs.copy_(mine)
        if self.optimizer is None:
            return
        for mine, theirs in zip(self.net.parameters(), individual.net.parameters(), strict=True):
            state = individual.optimizer.state[theirs]
            for key, value in self.optimizer.state[mine].items():
                if key in state:
                    state[key].copy_(value)
                else:
                    state[key] = value.clone()

    def tensors(self) -> list[torch.Tensor]:
        """Everything a step changes: parameters, buffers, optimizer state."""
        state = [] if self.optimizer is None else list(self.optimizer.state.values())
        return [*_tensors(self.net), *(t for entry in state for t in entry.values())]


def _tensors(net: nn.Module) -> list[torch.Tensor]:
    return [*net.parameters(), *net.buffers()]


@dataclass
class _Replay:
    """One captured step (or, without capture, the step itself) and its static buffers."""

    run: Callable[[], None]
    inputs: list[torch.Tensor]
    value: torch.Tensor


# One capture at a time in a process: a capture's start synchronises the device, which a
# capture under way in another cell's thread forbids (`spec.cell.cellsPerPod`).
CAPTURE_LOCK = threading.Lock()


class GraphedSteps:
    """`Steps` that replay captured graphs over fixed slots (see the module's text)."""

    def __init__(self, device: torch.device, capture: bool = True) -> None:
        self.device = device
        self.capture = capture
        self.slots: dict[tuple, Slot] = {}  # (role, position, trains) -> slot
        self.replays: dict[tuple, _Replay] = {}
        self.assigned: dict[int, tuple] = {}  # id(individual) -> its slot's key
        self.members: list[Individual] = []  # this generation's individuals, in slots
        self.pool = torch.cuda.graph_pool_handle() if capture else None

    # ------------------------------------------------------------------ generation edges

    def begin(self, players: Players) -> None:
        """Give every individual of this generation its slot and copy it in.

        Slots are numbered per role in a fixed order (players first, then opponents), so
        the same positions meet the same slots, and graphs, every generation.
        """
        self.assigned, self.members = {}, []
        trainers = {id(i) for i in (*players.generators, *players.discriminators)}
        groups = (
            ("g", [*players.generators, *players.discriminator_opponents]),
            ("d", [*players.discriminators, *players.generator_opponents]),
        )
        for role, individuals in groups:
            position = 0
            for individual in individuals:
                if id(individual) in self.assigned:
                    continue
                trains = id(individual) in trainers
                key = (role, position, trains)
                position += 1
                if key not in self.slots:
                    self.slots[key] = Slot.of(individual, trains, self.capture)
                self.assigned[id(individual)] = key
                self.members.append(individual)
                self.slots[key].load(individual)

    def end(self, players: Players) -> None:
        """Copy everything back: the players' training, and any buffer an opponent's
        forward pass changed (batch-norm statistics), as eager steps change them."""
        for individual in self.members:
            self._slot(individual).store(individual)

    def _slot(self, individual: Individual) -> Slot:
        return self.slots[self.assigned[id(individual)]]

    def live(self, player: Individual) -> nn.Module:
        """The player's slot: its weights until `end` copies them back."""
        return self._slot(player).net

    # ------------------------------------------------------------------------ the steps

    def generator(
        self,
        player: Individual,
        opponent: Individual,
        loss: Loss,
        noise: torch.Tensor,
        real: torch.Tensor,
    ) -> torch.Tensor:
        """`real` is not read: feature matching (semi-supervised) runs without graphs."""
        key = ("g", self.assigned[id(player)], self.assigned[id(opponent)], loss.name)
        mine, theirs = self._slot(player), self._slot(opponent)

        def build(buffers: list[torch.Tensor], value: torch.Tensor) -> Callable[[], None]:
            def step() -> None:
                result = generator_value(mine.net, theirs.net, loss, buffers[0])
                _optimise(mine, result)
                value.copy_(result.detach())

            return step

        return self._replay(key, mine, player, [noise], build)

    def discriminator(
        self,
        player: Individual,
        opponent: Individual,
        loss: Loss,
        real: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        key = ("d", self.assigned[id(player)], self.assigned[id(opponent)], loss.name)
        mine, theirs = self._slot(player), self._slot(opponent)

        def build(buffers: list[torch.Tensor], value: torch.Tensor) -> Callable[[], None]:
            def step() -> None:
                result, _ = discriminator_value(mine.net, theirs.net, loss, *buffers)
                _optimise(mine, result)
                if loss.clip:
                    clip_weights(mine.net, loss.clip)
                value.copy_(result.detach())

            return step

        return self._replay(key, mine, player, [real, noise], build)

    def _replay(
        self,
        key: tuple,
        slot: Slot,
        player: Individual,
        inputs: list[torch.Tensor],
        build: Callable[[list[torch.Tensor], torch.Tensor], Callable[[], None]],
    ) -> torch.Tensor:
        replay = self.replays.get(key)
        if replay is None:
            buffers = [torch.empty_like(t) for t in inputs]
            value = torch.zeros((), device=self.device)
            replay = _Replay(self._captured(build(buffers, value)), buffers, value)
            self.replays[key] = replay
        for buffer, tensor in zip(replay.inputs, inputs, strict=True):
            buffer.copy_(tensor)
        slot.set_rate(player.learning_rate)
        replay.run()
        return replay.value  # valid until the next step: the loop adds it up at once

    def _captured(self, step: Callable[[], None]) -> Callable[[], None]:
        """The step as a graph's replay (without capture, the step itself)."""
        if not self.capture:
            return step
        changed = [t for slot in self.slots.values() for t in slot.tensors()]
        return captured(step, changed, self.device, self.pool)


def captured(
    step: Callable[[], None],
    changed: list[torch.Tensor],
    device: torch.device,
    pool: _POOL_HANDLE | None,
) -> Callable[[], None]:
    """`step` captured as a CUDA graph; returns its replay. Capturing first runs it a few
    times for real (on a side stream, as CUDA graphs require); those runs are undone, every
    tensor in `changed` (all that a step writes) being put back as it was."""
    with CAPTURE_LOCK:
        saved = [(t, t.detach().clone()) for t in changed]
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARM_UP_STEPS):
                step()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the other cells of this process go on using the device from their
        # threads while this one captures (their own captures wait for CAPTURE_LOCK).
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            step()
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
        return graph.replay


def _optimise(slot: Slot, value: torch.Tensor) -> None:
    """Zero, backward, step: gradients are zeroed in place, as a graph needs them kept."""
    assert slot.optimizer is not None
    slot.optimizer.zero_grad(set_to_none=False)
    value.backward()
    slot.optimizer.step()
