"""Which torch device a run's `training.device` means on this machine."""

from __future__ import annotations

import torch


def resolve_device(requested: str) -> torch.device:
    """`auto`: a GPU where torch sees one, else the CPU; `cuda` without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device: cuda requested but torch sees no CUDA device")
    return torch.device(requested)
