"""Datasets as objects that know their shape, their value range and how to load.

All data lives in model space, [-1, 1], as a float32 tensor in memory; `ValueMap` maps
model space back to the data's own range (pixel values 0-255, the ring's coordinates).
The training loop never looks at a dataset's name. The kinds load in `synthetic.py`,
`images.py` and `arrays.py`; `loading.py` picks one by the spec's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

VALIDATION_SEED = 0  # the held-out samples are the same in every cell and every run


@dataclass(frozen=True)
class ValueMap:
    """data = model * scale + offset, per feature or as scalars; `dtype` is the data's own.

    Bounded data (images, arrays) lives in [-1, 1] in model space, so its own range is
    offset - scale .. offset + scale; unbounded data (the 2-D Gaussians) is not clipped.
    """

    scale: list[float]
    offset: list[float]
    dtype: str = "float32"
    bounded: bool = True

    def to_data(self, x: np.ndarray) -> np.ndarray:
        """Model-space samples in the data's own range and dtype (integers rounded)."""
        flat = x.reshape(x.shape[0], -1).astype(np.float64)
        if self.bounded:
            flat = np.clip(flat, -1.0, 1.0)
        values = (flat * np.asarray(self.scale) + np.asarray(self.offset)).reshape(x.shape)
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            values = np.rint(values)
        return values.astype(self.dtype)

    @property
    def low(self) -> float:
        return float(np.min(np.asarray(self.offset) - np.asarray(self.scale)))

    @property
    def high(self) -> float:
        return float(np.max(np.asarray(self.offset) + np.asarray(self.scale)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "offset": self.offset,
            "dtype": self.dtype,
            "bounded": self.bounded,
        }


@dataclass
class Dataset:
    """Samples in model space plus what scoring and plotting need to know about them."""

    name: str
    data: torch.Tensor
    values: ValueMap
    labels: torch.Tensor | None = None
    classes: int | None = None  # how many classes `labels` counts (0 .. classes - 1)
    # Synthetic 2-D data: mode centres and their standard deviation, in model space.
    modes: torch.Tensor | None = None
    mode_std: float | None = None
    identity: str = ""
    # Splits made so far, by fraction: the cells of one process share theirs, not a copy
    # each (MNIST's 10,000 digits are 31 MB).
    _splits: dict[float, tuple[Dataset, Dataset | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __len__(self) -> int:
        return self.data.shape[0]

    def split(self, fraction: float) -> tuple[Dataset, Dataset | None]:
        """(training, validation): `fraction` of the samples held out for scoring.

        The split is fixed (seeded with VALIDATION_SEED, not the run's seed), so every
        cell and every run of the same data holds out the same samples and their scores
        compare. None for the validation set when the fraction rounds to no sample.
        """
        if fraction not in self._splits:
            count = min(round(fraction * len(self)), len(self) - 1)
            if count < 1:
                return self, None
            seeded = torch.Generator().manual_seed(VALIDATION_SEED)
            order = torch.randperm(len(self), generator=seeded)
            held, kept = order[:count].sort().values, order[count:].sort().values
            self._splits[fraction] = self._rows(kept, "training"), self._rows(held, "validation")
        return self._splits[fraction]

    def _rows(self, rows: torch.Tensor, part: str) -> Dataset:
        labels = self.labels[rows] if self.labels is not None else None
        identity = f"{self.identity}:{part}:{len(rows)}"
        return replace(self, data=self.data[rows], labels=labels, identity=identity)

    def subset(self, ratio: float, seed: int) -> Dataset:
        """Data dieting: a random subset of round(ratio * n) samples, seeded per cell."""
        if ratio >= 1.0:
            return self
        count = max(1, round(ratio * len(self)))
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self._rows(order[:count].sort().values, f"subset-{seed}")
