"""What a finished cell leaves behind: its neighbourhood mixture and its scores.

    cells/<index>/result.json                     scores, objective, mixture weights, data info
    cells/<index>/mixture/generator-<cell>.safetensors   each mixture member's weights
The ensemble assembly (torch-free, in the operator package) only reads these files.
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import torch
from lipizzaner_core import __version__
from lipizzaner_core.layout import CellLayout
from lipizzaner_core.storage import join
from safetensors.torch import save as save_tensors

from lipizzaner_cell.datasets import Dataset
from lipizzaner_cell.engine import CellEngine
from lipizzaner_cell.mixture import sample_mixture
from lipizzaner_cell.selection import best

FINAL_SAMPLES = 10_000
REFERENCE_POINTS = 1000


def data_description(dataset: Dataset) -> dict[str, Any]:
    """What sampling needs to know about the data, without loading it."""
    modes = reference = None
    if dataset.modes is not None:
        modes = dataset.values.to_data(dataset.modes.numpy()).tolist()
    if len(dataset.shape) == 1:  # low-dimensional data: a sample of it for the preview
        reference = dataset.values.to_data(dataset.data[:REFERENCE_POINTS].numpy()).tolist()
    return {
        "dataset": dataset.name,
        "shape": list(dataset.shape),
        "values": dataset.values.as_dict(),
        "modes": modes,
        "reference": reference,
    }


def finish_cell(
    engine: CellEngine,
    dataset: Dataset,
    layout: CellLayout,
    missing_neighbours: Sequence[int] = (),
) -> dict[str, Any]:
    """Final mixture ES steps, final scores, and the cell's result files.

    `missing_neighbours`: neighbours this cell never heard from; the mixture leaves them out.
    """
    hood = engine.snapshot_neighbourhood()
    es_steps = engine.spec.mixture.es_generations_at_end
    if es_steps:
        engine.evolve_mixture(hood, steps=es_steps)
    cells, nets = engine.mixture_members(hood)
    weights = engine.mixture_weights_of(cells)
    scores: dict[str, float] = {}
    objective = None
    if engine.scorer is not None:
        embedded = engine.scorer.embed(sample_mixture(nets, weights, engine.noise(FINAL_SAMPLES)))
        scores = engine.scorer.scores_of(embedded)
        objective = {
            "name": engine.scorer.objective_name,
            "value": engine.scorer.objective_of(embedded),
        }
    mixture = []
    layout.storage.remove_tree(layout.mixture)  # no member of an earlier mixture stays
    for cell, net, weight in zip(cells, nets, weights.tolist(), strict=True):
        name = layout.mixture_generator(cell)
        tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        layout.storage.write_bytes(join(layout.uri, name), save_tensors(tensors))
        mixture.append({"cell": cell, "weight": weight, "file": name})
    row, col = engine.grid.position(engine.index)
    result = {
        "cell": engine.index,
        "row": row,
        "col": col,
        "generation": engine.generation,
        "objective": objective,
        "scores": scores,
        "generatorFitness": best(engine.generators).fitness,
        "missingNeighbours": list(missing_neighbours),
        "offspring": {
            "accepted": engine.offspring_accepted,
            "offered": engine.offspring_offered,
        },
        "mixture": mixture,
        "data": data_description(dataset),
        "provenance": {
            "lipizzaner": __version__,
            "torch": torch.__version__,
            "device": str(engine.device),
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "cellSeed": engine.seed,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    layout.storage.write_json(layout.result, result)
    return result
