"""Assemble the run's ensemble from the cells' result files (torch-free, so the operator can).

The ensemble is the best cell's neighbourhood mixture (and, in a semi-supervised run, its
neighbourhood's discriminators: the run's classifier): the cell whose mixture has the
lowest objective (FID, mode KL, ...; on held-out data unless the run holds none out), or,
for runs without a score, the lowest generator fitness. With keep-best a cell's mixture
is the best it saw over the run, and `mixtureGeneration` says from which generation.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from lipizzaner_core import __version__
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun, dump_run
from lipizzaner_core.storage import damaged_as, join

FORMAT = "lipizzaner-ensemble/1"
# The real data's points for a preview, beside the manifest rather than in it (a thousand
# points would bury the readable part); `data.reference` names the file.
REFERENCE_FILE = "reference.json"
# Fields of a network part that its architecture does not use: left out of the manifest.
UNUSED_FIELDS = {"mlp": ("cell", "width"), "dcgan": ("cell", "hiddenSizes"), "rnn": ("width",)}


def network_part(part: dict[str, Any]) -> dict[str, Any]:
    """A network part as the manifest says it: only the fields its architecture reads."""
    unused = UNUSED_FIELDS.get(part.get("architecture", ""), ())
    return {key: value for key, value in part.items() if key not in unused}


# What the manifest says of every cell.
CELL_SUMMARY = ("cell", "row", "col", "generation", "mixtureGeneration", "objective", "scores")


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
        "trainScores": winner.get("trainScores", {}),
        "scoredOn": winner.get("scoredOn", "training"),
        "mixtureGeneration": winner.get("mixtureGeneration", winner["generation"]),
        "network": {
            "latentSize": spec["spec"]["network"]["latentSize"],
            "generator": network_part(spec["spec"]["network"]["generator"]),
        },
        "data": {**winner["data"], "reference": REFERENCE_FILE}
        if winner["data"].get("reference")
        else winner["data"],
        "generators": [
            {
                "file": RunLayout.ensemble_generator(k),
                "weight": member["weight"],
                "sourceCell": member["cell"],
            }
            for k, member in enumerate(weighted_members(winner))
        ],
        "cells": [
            {key: r.get(key) for key in CELL_SUMMARY}
            | ({"accuracy": r["classifier"]["accuracy"]} if "classifier" in r else {})
            for r in sorted(results, key=lambda r: r["cell"])
        ],
        **classifier_entry(winner, results, spec),
        "spec": spec,
        "provenance": {
            **winner["provenance"],
            "assembledBy": f"lipizzaner {__version__}",
            "assembled": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def distinct_labelled(results: list[dict[str, Any]]) -> int | None:
    """How many distinct labelled samples the run's cells used between them (the union of
    their samples' digests); None for results written before the digests were."""
    digests = [r["classifier"].get("labelledDigests") for r in results if "classifier" in r]
    if not digests or any(d is None for d in digests):
        return None
    return len(set().union(*digests))


def classifier_entry(
    winner: dict[str, Any], results: list[dict[str, Any]], spec: dict[str, Any]
) -> dict[str, Any]:
    """Semi-supervised runs: the best cell's classifiers (its own discriminator first, then
    its neighbours'), their class count and accuracy, and the labels the run used: a cell's
    and the distinct ones of all cells; nothing otherwise."""
    if "classifier" not in winner:
        return {}
    found = winner["classifier"]
    return {
        "classifier": {
            "classes": found["classes"],
            "labelled": found["labelled"],
            "distinctLabelled": distinct_labelled(results),
            "labels": spec["spec"].get("semiSupervised", {}).get("labels", "per-cell"),
            "scoredOn": found["scoredOn"],
            "accuracy": found["accuracy"],
            "network": network_part(spec["spec"]["network"]["discriminator"]),
            "members": [
                {"file": RunLayout.ensemble_classifier(k), "sourceCell": member["cell"]}
                for k, member in enumerate(found["members"])
            ],
        }
    }


def weighted_members(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A cell's mixture members that carry weight: one of weight 0 draws no sample."""
    return [member for member in result["mixture"] if member["weight"] > 0]


def read_results(layout: RunLayout, cells: int) -> list[dict[str, Any]]:
    """Every cell's result.json there is; DamagedFile names one that is not a result."""
    results = []
    for index in range(cells):
        uri = layout.cell(index).result
        if layout.storage.exists(uri):
            result = layout.storage.read_json(uri)
            with damaged_as(uri):
                if result["cell"] != index or int(result["generation"]) < 0:
                    raise ValueError(f"it says cell {result['cell']}, not {index}")
            results.append(result)
    return results


def assemble_ensemble(run: LipizzanerRun, layout: RunLayout) -> dict[str, Any]:
    """Copy the best cell's mixture into <output>/ensemble/ and write its manifest.json.

    The ensemble directory is replaced whole, so no file of an earlier assembly stays.
    """
    results = read_results(layout, run.spec.grid.size)
    manifest = build_manifest(run, results)
    winner = next(r for r in results if r["cell"] == manifest["bestCell"])
    cell = layout.cell(winner["cell"])
    layout.storage.remove_tree(layout.ensemble)
    copies = list(zip(weighted_members(winner), manifest["generators"], strict=True))
    if "classifier" in manifest:
        classifiers = winner["classifier"]["members"]
        copies += zip(classifiers, manifest["classifier"]["members"], strict=True)
    for member, entry in copies:
        layout.storage.copy(join(cell.uri, member["file"]), join(layout.ensemble, entry["file"]))
    if winner["data"].get("reference"):
        compact = json.dumps(winner["data"]["reference"], separators=(",", ":"))
        layout.storage.write_bytes(join(layout.ensemble, REFERENCE_FILE), compact.encode())
    layout.storage.write_json(layout.ensemble_manifest, manifest)
    return manifest


def completed_run(run: LipizzanerRun, layout: RunLayout) -> dict[str, Any] | None:
    """The ensemble manifest of a run whose every cell has finished the spec's
    generations, else None (not started, under way, or extended by a larger count)."""
    if not layout.storage.exists(layout.ensemble_manifest):
        return None
    results = read_results(layout, run.spec.grid.size)
    if len(results) < run.spec.grid.size:
        return None
    if any(result["generation"] < run.spec.generations for result in results):
        return None
    manifest = layout.storage.read_json(layout.ensemble_manifest)
    with damaged_as(layout.ensemble_manifest):
        [int(cell["generation"]) for cell in manifest["cells"]]
    return manifest
