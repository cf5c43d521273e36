"""`lipizzaner run` on one machine: one `lipizzaner-cell` process per group of cells.

The local twin of the operator: start a process per `spec.cell.cellsPerPod` cells (one
per cell by default), watch the cells through GetStatus, judge a process that stopped by
the one restart policy (`lipizzaner_core.policy`), stop them all cleanly on Ctrl-C, and
assemble the ensemble when every cell has succeeded. Each attempt's log is kept in the
run's output (`cells/<i>/logs/attempt-<k>.log`, the whole process's log for each of its
cells).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from lipizzaner_core.contract import ExitCode, cell_arguments, refusal_in
from lipizzaner_core.ensemble import assemble_ensemble
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.placement import cells_text
from lipizzaner_core.policy import judge
from lipizzaner_core.spec import LipizzanerRun, dump_run
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.channels import channel
from lipizzaner_core.wire.status import get_status
from lipizzaner_core.wire.tls import TlsMaterial, generate, run_identity

from lipizzaner_cell.executors.progress import progress_bar
from lipizzaner_cell.executors.signals import Stopped

log = logging.getLogger(__name__)
STATUS_POLL_SECONDS = 0.5


class RunFailed(RuntimeError):
    """The run cannot go on; `exit_code` is BAD_INPUT where a cell refused its
    configuration (its data, its checkpoints), which no restart mends."""

    def __init__(self, message: str, exit_code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class LocalProcess:
    """One `lipizzaner-cell` process and the cells it hosts."""

    cells: range
    command: list[str]
    env: dict[str, str]
    workdir: Path
    layout: RunLayout
    restarts: int = 0
    attempt: int = 0  # this start's number, across resumes too: it names the kept log
    process: subprocess.Popen | None = None
    succeeded: bool = False
    given_up: bool = False  # past its restarts, within spec.failurePolicy.maxFailedCells
    history: list[int] = field(default_factory=list)  # exit codes of earlier attempts

    @property
    def name(self) -> str:
        return f"cell {self.cells.start}" if len(self.cells) == 1 else f"cells {self.label}"

    @property
    def label(self) -> str:
        return cells_text(self.cells)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"cells-{self.label}-attempt-{self.attempt}.log"

    def start(self) -> None:
        self.attempt = max(self.layout.cell(c).next_attempt() for c in self.cells)
        arguments = cell_arguments(
            restarts=self.restarts, attempt=self.attempt, parent_pid=os.getpid()
        )
        with self.log_path.open("a") as log_file:
            self.process = subprocess.Popen(
                [*self.command, *arguments],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the cells
            )

    def keep_log(self) -> None:
        """Copy this attempt's log into the run's output, for each cell it hosts."""
        if self.log_path.exists():
            text = self.log_path.read_bytes()
            for cell in self.cells:
                self.layout.storage.write_bytes(self.layout.cell(cell).log(self.attempt), text)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def refusal(self) -> str | None:
        """The line in which a cell of this attempt refused its configuration, if one did."""
        return refusal_in(self.log_path.read_text())


# Ports this process has handed out: their holders may not have bound them yet, so a
# port free now may be promised already (two runs, or a run and its metrics server).
_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()


def free_port_block(count: int, attempts: int = 50) -> int:
    """A base port such that base .. base + count - 1 are all free on 127.0.0.1, and
    none of them handed out by this process before."""
    with _HANDING_OUT:
        base = _free_block(count, attempts)
        _HANDED_OUT.update(range(base, base + count))
        return base


def _free_block(count: int, attempts: int) -> int:
    for _ in range(attempts):
        base = random.randint(20_000, 60_000 - count)
        if _HANDED_OUT.intersection(range(base, base + count)):
            continue
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
    spec_path: Path,
    cells: range,
    port_base: int,
    threads: int,
    metrics_port_base: int | None = None,
    output: str | None = None,
    tls_dir: Path | None = None,
) -> list[str]:
    """The command line of one local process hosting `cells`: cell i listens on
    port_base + i (and serves /metrics on metrics_port_base + i)."""
    return [
        sys.executable,
        "-m",
        "lipizzaner_cell",
        *cell_arguments(
            run_spec=spec_path,
            cells=cells_text(cells),
            grpc_port_base=port_base,
            port_by="cell",
            listen_host="127.0.0.1",
            threads=threads,
            metrics_port=metrics_port_base,
            output=output,
            tls_dir=tls_dir,
        ),
    ]


def threads_per_cell(cells: int) -> int:
    """Cores shared evenly: contending torch threads cost far more than they bring."""
    return max(1, (os.cpu_count() or 1) // cells)


def local_tls(run: LipizzanerRun) -> TlsMaterial | None:
    """With spec.exchange.tls: a fresh CA and certificate for this run, gone when it ends."""
    if not run.spec.exchange.tls.enabled:
        return None
    return generate(run_identity(run.metadata.name, run.metadata.namespace))


class LocalRun:
    def __init__(self, run: LipizzanerRun, workdir: Path, threads: int | None = None) -> None:
        self.run = run
        self.layout = RunLayout.of(run)
        count = run.spec.grid.size
        spec_path = workdir / "run.yaml"
        spec_path.write_text(yaml.safe_dump(dump_run(run), sort_keys=False))
        base_port = free_port_block(2 * count)
        self.ports = [base_port + i for i in range(count)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        threads = threads or threads_per_cell(count)
        self.tls = local_tls(run)
        tls_dir = None if self.tls is None else self.tls.write(workdir / "tls")
        self.processes = [
            LocalProcess(
                cells=cells,
                command=cell_command(
                    spec_path,
                    cells,
                    base_port,
                    threads,
                    base_port + count,
                    self.layout.output,
                    tls_dir,
                ),
                env=env,
                workdir=workdir,
                layout=self.layout,
            )
            for cells in run.spec.process_groups()
        ]
        # One /metrics per process, on the port of its first cell.
        self.metrics_ports = [base_port + count + p.cells.start for p in self.processes]
        self.statuses: list[cell_pb2.CellStatus | None] = [None] * count
        self._channels = [
            channel(f"127.0.0.1:{p}", backoff_max=1.0, tls=self.tls) for p in self.ports
        ]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def tick(self) -> bool:
        """Handle exits and refresh statuses; True once every process has succeeded (or
        was given up)."""
        self.check_processes()
        self.poll_status()
        return all(p.succeeded or p.given_up for p in self.processes)

    def poll_status(self) -> None:
        for process in self.processes:
            if process.succeeded or process.given_up:
                continue
            for cell in process.cells:
                # Starting, restarting or gone: its exit code tells, not its silence.
                answer = get_status(self._channels[cell], timeout=1.0)
                self.statuses[cell] = answer or self.statuses[cell]

    def check_processes(self) -> None:
        """Judge every process that stopped: done, restarted from its cells' checkpoints,
        given up (all its cells), or the end of the run."""
        policy = self.run.spec.failure_policy
        for process in self.processes:
            done = process.succeeded or process.given_up
            code = None if done or process.process is None else process.process.poll()
            if code is None:
                continue
            process.keep_log()
            given_up = sum(len(p.cells) for p in self.processes if p.given_up)
            verdict = judge(
                code,
                process.restarts,
                policy.max_restarts_per_cell,
                given_up=given_up + len(process.cells) - 1,  # all its cells, or none
                may_give_up=policy.max_failed_cells,
            )
            if verdict.action == "succeeded":
                process.succeeded = True
            elif verdict.action == "give-up":
                process.given_up = True
                log.warning("%s %s", process.name, verdict.message)
            elif verdict.action == "fail":
                refusal = process.refusal() if code == ExitCode.BAD_INPUT else None
                if refusal is not None:
                    raise RunFailed(refusal, ExitCode.BAD_INPUT)
                raise RunFailed(f"{process.name} {verdict.message}\n{process.log_tail()}")
            else:
                process.history.append(code)
                process.restarts += 1
                log.warning(
                    "%s %s; restarting from the checkpoints (%d/%d)",
                    process.name,
                    verdict.message,
                    process.restarts,
                    policy.max_restarts_per_cell,
                )
                process.start()

    def process_of(self, cell: int) -> LocalProcess:
        return next(p for p in self.processes if cell in p.cells)

    def generations_done(self) -> list[int]:
        total = self.run.spec.generations
        return [
            total if self.process_of(cell).succeeded else int(getattr(status, "generation", 0))
            for cell, status in enumerate(self.statuses)
        ]

    def stop_all(self, grace_seconds: float = 30.0) -> None:
        """SIGTERM every running process (each cell writes a checkpoint), SIGKILL
        stragglers."""
        running = [(p, p.process) for p in self.processes if p.process and p.process.poll() is None]
        for _, process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for local, process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            local.keep_log()

    def close(self) -> None:
        for cell_channel in self._channels:
            cell_channel.close()


def run_local(
    run: LipizzanerRun, *, show_progress: bool = True, threads: int | None = None
) -> dict:
    """Train the run as local processes and return the ensemble manifest."""
    workdir = Path(tempfile.mkdtemp(prefix=f"lipizzaner-{run.metadata.name}-"))
    local = LocalRun(run, workdir, threads)
    log.info("cell logs: %s", local.layout.cell(0).logs.replace("/cells/0/", "/cells/<i>/"))
    log.info(
        "cell metrics: http://127.0.0.1:%d/metrics (cell 0) to :%d (the last process)",
        local.metrics_ports[0],
        local.metrics_ports[-1],
    )
    try:
        watch(local, show_progress)
    except (KeyboardInterrupt, Stopped, RunFailed):
        log.warning("stopping all cells (they checkpoint first)")
        local.stop_all()
        raise
    finally:
        local.close()
        shutil.rmtree(workdir, ignore_errors=True)
    restarts = {p.name: p.restarts for p in local.processes if p.restarts}
    if restarts:
        log.info("restarts: %s", restarts)
    return assemble_ensemble(run, local.layout)


def watch(local: LocalRun, show_progress: bool) -> list[tuple[float, float | None]]:
    """Start the cells and follow them to the end, with a progress row per cell; returns
    each row's (completed, total) as last shown."""
    generations = local.run.spec.generations
    with progress_bar(show_progress) as progress:
        cells = range(len(local.ports))
        overall = progress.add_task("all cells", total=generations * len(cells), status="")
        rows = [progress.add_task(f"cell {c}", total=generations, status="starting") for c in cells]
        local.start()
        finished = False
        while not finished:
            finished = local.tick()
            done = local.generations_done()
            for cell, row, count in zip(cells, rows, done, strict=True):
                status = _describe(
                    local.process_of(cell), local.statuses[cell], local.run.spec.score.final_samples
                )
                progress.update(row, completed=count, status=status)
            progress.update(overall, completed=sum(done))
            if not finished:
                time.sleep(STATUS_POLL_SECONDS)
        return [(task.completed, task.total) for task in progress.tasks]


def _describe(process: LocalProcess, status: cell_pb2.CellStatus | None, final_samples: int) -> str:
    if process.succeeded:
        return "done"
    if process.given_up:
        return "given up"
    if status is None:
        return "starting"
    if status.phase == cell_pb2.CellStatus.Phase.FINISHING:
        return f"final scoring: {final_samples} samples"
    parts = [f"G {status.generator_loss:.3f} D {status.discriminator_loss:.3f}"]
    if "mixture" in status.scores:
        parts.append(f"score {status.scores['mixture']:.3f}")
    if "accuracy" in status.scores:
        parts.append(f"accuracy {status.scores['accuracy']:.3f}")
    if process.restarts:
        parts.append(f"restarts {process.restarts}")
    if status.offspring_offered:
        parts.append(f"accepted {status.offspring_accepted / status.offspring_offered:.0%}")
    if status.missing_neighbours:
        parts.append(f"missing {list(status.missing_neighbours)}")
    return " ".join(parts)
