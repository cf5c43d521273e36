"""A cell's full state as safetensors + JSON, written through fsspec; never pickle.

Layout under a cell's directory:
    checkpoints/000010/state.safetensors   every tensor: weights, optimizer state, RNG states
    checkpoints/000010/state.json          everything else
    checkpoints/000010/digests.json        the SHA-256 of both; written last, so it marks
                                           the checkpoint complete
Restoring makes the engine continue bit for bit as if it had never stopped. A checkpoint
whose files do not match their digests (a torn write, a flipped bit) is passed over with a
warning for the one before it; with none intact the cell refuses to start (exit 2) rather
than train from scratch over the run's results.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch
from lipizzaner_core.layout import CHECKPOINT_FILES, CHECKPOINT_MARKER, CellLayout
from lipizzaner_core.storage import DamagedFile, damaged_as, join, json_bytes
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from lipizzaner_cell.engine import CellEngine
from lipizzaner_cell.individual import Individual
from lipizzaner_cell.mixture import KeptMixture

# 3: per-batch mutation, the original's batch order and loss names (2 continues differently).
FORMAT = "lipizzaner-cell-checkpoint/3"
log = logging.getLogger(__name__)


class NoIntactCheckpoint(DamagedFile):
    """A cell has checkpoints and every one of them is damaged."""


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
    """Write the engine's state, then its digests; prune all but the newest `keep`."""
    tensors, meta = export_state(engine)
    storage = cell.storage
    target = cell.checkpoint(cell.checkpoint_name(engine.generation))
    files = dict(zip(CHECKPOINT_FILES, (save_tensors(tensors), json_bytes(meta)), strict=True))
    for name, data in files.items():
        storage.write_bytes(join(target, name), data)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    marker = {"format": FORMAT, "sha256": digests, "check": _check(digests)}
    storage.write_json(join(target, CHECKPOINT_MARKER), marker)
    for old in cell.completed_checkpoints()[:-keep]:
        storage.remove_tree(cell.checkpoint(old))
    return target


def _check(digests: dict[str, str]) -> str:
    """The marker's check of itself: a flipped digest is the marker's damage, not its file's."""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def read_checkpoint(cell: CellLayout, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint's tensors and metadata, each file checked against its digest;
    DamagedFile names the first file that is not what was written."""
    target = cell.checkpoint(name)
    marker = join(target, CHECKPOINT_MARKER)
    with damaged_as(marker):
        recorded = cell.storage.read_json(marker)
        digests = dict(recorded["sha256"])
        if recorded["check"] != _check(digests):
            raise ValueError("its digests do not match their own check")
    contents = {}
    for file in CHECKPOINT_FILES:
        uri = join(target, file)
        try:
            data = cell.storage.read_bytes(uri)
        except FileNotFoundError:
            raise DamagedFile(uri, "missing") from None
        if hashlib.sha256(data).hexdigest() != digests.get(file):
            raise DamagedFile(uri, f"its SHA-256 is not the one {CHECKPOINT_MARKER} records")
        contents[file] = data
    tensors_file, meta_file = CHECKPOINT_FILES
    with damaged_as(join(target, tensors_file), also=(SafetensorError,)):
        tensors = load_tensors(contents[tensors_file])
    with damaged_as(join(target, meta_file)):
        meta = cell.storage.read_json(join(target, meta_file))
    return tensors, meta


def restore_latest(engine: CellEngine, cell: CellLayout) -> bool:
    """Load the newest intact checkpoint into the engine; False if there is none at all.
    Damaged ones are passed over with a warning; NoIntactCheckpoint if all are."""
    damaged: list[DamagedFile] = []
    for name in reversed(cell.completed_checkpoints()):
        try:
            tensors, meta = read_checkpoint(cell, name)
        except DamagedFile as exc:
            log.warning("cell %d: %s; trying the checkpoint before it", engine.index, exc)
            damaged.append(exc)
            continue
        with damaged_as(join(cell.checkpoint(name), CHECKPOINT_FILES[1])):
            import_state(engine, tensors, meta)
        if damaged:
            log.warning("cell %d: resumed from the older checkpoint %s", engine.index, name)
        return True
    if damaged:
        reasons = "; ".join(f"{d.uri} ({d.reason})" for d in damaged)
        raise NoIntactCheckpoint(
            cell.checkpoints,
            f"no intact checkpoint: {reasons}; `lipizzaner run --fresh` starts the run over",
        )
    return False
