"""The quality protocol's arithmetic (bench/protocol.py) and the grid's distances
diagnosis (bench/diversity.py --distances): seeds compared in pairs, worst seeds taken in
each score's own direction, and the cells' generators measured against each other."""

import sys
from pathlib import Path

import pytest
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import parse_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
try:
    from diversity import distance_summary, generator_distances
    from protocol import paired, summary
finally:
    sys.path.remove(str(ROOT / "bench"))

ROWS = [
    {"seed": 0, "grid": {"fid": 40.0, "recall": 0.6}, "single": {"fid": 45.0, "recall": 0.5}},
    {"seed": 1, "grid": {"fid": 41.0, "recall": 0.6}, "single": {"fid": 39.0, "recall": 0.7}},
    {"seed": 2, "grid": {"fid": 33.0, "recall": 0.6}, "single": {"fid": 56.0, "recall": 0.6}},
]


def test_paired_counts_wins_and_takes_the_median_difference_in_each_scores_direction():
    fid = paired(ROWS, "grid", "single", "fid")
    assert (fid.wins, fid.seeds) == (2, 3)
    assert fid.median_difference == pytest.approx(-5.0)  # -5, +2, -23
    assert (fid.worst, fid.baseline_median) == (41.0, 45.0)
    assert fid.worst_beats_median
    recall = paired(ROWS, "grid", "single", "recall")
    assert recall.wins == 1  # higher recall wins; a tie is no win
    assert recall.worst == pytest.approx(0.6) and not recall.worst_beats_median


def test_paired_uses_only_the_seeds_both_ran_and_refuses_none():
    partial = [*ROWS, {"seed": 3, "grid": {"fid": 99.0}}]
    assert paired(partial, "grid", "single").seeds == 3
    with pytest.raises(ValueError, match="no seed has both"):
        paired(ROWS, "grid", "independent-best")


def test_summary_takes_the_worst_seed_in_the_scores_direction():
    assert summary(ROWS, "single", "fid") == {"mean": pytest.approx(140 / 3), "worst": 56.0}
    assert summary(ROWS, "single", "recall")["worst"] == pytest.approx(0.5)


def test_distances_between_cells_are_symmetric_zero_on_the_diagonal(tiny_mnist_manifest):
    """A 1x2 MNIST grid: each cell's generator against the other's samples and the data."""
    manifest = tiny_mnist_manifest
    manifest["spec"]["score"] = {"finalSamples": 200}
    run = parse_run(manifest)
    run_in_process(run, resume=False)
    distances = generator_distances(run, samples=300)
    between = distances["between"]
    assert len(between) == 2 and len(distances["to_data"]) == 2
    assert between[0][1] == pytest.approx(between[1][0], rel=1e-6)
    assert abs(between[0][0]) < 1e-6 * between[0][1]
    assert all(d > 0 for d in distances["to_data"])
    means = distance_summary(distances)
    assert means["between"] == pytest.approx(between[0][1], rel=1e-6)
    assert means["ratio"] == pytest.approx(means["between"] / means["to_data"])
