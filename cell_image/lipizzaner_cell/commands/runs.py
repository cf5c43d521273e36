"""`lipizzaner submit`, `status`, `logs` and `delete`: a run where it runs, from a terminal
or a CI job.

A run is named by its `metadata.name` on the cluster of the kubeconfig, or by its output
(a folder or URI) on this machine; `executor_for` picks the executor, and the commands
only call it (`executors/base.py`). Exit codes (`ExitCode`): 0 the run succeeded (or,
without --wait, was created), 1 it failed or missed --max-score, or the API server did not
answer (worth trying again), 2 refused (invalid manifest, name taken, no run, no usable
kubeconfig), 3 --wait gave up (the run goes on).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipizzaner_core.contract import ExitCode
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.status import CellRecord
from rich.console import Console
from rich.table import Table

from lipizzaner_cell.commands.arguments import finite, seconds, whole
from lipizzaner_cell.executors.base import Executor, RunNotFound, RunView

if TYPE_CHECKING:  # the kubernetes client loads only when a cluster command runs
    from lipizzaner_cell.executors.kubernetes import KubernetesExecutor

Say = Callable[[str], None]


def add_commands(
    commands: argparse._SubParsersAction,
    load: Callable[[str], LipizzanerRun | None],
    error: Say,
    out: Console,
    console: Console,
) -> None:
    """Register the four commands on the `lipizzaner` parser; `load` reads a manifest
    (reporting what is wrong with it), `error` says one line, `out` and `console` are
    stdout and stderr."""
    add_submit_command(commands, load, error, out, console)

    status = _command_on_a_run(
        commands,
        "status",
        help="show a run, on the cluster or on this machine",
        description="Phase, progress, restarts, best score and ensemble of a LipizzanerRun. "
        "RUN is a run's name on the cluster, or a local run's output (a folder or URI): "
        "`lipizzaner status runs/quickstart`.",
    )
    status.add_argument("--json", action="store_true", help="print the outcome as JSON")
    status.add_argument(
        "--cells",
        action="store_true",
        help="also every cell: phase, generation, score, restarts, disruptions, message",
    )
    status.set_defaults(func=lambda args: cmd_status(args, error, out))

    logs = _command_on_a_run(
        commands,
        "logs",
        help="print a run's cell logs from its output",
        description="The logs each cell keeps in the run's output (cells/<i>/logs/"
        "attempt-<k>.log), readable after the pods are gone; the latest attempt of each cell "
        "unless --attempt says which. RUN is a run's name (its output is read from its spec "
        "on the cluster) or the output itself: `lipizzaner logs runs/quickstart`.",
    )
    logs.add_argument("--cell", type=whole(0), metavar="I", help="only this cell")
    logs.add_argument("--attempt", type=whole(0), metavar="K", help="this start (0 = the first)")
    logs.set_defaults(func=lambda args: cmd_logs(args, error, out))

    delete = _command_on_a_run(
        commands,
        "delete",
        help="stop a run; its output stays",
        description="On the cluster: delete the LipizzanerRun (its pods checkpoint and go). "
        "On this machine (RUN is an output): stop the `lipizzaner run` training it, as "
        "Ctrl-C would; running it again resumes from the checkpoints.",
    )
    delete.set_defaults(func=lambda args: cmd_delete(args, error, out))


def _command_on_a_run(
    commands: argparse._SubParsersAction, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    """A command whose RUN is a run's name on a cluster or a local run's output."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.add_argument(
        "run",
        metavar="RUN",
        help="the run's name on the cluster, or a run's output (a folder or URI)",
    )
    _connected(parser)
    return parser


def _connected(parser: argparse.ArgumentParser) -> None:
    """The flags that say which cluster and namespace."""
    parser.add_argument("-n", "--namespace", help="default: the context's namespace")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def add_submit_command(
    commands: argparse._SubParsersAction,
    load: Callable[[str], LipizzanerRun | None],
    error: Say,
    out: Console,
    console: Console,
) -> None:
    """`lipizzaner submit`: a run to the cluster, followed to its end with --wait."""
    submit = commands.add_parser(
        "submit",
        help="create a run on the cluster of the current kubeconfig",
        description="Validate RUN.yaml, create it as a LipizzanerRun and, with --wait, follow "
        "it to the end: progress from its status and Events, then the outcome, the ensemble's "
        "URI and its best score. Exit 0 succeeded (or created, without --wait), 1 failed or "
        "above --max-score, 2 refused, 3 still running at --timeout.",
    )
    submit.add_argument("manifest", metavar="RUN.yaml")
    _connected(submit)
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    submit.add_argument(
        "--timeout", type=seconds, default=86400.0, help="seconds to wait (default: a day)"
    )
    submit.add_argument(
        "--max-score",
        type=finite,
        metavar="SCORE",
        help="with --wait: exit 1 unless the best score is at most this (lower is better)",
    )
    submit.add_argument("--result", metavar="FILE.json", help="write the outcome as JSON")
    submit.set_defaults(func=lambda args: cmd_submit(args, load, error, out, console))


def _connect(args: argparse.Namespace) -> KubernetesExecutor:
    import logging

    from lipizzaner_cell.executors.kubernetes import KubernetesExecutor

    runs = KubernetesExecutor.connect(args.context, args.namespace)
    # urllib3 retries a refused connection with a warning each time: the one line that
    # says the server is not there comes after them. (The client's configuration sets
    # this logger's level itself, so this comes after it.)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    return runs


def executor_for(args: argparse.Namespace) -> Executor:
    """This machine's for a run's output, else the kubeconfig's cluster's."""
    if is_output(args.run):
        from lipizzaner_cell.executors.local import LocalExecutor

        return LocalExecutor()
    return _connect(args)


def cmd_submit(
    args: argparse.Namespace,
    load: Callable[[str], LipizzanerRun | None],
    error: Say,
    out: Console,
    console: Console,
) -> int:
    from lipizzaner_cell.executors.kubernetes import (
        ClusterError,
        ClusterUnreachable,
        RunRefused,
    )

    run = load(args.manifest)
    if run is None:
        return ExitCode.BAD_INPUT
    try:
        runs = _connect(args)
        created = runs.run(run)
    except ClusterUnreachable as exc:
        error(f"{args.manifest}: not submitted: {exc}")
        return ExitCode.FAILED
    except (ClusterError, RunRefused) as exc:
        error(f"{args.manifest}: not submitted: {exc}")
        return ExitCode.BAD_INPUT
    out.print(f"created LipizzanerRun {created.name} in namespace {runs.namespace}")
    if not args.wait:
        return ExitCode.OK
    follower = Follower(runs, console)
    try:
        view = runs.wait(created.name, args.timeout, on_poll=follower.show)
    except TimeoutError as exc:
        error(f"{exc}; it goes on (lipizzaner status {created.name})")
        return ExitCode.TIMED_OUT
    except (ClusterError, RunNotFound) as exc:
        error(str(exc))
        return ExitCode.FAILED
    return report_outcome(view, args, error, out)


def report_outcome(view: RunView, args: argparse.Namespace, error: Say, out: Console) -> int:
    summary = view.summary()
    if args.result:
        Path(args.result).write_text(json.dumps(summary, indent=2) + "\n")
    if view.phase != "Succeeded":
        error(f"{view.name} {view.phase}: {view.status.message}")
        return ExitCode.FAILED
    score = view.status.best_score
    out.print(f"{view.name} succeeded: ensemble {summary['ensemble']}, best score {score}")
    if args.max_score is not None and (score is None or score > args.max_score):
        error(f"{view.name}: best score {score} is above --max-score {args.max_score}")
        return ExitCode.FAILED
    return ExitCode.OK


class Follower:
    """Prints a line when the run's progress changes, and each new Event once."""

    def __init__(self, runs: KubernetesExecutor, console: Console) -> None:
        self.runs, self.console = runs, console
        self.last: tuple | None = None
        self.seen: set[str] = set()

    def show(self, view: RunView) -> None:
        status = view.status
        progress = (
            status.phase,
            status.generation.min,
            status.generation.max,
            status.cells.running,
            status.cells.restarts,
            status.best_score,
        )
        if progress != self.last:
            self.last = progress
            self.console.print(describe(view), markup=False, highlight=False)
        for event in self.runs.events(view.name):
            if event["uid"] not in self.seen:
                self.seen.add(event["uid"])
                line = f"  {event['type']} {event['reason']}: {event['message']}"
                self.console.print(line, markup=False, highlight=False)


def describe(view: RunView) -> str:
    """One line: phase, generations, cells, restarts, best score."""
    status = view.status
    parts = [
        f"{view.name}: {status.phase}",
        f"generation {status.generation.min}-{status.generation.max}/{view.run.spec.generations}",
        f"cells running {status.cells.running}/{view.run.spec.grid.size}",
        f"restarts {status.cells.restarts}",
    ]
    if status.best_score is not None:
        parts.append(f"best score {status.best_score:.4g}")
    return ", ".join(parts)


def reaching_run(args: argparse.Namespace, error: Say, act: Callable[[Executor], Any]) -> Any:
    """`act` on the executor of the run named on the command line, or the exit code once
    `error` has said why not: 1 if the API server did not answer or a run would not stop,
    2 if there is no such run, no usable cluster, or a damaged file where it should be."""
    from lipizzaner_core.storage import DamagedFile

    from lipizzaner_cell.executors.kubernetes import ClusterError, ClusterUnreachable

    try:
        return act(executor_for(args))
    except (ClusterUnreachable, TimeoutError) as exc:
        error(str(exc))
        return ExitCode.FAILED
    except (ClusterError, RunNotFound, DamagedFile) as exc:
        error(str(exc))
        return ExitCode.BAD_INPUT


def cmd_status(args: argparse.Namespace, error: Say, out: Console) -> int:
    def read(runs: Executor) -> tuple[RunView, list[CellRecord]]:
        view = runs.status(args.run)
        return view, runs.cells(view) if args.cells else []

    found = reaching_run(args, error, read)
    if isinstance(found, int):
        return found
    view, cells = found
    summary = view.summary()
    if args.json:
        if args.cells:
            summary["cells"] = [c.model_dump(by_alias=True, mode="json") for c in cells]
        out.print_json(json.dumps(summary))
        return ExitCode.OK
    table = Table(title=describe(view), show_header=False)
    for key, value in summary.items():
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)
    if args.cells:
        out.print(cells_table(cells))
    return ExitCode.OK


def cells_table(cells: list[CellRecord]) -> Table:
    """One row a cell; the score is the run's own (lower is better, `docs/scores.md`)."""
    table = Table("cell", "phase", "generation", "score", "restarts", "disruptions", "message")
    for cell in cells:
        score = "-" if cell.score is None else f"{cell.score:.4g}"
        table.add_row(
            str(cell.cell),
            cell.phase,
            str(cell.generation),
            score,
            str(cell.restarts),
            str(cell.disruptions),
            cell.message,
        )
    return table


def is_output(run: str) -> bool:
    """A run's output folder or URI rather than a run's name (names have no slash)."""
    return "/" in run or Path(run).is_dir()


def cmd_logs(args: argparse.Namespace, error: Say, out: Console) -> int:
    logs = reaching_run(args, error, lambda runs: runs.logs(args.run, args.cell, args.attempt))
    if isinstance(logs, int):
        return logs
    for log in logs:
        out.print(f"== cell {log.cell}, attempt {log.attempt} ==", markup=False)
        out.print(log.text, markup=False, highlight=False, end="")
    if not logs:
        error(f"{args.run}: no cell logs kept in its output yet")
        return ExitCode.FAILED
    return ExitCode.OK


def cmd_delete(args: argparse.Namespace, error: Say, out: Console) -> int:
    done = reaching_run(args, error, lambda runs: runs.delete(args.run))
    if isinstance(done, int):
        return done
    out.print(f"{args.run}: stopped; its output stays")
    return ExitCode.OK
