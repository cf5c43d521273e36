"""`lipizzaner sample`, `history`, `ensemble optimize` and `classify`: commands over a
run's output, local or on any fsspec URI (a run where it runs: `runs.py`).

Exit codes (`ExitCode`): 0 done, 2 refused (bad flags, nothing to read there).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lipizzaner_core.contract import ExitCode
from lipizzaner_core.spec import LipizzanerRun, SpecError, load_run
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from lipizzaner_cell.commands.arguments import whole
from lipizzaner_cell.commands.runs import Say


def print_whole(out: Console, table: Table) -> None:
    """A table at its natural width, wider than the terminal if need be: a score cut to
    `swd 0.3…` at 80 columns tells nothing."""
    needed = Measurement.get(out, out.options.update_width(10_000), table).maximum
    if needed <= out.width:
        out.print(table)
    else:  # a console of that width, on the same stream
        Console(file=out.file, width=needed, soft_wrap=True).print(table)


# A command's body: the parsed flags, then `error`, stdout and stderr; returns an ExitCode.
Handler = Callable[[argparse.Namespace, Say, Console, Console], int]
# Where a command speaks: one-line errors, stdout and stderr.
Outputs = tuple[Say, Console, Console]


def add_commands(
    commands: argparse._SubParsersAction, error: Say, out: Console, console: Console
) -> None:
    """Register the four commands on the `lipizzaner` parser; `error` says one line,
    `out` and `console` are stdout and stderr."""
    outputs = (error, out, console)
    _add_sample(commands, outputs)
    _add_history(commands, outputs)
    ensemble = commands.add_parser(
        "ensemble", help="search a finished run's whole grid for a better ensemble"
    )
    _add_ensemble_optimize(
        ensemble.add_subparsers(dest="action", required=True, metavar="ACTION"), outputs
    )
    _add_classify(commands, outputs)


def _command(
    parent: argparse._SubParsersAction,
    name: str,
    handler: Handler,
    outputs: Outputs,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """A command whose `handler` is called with the parsed flags and the three outputs."""
    parser = parent.add_parser(name, help=help, description=description)
    parser.set_defaults(func=lambda args: handler(args, *outputs))
    return parser


def _add_sample(commands: argparse._SubParsersAction, outputs: Outputs) -> None:
    sample = _command(
        commands,
        "sample",
        cmd_sample,
        outputs,
        help="draw samples from a saved ensemble",
        description="Draw by the ensemble's mixture weights. -o out.png writes a picture; "
        "-o out.npz writes the raw samples in the data's own value range (key 'samples').",
    )
    sample.add_argument("ensemble", metavar="ENSEMBLE_URI", help="directory of manifest.json")
    sample.add_argument("-n", type=whole(1), default=64, help="number of samples (default 64)")
    sample.add_argument("-o", "--output", required=True, metavar="OUT.png|OUT.npz")
    sample.add_argument("--seed", type=int, default=0)


def _add_history(commands: argparse._SubParsersAction, outputs: Outputs) -> None:
    history = _command(
        commands,
        "history",
        cmd_history,
        outputs,
        help="summarise a run's per-generation history and plot its curves",
        description="Read cells/<i>/history.jsonl under RUN_URI (a run's output, local or "
        "object storage): print a summary per cell and write PNG curves of the score and "
        "both losses.",
    )
    history.add_argument("run", metavar="RUN_URI", help="the run's output")
    history.add_argument(
        "-o", "--output", default="history.png", help="curves picture (default: %(default)s)"
    )
    history.add_argument(
        "--tensorboard",
        nargs="?",
        const="",
        metavar="DIR",
        help="also write TensorBoard event files, a run per cell, to DIR (any local path or "
        "fsspec URI; default RUN_URI/tensorboard)",
    )


def _add_ensemble_optimize(actions: argparse._SubParsersAction, outputs: Outputs) -> None:
    optimize = _command(
        actions,
        "optimize",
        cmd_ensemble_optimize,
        outputs,
        help="pick generators from every cell's mixture, and their weights",
        description="Search every generator the cells of a finished run ended with (greedy "
        "forward selection, or a genetic algorithm over weights), scored on the run's "
        "held-out data, and write the ensemble to RUN_URI/ensemble-METHOD/ beside the run's "
        "own (docs/ensembles.md).",
    )
    optimize.add_argument(
        "run", nargs="?", metavar="RUN_URI", help="the run's output (local or any URI)"
    )
    optimize.add_argument(
        "--run-spec",
        metavar="RUN.yaml",
        help="instead of RUN_URI and the flags below: search the output of this manifest's "
        "run as its spec.ensemble says (the operator's ensemble Job runs this)",
    )
    optimize.add_argument(
        "--method",
        choices=["greedy", "ga", "greedy-grid", "reo-gen", "nreo-gen"],
        help=f"default {SEARCH_DEFAULTS['method']}; greedy-grid, reo-gen and nreo-gen are the "
        "original's searches",
    )
    optimize.add_argument(
        "--min-size",
        type=whole(1),
        help=f"nreo-gen: generators at least (default {SEARCH_DEFAULTS['min_size']})",
    )
    optimize.add_argument(
        "--evaluations",
        type=whole(1),
        help=f"reo-gen, nreo-gen: offspring scored (default {SEARCH_DEFAULTS['evaluations']})",
    )
    optimize.add_argument(
        "--patience",
        type=whole(0),
        help="greedy-grid: stop after more than this many candidates in a row that did not "
        f"help; 0: try them all (default {SEARCH_DEFAULTS['patience']})",
    )
    optimize.add_argument(
        "--max-size",
        type=whole(1),
        help=f"generators at most (default {SEARCH_DEFAULTS['max_size']})",
    )
    optimize.add_argument(
        "--samples",
        type=whole(1),
        help=f"samples per candidate generator to score on (default {SEARCH_DEFAULTS['samples']})",
    )
    optimize.add_argument("--seed", type=int, help="default 0")
    optimize.add_argument(
        "--objective",
        choices=["fid", "tvd", "mode-kl", "swd", "spectrum"],
        help="default: the run's own mixture objective",
    )


def _add_classify(commands: argparse._SubParsersAction, outputs: Outputs) -> None:
    classify = _command(
        commands,
        "classify",
        cmd_classify,
        outputs,
        help="classify data with a semi-supervised run's classifier",
        description="Classify DATA with the discriminator of a semi-supervised run's best "
        "cell (or, with --vote, the majority vote of its neighbourhood's), print the "
        "accuracy where DATA has labels, and write each sample's class to a CSV file "
        "(docs/semi-supervised.md).",
    )
    classify.add_argument(
        "ensemble", metavar="ENSEMBLE_OR_RUN", help="the run's output or its ensemble"
    )
    classify.add_argument(
        "data",
        metavar="DATA",
        help="an .npz/.npy array of samples in the data's own range (pixel values 0-255, "
        "say), or 'held-out': the run's own held-out samples",
    )
    classify.add_argument("--key", help=".npz: the samples' key (default: the first)")
    classify.add_argument("--labels-key", help=".npz: the key of their classes, if known")
    classify.add_argument(
        "--vote", action="store_true", help="the vote of the neighbourhood's discriminators"
    )
    classify.add_argument("-o", "--output", default="predictions.csv", help="default: %(default)s")


def cmd_sample(args: argparse.Namespace, error: Say, out: Console, console: Console) -> int:
    from lipizzaner_cell.ensembles.samples import SAMPLE_FORMATS, load_ensemble, write_samples

    if not args.output.lower().endswith(SAMPLE_FORMATS):
        error(f"-o {args.output}: must end in .png (a picture) or .npz (the raw samples)")
        return ExitCode.BAD_INPUT
    try:
        ensemble = load_ensemble(args.ensemble)
    except FileNotFoundError:
        error(f"{args.ensemble}: no ensemble manifest.json there")
        return ExitCode.BAD_INPUT
    samples = ensemble.sample(args.n, seed=args.seed)
    write_samples(args.output, samples, ensemble.manifest["data"])
    console.print(f"wrote {args.n} samples to {args.output}")
    return ExitCode.OK


# `ensemble optimize`'s defaults where no manifest gives them: spec.ensemble's own.
SEARCH_DEFAULTS: dict[str, Any] = {
    "method": "greedy",
    "max_size": 8,
    "samples": 2000,
    "seed": 0,
    "min_size": 2,
    "evaluations": 600,
    "patience": 0,
}


def cmd_ensemble_optimize(
    args: argparse.Namespace, error: Say, out: Console, console: Console
) -> int:
    from lipizzaner_core.layout import RunLayout
    from lipizzaner_core.storage import Storage

    from lipizzaner_cell.ensembles.optimise import describe_search, optimise, optimise_run
    from lipizzaner_cell.scores.yardsticks import kept_yardsticks

    flags: dict[str, Any] = {"method": args.method, "max_size": args.max_size}
    flags["samples"] = args.samples
    flags |= {"seed": args.seed, "objective": args.objective, "min_size": args.min_size}
    flags |= {"evaluations": args.evaluations, "patience": args.patience}
    given = [f"--{name.replace('_', '-')}" for name, value in flags.items() if value is not None]
    if (args.run is None) == (args.run_spec is None):
        error("give RUN_URI or --run-spec RUN.yaml, one of them")
        return ExitCode.BAD_INPUT
    if args.run_spec is not None and given:
        error(f"{given[0]}: with --run-spec the search follows the manifest's spec.ensemble")
        return ExitCode.BAD_INPUT
    try:
        if args.run_spec is not None:
            run = load_searched_run(args.run_spec)
            output, manifest = run.output_uri(), optimise_run(run)
        else:
            chosen: dict[str, Any] = {
                k: v if v is not None else SEARCH_DEFAULTS.get(k) for k, v in flags.items()
            }
            output, manifest = args.run, optimise(args.run, **chosen)
    except FileNotFoundError as exc:
        finished = args.run is None or Storage().exists(
            RunLayout(args.run, Storage()).ensemble_manifest
        )
        if finished:  # something else the search reads is missing: name it
            error(f"{args.run or args.run_spec}: {str(exc).splitlines()[0]}")
        else:
            error(f"{args.run}: no finished run there (no ensemble/manifest.json)")
        return ExitCode.BAD_INPUT
    except ValueError as exc:  # SpecError is one
        error(str(exc))
        return ExitCode.BAD_INPUT
    ends = kept_yardsticks(RunLayout(output, Storage()))
    console.print(describe_search(manifest, output, ends))
    return ExitCode.OK


def load_searched_run(path: str) -> LipizzanerRun:
    """The manifest at `path`, whose spec.ensemble names a search."""
    try:
        run = load_run(path)
    except OSError as exc:
        raise ValueError(f"--run-spec {path}: {exc.strerror}") from None
    except SpecError as exc:
        raise ValueError(f"--run-spec {path}: {exc.errors[0]}") from None
    if not run.spec.ensemble.searched:
        raise ValueError(f"--run-spec {path}: spec.ensemble.method is best-cell: nothing to search")
    return run


def cmd_classify(args: argparse.Namespace, error: Say, out: Console, console: Console) -> int:
    """A semi-supervised run's classifier on data: accuracy, and a CSV of predictions."""
    import torch
    from lipizzaner_core.storage import Storage

    from lipizzaner_cell.commands.classify import (
        HELD_OUT,
        classify,
        file_data,
        held_out_data,
        load_classifier,
        predictions_csv,
    )

    if not args.output.lower().endswith(".csv"):
        error(f"-o {args.output}: must end in .csv")
        return ExitCode.BAD_INPUT
    storage = Storage()
    labels: torch.Tensor | None
    try:
        classifier = load_classifier(args.ensemble, storage)
        if args.data == HELD_OUT:
            samples, labels = held_out_data(classifier, storage)
        else:
            samples, labels = file_data(classifier, args.data, args.key, args.labels_key, storage)
    except FileNotFoundError as exc:
        error(f"{exc.filename or args.ensemble}: not found (no ensemble, or no data file)")
        return ExitCode.BAD_INPUT
    except (ValueError, KeyError) as exc:
        error(str(exc).strip("'\""))
        return ExitCode.BAD_INPUT
    predicted = classify(classifier, samples, args.vote)
    storage.write_bytes(args.output, predictions_csv(predicted, labels))
    found = classifier.manifest["classifier"]
    by = (
        f"the vote of {len(classifier.nets)} discriminators"
        if args.vote
        else f"cell {classifier.manifest['bestCell']}'s discriminator"
    )
    if labels is not None:
        right = int((predicted == labels).sum())
        out.print(
            f"accuracy {right / len(labels):.4f} ({right} of {len(labels)}) by {by}, "
            f"{found['classes']} classes"
        )
    console.print(f"wrote {len(predicted)} predictions to {args.output}")
    return ExitCode.OK


def ends_line(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in scores.items() if value is not None)


def cmd_history(args: argparse.Namespace, error: Say, out: Console, console: Console) -> int:
    """A run's history: a summary per cell, and curves of its score and losses."""
    from lipizzaner_core.layout import RunLayout
    from lipizzaner_core.storage import Storage, join

    from lipizzaner_cell.runtime.history import render_curves, run_histories, write_tensorboard
    from lipizzaner_cell.scores.yardsticks import YARDSTICKS, kept_yardsticks

    if not args.output.lower().endswith(".png"):
        error(f"-o {args.output}: must end in .png")
        return ExitCode.BAD_INPUT
    storage = Storage()
    histories = run_histories(storage, args.run)
    if not histories:
        error(f"{args.run}: no cell history there (cells/<i>/history.jsonl)")
        return ExitCode.BAD_INPUT
    table = Table(title=f"{args.run}: per-generation history of each cell")
    columns = ["cell", "generations", "G loss", "D loss", "best score", "at generation"]
    classified = any(line.get("accuracy") is not None for h in histories.values() for line in h)
    columns += ["offspring accepted"] + (["accuracy"] if classified else [])
    for column in columns:
        table.add_column(column, justify="right", min_width=len(column), no_wrap=True)
    for cell, lines in histories.items():
        last = lines[-1]
        scored = [line for line in lines if line["score"] is not None]
        best = min(scored, key=lambda line: line["score"]) if scored else None
        offered = sum(line["offspring_offered"] for line in lines)
        accepted = sum(line["offspring_accepted"] for line in lines)
        accuracy = [f"{last['accuracy']:.4f}"] if classified else []
        table.add_row(
            str(cell),
            str(last["generation"]),
            f"{last['generator_loss']:.4g}",
            f"{last['discriminator_loss']:.4g}",
            "-" if best is None else f"{best['score_name']} {best['score']:.4g}",
            "-" if best is None else str(best["generation"]),
            f"{accepted / offered:.0%}" if offered else "-",
            *accuracy,
        )
    print_whole(out, table)
    ends = kept_yardsticks(RunLayout(args.run, storage))
    if ends:
        out.print(
            "the scores' ends on this data: "
            + "; ".join(f"{label} {ends_line(ends[part])}" for label, part in YARDSTICKS)
        )
    storage.write_bytes(args.output, render_curves(histories, args.run))
    if args.tensorboard is not None:
        target = args.tensorboard or join(args.run, "tensorboard")
        written = write_tensorboard(histories, storage, target)
        out.print(f"TensorBoard: {len(written)} event files, tensorboard --logdir {target}")
    out.print(f"curves: {args.output} (scores are distances: lower is better)")
    return ExitCode.OK
