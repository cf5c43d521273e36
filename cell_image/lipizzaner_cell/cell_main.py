"""`lipizzaner-cell`: run ONE cell of a grid as its own process (a local process or a pod).

Order matters: the gRPC server starts first (so neighbours and probes can reach the cell
at once), the cell resumes from its latest checkpoint if the output has one, waits a
bounded time for its neighbours' first states, then trains.
Exit codes (`lipizzaner_core.contract.ExitCode`): 0 success (also after SIGTERM, once the
checkpoint is written), 1 failure, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch
from lipizzaner_core.contract import CELL_FLAGS, ExitCode
from lipizzaner_core.layout import CellLayout, RunLayout
from lipizzaner_core.spec import LipizzanerRun, SpecError, load_run
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.tls import TlsError, TlsMaterial

from lipizzaner_cell.datasets import load_dataset
from lipizzaner_cell.driver import CellDriver
from lipizzaner_cell.engine import CellEngine, GenerationReport
from lipizzaner_cell.individual import moment_template
from lipizzaner_cell.losses import spec_loss
from lipizzaner_cell.metrics import CellMetrics
from lipizzaner_cell.networks import build_discriminator, build_generator
from lipizzaner_cell.output_log import OutputLog
from lipizzaner_cell.references import ReferenceCache
from lipizzaner_cell.wire.client import GrpcNeighbourhood, NeighbourPuller, PullPolicy
from lipizzaner_cell.wire.codec import CentreArchitecture, architecture_of
from lipizzaner_cell.wire.server import CellService, CentreBoard, start_server

log = logging.getLogger("lipizzaner.cell")
Phase = cell_pb2.CellStatus.Phase


def default_threads(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The container's CPU limit (cgroup v2 quota / period, rounded down), else all cores."""
    try:
        quota, period = Path(cgroup_cpu_max).read_text().split()
        if quota != "max":
            return max(1, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    return os.cpu_count() or 1


def peer_address(template: str, run: str, index: int, port_base: int, stride: int) -> str:
    return template.format(run=run, index=index, port=port_base + stride * index)


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
        self.update(
            phase=Phase.TRAINING,
            generation=report.generation,
            generator_loss=report.generator_loss,
            discriminator_loss=report.discriminator_loss,
            generator_fitness=report.generator_fitness,
            discriminator_fitness=report.discriminator_fitness,
            scores=scores,
            missing_neighbours=neighbourhood.missing(),
            rejected_states=neighbourhood.rejected(),
            offspring_accepted=engine.offspring_accepted,
            offspring_offered=engine.offspring_offered,
        )


def neighbour_pullers(
    run: LipizzanerRun,
    args: argparse.Namespace,
    data_shape: tuple[int, ...],
    metrics: CellMetrics | None,
    tls: TlsMaterial | None,
) -> dict[int, NeighbourPuller]:
    """One puller per neighbour, expecting the architectures the spec gives every cell."""
    policy = PullPolicy(max_state_bytes=run.spec.exchange.max_state_megabytes << 20, tls=tls)
    network, optimizer = run.spec.network, spec_loss(run.spec.loss).optimizer
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        generator = build_generator(network.generator, network.latent_size, data_shape)
        discriminator = build_discriminator(network.discriminator, data_shape)
        expected = CentreArchitecture(
            architecture_of(generator.state_dict()),
            architecture_of(discriminator.state_dict()),
            architecture_of(moment_template(generator, optimizer)),
            architecture_of(moment_template(discriminator, optimizer)),
        )
    pullers = {}
    for neighbour in run.spec.grid.topology().neighbours(args.cell):
        address = peer_address(
            args.peer_template,
            run.metadata.name,
            neighbour.index,
            args.grpc_port_base,
            args.port_stride,
        )
        record = None if metrics is None else partial(metrics.record_pull, neighbour.direction)
        pullers[neighbour.index] = NeighbourPuller(
            neighbour.index, address, expected, policy, on_pull=record
        )
    return pullers


def finished_cell(cell: CellLayout, generations: int) -> bool:
    """Whether a cell's result says it has finished the run's generations."""
    if not cell.storage.exists(cell.result):
        return False
    return cell.storage.read_json(cell.result)["generation"] >= generations


def start_metrics(
    run: LipizzanerRun, args: argparse.Namespace, tls: TlsMaterial | None
) -> CellMetrics | None:
    if args.metrics_port is None:
        return None
    grid = run.spec.grid.topology()
    row, col = grid.position(args.cell)
    metrics = CellMetrics(run.metadata.name, args.cell, row, col, args.restarts)
    metrics.serve(args.metrics_port + args.port_stride * args.cell, args.listen_host)
    metrics.prepare_directions([n.direction for n in grid.neighbours(args.cell)])
    metrics.tls.set(tls is not None)
    return metrics


def train(
    driver: CellDriver,
    neighbourhood: GrpcNeighbourhood,
    status: CellStatusBoard,
    metrics: CellMetrics | None,
    stop: threading.Event,
) -> None:
    """Generations until the spec's last, or until SIGTERM (then a checkpoint)."""
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
        score = "" if report.mixture_score is None else f" score {report.mixture_score:.4f}"
        log.info(
            "generation %d/%d: G %.4f D %.4f%s",
            report.generation,
            spec.generations,
            report.generator_loss,
            report.discriminator_loss,
            score,
        )
    if stop.is_set():
        driver.checkpoint()
        log.info("stopped by SIGTERM at generation %d, checkpoint written", engine.generation)


def run_cell(run: LipizzanerRun, args: argparse.Namespace) -> int:
    spec = run.spec
    if not 0 <= args.cell < spec.grid.size:
        log.error("--cell %d is outside the %dx%d grid", args.cell, spec.grid.rows, spec.grid.cols)
        return ExitCode.BAD_INPUT
    try:
        tls = None if args.tls_dir is None else TlsMaterial.read(args.tls_dir)
    except TlsError as exc:
        log.error("bad TLS material: %s", exc)
        return ExitCode.BAD_INPUT
    layout = RunLayout.of(run, args.output)
    root = logging.getLogger()
    kept = OutputLog(
        layout.storage,
        layout.cell(args.cell).log(args.restarts),
        root.handlers[0].formatter if root.handlers else None,
    )
    root.addHandler(kept)
    try:
        return serve_and_train(run, args, layout, kept, tls)
    except Exception:
        log.exception("failed")  # into the kept log too
        return ExitCode.FAILED
    finally:
        root.removeHandler(kept)
        kept.save()


def serve_and_train(
    run: LipizzanerRun,
    args: argparse.Namespace,
    layout: RunLayout,
    kept: OutputLog,
    tls: TlsMaterial | None,
) -> int:
    """The cell's life: serve, resume, wait for neighbours, train, finish, linger."""
    spec = run.spec
    status = CellStatusBoard(args.cell, spec.generations, args.restarts)
    metrics = start_metrics(run, args, tls)
    board = CentreBoard()
    service = CellService(
        board,
        lambda: status.message,
        identity=None if tls is None else tls.identity,
        on_refused=None if metrics is None else metrics.record_refused,
    )
    server, _ = start_server(
        service, args.grpc_port_base + args.port_stride * args.cell, args.listen_host, tls
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    neighbourhood = None
    try:
        dataset = load_dataset(spec.dataset, spec.seed, layout.storage)
        pullers = neighbour_pullers(run, args, dataset.shape, metrics, tls)
        neighbourhood = GrpcNeighbourhood(board, pullers)
        engine = CellEngine(
            run,
            args.cell,
            neighbourhood,
            dataset,
            storage=layout.storage,
            references=ReferenceCache.of(layout),
        )

        def on_checkpoint(seconds: float) -> None:
            kept.save()
            if metrics is not None:
                metrics.checkpoint.observe(seconds)

        driver = CellDriver(engine, layout.cell(args.cell), on_checkpoint)
        if driver.resume():
            log.info("resumed from its checkpoint at generation %d", engine.generation)
        engine.publish_centre()
        neighbourhood.start()
        missing = neighbourhood.wait_for_first_states(spec.exchange.first_state_timeout_seconds)
        if missing:
            log.warning("no state yet from neighbours %s; training without them", missing)
        status.update(phase=Phase.TRAINING, generation=engine.generation)
        train(driver, neighbourhood, status, metrics, stop)
        if stop.is_set():
            return ExitCode.OK
        status.update(phase=Phase.FINISHING)
        result = driver.finish(dataset, missing_neighbours=neighbourhood.missing())
        status.update(phase=Phase.SUCCEEDED, scores=result["scores"])
        left = neighbourhood.linger(
            spec.generations,
            spec.exchange.first_state_timeout_seconds,
            stop,
            finished=lambda cell: finished_cell(layout.cell(cell), spec.generations),
        )
        if left:
            log.warning("leaving before neighbours %s finished", left)
        return ExitCode.OK
    except (FileNotFoundError, KeyError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        status.update(phase=Phase.FAILED)
        return ExitCode.BAD_INPUT
    finally:
        if neighbourhood is not None:
            neighbourhood.close()
        server.stop(grace=1.0)


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
            default=os.environ.get(flag.variable, flag.default),
            help=f"{flag.help} [{flag.variable}{shown}]",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s cell {args.cell} %(message)s")
    if args.run_spec is None or args.cell is None:
        log.error("--run-spec and --cell are required")
        return ExitCode.BAD_INPUT
    try:
        run = load_run(args.run_spec)
    except (FileNotFoundError, SpecError) as exc:
        log.error("bad run spec %s: %s", args.run_spec, exc)
        return ExitCode.BAD_INPUT
    torch.set_num_threads(args.threads or default_threads())
    try:
        return run_cell(run, args)
    except Exception:
        log.exception("failed")
        return ExitCode.FAILED


if __name__ == "__main__":
    sys.exit(main())
