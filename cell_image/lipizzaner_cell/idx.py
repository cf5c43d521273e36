"""MNIST's IDX files: parsing, and a checksum-verified download of the canonical files."""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.request

import numpy as np
from lipizzaner_operator import storage

log = logging.getLogger(__name__)

MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# MD5 of the canonical gzipped files, as published with torchvision's MNIST.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes) -> np.ndarray:
    """Decode one IDX file (gzipped or not) into an array of its declared shape."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _DTYPES:
        raise ValueError("not an IDX file: bad magic number")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"IDX file truncated: expected {expected} data bytes for shape {shape}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def find_split_files(base: str, split: str) -> tuple[str, str] | None:
    """(images URI, labels URI) of a split under `base`, gzipped or not, if both exist."""
    names = set(storage.list_dir(base))
    prefix = SPLIT_PREFIX[split]
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        stem = f"{prefix}-{kind}-ubyte"
        name = next((n for n in (f"{stem}.gz", stem) if n in names), None)
        if name is None:
            return None
        found.append(storage.join(base, name))
    return found[0], found[1]


def download_mnist(base: str, split: str, mirror: str = MNIST_MIRROR) -> None:
    """Fetch a split's canonical files into `base`; refuse any file whose MD5 differs."""
    prefix = SPLIT_PREFIX[split]
    for name, md5 in MNIST_MD5.items():
        if not name.startswith(prefix):
            continue
        url = mirror.rstrip("/") + "/" + name
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        digest = hashlib.md5(data).hexdigest()
        if digest != md5:
            raise ValueError(f"{url}: checksum mismatch (md5 {digest}, expected {md5})")
        storage.write_bytes(storage.join(base, name), data)
