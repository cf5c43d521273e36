"""Assemble the run's ensemble from the cells' result files (torch-free, so the operator can).

The ensemble is the best cell's neighbourhood mixture: the cell whose mixture has the
lowest objective (FID, mode KL, ...), or, for runs without a score, the lowest generator
fitness.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lipizzaner_operator import __version__, storage
from lipizzaner_operator.spec import LipizzanerRun, dump_run

FORMAT = "lipizzaner-ensemble/1"


def rank_key(result: dict[str, Any]) -> tuple[float, int]:
    objective = result.get("objective")
    value = objective["value"] if objective else result["generatorFitness"]
    return (value, result["cell"])


def choose_best(results: list[dict[str, Any]]) -> dict[str, Any]:
    if not results:
        raise ValueError("no cell results to assemble an ensemble from")
    return min(results, key=rank_key)


def build_manifest(run: LipizzanerRun, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The ensemble manifest; generator files are named generator-<k>.safetensors."""
    winner = choose_best(results)
    spec = dump_run(run)
    return {
        "format": FORMAT,
        "run": run.metadata.name,
        "bestCell": winner["cell"],
        "objective": winner["objective"],
        "scores": winner["scores"],
        "network": {
            "latentSize": spec["spec"]["network"]["latentSize"],
            "generator": spec["spec"]["network"]["generator"],
        },
        "data": winner["data"],
        "generators": [
            {"file": f"generator-{k}.safetensors", "weight": m["weight"], "sourceCell": m["cell"]}
            for k, m in enumerate(winner["mixture"])
        ],
        "cells": [
            {key: r[key] for key in ("cell", "row", "col", "generation", "objective", "scores")}
            for r in sorted(results, key=lambda r: r["cell"])
        ],
        "spec": spec,
        "provenance": {
            **winner["provenance"],
            "assembledBy": f"lipizzaner {__version__}",
            "assembled": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def read_results(output_uri: str, cells: int) -> list[dict[str, Any]]:
    results = []
    for index in range(cells):
        uri = storage.join(output_uri, "cells", str(index), "result.json")
        if storage.exists(uri):
            results.append(storage.read_json(uri))
    return results


def assemble_ensemble(run: LipizzanerRun, output_uri: str) -> dict[str, Any]:
    """Copy the best cell's mixture into <output>/ensemble/ and write its manifest.json."""
    grid = run.spec.grid
    results = read_results(output_uri, grid.rows * grid.cols)
    manifest = build_manifest(run, results)
    winner = next(r for r in results if r["cell"] == manifest["bestCell"])
    cell_uri = storage.join(output_uri, "cells", str(winner["cell"]))
    target = storage.join(output_uri, "ensemble")
    for member, entry in zip(winner["mixture"], manifest["generators"], strict=True):
        storage.copy(storage.join(cell_uri, member["file"]), storage.join(target, entry["file"]))
    storage.write_json(storage.join(target, "manifest.json"), manifest)
    return manifest
