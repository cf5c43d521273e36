"""Run every cell of a grid in one process, round-robin, through an in-process exchange.

For tests and debugging: the same engine, checkpoints and result files as the cell
processes, without a network. Each round every cell runs one generation (stacked cells,
`training.stacking`, together, each in a thread); states become visible to neighbours at
the end of the round, so results do not depend on cell order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from lipizzaner_core.ensemble import assemble_ensemble
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun

from lipizzaner_cell.algorithm.devices import resolve_device
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.neighbourhood import InProcessExchange
from lipizzaner_cell.algorithm.report import GenerationReport, status_line
from lipizzaner_cell.algorithm.stacking import TrainingStack, training_stacks
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.ensembles.samples import CURVES, load_ensemble, preview_title, write_samples
from lipizzaner_cell.executors.progress import progress_bar
from lipizzaner_cell.runtime.driver import CellDriver
from lipizzaner_cell.scores.references import ReferenceCache
from lipizzaner_cell.scores.yardsticks import yardsticks

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    output_uri: str
    manifest: dict[str, Any]
    engines: list[CellEngine]
    reports: list[list[GenerationReport]] = field(default_factory=list)
    resumed_at: dict[int, int] = field(default_factory=dict)


def run_in_process(
    run: LipizzanerRun,
    *,
    show_progress: bool = False,
    resume: bool = True,
    on_report: Callable[[int, GenerationReport], None] | None = None,
) -> RunOutcome:
    spec = run.spec
    layout = RunLayout.of(run)
    grid = spec.grid.topology()
    dataset = load_dataset(spec.dataset, spec.seed, layout.storage)
    exchange = InProcessExchange()
    device = resolve_device(spec.training.device)
    stacks = training_stacks(spec, range(grid.size), device, torch.get_num_threads())
    drivers = [
        CellDriver(
            CellEngine(
                run,
                i,
                exchange.provider([n.index for n in grid.neighbours(i)]),
                dataset,
                storage=layout.storage,
                references=ReferenceCache.of(layout),
                stack=stacks.get(i),
            ),
            layout.cell(i),
        )
        for i in range(grid.size)
    ]
    engines = [d.engine for d in drivers]
    outcome = RunOutcome(layout.output, {}, engines, [[] for _ in engines])
    for driver in drivers:
        if resume and driver.resume():
            outcome.resumed_at[driver.engine.index] = driver.engine.generation
            log.info(
                "cell %d resumed at generation %d", driver.engine.index, driver.engine.generation
            )
        driver.engine.publish_centre()
    exchange.commit()

    with progress_bar(show_progress) as progress:
        done = sum(min(e.generation, spec.generations) for e in engines)
        task = progress.add_task(
            "cell-generations", total=grid.size * spec.generations, completed=done, status=""
        )
        while not all(d.done for d in drivers):
            for driver, report in advance_round(drivers):
                outcome.reports[driver.engine.index].append(report)
                if on_report:
                    on_report(driver.engine.index, report)
                progress.update(task, advance=1, status=_status(driver.engine.index, report))
            exchange.commit()
        started = time.perf_counter()
        for driver in drivers:
            scoring = (
                f"final scoring: cell {driver.engine.index}, {spec.score.final_samples} samples"
            )
            progress.update(task, status=scoring)
            driver.finish(dataset)
        log.info("final scoring of %d cells took %.1f s", grid.size, time.perf_counter() - started)
    outcome.manifest = assemble_ensemble(run, layout)
    write_preview(layout, run)
    return outcome


def advance_round(drivers: list[CellDriver]) -> list[tuple[CellDriver, GenerationReport]]:
    """One generation of every unfinished cell, in cell order; a stack's cells together,
    each in its own thread (they meet at step 4)."""
    pending = [d for d in drivers if not d.done]
    groups: dict[int, list[CellDriver]] = {}
    for driver in pending:
        stack = driver.engine.stack
        groups.setdefault(id(driver) if stack is None else id(stack), []).append(driver)
    reports: dict[int, GenerationReport] = {}
    threads = torch.get_num_threads()  # the process's count, in the stacked cells' threads too
    for group in groups.values():
        stack = group[0].engine.stack
        if stack is None:
            reports[id(group[0])] = group[0].advance()
            continue
        stack.expect(d.engine.index for d in group)

        def advance(driver: CellDriver, stack: TrainingStack = stack) -> GenerationReport:
            torch.set_num_threads(threads)
            with stack.membership(driver.engine.index):
                return driver.advance()

        with ThreadPoolExecutor(len(group), thread_name_prefix="stacked cell") as pool:
            for driver, report in zip(group, pool.map(advance, group), strict=True):
                reports[id(driver)] = report
    return [(driver, reports[id(driver)]) for driver in pending]


def write_preview(layout: RunLayout, run: LipizzanerRun) -> None:
    """<output>/samples.png: what the final ensemble draws, with its score between what
    real data and noise score."""
    ensemble = load_ensemble(layout.ensemble, layout.storage)
    shape = ensemble.manifest["data"]["shape"]
    count = 1000 if len(shape) == 1 else 64
    shown = min(count, CURVES) if len(shape) == 2 else count  # sequences: a few curves
    write_samples(
        layout.preview,
        ensemble.sample(count),
        ensemble.manifest["data"],
        title=preview_title(run.metadata.name, ensemble.manifest, shown, yardsticks(run, layout)),
        storage=layout.storage,
    )


def _status(index: int, report: GenerationReport) -> str:
    return f"cell {index} gen {report.generation} {status_line(report)}"
