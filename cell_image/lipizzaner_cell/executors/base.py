"""One interface for where a run's cells run (kubeflow/sdk's `RuntimeBackend` is the model).

`LocalExecutor` trains on this machine, its cells in this process or one process each;
`KubernetesExecutor` hands the run to the operator on a cluster. The commands `run`,
`submit`, `status`, `logs` and `delete` call an executor and never ask which it is.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.status import CellRecord, RunStatus

FINISHED = ("Succeeded", "Failed")


class RunNotFound(LookupError):
    """No run by that name (on a cluster) or at that output (on this machine)."""


@dataclass(frozen=True)
class RunView:
    """A run as its executor has it: its spec and its status (`namespace`: on a cluster)."""

    run: LipizzanerRun
    status: RunStatus
    namespace: str | None = None

    @property
    def name(self) -> str:
        return self.run.metadata.name

    @property
    def phase(self) -> str:
        return self.status.phase

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def summary(self) -> dict[str, Any]:
        """What a CI job keeps: outcome, ensemble and scores (JSON-ready)."""
        status = self.status
        return {
            "run": self.name,
            "namespace": self.namespace,
            "phase": status.phase,
            "message": status.message,
            "grid": status.grid,
            "generation": status.generation.model_dump(),
            "generations": self.run.spec.generations,
            "bestScore": status.best_score,
            "ensemble": status.ensemble.uri if status.ensemble else None,
            "output": self.run.output_uri(),
            "restarts": status.cells.restarts,
            "startTime": status.start_time,
            "completionTime": status.completion_time,
        }


@dataclass(frozen=True)
class CellLog:
    """One start of one cell, as the cell kept its log in the run's output."""

    cell: int
    attempt: int
    text: str


def kept_logs(layout: RunLayout, cells: list[int], attempt: int | None) -> list[CellLog]:
    """The logs the cells kept in the output: each cell's latest start, or `attempt`."""
    logs = []
    for index in cells:
        cell = layout.cell(index)
        attempts = cell.attempts()
        chosen = [attempt] if attempt is not None else attempts[-1:]
        for number in (a for a in chosen if a in attempts):
            text = layout.storage.read_bytes(cell.log(number)).decode(errors="replace")
            logs.append(CellLog(index, number, text))
    return logs


class Executor(ABC):
    """Where a run's cells run. A run is named as its executor knows it: by its
    `metadata.name` on a cluster, by its output (a folder or URI) on this machine."""

    @abstractmethod
    def run(self, run: LipizzanerRun) -> RunView:
        """Start the run: on this machine, train it to its end; on a cluster, create it."""

    @abstractmethod
    def status(self, name: str) -> RunView:
        """The run as it stands; RunNotFound if there is none."""

    @abstractmethod
    def logs(self, name: str, cell: int | None = None, attempt: int | None = None) -> list[CellLog]:
        """The cells' logs kept in the run's output: every cell's latest start by default."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Stop the run: its cells stop (at a checkpoint where they can); its output stays."""

    def settled(self, view: RunView) -> bool:
        """Whether waiting for the run is over."""
        return view.finished

    def cells(self, view: RunView) -> list[CellRecord]:
        """Every cell's record (`lipizzaner status --cells`): the status's own here."""
        return view.status.cell_records

    def wait(
        self,
        name: str,
        timeout: float,
        poll_seconds: float = 2.0,
        on_poll: Callable[[RunView], None] | None = None,
    ) -> RunView:
        """Read the run until it has settled; TimeoutError after `timeout` seconds (the
        run goes on). An executor whose reads may fail for a moment says so in
        `transient`, and the wait rides such a blip out until its deadline."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                view = self.status(name)
            except self.transient:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll_seconds)
                continue
            if on_poll is not None:
                on_poll(view)
            if self.settled(view):
                return view
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} is still {view.phase} after {timeout:g} s")
            time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))

    # The errors of a read worth trying again (the API server did not answer, say).
    transient: tuple[type[Exception], ...] = ()
