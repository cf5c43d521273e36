"""`lipizzaner-cell`: run the cells of one process of a grid (a local process or a pod).

A process hosts `--cells` (one cell, or `spec.cell.cellsPerPod` consecutive ones), each
in its own thread with its own gRPC server, checkpoints and kept log; they share torch,
the data, the classifier and one /metrics endpoint. Order matters for each cell: its gRPC
server starts first (so neighbours and probes can reach it at once), it resumes from its
latest checkpoint if the output has one, waits a bounded time for its neighbours' first
states, then trains. One cell failing stops its siblings at a checkpoint, so the process
can be restarted whole.
Exit codes (`lipizzaner_core.contract.ExitCode`): 0 success (also after SIGTERM, once the
checkpoints are written), 1 failure, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from lipizzaner_core.contract import CANNOT_START, CELL_FLAGS, ExitCode
from lipizzaner_core.layout import CellLayout, RunLayout
from lipizzaner_core.placement import group_of, parse_cells
from lipizzaner_core.spec import LipizzanerRun, SpecError, load_run
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.tls import TlsError, TlsMaterial

from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.report import GenerationReport, figures, status_line
from lipizzaner_cell.data.datasets import Dataset, load_dataset
from lipizzaner_cell.exchange.client import GrpcNeighbourhood
from lipizzaner_cell.exchange.server import CellService, CentreBoard, start_server
from lipizzaner_cell.runtime.driver import CellDriver
from lipizzaner_cell.runtime.log_copy import OutputLog
from lipizzaner_cell.runtime.metrics import CellMetrics, MetricsEndpoint
from lipizzaner_cell.runtime.peers import cell_port, neighbour_pullers
from lipizzaner_cell.scores.references import ReferenceCache

log = logging.getLogger("lipizzaner.cell")
Phase = cell_pb2.CellStatus.Phase
LOG_FORMAT = "%(asctime)s %(threadName)s %(message)s"  # a cell's thread is named "cell <i>"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # ISO 8601


def default_threads(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The container's CPU limit (cgroup v2 quota / period, rounded down), else all cores."""
    try:
        quota, period = Path(cgroup_cpu_max).read_text().split()
        if quota != "max":
            return max(1, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    return os.cpu_count() or 1


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
# One cell of a process scores its final mixture at a time: 10,000 samples and their
# features are a cell's largest transient memory, and its siblings' would add up.
FINISHING = threading.Lock()


def fix_mmap_threshold(size: int) -> bool:
    """Keep allocations of `size` bytes and up out of glibc's heaps, for good, and let the
    heaps keep up to twice that free at their top.

    glibc raises its threshold to the largest block freed so far (up to 32 MB), so after a
    cell's first big scoring tensors every later large buffer (decoded states, samples,
    embeddings) comes from a per-thread heap that keeps it when freed; a process of nine
    cells then held twice the memory (`docs/benchmarks.md`, "Memory per cell"). A fixed
    threshold also stops glibc's matching rise of the trim threshold (twice the mmap
    threshold), which would stay at 128 KiB: every block under `size` freed at a heap's top
    was then handed back, and came back as fresh pages, faulted in one by one (a pull's
    1 MiB messages, every time: 1.6x slower at 10 MB). False where it does not apply
    (size 0, or not glibc)."""
    if size <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, size) and libc.mallopt(M_TRIM_THRESHOLD, 2 * size))


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
                report, time.perf_counter() - started, score_name, engine.mixture_weights
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
    certificates and the stop signal (SIGTERM, or a sibling's failure)."""

    layout: RunLayout
    data: SharedData
    endpoint: MetricsEndpoint | None
    tls: TlsMaterial | None
    stop: Stop


class Stop(threading.Event):
    """The cells' stop request, and why it came (for their logs)."""

    reason = "a stop request"

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
        self.set()


def stop_when_orphaned(parent: int, stop: Stop, every: float = 1.0) -> None:
    """Stop the cells (at a checkpoint, as SIGTERM does) once the launcher `parent` is
    gone, so a killed `lipizzaner run` never leaves cells training on their own."""
    while not stop.wait(every):
        if os.getppid() != parent:
            log.warning("the launcher (pid %d) is gone; stopping at a checkpoint", parent)
            stop.request(f"the launcher's end (pid {parent})")


def run_cells(run: LipizzanerRun, args: argparse.Namespace, cells: range) -> int:
    """Every cell of this process in its own thread; the worst exit code of them."""
    try:
        tls = None if args.tls_dir is None else TlsMaterial.read(args.tls_dir)
    except TlsError as exc:
        log.error("bad TLS material: %s", exc)
        return ExitCode.BAD_INPUT
    layout = RunLayout.of(run, args.output)
    problem = layout.storage.unusable_because(layout.output)
    if problem is not None:
        log.error("%sspec.output.uri %s: %s", CANNOT_START, layout.output, problem)
        return ExitCode.BAD_INPUT
    data = SharedData(partial(load_dataset, run.spec.dataset, run.spec.seed, layout.storage))
    endpoint = None
    if args.metrics_port is not None:  # one /metrics for the process: its first cell's port
        endpoint = MetricsEndpoint()
        endpoint.serve(cell_port(run, args, args.metrics_port, cells.start), args.listen_host)
    shared = ProcessShared(layout, data, endpoint, tls, Stop())
    signal.signal(signal.SIGTERM, lambda *_: shared.stop.request("SIGTERM"))
    if args.parent_pid is not None:
        watch = partial(stop_when_orphaned, args.parent_pid, shared.stop)
        threading.Thread(target=watch, name="parent watch", daemon=True).start()
    codes: dict[int, int] = {}
    threads = torch.get_num_threads()

    def life(cell: int) -> None:
        torch.set_num_threads(threads)  # the process's count, in this thread too
        codes[cell] = run_cell(run, args, cell, shared)
        if codes[cell] != ExitCode.OK:
            # The siblings checkpoint and stop: the process restarts whole.
            shared.stop.request(f"cell {cell}'s failure")

    workers = [threading.Thread(target=life, args=(c,), name=f"cell {c}") for c in cells]
    for worker in workers:
        worker.start()
    for worker in workers:
        while worker.is_alive():  # in short waits, so SIGTERM's handler runs
            worker.join(0.5)
    return max(codes.values(), key=_severity, default=ExitCode.FAILED)


def _severity(code: int) -> int:
    """Bad configuration outranks a failure, which outranks success."""
    return {int(ExitCode.OK): 0, int(ExitCode.FAILED): 1}.get(code, 2)


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
    board = CentreBoard()
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
    try:
        dataset = shared.data.get()
        pullers = neighbour_pullers(run, args, cell, dataset, metrics, tls)
        neighbourhood = GrpcNeighbourhood(board, pullers)
        engine = CellEngine(
            run,
            cell,
            neighbourhood,
            dataset,
            storage=layout.storage,
            references=ReferenceCache.of(layout),
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
        if not stop.is_set():
            finish_and_linger(driver, dataset, neighbourhood, status, layout, stop)
        return ExitCode.OK
    except (FileNotFoundError, KeyError, ValueError) as exc:
        log.error("%s%s", CANNOT_START, str(exc).strip("'\""))
        status.update(phase=Phase.FAILED)
        return ExitCode.BAD_INPUT
    finally:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipizzaner-cell",
        description="Run one Lipizzaner cell (used by `lipizzaner run` and by the operator's "
        "pods). Every flag can also come from the LIPIZZANER_* variable named in its help.",
    )
    for flag in CELL_FLAGS.values():
        shown = f", default {flag.default}" if flag.default is not None else ""
        parser.add_argument(
            flag.flag,
            type=flag.kind,
            choices=flag.choices,
            default=os.environ.get(flag.variable, flag.default),
            help=f"{flag.help} [{flag.variable}{shown}]",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=DATE_FORMAT)
    if args.run_spec is None or args.cells is None:
        log.error("--run-spec and --cells are required")
        return ExitCode.BAD_INPUT
    try:
        run = load_run(args.run_spec)
    except (FileNotFoundError, SpecError) as exc:
        log.error("bad run spec %s: %s", args.run_spec, exc)
        return ExitCode.BAD_INPUT
    try:
        cells = hosted_cells(run, args)
    except ValueError as exc:
        log.error("%s", exc)
        return ExitCode.BAD_INPUT
    torch.set_num_threads(args.threads or default_threads())
    fix_mmap_threshold(args.mmap_threshold)
    try:
        return run_cells(run, args, cells)
    except Exception:
        log.exception("failed")
        return ExitCode.FAILED


def hosted_cells(run: LipizzanerRun, args: argparse.Namespace) -> range:
    """`--cells`, checked against the grid (and, for ports by slot, against one pod)."""
    choices = CELL_FLAGS["port_by"].choices or ()
    if args.port_by not in choices:
        raise ValueError(f"--port-by must be one of {', '.join(choices)}, got {args.port_by!r}")
    cells = parse_cells(args.cells)
    grid = run.spec.grid
    if cells.stop > grid.size:
        raise ValueError(f"--cells {args.cells} is outside the {grid.rows}x{grid.cols} grid")
    group = group_of(cells.start, grid.size, run.spec.cell.cells_per_pod)
    if args.port_by == "slot" and cells.stop > group.stop:
        raise ValueError(
            f"--cells {args.cells} spans pods of spec.cell.cellsPerPod "
            f"{run.spec.cell.cells_per_pod}: their ports by slot would collide"
        )
    return cells


if __name__ == "__main__":
    sys.exit(main())
