"""`LipizzanerRun.status` as pydantic models: one source for the operator and the CRD schema.

Conditions follow `metav1.Condition`, so `kubectl wait --for=condition=Succeeded` works.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

RunPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
# Waiting: no pod yet; Restarting: its failed or disrupted pod is being replaced;
# Failed: given up (spec.failurePolicy.maxFailedCells), the others going on without it.
CellPhase = Literal[
    "Waiting", "Pending", "Running", "Succeeded", "Failed", "Restarting", "Suspended"
]
CONDITION_TYPES = ("Running", "Succeeded", "Failed", "Suspended")
# The status names at most this many cells, whatever the grid, so the run object stays
# small for etcd and for every watcher: the cells in trouble first, then the best. A
# bigger grid keeps every cell's record in the ConfigMap `status.cellsConfigMap` names.
STATUS_CELLS = 16


class StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Condition(StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class CellRecord(StatusModel):
    cell: int
    phase: CellPhase = "Waiting"
    restarts: int = 0  # after failures: they count toward maxRestartsPerCell
    disruptions: int = 0  # preempted, evicted, node lost: recreated, not counted
    generation: int = 0
    score: float | None = None
    accuracy: float | None = None  # semi-supervised runs: its classifier's, held-out data
    message: str = ""


class CellCounts(StatusModel):
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    restarts: int = 0
    disruptions: int = 0


class GenerationRange(StatusModel):
    min: int = 0
    max: int = 0


class EnsembleStatus(StatusModel):
    uri: str = Field(description="the best cell's mixture")
    searched_uri: str | None = Field(None, description="spec.ensemble's searched ensemble")


class RunStatus(StatusModel):
    phase: RunPhase = "Pending"
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    grid: str = ""
    cells: CellCounts = Field(default_factory=CellCounts)
    generation: GenerationRange = Field(default_factory=GenerationRange)
    best_score: float | None = Field(None, description="lowest mixture score over the cells")
    best_accuracy: float | None = Field(
        None, description="semi-supervised runs: the highest classifier accuracy over the cells"
    )
    ensemble: EnsembleStatus | None = None
    start_time: str | None = None
    completion_time: str | None = None
    cell_records: list[CellRecord] = Field(
        default_factory=list,
        description="every cell of a grid of up to 16; of a bigger one, 16: those in trouble "
        "(given up, restarting, restarted, disrupted, with a message), then the best by score",
    )
    cells_config_map: str | None = Field(
        None, description="grids of more than 16 cells: the ConfigMap with every cell's record"
    )

    def to_patch(self) -> dict:
        """A merge patch: a top-level None clears the field; no None goes inside a list.

        Lists (conditions, cell records) replace the stored list whole, and the server
        drops their items' null fields, so a null there would never read back as sent.
        """
        patch = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        return {name: patch.get(name) for name in self.model_dump(by_alias=True)}


def notable(records: list[CellRecord], limit: int = STATUS_CELLS) -> list[CellRecord]:
    """The records the status shows: all of them up to `limit`; past it, the cells in
    trouble first (given up, restarting, with a message, then the most restarts and
    disruptions), then the best scores, in cell order."""

    def trouble(record: CellRecord) -> tuple[int, int]:
        rank = {"Failed": 0, "Restarting": 1}.get(record.phase, 3 if not record.message else 2)
        return rank, -(record.restarts + record.disruptions)

    if len(records) <= limit:
        return records
    troubled = sorted(
        (r for r in records if trouble(r) != (3, 0)), key=lambda r: (*trouble(r), r.cell)
    )
    scored = sorted(
        (r for r in records if trouble(r) == (3, 0) and r.score is not None),
        key=lambda r: (r.score, r.cell),
    )
    return sorted((troubled + scored)[:limit], key=lambda r: r.cell)


# The key of `status.cellsConfigMap` that holds every cell's record, as a JSON list.
RECORDS_KEY = "records.json"


def encode_records(records: list[CellRecord]) -> str:
    """Compact JSON, defaults left out: about 60 bytes a cell."""
    return json.dumps(
        [r.model_dump(by_alias=True, exclude_defaults=True, mode="json") for r in records],
        separators=(",", ":"),
    )


def decode_records(text: str) -> list[CellRecord]:
    """The records `encode_records` wrote; ValueError if the text is not such a list."""
    found = json.loads(text)
    if not isinstance(found, list):
        raise ValueError("cell records: not a JSON list")
    return [CellRecord.model_validate(item) for item in found]


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes times."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def with_conditions(status: RunStatus, reason: str, message: str, now: datetime) -> list[Condition]:
    """One condition per type: True for the phase's own type, False for the others.

    Every condition carries the phase's reason and message; lastTransitionTime changes
    only when a condition's status flips.
    """
    old = {c.type: c for c in status.conditions}
    conditions = []
    for kind in CONDITION_TYPES:
        value: Literal["True", "False"] = "True" if kind == status.phase else "False"
        previous = old.get(kind)
        transition = timestamp(now)
        if previous is not None and previous.status == value:
            transition = previous.last_transition_time
        conditions.append(
            Condition(
                type=kind,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=transition,
                observed_generation=status.observed_generation,
            )
        )
    return conditions
