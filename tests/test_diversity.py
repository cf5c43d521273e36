"""What the grid's diversity is read from: every individual's lineage (the cell and
generation its founder was created in) and the mixture weights' entropy."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_runs import with_spec
from lipizzaner_cell.algorithm.cell_mixture import CellMixture
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.history import read_history
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from lipizzaner_core.spec.outcome import MixtureSpec

ROOT = Path(__file__).resolve().parents[1]


def test_lineages_begin_at_the_founders_and_travel_with_offspring_and_imports(tiny_manifest):
    """Founders are each cell's first individuals (generation 0); every later individual,
    a neighbour's copy included, carries one of them, and the history records the local
    populations' origins, best first, each generation."""
    manifest = with_spec(tiny_manifest, coevolution={"populationSize": 2, "learningRate": 1e-3})
    run = parse_run(manifest)
    outcome = run_in_process(run, resume=False)
    founders = {(cell, 0) for cell in range(4)}
    for engine in outcome.engines:
        for individual in [*engine.generators, *engine.discriminators]:
            assert individual.origin in founders
        for imported in engine.imports._imported.values():
            assert imported.origin in founders
        history = read_history(RunLayout.of(run).cell(engine.index))
        assert [len(line["generator_origins"]) for line in history] == [2] * 4
        last = history[-1]
        assert {tuple(o) for o in last["generator_origins"]} == {
            g.origin for g in engine.generators
        }
        assert 0 <= last["mixture_entropy"] <= math.log(3) + 1e-9  # a centre, 2 neighbours


def test_mixture_entropy_is_zero_for_one_generator_and_ln_n_for_n_alike():
    mixture = CellMixture(MixtureSpec(), [0, 1, 2, 3])
    assert mixture.entropy() == pytest.approx(math.log(4))
    mixture.weights = {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0}
    assert mixture.entropy() == 0.0
    mixture.weights = {0: 0.2, 1: 0.2}  # unnormalised weights count as their shares
    assert mixture.entropy() == pytest.approx(math.log(2))


def test_the_diversity_script_reads_a_runs_lineages_and_entropies(tiny_manifest, tmp_path):
    """`bench/diversity.py RUN.yaml --train`: per generation, lineages within the grid's
    founders and entropies within [0, ln 3], and a plot."""
    spec_path = tmp_path / "run.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_manifest))
    plot = tmp_path / "diversity.png"
    command = [sys.executable, "bench/diversity.py", str(spec_path), "--train", "--plot", str(plot)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert "centre lineages" in done.stdout and plot.stat().st_size > 0
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from diversity import diversity_rows, read_run
    finally:
        sys.path.remove(str(ROOT / "bench"))
    rows = diversity_rows(read_run(parse_run(tiny_manifest)))
    assert [row["generation"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert 1 <= row["centre_lineages"] <= row["all_lineages"] <= 4
        assert row["largest_share"] * 4 >= 1
        assert 0 <= row["entropy_min"] <= row["entropy_mean"] <= math.log(3) + 1e-9
