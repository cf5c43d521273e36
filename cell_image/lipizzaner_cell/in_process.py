"""Run every cell of a grid in one process, round-robin, through an in-process exchange.

For tests and debugging: the same engine, checkpoints and result files as the cell
processes, without a network. Each round every cell runs one generation; states become
visible to neighbours at the end of the round, so results do not depend on cell order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lipizzaner_operator import storage
from lipizzaner_operator.ensemble import assemble_ensemble
from lipizzaner_operator.spec import LipizzanerRun
from lipizzaner_operator.topology import Grid
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lipizzaner_cell.checkpoint import restore_latest, save_checkpoint
from lipizzaner_cell.datasets import load_dataset
from lipizzaner_cell.engine import CellEngine, GenerationReport
from lipizzaner_cell.neighbourhood import InProcessExchange
from lipizzaner_cell.results import finish_cell
from lipizzaner_cell.sampling import load_ensemble, write_samples

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    output_uri: str
    manifest: dict[str, Any]
    engines: list[CellEngine]
    reports: list[list[GenerationReport]] = field(default_factory=list)
    resumed_at: dict[int, int] = field(default_factory=dict)


def cell_uri(output_uri: str, index: int) -> str:
    return storage.join(output_uri, "cells", str(index))


def run_in_process(
    run: LipizzanerRun,
    *,
    show_progress: bool = False,
    resume: bool = True,
    on_report: Callable[[int, GenerationReport], None] | None = None,
) -> RunOutcome:
    spec = run.spec
    output = run.output_uri()
    grid = Grid(spec.grid.rows, spec.grid.cols, spec.grid.neighbourhood)
    dataset = load_dataset(spec.dataset, spec.seed)
    exchange = InProcessExchange()
    engines = [
        CellEngine(run, i, exchange.provider([n.index for n in grid.neighbours(i)]), dataset)
        for i in range(grid.size)
    ]
    outcome = RunOutcome(output, {}, engines, [[] for _ in engines])
    for engine in engines:
        if resume and restore_latest(engine, cell_uri(output, engine.index)):
            outcome.resumed_at[engine.index] = engine.generation
            log.info("cell %d resumed at generation %d", engine.index, engine.generation)
        engine.publish_centre()
    exchange.commit()

    total = grid.size * spec.generations
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        done = sum(min(e.generation, spec.generations) for e in engines)
        task = progress.add_task("cell-generations", total=total, completed=done, status="")
        while any(e.generation < spec.generations for e in engines):
            for engine in engines:
                if engine.generation >= spec.generations:
                    continue
                report = engine.step()
                outcome.reports[engine.index].append(report)
                if on_report:
                    on_report(engine.index, report)
                if report.generation % spec.checkpoint.every == 0 or (
                    report.generation == spec.generations
                ):
                    save_checkpoint(engine, cell_uri(output, engine.index), spec.checkpoint.keep)
                progress.update(task, advance=1, status=_status(engine.index, report))
            exchange.commit()

    for engine in engines:
        finish_cell(engine, dataset, cell_uri(output, engine.index))
    outcome.manifest = assemble_ensemble(run, output)
    write_preview(output, run.metadata.name)
    return outcome


def write_preview(output_uri: str, title: str) -> None:
    """<output>/samples.png: what the final ensemble draws."""
    ensemble = load_ensemble(storage.join(output_uri, "ensemble"))
    count = 1000 if len(ensemble.manifest["data"]["shape"]) == 1 else 64
    write_samples(
        storage.join(output_uri, "samples.png"),
        ensemble.sample(count),
        ensemble.manifest["data"],
        title=f"{title}: ensemble of cell {ensemble.manifest['bestCell']}",
    )


def _status(index: int, report: GenerationReport) -> str:
    score = "" if report.mixture_score is None else f" score {report.mixture_score:.3f}"
    return (
        f"cell {index} gen {report.generation} "
        f"G {report.generator_loss:.3f} D {report.discriminator_loss:.3f}{score}"
    )
