"""Where the stacked cells of a process meet (`training.stacking`): a rendezvous at step 4.

Each cell keeps its own thread, exchange, checkpoints and metrics, and runs steps 1-3 and
5-7 on its own. At step 4 it hands its job to its stack and waits; once every member still
training has handed in, the last to arrive runs all their batch loops as one stacked
program (`stacked_steps.py`) and wakes the others with their results. A member that stops,
finishes or fails leaves, and the rest go on without it; a restarted one joins again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from lipizzaner_core.placement import cells_named, process_groups
from lipizzaner_core.spec import RunSpecBody

from lipizzaner_cell.algorithm.stacked_steps import (
    StackedTraining,
    StackJob,
    step_losses,
    unstackable_because,
)

log = logging.getLogger(__name__)
Result = tuple[float, float, int]


class TrainingStack:
    def __init__(self, cells: Iterable[int], training: StackedTraining, threads: int) -> None:
        """`threads`: torch's intra-op threads for the stacked program, which runs in one
        thread for all its cells (each cell's own thread keeps its own count)."""
        self.members = set(cells)  # who is expected at the next step 4
        self.training = training
        self.threads = threads
        self._jobs: dict[int, StackJob] = {}
        self._results: dict[int, Result | BaseException] = {}
        self._changed = threading.Condition()

    def expect(self, cells: Iterable[int]) -> None:
        """Exactly these cells at the next step 4 (a runner that steps them in rounds)."""
        with self._changed:
            self.members = set(cells)

    def join(self, cell: int) -> None:
        with self._changed:
            self.members.add(cell)

    def leave(self, cell: int) -> None:
        """`cell` no longer trains (stopped, finished or failed): the others go on."""
        with self._changed:
            self.members.discard(cell)
            self._changed.notify_all()

    @contextmanager
    def membership(self, cell: int) -> Iterator[None]:
        """Training as a member, leaving however the training ends."""
        self.join(cell)
        try:
            yield
        finally:
            self.leave(cell)

    def train(self, cell: int, job: StackJob) -> Result:
        """This cell's step 4, run with the other members' (see the module's text)."""
        with self._changed:
            if cell not in self.members:
                raise RuntimeError(f"cell {cell} trains in a stack it has not joined")
            self._jobs[cell] = job
            self._changed.notify_all()
            while cell not in self._results:
                if self._jobs and self.members <= self._jobs.keys():
                    self._run_all()
                else:
                    self._changed.wait()
            result = self._results.pop(cell)
        if isinstance(result, BaseException):
            raise result
        return result

    def _run_all(self) -> None:
        """Run the handed-in jobs, in cell order; called holding the lock."""
        jobs, self._jobs = dict(sorted(self._jobs.items())), {}
        own = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            results: list[Result | BaseException] = list(self.training.run(list(jobs.values())))
        except Exception as exc:  # every member's step 4 failed with it
            results = [exc] * len(jobs)
        finally:
            torch.set_num_threads(own)
        self._results.update(zip(jobs, results, strict=True))
        self._changed.notify_all()


def training_stacks(
    spec: RunSpecBody, cells: range, device: torch.device, threads: int
) -> dict[int, TrainingStack]:
    """The stacks of these cells of one process (consecutive, `stacking.cells` each), by
    cell; none when the run is not stacked, or cannot be (said in the log). On CUDA each
    stack's ticks replay as CUDA graphs unless `training.cudaGraphs` is false. `threads`:
    the cores a stack's program may use (the intra-op threads its cells had between them)."""
    size = spec.training.stacking.cells
    if size == 1:
        return {}
    reason = unstackable_because(spec)
    if reason is not None:
        log.warning("training.stacking: cells step one by one: %s", reason)
        return {}
    capture = device.type == "cuda" and spec.training.cuda_graphs
    training = StackedTraining(spec.training.generator_ema.decay, step_losses(spec), capture)
    stacks = {}
    for group in process_groups(len(cells), size):
        members = [cells[i] for i in group]
        stack = TrainingStack(members, training, threads)
        stacks.update({cell: stack for cell in members})
        log.info("%s train step 4 as one stacked program", cells_named(members))
    return stacks
