"""An individual: a network with its own persistent optimizer and learning rate."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lipizzaner_cell.algorithm.state import State

ADAM_BETAS = (0.5, 0.999)
# Where a lineage began: the cell and generation its founder was created in.
Origin = tuple[int, int]
UNKNOWN_ORIGIN: Origin = (-1, -1)
OptimizerName = Literal["adam", "rmsprop"]
# Each parameter's optimizer state besides its step count: what checkpoints and the
# exchange carry, named "<parameter index>.<slot>".
MOMENT_SLOTS: dict[str, tuple[str, ...]] = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
}


def new_optimizer(
    net: nn.Module, name: OptimizerName, learning_rate: float
) -> torch.optim.Optimizer:
    """Adam with the original's betas; RMSprop for weight-clipped WGAN, as the original."""
    if name == "rmsprop":
        return torch.optim.RMSprop(net.parameters(), lr=learning_rate)
    # The fused kernel: about 20 % faster per step than the default on small CPU nets.
    return torch.optim.Adam(net.parameters(), lr=learning_rate, betas=ADAM_BETAS, fused=True)


@dataclass
class Individual:
    net: nn.Module
    optimizer: torch.optim.Optimizer
    learning_rate: float
    fitness: float = float("inf")
    source_cell: int = -1
    optimizer_name: OptimizerName = "adam"
    # A generator's moving average of its weights (`training.generatorEma`), else None.
    ema: nn.Module | None = None
    # Its founder's cell and generation: offspring and a neighbour's copies keep it, so
    # the grid's lineages can be counted (docs/algorithm.md, "Diversity").
    origin: Origin = UNKNOWN_ORIGIN

    @property
    def sample_net(self) -> nn.Module:
        """The network whose samples the mixture, its scores and the ensemble use: the
        EMA copy where there is one."""
        return self.net if self.ema is None else self.ema

    def keep_ema(self) -> None:
        """Start an EMA of the weights, at the weights as they are."""
        self.ema = copy.deepcopy(self.net).requires_grad_(False)

    @torch.no_grad()
    def update_ema(self, decay: float, live: nn.Module | None = None) -> None:
        """ema = decay * ema + (1 - decay) * weights, after a step; buffers are copied.
        `live`: where the weights are mid-generation, if not in `net` (a CUDA graph's slot)."""
        assert self.ema is not None
        weights = self.net if live is None else live
        for average, weight in zip(self.ema.parameters(), weights.parameters(), strict=True):
            average.lerp_(weight, 1.0 - decay)
        for mine, theirs in zip(self.ema.buffers(), weights.buffers(), strict=True):
            mine.copy_(theirs)

    @classmethod
    def fresh(
        cls,
        net: nn.Module,
        learning_rate: float,
        source_cell: int,
        optimizer_name: OptimizerName = "adam",
    ) -> Individual:
        optimizer = new_optimizer(net, optimizer_name, learning_rate)
        return cls(
            net, optimizer, learning_rate, source_cell=source_cell, optimizer_name=optimizer_name
        )

    def set_learning_rate(self, value: float) -> None:
        """Change the rate in the live optimizer, so a mutation takes effect at once."""
        self.learning_rate = value
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def adopt_moments(self, other: Individual) -> None:
        """Continue a copy of `other`'s optimizer state (same architecture), keeping this
        one's rate.

        A neighbour's individual arrives without optimizer state; starting it from zero
        moments would restart Adam's warm-up, with its large first steps, every generation.
        The state is copied: `load_state_dict` keeps the very tensors it is given, so
        without the copy both individuals would step one set of moments.
        """
        self.optimizer.load_state_dict(copy.deepcopy(other.optimizer.state_dict()))
        self.set_learning_rate(self.learning_rate)

    def moments(self) -> dict[str, torch.Tensor]:
        """The optimizer's per-parameter state as flat named tensors (the live tensors)."""
        state = self.optimizer.state_dict()["state"]
        return {f"{param}.{slot}": t for param, slots in state.items() for slot, t in slots.items()}

    def load_moments(self, tensors: dict[str, torch.Tensor]) -> None:
        """Continue from copies of these moments (as `moments()` names them), keeping this
        one's rate; an empty dict clears the optimizer state. Copies, because the given
        tensors may change afterwards: a puller reuses the buffer a state arrived in."""
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            param, slot = key.split(".", 1)
            state.setdefault(int(param), {})[slot] = tensor.clone()
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.set_learning_rate(self.learning_rate)

    def state_dict(self) -> State:
        """Weights, optimizer moments, rate, fitness and origin: all a resume needs."""
        values = {
            "learning_rate": self.learning_rate,
            "fitness": self.fitness,
            "source_cell": self.source_cell,
            "origin": list(self.origin),
        }
        state = State(values=values)
        state.nest("net", State(self.net.state_dict()))
        state.nest("optimizer", State(self.moments()))
        if self.ema is not None:
            state.nest("ema", State(self.ema.state_dict()))
        return state

    def load_state_dict(self, state: State) -> None:
        self.net.load_state_dict(state.child("net").tensors)
        if self.ema is not None:  # a checkpoint from before the EMA starts it afresh
            ema = state.child("ema").tensors
            self.ema.load_state_dict(ema or self.net.state_dict())
        self.set_learning_rate(state.values["learning_rate"])
        self.load_moments(state.child("optimizer").tensors)
        self.fitness = state.values["fitness"]
        self.source_cell = state.values["source_cell"]
        # A checkpoint from before origins were kept: its cell's, at an unknown generation.
        cell, generation = state.values.get("origin", (self.source_cell, -1))
        self.origin = (int(cell), int(generation))

    def clone(self) -> Individual:
        """An independent copy, optimizer state included (offspring start from their
        parent's moments, as the original's deep copy does), sharing no tensor with it."""
        twin = Individual.fresh(
            copy.deepcopy(self.net), self.learning_rate, self.source_cell, self.optimizer_name
        )
        twin.adopt_moments(self)
        twin.fitness = self.fitness
        twin.origin = self.origin
        twin.ema = None if self.ema is None else copy.deepcopy(self.ema)
        return twin


def moment_template(net: nn.Module, name: OptimizerName) -> dict[str, torch.Tensor]:
    """Tensors shaped as `Individual.moments()` of a trained individual with this network
    (on the network's device: use the meta device for shapes only)."""
    template = {}
    for index, parameter in enumerate(net.parameters()):
        template[f"{index}.step"] = torch.empty((), device=parameter.device)
        for slot in MOMENT_SLOTS[name]:
            template[f"{index}.{slot}"] = torch.empty_like(parameter)
    return template


def mutate_learning_rate(
    individual: Individual,
    probability: float,
    alpha: float,
    base_rate: float,
    rng: torch.Generator,
    rule: Literal["original", "unbiased"] = "original",
) -> bool:
    """With probability p, mutate the rate by `rule` (`MutationSpec.rule`):
    - original: lr += alpha * N(-lr0/10, lr0), clipped at 0. The mean step is negative, so
      the rate drifts down over a long run (the original undid it every batch);
    - unbiased: lr *= exp(alpha * N(0, 1)), zero-mean in log space and never negative; at
      lr0 its relative spread is the original's (alpha).

    Returns whether the rate changed.
    """
    if float(torch.rand(1, generator=rng)) >= probability:
        return False
    if rule == "unbiased":
        factor = math.exp(alpha * float(torch.randn(1, generator=rng)))
        individual.set_learning_rate(individual.learning_rate * factor)
        return True
    step = float(torch.normal(-base_rate / 10, base_rate, (1,), generator=rng))
    individual.set_learning_rate(max(0.0, individual.learning_rate + alpha * step))
    return True


def origins(population: list[Individual]) -> list[list[int]]:
    """Where each individual's lineage began, best first."""
    return [list(i.origin) for i in sorted(population, key=lambda i: i.fitness)]
