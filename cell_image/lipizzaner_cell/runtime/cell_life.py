"""One cell's life in its process: it serves its centre first (so neighbours and probes
reach it at once), resumes from its latest checkpoint, waits a bounded time for its
neighbours' first states, trains, scores its mixture and lingers while neighbours still
pull from it; its status board says where it is, and its log is kept in the output."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lipizzaner_core.contract import CANNOT_START, ExitCode
from lipizzaner_core.layout import CellLayout, RunLayout
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.tls import TlsMaterial

from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.report import GenerationReport, figures, status_line
from lipizzaner_cell.algorithm.stacking import TrainingStack
from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.exchange.client import GrpcNeighbourhood
from lipizzaner_cell.exchange.server import CellService, CentreBoard, start_server
from lipizzaner_cell.runtime.driver import CellDriver
from lipizzaner_cell.runtime.log_copy import OutputLog
from lipizzaner_cell.runtime.metrics import CellMetrics, MetricsEndpoint
from lipizzaner_cell.runtime.peers import cell_port, neighbour_pullers
from lipizzaner_cell.scores.references import ReferenceCache

log = logging.getLogger("lipizzaner.cell")
Phase = cell_pb2.CellStatus.Phase

# One cell of a process scores its final mixture at a time: 10,000 samples and their
# features are a cell's largest transient memory, and its siblings' would add up.
FINISHING = threading.Lock()


class CellStatusBoard:
    """What GetStatus answers: rebuilt from the newest report, read without locks."""

    def __init__(self, index: int, generations: int, restarts: int) -> None:
        self.message = cell_pb2.CellStatus(
            cell=index, phase=Phase.STARTING, generations=generations, restarts=restarts
        )

    def update(self, **fields: object) -> None:
        message = cell_pb2.CellStatus()
        message.CopyFrom(self.message)
        for name, value in fields.items():
            if name == "scores":
                message.scores.clear()
                message.scores.update(value)
            elif name == "missing_neighbours":
                del message.missing_neighbours[:]
                message.missing_neighbours.extend(value)
            else:
                setattr(message, name, value)
        self.message = message

    def report(
        self, engine: CellEngine, report: GenerationReport, neighbourhood: GrpcNeighbourhood
    ) -> None:
        scores = {} if report.mixture_score is None else {"mixture": report.mixture_score}
        if report.accuracy is not None:
            scores["accuracy"] = report.accuracy
        self.update(
            phase=Phase.TRAINING,
            generation=report.generation,
            **{f.field: value for f, value in figures(report).items() if f.on_wire},
            scores=scores,
            missing_neighbours=neighbourhood.missing(),
            rejected_states=neighbourhood.rejected(),
            offspring_accepted=engine.offspring_accepted,
            offspring_offered=engine.offspring_offered,
        )


def finished_cell(cell: CellLayout, generations: int) -> bool:
    """Whether a cell's result says it has finished the run's generations."""
    if not cell.storage.exists(cell.result):
        return False
    return cell.storage.read_json(cell.result)["generation"] >= generations


def start_metrics(
    run: LipizzanerRun,
    args: argparse.Namespace,
    cell: int,
    endpoint: MetricsEndpoint | None,
    tls: TlsMaterial | None,
) -> CellMetrics | None:
    if endpoint is None:
        return None
    grid = run.spec.grid.topology()
    row, col = grid.position(cell)
    metrics = CellMetrics(run.metadata.name, cell, row, col, args.restarts, endpoint)
    metrics.prepare_directions([n.direction for n in grid.neighbours(cell)])
    metrics.tls.set(tls is not None)
    return metrics


def train(
    driver: CellDriver,
    neighbourhood: GrpcNeighbourhood,
    status: CellStatusBoard,
    metrics: CellMetrics | None,
    stop: Stop,
) -> None:
    """Generations until the spec's last, or until a stop (then a checkpoint)."""
    engine, spec = driver.engine, driver.spec
    score_name = engine.scorer.objective_name if engine.scorer else None
    while not driver.done and not stop.is_set():
        started = time.perf_counter()
        report = driver.advance(should_stop=stop.is_set)
        status.report(engine, report, neighbourhood)
        if metrics is not None:
            metrics.record_generation(
                report, time.perf_counter() - started, score_name, engine.mixture.weights
            )
        log.info(
            "generation %d/%d: %s", report.generation, spec.generations, status_line(report, 4)
        )
    if stop.is_set():
        driver.checkpoint()
        log.info(
            "stopped by %s at generation %d, checkpoint written", stop.reason, engine.generation
        )


class SharedData:
    """The run's dataset, loaded once by the first cell of the process that asks."""

    def __init__(self, load: Callable[[], Dataset]) -> None:
        self._load, self._lock = load, threading.Lock()
        self._dataset: Dataset | None = None

    def get(self) -> Dataset:
        with self._lock:
            if self._dataset is None:
                self._dataset = self._load()
            return self._dataset


@dataclass(frozen=True)
class ProcessShared:
    """What the cells of one process share: the run's storage, data, metrics endpoint,
    certificates, the stop signal (SIGTERM, or a sibling's failure), each cell's board
    (its siblings read its centre there, without gRPC) and, with `training.stacking`,
    each cell's training stack."""

    layout: RunLayout
    data: SharedData
    endpoint: MetricsEndpoint | None
    tls: TlsMaterial | None
    stop: Stop
    boards: dict[int, CentreBoard] = field(default_factory=dict)
    stacks: dict[int, TrainingStack] = field(default_factory=dict)


class Stop(threading.Event):
    """The cells' stop request, and why it came (for their logs)."""

    reason = "a stop request"

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
        self.set()


def run_cell(run: LipizzanerRun, args: argparse.Namespace, cell: int, shared: ProcessShared) -> int:
    """One cell's life in its own thread, its log lines kept in the run's output."""
    root = logging.getLogger()
    layout = shared.layout.cell(cell)
    attempt = args.attempt if args.attempt is not None else layout.next_attempt()
    kept = OutputLog(
        shared.layout.storage,
        layout.log(attempt),
        root.handlers[0].formatter if root.handlers else None,
    )
    mine = threading.current_thread().name
    kept.addFilter(lambda r: r.threadName == mine or not str(r.threadName).startswith("cell "))
    root.addHandler(kept)
    try:
        return serve_and_train(run, args, cell, shared, kept)
    except Exception:
        log.exception("failed")  # into the kept log too
        return ExitCode.FAILED
    finally:
        root.removeHandler(kept)
        kept.save()


def serve_and_train(
    run: LipizzanerRun,
    args: argparse.Namespace,
    cell: int,
    shared: ProcessShared,
    kept: OutputLog,
) -> int:
    """The cell's life: serve, resume, wait for neighbours, train, finish, linger."""
    spec, layout, tls, stop = run.spec, shared.layout, shared.tls, shared.stop
    status = CellStatusBoard(cell, spec.generations, args.restarts)
    metrics = start_metrics(run, args, cell, shared.endpoint, tls)
    board = shared.boards.setdefault(cell, CentreBoard())
    service = CellService(
        board,
        lambda: status.message,
        identity=None if tls is None else tls.identity,
        on_refused=None if metrics is None else metrics.record_refused,
    )
    server, _ = start_server(
        service, cell_port(run, args, args.grpc_port_base, cell), args.listen_host, tls
    )
    neighbourhood = None
    stack = shared.stacks.get(cell)
    try:
        dataset = shared.data.get()
        pullers = neighbour_pullers(run, args, cell, dataset, metrics, tls, shared.boards)
        wait = spec.exchange.neighbour_wait_seconds
        neighbourhood = GrpcNeighbourhood(board, pullers, wait, stop)
        engine = CellEngine(
            run,
            cell,
            neighbourhood,
            dataset,
            storage=layout.storage,
            references=ReferenceCache.of(layout),
            stack=stack,
        )

        def on_checkpoint(seconds: float) -> None:
            kept.save()
            if metrics is not None:
                metrics.checkpoint.observe(seconds)

        driver = CellDriver(engine, layout.cell(cell), on_checkpoint)
        if driver.resume():
            log.info("resumed from its checkpoint at generation %d", engine.generation)
        engine.publish_centre()
        neighbourhood.start()
        missing = neighbourhood.wait_for_first_states(spec.exchange.first_state_timeout_seconds)
        if missing:
            log.warning("no state yet from neighbours %s; training without them", missing)
        status.update(phase=Phase.TRAINING, generation=engine.generation)
        train(driver, neighbourhood, status, metrics, stop)
        if stack is not None:
            stack.leave(cell)  # its stacked siblings train on without it
        if not stop.is_set():
            finish_and_linger(driver, dataset, neighbourhood, status, layout, stop)
        return ExitCode.OK
    except (FileNotFoundError, KeyError, ValueError) as exc:
        log.error("%s%s", CANNOT_START, str(exc).strip("'\""))
        status.update(phase=Phase.FAILED)
        return ExitCode.BAD_INPUT
    finally:
        if stack is not None:
            stack.leave(cell)  # however it ended: never keep its siblings waiting
        if neighbourhood is not None:
            neighbourhood.close()
        server.stop(grace=1.0)


def finish_and_linger(
    driver: CellDriver,
    dataset: Dataset,
    neighbourhood: GrpcNeighbourhood,
    status: CellStatusBoard,
    layout: RunLayout,
    stop: Stop,
) -> None:
    """Final scoring and the result; then serve the centre until the neighbours that
    still pull it have finished too."""
    spec = driver.spec
    status.update(phase=Phase.FINISHING)
    with FINISHING:
        started = time.perf_counter()
        log.info("final scoring: %d samples of the mixture", spec.score.final_samples)
        result = driver.finish(dataset, missing_neighbours=neighbourhood.missing())
        log.info("final scoring took %.1f s", time.perf_counter() - started)
    status.update(phase=Phase.SUCCEEDED, scores=result["scores"])
    left = neighbourhood.linger(
        spec.generations,
        spec.exchange.first_state_timeout_seconds,
        stop,
        finished=lambda other: finished_cell(layout.cell(other), spec.generations),
    )
    if left:
        log.warning("leaving before neighbours %s finished", left)
