"""The standing comparison: does the grid beat one GAN at the default settings?

MNIST (the 10,000-digit split; 10 % held out for scoring), every setting at its default,
five seeds. A cell-generation is 100 batches of 100. Equal total training steps:

- `single`: one GAN (a 1x1 grid) for S x S x N generations: the same compute as the grid;
- `independent`: S x S lone GANs of N generations each (the honest control): the best
  of them alone (`independent-best`), and all of them mixed with equal weights
  (`independent-uniform`);
- `grid`: the S x S grid for N generations, in one process (deterministic), its ensemble
  as the run chooses it (keep-best);
- `grid-processes`: the same grid as users run it, a process per cell exchanging over
  gRPC (`lipizzaner run`): each cell waits for its neighbours' last generation
  (`exchange.neighbourWaitSeconds`), so it sees what the in-process run's cells see and,
  unless a neighbour is late or a generation ahead, ends where that run ends;
- `grid-processes-async`: the same with `neighbourWaitSeconds: 0`, the original's
  asynchronous exchange (each cell takes whatever state its neighbours last published);
- `grid-offspring`: the grid with `replacementRule: offspring` (every offspring replaces);
- `grid-no-coevolution`: the grid with selection off (each cell trains its own pair in
  place; the mixture ES still runs);
- `grid-all-uniform`: the grid's cells' own generators all mixed with equal weights;
- `grid-greedy`: the grid's ensemble searched over every cell's generators
  (`lipizzaner ensemble optimize --method greedy`, `spec.ensemble`): what mixing only the
  best cell's neighbourhood leaves out. The search scores on the held-out digits in the
  project's classifier, so its `fid` is optimistic; `fid2` is the check.

Equal wall-clock with a core (or GPU) per cell:

- `single-n`: one GAN for N generations;
- `single-wide`: one GAN for N generations with S x S times the batch: what a user with
  S x S devices would otherwise run, data-parallel.

Every run keeps its best mixture (the default). Every ensemble is scored on the same
10,000 seeded samples against the held-out digits, in two feature spaces (`protocol.py`):
FID, the TVD of the digit histogram from uniform, precision and recall. The tables give
each configuration's mean and worst seed, and the grid against each baseline seed by seed
(wins, median difference), in both spaces.

`--dataset digits` runs the same protocol on scikit-learn's 8x8 digits through the `array`
dataset, scored by two judges trained on them (`bench/digits.py`).

    python bench/grid_vs_single.py --data ../shared/datasets/mnist --generations 40 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml
from common import (
    add_grid_flags,
    apply_assignments,
    assignment,
    bars_with_seeds,
    mnist_manifest,
)
from digits import digits_judges, write_digits
from diversity import cell_generators
from lipizzaner_cell.commands.cli import main as lipizzaner
from lipizzaner_cell.ensembles.samples import load_ensemble
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.executors.local_processes import run_local
from lipizzaner_core.spec import load_run, parse_run
from protocol import Judges, paired, summary
from rich.console import Console
from rich.table import Table

CONFIGS = (
    "single",
    "single-n",
    "single-wide",
    "grid",
    "grid-processes",
    "grid-processes-async",
    "grid-offspring",
    "grid-no-coevolution",
    "independent",
)
OPTIONAL = ("grid-offspring", "grid-no-coevolution")  # run with --configs
PROTOCOL = tuple(c for c in CONFIGS if c not in OPTIONAL)
BASELINES = ("single", "independent-best", "independent-uniform", "single-n", "single-wide")
GRIDS = (*(c for c in CONFIGS if c.startswith("grid")), "grid-greedy")
COLUMNS = (
    *(c for c in CONFIGS if c != "independent"),
    "grid-all-uniform",
    "grid-greedy",
    "independent-best",
    "independent-uniform",
)
BUDGET = {"single-n": "equal wall-clock", "single-wide": "equal wall-clock"}
KEYS = ("fid", "fid2", "recall", "recall2", "precision", "tvd")


def run_once(job: dict[str, Any]) -> dict[str, Any]:
    """One run, into its own output folder: in-process, or as cell processes. A run whose
    output already has its ensemble (`--keep` of an earlier, interrupted bench) is read,
    not trained again."""
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    spec = mnist_manifest(
        job["config"],
        job["side"],
        job["dataset"].get("path", ""),
        job["generations"],
        job["output"],
        seed=job["run_seed"],
        coevolution=job["coevolution"],
        device=job["device"],
    )
    spec["spec"]["dataset"] = dict(job["dataset"])
    apply_assignments(spec["spec"], job["every_run"] + job.get("own", []))
    if job["side"] > 1:  # data dieting: each grid cell its own subset (not a lone GAN)
        spec["spec"]["dataset"]["samplingRatio"] = job["sampling_ratio"]
        apply_assignments(spec["spec"], job["grids_only"])
    output = Path(job["output"])
    finished, timing = output / "ensemble" / "manifest.json", output / "seconds.json"
    if finished.exists():
        manifest = json.loads(finished.read_text())
        seconds = json.loads(timing.read_text()) if timing.exists() else None
    else:
        output.mkdir(parents=True, exist_ok=True)  # the manifest beside the output, for
        (output / "run.yaml").write_text(yaml.safe_dump(spec))  # bench/diversity.py
        started = time.perf_counter()
        if job["config"].startswith("grid-processes"):
            manifest = run_local(parse_run(spec), show_progress=False, threads=1)
        else:
            manifest = run_in_process(parse_run(spec), resume=False).manifest
        seconds = time.perf_counter() - started
        timing.write_text(json.dumps(seconds))
    name, value = next(iter(manifest["scores"].items()))  # the run's own objective
    Console().print(f"{job['config']} seed {job['seed']}: {name} {value:.3g}")
    return {
        "config": job["config"],
        "seed": job["seed"],
        "output": job["output"],
        "scores": manifest["scores"],
        "mixtureGeneration": manifest["mixtureGeneration"],
        "seconds": seconds,
    }


def jobs_for(
    dataset: dict[str, str], side: int, generations: int, seed: int, root: str, **settings: Any
) -> list[dict]:
    """Every run of one seed. `settings`: device, sampling_ratio, every_run and grids_only
    (spec overrides, as `common.assignment` reads them)."""
    cells = side * side
    wide = [(["training", "batchSize"], 100 * cells)]
    asynchronous = [(["exchange", "neighbourWaitSeconds"], 0)]
    plans: list[tuple[str, int, int, int, dict, list]] = [
        ("single", 1, cells * generations, seed, {}, []),
        ("single-n", 1, generations, seed, {}, []),
        ("single-wide", 1, generations, seed, {}, wide),
        ("grid", side, generations, seed, {}, []),
        ("grid-processes", side, generations, seed, {}, []),
        ("grid-processes-async", side, generations, seed, {}, asynchronous),
        ("grid-offspring", side, generations, seed, {"replacementRule": "offspring"}, []),
        ("grid-no-coevolution", side, generations, seed, {"selection": False}, []),
    ]
    # Run seeds apart from the others' (a 1x1 run's cell seeds from its run seed).
    plans += [("independent", 1, generations, 1000 * (seed + 1) + i, {}, []) for i in range(cells)]
    return [
        {
            "dataset": dataset,
            "config": config,
            "side": grid_side,
            "generations": count,
            "seed": seed,
            "run_seed": run_seed,
            "coevolution": coevolution,
            "own": own,
            "device": "cpu",
            "sampling_ratio": 1.0,
            "every_run": [],
            "grids_only": [],
            **settings,
            "output": str(Path(root) / f"{config}-{seed}-{run_seed}"),
        }
        for config, grid_side, count, run_seed, coevolution, own in plans
    ]


def ensemble_scores(judges: Judges, folders: list[str], equal: bool = False) -> dict[str, float]:
    """The ensembles' generators scored together: by their own weights (one ensemble), or
    all with equal weights (`equal`)."""
    ensembles = [load_ensemble(folder) for folder in folders]
    generators = [g for e in ensembles for g in e.generators]
    weights = torch.cat([e.weights for e in ensembles])
    if equal:
        weights = torch.ones(len(generators), dtype=torch.float64)
    latent = ensembles[0].manifest["network"]["latentSize"]
    return judges.score(generators, weights, latent)


def cell_generators_scores(judges: Judges, output: str) -> dict[str, float]:
    """Each grid cell's own generator (from the mixture it ended with), all equally mixed."""
    run = load_run(Path(output) / "run.yaml")
    shape = tuple(load_ensemble(str(Path(output) / "ensemble")).manifest["data"]["shape"])
    nets = cell_generators(run, shape)
    weights = torch.ones(len(nets), dtype=torch.float64)
    return judges.score(nets, weights, run.spec.network.latent_size)


def whole_grid_scores(judges: Judges, output: str) -> dict[str, float]:
    """The run's generators searched over the whole grid, greedily (once per output)."""
    searched = Path(output) / "ensemble-greedy"
    if not (searched / "manifest.json").exists():
        assert lipizzaner(["ensemble", "optimize", output, "--method", "greedy"]) == 0
    return ensemble_scores(judges, [str(searched)])


def summarise(results: list[dict[str, Any]], judges: Judges, seeds: list[int]) -> list[dict]:
    """One row per seed: every configuration's scores in both spaces."""
    rows = []
    for seed in seeds:
        mine = [r for r in results if r["seed"] == seed]
        row: dict[str, Any] = {"seed": seed}
        for r in mine:
            if r["config"] != "independent":
                row[r["config"]] = ensemble_scores(judges, [str(Path(r["output"]) / "ensemble")])
                row[r["config"]] |= {k: r[k] for k in ("mixtureGeneration", "seconds")}
            if r["config"] == "grid":
                row["grid-all-uniform"] = cell_generators_scores(judges, r["output"])
                row["grid-greedy"] = whole_grid_scores(judges, r["output"])
        independents = [r for r in mine if r["config"] == "independent"]
        if independents:
            folders = [str(Path(r["output"]) / "ensemble") for r in independents]
            each = [ensemble_scores(judges, [folder]) for folder in folders]
            row["independent-best"] = min(each, key=lambda s: s["fid"])
            row["independent-uniform"] = ensemble_scores(judges, folders, equal=True)
        rows.append(row)
    return rows


def seed_table(rows: list[dict], data: str, side: int, generations: int) -> Table:
    columns = [c for c in COLUMNS if c in rows[0]]
    out = Table(
        title=f"{data}, defaults, {side}x{side} grid of {generations} generations: held-out "
        "FID in the first / the second feature space, per seed"
    )
    out.add_column("seed")
    for column in columns:
        out.add_column(column, justify="right")
    for row in rows:
        out.add_row(
            str(row["seed"]), *(f"{row[c]['fid']:.1f} / {row[c]['fid2']:.1f}" for c in columns)
        )
    return out


def summary_rows(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Every column's mean and worst seed for each score."""
    columns = [c for c in COLUMNS if c in rows[0]]
    return {c: {key: summary(rows, c, key) for key in KEYS} for c in columns}


def summary_table(summaries: dict[str, dict[str, dict[str, float]]], seeds: int) -> Table:
    out = Table(title=f"Mean over {seeds} seeds (worst seed); 2: the second classifier")
    out.add_column("configuration")
    out.add_column("budget")
    for key in KEYS:
        out.add_column(key, justify="right")
    for column, scores in summaries.items():
        out.add_row(
            column,
            BUDGET.get(column, "equal steps"),
            *(f"{scores[k]['mean']:.3g} ({scores[k]['worst']:.3g})" for k in KEYS),
        )
    return out


def paired_rows(rows: list[dict]) -> list[dict[str, Any]]:
    """Each grid against each baseline, seed by seed, in both spaces."""
    out = []
    for grid in (g for g in GRIDS if g in rows[0]):
        for baseline in (b for b in BASELINES if b in rows[0]):
            line: dict[str, Any] = {"grid": grid, "baseline": baseline}
            for key in ("fid", "fid2", "recall"):
                line[key] = paired(rows, grid, baseline, key).__dict__
            line["worst_beats_median"] = paired(rows, grid, baseline).worst_beats_median
            line["spaces_agree"] = (line["fid"]["median_difference"] < 0) == (
                line["fid2"]["median_difference"] < 0
            )
            out.append(line)
    return out


def paired_table(lines: list[dict[str, Any]]) -> Table:
    out = Table(
        title="The grid against each baseline, seed by seed: wins / seeds, median difference "
        "(grid minus baseline; FID lower is better, recall higher)"
    )
    for column in ("grid", "baseline", "FID", "FID (2nd)", "spaces agree", "recall"):
        out.add_column(column, justify="right")
    out.add_column("worst grid seed < baseline median", justify="right")
    for line in lines:
        cells = [
            f"{line[k]['wins']}/{line[k]['seeds']}, {line[k]['median_difference']:+.3g}"
            for k in ("fid", "fid2", "recall")
        ]
        out.add_row(
            line["grid"],
            line["baseline"],
            cells[0],
            cells[1],
            "yes" if line["spaces_agree"] else "no",
            cells[2],
            "yes" if line["worst_beats_median"] else "no",
        )
    return out


def plot(rows: list[dict], path: str, title: str) -> None:
    """FID in both spaces and recall per configuration: a bar for the mean, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in COLUMNS if c in rows[0]]
    panels = (
        ("fid", "held-out FID, first feature space"),
        ("fid2", "held-out FID, second feature space"),
        ("recall", "recall (higher is better)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        bars_with_seeds(ax, columns, [[row[c][key] for row in rows] for c in columns], label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def data_section(args: argparse.Namespace, root: str) -> dict[str, str]:
    """The runs' `dataset` section: the MNIST files in --data, or the digits written to
    `root`."""
    if args.dataset == "digits":
        return write_digits(Path(root) / "digits.npz")
    return {"name": "mnist", "path": args.data}


def judges_for(args: argparse.Namespace, dataset: dict[str, str], scratch: str) -> Judges:
    if args.dataset == "digits":
        return digits_judges(dataset)
    return Judges.mnist(args.data, Path(scratch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_flags(parser, data_required=False)
    parser.set_defaults(seeds=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--dataset",
        choices=("mnist", "digits"),
        default="mnist",
        help="mnist: the IDX files in --data; digits: scikit-learn's 8x8 digits (bench/digits.py)",
    )
    parser.add_argument(
        "--sampling-ratio",
        type=float,
        default=1.0,
        help="data dieting for the grids' cells (dataset.samplingRatio); lone GANs keep all",
    )
    parser.add_argument(
        "--set",
        type=assignment,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a spec field in every run, e.g. coevolution.learningRate=1e-3",
    )
    parser.add_argument(
        "--grid-set",
        type=assignment,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a spec field in the grids' runs only (not in the lone GANs)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--configs", nargs="+", default=list(PROTOCOL), choices=CONFIGS, help="run only these"
    )
    parser.add_argument("--keep", metavar="DIR", help="keep every run's output here")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--plot", help="write the comparison here (PNG)")
    args = parser.parse_args()
    if args.dataset == "mnist" and not args.data:
        parser.error("--data: the directory of the MNIST IDX files is needed for --dataset mnist")
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        dataset = data_section(args, root)
        jobs = [
            job
            for seed in args.seeds
            for job in jobs_for(
                dataset,
                args.side,
                args.generations,
                seed,
                root,
                device=args.device,
                sampling_ratio=args.sampling_ratio,
                every_run=args.set,
                grids_only=args.grid_set,
            )
            if job["config"] in args.configs
        ]
        jobs.sort(key=lambda job: -(job["side"] ** 2) * job["generations"])  # the longest first
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            results = list(pool.map(run_once, jobs))
        judges = judges_for(args, dataset, scratch)
        rows = summarise(results, judges, args.seeds)
    summaries = summary_rows(rows)
    lines = paired_rows(rows)
    console = Console(width=200)
    console.print(f"second classifier: held-out accuracy {judges.second_accuracy:.4f}")
    console.print(seed_table(rows, args.dataset, args.side, args.generations))
    console.print(summary_table(summaries, len(rows)))
    if lines:
        console.print(paired_table(lines))
    if args.json:
        record = {"argv": sys.argv[1:], "rows": rows, "summary": summaries, "paired": lines}
        Path(args.json).write_text(json.dumps(record, indent=2))
    if args.plot:
        title = (
            f"{args.dataset}: {args.side}x{args.side} grid, {args.generations} generations, "
            f"{len(rows)} seeds"
        )
        plot(rows, args.plot, title)


if __name__ == "__main__":
    main()
