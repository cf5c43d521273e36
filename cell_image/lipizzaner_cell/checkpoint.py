"""A cell's full state as safetensors + JSON, written through fsspec; never pickle.

Layout under a cell's directory:
    checkpoints/000010/state.safetensors   every tensor: weights, optimizer state, RNG states
    checkpoints/000010/state.json          everything else; written last, so it marks the
                                           checkpoint complete
Restoring makes the engine continue bit for bit as if it had never stopped.
"""

from __future__ import annotations

from typing import Any

import torch
from lipizzaner_core.layout import CellLayout
from lipizzaner_core.storage import join
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from lipizzaner_cell.engine import CellEngine
from lipizzaner_cell.individual import Individual
from lipizzaner_cell.mixture import KeptMixture

# 3: per-batch mutation, the original's batch order and loss names (2 continues differently).
FORMAT = "lipizzaner-cell-checkpoint/3"


def _export_individual(individual: Individual, prefix: str, tensors: dict) -> dict[str, Any]:
    for name, tensor in individual.net.state_dict().items():
        tensors[f"{prefix}.net.{name}"] = tensor
    for name, tensor in individual.moments().items():
        tensors[f"{prefix}.optimizer.{name}"] = tensor
    return {
        "learning_rate": individual.learning_rate,
        "fitness": individual.fitness,
        "source_cell": individual.source_cell,
    }


def _import_individual(
    individual: Individual, prefix: str, tensors: dict, meta: dict[str, Any]
) -> None:
    individual.net.load_state_dict(_under(tensors, f"{prefix}.net."))
    individual.set_learning_rate(meta["learning_rate"])
    individual.load_moments(_under(tensors, f"{prefix}.optimizer."))
    individual.fitness = meta["fitness"]
    individual.source_cell = meta["source_cell"]


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def export_state(engine: CellEngine) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {
        "rng": engine.rng.get_state(),
        "device_rng": engine.device_rng.get_state(),
    }
    meta: dict[str, Any] = {
        "format": FORMAT,
        "cell": engine.index,
        "generation": engine.generation,
        "offspring": [engine.offspring_accepted, engine.offspring_offered],
        "mixture_weights": {str(cell): w for cell, w in engine.mixture_weights.items()},
        "generators": [
            _export_individual(g, f"generators.{i}", tensors)
            for i, g in enumerate(engine.generators)
        ],
        "discriminators": [
            _export_individual(d, f"discriminators.{i}", tensors)
            for i, d in enumerate(engine.discriminators)
        ],
        "kept": _export_kept(engine.kept, tensors),
    }
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, meta


def import_state(engine: CellEngine, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    if meta.get("format") != FORMAT or meta.get("cell") != engine.index:
        raise ValueError(
            f"checkpoint is for cell {meta.get('cell')} in format {meta.get('format')!r}, "
            f"expected cell {engine.index} in {FORMAT!r}"
        )
    for role in ("generators", "discriminators"):
        population: list[Individual] = getattr(engine, role)
        if len(meta[role]) != len(population):
            raise ValueError(
                f"checkpoint has {len(meta[role])} {role}, the spec asks for {len(population)}"
            )
        for i, individual in enumerate(population):
            _import_individual(individual, f"{role}.{i}", tensors, meta[role][i])
    engine.rng.set_state(tensors["rng"])
    engine.device_rng.set_state(tensors["device_rng"])
    engine.mixture_weights = {int(c): w for c, w in meta["mixture_weights"].items()}
    engine.generation = meta["generation"]
    engine.offspring_accepted, engine.offspring_offered = meta["offspring"]
    engine.kept = _import_kept(meta.get("kept"), tensors)


def _export_kept(kept: KeptMixture | None, tensors: dict) -> dict[str, Any] | None:
    if kept is None:
        return None
    for cell, generator in kept.generators.items():
        for name, tensor in generator.items():
            tensors[f"kept.{cell}.{name}"] = tensor
    weights = {str(cell): weight for cell, weight in kept.weights.items()}
    return {"generation": kept.generation, "score": kept.score, "weights": weights}


def _import_kept(meta: dict[str, Any] | None, tensors: dict) -> KeptMixture | None:
    """The kept mixture of a checkpoint (None for one without: none yet, or older)."""
    if meta is None:
        return None
    weights = {int(cell): weight for cell, weight in meta["weights"].items()}
    return KeptMixture(
        generation=meta["generation"],
        score=meta["score"],
        weights=weights,
        generators={cell: _under(tensors, f"kept.{cell}.") for cell in weights},
    )


def save_checkpoint(engine: CellEngine, cell: CellLayout, keep: int) -> str:
    """Write the engine's state; prune all but the newest `keep` checkpoints."""
    tensors, meta = export_state(engine)
    storage = cell.storage
    target = cell.checkpoint(cell.checkpoint_name(engine.generation))
    storage.write_bytes(join(target, "state.safetensors"), save_tensors(tensors))
    storage.write_json(join(target, "state.json"), meta)
    for old in cell.completed_checkpoints()[:-keep]:
        storage.remove_tree(cell.checkpoint(old))
    return target


def restore_latest(engine: CellEngine, cell: CellLayout) -> bool:
    """Load the newest complete checkpoint into the engine; False if there is none."""
    done = cell.completed_checkpoints()
    if not done:
        return False
    target = cell.checkpoint(done[-1])
    meta = cell.storage.read_json(join(target, "state.json"))
    tensors = load_tensors(cell.storage.read_bytes(join(target, "state.safetensors")))
    import_state(engine, tensors, meta)
    return True
