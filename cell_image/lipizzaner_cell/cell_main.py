"""`lipizzaner-cell`: run ONE cell of a grid as its own process (a local process or a pod).

Order matters: the gRPC server starts first (so neighbours and probes can reach the cell
at once), the cell resumes from its latest checkpoint if the output has one, waits a
bounded time for its neighbours' first states, then trains.
Exit codes: 0 success (also after SIGTERM, once the checkpoint is written), 1 failure,
2 bad configuration.
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
from lipizzaner_operator import storage
from lipizzaner_operator.spec import LipizzanerRun, SpecError, load_run
from lipizzaner_operator.topology import Grid

from lipizzaner_cell.checkpoint import restore_latest, save_checkpoint
from lipizzaner_cell.datasets import load_dataset
from lipizzaner_cell.engine import CellEngine, GenerationReport
from lipizzaner_cell.metrics import CellMetrics
from lipizzaner_cell.results import finish_cell
from lipizzaner_cell.selection import best
from lipizzaner_cell.wire import cell_pb2
from lipizzaner_cell.wire.client import GrpcNeighbourhood, NeighbourPuller, PullPolicy
from lipizzaner_cell.wire.codec import architecture_of
from lipizzaner_cell.wire.server import CellService, CentreBoard, start_server

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2
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


def checkpoint(engine: CellEngine, cell_uri: str, keep: int, metrics: CellMetrics | None) -> None:
    started = time.perf_counter()
    save_checkpoint(engine, cell_uri, keep)
    if metrics is not None:
        metrics.checkpoint.observe(time.perf_counter() - started)


def run_cell(run: LipizzanerRun, args: argparse.Namespace) -> int:
    spec = run.spec
    grid = Grid(spec.grid.rows, spec.grid.cols, spec.grid.neighbourhood)
    if not 0 <= args.cell < grid.size:
        log.error("--cell %d is outside the %dx%d grid", args.cell, grid.rows, grid.cols)
        return EXIT_BAD_CONFIG
    storage.configure_s3(spec.output.endpoint_url)
    output = args.output or run.output_uri()
    cell_uri = storage.join(output, "cells", str(args.cell))
    status = CellStatusBoard(args.cell, spec.generations, args.restarts)
    metrics = None
    if args.metrics_port is not None:
        row, col = grid.position(args.cell)
        metrics = CellMetrics(run.metadata.name, args.cell, row, col, args.restarts)
        metrics.serve(args.metrics_port + args.port_stride * args.cell, args.listen_host)
    board = CentreBoard()
    server, _ = start_server(
        CellService(board, lambda: status.message),
        args.grpc_port_base + args.port_stride * args.cell,
        host=args.listen_host,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    neighbourhood = None
    try:
        dataset = load_dataset(spec.dataset, spec.seed)
        neighbours = grid.neighbours(args.cell)
        if metrics is not None:
            metrics.prepare_directions([n.direction for n in neighbours])
        # The provider is filled in below, once the engine knows its architectures.
        neighbourhood = GrpcNeighbourhood(board, {})
        engine = CellEngine(run, args.cell, neighbourhood, dataset)
        policy = PullPolicy(max_state_bytes=spec.exchange.max_state_megabytes << 20)
        generator = architecture_of(best(engine.generators).net.state_dict())
        discriminator = architecture_of(best(engine.discriminators).net.state_dict())
        neighbourhood.pullers = {
            n.index: NeighbourPuller(
                n.index,
                peer_address(
                    args.peer_template,
                    run.metadata.name,
                    n.index,
                    args.grpc_port_base,
                    args.port_stride,
                ),
                generator,
                discriminator,
                policy,
                on_pull=None if metrics is None else partial(metrics.record_pull, n.direction),
            )
            for n in neighbours
        }
        if restore_latest(engine, cell_uri):
            log.info(
                "cell %d resumed from its checkpoint at generation %d", args.cell, engine.generation
            )
        engine.publish_centre()
        neighbourhood.start()
        missing = neighbourhood.wait_for_first_states(spec.exchange.first_state_timeout_seconds)
        if missing:
            log.warning(
                "cell %d: no state yet from neighbours %s; training without them",
                args.cell,
                missing,
            )
        status.update(phase=Phase.TRAINING, generation=engine.generation)
        score_name = engine.scorer.objective_name if engine.scorer else None
        while engine.generation < spec.generations and not stop.is_set():
            started = time.perf_counter()
            report = engine.step(should_stop=stop.is_set)
            status.report(engine, report, neighbourhood)
            if metrics is not None:
                metrics.record_generation(
                    report, time.perf_counter() - started, score_name, engine.mixture_weights
                )
            if report.generation % spec.checkpoint.every == 0 or (
                report.generation == spec.generations
            ):
                checkpoint(engine, cell_uri, spec.checkpoint.keep, metrics)
            log.info(
                "cell %d generation %d/%d: G %.4f D %.4f%s",
                args.cell,
                report.generation,
                spec.generations,
                report.generator_loss,
                report.discriminator_loss,
                "" if report.mixture_score is None else f" score {report.mixture_score:.4f}",
            )
        if stop.is_set():
            checkpoint(engine, cell_uri, spec.checkpoint.keep, metrics)
            log.info(
                "cell %d stopped by SIGTERM at generation %d, checkpoint written",
                args.cell,
                engine.generation,
            )
            return EXIT_OK
        status.update(phase=Phase.FINISHING)
        result = finish_cell(engine, dataset, cell_uri, missing_neighbours=neighbourhood.missing())
        status.update(phase=Phase.SUCCEEDED, scores=result["scores"])
        return EXIT_OK
    except (FileNotFoundError, KeyError, ValueError) as exc:
        log.error("cell %d cannot start: %s", args.cell, exc)
        status.update(phase=Phase.FAILED)
        return EXIT_BAD_CONFIG
    finally:
        if neighbourhood is not None:
            neighbourhood.close()
        server.stop(grace=1.0)


# flag, environment variable, type, default, help: every flag can come from its variable.
FLAGS: list[tuple[str, str, type, str | None, str]] = [
    ("--run-spec", "LIPIZZANER_RUN_SPEC", str, None, "LipizzanerRun manifest file"),
    ("--cell", "LIPIZZANER_CELL", int, None, "this cell's index, row-major"),
    (
        "--peer-template",
        "LIPIZZANER_PEER_TEMPLATE",
        str,
        "127.0.0.1:{port}",
        "a peer's address from {run}, {index}, {port}",
    ),
    ("--grpc-port-base", "LIPIZZANER_GRPC_PORT", int, "50051", "gRPC port of cell 0"),
    (
        "--port-stride",
        "LIPIZZANER_PORT_STRIDE",
        int,
        "0",
        "cell i listens on base + stride * i: 1 on one machine, 0 in pods",
    ),
    (
        "--metrics-port",
        "LIPIZZANER_METRICS_PORT",
        int,
        None,
        "serve /metrics on this port (+ stride * cell, like gRPC); default: no metrics",
    ),
    ("--listen-host", "LIPIZZANER_LISTEN_HOST", str, "0.0.0.0", "address to listen on"),
    ("--output", "LIPIZZANER_OUTPUT", str, None, "override spec.output.uri"),
    (
        "--threads",
        "LIPIZZANER_THREADS",
        int,
        None,
        "torch intra-op threads (default: the container's CPU limit, else all cores)",
    ),
    (
        "--restarts",
        "LIPIZZANER_RESTARTS",
        int,
        "0",
        "how often this cell was restarted (reported in its status)",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipizzaner-cell",
        description="Run one Lipizzaner cell (used by `lipizzaner run` and by the operator's "
        "pods). Every flag can also come from the LIPIZZANER_* variable named in its help.",
    )
    for flag, variable, kind, default, text in FLAGS:
        shown = f", default {default}" if default is not None else ""
        parser.add_argument(
            flag,
            type=kind,
            default=os.environ.get(variable, default),
            help=f"{text} [{variable}{shown}]",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s cell {args.cell} %(message)s")
    if args.run_spec is None or args.cell is None:
        log.error("--run-spec and --cell are required")
        return EXIT_BAD_CONFIG
    try:
        run = load_run(args.run_spec)
    except (FileNotFoundError, SpecError) as exc:
        log.error("bad run spec %s: %s", args.run_spec, exc)
        return EXIT_BAD_CONFIG
    torch.set_num_threads(args.threads or default_threads())
    try:
        return run_cell(run, args)
    except Exception:
        log.exception("cell %d failed", args.cell)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
