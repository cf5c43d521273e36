"""The `lipizzaner` command line.

Commands that train or sample import torch only when they run, so `lipizzaner validate`
and `lipizzaner crd` start fast; `submit`, `status`, `logs` and `delete` (a run where it runs)
live in `commands/runs.py`. Exit codes (`lipizzaner_core.contract.ExitCode`): 0 success, 1 the
work failed, 2 bad input (usage, spec, data or damaged files), 3 `submit --wait` timed out,
128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM), always with a one-line reason and
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from lipizzaner_core import __version__
from lipizzaner_core.contract import ExitCode
from lipizzaner_core.ensemble import completed_run
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun, SpecError, dump_run, load_run, parse_run
from lipizzaner_core.storage import DamagedFile
from rich.console import Console
from rich.logging import RichHandler

from lipizzaner_cell.commands.arguments import Parser, UsageError, whole
from lipizzaner_cell.commands.output import add_commands as add_output_commands
from lipizzaner_cell.commands.run_summary import print_results
from lipizzaner_cell.commands.runs import add_commands as add_run_commands

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def error(message: str) -> None:
    """One line on stderr, as written: no markup is interpreted in it."""
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)


def _load_or_report(path: str) -> LipizzanerRun | None:
    try:
        return load_run(path)
    except FileNotFoundError:
        error(f"{path}: no such file")
    except SpecError as exc:
        error(f"{path}: invalid LipizzanerRun")
        for line in exc.errors:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    return None


def data_problem(run: LipizzanerRun) -> str | None:
    """What is wrong with the run's data files, if they are on this machine: missing,
    the wrong shape, keys or label counts, NaN or infinite values. Remote data is checked
    by the first cell that loads it (exit 2 too)."""
    from lipizzaner_cell.data.loading import check_local_data

    try:
        check_local_data(run.spec.dataset)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return str(exc).strip("'\"")
    return None


def output_problem(run: LipizzanerRun) -> str | None:
    """Why the run's output cannot be written (a bucket that is not there), if it cannot."""
    layout = RunLayout.of(run)
    problem = layout.storage.unusable_because(layout.output)
    return None if problem is None else f"spec.output.uri {layout.output}: {problem}"


def cmd_validate(args: argparse.Namespace) -> int:
    status = ExitCode.OK
    for path in args.manifests:
        run = _load_or_report(path)
        problem = None if run is None else data_problem(run)
        if problem is not None:
            error(f"{path}: {problem}")
        if run is None or problem is not None:
            status = ExitCode.BAD_INPUT
        else:
            grid = run.spec.grid
            console.print(
                f"[green]{path}: valid[/] ({run.metadata.name}, {grid.rows}x{grid.cols} grid, "
                f"{run.spec.generations} generations, {run.spec.dataset.name})"
            )
    return status


def cmd_crd(args: argparse.Namespace) -> int:
    import yaml
    from lipizzaner_core.crd import crd_manifest

    sys.stdout.write(yaml.safe_dump(crd_manifest(), sort_keys=False))
    return ExitCode.OK


def with_overrides(run: LipizzanerRun, args: argparse.Namespace) -> LipizzanerRun:
    """The run with the command line's overrides, validated as the manifest is."""
    document = dump_run(run)
    if args.output is not None:
        document["spec"]["output"]["uri"] = args.output
    if args.generations is not None:
        document["spec"]["generations"] = args.generations
    return parse_run(document)


def announce_resume(layout: RunLayout, run: LipizzanerRun) -> None:
    """Say so when a run continues from checkpoints, and from which generations."""
    resumed = {}
    for index in range(run.spec.grid.size):
        done = layout.cell(index).completed_checkpoints()
        if done:
            resumed[index] = int(done[-1])
    if resumed:
        where = ", ".join(f"cell {i} at {g}" for i, g in resumed.items())
        console.print(f"resuming from checkpoints in {layout.output}: {where}")


def cmd_run(args: argparse.Namespace) -> int:
    run = _load_or_report(args.manifest)
    if run is None:
        return ExitCode.BAD_INPUT
    try:
        run = with_overrides(run, args)
    except SpecError as exc:
        for line in exc.errors:
            error(f"{args.manifest} with the command line's overrides: {line}")
        return ExitCode.BAD_INPUT
    problem = data_problem(run) or output_problem(run)
    if problem is not None:
        error(f"{args.manifest}: {problem}")
        return ExitCode.BAD_INPUT
    layout = RunLayout.of(run)
    if not args.fresh:
        finished = completed_run(run, layout)
        if finished is not None:
            say_complete(run, finished)
            print_results(out, finished, layout, run)
            return search_ensemble(run, layout, again=False)
    from lipizzaner_cell.executors.lease import Lease, LeaseHeld
    from lipizzaner_cell.executors.local_processes import RunFailed
    from lipizzaner_cell.executors.signals import Stopped, stopped_by_signals

    lease = Lease(layout.storage, layout.lease)
    try:
        lease.acquire()
    except LeaseHeld as exc:
        error(str(exc))
        return ExitCode.BAD_INPUT
    try:
        with stopped_by_signals():
            manifest = start_training(run, layout, args)
    except Stopped as exc:
        console.print(f"stopped by {exc}; run the same command again to resume", style="yellow")
        return exc.exit_code
    except RunFailed as exc:
        error(f"run failed: {exc}" if exc.exit_code == ExitCode.FAILED else str(exc))
        return exc.exit_code
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        if isinstance(exc, DamagedFile):
            raise
        error(f"run failed: {exc}")
        return ExitCode.FAILED
    finally:
        lease.release()
    print_results(out, manifest, layout, run)
    return search_ensemble(run, layout, again=True)


def start_training(run: LipizzanerRun, layout: RunLayout, args: argparse.Namespace) -> dict:
    """Anew (--fresh) or from the checkpoints: say which, then train."""
    if args.fresh:
        for uri in (layout.cells, layout.ensemble, layout.preview):
            layout.storage.remove_tree(uri)
    else:
        announce_resume(layout, run)
    grid = run.spec.grid
    where = "all cells in this process" if args.in_process else "one process per cell"
    console.print(
        f"[bold]{run.metadata.name}[/]: {grid.rows}x{grid.cols} grid, "
        f"{run.spec.generations} generations, {where} -> {layout.output}"
    )
    from lipizzaner_cell.executors.local import LocalExecutor

    executor = LocalExecutor(args.in_process, show_progress=not args.quiet, threads=args.threads)
    executor.run(run)
    return layout.storage.read_json(layout.ensemble_manifest)


def say_complete(run: LipizzanerRun, manifest: dict[str, Any]) -> None:
    """A finished run run again: nothing to do, and how far it really went."""
    done = min(cell["generation"] for cell in manifest["cells"])
    asked = run.spec.generations
    if done > asked:
        console.print(
            f"{run.metadata.name} finished at {done} generations, more than the {asked} "
            "asked; nothing to do. --generations N above that continues it, --fresh starts "
            "it anew."
        )
    else:
        console.print(
            f"{run.metadata.name} is complete ({done} generations); nothing to do. "
            "--generations N continues it, --fresh starts it anew."
        )


def search_ensemble(run: LipizzanerRun, layout: RunLayout, again: bool) -> int:
    """The run's last step, `spec.ensemble`'s search, if it names one; not `again` when
    its ensemble is already there (a finished run run again changes nothing)."""
    if not run.spec.ensemble.searched:
        return ExitCode.OK
    from lipizzaner_core.layout import ENSEMBLE_MANIFEST
    from lipizzaner_core.storage import join

    from lipizzaner_cell.ensembles.optimise import describe_search, optimise_run
    from lipizzaner_cell.scores.yardsticks import kept_yardsticks

    method = run.spec.ensemble.method
    searched = join(layout.optimised_ensemble(method), ENSEMBLE_MANIFEST)
    if not again and layout.storage.exists(searched):
        manifest = layout.storage.read_json(searched)
    else:
        console.print(f"searching every cell's generators for an ensemble ({method})")
        try:
            manifest = optimise_run(run)
        except (FileNotFoundError, ValueError) as exc:
            error(f"ensemble search failed: {exc}")
            return ExitCode.FAILED
    out.print(describe_search(manifest, layout.output, kept_yardsticks(layout)))
    return ExitCode.OK


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from lipizzaner_core.spec.datasets import MnistSpec
    from lipizzaner_core.storage import Storage

    from lipizzaner_cell.data.images import load_mnist
    from lipizzaner_cell.scores.mnist_classifier import train_classifier

    try:
        dataset = load_mnist(MnistSpec(name="mnist", path=args.data), 0, Storage())
    except (FileNotFoundError, ValueError) as exc:
        reason = str(exc).split(";")[0].removeprefix("dataset.path: ")
        error(f"--data {args.data}: {reason}")
        return ExitCode.BAD_INPUT
    out_path = Path(args.out)
    assert dataset.labels is not None  # MNIST always has its labels
    report = train_classifier(dataset.data, dataset.labels, out_path, epochs=args.epochs)
    console.print(
        f"trained on {report.train_images} images, test accuracy "
        f"{report.test_accuracy:.4f} on {report.test_images} held-out images -> {out_path}"
    )
    return ExitCode.OK


def add_run_command(commands: argparse._SubParsersAction) -> None:
    """`lipizzaner run`: the main job, and the flags that change it."""
    run = commands.add_parser(
        "run",
        help="train a run on this machine",
        description="Train every cell of the grid as its own process (gRPC between them), "
        "restart crashed cells from their checkpoints, then write the ensemble and a preview. "
        "A run resumes from the cells' latest checkpoints in its output.",
    )
    run.add_argument("manifest", metavar="RUN.yaml")
    run.add_argument(
        "--in-process",
        action="store_true",
        help="run all cells in this process, round-robin, without gRPC (tests, debugging)",
    )
    run.add_argument(
        "--threads",
        type=whole(1),
        metavar="N",
        help="torch threads per cell process (default: cores / cells, at least 1); "
        "with --in-process, torch threads of this process",
    )
    run.add_argument("--output", metavar="URI", help="override spec.output.uri")
    run.add_argument(
        "--generations",
        type=int,
        metavar="N",
        help="override spec.generations (more than a finished run had continues it)",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="delete the output's cell checkpoints and results first instead of resuming",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lipizzaner",
        description="Robust GAN training by spatially distributed co-evolution.",
    )
    parser.add_argument("--version", action="version", version=f"lipizzaner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check LipizzanerRun manifests without running them",
        description="Print every error with its field path; exit 2 if any manifest is invalid.",
    )
    validate.add_argument("manifests", nargs="+", metavar="RUN.yaml")
    validate.set_defaults(func=cmd_validate)

    add_run_command(commands)

    crd = commands.add_parser(
        "crd",
        help="print the LipizzanerRun CustomResourceDefinition",
        description="The CRD generated from the run-spec model (crds/lipizzanerruns.yaml is "
        "this output): `lipizzaner crd | kubectl apply -f -`.",
    )
    crd.set_defaults(func=cmd_crd)

    classifier = commands.add_parser(
        "train-classifier",
        help="rebuild the MNIST classifier used for FID and TVD",
        description="Train on all but the last 2000 images of the IDX files, report accuracy "
        "on those 2000, and save the weights as safetensors.",
    )
    classifier.add_argument("--data", required=True, help="directory or URI of MNIST IDX files")
    classifier.add_argument(
        "--out",
        default="mnist-classifier.safetensors",
        help="weights file to write (default: %(default)s here; the packaged one is never "
        "overwritten)",
    )
    classifier.add_argument("--epochs", type=whole(1), default=4)
    classifier.set_defaults(func=cmd_train_classifier)
    add_output_commands(commands, error, out, console)
    add_run_commands(commands, _load_or_report, error, out, console)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        error(f"{exc} (--help lists what it takes)")
        return ExitCode.BAD_INPUT
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[
            RichHandler(console=console, show_path=False, log_time_format="%Y-%m-%dT%H:%M:%S")
        ],
    )
    try:
        return args.func(args)
    except DamagedFile as exc:  # any command, any file of a run's output
        error(str(exc))
        return ExitCode.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
