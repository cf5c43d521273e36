"""Ensembles searched over the whole grid: the searches on their own, then
`lipizzaner ensemble optimize` on a finished run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from conftest import TINY_RING
from lipizzaner_cell.cli import main
from lipizzaner_cell.ensemble_search import GeneticSettings, genetic, greedy

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


def test_optimize_writes_a_better_ensemble_beside_the_runs_own(tmp_path):
    manifest = copy.deepcopy(TINY_RING)
    manifest["spec"]["grid"] = {"rows": 3, "cols": 3}
    manifest["spec"]["output"] = {"uri": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["run", str(tmp_path / "run.yaml"), "--in-process", "--quiet"]) == 0
    own = (tmp_path / "out" / "ensemble" / "manifest.json").read_bytes()
    out = str(tmp_path / "out")
    for method in ("greedy", "ga"):
        assert main(["ensemble", "optimize", out, "--method", method, "--samples", "500"]) == 0
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


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["/nonexistent/run"], "/nonexistent/run: no finished run there"),
        (["/nonexistent/run", "--max-size", "0"], "--max-size: must be >= 1, got 0"),
    ],
)
def test_optimize_refuses_bad_input_in_one_line(arguments, said, capsys):
    assert main(["ensemble", "optimize", *arguments]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and said in lines[0]
