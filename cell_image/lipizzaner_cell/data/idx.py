"""MNIST's IDX files: parsing, and a checksum-verified download of the canonical files."""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.request

import numpy as np
from lipizzaner_core.storage import Storage, join

log = logging.getLogger(__name__)

# MD5 of the canonical files' uncompressed contents, so any gzip of the same data passes.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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


def find_split_files(storage: Storage, base: str, split: str) -> tuple[str, str] | None:
    """(images URI, labels URI) of a split under `base`, gzipped or not, if both exist."""
    names = set(storage.list_dir(base))
    prefix = SPLIT_PREFIX[split]
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        stem = f"{prefix}-{kind}-ubyte"
        name = next((n for n in (f"{stem}.gz", stem) if n in names), None)
        if name is None:
            return None
        found.append(join(base, name))
    return found[0], found[1]


def download_mnist(storage: Storage, base: str, split: str, mirror: str) -> None:
    """Fetch a split's gzipped files into `base`; refuse any whose content MD5 differs."""
    prefix = SPLIT_PREFIX[split]
    for name, md5 in MNIST_MD5.items():
        if not name.startswith(prefix):
            continue
        url = f"{mirror.rstrip('/')}/{name}.gz"
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        digest = hashlib.md5(gzip.decompress(data)).hexdigest()
        if digest != md5:
            raise ValueError(f"{url}: checksum mismatch (md5 {digest}, expected {md5})")
        storage.write_bytes(join(base, f"{name}.gz"), data)
