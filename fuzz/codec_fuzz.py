"""Fuzz the GetCentre stream decoder (cell_image/lipizzaner_cell/exchange/codec.py).

Every input is a stream of chunks (fuzz/harness.py frames them). Each stream must be
decoded into tensors of exactly the receiving cell's architecture, be empty (None), or be
refused with StateRejected, the codec's INVALID_ARGUMENT; any other exception, a crash or
memory that keeps growing (harness.MemoryGuard) is a finding.

    python fuzz/codec_fuzz.py fuzz/corpus/codec -max_total_time=60
    python fuzz/codec_fuzz.py --write-seeds fuzz/corpus/codec
"""

from __future__ import annotations

from dataclasses import replace

import atheris
from harness import OUR_PACKAGES, frame, run, target_state, unframe  # imports torch

with atheris.instrument_imports(include=OUR_PACKAGES):
    from lipizzaner_cell.algorithm.neighbourhood import CentreState
    from lipizzaner_cell.exchange.codec import (
        OPTIONAL_PARTS,
        PARTS,
        CentreArchitecture,
        StateRejected,
        architecture_of,
        decode_centre,
        encode_centre,
    )

VALID = CentreState(
    2,
    5,
    generator_lr=1e-3,
    discriminator_lr=2e-3,
    generator_fitness=0.5,
    discriminator_fitness=0.25,
    mixture_weights={2: 0.75, 1: 0.25},
    **target_state(),
)
EXPECTED = CentreArchitecture.of(VALID)
MAX_BYTES = 1 << 16


def test_one_input(data: bytes) -> None:
    try:
        state = decode_centre(unframe(data), EXPECTED, MAX_BYTES)
    except StateRejected:
        return
    if state is None:
        return
    for part in PARTS:
        got, expected = architecture_of(getattr(state, part)), getattr(EXPECTED, part)
        if got != expected and (got or part not in OPTIONAL_PARTS):
            raise AssertionError(f"decoded {part} {got}, expected {expected}")


def seeds() -> dict[str, bytes]:
    """A valid state, one without moments, and the shapes of trouble a mutator starts from."""
    chunks = encode_centre(VALID)
    return {
        "valid": frame(chunks),
        "no-moments": frame(
            encode_centre(replace(VALID, generator_moments={}, discriminator_moments={}))
        ),
        "empty": b"",
        "header-only": frame(chunks[:1]),
        "payload-first": frame(chunks[1:] + chunks[:1]),
        "two-headers": frame(chunks[:1] + chunks),
        "split-payload": frame([chunks[0], chunks[1][:40], chunks[1][40:]]),
    }


if __name__ == "__main__":
    run(test_one_input, __doc__, seeds)
