"""Object storage through fsspec: any URI (`file://`, `s3://`, a plain path) works the same.

A `Storage` carries its own fsspec options (an S3 endpoint, say), so two runs with two
endpoints can live in one process: nothing is configured globally. Writes go through a
temporary name and a move where the filesystem supports it, so a reader never sees half a
file; object stores write whole objects anyway.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


@dataclass(frozen=True)
class Storage:
    """Files under any URI, with fsspec options per protocol (`{"s3": {...}}`)."""

    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def with_endpoint(cls, endpoint_url: str | None) -> Storage:
        """S3 at an S3-compatible endpoint (MinIO, Ceph, ...); None: AWS_ENDPOINT_URL or
        AWS itself. Credentials come from the usual AWS variables or files."""
        if not endpoint_url:
            return cls()
        return cls({"s3": {"endpoint_url": endpoint_url}})

    def filesystem(self, uri: str) -> tuple[AbstractFileSystem, str]:
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        return url_to_fs(uri, **self.options.get(protocol, {}))

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.filesystem(uri)
        return fs.cat_file(path)

    def write_bytes(self, uri: str, data: bytes) -> None:
        fs, path = self.filesystem(uri)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        if "file" in fs.protocol:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # concurrent writers never share one
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
        else:
            fs.pipe_file(path, data)

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=False).encode())

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
