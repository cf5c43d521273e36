"""Centre states on the wire: raw little-endian tensor bytes plus a typed header.

Decoding validates everything against the receiving cell's own architecture before a
single tensor is built: names, dtypes, shapes, byte lengths, the size limit and the
chunk framing. Anything else raises `StateRejected`; nothing is ever unpickled.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from google.protobuf.message import DecodeError
from lipizzaner_core.wire import cell_pb2

from lipizzaner_cell.algorithm.individual import UNKNOWN_ORIGIN, Origin
from lipizzaner_cell.algorithm.neighbourhood import CentreState

CHUNK_BYTES = 1 << 20
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
    raise ImportError("the wire codec assumes a little-endian host")


class StateRejected(ValueError):
    """A centre state that does not fit this cell; the gRPC code it maps to is fixed."""

    grpc_code = "INVALID_ARGUMENT"


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


Architecture = dict[str, TensorSpec]
# A state's tensor tables, by their name in `CentreState`, the header and `CentreArchitecture`.
PARTS = (
    "generator",
    "discriminator",
    "generator_moments",
    "discriminator_moments",
    "generator_ema",
)
OPTIONAL_PARTS = ("generator_moments", "discriminator_moments", "generator_ema")


def architecture_of(state: dict[str, torch.Tensor]) -> Architecture:
    return {
        name: TensorSpec(str(t.dtype).removeprefix("torch."), tuple(t.shape))
        for name, t in state.items()
    }


@dataclass(frozen=True)
class CentreArchitecture:
    """What a receiving cell accepts: its own networks' tensors, and their optimizer
    moments and the generator's EMA (which a state may also leave out)."""

    generator: Architecture
    discriminator: Architecture
    generator_moments: Architecture
    discriminator_moments: Architecture

    @property
    def generator_ema(self) -> Architecture:
        return self.generator

    @classmethod
    def of(cls, state: CentreState) -> CentreArchitecture:
        """The architecture of a state that carries moments (tests, benchmarks, fuzzers)."""
        return cls(
            architecture_of(state.generator),
            architecture_of(state.discriminator),
            architecture_of(state.generator_moments),
            architecture_of(state.discriminator_moments),
        )


def _table(
    state: dict[str, torch.Tensor], offset: int
) -> tuple[list[cell_pb2.TensorInfo], list[bytes]]:
    infos, blobs = [], []
    for name, tensor in state.items():
        blob = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        dtype = str(tensor.dtype).removeprefix("torch.")
        infos.append(
            cell_pb2.TensorInfo(
                name=name, dtype=dtype, shape=list(tensor.shape), offset=offset, length=len(blob)
            )
        )
        blobs.append(blob)
        offset += len(blob)
    return infos, blobs


def encode_centre(state: CentreState) -> list[bytes]:
    """The serialized header chunk, then the payload in chunks of at most 1 MiB.

    Serialized once per generation: the server sends these bytes as they are to every
    neighbour that asks.
    """
    tables: dict[str, Any] = {}  # each part's TensorInfo list
    blobs: list[bytes] = []
    for part in PARTS:
        tables[part], part_blobs = _table(getattr(state, part), sum(map(len, blobs)))
        blobs += part_blobs
    payload = b"".join(blobs)
    header = cell_pb2.CentreHeader(
        cell=state.cell,
        generation=state.generation,
        generator_lr=state.generator_lr,
        discriminator_lr=state.discriminator_lr,
        generator_fitness=state.generator_fitness,
        discriminator_fitness=state.discriminator_fitness,
        mixture_weights=state.mixture_weights,
        payload_bytes=len(payload),
        **tables,
    )
    for role, origin in (
        (header.generator_origin, state.generator_origin),
        (header.discriminator_origin, state.discriminator_origin),
    ):
        if origin != UNKNOWN_ORIGIN:
            role.cell, role.generation = origin
    chunks = [cell_pb2.CentreChunk(header=header).SerializeToString()]
    view = memoryview(payload)
    for start in range(0, len(payload), CHUNK_BYTES):
        chunks.append(
            _DATA_TAG
            + _varint(min(CHUNK_BYTES, len(payload) - start))
            + view[start : start + CHUNK_BYTES]
        )
    return chunks


def _check_table(
    infos: Iterable[cell_pb2.TensorInfo], expected: Architecture, role: str, payload_bytes: int
) -> None:
    seen = set()
    for info in infos:
        spec = expected.get(info.name)
        if spec is None:
            raise StateRejected(f"{role}: unexpected tensor {info.name!r}")
        if info.name in seen:
            raise StateRejected(f"{role}: tensor {info.name!r} sent twice")
        seen.add(info.name)
        if info.dtype != spec.dtype:
            raise StateRejected(f"{role}.{info.name}: dtype {info.dtype}, expected {spec.dtype}")
        if tuple(info.shape) != spec.shape:
            raise StateRejected(
                f"{role}.{info.name}: shape {tuple(info.shape)}, expected {spec.shape}"
            )
        if info.length != spec.nbytes or info.offset < 0:
            raise StateRejected(f"{role}.{info.name}: {info.length} bytes, expected {spec.nbytes}")
        if info.offset + info.length > payload_bytes:
            raise StateRejected(f"{role}.{info.name}: lies outside the payload")
    if missing := set(expected) - seen:
        raise StateRejected(f"{role}: missing tensors {sorted(missing)}")


def _check_numbers(header: cell_pb2.CentreHeader) -> None:
    for name in ("generator_lr", "discriminator_lr"):
        value = getattr(header, name)
        if not math.isfinite(value) or value < 0:
            raise StateRejected(f"{name}: must be a finite number >= 0, got {value}")
    for name in ("generator_fitness", "discriminator_fitness"):
        if math.isnan(getattr(header, name)):
            raise StateRejected(f"{name}: is NaN")
    for cell, weight in header.mixture_weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise StateRejected(f"mixture_weights[{cell}]: must be finite and >= 0, got {weight}")


def _tensors(
    infos: Iterable[cell_pb2.TensorInfo], payload: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Views into the payload (no copy) where the offset is aligned for the dtype."""
    tensors = {}
    for info in infos:
        dtype = DTYPES[info.dtype]
        raw = payload[info.offset : info.offset + info.length]
        if info.offset % dtype.itemsize:
            raw = raw.clone()
        tensors[info.name] = raw.view(dtype).reshape(tuple(info.shape))
    return tensors


def new_payload(size: int) -> torch.Tensor:
    """Uninitialised bytes: no zero-filling pass over a state about to be overwritten."""
    return torch.empty(size, dtype=torch.uint8)


def decode_centre(
    chunks: Iterable[cell_pb2.CentreChunk | bytes],
    expected: CentreArchitecture,
    max_bytes: int,
    payload_buffer: Callable[[int], torch.Tensor] = new_payload,
) -> CentreState | None:
    """Validate and decode a streamed state; None if the stream was empty (nothing newer).

    The state's tensors are views of one payload of bytes, which `payload_buffer(size)`
    gives (a puller passes one it reuses).
    """
    stream: Iterator = iter(chunks)
    first = _parse(next(stream, None))
    if first is None:
        return None
    if not first.HasField("header"):
        raise StateRejected("stream must start with a header")
    header = first.header
    if not 0 <= header.payload_bytes <= max_bytes:
        raise StateRejected(f"state of {header.payload_bytes} bytes exceeds the {max_bytes} limit")
    _check_numbers(header)
    for part in PARTS:
        infos = getattr(header, part)
        if infos or part not in OPTIONAL_PARTS:
            _check_table(infos, getattr(expected, part), part, header.payload_bytes)
    payload = payload_buffer(header.payload_bytes)
    writable = payload.numpy().data
    filled = 0
    for item in stream:
        data = _data_of(item)
        if len(data) > CHUNK_BYTES:
            raise StateRejected(f"chunk of {len(data)} bytes exceeds {CHUNK_BYTES}")
        if filled + len(data) > header.payload_bytes:
            raise StateRejected("more data than the header announced")
        writable[filled : filled + len(data)] = data
        filled += len(data)
    if filled != header.payload_bytes:
        raise StateRejected(f"truncated stream: {filled} of {header.payload_bytes} payload bytes")
    return CentreState(
        cell=header.cell,
        generation=header.generation,
        generator_lr=header.generator_lr,
        discriminator_lr=header.discriminator_lr,
        generator_fitness=header.generator_fitness,
        discriminator_fitness=header.discriminator_fitness,
        mixture_weights=dict(header.mixture_weights),
        **{part: _tensors(getattr(header, part), payload) for part in PARTS},
        generator_origin=_origin(header, "generator_origin"),
        discriminator_origin=_origin(header, "discriminator_origin"),
    )


def _origin(header: cell_pb2.CentreHeader, role: str) -> Origin:
    if not header.HasField(role):
        return UNKNOWN_ORIGIN
    origin = getattr(header, role)
    return origin.cell, origin.generation


_DATA_TAG = bytes([2 << 3 | 2])  # CentreChunk field 2 (`data`), length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _data_of(item: cell_pb2.CentreChunk | bytes) -> bytes | memoryview:
    """The `data` of a chunk after the header; a slice, not a copy, of well-formed bytes.

    A data chunk is the tag, a varint length and the bytes: checked here and sliced, which
    saves protobuf's copy of each megabyte. Anything else goes through the protobuf parser,
    which rejects it or finds a second header.
    """
    if isinstance(item, bytes) and item[:1] == _DATA_TAG:
        length, position = 0, 1
        for shift in range(0, 35, 7):
            if position >= len(item):
                break
            byte = item[position]
            length |= (byte & 0x7F) << shift
            position += 1
            if not byte & 0x80:
                if position + length == len(item):
                    return memoryview(item)[position:]
                break
    chunk = _parse(item)
    if chunk is None or not chunk.HasField("data"):
        raise StateRejected("a second header inside the stream")
    return chunk.data


def _parse(item: cell_pb2.CentreChunk | bytes | None) -> cell_pb2.CentreChunk | None:
    if item is None or isinstance(item, cell_pb2.CentreChunk):
        return item
    try:
        return cell_pb2.CentreChunk.FromString(item)
    except DecodeError as exc:
        raise StateRejected(f"not a CentreChunk: {exc}") from None
