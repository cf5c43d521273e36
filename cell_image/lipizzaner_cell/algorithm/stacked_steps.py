"""Step 4 for several cells at once (`training.stacking`): one vmapped program for all.

A grid cell's networks are small, so one cell's step leaves a GPU (and much of a CPU core's
vector units) idle while Python launches its kernels. Stacking trains the players of K
cells together: every player is a *lane*, its parameters and Adam moments a row of stacked
tensors (a `Bank` per role), and each tick (one role's turn on a batch) is one
`torch.func.vmap` of the eager step's loss under `torch.func.grad`, then one vectorised
Adam update. On CUDA each tick is captured once as a CUDA graph and replayed.

Each cell keeps its own semantics: its `BatchTrainer.player_steps` draws every decision
(opponent, rate mutation, mustangs' loss, noise, batch) from its own generators in the
eager order, and a lane's numbers are a function of its own inputs only. A stacked run
therefore follows the unstacked one up to the rounding of batched kernels (measured in
`tests/test_stacking.py`). Steps that draw random numbers while they run (a gradient
penalty, semi-supervised labelled batches), other optimizers, the original WGAN's critic
blocks and networks with buffers (batch norm) or recurrent layers are not stacked:
`unstackable_because` names why, and those runs step cell by cell.
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice

import torch
from lipizzaner_core.spec import RunSpecBody
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from lipizzaner_cell.algorithm.graphed_steps import captured
from lipizzaner_cell.algorithm.individual import ADAM_BETAS, Individual
from lipizzaner_cell.algorithm.losses import LOSSES, MUSTANGS_CHOICES, Loss
from lipizzaner_cell.algorithm.training import BatchTrainer, Players, PlayerStep, Tally

ADAM_EPS = 1e-8  # torch.optim.Adam's default, which the cells' optimizers use
STACKABLE_LOSSES = ("bce", "heuristic", "minimax", "mse", "mustangs")


def unstackable_because(spec: RunSpecBody) -> str | None:
    """Why this run's steps cannot be stacked, or None: a pure function of the spec."""
    if spec.semi_supervised.enabled:
        return "semi-supervised discriminators draw labelled batches inside their steps"
    if spec.loss not in STACKABLE_LOSSES:
        return f"loss {spec.loss} (its optimizer, critic schedule or penalty) is not stacked"
    for role in ("generator", "discriminator"):
        architecture = getattr(spec.network, role).architecture
        if architecture != "mlp":
            return f"the {architecture} {role} (batch norm or recurrent layers) is not stacked"
    return None


def step_losses(spec: RunSpecBody) -> list[Loss]:
    """Every loss a step of this run may train with: mustangs' three, else the run's."""
    names = MUSTANGS_CHOICES if spec.loss == "mustangs" else (spec.loss,)
    return [LOSSES[name] for name in names]


@dataclass
class StackJob:
    """One cell's step 4, handed to the stack: its trainer, players and stop request."""

    trainer: BatchTrainer
    players: Players
    should_stop: Callable[[], bool] | None = None


class Bank:
    """One role's networks of a generation across the stacked cells, as stacked tensors:
    the players' lanes first (cell by cell), then every other opponent. Its tensors are
    kept from generation to generation (a graph replays over fixed memory), refilled by
    `load` and read back by `store`."""

    def __init__(self, net: nn.Module, lanes: int, rows: int, ema: bool) -> None:
        self.template = copy.deepcopy(net).to("meta")
        named = dict(net.named_parameters())
        self.names = list(named)
        self.count, self.capacity = lanes, rows

        def stacked(count: int) -> dict[str, torch.Tensor]:
            return {
                name: torch.zeros((count, *p.shape), dtype=p.dtype, device=p.device)
                for name, p in named.items()
            }

        self.params = stacked(rows)
        self.exp_avg, self.exp_avg_sq = stacked(lanes), stacked(lanes)
        device = next(iter(named.values())).device
        # Each lane's Adam step count, per parameter (float32, as torch's optimizers keep it).
        self.step = {name: torch.zeros(lanes, device=device) for name in named}
        self.ema = stacked(lanes) if ema else None
        self.lanes: list[Individual] = []
        self.row: dict[int, int] = {}

    @staticmethod
    def members(lanes: list[Individual], others: list[Individual]) -> list[Individual]:
        """The lanes, then each other individual once."""
        return list({id(individual): individual for individual in [*lanes, *others]}.values())

    @torch.no_grad()
    def load(self, lanes: list[Individual], others: list[Individual]) -> None:
        """This generation's individuals into the bank (rows past them keep stale values,
        which no opponent index points at)."""
        members = self.members(lanes, others)
        self.lanes, self.row = lanes, {id(m): row for row, m in enumerate(members)}
        for row, member in enumerate(members):
            for name, parameter in member.net.named_parameters():
                self.params[name][row].copy_(parameter)
        for lane, individual in enumerate(lanes):
            named = dict(individual.net.named_parameters())
            for name in self.names:
                state = individual.optimizer.state.get(named[name]) or {}
                for key, moments in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                    if state:
                        moments[name][lane].copy_(state[key])
                    else:  # a fresh individual: Adam starts from zero moments
                        moments[name][lane].zero_()
                self.step[name][lane] = float(state["step"]) if state else 0.0
            if self.ema is not None:
                assert individual.ema is not None
                for name, average in individual.ema.named_parameters():
                    self.ema[name][lane].copy_(average)

    def players(self) -> dict[str, torch.Tensor]:
        """The lanes' parameters: views, so the Adam update writes the bank itself."""
        return {name: tensor[: self.count] for name, tensor in self.params.items()}

    def gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Copies of the rows `index` names, stacked in its order."""
        return {name: tensor.index_select(0, index) for name, tensor in self.params.items()}

    def adam(self, grads: dict[str, torch.Tensor], rates: torch.Tensor) -> None:
        """One Adam step per lane at its own rate: torch's fused Adam kernel (the one the
        cells' own optimizers run, betas `ADAM_BETAS`) over each lane's rows, one pass
        through memory. 8x faster on CPU than `adam_vectorised`'s separate kernels."""
        beta1, beta2 = ADAM_BETAS
        params = self.players()
        for lane, rate in enumerate(rates.tolist()):
            steps = [self.step[name][lane] for name in self.names]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                [params[name][lane] for name in self.names],
                [grads[name][lane] for name in self.names],
                [self.exp_avg[name][lane] for name in self.names],
                [self.exp_avg_sq[name][lane] for name in self.names],
                [],
                steps,
                amsgrad=False,
                lr=rate,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=ADAM_EPS,
                maximize=False,
            )

    def adam_vectorised(self, grads: dict[str, torch.Tensor], rates: torch.Tensor) -> None:
        """The same update for all lanes at once, with each lane's rate read from a device
        tensor: what a captured graph replays (no per-lane rate in Python)."""
        beta1, beta2 = ADAM_BETAS
        for name, params in self.players().items():
            shape = (-1,) + (1,) * (params.dim() - 1)
            step = self.step[name].add_(1).double()
            step_size = (rates / (1 - beta1**step)).to(params.dtype).view(shape)
            correction = (1 - beta2**step).sqrt().to(params.dtype).view(shape)
            gradient, exp_avg, exp_avg_sq = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            exp_avg.lerp_(gradient, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
            denominator = (exp_avg_sq.sqrt() / correction).add_(ADAM_EPS)
            params.sub_(step_size * exp_avg / denominator)

    def update_ema(self, decay: float) -> None:
        assert self.ema is not None
        for name, params in self.players().items():
            self.ema[name].lerp_(params, 1.0 - decay)

    def tensors(self) -> list[torch.Tensor]:
        """Everything a tick may write: what a capture's warm-up runs must put back."""
        parts = [self.params, self.exp_avg, self.exp_avg_sq, self.step, self.ema or {}]
        return [tensor for part in parts for tensor in part.values()]

    @torch.no_grad()
    def store(self) -> None:
        """The lanes' weights, moments and averages back into their individuals."""
        for lane, individual in enumerate(self.lanes):
            net = dict(individual.net.named_parameters())
            ema = None if individual.ema is None else dict(individual.ema.named_parameters())
            for name in self.names:
                net[name].copy_(self.params[name][lane])
                if ema is not None and self.ema is not None:
                    ema[name].copy_(self.ema[name][lane])
                state = individual.optimizer.state[net[name]]
                step = torch.tensor(float(self.step[name][lane]), device=net[name].device)
                trained = {
                    "step": step,
                    "exp_avg": self.exp_avg[name][lane],
                    "exp_avg_sq": self.exp_avg_sq[name][lane],
                }
                for key, value in trained.items():
                    if key in state:
                        state[key].copy_(value)
                    else:
                        state[key] = value.clone()


@dataclass
class Tick:
    """One role's stacked step over fixed input buffers: captured on CUDA, else run as is."""

    inputs: dict[str, torch.Tensor]  # opponent rows, noise, real, loss weights, rates
    values: torch.Tensor  # each lane's loss, written by every run
    run: Callable[[], None] = field(default=lambda: None)


class StackedTraining:
    """Step 4 of several cells as one program: each cell's stream of player steps, tick by
    tick, in lockstep (module text)."""

    def __init__(self, ema_decay: float, losses: list[Loss], capture: bool = False) -> None:
        """`losses`: every loss a step may train with (`step_losses`); `capture`: replay
        each tick as a CUDA graph."""
        self.ema_decay, self.losses, self.capture = ema_decay, losses, capture
        self.banks: dict[tuple[str, int], Bank] = {}  # (role, lanes) -> its bank
        self.ticks: dict[tuple[str, int, int], Tick] = {}  # (role, id(g bank), id(d bank))
        self.pool = torch.cuda.graph_pool_handle() if capture else None

    def run(self, jobs: Sequence[StackJob]) -> list[tuple[float, float, int]]:
        """Each job's `BatchTrainer.run` result, computed together."""
        population = len(jobs[0].players.generators)
        lanes = {
            "g": [g for job in jobs for g in job.players.generators],
            "d": [d for job in jobs for d in job.players.discriminators],
        }
        others = {
            "g": [o for job in jobs for o in job.players.discriminator_opponents],
            "d": [o for job in jobs for o in job.players.generator_opponents],
        }
        banks = {role: self._bank(role, lanes[role], others[role]) for role in ("g", "d")}
        tallies = [Tally(jobs[0].trainer.data.device) for _ in jobs]
        stopping = [False]  # one decision per tick for all: the cells stop together
        streams = [
            job.trainer.player_steps(job.players, tally, lambda: stopping[0])
            for job, tally in zip(jobs, tallies, strict=True)
        ]
        while True:
            stopping[0] = any(job.should_stop() for job in jobs if job.should_stop is not None)
            tick = [list(islice(stream, population)) for stream in streams]
            if not any(tick):
                break
            steps = [step for cell in tick for step in cell]
            roles = {step.role for step in steps}
            if len(steps) != population * len(jobs) or len(roles) != 1:
                raise RuntimeError("stacked cells fell out of step: their schedules differ")
            role = roles.pop()
            values = self._step(role, banks, steps)
            for cell, tally in enumerate(tallies):
                tally.add(role, values[cell * population : (cell + 1) * population].sum())
        for bank in banks.values():
            bank.store()
        return [
            tally.means(len(job.players.generators), len(job.players.discriminators))
            for job, tally in zip(jobs, tallies, strict=True)
        ]

    def _bank(self, role: str, lanes: list[Individual], others: list[Individual]) -> Bank:
        """The role's bank for this many lanes, grown if this generation needs more rows."""
        rows = len(Bank.members(lanes, others))
        bank = self.banks.get((role, len(lanes)))
        if bank is None or bank.capacity < rows:
            if bank is not None:  # outgrown: its ticks go with it
                self.ticks = {k: t for k, t in self.ticks.items() if id(bank) not in k}
            ema = role == "g" and lanes[0].ema is not None
            bank = Bank(lanes[0].net, len(lanes), rows, ema)
            self.banks[(role, len(lanes))] = bank
        bank.load(lanes, others)
        return bank

    def _step(self, role: str, banks: dict[str, Bank], steps: list[PlayerStep]) -> torch.Tensor:
        """Every lane's step of one tick; returns their loss values (valid until the next)."""
        mine = banks[role]
        theirs = banks["d" if role == "g" else "g"]
        for lane, step in enumerate(steps):
            if mine.lanes[lane] is not step.player:
                raise RuntimeError("stacked cells fell out of step: a lane met another player")
        inputs = {
            "opponents": torch.tensor([theirs.row[id(step.opponent)] for step in steps]),
            "noise": torch.stack([step.noise for step in steps]),
            "weights": torch.tensor(
                [[float(step.loss is loss) for loss in self.losses] for step in steps]
            ),
            "rates": torch.tensor(
                [step.player.learning_rate for step in steps], dtype=torch.float64
            ),
        }
        if role == "d":
            inputs["real"] = torch.stack([step.real for step in steps])
        key = (role, id(banks["g"]), id(banks["d"]))
        tick = self.ticks.get(key)
        if tick is None:
            tick = self._tick(role, mine, theirs, inputs)
            self.ticks[key] = tick
        with torch.no_grad():
            for name, value in inputs.items():
                tick.inputs[name].copy_(value)
        tick.run()
        return tick.values

    def _tick(self, role: str, mine: Bank, theirs: Bank, example: dict[str, torch.Tensor]) -> Tick:
        """The tick's fixed buffers (shaped as `example`) and its run (captured on CUDA)."""
        device = next(iter(mine.params.values())).device
        inputs = {name: torch.empty_like(value, device=device) for name, value in example.items()}
        tick = Tick(inputs, torch.zeros(len(example["rates"]), device=device))
        player_net, opponent_net, losses = mine.template, theirs.template, self.losses

        def objective(one: Callable[[Loss], torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
            """One loss; under mustangs the lane's drawn one, picked by one-hot weights, so
            every lane runs one program (the others' terms add exact zeros)."""
            if len(losses) == 1:
                return one(losses[0])
            terms = [weights[i] * one(loss) for i, loss in enumerate(losses)]
            return functools.reduce(operator.add, terms)

        def generator_loss(player, opponent, noise, weights):
            logits = functional_call(
                opponent_net, opponent, (functional_call(player_net, player, (noise,)),)
            )
            return objective(lambda loss: loss.generator(logits), weights)

        def discriminator_loss(player, real, fake, weights):
            logits = functional_call(player_net, player, (torch.cat([real, fake]),))
            count = real.shape[0]
            return objective(
                lambda loss: loss.discriminator(logits[:count], logits[count:]), weights
            )

        def run() -> None:
            opponents = theirs.gather(inputs["opponents"])
            if role == "g":
                grads, values = vmap(grad_and_value(generator_loss))(
                    mine.players(), opponents, inputs["noise"], inputs["weights"]
                )
            else:
                with torch.no_grad():
                    fakes = vmap(lambda o, z: functional_call(opponent_net, o, (z,)))(
                        opponents, inputs["noise"]
                    )
                grads, values = vmap(grad_and_value(discriminator_loss))(
                    mine.players(), inputs["real"], fakes, inputs["weights"]
                )
            with torch.no_grad():
                if self.capture:
                    mine.adam_vectorised(grads, inputs["rates"])
                else:
                    mine.adam(grads, inputs["rates"])
                if role == "g" and mine.ema is not None:
                    mine.update_ema(self.ema_decay)
                tick.values.copy_(values)

        tick.run = run
        if self.capture:
            tick.run = captured(run, mine.tensors(), device, self.pool)
        return tick
