"""`lipizzaner-cell`: run the cells of one process of a grid (a local process or a pod).

A process hosts `--cells` (one cell, or `spec.cell.cellsPerPod` consecutive ones), each
in its own thread with its own gRPC server, checkpoints and kept log; they share torch,
the data, the classifier and one /metrics endpoint (each cell's life: `cell_life.py`);
with `training.stacking`, each `stacking.cells` of them train step 4 as one program.
One cell failing stops its siblings at a checkpoint, so the process can be restarted
whole; so do SIGTERM and the end of the launcher that started it.
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
from functools import partial
from pathlib import Path

import torch
from lipizzaner_core.contract import CANNOT_START, CELL_FLAGS, ExitCode
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.placement import group_of, parse_cells
from lipizzaner_core.spec import LipizzanerRun, SpecError, load_run
from lipizzaner_core.wire.tls import TlsError, TlsMaterial

from lipizzaner_cell.algorithm.devices import resolve_device
from lipizzaner_cell.algorithm.stacking import training_stacks
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.exchange.server import CentreBoard
from lipizzaner_cell.runtime.cell_life import ProcessShared, SharedData, Stop, run_cell
from lipizzaner_cell.runtime.metrics import MetricsEndpoint
from lipizzaner_cell.runtime.peers import cell_port

log = logging.getLogger("lipizzaner.cell")
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
    threads = torch.get_num_threads()
    # A stack's program runs in one thread for all its cells: the cores they had between them.
    stack_threads = min(default_threads(), threads * run.spec.training.stacking.cells)
    device = resolve_device(run.spec.training.device)
    stacks = training_stacks(run.spec, cells, device, stack_threads)
    boards = {cell: CentreBoard() for cell in cells}
    shared = ProcessShared(layout, data, endpoint, tls, Stop(), boards, stacks)
    signal.signal(signal.SIGTERM, lambda *_: shared.stop.request("SIGTERM"))
    if args.parent_pid is not None:
        watch = partial(stop_when_orphaned, args.parent_pid, shared.stop)
        threading.Thread(target=watch, name="parent watch", daemon=True).start()
    codes: dict[int, int] = {}

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
