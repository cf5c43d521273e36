"""Image datasets: MNIST and Fashion-MNIST (IDX), CIFAR-10 (its binary version), a folder of
images; pixels 0-255 in model space."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

import numpy as np
import torch
from lipizzaner_core.spec.datasets import (
    Cifar10Spec,
    FashionMnistSpec,
    ImageFolderSpec,
    MnistSpec,
)
from lipizzaner_core.storage import Storage

from lipizzaner_cell.data import idx
from lipizzaner_cell.data.datasets import Dataset, ValueMap

if TYPE_CHECKING:
    from PIL.Image import Image as PilImage

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
