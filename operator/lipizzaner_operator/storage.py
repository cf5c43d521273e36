"""Object storage through fsspec: any URI (`file://`, `s3://`, a plain path) works the same.

Writes go through a temporary name and a move where the filesystem supports it, so a
reader never sees half a file; object stores write whole objects anyway.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def configure_s3(endpoint_url: str | None) -> None:
    """Point every s3:// filesystem of this process at an S3-compatible endpoint.

    Credentials come from the usual AWS environment variables or files; the endpoint from
    the spec, else AWS_ENDPOINT_URL (which botocore reads itself).
    """
    if endpoint_url:
        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint_url


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = url_to_fs(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if "file" in fs.protocol:
        tmp = f"{path}.tmp"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=False).encode())


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    return fs.exists(path)


def list_dir(uri: str) -> list[str]:
    """Names (not paths) directly under a directory-like URI; empty if it does not exist."""
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))


def find_files(uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """URIs of all files below `uri` whose names end with one of `suffixes` (any case)."""
    fs, path = url_to_fs(uri)
    found = [p for p in fs.find(path) if p.lower().endswith(suffixes)]
    return sorted(fs.unstrip_protocol(p) for p in found)


def remove_tree(uri: str) -> None:
    fs, path = url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def copy(source: str, target: str) -> None:
    write_bytes(target, read_bytes(source))
