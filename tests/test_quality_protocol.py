"""The quality protocol's arithmetic (bench/protocol.py), the grid's distances diagnosis
(bench/diversity.py --distances), the second real data set and its judges
(bench/digits.py) and the 2-D cells' coverage (bench/quality.py): seeds compared in pairs,
worst seeds taken in each score's own direction, and the cells' generators measured
against each other and against the modes."""

import argparse
import logging
import sys
from pathlib import Path

import pytest
import torch
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import parse_run
from lipizzaner_core.spec.datasets import ArraySpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
try:
    from digits import digits_judges, write_digits
    from diversity import distance_summary, generator_distances
    from grid_vs_single import jobs_for, run_once
    from protocol import paired, summary
    from quality import cell_coverage, generations, manifest, two_d_spec
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


def test_the_digits_judges_tell_held_out_digits_from_noise_and_from_one_class(tmp_path):
    dataset = write_digits(tmp_path / "digits.npz")
    judges = digits_judges(dataset, epochs=10)
    assert judges.second_accuracy > 0.9  # of the 180 held-out digits
    training, _ = load_dataset(ArraySpec.model_validate(dataset), 0).split(0.1)
    assert training.labels is not None
    noise = torch.rand((1000, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    threes = training.data[training.labels == 3]
    for scorer in judges.scorers:
        real, fake = scorer.scores(training.data), scorer.scores(noise)
        assert real["fid"] < 0.1 * fake["fid"]
        assert real["tvd"] < 0.05
        one_class = scorer.scores(threes)
        assert one_class["tvd"] > 0.85 and one_class["fid"] > 10 * real["fid"]


def test_the_protocol_runs_on_the_digits_through_the_array_dataset(tmp_path):
    dataset = write_digits(tmp_path / "digits.npz")
    [job] = [j for j in jobs_for(dataset, 2, 1, 0, str(tmp_path)) if j["config"] == "single-n"]
    threads = torch.get_num_threads()
    try:
        result = run_once(job)
    finally:  # a bench worker's settings, not this test process's
        logging.disable(logging.NOTSET)
        torch.set_num_threads(threads)
    assert set(result["scores"]) >= {"swd"}  # an array's default score
    assert (Path(job["output"]) / "ensemble" / "manifest.json").exists()


def test_equal_steps_give_smaller_grids_more_generations():
    args = argparse.Namespace(generations=40, sides=[1, 2, 3], equal_steps=True)
    assert [generations(args, side) for side in (1, 2, 3)] == [360, 90, 40]
    args.equal_steps = False
    assert [generations(args, side) for side in (1, 2, 3)] == [40, 40, 40]


def test_cell_coverage_counts_each_cells_modes_and_all_cells_mixed(tmp_path):
    spec = two_d_spec({"name": "gaussian-grid", "modesPerSide": 3, "std": 0.05}, 1, 5, [16, 16])
    run = parse_run(manifest(2, 0, spec, str(tmp_path)))
    run_in_process(run, resume=False)
    coverage = cell_coverage(run)
    assert len(coverage["cell_modes"]) == 4
    assert all(0 <= modes <= 9 for modes in coverage["cell_modes"])
    assert 0 <= coverage["all_cells_modes"] <= 9
