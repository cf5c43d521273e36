"""Datasets from array files (.npy, .npz): samples with optional labels, and sequences;
each scaled into model space by its own range. Pickled objects are refused."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import torch
from lipizzaner_core.spec.datasets import (
    ArraySpec,
    SequencesSpec,
)
from lipizzaner_core.storage import Storage

from lipizzaner_cell.data.datasets import Dataset, ValueMap


def read_array(
    storage: Storage, path: str, key: str | None, field: str = "dataset.key"
) -> np.ndarray:
    """One array of a .npy or .npz file; pickled objects are refused, never loaded.
    `field` names where the key came from, in errors."""
    try:
        loaded = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return loaded
        keys = list(loaded.keys())
        key = key or (keys[0] if keys else None)
        if key not in keys:
            raise KeyError(f"{field}: {key!r} not in {path} (has {keys})")
        return loaded[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise FileNotFoundError(f"dataset.path: no file {path}") from None
        raise ValueError(
            f"dataset.path: {path} is not a readable .npy or .npz file ({exc})"
        ) from None


def finite_values(array: np.ndarray, path: str) -> np.ndarray:
    """`array` as float64, refused if it holds NaN or infinities: they would train into
    NaN weights and scores."""
    values = np.asarray(array, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(values), -1).any(axis=1))[0][0])
        raise ValueError(
            f"dataset.path: {path} holds {int(bad.sum())} NaN or infinite values "
            f"(the first in sample {first}); clean or drop those samples"
        )
    return values


def value_map(low: np.ndarray, high: np.ndarray, dtype: np.dtype) -> ValueMap:
    """Each feature's own [low, high] onto [-1, 1]; a feature constant in the data maps
    back to its constant, so no sample leaves the data's range."""
    return ValueMap(((high - low) / 2).tolist(), ((high + low) / 2).tolist(), str(dtype))


def to_model_space(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Into [-1, 1] per feature; constant features are 0."""
    half = np.where(high > low, (high - low) / 2, 1.0)
    return (values - (high + low) / 2) / half


def load_array(spec: ArraySpec, seed: int, storage: Storage) -> Dataset:
    array = read_array(storage, spec.path, spec.key)
    source_dtype = array.dtype
    if array.ndim < 2 or array.shape[0] < 2:
        raise ValueError(
            f"dataset.path: need an array of N >= 2 samples, got shape {array.shape} in {spec.path}"
        )
    array = finite_values(array, spec.path)
    flat = array.reshape(array.shape[0], -1)
    low, high = flat.min(axis=0), flat.max(axis=0)
    model = to_model_space(flat, low, high).reshape(array.shape)
    labels = None if spec.labels_key is None else array_labels(storage, spec, len(array))
    return Dataset(
        name="array",
        data=torch.from_numpy(model).float(),
        values=value_map(low, high, source_dtype),
        labels=labels,
        classes=None if labels is None else int(labels.max()) + 1,
        identity=f"array:{spec.path}:{array.shape}",
    )


def array_labels(storage: Storage, spec: ArraySpec, count: int) -> torch.Tensor:
    """The samples' classes under `labelsKey`: N integers from 0."""
    labels = read_array(storage, spec.path, spec.labels_key, "dataset.labelsKey")
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"dataset.labelsKey: {spec.labels_key!r} in {spec.path} must hold {count} integer "
            f"classes, got {labels.dtype} of shape {labels.shape}"
        )
    if labels.min() < 0:
        raise ValueError(f"dataset.labelsKey: classes must be >= 0, got {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64))


def load_sequences(spec: SequencesSpec, seed: int, storage: Storage) -> Dataset:
    """N x T x C (or N x T) values, scaled into [-1, 1] by one range per channel."""
    array = read_array(storage, spec.path, spec.key)
    source_dtype = array.dtype
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(
            f"dataset.path: need N x T x C (or N x T) sequences, N and T >= 2, got shape "
            f"{array.shape} in {spec.path}"
        )
    array = finite_values(array, spec.path)
    low, high = array.min(axis=(0, 1)), array.max(axis=(0, 1))
    steps = array.shape[1]
    return Dataset(
        name="sequences",
        data=torch.from_numpy(to_model_space(array, low, high)).float(),
        values=value_map(np.tile(low, steps), np.tile(high, steps), source_dtype),
        identity=f"sequences:{spec.path}:{array.shape}",
    )
