"""The sections only the operator reads: how the cells' pods are shaped and scheduled.
Local runs ignore them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from lipizzaner_core.spec_base import SpecModel

KubeObject = dict[str, Any]


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
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    resources: KubeObject = Field(
        default_factory=lambda: {"limits": {"nvidia.com/gpu": 1}},
        description="container resources; default a limit of one GPU",
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
