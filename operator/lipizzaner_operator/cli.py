"""The `lipizzaner` command line.

Commands that train or sample import the cell package (and so torch) only when they run,
so `lipizzaner validate` works in the torch-free operator image.
Exit codes: 0 success, 1 the work failed, 2 bad input (usage, spec or file errors).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from lipizzaner_operator import __version__, storage
from lipizzaner_operator.spec import SpecError, load_run

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
console = Console(stderr=True)


def _load_or_report(path: str):
    try:
        return load_run(path)
    except FileNotFoundError:
        console.print(f"[red]{path}: no such file")
    except SpecError as exc:
        console.print(f"[red]{path}: invalid LipizzanerRun")
        for line in exc.errors:
            console.print(f"  {line}", markup=False, highlight=False)
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.manifests:
        run = _load_or_report(path)
        if run is None:
            status = EXIT_BAD_INPUT
        else:
            grid = run.spec.grid
            console.print(
                f"[green]{path}: valid[/] ({run.metadata.name}, {grid.rows}x{grid.cols} grid, "
                f"{run.spec.generations} generations, {run.spec.dataset.name})"
            )
    return status


def cmd_crd(args: argparse.Namespace) -> int:
    import yaml

    from lipizzaner_operator.crd import crd_manifest

    sys.stdout.write(yaml.safe_dump(crd_manifest(), sort_keys=False))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    run = _load_or_report(args.manifest)
    if run is None:
        return EXIT_BAD_INPUT
    overrides = {}
    if args.output:
        overrides["output"] = run.spec.output.model_copy(update={"uri": args.output})
    if args.generations:
        overrides["generations"] = args.generations
    if overrides:
        run = run.model_copy(update={"spec": run.spec.model_copy(update=overrides)})

    output = run.output_uri()
    if args.fresh:
        storage.remove_tree(storage.join(output, "cells"))
    grid = run.spec.grid
    where = "all cells in this process" if args.in_process else "one process per cell"
    console.print(
        f"[bold]{run.metadata.name}[/]: {grid.rows}x{grid.cols} grid, "
        f"{run.spec.generations} generations, {where} -> {output}"
    )
    try:
        if args.in_process:
            import torch
            from lipizzaner_cell.in_process import run_in_process

            if args.threads:
                torch.set_num_threads(args.threads)
            manifest = run_in_process(run, show_progress=not args.quiet).manifest
        else:
            from lipizzaner_cell.in_process import write_preview

            from lipizzaner_operator.local_launcher import RunFailed, run_local

            try:
                manifest = run_local(run, show_progress=not args.quiet, threads=args.threads)
            except RunFailed as exc:
                console.print(f"[red]run failed: {exc}", markup=False)
                return EXIT_FAILED
            write_preview(output, run.metadata.name)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        console.print(f"[red]run failed: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        console.print("[yellow]stopped; run the same command again to resume")
        return EXIT_FAILED
    _print_summary(manifest, output)
    return EXIT_OK


def _print_summary(manifest: dict, output_uri: str) -> None:
    table = Table(title="cells (final neighbourhood mixtures)")
    names = sorted({name for cell in manifest["cells"] for name in cell["scores"]})
    for column in ["cell", "row", "col", *names]:
        table.add_column(column, justify="right")
    for cell in manifest["cells"]:
        marker = " *" if cell["cell"] == manifest["bestCell"] else ""
        table.add_row(
            f"{cell['cell']}{marker}",
            str(cell["row"]),
            str(cell["col"]),
            *(f"{cell['scores'].get(n, float('nan')):.4g}" for n in names),
        )
    Console().print(table)
    if not names:
        Console().print("no score for this dataset (spec.mixture.scoreType is none)")
    Console().print(
        f"ensemble (cell {manifest['bestCell']}'s mixture, {len(manifest['generators'])} "
        f"generators): {output_uri.rstrip('/')}/ensemble/manifest.json\n"
        f"preview: {output_uri.rstrip('/')}/samples.png"
    )


def cmd_sample(args: argparse.Namespace) -> int:
    from lipizzaner_cell.sampling import load_ensemble, write_samples

    try:
        ensemble = load_ensemble(args.ensemble)
    except FileNotFoundError as exc:
        console.print(f"[red]{args.ensemble}: no ensemble manifest found ({exc})")
        return EXIT_BAD_INPUT
    samples = ensemble.sample(args.n, seed=args.seed)
    write_samples(args.output, samples, ensemble.manifest["data"])
    console.print(f"wrote {args.n} samples to {args.output}")
    return EXIT_OK


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from lipizzaner_cell.classifier import asset_path, train_classifier
    from lipizzaner_cell.datasets import load_mnist

    from lipizzaner_operator.spec import MnistSpec

    dataset = load_mnist(MnistSpec(name="mnist", path=args.data), seed=0)
    out = Path(args.out) if args.out else asset_path()
    report = train_classifier(dataset.data, dataset.labels, out, epochs=args.epochs)
    console.print(
        f"trained on {report.train_images} images, test accuracy "
        f"{report.test_accuracy:.4f} on {report.test_images} held-out images -> {out}"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        type=int,
        metavar="N",
        help="torch threads per cell process (default: cores / cells, at least 1); "
        "with --in-process, torch threads of this process",
    )
    run.add_argument("--output", metavar="URI", help="override spec.output.uri")
    run.add_argument("--generations", type=int, metavar="N", help="override spec.generations")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="delete the output's cell checkpoints and results first instead of resuming",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

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
    sample.set_defaults(func=cmd_sample)

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
    classifier.add_argument("--out", help="weights file (default: the packaged asset)")
    classifier.add_argument("--epochs", type=int, default=4)
    classifier.set_defaults(func=cmd_train_classifier)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
