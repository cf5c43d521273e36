"""Real-data embeddings cached on the run's storage: computed once per run, not per cell.

A feature network's embedding of the reference data (the held-out split) is a full pass of,
say, Inception-v3 over thousands of images. Every cell of a run needs the same one, and a
restarted cell needs it again, so the first cell to compute it leaves it under the run's
output (`RunLayout.references`) for the others. A file is named by a digest of what the
embedding depends on (the network's weights and the data), so a changed network or data
set never reads a stale one, and an unreadable file is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.storage import Storage, join
from safetensors import SafetensorError
from safetensors.torch import load, save

from lipizzaner_cell.data.datasets import Dataset

log = logging.getLogger(__name__)

EMBEDDING = "embedding"  # the one tensor in a cached file
# The cells of one process (`spec.cell.cellsPerPod`) look up one at a time, so the first
# computes an embedding and the others read its file, instead of all computing it at once.
LOOKUP = threading.Lock()
SAMPLED_ELEMENTS = 1 << 20  # of the data, hashed into the digest (evenly strided)


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def reference_digest(network: torch.nn.Module, real: Dataset) -> str:
    """What a reference embedding depends on: every weight of the network, and the data
    (its identity, shape and an evenly strided sample of its values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(_tensor_bytes(tensor))
    flat = real.data.reshape(-1)
    digest.update(f"{real.identity}:{tuple(real.data.shape)}".encode())
    digest.update(_tensor_bytes(flat[:: max(1, flat.numel() // SAMPLED_ELEMENTS)]))
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class ReferenceCache:
    """A directory (any fsspec URI) of reference embeddings, one safetensors file each."""

    uri: str
    storage: Storage

    @classmethod
    def of(cls, layout: RunLayout) -> ReferenceCache:
        return cls(layout.references, layout.storage)

    def embedding(self, key: str, rows: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached embedding named `key` if it holds `rows` rows, else `compute()`'s,
        which is then cached. Caching is best effort: a failed write only logs."""
        with LOOKUP:
            return self._embedding(key, rows, compute)

    def _embedding(self, key: str, rows: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = join(self.uri, f"{key}.safetensors")
        cached = self._read(path)
        if cached is not None and cached.ndim == 2 and cached.shape[0] == rows:
            return cached
        embedded = compute()
        try:
            self.storage.write_bytes(path, save({EMBEDDING: embedded.contiguous()}))
        except OSError as exc:
            log.warning("reference embedding not cached at %s: %s", path, exc)
        return embedded

    def _read(self, path: str) -> torch.Tensor | None:
        try:
            if not self.storage.exists(path):
                return None
            return load(self.storage.read_bytes(path))[EMBEDDING]
        except (OSError, SafetensorError, KeyError) as exc:
            log.warning("reference embedding at %s unreadable (%s): recomputing", path, exc)
            return None
