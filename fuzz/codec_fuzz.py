"""Fuzz the GetCentre stream decoder (cell_image/lipizzaner_cell/wire/codec.py).

Every input is a stream of chunks (fuzz/harness.py frames them). Each stream must be
decoded into tensors of exactly the receiving cell's architecture, be empty (None), or be
refused with StateRejected, the codec's INVALID_ARGUMENT; any other exception, a crash or
memory that keeps growing (harness.MemoryGuard) is a finding.

    python fuzz/codec_fuzz.py fuzz/corpus/codec -max_total_time=60
    python fuzz/codec_fuzz.py --write-seeds fuzz/corpus/codec
"""

from __future__ import annotations

import atheris
from harness import OUR_PACKAGES, frame, run, target_state, unframe  # imports torch

with atheris.instrument_imports(include=OUR_PACKAGES):
    from lipizzaner_cell.neighbourhood import CentreState
    from lipizzaner_cell.wire.codec import (
        StateRejected,
        architecture_of,
        decode_centre,
        encode_centre,
    )

TARGET = target_state()
GENERATOR, DISCRIMINATOR = (architecture_of(TARGET[p]) for p in ("generator", "discriminator"))
MAX_BYTES = 1 << 16


def test_one_input(data: bytes) -> None:
    try:
        state = decode_centre(unframe(data), GENERATOR, DISCRIMINATOR, MAX_BYTES)
    except StateRejected:
        return
    if state is None:
        return
    for got, expected in ((state.generator, GENERATOR), (state.discriminator, DISCRIMINATOR)):
        if architecture_of(got) != expected:
            raise AssertionError(f"decoded {architecture_of(got)}, expected {expected}")


def seeds() -> dict[str, bytes]:
    """A valid state, and the shapes of trouble a mutator starts from."""
    state = CentreState(
        2,
        5,
        TARGET["generator"],
        TARGET["discriminator"],
        1e-3,
        2e-3,
        0.5,
        0.25,
        {2: 0.75, 1: 0.25},
    )
    chunks = encode_centre(state)
    return {
        "valid": frame(chunks),
        "empty": b"",
        "header-only": frame(chunks[:1]),
        "payload-first": frame(chunks[1:] + chunks[:1]),
        "two-headers": frame(chunks[:1] + chunks),
        "split-payload": frame([chunks[0], chunks[1][:40], chunks[1][40:]]),
    }


if __name__ == "__main__":
    run(test_one_input, __doc__, seeds)
