"""Datasets as objects that know their shape, their value range and how to load.

All data lives in model space, [-1, 1], as a float32 tensor in memory; `ValueMap` maps
model space back to the data's own range (pixel values 0-255, the ring's coordinates).
The training loop never looks at a dataset's name.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lipizzaner_core.spec.datasets import (
    ArraySpec,
    Cifar10Spec,
    FashionMnistSpec,
    GaussianGridSpec,
    GaussianRingSpec,
    ImageFolderSpec,
    MnistSpec,
    SequencesSpec,
    SineWavesSpec,
)
from lipizzaner_core.storage import Storage

from lipizzaner_cell.data import idx

if TYPE_CHECKING:
    from PIL.Image import Image as PilImage

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
        count = min(round(fraction * len(self)), len(self) - 1)
        if count < 1:
            return self, None
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(VALIDATION_SEED))
        held, kept = order[:count].sort().values, order[count:].sort().values
        return self._rows(kept, "training"), self._rows(held, "validation")

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


PIXELS = ValueMap([127.5], [127.5], "uint8")


def _images_to_model_space(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)


IDX_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def load_mnist(spec: MnistSpec | FashionMnistSpec, seed: int, storage: Storage) -> Dataset:
    """MNIST, or Fashion-MNIST: the same IDX files under the same names."""
    splits = ["train", "test"] if spec.split == "auto" else [spec.split]
    candidates = ((s, idx.find_split_files(storage, spec.path, s)) for s in splits)
    found: tuple[str, tuple[str, str] | None] | None = next(
        ((s, f) for s, f in candidates if f), None
    )
    if found is None and isinstance(spec, MnistSpec) and spec.download:
        wanted_split = "train" if spec.split == "auto" else spec.split
        idx.download_mnist(storage, spec.path, wanted_split, spec.mirror)
        found = (wanted_split, idx.find_split_files(storage, spec.path, wanted_split))
    files = None if found is None else found[1]
    if files is None:
        wanted = " or ".join(f"{idx.SPLIT_PREFIX[s]}-images-idx3-ubyte[.gz]" for s in splits)
        fix = "; set dataset.download: true to fetch them" if isinstance(spec, MnistSpec) else ""
        raise FileNotFoundError(
            f"dataset.path: no {IDX_TITLES[spec.name]} files ({wanted} with its labels) under "
            f"{spec.path}" + fix
        )
    images_uri, labels_uri = files
    images = idx.parse_idx(storage.read_bytes(images_uri))
    labels = idx.parse_idx(storage.read_bytes(labels_uri))
    if images.ndim != 3 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images_uri}: expected N x 28 x 28 images with N labels")
    return Dataset(
        name=spec.name,
        data=_images_to_model_space(images).unsqueeze(1),
        values=PIXELS,
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=10,
        identity=f"{spec.name}:{images_uri}:{images.shape[0]}",
    )


CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue planes


def cifar10_files(storage: Storage, path: str, split: str) -> tuple[str, list[str]]:
    """(split, its batch files) of CIFAR-10's binary version under `path`."""
    found = {f.rsplit("/", 1)[-1]: f for f in storage.find_files(path, (".bin",))}
    batches = {
        "train": [found[n] for n in sorted(found) if re.fullmatch(r"data_batch_\d+\.bin", n)],
        "test": [found[n] for n in ("test_batch.bin",) if n in found],
    }
    for wanted in ["train", "test"] if split == "auto" else [split]:
        if batches[wanted]:
            return wanted, batches[wanted]
    names = {"train": "data_batch_<n>.bin", "test": "test_batch.bin"}
    wanted = " or ".join(names[s] for s in (["train", "test"] if split == "auto" else [split]))
    raise FileNotFoundError(
        f"dataset.path: no CIFAR-10 binary files ({wanted}) under {path}; the binary "
        "version is cifar-10-binary.tar.gz (its Python version is pickled and never read)"
    )


def load_cifar10(spec: Cifar10Spec, seed: int, storage: Storage) -> Dataset:
    split, files = cifar10_files(storage, spec.path, spec.split)
    records = []
    for uri in files:
        raw = np.frombuffer(storage.read_bytes(uri), dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise ValueError(
                f"dataset.path: {uri} holds {raw.size} bytes, not a whole number of "
                f"{CIFAR_RECORD}-byte CIFAR-10 records"
            )
        records.append(raw.reshape(-1, CIFAR_RECORD))
    table = np.concatenate(records)
    if table[:, 0].max() > 9:
        raise ValueError(f"dataset.path: a CIFAR-10 label above 9 in {files}")
    return Dataset(
        name="cifar10",
        data=_images_to_model_space(table[:, 1:].reshape(-1, 3, 32, 32)),
        values=PIXELS,
        labels=torch.from_numpy(table[:, 0].astype(np.int64)),
        classes=10,
        identity=f"cifar10:{spec.path}:{split}:{table.shape[0]}",
    )


def load_image_folder(spec: ImageFolderSpec, seed: int, storage: Storage) -> Dataset:
    from PIL import Image

    files = storage.find_files(spec.path, (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"dataset.path: no PNG or JPG images under {spec.path}")
    mode = "L" if spec.channels == 1 else "RGB"
    size = (spec.image_size, spec.image_size)
    images = []
    for path in files:
        with Image.open(io.BytesIO(storage.read_bytes(path))) as opened:
            image = centre_square(opened) if spec.crop == "center" else opened
            pixels = np.asarray(image.convert(mode).resize(size, Image.Resampling.BILINEAR))
        images.append(pixels.reshape(spec.image_size, spec.image_size, spec.channels))
    stacked = np.stack(images).transpose(0, 3, 1, 2)
    labels, classes = folder_classes(storage, spec.path, files)
    return Dataset(
        name="image-folder",
        data=_images_to_model_space(stacked),
        values=PIXELS,
        labels=labels,
        classes=classes,
        identity=f"image-folder:{spec.path}:{len(files)}:{spec.image_size}:{spec.channels}"
        f":{spec.crop}",
    )


def folder_classes(
    storage: Storage, root: str, files: list[str]
) -> tuple[torch.Tensor | None, int | None]:
    """Each image's class, its sub-folder under `root` (folders in name order); none
    unless every image is in one."""
    _, base = storage.filesystem(root)
    folders = []
    for uri in files:
        _, path = storage.filesystem(uri)
        parts = path[len(base.rstrip("/")) :].strip("/").split("/")
        if len(parts) < 2:
            return None, None
        folders.append(parts[0])
    names = sorted(set(folders))
    index = {name: k for k, name in enumerate(names)}
    return torch.tensor([index[f] for f in folders], dtype=torch.int64), len(names)


def centre_square(image: PilImage) -> PilImage:
    """The largest square at the centre of a PIL image."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


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
