"""Cell training steps per second on one device: the ways to fill a GPU, side by side.

One "cell-step" is what a default MNIST cell does per batch: its generator steps against
a discriminator, then the discriminator against the generator (the perceptrons of
`spec.network`, batch 100, BCE, Adam with a per-step learning rate). Every variant runs in
this one invocation on the same device, and each figure is cell-steps per second over all
the cells it trains, with its ratio to `eager`, today's loop:

  eager          one cell, the PyTorch loop `BatchTrainer` runs today
  graph          the same step captured once as a CUDA graph and replayed (CUDA only)
  vmap K         K cells' networks stacked, one step for all through torch.func.vmap, with
                 a vectorised Adam (each cell keeps its own learning rate)
  vmap K graph   the vmapped step of K cells captured as one CUDA graph (CUDA only)
  processes N    N processes, each an eager cell, sharing the device

Before timing, `graph` and `vmap 1` are checked against `eager` on the same inputs: the
largest parameter difference after 20 steps is printed (0 would be bit-identical).

    python bench/gpu_throughput.py --device cuda --seconds 3 --vmap 4 16 64 --processes 4 8 16
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lipizzaner_cell.algorithm.individual import ADAM_BETAS
from lipizzaner_cell.algorithm.networks import build_discriminator, build_generator
from lipizzaner_core.spec.training import NetworkSpec
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.nn import functional as F

SHAPE = (1, 28, 28)
BATCH = 100
LEARNING_RATE = 2e-4
EPS = 1e-8
Step = Callable[[], None]


def networks(device: torch.device, seed: int) -> tuple[nn.Module, nn.Module]:
    """A default MNIST cell's generator and discriminator."""
    torch.manual_seed(seed)
    spec = NetworkSpec()
    generator = build_generator(spec.generator, spec.latent_size, SHAPE).to(device)
    discriminator = build_discriminator(spec.discriminator, SHAPE).to(device)
    return generator, discriminator


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def d_loss(logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-logits[:BATCH]).mean() + F.softplus(logits[BATCH:]).mean()


@dataclass
class Inputs:
    """A step's real batch and noise: drawn inside the step, or fixed batches that
    `advance` copies into static buffers outside it (what a CUDA graph reads)."""

    data: torch.Tensor  # [N, 784] stand-in for the cell's data, on the device
    latent: int
    fixed: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        self.position = 0
        self.static = None if self.fixed is None else [t.clone() for t in self.fixed[0]]

    def advance(self) -> None:
        if self.fixed is not None and self.static is not None:
            batch = self.fixed[self.position % len(self.fixed)]
            for buffer, value in zip(self.static, batch, strict=True):
                buffer.copy_(value)
            self.position += 1

    def draw(self, cells: int | None) -> tuple[torch.Tensor, ...]:
        if self.static is not None:
            return tuple(self.static) if cells is None else tuple(t[None] for t in self.static)
        lead = () if cells is None else (cells,)
        index = torch.randint(len(self.data), (*lead, BATCH), device=self.data.device)
        noise = (*lead, BATCH, self.latent)
        return (
            self.data[index].view(*lead, BATCH, *SHAPE),
            torch.randn(noise, device=self.data.device),
            torch.randn(noise, device=self.data.device),
        )


Built = tuple[Step, list[torch.Tensor], Callable[[], list[torch.Tensor]]]


def eager(device: torch.device, inputs: Inputs, capturable: bool = False) -> Built:
    """Today's step: G against D, then D against G, each after setting its learning rate."""
    generator, discriminator = networks(device, seed=0)
    lr = torch.tensor(LEARNING_RATE, device=device) if capturable else LEARNING_RATE
    options = {"lr": lr, "betas": ADAM_BETAS, "fused": True, "capturable": capturable}
    g_opt = torch.optim.Adam(generator.parameters(), **options)
    d_opt = torch.optim.Adam(discriminator.parameters(), **options)

    def step() -> None:
        real, z1, z2 = inputs.draw(None)
        for group in (*g_opt.param_groups, *d_opt.param_groups):
            if not capturable:
                group["lr"] = LEARNING_RATE  # the per-step mutation sets it, as today
        value = g_loss(discriminator(generator(z1)))
        g_opt.zero_grad(set_to_none=not capturable)
        value.backward()
        g_opt.step()
        with torch.no_grad():
            fake = generator(z2)
        value = d_loss(discriminator(torch.cat([real, fake])))
        d_opt.zero_grad(set_to_none=not capturable)
        value.backward()
        d_opt.step()

    def states() -> list[torch.Tensor]:
        return [t for opt in (g_opt, d_opt) for st in opt.state.values() for t in st.values()]

    return step, [*generator.parameters(), *discriminator.parameters()], states


def captured(built: Built) -> Built:
    """A step captured once as a CUDA graph; replays run its kernels with no Python.

    The warm-up steps that capturing needs (they create the optimizers' state and the
    autograd buffers) are undone: parameters restored, optimizer state zeroed, so the
    first replay is the first step, as in the uncaptured version.
    """
    step, parameters, states = built
    before = [p.detach().clone() for p in parameters]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    with torch.no_grad():
        for parameter, value in zip(parameters, before, strict=True):
            parameter.copy_(value)
        for state in states():
            state.zero_()
    return graph.replay, parameters, states


def graphed(device: torch.device, inputs: Inputs) -> Built:
    """`eager`, captured."""
    return captured(eager(device, inputs, capturable=True))


class StackedAdam:
    """Adam over K cells' stacked parameters, with one learning rate per cell."""

    def __init__(self, parameters: list[torch.Tensor], lr: torch.Tensor) -> None:
        self.parameters, self.lr = parameters, lr
        self.m = [torch.zeros_like(p) for p in parameters]
        self.v = [torch.zeros_like(p) for p in parameters]
        self.step_count = torch.zeros((), device=lr.device)

    def step(self, grads: list[torch.Tensor]) -> None:
        beta1, beta2 = ADAM_BETAS
        self.step_count += 1
        correction1 = 1 - torch.pow(beta1, self.step_count)
        correction2 = 1 - torch.pow(beta2, self.step_count)
        torch._foreach_lerp_(self.m, grads, 1 - beta1)
        torch._foreach_mul_(self.v, beta2)
        torch._foreach_addcmul_(self.v, grads, grads, 1 - beta2)
        denominators = torch._foreach_div(self.v, correction2)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, EPS)
        for p, m, d in zip(self.parameters, self.m, denominators, strict=True):
            rate = (self.lr / correction1).view(-1, *[1] * (p.dim() - 1))
            p.sub_(rate * m / d)


def vmapped(device: torch.device, inputs: Inputs, cells: int) -> Built:
    """K cells in one step: forward, gradients and Adam batched over the cells."""
    pairs = [networks(device, seed=0 if cells == 1 else k) for k in range(cells)]
    g_params, _ = stack_module_state([g for g, _ in pairs])
    d_params, _ = stack_module_state([d for _, d in pairs])
    g_base = copy.deepcopy(pairs[0][0]).to("meta")
    d_base = copy.deepcopy(pairs[0][1]).to("meta")
    lr = torch.full((cells,), LEARNING_RATE, device=device)
    g_opt = StackedAdam(list(g_params.values()), lr)
    d_opt = StackedAdam(list(d_params.values()), lr.clone())

    def generator_loss(gp: dict, dp: dict, z: torch.Tensor) -> torch.Tensor:
        fake = functional_call(g_base, gp, (z,))
        return g_loss(functional_call(d_base, dp, (fake,)))

    def discriminator_loss(dp: dict, gp: dict, real: torch.Tensor, z: torch.Tensor):
        fake = functional_call(g_base, gp, (z,)).detach()
        return d_loss(functional_call(d_base, dp, (torch.cat([real, fake]),)))

    g_grad = vmap(grad(generator_loss))
    d_grad = vmap(grad(discriminator_loss))

    def step() -> None:
        real, z1, z2 = inputs.draw(cells)
        grads = g_grad(g_params, d_params, z1)
        with torch.no_grad():
            g_opt.step([grads[name] for name in g_params])
        grads = d_grad(d_params, g_params, real, z2)
        with torch.no_grad():
            d_opt.step([grads[name] for name in d_params])

    def states() -> list[torch.Tensor]:
        return [*g_opt.m, *g_opt.v, g_opt.step_count, *d_opt.m, *d_opt.v, d_opt.step_count]

    for p in [*g_params.values(), *d_params.values()]:
        p.requires_grad_(False)  # torch.func takes gradients itself
    return step, [*g_params.values(), *d_params.values()], states


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def steps_per_second(step: Step, device: torch.device, seconds: float) -> float:
    for _ in range(5):
        step()
    synchronize(device)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            step()
        done += 10
        synchronize(device)
    return done / (time.perf_counter() - started)


def difference(device: torch.device, build: Callable[[Inputs], Built]) -> float:
    """Largest parameter difference from `eager` after 20 steps on the same inputs."""
    torch.manual_seed(1)
    data = torch.rand(1000, 784, device=device) * 2 - 1
    latent = NetworkSpec().latent_size
    batches = [
        (
            data[torch.randint(1000, (BATCH,), device=device)].view(BATCH, *SHAPE),
            torch.randn(BATCH, latent, device=device),
            torch.randn(BATCH, latent, device=device),
        )
        for _ in range(20)
    ]
    results = []
    for builder in (lambda i: eager(device, i), build):
        inputs = Inputs(data, latent, fixed=batches)
        step, parameters, _ = builder(inputs)
        for _ in range(20):
            inputs.advance()
            step()
        synchronize(device)
        results.append([p.detach().reshape(-1) for p in parameters])
    return max(float((a - b).abs().max()) for a, b in zip(*results, strict=True))


def worker(device: torch.device, start_at: float, seconds: float) -> None:
    """One of `processes N`: an eager cell that counts its steps inside a shared window."""
    inputs = Inputs(torch.rand(10_000, 784, device=device) * 2 - 1, NetworkSpec().latent_size)
    step, _, _ = eager(device, inputs)
    for _ in range(5):
        step()
    synchronize(device)
    while time.time() < start_at:
        step()
    synchronize(device)
    done = 0
    while time.time() < start_at + seconds:
        step()
        done += 1
    synchronize(device)
    print(f"steps {done}", flush=True)


def processes(device: torch.device, count: int, seconds: float) -> float:
    start_at = time.time() + 15 + count  # every worker has started and warmed up by then
    command = [sys.executable, __file__, "--worker", str(start_at), "--seconds", str(seconds)]
    command += ["--device", device.type]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)]
    workers += [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(count - 1)
    ]
    total = 0
    for process in workers:
        out, _ = process.communicate(timeout=start_at - time.time() + seconds + 120)
        total += int(out.split()[-1])
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per variant")
    parser.add_argument("--vmap", type=int, nargs="*", default=[4, 16, 64], metavar="K")
    parser.add_argument("--processes", type=int, nargs="*", default=[4, 8, 16], metavar="N")
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    if args.worker is not None:
        worker(device, args.worker, args.seconds)
        return
    console = Console()
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    console.print(f"device: {device} ({name}), torch {torch.__version__}, 1 CPU thread")
    cuda = device.type == "cuda"
    checks = {"vmap 1": lambda i: vmapped(device, i, 1)}
    if cuda:
        checks["graph"] = lambda i: graphed(device, i)
        checks["vmap 1 graph"] = lambda i: captured(vmapped(device, i, 1))
    for label, build in checks.items():
        gap = difference(device, build)
        console.print(f"{label} vs eager after 20 steps, largest parameter difference: {gap:.3g}")
    inputs = Inputs(torch.rand(10_000, 784, device=device) * 2 - 1, NetworkSpec().latent_size)
    rows: list[tuple[str, int, float]] = []
    rows.append(("eager", 1, steps_per_second(eager(device, inputs)[0], device, args.seconds)))
    if cuda:
        rows.append(
            ("graph", 1, steps_per_second(graphed(device, inputs)[0], device, args.seconds))
        )
    for cells in args.vmap:
        rate = steps_per_second(vmapped(device, inputs, cells)[0], device, args.seconds)
        rows.append((f"vmap {cells}", cells, rate * cells))
        if cuda:
            built = captured(vmapped(device, inputs, cells))
            rate = steps_per_second(built[0], device, args.seconds)
            rows.append((f"vmap {cells} graph", cells, rate * cells))
    for count in args.processes:
        rows.append((f"processes {count}", count, processes(device, count, args.seconds)))
    table = Table(title=f"Default MNIST cell-steps per second on {name}")
    for column in ("variant", "cells", "cell-steps / s", "vs eager", "ms / step of one cell"):
        table.add_column(column, justify="right")
    base = rows[0][2]
    for label, cells, rate in rows:
        table.add_row(
            label, str(cells), f"{rate:,.0f}", f"{rate / base:.1f}x", f"{1000 * cells / rate:.2f}"
        )
    console.print(table)


if __name__ == "__main__":
    main()
