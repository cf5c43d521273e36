"""Data drawn from the run's seed: mixtures of Gaussians on a ring or a grid, sine waves."""

from __future__ import annotations

import math

import numpy as np
import torch
from lipizzaner_core.spec.datasets import (
    GaussianGridSpec,
    GaussianRingSpec,
    SineWavesSpec,
)
from lipizzaner_core.storage import Storage

from lipizzaner_cell.data.datasets import Dataset, ValueMap


def _mixture_of_gaussians(
    centres: np.ndarray, std: float, size: int, seed: int, name: str, identity: str
) -> Dataset:
    rng = np.random.default_rng(seed)
    which = rng.integers(len(centres), size=size)
    points = centres[which] + rng.normal(scale=std, size=(size, 2))
    extent = float(np.abs(centres).max() + 3 * std) * 1.1
    return Dataset(
        name=name,
        data=torch.from_numpy(points / extent).float(),
        values=ValueMap([extent], [0.0], "float32", bounded=False),
        labels=torch.from_numpy(which),
        classes=len(centres),
        modes=torch.from_numpy(centres / extent).float(),
        mode_std=std / extent,
        identity=identity,
    )


def load_gaussian_ring(spec: GaussianRingSpec, seed: int, storage: Storage) -> Dataset:
    angles = 2 * math.pi * np.arange(spec.modes) / spec.modes
    centres = spec.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    identity = f"gaussian-ring:{spec.modes}:{spec.radius}:{spec.std}"
    return _mixture_of_gaussians(centres, spec.std, spec.size, seed, spec.name, identity)


def load_gaussian_grid(spec: GaussianGridSpec, seed: int, storage: Storage) -> Dataset:
    k = spec.modes_per_side
    ticks = (np.arange(k) - (k - 1) / 2) * spec.spacing
    centres = np.array([(x, y) for x in ticks for y in ticks], dtype=np.float64)
    identity = f"gaussian-grid:{k}:{spec.spacing}:{spec.std}"
    return _mixture_of_gaussians(centres, spec.std, spec.size, seed, spec.name, identity)


def load_sine_waves(spec: SineWavesSpec, seed: int, storage: Storage) -> Dataset:
    """Sine waves of a random frequency (cycles per sequence) and phase per channel."""
    rng = np.random.default_rng(seed)
    shape = (spec.size, 1, spec.waves)
    frequency = rng.uniform(spec.min_frequency, spec.max_frequency, size=shape)
    phase = rng.uniform(0, 2 * np.pi, size=shape)
    t = (np.arange(spec.length) / spec.length)[None, :, None]
    waves = np.sin(2 * np.pi * frequency * t + phase)
    return Dataset(
        name="sine-waves",
        data=torch.from_numpy(waves).float(),
        values=ValueMap([1.0], [0.0], "float32"),
        identity=f"sine-waves:{spec.size}:{spec.length}:{spec.waves}:"
        f"{spec.min_frequency}:{spec.max_frequency}",
    )
