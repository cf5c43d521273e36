"""`lipizzaner sample`, `history` and `ensemble optimize`: commands over a run's output,
local or on any fsspec URI (the cluster commands are in `cluster_commands.py`).

Exit codes (`ExitCode`): 0 done, 2 refused (bad flags, nothing to read there).
"""

from __future__ import annotations

import argparse

from lipizzaner_core.contract import ExitCode
from rich.console import Console
from rich.table import Table

from lipizzaner_cell.cluster_commands import Say


def add_commands(
    commands: argparse._SubParsersAction, error: Say, out: Console, console: Console
) -> None:
    """Register the three commands on the `lipizzaner` parser; `error` says one line,
    `out` and `console` are stdout and stderr."""
    sample = commands.add_parser(
        "sample",
        help="draw samples from a saved ensemble",
        description="Draw by the ensemble's mixture weights. -o out.png writes a picture; "
        "-o out.npz writes the raw samples in the data's own value range (key 'samples').",
    )
    sample.add_argument("ensemble", metavar="ENSEMBLE_URI", help="directory of manifest.json")
    sample.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("-o", "--output", required=True, metavar="OUT.png|OUT.npz")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=lambda args: cmd_sample(args, error, out, console))

    history = commands.add_parser(
        "history",
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
    history.set_defaults(func=lambda args: cmd_history(args, error, out, console))

    ensemble = commands.add_parser(
        "ensemble", help="search a finished run's whole grid for a better ensemble"
    )
    actions = ensemble.add_subparsers(dest="action", required=True, metavar="ACTION")
    optimize = actions.add_parser(
        "optimize",
        help="pick generators from every cell's mixture, and their weights",
        description="Search every generator the cells of a finished run ended with (greedy "
        "forward selection, or a genetic algorithm over weights), scored on the run's "
        "held-out data, and write the ensemble to RUN_URI/ensemble-METHOD/ beside the run's "
        "own (docs/ensembles.md).",
    )
    optimize.add_argument("run", metavar="RUN_URI", help="the run's output (local or any URI)")
    optimize.add_argument("--method", choices=["greedy", "ga"], default="greedy")
    optimize.add_argument(
        "--max-size", type=int, default=8, help="generators at most (default %(default)s)"
    )
    optimize.add_argument(
        "--samples",
        type=int,
        default=2000,
        help="samples per candidate generator to score on (default %(default)s)",
    )
    optimize.add_argument("--seed", type=int, default=0)
    optimize.add_argument(
        "--objective",
        choices=["fid", "tvd", "mode-kl", "swd", "spectrum"],
        help="default: the run's own mixture objective",
    )
    optimize.set_defaults(func=lambda args: cmd_ensemble_optimize(args, error, out, console))


def cmd_sample(args: argparse.Namespace, error: Say, out: Console, console: Console) -> int:
    if args.n < 1:
        error(f"-n: must be >= 1, got {args.n}")
        return ExitCode.BAD_INPUT
    from lipizzaner_cell.sampling import SAMPLE_FORMATS, load_ensemble, write_samples

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


def cmd_ensemble_optimize(
    args: argparse.Namespace, error: Say, out: Console, console: Console
) -> int:
    for flag, value in (("--max-size", args.max_size), ("--samples", args.samples)):
        if value < 1:
            error(f"{flag}: must be >= 1, got {value}")
            return ExitCode.BAD_INPUT
    from lipizzaner_cell.optimised_ensemble import optimise
    from lipizzaner_cell.sampling import describe_score

    try:
        manifest = optimise(
            args.run, args.method, args.max_size, args.samples, args.seed, args.objective
        )
    except FileNotFoundError:
        error(f"{args.run}: no finished run there (no ensemble/manifest.json)")
        return ExitCode.BAD_INPUT
    except ValueError as exc:
        error(str(exc))
        return ExitCode.BAD_INPUT
    search, objective = manifest["search"], manifest["objective"]
    chosen = len(manifest["generators"])
    console.print(
        f"{args.method} over {search['candidates']} generators: "
        f"{describe_score(objective['name'], objective['value'])} (the best cell's mixture: "
        f"{search['bestCell']['objective']:.4g}); {chosen} generator{'s' * (chosen != 1)} "
        f"in {args.run.rstrip('/')}/ensemble-{args.method}"
    )
    return ExitCode.OK


def cmd_history(args: argparse.Namespace, error: Say, out: Console, console: Console) -> int:
    """A run's history: a summary per cell, and curves of its score and losses."""
    from lipizzaner_core.storage import Storage, join

    from lipizzaner_cell.history import render_curves, run_histories, write_tensorboard

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
    for column in [*columns, "offspring accepted"]:
        table.add_column(column, justify="right", min_width=len(column), no_wrap=True)
    for cell, lines in histories.items():
        last = lines[-1]
        scored = [line for line in lines if line["score"] is not None]
        best = min(scored, key=lambda line: line["score"]) if scored else None
        offered = sum(line["offspring_offered"] for line in lines)
        accepted = sum(line["offspring_accepted"] for line in lines)
        table.add_row(
            str(cell),
            str(last["generation"]),
            f"{last['generator_loss']:.4g}",
            f"{last['discriminator_loss']:.4g}",
            "-" if best is None else f"{best['score_name']} {best['score']:.4g}",
            "-" if best is None else str(best["generation"]),
            f"{accepted / offered:.0%}" if offered else "-",
        )
    out.print(table)
    storage.write_bytes(args.output, render_curves(histories, args.run))
    if args.tensorboard is not None:
        target = args.tensorboard or join(args.run, "tensorboard")
        written = write_tensorboard(histories, storage, target)
        out.print(f"TensorBoard: {len(written)} event files, tensorboard --logdir {target}")
    out.print(f"curves: {args.output} (scores are distances: lower is better)")
    return ExitCode.OK
