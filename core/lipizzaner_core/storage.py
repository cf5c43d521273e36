"""Object storage through fsspec: any URI (`file://`, `s3://`, a plain path) works the same.

A `Storage` carries its own fsspec options (an S3 endpoint, say), so two runs with two
endpoints can live in one process: nothing is configured globally. Writes go through a
temporary name, an fsync and a rename on local disks, so neither a reader nor a crash ever
leaves half a file; object stores write whole objects anyway. A file that is there but
cannot be read as what it should be raises `DamagedFile`, which names it: every command
turns that into one line and exit 2.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


class DamagedFile(ValueError):
    """A file of a run's output that is there but unreadable: torn, flipped or foreign."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: damaged ({reason})")
        self.uri, self.reason = uri, reason


READ_ERRORS: tuple[type[Exception], ...] = (
    KeyError,
    TypeError,
    ValueError,
    IndexError,
    AttributeError,
    RuntimeError,
)


@contextmanager
def damaged_as(uri: str, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Reading `uri`'s content: what breaks in there (a missing key, a wrong type, a bad
    tensor file; `also` a reader's own errors) is that file's damage, not a bug, and is
    said as such."""
    errors: tuple[type[Exception], ...] = (*READ_ERRORS, *also)
    try:
        yield
    except DamagedFile:
        raise
    except errors as exc:
        reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise DamagedFile(uri, reason.splitlines()[0][:200]) from None


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(value) for value in obj]
    return obj


# AWS's variables (a credentialsSecret's keys) and s3fs's options for them.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_SESSION_TOKEN": "token",
}


@dataclass(frozen=True)
class Storage:
    """Files under any URI, with fsspec options per protocol (`{"s3": {...}}`)."""

    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def with_endpoint(
        cls, endpoint_url: str | None, credentials: dict[str, str] | None = None
    ) -> Storage:
        """S3 at an S3-compatible endpoint (MinIO, Ceph, ...); None: AWS_ENDPOINT_URL or
        AWS itself. Credentials: `credentials` (a Secret's AWS_* keys: the operator reads
        a run's output with the run's own), else the usual AWS variables or files."""
        s3: dict[str, Any] = {"endpoint_url": endpoint_url} if endpoint_url else {}
        for variable, option in S3_CREDENTIALS.items():
            if (credentials or {}).get(variable):
                s3[option] = credentials[variable]  # type: ignore[index]
        return cls({"s3": s3}) if s3 else cls()

    def filesystem(self, uri: str) -> tuple[AbstractFileSystem, str]:
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        return url_to_fs(uri, **self.options.get(protocol, {}))

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.filesystem(uri)
        return fs.cat_file(path)

    def write_bytes(self, uri: str, data: bytes) -> None:
        fs, path = self.filesystem(uri)
        if "file" in fs.protocol:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            write_durably(path, data)
        else:  # no folders to make: s3fs's makedirs would create a missing bucket
            fs.pipe_file(path, data)

    def read_json(self, uri: str) -> Any:
        """The JSON document at `uri`; DamagedFile if it is not one (a torn write, a
        flipped byte)."""
        data = self.read_bytes(uri)
        with damaged_as(uri):
            return json.loads(data)

    def write_json(self, uri: str, obj: Any) -> None:
        """Strict JSON: NaN and infinities are written as null, never as bare words."""
        self.write_bytes(uri, json_bytes(obj))

    def unusable_because(self, uri: str) -> str | None:
        """Why an object store cannot hold output under `uri`, or None: its bucket is not
        there (never created on the user's behalf, where a typo would make a new one),
        refuses these credentials, or cannot be reached. Local folders are made as needed."""
        fs, path = self.filesystem(uri)
        if "file" in fs.protocol:
            return None
        bucket = path.split("/", 1)[0]
        where = self.options.get("s3", {}).get("endpoint_url") or os.environ.get(
            "AWS_ENDPOINT_URL", "the default endpoint"
        )
        try:
            fs.info(bucket)
        except FileNotFoundError:
            return f"bucket {bucket!r} does not exist at {where}"
        except PermissionError as exc:
            return f"bucket {bucket!r} at {where} refuses these credentials ({exc})"
        except OSError as exc:
            return f"bucket {bucket!r} at {where} cannot be reached ({exc})"
        return None

    def exists(self, uri: str) -> bool:
        fs, path = self.filesystem(uri)
        return fs.exists(path)

    def list_dir(self, uri: str) -> list[str]:
        """Names (not paths) directly under a directory-like URI; empty if it does not exist."""
        fs, path = self.filesystem(uri)
        if not fs.exists(path):
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))

    def find_files(self, uri: str, suffixes: tuple[str, ...]) -> list[str]:
        """URIs of all files below `uri` whose names end with one of `suffixes` (any case)."""
        fs, path = self.filesystem(uri)
        found = [p for p in fs.find(path) if p.lower().endswith(suffixes)]
        return sorted(fs.unstrip_protocol(p) for p in found)

    def remove_tree(self, uri: str) -> None:
        fs, path = self.filesystem(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def copy(self, source: str, target: str) -> None:
        self.write_bytes(target, self.read_bytes(source))


def json_bytes(obj: Any) -> bytes:
    """Strict JSON as written to a run's output: NaN and infinities as null."""
    return json.dumps(finite(obj), indent=2, sort_keys=False, allow_nan=False).encode()


def write_durably(path: str, data: bytes) -> None:
    """A local file replaced whole: a temporary name (concurrent writers never share one),
    fsync, rename, fsync of the folder, so a crash leaves the old file or the new one."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
