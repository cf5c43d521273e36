"""One cell's generations, the same in a cell process and in the in-process runner:
resume from the latest checkpoint, step, checkpoint on the spec's cadence, finish."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from lipizzaner_core.layout import CellLayout

from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.report import GenerationReport
from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.runtime.checkpoint import restore_latest, save_checkpoint
from lipizzaner_cell.runtime.history import History, record
from lipizzaner_cell.runtime.results import finish_cell


class CellDriver:
    def __init__(
        self,
        engine: CellEngine,
        layout: CellLayout,
        on_checkpoint: Callable[[float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.layout = layout
        self.spec = engine.spec
        self.on_checkpoint = on_checkpoint  # told each checkpoint's seconds
        self.history = History(layout)

    @property
    def done(self) -> bool:
        return self.engine.generation >= self.spec.generations

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint, if the output has one, with the
        history up to it."""
        resumed = restore_latest(self.engine, self.layout)
        if resumed:
            self.history.load(self.engine.generation)
        return resumed

    def advance(self, should_stop: Callable[[], bool] | None = None) -> GenerationReport:
        """One generation; a checkpoint every `checkpoint.every` generations and at the end."""
        report = self.engine.step(should_stop)
        self.history.append(record(self.engine, report))
        if report.generation % self.spec.checkpoint.every == 0 or self.done:
            self.checkpoint()
        return report

    def checkpoint(self) -> None:
        """The history first, then the state: a crash between leaves history ahead of the
        checkpoint, and resuming drops those lines."""
        started = time.perf_counter()
        self.history.write()
        save_checkpoint(self.engine, self.layout, self.spec.checkpoint.keep)
        if self.on_checkpoint is not None:
            self.on_checkpoint(time.perf_counter() - started)

    def finish(self, dataset: Dataset, missing_neighbours: Sequence[int] = ()) -> dict[str, Any]:
        """The final mixture, its scores and the cell's result files."""
        return finish_cell(self.engine, dataset, self.layout, missing_neighbours)
