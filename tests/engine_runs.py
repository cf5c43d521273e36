"""Helpers of the engine tests: tiny runs changed, run, resumed and compared."""

import copy

import torch
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.neighbourhood import InProcessExchange
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.checkpoint import export_state
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from lipizzaner_core.topology import Grid


def with_spec(manifest: dict, **changes) -> dict:
    manifest = copy.deepcopy(manifest)
    manifest["spec"].update(changes)
    return manifest


def final_state(outcome) -> list[tuple[dict, dict]]:
    return [export_state(engine) for engine in outcome.engines]


def assert_resume_is_bit_exact(manifest: dict, tmp_path, generations: int = 4) -> None:
    """A run checkpointed halfway and resumed ends bit for bit where a straight run does."""
    half = generations // 2
    straight = with_spec(manifest, generations=generations, output={"uri": str(tmp_path / "a")})
    first_leg = with_spec(manifest, generations=half, output={"uri": str(tmp_path / "b")})
    second_leg = with_spec(first_leg, generations=generations)
    first_leg["spec"]["checkpoint"] = {"every": half}

    reference = run_in_process(parse_run(straight), resume=False)
    run_in_process(parse_run(first_leg), resume=False)
    resumed = run_in_process(parse_run(second_leg))

    cells = len(reference.engines)
    assert resumed.resumed_at == dict.fromkeys(range(cells), half)
    for (ref_tensors, ref_meta), (res_tensors, res_meta) in zip(
        final_state(reference), final_state(resumed), strict=True
    ):
        assert ref_meta == res_meta
        assert ref_tensors.keys() == res_tensors.keys()
        different = [n for n, t in ref_tensors.items() if not torch.equal(t, res_tensors[n])]
        assert different == []


def two_cells(manifest: dict) -> list[CellEngine]:
    """Both engines of a 1x2 grid, each holding the other's first centre."""
    run = parse_run(manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    exchange = InProcessExchange()
    grid = Grid(1, 2)
    engines = [
        CellEngine(run, i, exchange.provider([n.index for n in grid.neighbours(i)]), dataset)
        for i in range(2)
    ]
    for engine in engines:
        engine.publish_centre()
    exchange.commit()
    return engines


def layout_result(manifest: dict, cell: int) -> dict:
    """A cell's result.json of a finished run."""
    run = parse_run(manifest)
    layout = RunLayout.of(run).cell(cell)
    return layout.storage.read_json(layout.result)
