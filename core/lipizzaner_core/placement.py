"""Which process hosts which cells, and where a cell listens: pure functions of the spec.

`spec.cell.cellsPerPod` consecutive cells share one process (a pod in Kubernetes, a local
process on one machine), and with it one copy of torch, the data and the classifier: the
way below torch's few hundred megabytes per process. Each cell keeps its own gRPC and
metrics port: on one machine every cell's own (base + its index), in a pod base + its
slot there, so one pod serves ports base .. base + cellsPerPod - 1.
"""

from __future__ import annotations

import re
from typing import Literal

PortBy = Literal["cell", "slot"]  # base + the cell's index (one machine) or its slot (pods)
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def process_groups(size: int, cells_per_process: int) -> list[range]:
    """The grid's cells in consecutive groups, one per process; the last may be smaller."""
    return [
        range(first, min(first + cells_per_process, size))
        for first in range(0, size, cells_per_process)
    ]


def group_of(cell: int, size: int, cells_per_process: int) -> range:
    """The cells that share `cell`'s process."""
    first = cell - cell % cells_per_process
    return range(first, min(first + cells_per_process, size))


def port_of(base: int, cell: int, cells_per_process: int, by: PortBy) -> int:
    return base + (cell if by == "cell" else cell % cells_per_process)


def cells_text(cells: range) -> str:
    """`3` or `4-7`: how a group is named in flags and pod names."""
    return str(cells.start) if len(cells) == 1 else f"{cells.start}-{cells.stop - 1}"


def cells_named(cells: list[int]) -> str:
    """`cell 3` or `cells 0-3, 6`: sorted cells, each consecutive run as one span."""
    spans: list[range] = []
    for cell in cells:
        if spans and spans[-1].stop == cell:
            spans[-1] = range(spans[-1].start, cell + 1)
        else:
            spans.append(range(cell, cell + 1))
    noun = "cell" if len(cells) == 1 else "cells"
    return f"{noun} {', '.join(cells_text(span) for span in spans)}"


def parse_cells(text: str) -> range:
    """The inverse of `cells_text`; ValueError names what is wrong."""
    match = _RANGE.match(text.strip())
    if not match:
        raise ValueError(f"cells must be N or FIRST-LAST, got {text!r}")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if last < first:
        raise ValueError(f"cells {text!r}: the last comes before the first")
    return range(first, last + 1)


def pod_name(run: str, cells: range) -> str:
    """`<run>-cell-<i>` for a pod of one cell, `<run>-cells-<first>-<last>` for a group."""
    return f"{run}-cell-{cells.start}" if len(cells) == 1 else f"{run}-cells-{cells_text(cells)}"
