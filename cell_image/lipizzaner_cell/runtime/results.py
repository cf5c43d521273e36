"""What a finished cell leaves behind: its neighbourhood mixture and its scores.

    cells/<index>/result.json                     scores, objective, mixture weights, data info
    cells/<index>/mixture/generator-<cell>.safetensors   each mixture member's weights
The ensemble's assembly (`lipizzaner_core.ensemble`: torch-free, run by the local
executors and by the operator) only reads these files.
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from lipizzaner_core import __version__
from lipizzaner_core.layout import CellLayout
from lipizzaner_core.storage import Storage, join
from safetensors.torch import save as save_tensors

from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.mixture import sample_mixture
from lipizzaner_cell.algorithm.selection import best
from lipizzaner_cell.algorithm.semi_supervised import sample_digests
from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.scores.choice import build_report_scorer

REFERENCE_POINTS = 1000
REFERENCE_SEQUENCES = 8  # real sequences kept for the preview


def data_description(dataset: Dataset) -> dict[str, Any]:
    """What sampling needs to know about the data, without loading it."""
    modes = reference = None
    if dataset.modes is not None:
        modes = dataset.values.to_data(dataset.modes.numpy()).tolist()
    if len(dataset.shape) == 1:  # low-dimensional data: a sample of it for the preview
        reference = dataset.values.to_data(dataset.data[:REFERENCE_POINTS].numpy()).tolist()
    elif len(dataset.shape) == 2:  # sequences: a few real ones to draw beside the samples
        reference = dataset.values.to_data(dataset.data[:REFERENCE_SEQUENCES].numpy()).tolist()
    return {
        "dataset": dataset.name,
        "shape": list(dataset.shape),
        "values": dataset.values.as_dict(),
        "modes": modes,
        "reference": reference,
    }


@dataclass
class Candidate:
    """A mixture the cell may end with, scored on the same final samples as the other."""

    generation: int
    cells: list[int]
    nets: list[torch.nn.Module]
    weights: torch.Tensor
    objective: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    train_scores: dict[str, float] = field(default_factory=dict)


def final_candidates(engine: CellEngine) -> list[Candidate]:
    """The last generation's mixture (after `esGenerationsAtEnd` more ES steps), and with
    keep-best the kept one when it is from an earlier generation."""
    hood = engine.snapshot_neighbourhood()
    engine.evolve_mixture(hood, engine.spec.mixture.es_generations_at_end)
    cells, nets = engine.centres(hood, "generator")
    candidates = [Candidate(engine.generation, cells, nets, engine.mixture.weights_of(cells))]
    kept = engine.mixture.kept
    if kept is not None and kept.generation < engine.generation:
        kept_cells = list(kept.weights)
        candidates.append(
            Candidate(
                kept.generation,
                kept_cells,
                [engine.generator_from(kept.generators[c]) for c in kept_cells],
                torch.tensor([kept.weights[c] for c in kept_cells], dtype=torch.float64),
            )
        )
    return candidates


def choose(engine: CellEngine, candidates: list[Candidate], noise: torch.Tensor) -> Candidate:
    """The candidate with the lowest objective on samples from the same noise (against
    the held-out data); the last mixture on a tie or without a score."""
    if engine.scorer is None:
        return candidates[0]
    objectives = [
        engine.scorer.objective(sample_mixture(c.nets, c.weights, noise)) for c in candidates
    ]
    for candidate, objective in zip(candidates, objectives, strict=True):
        candidate.objective = objective
    return candidates[objectives.index(min(objectives))]


def report(
    engine: CellEngine, chosen: Candidate, noise: torch.Tensor, storage: Storage | None
) -> None:
    """The final scores of the chosen mixture against the held-out and the training data,
    in the `score.final` network (the samples `choose` scored)."""
    spec = engine.spec
    reference_sets = {"scores": engine.validation_set or engine.training_set}
    if engine.validation_set is not None:
        reference_sets["train_scores"] = engine.training_set
    scorers = {
        name: build_report_scorer(
            engine.scorer,
            spec.mixture.score_type,
            reference,
            engine.device,
            spec.score,
            storage,
            engine.references,
        )
        for name, reference in reference_sets.items()
    }
    embedded = None  # embeddings do not depend on the reference: computed once
    for name, scorer in scorers.items():
        if scorer is not None:
            if embedded is None:
                embedded = scorer.embed(sample_mixture(chosen.nets, chosen.weights, noise))
            setattr(chosen, name, scorer.final_scores(embedded))


def finish_cell(
    engine: CellEngine,
    dataset: Dataset,
    layout: CellLayout,
    missing_neighbours: Sequence[int] = (),
) -> dict[str, Any]:
    """Final mixture ES steps, final scores, and the cell's result files.

    `missing_neighbours`: neighbours this cell never heard from; the mixture leaves them out.
    """
    candidates = final_candidates(engine)
    noise = engine.noise(engine.spec.score.final_samples)
    chosen = choose(engine, candidates, noise)
    report(engine, chosen, noise, layout.storage)
    cells, nets, weights = chosen.cells, chosen.nets, chosen.weights
    objective = None
    if engine.scorer is not None:
        objective = {"name": engine.scorer.objective_name, "value": chosen.objective}
    mixture = []
    layout.storage.remove_tree(layout.mixture)  # no member of an earlier mixture stays
    for cell, net, weight in zip(cells, nets, weights.tolist(), strict=True):
        name = layout.mixture_generator(cell)
        layout.storage.write_bytes(join(layout.uri, name), save_tensors(_tensors(net)))
        mixture.append({"cell": cell, "weight": weight, "file": name})
    row, col = engine.grid.position(engine.index)
    result = {
        "cell": engine.index,
        "row": row,
        "col": col,
        "generation": engine.generation,
        "objective": objective,
        "scores": chosen.scores,
        "trainScores": chosen.train_scores,
        "scoredOn": engine.scored_on,
        "mixtureGeneration": chosen.generation,
        "candidates": [
            {"generation": c.generation, "objective": c.objective, "chosen": c is chosen}
            for c in candidates
        ],
        "generatorFitness": best(engine.generators).fitness,
        "loss": engine.step_losses.trained_with,
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
    if engine.semi is not None:
        result["classifier"] = write_classifiers(engine, layout)
    layout.storage.write_json(layout.result, result)
    return result


def write_classifiers(engine: CellEngine, layout: CellLayout) -> dict[str, Any]:
    """Semi-supervised runs: the neighbourhood's centre discriminators, the cell's own
    first, and the accuracy of its own and of their vote on the held-out data."""
    cells, nets = engine.centres(engine.snapshot_neighbourhood(), "discriminator")
    layout.storage.remove_tree(layout.classifiers)
    members = []
    for cell, net in zip(cells, nets, strict=True):
        name = layout.classifier(cell)
        layout.storage.write_bytes(join(layout.uri, name), save_tensors(_tensors(net)))
        members.append({"cell": cell, "file": name})
    semi = engine.semi
    assert semi is not None  # only semi-supervised runs write classifiers
    return {
        "classes": engine.classes,
        "labelled": len(semi.classes),
        "labelledDigests": sample_digests(semi.samples),
        "scoredOn": engine.scored_on,
        "accuracy": {
            "discriminator": semi.accuracy(nets[:1]),
            "neighbourhood": semi.accuracy(nets),
        },
        "members": members,
    }


def _tensors(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
