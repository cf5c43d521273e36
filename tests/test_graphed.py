"""Step 4 as captured CUDA graphs (`algorithm/graphed_steps.py`) against plain PyTorch steps.

The slots, their copies in and out and the static buffers run on any device without
capturing: on the CPU the whole run must come out bit for bit as the plain one's. With a
GPU the same comparison runs with the graphs captured and replayed (skipped without one).
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.graphed_steps import GraphedSteps, graphable
from lipizzaner_cell.algorithm.losses import LOSSES
from lipizzaner_cell.algorithm.training import EagerSteps
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.checkpoint import export_state
from lipizzaner_core.spec import parse_run

CUDA = pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
)
PACKINGS = {
    "selection": {},
    "no-selection-mustangs": {
        "loss": "mustangs",
        "coevolution": {"populationSize": 2, "selection": False, "tournamentSize": 2},
    },
    "mse-population-2": {"loss": "mse", "coevolution": {"populationSize": 2}},
    # The EMA reads a player's weights from its slot after every replayed step.
    "ema": {"training": {"generatorEma": {"decay": 0.9}}},
    "no-ema": {"training": {"generatorEma": {"decay": 0.0}}},
}


def final_states(manifest: dict, output, steps: str, monkeypatch) -> list[tuple[dict, dict]]:
    """Every cell's tensors and metadata after the run, with plain or graphed steps."""
    manifest = copy.deepcopy(manifest)
    manifest["spec"]["output"] = {"uri": str(output)}
    run = parse_run(manifest)

    def chosen(engine: CellEngine):
        if steps == "plain":
            return None
        return GraphedSteps(engine.device, capture=engine.device.type == "cuda")

    monkeypatch.setattr(CellEngine, "_graphed_steps", chosen)
    return [export_state(engine) for engine in run_in_process(run, resume=False).engines]


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("packing", PACKINGS)
def test_graphed_steps_give_the_same_run_bit_for_bit(
    tiny_manifest, tmp_path, monkeypatch, device, packing
):
    manifest = copy.deepcopy(tiny_manifest)
    for section, fields in copy.deepcopy(PACKINGS[packing]).items():
        if isinstance(manifest["spec"].get(section), dict):
            manifest["spec"][section].update(fields)
        else:
            manifest["spec"][section] = fields
    manifest["spec"]["generations"] = 3
    manifest["spec"]["training"]["device"] = device
    plain = final_states(manifest, tmp_path / "plain", "plain", monkeypatch)
    graphed = final_states(manifest, tmp_path / "graphed", "graphed", monkeypatch)
    for (plain_tensors, plain_meta), (graphed_tensors, graphed_meta) in zip(
        plain, graphed, strict=True
    ):
        assert plain_meta == graphed_meta
        assert plain_tensors.keys() == graphed_tensors.keys()
        different = [
            name for name, t in plain_tensors.items() if not torch.equal(t, graphed_tensors[name])
        ]
        assert different == []


def test_the_engine_graphs_only_cuda_steps_it_can_capture(tiny_manifest):
    run = parse_run(tiny_manifest)  # training.device: cpu
    assert isinstance(CellEngine(run, 0, _Nobody(), _dataset(run)).trainer.steps, EagerSteps)
    assert graphable(LOSSES["bce"]) and graphable(LOSSES["mse"])
    assert not graphable(LOSSES["wgan"])  # RMSprop and clipping: plain steps
    assert not graphable(LOSSES["wgan-gp"])  # the penalty's mixing draws inside the step


class _Nobody:
    def neighbour_states(self, generation: int) -> contextlib.nullcontext[dict]:
        return contextlib.nullcontext({})

    def publish(self, state) -> None:
        pass


def _dataset(run):
    from lipizzaner_cell.data.loading import load_dataset
    from lipizzaner_core.storage import Storage

    return load_dataset(run.spec.dataset, run.spec.seed, Storage())
