"""The CRD: generated from the model, structural, and rejecting what the model rejects.

The API server's checks are replayed offline: defaults from the schema, the OpenAPI schema
(jsonschema, with unknown fields rejected as `kubectl apply`'s strict field validation
does) and the CEL rules (cel-python), then the same manifest goes through the model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import TINY_RING
from lipizzaner_operator.cli import main as cli_main
from lipizzaner_operator.crd import crd_manifest
from lipizzaner_operator.spec import SpecError, parse_run

CRD_FILE = Path(__file__).resolve().parents[1] / "crds" / "lipizzanerruns.yaml"
CRD = crd_manifest()
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
CEL = celpy.Environment()


def test_crd_file_is_the_generated_crd(capsys):
    assert yaml.safe_load(CRD_FILE.read_text()) == CRD, "run: lipizzaner crd > crds/..."
    assert cli_main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == CRD


def test_crd_is_a_valid_kubernetes_object():
    kubernetes_validate.validate(CRD, "1.30.0", strict=True)
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "LipizzanerRun",
        "lipizzanerruns",
        ["lpz"],
    )
    version = CRD["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Grid", "Phase", "Generation", "Best score", "Age"]


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def test_schema_is_structural():
    """No $ref, no const, no additionalProperties: false, no types inside junctors."""
    for path, node in _walk(SCHEMA):
        assert "$ref" not in node and "const" not in node, path
        assert node.get("additionalProperties", True) is not False, path
        if "type" in node or "properties" in node:
            continue
        if any(j in path for j in ("/oneOf/", "/anyOf/", "/not")):
            assert not {"type", "default", "description", "nullable"} & set(node), path


def with_defaults(schema: dict, value: Any) -> Any:
    """Fill schema defaults into a value, as the API server does before validation."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    result = dict(value)
    for name, sub in schema["properties"].items():
        if name not in result and "default" in sub:
            result[name] = copy.deepcopy(sub["default"])
        if name in result:
            result[name] = with_defaults(sub, result[name])
    return result


def strict(schema: Any) -> Any:
    """The schema with unknown fields rejected (kubectl's strict field validation)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    typed_object = schema.get("type") == "object" and "properties" in schema
    if typed_object and not schema.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


STRICT_SCHEMA = strict(SCHEMA)


def cel_errors(schema: dict, value: Any, old: Any = None, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule on the (defaulted) object."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue  # transition rules apply to updates only
        activation = {"self": celpy.json_to_cel(value)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        program = CEL.program(CEL.compile(rule["rule"]))
        if not program.evaluate(activation):
            errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                previous = old.get(name) if isinstance(old, dict) else None
                errors.extend(cel_errors(sub, value[name], previous, f"{path}.{name}"))
    return errors


def api_server_errors(manifest: dict, old: dict | None = None) -> list[str]:
    """What the API server would say: schema errors with their JSON path, then CEL."""
    document = with_defaults(SCHEMA, manifest)
    validator = jsonschema.Draft4Validator(STRICT_SCHEMA)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]
    if errors:
        return errors
    old_document = with_defaults(SCHEMA, old) if old is not None else None
    return cel_errors(SCHEMA, document, old_document)


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
    ({"spec.network.latentSize": 0}, "spec.network.latentSize", "spec.network.latentSize"),
    ({"spec.network.generator.architecture": "transformer"}, "architecture", "architecture"),
    ({"spec.network.generator.hiddenSizes": []}, "hiddenSizes", "hiddenSizes"),
    ({"spec.network.generator.hiddenSizes": [0]}, "hiddenSizes", "hiddenSizes"),
    ({"spec.network.discriminator.output": "relu"}, "output", "output"),
    ({"spec.network.generator.architecture": "dcgan"}, "spec.network", "spec.network"),
    ({"spec.loss": "hinge"}, "spec.loss", "spec.loss"),
    ({"spec.coevolution.populationSize": 0}, "populationSize", "populationSize"),
    ({"spec.coevolution.tournamentSize": 4}, "tournamentSize", "tournamentSize"),
    ({"spec.coevolution.replacements": 2}, "replacements", "replacements"),
    ({"spec.coevolution.replacementRule": "elitist"}, "replacementRule", "replacementRule"),
    ({"spec.coevolution.learningRate": 0}, "learningRate", "learningRate"),
    ({"spec.coevolution.mutation.probability": 2}, "probability", "probability"),
    ({"spec.coevolution.fitness.mode": "median"}, "fitness.mode", "fitness.mode"),
    ({"spec.mixture.sigma": -0.1}, "spec.mixture.sigma", "spec.mixture.sigma"),
    ({"spec.mixture.scoreType": "inception"}, "scoreType", "scoreType"),
    ({"spec.mixture.scoreSampleSize": 5}, "scoreSampleSize", "scoreSampleSize"),
    ({"spec.training.batchSize": 0}, "batchSize", "batchSize"),
    ({"spec.training.device": "tpu"}, "spec.training.device", "spec.training.device"),
    ({"spec.checkpoint.every": 0}, "spec.checkpoint.every", "spec.checkpoint.every"),
    ({"spec.output.uri": ""}, "spec.output.uri", "spec.output.uri"),
    ({"spec.failurePolicy.maxRestartsPerCell": -1}, "maxRestartsPerCell", "maxRestarts"),
    ({"spec.exchange.maxStateMegabytes": 0}, "maxStateMegabytes", "maxStateMegabytes"),
    ({"spec.cell.imagePullPolicy": "Sometimes"}, "imagePullPolicy", "imagePullPolicy"),
    ({"spec.cell.nodeSelector": {"gpu": 1}}, "nodeSelector", "nodeSelector"),
    ({"spec.suspend": "yes"}, "spec.suspend", "spec.suspend"),
    ({"spec.activeDeadlineSeconds": 0}, "activeDeadlineSeconds", "activeDeadlineSeconds"),
    ({"spec.ttlSecondsAfterFinished": -5}, "ttlSecondsAfterFinished", "ttlSecondsAfter"),
    ({"spec.generation": 5}, "spec", "spec.generation"),
    ({"metadata.name": "1-starts-with-a-digit"}, "metadata.name", "metadata.name"),
]


@pytest.mark.parametrize(
    ("changes", "crd_field", "model_field"), INVALID, ids=[str(c[0])[:60] for c in INVALID]
)
def test_invalid_specs_are_rejected_by_the_crd_and_the_model(changes, crd_field, model_field):
    manifest = patched(changes)
    crd_errors = api_server_errors(manifest)
    assert crd_errors, f"the CRD accepted {changes}"
    assert any(crd_field in e.replace("$.", "") for e in crd_errors), crd_errors
    with pytest.raises(SpecError) as caught:
        parse_run(manifest)
    assert any(model_field in line for line in caught.value.errors), caught.value.errors


def test_the_battery_is_large_enough():
    assert len(INVALID) >= 30


@pytest.mark.parametrize(
    "manifest_file",
    sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_examples_pass_the_crd_and_the_model(manifest_file):
    manifest = yaml.safe_load(manifest_file.read_text())
    assert api_server_errors(manifest) == []
    parse_run(manifest)


def test_a_valid_spec_passes_and_gets_the_models_defaults():
    manifest = patched({"spec.cell.tolerations": [{"key": "gpu", "operator": "Exists"}]})
    assert api_server_errors(manifest) == []
    defaulted = with_defaults(SCHEMA, manifest)["spec"]
    model = parse_run(manifest).spec
    assert defaulted["coevolution"]["tournamentSize"] == model.coevolution.tournament_size
    assert defaulted["cell"]["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert defaulted["loss"] == model.loss == "heuristic"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"spec.grid.rows": 3}, "grid is immutable"),
        ({"spec.dataset.size": 500}, "dataset is immutable"),
    ],
)
def test_grid_and_dataset_cannot_change_after_creation(changes, message):
    old = copy.deepcopy(TINY_RING)
    errors = api_server_errors(patched(changes), old=old)
    assert any(message in e for e in errors), errors


def test_other_fields_may_change_on_update():
    old = copy.deepcopy(TINY_RING)
    assert api_server_errors(patched({"spec.generations": 9, "spec.suspend": True}), old) == []


def test_tournament_rule_in_cel_matches_the_model():
    """The CEL rule and topology.neighbourhood_size agree on every small grid."""
    for rows in (1, 2, 3, 4):
        for cols in (1, 2, 3):
            for kind in ("von-neumann", "moore"):
                for tournament in range(1, 11):
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
                    assert (api_server_errors(manifest) == []) == model_ok, (rows, cols, kind)
