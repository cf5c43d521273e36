"""A run's dataset by the spec's name, and the check of local files before any cell starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lipizzaner_core.storage import Storage

from lipizzaner_cell.data.arrays import load_array, load_sequences
from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.data.images import load_cifar10, load_image_folder, load_mnist
from lipizzaner_cell.data.synthetic import load_gaussian_grid, load_gaussian_ring, load_sine_waves

LOADERS: dict[str, Callable[..., Dataset]] = {
    "gaussian-ring": load_gaussian_ring,
    "gaussian-grid": load_gaussian_grid,
    "mnist": load_mnist,
    "fashion-mnist": load_mnist,
    "cifar10": load_cifar10,
    "image-folder": load_image_folder,
    "array": load_array,
    "sequences": load_sequences,
    "sine-waves": load_sine_waves,
}


def check_local_data(spec: Any) -> None:
    """Load a dataset whose files are on this machine, so that what is wrong with them
    (missing, shapes, keys, labels, NaN) is said before any cell starts; data elsewhere
    (s3://...) is left to the cells."""
    path = getattr(spec, "path", None)
    if path is None or ("://" in path and not path.startswith("file://")):
        return
    if getattr(spec, "download", False):
        return  # fetched by the first cell when missing
    load_dataset(spec, 0)


def load_dataset(spec, seed: int, storage: Storage | None = None) -> Dataset:
    """The full dataset of a run; synthetic data is drawn from the run's seed. Files are
    read through `storage` (the run's: its S3 endpoint too)."""
    return LOADERS[spec.name](spec, seed, storage or Storage())
