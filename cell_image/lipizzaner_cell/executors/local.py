"""A run on this machine: its cells in this process (tests, debugging) or one process each
(`lipizzaner run`), known by its output, where its status and logs are read from.

A local run is as far as its output says: `run.yaml` (the manifest, written first), each
cell's history and result, the ensemble, and the lease of the `lipizzaner run` training it.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import yaml
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun, SpecError, dump_run, parse_run
from lipizzaner_core.status import (
    CellCounts,
    CellRecord,
    EnsembleStatus,
    GenerationRange,
    RunStatus,
)
from lipizzaner_core.storage import DamagedFile, Storage, damaged_as

from lipizzaner_cell.executors.base import CellLog, Executor, RunNotFound, RunView, kept_logs
from lipizzaner_cell.executors.lease import describe, holder_state


class LocalExecutor(Executor):
    def __init__(
        self,
        in_process: bool = False,
        show_progress: bool = True,
        threads: int | None = None,
        storage: Storage | None = None,
        stop_seconds: float = 600.0,
    ) -> None:
        """`storage` reads outputs named by `status`, `logs` and `delete` (the
        environment's credentials by default); `delete` waits `stop_seconds` at most for
        a run to stop."""
        self.in_process = in_process
        self.show_progress = show_progress
        self.threads = threads
        self.storage = storage or Storage()
        self.stop_seconds = stop_seconds

    def run(self, run: LipizzanerRun) -> RunView:
        """Train the run to its end, resuming from its checkpoints."""
        layout = RunLayout.of(run)
        manifest = yaml.safe_dump(dump_run(run), sort_keys=False).encode()
        layout.storage.write_bytes(layout.spec, manifest)
        if self.in_process:
            import torch

            from lipizzaner_cell.executors.in_process import run_in_process

            if self.threads:
                torch.set_num_threads(self.threads)
            run_in_process(run, show_progress=self.show_progress)
        else:
            from lipizzaner_cell.executors.in_process import write_preview
            from lipizzaner_cell.executors.local_processes import run_local

            run_local(run, show_progress=self.show_progress, threads=self.threads)
            write_preview(layout, run)
        return view_of(layout)

    def status(self, name: str) -> RunView:
        return view_of(self._layout(name))

    def logs(self, name: str, cell: int | None = None, attempt: int | None = None) -> list[CellLog]:
        layout = self._layout(name)
        found = sorted(int(n) for n in layout.storage.list_dir(layout.cells) if n.isdigit())
        return kept_logs(layout, [cell] if cell is not None else found, attempt)

    def delete(self, name: str) -> None:
        """Stop the `lipizzaner run` training this output, as Ctrl-C would: every cell
        stops at a checkpoint, and running it again resumes. Returns once it has stopped;
        TimeoutError if it still trains `stop_seconds` later."""
        layout = self._layout(name)
        holder = live_holder(layout)
        if holder is None:
            raise RunNotFound(f"{name}: no lipizzaner run is training it")
        if holder.get("host") != socket.gethostname():
            raise RunNotFound(f"{name}: trained by {describe(holder)}; stop it there")
        os.kill(holder["pid"], signal.SIGTERM)
        deadline = time.monotonic() + self.stop_seconds
        while live_holder(layout) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name}: pid {holder['pid']} still trains it {self.stop_seconds:g} s "
                    "after SIGTERM"
                )
            time.sleep(0.2)

    def settled(self, view: RunView) -> bool:
        """Nothing resumes a local run that stopped: waiting ends when it is not running."""
        return view.phase != "Running"

    def _layout(self, name: str) -> RunLayout:
        return RunLayout(name.rstrip("/"), self.storage)


def live_holder(layout: RunLayout) -> dict | None:
    """The holder of the output's lease while it lives (a damaged lease has none)."""
    storage = layout.storage
    try:
        holder = storage.read_json(layout.lease) if storage.exists(layout.lease) else None
    except (DamagedFile, FileNotFoundError):
        return None
    if (
        isinstance(holder, dict)
        and holder_state(holder, socket.gethostname(), time.time()) == "live"
    ):
        return holder
    return None


def view_of(layout: RunLayout) -> RunView:
    """The run at this output as its files have it: Running while a `lipizzaner run`
    holds its lease, Succeeded once its ensemble is there, else Suspended (stopped, or
    not yet started: `lipizzaner run` resumes it)."""
    from lipizzaner_cell.runtime.history import read_history

    run = manifest_at(layout)
    cells = run.spec.grid.size
    last = [read_history(layout.cell(i))[-1:] for i in range(cells)]
    generations = [lines[0]["generation"] if lines else 0 for lines in last]
    scores = [lines[0]["score"] for lines in last if lines and lines[0]["score"] is not None]
    if live_holder(layout) is not None:
        phase, running = "Running", cells
    elif layout.storage.exists(layout.ensemble_manifest):
        phase, running = "Succeeded", 0
    else:
        phase, running = "Suspended", 0
    finished = [layout.storage.exists(layout.cell(i).result) for i in range(cells)]
    succeeded = sum(finished)
    records = [
        CellRecord(
            cell=i,
            phase="Succeeded" if finished[i] else "Running" if phase == "Running" else "Suspended",
            generation=generations[i],
            score=lines[0]["score"] if lines else None,
        )
        for i, lines in enumerate(last)
    ]
    status = RunStatus(
        phase=phase,
        grid=f"{run.spec.grid.rows}x{run.spec.grid.cols}",
        cells=CellCounts(running=running, succeeded=succeeded),
        generation=GenerationRange(min=min(generations), max=max(generations)),
        best_score=min(scores, default=None),
        ensemble=EnsembleStatus(uri=layout.ensemble) if phase == "Succeeded" else None,
        cell_records=records,
    )
    return RunView(run, status)


def manifest_at(layout: RunLayout) -> LipizzanerRun:
    """The run trained at this output: its run.yaml, or the spec its ensemble holds."""
    storage = layout.storage
    for uri, read in (
        (layout.spec, lambda: yaml.safe_load(storage.read_bytes(layout.spec))),
        (layout.ensemble_manifest, lambda: storage.read_json(layout.ensemble_manifest)["spec"]),
    ):
        if storage.exists(uri):
            with damaged_as(uri, also=(SpecError, yaml.YAMLError)):
                return parse_run(read())
    raise RunNotFound(f"{layout.output}: no run there (no {layout.spec})")
