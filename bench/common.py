"""What the benchmark scripts share: the LipizzanerRun envelope around a spec."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import yaml
from lipizzaner_core.spec import API_VERSION, KIND


def run_manifest(name: str, rows: int, cols: int, **spec: Any) -> dict:
    """A manifest for a rows x cols grid; `spec` holds the other spec sections."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"grid": {"rows": rows, "cols": cols}, **spec},
    }


def grid_coevolution(side: int) -> dict[str, Any]:
    """The defaults, except on a 1x1 grid: a tournament of 1 (its pool holds one
    individual), and a lone cell keeps its own training, as a plain GAN does. With no
    neighbour, the original's rule judges the offspring only by the parent's opponent and
    froze a lone MNIST cell after its first generation (0 of 2 offspring accepted in each
    of generations 2 to 6, FID stuck at 873)."""
    if side > 1:
        return {}
    return {"tournamentSize": 1, "replacementRule": "offspring"}


def mnist_manifest(
    name: str,
    side: int,
    data: str,
    generations: int,
    output: str,
    *,
    batches: int = 100,
    device: str = "cpu",
    cuda_graphs: bool = True,
    coevolution: dict | None = None,
    **spec: Any,
) -> dict:
    """A side x side grid on the MNIST IDX files in `data`, at the defaults otherwise."""
    return run_manifest(
        name,
        side,
        side,
        generations=generations,
        dataset={"name": "mnist", "path": data},
        coevolution={**grid_coevolution(side), **(coevolution or {})},
        training={"batchesPerGeneration": batches, "device": device, "cudaGraphs": cuda_graphs},
        output={"uri": output},
        **spec,
    )


def assignment(text: str) -> tuple[list[str], Any]:
    """`coevolution.learningRate=1e-3` as (["coevolution", "learningRate"], 0.001): a
    command-line override of one spec field, its value read as YAML (and `1e-3`, which
    YAML 1.1 reads as text, as a number)."""
    path, sep, text_value = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected FIELD.PATH=VALUE, got {text!r}")
    value = yaml.safe_load(text_value)
    with contextlib.suppress(TypeError, ValueError):
        value = float(value) if isinstance(value, str) else value
    return path.split("."), value


def apply_assignments(spec: dict, assignments: list[tuple[list[str], Any]]) -> None:
    """Set each overridden field in a manifest's `spec`, creating sections on the way."""
    for path, value in assignments:
        section = spec
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value


def add_result_flags(parser: argparse.ArgumentParser, plot: str) -> None:
    """--data and --seeds (what to measure on), --json (keep the rows), --plot (`plot`
    says what of) and --rows (an earlier --json's rows, printed and plotted again instead
    of measuring); `parse_result_args` reads them."""
    parser.add_argument("--data", help="directory of the MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--plot", help=f"{plot} (PNG)")
    parser.add_argument("--rows", help="print and plot the rows of an earlier --json instead")


def parse_result_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The flags, with --data required unless --rows replays earlier rows."""
    args = parser.parse_args()
    if not (args.rows or args.data):
        parser.error("--data: needed unless --rows")
    return args


def print_rows(title: str, columns: tuple[str, ...], rows: list[dict], number: str) -> None:
    """The rows as a table, numbers in the `number` format."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:  # a column a result file predates shows as "-"
        cells = [row.get(c, "-") for c in columns]
        table.add_row(*(f"{v:{number}}" if isinstance(v, float) else str(v) for v in cells))
    Console(width=140).print(table)


def bars_with_seeds(ax: Any, labels: list[str], per_seed: list[list[float]], ylabel: str) -> None:
    """One bar per label at the mean over seeds, and a dot per seed on it."""
    ax.bar(range(len(labels)), [sum(v) / len(v) for v in per_seed], color="#9ab")
    for index, values in enumerate(per_seed):
        ax.plot([index] * len(values), values, "k.")
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right")
    ax.set_ylabel(ylabel)


def add_grid_flags(parser: argparse.ArgumentParser, data_required: bool = True) -> None:
    """The flags of a bench that runs MNIST grids over seeds: --data, --side,
    --generations, --seeds and --workers."""
    parser.add_argument("--data", required=data_required, help="directory of the MNIST IDX files")
    parser.add_argument("--side", type=int, default=2, help="S: the grid is S x S")
    parser.add_argument("--generations", type=int, default=40, help="N: the grid's generations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
