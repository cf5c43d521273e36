"""Pure grid topology: cell indices, toroidal neighbourhoods and per-cell seeds.

Cells are numbered row-major: index = row * cols + col. The original Lipizzaner built
its neighbour list with rows and columns swapped, which is only right on the diagonal;
here every neighbour is computed from (row, col) of the same cell.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Neighbourhood = Literal["von-neumann", "moore"]

# (direction name, row offset, col offset), in a fixed order so neighbour lists are stable.
_OFFSETS: dict[str, list[tuple[str, int, int]]] = {
    "von-neumann": [("north", -1, 0), ("south", 1, 0), ("west", 0, -1), ("east", 0, 1)],
    "moore": [
        ("north", -1, 0),
        ("south", 1, 0),
        ("west", 0, -1),
        ("east", 0, 1),
        ("north-west", -1, -1),
        ("north-east", -1, 1),
        ("south-west", 1, -1),
        ("south-east", 1, 1),
    ],
}


@dataclass(frozen=True)
class Neighbour:
    index: int
    direction: str


@dataclass(frozen=True)
class Grid:
    rows: int
    cols: int
    neighbourhood: Neighbourhood = "von-neumann"

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"grid must be at least 1x1, got {self.rows}x{self.cols}")

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def position(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"cell index {index} outside a {self.rows}x{self.cols} grid")
        return divmod(index, self.cols)

    def index(self, row: int, col: int) -> int:
        return (row % self.rows) * self.cols + (col % self.cols)

    def neighbours(self, index: int) -> list[Neighbour]:
        """Distinct neighbours on the torus, the cell itself excluded.

        On small grids several directions wrap onto the same cell (1x3: north and south
        are the cell itself; 2x2: north and south are the same cell); each cell appears
        once, under the first direction that reaches it.
        """
        row, col = self.position(index)
        seen: set[int] = {index}
        result: list[Neighbour] = []
        for direction, d_row, d_col in _OFFSETS[self.neighbourhood]:
            other = self.index(row + d_row, col + d_col)
            if other not in seen:
                seen.add(other)
                result.append(Neighbour(other, direction))
        return result


def neighbourhood_size(rows: int, cols: int, neighbourhood: Neighbourhood) -> int:
    """Distinct cells in a neighbourhood, the centre included (small tori wrap onto themselves).

    The same arithmetic is the CRD's CEL rule on tournamentSize, so keep both in step.
    """
    vertical, horizontal = min(rows - 1, 2), min(cols - 1, 2)
    if neighbourhood == "moore":
        return (vertical + 1) * (horizontal + 1)
    return 1 + vertical + horizontal


def cell_seed(run_seed: int, index: int) -> int:
    """A distinct, well-mixed 63-bit seed per cell (the original gave every cell one seed)."""
    digest = hashlib.sha256(f"lipizzaner:{run_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
