"""The `LipizzanerRun` CustomResourceDefinition, generated from the pydantic models.

One source of truth: `crds/lipizzanerruns.yaml` is this module's output (a test fails when
they differ; `lipizzaner crd > crds/lipizzanerruns.yaml` refreshes it). The model's JSON
schema is turned into a *structural* OpenAPI v3 schema, as Kubernetes requires:
references inlined, optionals as `nullable`, `const` as one-value `enum`, the dataset's
tagged union as one object whose `oneOf` branches only constrain (no types inside
junctors), free-form Kubernetes objects as `x-kubernetes-preserve-unknown-fields`.
Cross-field rules and immutability are CEL (`x-kubernetes-validations`), mirroring the
model's own validators.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from lipizzaner_core.spec import API_VERSION, KIND, MAX_CELLS, NAME_PATTERN, RunSpecBody
from lipizzaner_core.spec.datasets import LABELLED_DATASETS
from lipizzaner_core.spec.kubernetes import OPERATOR_PREFIX, RESERVED_KEYS
from lipizzaner_core.spec.outcome import OBJECTIVE_DATA
from lipizzaner_core.spec.training import ARCHITECTURE_DATA
from lipizzaner_core.status import RunStatus

GROUP, VERSION = API_VERSION.split("/")
PLURAL, SINGULAR, SHORT_NAME = "lipizzanerruns", "lipizzanerrun", "lpz"
CRD_NAME = f"{PLURAL}.{GROUP}"

Schema = dict[str, Any]


class _FactoryDefaults(GenerateJsonSchema):
    """Show `default_factory` defaults too: a section's default is the whole section.

    The API server checks every CEL rule against each `default` exactly as written (it
    does not fill nested defaults into a default first), so a section defaults to all of
    its fields, never to `{}`: a rule such as `self.rows * self.cols <= 1024` then holds
    for the default as it does for any object the server defaults.
    """

    def default_schema(self, schema: Any) -> Schema:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()
            if isinstance(value, BaseModel):
                value = value.model_dump(by_alias=True, mode="json", exclude_none=True)
            schema = {**schema, "default": value}
            schema.pop("default_factory")
        return super().default_schema(schema)


def _vertical_reach(axis: str) -> str:
    return f"(self.grid.{axis} >= 3 ? 2 : self.grid.{axis} - 1)"


# topology.neighbourhood_size in CEL.
_NEIGHBOURHOOD_SIZE = (
    f"(self.grid.neighbourhood == 'moore' ? "
    f"({_vertical_reach('rows')} + 1) * ({_vertical_reach('cols')} + 1) : "
    f"1 + {_vertical_reach('rows')} + {_vertical_reach('cols')})"
)

SPEC_RULES: list[Schema] = [
    {
        # The pool: the local population plus one centre per neighbour.
        # A lone cell (1x1) is a plain GAN: its tournaments shrink to its pool.
        "rule": "(self.grid.rows == 1 && self.grid.cols == 1) || "
        f"self.coevolution.tournamentSize <= self.coevolution.populationSize + "
        f"{_NEIGHBOURHOOD_SIZE} - 1",
        "message": "coevolution.tournamentSize: must be <= the selection pool, the local "
        "populationSize plus one centre per neighbour (a 1x1 grid excepted)",
        "fieldPath": ".coevolution.tournamentSize",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.coevolution.replacements <= self.coevolution.populationSize",
        "message": "coevolution.replacements: must be <= populationSize",
        "fieldPath": ".coevolution.replacements",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "has(self.managedBy) == has(oldSelf.managedBy)",
        "message": "spec.managedBy is immutable",
        "fieldPath": ".managedBy",
    },
    {
        "rule": "self.failurePolicy.maxFailedCells < self.grid.rows * self.grid.cols",
        "message": "failurePolicy.maxFailedCells: must be less than the number of cells",
        "fieldPath": ".failurePolicy.maxFailedCells",
        "reason": "FieldValueInvalid",
    },
    *(
        {
            "rule": f"(self.network.generator.architecture != '{architecture}' && "
            f"self.network.discriminator.architecture != '{architecture}') || "
            f"self.dataset.name in {list(datasets)}",
            "message": f"network: {architecture} needs {kind} ({', '.join(datasets)})",
            "fieldPath": ".network",
            "reason": "FieldValueInvalid",
        }
        for architecture, (kind, datasets) in ARCHITECTURE_DATA.items()
    ),
    *(
        {
            "rule": f"{condition} || self.dataset.name in {list(datasets)}",
            "message": f"{field}: {objective} needs {kind} ({', '.join(datasets)})",
            "fieldPath": f".{field}",
            "reason": "FieldValueInvalid",
        }
        for objective, (kind, datasets) in OBJECTIVE_DATA.items()
        for field, condition in (
            ("mixture.scoreType", f"self.mixture.scoreType != '{objective}'"),
            (
                "ensemble.objective",
                f"self.ensemble.method == 'best-cell' || self.ensemble.objective != '{objective}'",
            ),
        )
    ),
    {
        "rule": f"!self.semiSupervised.enabled || self.dataset.name in {list(LABELLED_DATASETS)}",
        "message": "semiSupervised.enabled: needs a dataset with classes "
        f"({', '.join(LABELLED_DATASETS)})",
        "fieldPath": ".semiSupervised.enabled",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.dataset.labelRate) || self.semiSupervised.enabled",
        "message": "dataset.labelRate: only semi-supervised runs use labels",
        "fieldPath": ".dataset.labelRate",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.mustangs.draw == 'per-batch' || self.loss == 'mustangs'",
        "message": "mustangs.draw: only loss: mustangs draws losses",
        "fieldPath": ".mustangs.draw",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.mixture.schedule == 'every-generation' || self.mixture.keep == 'last'",
        "message": "mixture.keep: best compares a score taken every generation; with "
        "schedule: end set keep: last",
        "fieldPath": ".mixture.keep",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.ensemble.minSize <= self.ensemble.maxSize",
        "message": "ensemble.minSize: must be <= maxSize",
        "fieldPath": ".ensemble.minSize",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.ensemble.method == 'best-cell' || self.ensemble.objective != 'auto' || "
        "self.mixture.scoreType != 'none'",
        "message": "ensemble.objective: a search needs a score, and mixture.scoreType is none",
        "fieldPath": ".ensemble.objective",
        "reason": "FieldValueInvalid",
    },
]
GRID_RULES: list[Schema] = [
    {
        "rule": f"self.rows * self.cols <= {MAX_CELLS}",
        "message": f"grid: rows * cols must be <= {MAX_CELLS}",
    },
    {"rule": "self == oldSelf", "message": "grid is immutable"},
]
DATASET_RULES: list[Schema] = [{"rule": "self == oldSelf", "message": "dataset is immutable"}]
NAME_RULE: Schema = {
    "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
    "message": "metadata.name: must start with a letter, use only [-a-z0-9] and be at most "
    "42 characters (it names the cells' pods and Service)",
}


def _inline(node: Any, defs: dict[str, Schema]) -> Any:
    """Resolve every $ref, so each node can be converted on its own."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**target, **extra}, defs)
    return {key: _inline(value, defs) for key, value in node.items()}


def structural(node: Schema) -> Schema:
    """One inlined pydantic JSON-schema node as a structural Kubernetes schema node."""
    if "anyOf" in node:
        return _optional(node)
    if "oneOf" in node:
        return _tagged_union(node)
    result: Schema = {}
    for key, value in node.items():
        if key in ("title", "additionalProperties", "discriminator", "$defs"):
            continue
        result.update(_keyword(key, value))
    extra = node.get("additionalProperties")
    if extra is True or (node.get("type") == "object" and "properties" not in node and not extra):
        result["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        result["additionalProperties"] = structural(extra)
    return result


def _optional(node: Schema) -> Schema:
    """Optional[X] as X with `nullable`; the only union besides the tagged one."""
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    if len(options) != 1 or len(node["anyOf"]) != 2:
        raise ValueError(f"only Optional[X] unions are supported, got {node['anyOf']}")
    outer = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
    result = {**structural({**options[0], **outer}), "nullable": True}
    if node.get("default") is not None:
        result["default"] = node["default"]
    return result


def _keyword(key: str, value: Any) -> Schema:
    """One JSON-schema keyword in its OpenAPI v3 spelling."""
    if key == "const":
        return {"enum": [value]}
    if key == "exclusiveMinimum":  # a number in JSON schema, a flag in OpenAPI v3.0
        return {"minimum": value, "exclusiveMinimum": True}
    if key == "exclusiveMaximum":
        return {"maximum": value, "exclusiveMaximum": True}
    if key == "properties":
        return {"properties": {name: structural(sub) for name, sub in value.items()}}
    if key == "items":
        return {"items": structural(value)}
    return {key: value}


def _tagged_union(node: Schema) -> Schema:
    """A discriminated union as one object: shared properties, branch-specific `oneOf`.

    Each branch pins the tag, requires its own required fields and forbids the other
    variants' fields. Defaults that differ between variants are left to the model.
    """
    tag = node["discriminator"]["propertyName"]
    variants = [structural(v) for v in node["oneOf"]]
    properties: dict[str, Schema] = {}
    for variant in variants:
        for name, prop in variant["properties"].items():
            if name == tag:
                continue
            plain = {k: v for k, v in prop.items() if k not in ("default", "description")}
            seen = properties.setdefault(name, plain)
            if seen != plain:
                raise ValueError(f"union field {name!r} differs between variants")
    shared_defaults = {
        name: variants[0]["properties"][name]["default"]
        for name in properties
        if all("default" in v["properties"].get(name, {}) for v in variants)
        and len({repr(v["properties"][name]["default"]) for v in variants}) == 1
    }
    for name, value in shared_defaults.items():
        properties[name]["default"] = value
    tags = [v["properties"][tag]["enum"][0] for v in variants]
    branches = []
    for value, variant in zip(tags, variants, strict=True):
        foreign = sorted(set(properties) - set(variant["properties"]))
        branch: Schema = {"properties": {tag: {"enum": [value]}}, "required": variant["required"]}
        if foreign:
            branch["not"] = {"anyOf": [{"required": [name]} for name in foreign]}
        branches.append(branch)
    return {
        "type": "object",
        "required": [tag],
        "properties": {tag: {"type": "string", "enum": tags}, **properties},
        "oneOf": branches,
    }


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, schema_generator=_FactoryDefaults)
    return structural(_inline(raw, raw.get("$defs", {})))


def spec_schema() -> Schema:
    schema = model_schema(RunSpecBody)
    schema["x-kubernetes-validations"] = SPEC_RULES
    schema["properties"]["grid"]["x-kubernetes-validations"] = GRID_RULES
    schema["properties"]["dataset"]["x-kubernetes-validations"] = DATASET_RULES
    schema["properties"]["managedBy"]["x-kubernetes-validations"] = [
        {"rule": "self == oldSelf", "message": "spec.managedBy is immutable"}
    ]
    cell = schema["properties"]["cell"]["properties"]
    for field in ("labels", "annotations"):
        cell[field]["x-kubernetes-validations"] = [_not_the_operators(field)]
    return schema


def _not_the_operators(field: str) -> Schema:
    """CEL's copy of the model's rule: no key the operator sets on cell pods itself."""
    return {
        "rule": f"self.all(k, !k.startsWith('{OPERATOR_PREFIX}') && !(k in {list(RESERVED_KEYS)}))",
        "message": f"spec.cell.{field}: {OPERATOR_PREFIX}* and the keys the operator sets "
        "itself (app.kubernetes.io/name, instance, component and managed-by, Kueue's queue "
        "and pod group, the gang schedulers' group) are refused",
    }


def _printer_columns() -> list[Schema]:
    return [
        {"name": "Grid", "type": "string", "jsonPath": ".status.grid"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Generation",
            "type": "integer",
            "jsonPath": ".status.generation.min",
            "description": "generations completed by the slowest cell",
        },
        {"name": "Best score", "type": "number", "jsonPath": ".status.bestScore"},
        {
            "name": "Accuracy",
            "type": "number",
            "jsonPath": ".status.bestAccuracy",
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd_manifest() -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["lipizzaner"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "x-kubernetes-validations": [NAME_RULE],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": model_schema(RunStatus),
                            },
                        }
                    },
                }
            ],
        },
    }
