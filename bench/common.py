"""What the benchmark scripts share: the LipizzanerRun envelope around a spec."""

from __future__ import annotations

from typing import Any

from lipizzaner_core.spec import API_VERSION, KIND


def run_manifest(name: str, rows: int, cols: int, **spec: Any) -> dict:
    """A manifest for a rows x cols grid; `spec` holds the other spec sections."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"grid": {"rows": rows, "cols": cols}, **spec},
    }


def tournament_size(side: int) -> int:
    """The default 2, except on a 1x1 grid, whose neighbourhood holds one individual."""
    return min(2, side * side)


def mnist_manifest(
    name: str,
    side: int,
    data: str,
    generations: int,
    output: str,
    *,
    batches: int = 100,
    device: str = "cpu",
    coevolution: dict | None = None,
    **spec: Any,
) -> dict:
    """A side x side grid on the MNIST IDX files in `data`, at the defaults otherwise."""
    return run_manifest(
        name,
        side,
        side,
        generations=generations,
        dataset={"name": "mnist", "path": data},
        coevolution={"tournamentSize": tournament_size(side), **(coevolution or {})},
        training={"batchesPerGeneration": batches, "device": device},
        output={"uri": output},
        **spec,
    )
