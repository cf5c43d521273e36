import pytest
from lipizzaner_core.topology import Grid, cell_seed, neighbourhood_size


def neighbour_set(grid: Grid, index: int) -> set[int]:
    return {n.index for n in grid.neighbours(index)}


@pytest.mark.parametrize(
    ("rows", "cols", "expected"),
    [
        (1, 1, {0: set()}),
        (1, 3, {0: {1, 2}, 1: {0, 2}, 2: {0, 1}}),
        (2, 2, {0: {1, 2}, 1: {0, 3}, 2: {0, 3}, 3: {1, 2}}),
        (3, 3, {0: {6, 3, 2, 1}, 1: {7, 4, 0, 2}, 5: {2, 8, 4, 3}, 7: {4, 1, 6, 8}}),
        # 3x4: off-diagonal cells are where the original's transposed indexing went wrong.
        (3, 4, {1: {9, 5, 0, 2}, 4: {0, 8, 7, 5}, 7: {3, 11, 6, 4}, 11: {7, 3, 10, 8}}),
    ],
)
def test_von_neumann_neighbour_sets(rows, cols, expected):
    grid = Grid(rows, cols)
    for index, neighbours in expected.items():
        assert neighbour_set(grid, index) == neighbours


def test_directions_name_the_right_cells():
    grid = Grid(3, 4)
    by_direction = {n.direction: n.index for n in grid.neighbours(grid.index(1, 2))}
    assert by_direction == {
        "north": grid.index(0, 2),
        "south": grid.index(2, 2),
        "west": grid.index(1, 1),
        "east": grid.index(1, 3),
    }


def test_moore_has_eight_distinct_neighbours_on_large_grids():
    grid = Grid(4, 5, "moore")
    for index in range(grid.size):
        assert len(neighbour_set(grid, index)) == 8
        assert index not in neighbour_set(grid, index)


@pytest.mark.parametrize("neighbourhood", ["von-neumann", "moore"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("cols", [1, 2, 3, 4, 7])
def test_neighbourhoods_are_symmetric_and_deduplicated(rows, cols, neighbourhood):
    grid = Grid(rows, cols, neighbourhood)
    for i in range(grid.size):
        listed = [n.index for n in grid.neighbours(i)]
        assert len(listed) == len(set(listed))
        assert i not in listed
        for j in listed:
            assert i in neighbour_set(grid, j)


def test_index_and_position_round_trip_row_major():
    grid = Grid(3, 4)
    assert grid.position(5) == (1, 1)
    assert grid.index(2, 3) == 11
    assert all(grid.index(*grid.position(i)) == i for i in range(grid.size))
    with pytest.raises(IndexError):
        grid.position(12)


def test_every_cell_has_its_own_seed_and_seeds_are_stable():
    seeds = [cell_seed(7, i) for i in range(64)]
    assert len(set(seeds)) == 64
    assert cell_seed(7, 3) == cell_seed(7, 3)
    assert cell_seed(7, 3) != cell_seed(8, 3)
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("kind", ["von-neumann", "moore"])
def test_neighbourhood_size_counts_distinct_cells_of_every_grid(kind):
    for rows in range(1, 6):
        for cols in range(1, 6):
            grid = Grid(rows, cols, kind)
            expected = {len(grid.neighbours(i)) + 1 for i in range(grid.size)}
            assert expected == {neighbourhood_size(rows, cols, kind)}, (rows, cols)


def test_cells_are_named_in_spans():
    from lipizzaner_core.placement import cells_named

    assert cells_named([3]) == "cell 3"
    assert cells_named([0, 1, 2, 3, 6, 8, 9]) == "cells 0-3, 6, 8-9"
