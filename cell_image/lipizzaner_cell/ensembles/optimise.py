"""`lipizzaner ensemble optimize`: search every generator of a finished run for a better
ensemble (`search.py`) and write it beside the run's own.

It reads the run from its ensemble manifest (which holds the whole spec), every cell's
final mixture from its result files (copies of one generator count once), and scores on
the held-out data with the run's own objective unless told another. The output,
`<run>/ensemble-<method>/`, has the manifest format of `<run>/ensemble/`, so `lipizzaner
sample` reads it, plus the search's method, the number of candidates and, for
comparison, the best cell's mixture scored on the same samples.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import torch
from lipizzaner_core.ensemble import read_results
from lipizzaner_core.layout import ENSEMBLE_MANIFEST, RunLayout
from lipizzaner_core.spec import LipizzanerRun, parse_run
from lipizzaner_core.spec.training import NetworkPartSpec
from lipizzaner_core.storage import Storage, damaged_as, join

from lipizzaner_cell.algorithm.mixture import MixtureEmbeddings
from lipizzaner_cell.algorithm.networks import build_generator
from lipizzaner_cell.algorithm.weights import load_weights
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.ensembles.original_searches import greedy_grid, nreo_gen, reo_gen
from lipizzaner_cell.ensembles.samples import describe_score
from lipizzaner_cell.ensembles.search import Found, genetic, greedy
from lipizzaner_cell.scores.choice import build_scorer
from lipizzaner_cell.scores.references import ReferenceCache
from lipizzaner_cell.scores.yardsticks import Yardsticks


@dataclass
class Candidate:
    cell: int  # the cell whose generator this is
    key: str  # the SHA-256 of its file: copies of one generator are one candidate
    data: bytes  # its safetensors file
    net: torch.nn.Module


def optimise_run(run: LipizzanerRun) -> dict[str, Any]:
    """The run's own final step, `spec.ensemble` (greedy or ga), over its output."""
    search = run.spec.ensemble
    return optimise(
        run.output_uri(),
        search.method,
        search.max_size,
        search.samples,
        run.spec.seed if search.seed is None else search.seed,
        None if search.objective == "auto" else search.objective,
        RunLayout.of(run).storage,
        min_size=search.min_size,
        evaluations=search.evaluations,
        patience=search.patience,
    )


def optimise(
    output: str,
    method: str,
    max_size: int,
    samples: int,
    seed: int = 0,
    objective: str | None = None,
    storage: Storage | None = None,
    min_size: int = 2,
    evaluations: int = 600,
    patience: int = 0,
) -> dict[str, Any]:
    """Search the run at `output` (read through `storage`: default, the environment's
    settings); write and return the optimised ensemble's manifest. `min_size`,
    `evaluations` and `patience` are the original's searches' (`spec.ensemble`)."""
    storage = storage or Storage()
    # FileNotFoundError: not a finished run
    manifest_uri = RunLayout(output, storage).ensemble_manifest
    default = storage.read_json(manifest_uri)
    with damaged_as(manifest_uri):
        run = parse_run(default["spec"])
    layout = RunLayout.of(run, output)
    spec = run.spec
    candidates = read_candidates(layout, run.spec.grid.size, default)
    dataset = load_dataset(spec.dataset, spec.seed, layout.storage)
    training, held_out = dataset.split(spec.dataset.validation_fraction)
    scorer = build_scorer(
        objective or spec.mixture.score_type,
        held_out or training,
        score=spec.score,
        storage=layout.storage,
        references=ReferenceCache.of(layout),
    )
    if scorer is None:
        raise ValueError("--objective: a search needs a score; the run's scoreType is none")
    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(candidates), samples, spec.network.latent_size), generator=rng)
    embeddings = MixtureEmbeddings([c.net for c in candidates], noise, scorer.embed)

    def score(weights: torch.Tensor) -> float:
        return scorer.objective_of(embeddings.of(weights))

    baseline = baseline_weights(candidates, layout, default)
    count = len(candidates)
    draws = random.Random(seed)  # the original's searches draw as it did, from Python's
    if method == "greedy":
        found = greedy(score, count, max_size)
    elif method == "ga":
        found = genetic(score, count, max_size, rng, start=[baseline])
    elif method == "greedy-grid":
        found = greedy_grid(score, count, max_size, patience, draws)
    elif method == "reo-gen":
        found = reo_gen(score, count, max_size, evaluations, draws)
    else:
        found = nreo_gen(score, count, min_size, max_size, evaluations, draws)
    manifest = write_ensemble(layout, method, default, candidates, found)
    manifest.update(
        objective={"name": scorer.objective_name, "value": found.objective},
        scores=scorer.scores_of(embeddings.of(found.weights)),
        trainScores={},
        mixtureGeneration=None,
        search={
            "method": method,
            "maxSize": max_size,
            **({"minSize": min_size} if method == "nreo-gen" else {}),
            **({"evaluationsAllowed": evaluations} if method.endswith("reo-gen") else {}),
            **({"patience": patience} if method == "greedy-grid" else {}),
            "samples": samples,
            "seed": seed,
            "candidates": len(candidates),
            "evaluations": found.evaluations,
            "bestCell": {"cell": default["bestCell"], "objective": score(baseline)},
        },
    )
    layout.storage.write_json(join(layout.optimised_ensemble(method), ENSEMBLE_MANIFEST), manifest)
    return manifest


def read_candidates(layout: RunLayout, cells: int, default: dict[str, Any]) -> list[Candidate]:
    """Every generator of every cell's final mixture, each distinct file once."""
    with damaged_as(layout.ensemble_manifest):
        part = NetworkPartSpec.model_validate(default["network"]["generator"])
        shape = tuple(default["data"]["shape"])
        latent = int(default["network"]["latentSize"])
    found: dict[str, Candidate] = {}
    for result in read_results(layout, cells):
        cell = layout.cell(result["cell"])
        with damaged_as(cell.result):
            members = [(m["cell"], join(cell.uri, m["file"])) for m in result["mixture"]]
        for source, uri in members:
            net = load_weights(build_generator(part, latent, shape), layout.storage, uri)
            data = layout.storage.read_bytes(uri)
            key = hashlib.sha256(data).hexdigest()
            if key not in found:
                found[key] = Candidate(source, key, data, net)
    if not found:
        raise ValueError(f"{layout.output}: no cell results with mixtures to search")
    return list(found.values())


def baseline_weights(
    candidates: list[Candidate], layout: RunLayout, default: dict[str, Any]
) -> torch.Tensor:
    """The run's own ensemble (the best cell's mixture) as weights over the candidates."""
    index = {c.key: k for k, c in enumerate(candidates)}
    weights = torch.zeros(len(candidates), dtype=torch.float64)
    for entry in default["generators"]:
        uri = join(layout.ensemble, entry["file"])
        with damaged_as(uri):  # a copy of a cell's mixture member, or damaged
            key = hashlib.sha256(layout.storage.read_bytes(uri)).hexdigest()
            if key not in index:
                raise ValueError("it is none of the cells' mixture members it was copied from")
            weights[index[key]] += entry["weight"]
    return weights / weights.sum()


def write_ensemble(
    layout: RunLayout,
    method: str,
    default: dict[str, Any],
    candidates: list[Candidate],
    found: Found,
) -> dict[str, Any]:
    """The chosen generators' files under `<run>/ensemble-<method>/`, replaced whole; the
    manifest to complete and write."""
    target = layout.optimised_ensemble(method)
    layout.storage.remove_tree(target)
    generators: list[dict[str, Any]] = []
    for k in found.weights.nonzero().flatten().tolist():
        name = RunLayout.ensemble_generator(len(generators))
        layout.storage.write_bytes(join(target, name), candidates[k].data)
        weight = float(found.weights[k])
        generators.append({"file": name, "weight": weight, "sourceCell": candidates[k].cell})
    reference = default["data"].get("reference")
    if isinstance(reference, str):  # the run's own ensemble keeps it beside its manifest
        layout.storage.copy(join(layout.ensemble, reference), join(target, reference))
    return {**default, "generators": generators}


def describe_search(manifest: dict[str, Any], output: str, ends: Yardsticks | None = None) -> str:
    """One line on a search's result, beside the run's own ensemble's figure."""
    search, objective = manifest["search"], manifest["objective"]
    chosen = len(manifest["generators"])
    return (
        f"{search['method']} over {search['candidates']} generators: "
        f"{describe_score(objective['name'], objective['value'], ends)} (the best cell's mixture: "
        f"{search['bestCell']['objective']:.4g}); {chosen} generator{'s' * (chosen != 1)} "
        f"in {output.rstrip('/')}/ensemble-{search['method']}"
    )
