"""Ensembles searched over the whole grid: the searches on their own, then
`lipizzaner ensemble optimize` on a finished run."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_RING
from lipizzaner_cell.commands.cli import main
from lipizzaner_cell.ensembles.original_searches import (
    Restricted,
    Unrestricted,
    greedy_grid,
    nreo_gen,
    reo_gen,
    weight_grid,
)
from lipizzaner_cell.ensembles.search import GeneticSettings, genetic, greedy
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import parse_run

TARGET = torch.tensor([0.5, 0.25, 0.25, 0.0, 0.0], dtype=torch.float64)


def distance(weights: torch.Tensor) -> float:
    return float((weights - TARGET).square().sum())


def test_greedy_selection_adds_the_best_pick_until_none_helps():
    found = greedy(distance, 5, max_size=8)
    assert torch.allclose(found.weights, TARGET)  # picks 2, 1, 1 of candidates 0, 1, 2
    assert found.objective == pytest.approx(0.0)
    capped = greedy(distance, 5, max_size=1)
    assert capped.weights.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_the_genetic_search_keeps_its_bounds_and_never_loses_its_start():
    start = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    settings = GeneticSettings(population=12, generations=15)

    def search(seed: int):
        rng = torch.Generator().manual_seed(seed)
        return genetic(distance, 5, 2, rng, [start], settings)

    found = search(0)
    assert found.objective < distance(start)
    assert (found.weights > 0).sum() <= 2 and float(found.weights.sum()) == pytest.approx(1.0)
    assert torch.equal(search(0).weights, found.weights)  # seeded
    assert found.evaluations == 12 + 15 * 11


def test_the_weight_grid_holds_every_split_of_ten_tenths():
    splits = list(weight_grid(3))
    assert len(splits) == 66 == len(set(splits))  # C(12, 2)
    assert all(sum(split) == 10 and min(split) >= 0 for split in splits)
    assert list(weight_grid(1)) == [(10,)]


def test_greedy_grid_keeps_a_candidate_only_when_its_best_grid_weights_help():
    """The original's greedy: members in tenths, at most max_size, each kept only if the
    best split of the grid with it beats the ensemble before; patience ends it early."""
    found = greedy_grid(distance, 5, 8, 0, random.Random(0))
    assert found.objective <= min(distance(torch.eye(5, dtype=torch.float64)[k]) for k in range(5))
    tenths = found.weights * 10
    assert torch.allclose(tenths, tenths.round()) and float(found.weights.sum()) == 1.0
    # Every candidate was tried: sizes 1.. as members were kept, each try a whole grid.
    assert found.evaluations >= 5 + 11
    capped = greedy_grid(distance, 5, 1, 0, random.Random(0))
    assert (capped.weights > 0).sum() == 1 and capped.evaluations == 1
    impatient = greedy_grid(lambda w: 1.0 - float(w[0]), 5, 8, 1, random.Random(3))
    assert impatient.evaluations < found.evaluations


@pytest.mark.parametrize("method", ["reo-gen", "nreo-gen"])
def test_the_originals_genetic_searches_keep_their_sizes_and_are_seeded(method):
    def search(seed: int, evaluations: int = 200):
        rng = random.Random(seed)
        if method == "reo-gen":
            return reo_gen(distance, 5, 3, evaluations, rng)
        return nreo_gen(distance, 5, 2, 4, evaluations, rng)

    found = search(0)
    members = int((found.weights > 0).sum())
    assert members <= 3 if method == "reo-gen" else 1 <= members <= 4
    assert float(found.weights.sum()) == pytest.approx(1.0)
    assert torch.equal(search(0).weights, found.weights)
    assert found.evaluations >= 5 + 200
    assert found.objective < distance(torch.full((5,), 0.2, dtype=torch.float64))
    assert search(0, evaluations=1000).objective <= 0.02  # near the target: 0.5, 0.25, 0.25


def test_the_originals_crossovers_and_mutations_keep_their_individuals_well_formed():
    rng = random.Random(1)
    encoding = Restricted(count=6, size=4, rng=rng)
    for _ in range(300):
        a, b = encoding.create(), encoding.create()
        encoding.crossover(a, b)
        encoding.mutate(a)
        for child in (a, b):  # a repair may carry a parent's weight: read as shares
            assert len({g for g, _ in child}) == 4 and min(w for _, w in child) >= 0
            assert float(encoding.weights(child).sum()) == pytest.approx(1.0)
    unrestricted = Unrestricted(count=6, min_size=2, max_size=5, rng=rng)
    for _ in range(300):
        a, b = unrestricted.create(), unrestricted.create()
        unrestricted.crossover(a, b)
        unrestricted.mutate(a)
        for child in (a, b):
            assert sorted(child.order) == list(range(6)) and 1 <= child.size <= 5
            assert sum(child.weights[: child.size]) == 100


def test_optimize_writes_a_better_ensemble_beside_the_runs_own(tmp_path):
    manifest = copy.deepcopy(TINY_RING)
    manifest["spec"]["grid"] = {"rows": 3, "cols": 3}
    manifest["spec"]["output"] = {"uri": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["run", str(tmp_path / "run.yaml"), "--in-process", "--quiet"]) == 0
    own = (tmp_path / "out" / "ensemble" / "manifest.json").read_bytes()
    out = str(tmp_path / "out")
    for method in ("greedy", "ga", "greedy-grid", "reo-gen", "nreo-gen"):
        flags = ["--samples", "500", "--max-size", "3", "--evaluations", "40"]
        if method in ("greedy", "ga"):
            flags = flags[:2]
        elif method == "greedy-grid":
            flags = [*flags[:4], "--patience", "2"]
        assert main(["ensemble", "optimize", out, "--method", method, *flags]) == 0
        found = json.loads((tmp_path / "out" / f"ensemble-{method}" / "manifest.json").read_text())
        search = found["search"]
        assert search["method"] == method and search["candidates"] >= 9  # one a cell, at least
        assert 1 <= len(found["generators"]) <= 8
        assert sum(g["weight"] for g in found["generators"]) == pytest.approx(1.0)
        assert found["objective"]["name"] == "mode-kl"
        if method == "ga":  # its first population holds the best cell's mixture
            assert found["objective"]["value"] <= search["bestCell"]["objective"]
        picture = tmp_path / f"{method}.png"
        assert main(["sample", f"{out}/ensemble-{method}", "-o", str(picture)]) == 0
    assert (tmp_path / "out" / "ensemble" / "manifest.json").read_bytes() == own


def test_a_runs_own_search_step_runs_once_and_the_jobs_command_repeats_it(
    tiny_manifest, tmp_path, capsys
):
    """`spec.ensemble` makes the search the run's last step; run again, the finished run
    changes nothing; the operator's Job command (`--run-spec`) finds the same ensemble."""
    tiny_manifest["spec"]["ensemble"] = {"method": "greedy", "samples": 300, "maxSize": 3}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_manifest))
    assert main(["run", str(path), "--in-process", "--quiet"]) == 0
    searched = tmp_path / "out" / "ensemble-greedy" / "manifest.json"
    first = searched.read_bytes()
    found = json.loads(first)
    assert found["search"] | {"candidates": 0} == {
        **found["search"],
        "method": "greedy",
        "maxSize": 3,
        "samples": 300,
        "seed": 5,  # spec.seed
        "candidates": 0,
    }
    assert 1 <= len(found["generators"]) <= 3 and found["objective"]["name"] == "mode-kl"
    assert "greedy over" in capsys.readouterr().out
    assert main(["run", str(path), "--in-process", "--quiet"]) == 0
    said = capsys.readouterr()
    assert "nothing to do" in said.err and "greedy over" in said.out
    assert searched.read_bytes() == first
    searched.unlink()
    assert main(["ensemble", "optimize", "--run-spec", str(path)]) == 0
    assert searched.read_bytes() == first


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["/nonexistent/run"], "/nonexistent/run: no finished run there"),
        (["/nonexistent/run", "--max-size", "0"], "--max-size: must be >= 1, got 0"),
        ([], "give RUN_URI or --run-spec RUN.yaml, one of them"),
        (["/r", "--run-spec", "r.yaml"], "give RUN_URI or --run-spec RUN.yaml, one of them"),
        (["--run-spec", "r.yaml", "--method", "ga"], "--method: with --run-spec the search"),
        (["--run-spec", "/nonexistent.yaml"], "--run-spec /nonexistent.yaml: No such file"),
    ],
)
def test_optimize_refuses_bad_input_in_one_line(arguments, said, capsys):
    assert main(["ensemble", "optimize", *arguments]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and said in lines[0]


def test_the_job_command_refuses_a_run_without_a_search(tiny_manifest, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_manifest))
    assert main(["ensemble", "optimize", "--run-spec", str(path)]) == 2
    assert "spec.ensemble.method is best-cell: nothing to search" in capsys.readouterr().err


def test_optimize_names_a_finished_runs_missing_data_file(tiny_manifest, tmp_path, capsys):
    """A finished run whose data file has gone since: the one line names the data, not
    "no finished run there"."""
    points = tmp_path / "ring.npy"
    np.save(points, np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32))
    tiny_manifest["spec"]["dataset"] = {"name": "array", "path": str(points)}
    run = parse_run(tiny_manifest)
    run_in_process(run, resume=False)
    points.unlink()
    assert main(["ensemble", "optimize", tiny_manifest["spec"]["output"]["uri"]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(points) in lines[0] and "no finished run" not in lines[0]
