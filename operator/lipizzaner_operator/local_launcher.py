"""`lipizzaner run` on one machine: one `lipizzaner-cell` process per grid cell.

The local twin of the operator: start the cells, watch them through GetStatus, restart a
crashed cell from its checkpoint (up to spec.failurePolicy.maxRestartsPerCell), stop them
all cleanly on Ctrl-C, and assemble the ensemble when every cell has succeeded.
Torch-free: the cells do the training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lipizzaner_operator import storage
from lipizzaner_operator.ensemble import assemble_ensemble
from lipizzaner_operator.spec import LipizzanerRun, dump_run

log = logging.getLogger(__name__)
EXIT_BAD_CONFIG = 2
STATUS_POLL_SECONDS = 0.5


class RunFailed(RuntimeError):
    pass


@dataclass
class LocalCell:
    index: int
    command: list[str]
    env: dict[str, str]
    log_path: Path
    restarts: int = 0
    process: subprocess.Popen | None = None
    succeeded: bool = False
    status: object | None = None
    history: list[int] = field(default_factory=list)  # exit codes of earlier attempts

    def start(self) -> None:
        env = {**self.env, "LIPIZZANER_RESTARTS": str(self.restarts)}
        with self.log_path.open("a") as log_file:
            self.process = subprocess.Popen(
                self.command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the cells
            )

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])


def free_port_block(count: int, attempts: int = 50) -> int:
    """A base port such that base .. base + count - 1 are all free on 127.0.0.1."""
    for _ in range(attempts):
        base = random.randint(20_000, 60_000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RunFailed(f"found no block of {count} free ports")


def cell_command(
    spec_path: Path, cell: int, port_base: int, threads: int, metrics_port_base: int | None = None
) -> list[str]:
    """The command line of one local cell process: cell i listens on port_base + i
    (and serves /metrics on metrics_port_base + i)."""
    metrics = [] if metrics_port_base is None else ["--metrics-port", str(metrics_port_base)]
    return [
        sys.executable,
        "-m",
        "lipizzaner_cell",
        "--run-spec",
        str(spec_path),
        "--cell",
        str(cell),
        "--grpc-port-base",
        str(port_base),
        "--port-stride",
        "1",
        "--listen-host",
        "127.0.0.1",
        "--threads",
        str(threads),
        *metrics,
    ]


def threads_per_cell(cells: int) -> int:
    """Cores shared evenly: contending torch threads cost far more than they bring."""
    return max(1, (os.cpu_count() or 1) // cells)


class LocalRun:
    def __init__(self, run: LipizzanerRun, workdir: Path, threads: int | None = None) -> None:
        self.run = run
        self.output = run.output_uri()
        grid = run.spec.grid
        count = grid.rows * grid.cols
        spec_path = workdir / "run.yaml"
        spec_path.write_text(yaml.safe_dump(dump_run(run), sort_keys=False))
        base_port = free_port_block(2 * count)
        self.ports = [base_port + i for i in range(count)]
        self.metrics_ports = [base_port + count + i for i in range(count)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.cells = [
            LocalCell(
                index=i,
                command=[
                    *cell_command(
                        spec_path,
                        i,
                        base_port,
                        threads or threads_per_cell(count),
                        metrics_port_base=base_port + count,
                    ),
                    *("--output", self.output),
                ],
                env=env,
                log_path=workdir / f"cell-{i}.log",
            )
            for i in range(count)
        ]
        from lipizzaner_cell.wire.channels import channel

        self._channels = [channel(f"127.0.0.1:{p}", backoff_max=1.0) for p in self.ports]

    def start(self) -> None:
        for cell in self.cells:
            cell.start()

    def tick(self) -> bool:
        """Handle exits and refresh statuses; True once every cell has succeeded."""
        self.check_processes()
        self.poll_status()
        return all(c.succeeded for c in self.cells)

    def poll_status(self) -> None:
        from lipizzaner_cell.wire import cell_pb2, cell_pb2_grpc

        for cell, channel in zip(self.cells, self._channels, strict=True):
            if cell.succeeded:
                continue
            # Starting, restarting or gone: its exit code tells, not its silence.
            with contextlib.suppress(grpc.RpcError):
                stub = cell_pb2_grpc.CellStub(channel)
                cell.status = stub.GetStatus(cell_pb2.StatusRequest(), timeout=1.0)

    def check_processes(self) -> None:
        """Handle exits: success, a restart from the checkpoint, or the end of the run."""
        limit = self.run.spec.failure_policy.max_restarts_per_cell
        for cell in self.cells:
            if cell.succeeded or cell.process is None:
                continue
            code = cell.process.poll()
            if code is None:
                continue
            if code == 0:
                cell.succeeded = True
                continue
            cell.history.append(code)
            if code == EXIT_BAD_CONFIG:
                raise RunFailed(f"cell {cell.index}: bad configuration\n{cell.log_tail()}")
            if cell.restarts >= limit:
                raise RunFailed(
                    f"cell {cell.index} failed (exit code {code}) after {cell.restarts} "
                    f"restarts, the limit of spec.failurePolicy.maxRestartsPerCell\n"
                    f"{cell.log_tail()}"
                )
            cell.restarts += 1
            log.warning(
                "cell %d exited with code %d; restarting it from its checkpoint (%d/%d)",
                cell.index,
                code,
                cell.restarts,
                limit,
            )
            cell.start()

    def stop_all(self, grace_seconds: float = 30.0) -> None:
        """SIGTERM every running cell (each writes a checkpoint), SIGKILL stragglers."""
        running = [c.process for c in self.cells if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def run_local(
    run: LipizzanerRun, *, show_progress: bool = True, threads: int | None = None
) -> dict:
    """Train the run as local processes and return the ensemble manifest."""
    storage.configure_s3(run.spec.output.endpoint_url)
    generations = run.spec.generations
    # Kept after the run: the cells' logs live here.
    workdir = Path(tempfile.mkdtemp(prefix=f"lipizzaner-{run.metadata.name}-"))
    log.info("cell logs: %s", workdir)
    local = LocalRun(run, workdir, threads)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, disable=not show_progress) as progress:
            overall = progress.add_task(
                "all cells", total=generations * len(local.cells), status=""
            )
            per_cell = [
                progress.add_task(f"cell {c.index}", total=generations, status="starting")
                for c in local.cells
            ]
            local.start()
            while not local.tick():
                for cell, task in zip(local.cells, per_cell, strict=True):
                    done = generations if cell.succeeded else _generation(cell)
                    progress.update(task, completed=done, status=_describe(cell))
                progress.update(
                    overall,
                    completed=sum(
                        generations if c.succeeded else _generation(c) for c in local.cells
                    ),
                )
                time.sleep(STATUS_POLL_SECONDS)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping all cells (they checkpoint first)")
        local.stop_all()
        raise
    except RunFailed:
        local.stop_all()
        raise
    finally:
        local.close()
    restarts = {c.index: c.restarts for c in local.cells if c.restarts}
    if restarts:
        log.info("restarts per cell: %s", restarts)
    return assemble_ensemble(run, local.output)


def _generation(cell: LocalCell) -> int:
    return int(getattr(cell.status, "generation", 0))


def _describe(cell: LocalCell) -> str:
    if cell.succeeded:
        return "done"
    status = cell.status
    if status is None:
        return "starting"
    parts = [f"G {status.generator_loss:.3f} D {status.discriminator_loss:.3f}"]
    if "mixture" in status.scores:
        parts.append(f"score {status.scores['mixture']:.3f}")
    if cell.restarts:
        parts.append(f"restarts {cell.restarts}")
    if status.offspring_offered:
        parts.append(f"accepted {status.offspring_accepted / status.offspring_offered:.0%}")
    if status.missing_neighbours:
        parts.append(f"missing {list(status.missing_neighbours)}")
    return " ".join(parts)
