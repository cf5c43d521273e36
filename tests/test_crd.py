"""The CRD: generated from the model, installed on a real API server, and rejecting there
what the model rejects.

Every manifest goes to kube-apiserver (hack/envtest.sh) as `kubectl apply` sends it:
`fieldValidation=Strict`, here as a dry run, so the server's own structural-schema checks,
defaulting, CEL rules and transition rules decide, and the same manifest goes through the
model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_RING
from envtest import GROUP, PLURAL, VERSION, Cluster
from kubernetes.client.exceptions import ApiException
from lipizzaner_cell.commands.cli import main as cli_main
from lipizzaner_core.crd import crd_manifest
from lipizzaner_core.spec import SpecError, dump_run, parse_run

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "lipizzanerruns.yaml"
CRD = crd_manifest()


@pytest.fixture(scope="module")
def server(control_plane):
    """One namespace on the real API server for this module's dry runs."""
    view = Cluster(control_plane, "crd")
    yield view
    view.cleanup()


def server_errors(server: Cluster, manifest: dict, dry_run: bool = True) -> list[str]:
    """What the API server says when the manifest is created: [] when it is accepted."""
    try:
        server.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            server.namespace,
            PLURAL,
            manifest,
            dry_run="All" if dry_run else None,
            field_validation="Strict",
        )
    except ApiException as exc:
        assert exc.status in (400, 422), exc.body
        return [json.loads(exc.body)["message"]]
    return []


def server_defaults(server: Cluster, manifest: dict) -> dict:
    """The object as the API server would store it: its schema defaults filled in."""
    return server.custom.create_namespaced_custom_object(
        GROUP, VERSION, server.namespace, PLURAL, manifest, dry_run="All", field_validation="Strict"
    )


def test_crd_file_is_the_generated_crd(capsys):
    assert yaml.safe_load(CRD_FILE.read_text()) == CRD, "run: lipizzaner crd > crds/..."
    assert cli_main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == CRD


def test_the_real_api_server_establishes_the_crd(server):
    crd = server.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "LipizzanerRun",
        "lipizzanerruns",
        ["lpz"],
    )
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Grid", "Phase", "Generation", "Best score", "Accuracy", "Age"]


def patched(changes: dict[str, Any]) -> dict:
    manifest = copy.deepcopy(TINY_RING)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = manifest
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return manifest


DELETE = object()

# (changes to the tiny ring manifest, the field the API server names, the model's field path)
INVALID = [
    ({"spec.grid.rows": 0}, "spec.grid.rows", "spec.grid.rows"),
    ({"spec.grid.cols": 65}, "spec.grid.cols", "spec.grid.cols"),
    ({"spec.grid.rows": "two"}, "spec.grid.rows", "spec.grid.rows"),
    ({"spec.grid.neighbourhood": "hex"}, "spec.grid.neighbourhood", "spec.grid.neighbourhood"),
    ({"spec.grid.rows": 40, "spec.grid.cols": 40}, "spec.grid", "spec.grid"),
    ({"spec.grid.depth": 2}, "spec.grid", "spec.grid.depth"),
    ({"spec.generations": 0}, "spec.generations", "spec.generations"),
    ({"spec.seed": -1}, "spec.seed", "spec.seed"),
    ({"spec.dataset": DELETE}, "spec", "spec.dataset"),
    ({"spec.dataset.name": "cifar"}, "spec.dataset", "spec.dataset"),
    ({"spec.dataset": {"name": "mnist"}}, "spec.dataset", "spec.dataset.path"),
    ({"spec.dataset.path": "/data"}, "spec.dataset", "spec.dataset.path"),
    ({"spec.dataset.std": 0}, "spec.dataset.std", "spec.dataset.std"),
    ({"spec.dataset.samplingRatio": 1.5}, "spec.dataset.samplingRatio", "samplingRatio"),
    ({"spec.dataset.modes": 0}, "spec.dataset.modes", "spec.dataset.modes"),
    ({"spec.dataset.validationFraction": 1.0}, "validationFraction", "validationFraction"),
    ({"spec.mixture.keep": "first"}, "spec.mixture.keep", "spec.mixture.keep"),
    ({"spec.score.features": "resnet-50"}, "spec.score.features", "spec.score.features"),
    ({"spec.score.final": "inception v3"}, "spec.score.final", "spec.score.final"),
    ({"spec.score.finalSamples": 5}, "finalSamples", "finalSamples"),
    ({"spec.exchange.optimizerState": "yes"}, "optimizerState", "optimizerState"),
    ({"spec.network.latentSize": 0}, "spec.network.latentSize", "spec.network.latentSize"),
    ({"spec.network.generator.architecture": "transformer"}, "architecture", "architecture"),
    ({"spec.network.generator.hiddenSizes": []}, "hiddenSizes", "hiddenSizes"),
    ({"spec.network.generator.hiddenSizes": [0]}, "hiddenSizes", "hiddenSizes"),
    ({"spec.network.discriminator.output": "relu"}, "output", "output"),
    ({"spec.network.generator.architecture": "dcgan"}, "spec.network", "spec.network"),
    ({"spec.network.discriminator.architecture": "rnn"}, "spec.network", "spec.network"),
    ({"spec.network.generator.cell": "cnn"}, "spec.network.generator.cell", "cell"),
    ({"spec.loss": "hinge"}, "spec.loss", "spec.loss"),
    ({"spec.coevolution.populationSize": 0}, "populationSize", "populationSize"),
    ({"spec.coevolution.tournamentSize": 4}, "tournamentSize", "tournamentSize"),
    # The pool is the local population plus one centre per neighbour: 2 + 2 on 2x2.
    (
        {"spec.coevolution.populationSize": 2, "spec.coevolution.tournamentSize": 5},
        "tournamentSize",
        "selection pool, the local populationSize (2) plus one centre per neighbour (2) = 4",
    ),
    ({"spec.coevolution.replacements": 2}, "replacements", "replacements"),
    ({"spec.coevolution.replacementRule": "elitist"}, "replacementRule", "replacementRule"),
    ({"spec.coevolution.learningRate": 0}, "learningRate", "learningRate"),
    ({"spec.coevolution.mutation.probability": 2}, "probability", "probability"),
    ({"spec.coevolution.fitness.mode": "median"}, "fitness.mode", "fitness.mode"),
    ({"spec.mixture.sigma": -0.1}, "spec.mixture.sigma", "spec.mixture.sigma"),
    ({"spec.mixture.scoreType": "inception"}, "scoreType", "scoreType"),
    ({"spec.mixture.scoreSampleSize": 5}, "scoreSampleSize", "scoreSampleSize"),
    ({"spec.mixture.scoreType": "spectrum"}, "spec.mixture.scoreType", "scoreType"),
    ({"spec.ensemble.method": "random"}, "spec.ensemble.method", "spec.ensemble.method"),
    ({"spec.ensemble.maxSize": 0}, "spec.ensemble.maxSize", "spec.ensemble.maxSize"),
    ({"spec.dataset.labelRate": 0.1}, "spec.dataset.labelRate", "spec.dataset.labelRate"),
    ({"spec.dataset.labelRate": 0}, "spec.dataset.labelRate", "spec.dataset.labelRate"),
    (
        {"spec.semiSupervised.enabled": True, "spec.dataset": {"name": "sine-waves"}},
        "spec.semiSupervised.enabled",
        "spec.semiSupervised.enabled",
    ),
    ({"spec.semiSupervised.weights": "even"}, "semiSupervised.weights", "weights"),
    ({"spec.semiSupervised.labelledBatchSize": 0}, "labelledBatchSize", "labelledBatchSize"),
    (
        {"spec.ensemble.method": "ga", "spec.ensemble.objective": "spectrum"},
        "spec.ensemble.objective",
        "spec.ensemble.objective",
    ),
    (
        {"spec.ensemble.method": "greedy", "spec.mixture.scoreType": "none"},
        "spec.ensemble.objective",
        "spec.ensemble.objective",
    ),
    ({"spec.mustangs.draw": "at-creation"}, "spec.mustangs.draw", "spec.mustangs.draw"),
    ({"spec.mixture.schedule": "end"}, "spec.mixture.keep", "spec.mixture.keep"),
    ({"spec.ensemble.minSize": 9}, "spec.ensemble.minSize", "spec.ensemble.minSize"),
    ({"spec.training.generatorEma.decay": 1.0}, "generatorEma.decay", "generatorEma.decay"),
    ({"spec.semiSupervised.labels": "all"}, "semiSupervised.labels", "labels"),
    ({"spec.training.batchSize": 0}, "batchSize", "batchSize"),
    ({"spec.training.device": "tpu"}, "spec.training.device", "spec.training.device"),
    ({"spec.checkpoint.every": 0}, "spec.checkpoint.every", "spec.checkpoint.every"),
    ({"spec.output.uri": ""}, "spec.output.uri", "spec.output.uri"),
    ({"spec.failurePolicy.maxRestartsPerCell": -1}, "maxRestartsPerCell", "maxRestarts"),
    ({"spec.failurePolicy.maxFailedCells": 4}, "maxFailedCells", "maxFailedCells"),
    ({"spec.exchange.tls.enabled": "yes"}, "spec.exchange.tls.enabled", "tls.enabled"),
    ({"spec.exchange.tls.secretName": "Not_A_Name"}, "secretName", "secretName"),
    ({"spec.exchange.maxStateMegabytes": 0}, "maxStateMegabytes", "maxStateMegabytes"),
    ({"spec.cell.imagePullPolicy": "Sometimes"}, "imagePullPolicy", "imagePullPolicy"),
    ({"spec.cell.nodeSelector": {"gpu": 1}}, "nodeSelector", "nodeSelector"),
    ({"spec.cell.labels": {"lipizzaner.io/run": "x"}}, "spec.cell.labels", "spec.cell.labels"),
    (
        {"spec.cell.labels": {"kueue.x-k8s.io/queue-name": "q"}},
        "spec.cell.labels",
        "kueue.x-k8s.io/queue-name: set by the operator itself",
    ),
    (
        {"spec.cell.annotations": {"scheduling.k8s.io/group-name": "g"}},
        "spec.cell.annotations",
        "spec.cell.annotations",
    ),
    ({"spec.cell.labels": {f"k{i}": "v" for i in range(65)}}, "labels", "spec.cell.labels"),
    ({"spec.suspend": "yes"}, "spec.suspend", "spec.suspend"),
    ({"spec.activeDeadlineSeconds": 0}, "activeDeadlineSeconds", "activeDeadlineSeconds"),
    ({"spec.ttlSecondsAfterFinished": -5}, "ttlSecondsAfterFinished", "ttlSecondsAfter"),
    ({"spec.generation": 5}, "spec", "spec.generation"),
    ({"metadata.name": "1-starts-with-a-digit"}, "metadata.name", "metadata.name"),
]


@pytest.mark.parametrize(
    ("changes", "crd_field", "model_field"), INVALID, ids=[str(c[0])[:60] for c in INVALID]
)
def test_invalid_specs_are_rejected_by_the_server_and_the_model(
    server, changes, crd_field, model_field
):
    manifest = patched(changes)
    errors = server_errors(server, manifest)
    assert errors, f"the API server accepted {changes}"
    assert any(crd_field in e for e in errors), errors
    with pytest.raises(SpecError) as caught:
        parse_run(manifest)
    assert any(model_field in line for line in caught.value.errors), caught.value.errors


def test_the_battery_is_large_enough():
    assert len(INVALID) >= 45


def without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


# Defaults the server cannot fill: fields of one dataset variant only (a structural
# schema allows no defaults inside `oneOf`), so the model fills them.
VARIANT_ONLY = {"modes", "radius", "std", "modesPerSide", "spacing", "split", "download"}
VARIANT_ONLY |= {"mirror", "imageSize", "channels", "key", "size", "crop", "waves"}


@pytest.mark.parametrize(
    "manifest_file",
    sorted((ROOT / "examples").glob("**/*.yaml")),
    ids=lambda p: str(p.relative_to(ROOT / "examples")),
)
def test_examples_are_accepted_and_defaulted_exactly_as_the_model_does(server, manifest_file):
    manifest = yaml.safe_load(manifest_file.read_text())
    stored = server_defaults(server, manifest)["spec"]
    model = without_none(dump_run(parse_run(manifest))["spec"])
    model_dataset, stored_dataset = model.pop("dataset"), stored.pop("dataset")
    assert stored == model
    assert set(model_dataset) - set(stored_dataset) <= VARIANT_ONLY
    assert {k: model_dataset[k] for k in stored_dataset} == stored_dataset


def test_a_minimal_run_gets_every_default_of_the_model(server):
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LipizzanerRun",
        "metadata": {"name": "minimal"},
        "spec": {"dataset": {"name": "gaussian-ring"}},
    }
    stored = server_defaults(server, manifest)["spec"]
    model = without_none(dump_run(parse_run(manifest))["spec"])
    stored.pop("dataset"), model.pop("dataset")
    assert stored == model
    assert "resources" not in stored["cell"]  # the operator's default follows cellsPerPod
    assert stored["cell"]["cellsPerPod"] == 1
    assert stored["loss"] == "bce" and stored["grid"] == {
        "rows": 2,
        "cols": 2,
        "neighbourhood": "von-neumann",
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"spec.grid.rows": 3}, "grid is immutable"),
        ({"spec.dataset.size": 500}, "dataset is immutable"),
    ],
)
def test_grid_and_dataset_cannot_change_after_creation(server, changes, message):
    name = f"immutable-{next(iter(changes)).split('.')[1]}"
    original = patched({"metadata.name": name})
    assert server_errors(server, original, dry_run=False) == []
    changed = patched({**changes, "metadata.name": name})
    with pytest.raises(ApiException) as refused:
        server.custom.patch_namespaced_custom_object(
            GROUP, VERSION, server.namespace, PLURAL, name, {"spec": changed["spec"]}
        )
    assert message in json.loads(refused.value.body)["message"]
    allowed = {"generations": 9, "suspend": True}
    server.custom.patch_namespaced_custom_object(
        GROUP, VERSION, server.namespace, PLURAL, name, {"spec": allowed}
    )
    assert server.run(name, server.namespace)["spec"]["generations"] == 9


def test_tournament_rule_in_cel_matches_the_model(server):
    """The CEL rule and topology.neighbourhood_size agree on every small grid."""
    for rows in (1, 2, 3, 4):
        for cols in (1, 2, 3):
            for kind in ("von-neumann", "moore"):
                for tournament in (1, 2, 3, 4, 5, 6, 9, 10):
                    manifest = patched(
                        {
                            "spec.grid": {"rows": rows, "cols": cols, "neighbourhood": kind},
                            "spec.coevolution.tournamentSize": tournament,
                        }
                    )
                    try:
                        parse_run(manifest)
                        model_ok = True
                    except SpecError:
                        model_ok = False
                    server_ok = server_errors(server, manifest) == []
                    assert server_ok == model_ok, (rows, cols, kind, tournament)
