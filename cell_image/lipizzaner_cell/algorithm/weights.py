"""A network's weights from a run's output (safetensors, never pickle); damage is named."""

from __future__ import annotations

import torch
from lipizzaner_core.storage import DamagedFile, Storage, damaged_as
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors


def load_weights(net: torch.nn.Module, storage: Storage, uri: str) -> torch.nn.Module:
    """`net` with the weights at `uri`, in eval mode; DamagedFile if the file a manifest
    names is missing, torn, or holds other tensors than `net` has."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise DamagedFile(uri, "missing, though a manifest names it") from None
    with damaged_as(uri, also=(SafetensorError,)):
        net.load_state_dict(load_tensors(data))
    return net.eval()
