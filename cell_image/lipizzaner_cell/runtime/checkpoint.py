"""A cell's checkpoint files: safetensors + JSON through fsspec, never pickle; their
write order, verification and pruning. What the state holds is its owners' to say
(`CellEngine.state_dict`).

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

from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.state import State

# 3: per-batch mutation, the original's batch order and loss names (2 continues differently).
FORMAT = "lipizzaner-cell-checkpoint/3"
log = logging.getLogger(__name__)


class NoIntactCheckpoint(DamagedFile):
    """A cell has checkpoints and every one of them is damaged."""


def export_state(engine: CellEngine) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The engine's state as the two files hold it: CPU tensors, and JSON with the format."""
    state = engine.state_dict()
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.tensors.items()}
    return tensors, {"format": FORMAT, **state.values}


def import_state(engine: CellEngine, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    values = dict(meta)
    if values.pop("format", None) != FORMAT:
        raise ValueError(f"checkpoint is in format {meta.get('format')!r}, expected {FORMAT!r}")
    engine.load_state_dict(State(tensors, values))


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
