"""The sections only the operator reads: how the cells' pods are shaped and scheduled.
Local runs ignore them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from lipizzaner_core.contract import (
    COSCHEDULING_LABEL,
    KUEUE_GROUP_COUNT_ANNOTATION,
    KUEUE_POD_GROUP_LABEL,
    KUEUE_QUEUE_LABEL,
    KUEUE_RETRIABLE_ANNOTATION,
    VOLCANO_ANNOTATION,
)
from lipizzaner_core.spec.base import SpecModel

KubeObject = dict[str, Any]

# What the operator sets on a cell pod itself, and so refuses in `spec.cell.labels` and
# `annotations`: every key under its own prefix, and these. (The Kueue queue is the run's
# own label: `kueue.x-k8s.io/queue-name` on the LipizzanerRun.)
OPERATOR_PREFIX = "lipizzaner.io/"
RESERVED_KEYS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    KUEUE_QUEUE_LABEL,
    KUEUE_POD_GROUP_LABEL,
    KUEUE_GROUP_COUNT_ANNOTATION,
    KUEUE_RETRIABLE_ANNOTATION,
    COSCHEDULING_LABEL,
    VOLCANO_ANNOTATION,
)

# At most this many labels, and as many annotations (it also bounds the CEL rule's cost).
MAX_KEYS = 64


def reserved(key: str) -> bool:
    """Whether the operator sets `key` on cell pods itself."""
    return key.startswith(OPERATOR_PREFIX) or key in RESERVED_KEYS


class SchedulingSpec(SpecModel):
    """Kubernetes only: how the cells' pods are scheduled (ignored by local runs)."""

    scheduler_name: str | None = Field(
        None,
        description="the pods' schedulerName (default: volcano for a Volcano gang, "
        "else the cluster's default scheduler)",
    )
    pod_group: Literal["none", "coscheduling", "volcano"] = Field(
        "none",
        description="gang scheduling: the operator creates a PodGroup with minMember = rows x "
        "cols for scheduler-plugins' coscheduling or for Volcano, so no cell holds a GPU "
        "until every cell can run",
    )
    schedule_timeout_seconds: int = Field(
        600, ge=1, description="coscheduling: how long the gang may wait to be placed whole"
    )


# A CUDA cell process of the default MNIST cell peaked at 1,478 MB resident, and each
# further cell in it added about 170 MB (H100 machine, docs/benchmarks.md): requests
# with some room, and a limit that leaves as much again for bigger data.
POD_MEMORY_MIB, CELL_MEMORY_MIB = 1600, 200


def default_resources(cells_per_pod: int) -> KubeObject:
    """One GPU, and the measured memory of `cells_per_pod` default cells."""
    request = POD_MEMORY_MIB + CELL_MEMORY_MIB * (cells_per_pod - 1)
    return {
        "requests": {"memory": f"{request}Mi"},
        "limits": {"memory": f"{2 * request}Mi", "nvidia.com/gpu": 1},
    }


class CellTemplateSpec(SpecModel):
    """How the operator shapes each cell's pod; local runs read only `cellsPerPod`."""

    cells_per_pod: int = Field(
        1,
        ge=1,
        le=64,
        description="consecutive cells sharing one pod (and one process: local runs group "
        "the same way), so they share one copy of torch, the data and the classifier; "
        "each keeps its own ports",
    )
    image: str | None = Field(None, description="default: the operator's configured cell image")
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_KEYS,
        description="labels of every cell pod and of the ensemble search's Job: a Kueue "
        "WorkloadPriorityClass (kueue.x-k8s.io/priority-class), cost allocation; keys the "
        "operator sets itself (lipizzaner.io/*, app.kubernetes.io/name, instance, component, "
        "managed-by, Kueue's queue and pod group, the gang schedulers') are refused",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_KEYS,
        description="annotations of every cell pod and of the ensemble search's Job: Kueue's "
        "topology-aware placement (kueue.x-k8s.io/podset-required-topology); the same keys "
        "as for labels are refused",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    resources: KubeObject | None = Field(
        None,
        description="container resources; default one GPU and memory for cellsPerPod "
        "default MNIST cells: a request of 1600 MiB + 200 MiB per further cell, a limit "
        "of twice that (measured: docs/benchmarks.md, Memory per cell)",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[KubeObject] = Field(default_factory=list)
    affinity: KubeObject | None = None
    priority_class_name: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: list[KubeObject] = Field(default_factory=list)
    env: list[KubeObject] = Field(default_factory=list)
    volumes: list[KubeObject] = Field(default_factory=list)
    volume_mounts: list[KubeObject] = Field(default_factory=list)

    @field_validator("labels", "annotations")
    @classmethod
    def _not_the_operators(cls, value: dict[str, str]) -> dict[str, str]:
        taken = sorted(key for key in value if reserved(key))
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by the operator itself")
        return value

    def pod_resources(self) -> KubeObject:
        """`resources` as given, else `default_resources` for this many cells a pod."""
        return (
            self.resources if self.resources is not None else default_resources(self.cells_per_pod)
        )
