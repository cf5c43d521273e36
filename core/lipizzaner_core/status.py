"""`LipizzanerRun.status` as pydantic models: one source for the operator and the CRD schema.

Conditions follow `metav1.Condition`, so `kubectl wait --for=condition=Succeeded` works.
"""

from __future__ import annotations

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
    cell_records: list[CellRecord] = Field(default_factory=list)

    def to_patch(self) -> dict:
        """A merge patch: a top-level None clears the field; no None goes inside a list.

        Lists (conditions, cell records) replace the stored list whole, and the server
        drops their items' null fields, so a null there would never read back as sent.
        """
        patch = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        return {name: patch.get(name) for name in self.model_dump(by_alias=True)}


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
