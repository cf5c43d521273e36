"""What the operator observes, read into plain values for `reconcile.decide`: each cell's
pod, the ensemble search's Job, and the cells' own reports of their progress."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from lipizzaner_core.contract import (
    CELL_LABEL,
    KUEUE_ADMISSION_GATE,
    KUEUE_QUEUE_LABEL,
    KUEUE_RETRIABLE_ANNOTATION,
    refusal_in,
)
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.status import parse_timestamp

from lipizzaner_operator.names import REPLACEMENT_LABEL, pod_group

# Waiting reasons that mean a pod will not start by itself.
STUCK_REASONS = {
    "ErrImagePull",
    "ErrImageNeverPull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
}


@dataclass(frozen=True)
class PodView:
    """What the operator needs to know of one cell pod."""

    cell: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    deleting: bool = False
    exit_code: int | None = None
    problem: str = ""  # why it is not running: image pull, scheduling, ...
    ip: str | None = None
    disruption: str = ""  # why Kubernetes took it away: preemption, eviction, node lost
    scheduled: bool = False  # placed on a node (PodScheduled True)
    released: bool = False  # marked not retriable in its Kueue group (the run has ended)
    refusal: str = ""  # why its cell refused its configuration (exit 2), in its own words
    name: str = ""  # the pod's own name
    replacement: int = 0  # which replacement of its cell it is (0: the first pod)
    node: str = ""  # the node it was placed on
    deleting_since: datetime | None = None  # when its deletion was asked for
    node_lost: bool = False  # its node is not Ready (read only for overdue deletions)


@dataclass(frozen=True)
class JobView:
    """What the operator needs to know of the ensemble search's Job."""

    outcome: Literal["Complete", "Failed"] | None = None  # None: not finished
    message: str = ""


def view_job(job: dict[str, Any]) -> JobView:
    """Read a Job object into a JobView: its Complete or Failed condition, if any."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            said = condition.get("message") or condition.get("reason", "")
            return JobView(condition["type"], said)
    return JobView()


@dataclass(frozen=True)
class CellProgress:
    """A cell's own report (its gRPC GetStatus)."""

    generation: int
    score: float | None = None
    accuracy: float | None = None  # semi-supervised runs


def view_pod(pod: dict[str, Any]) -> PodView:
    """Read a pod object (camelCase JSON) into a PodView."""
    meta, status = pod.get("metadata", {}), pod.get("status") or {}
    cell = int(meta["labels"][CELL_LABEL])
    exit_code, problems, refusal = None, [], None
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "terminated" in state:
            exit_code = state["terminated"].get("exitCode")
            refusal = refusal_in(state["terminated"].get("message") or "")
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            problems.append(f"{waiting['reason']}: {waiting.get('message', '')}".strip(": "))
    scheduled = False
    gates = {g.get("name") for g in (pod.get("spec") or {}).get("schedulingGates") or []}
    if KUEUE_ADMISSION_GATE in gates:
        queue = meta["labels"].get(KUEUE_QUEUE_LABEL, "")
        problems.append(f"waiting for Kueue to admit the run (LocalQueue {queue})")
    for condition in status.get("conditions") or []:
        scheduled |= condition.get("type") == "PodScheduled" and condition.get("status") == "True"
        if condition.get("reason") == "SchedulingGated":
            continue  # said above, or another controller's gate: not a problem to name
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason", "Unschedulable")
            said = "cannot be scheduled" if reason == "Unschedulable" else reason
            problems.append(f"{said}: {condition.get('message', '')}".strip(": "))
    deletion = meta.get("deletionTimestamp")  # the deadline: asked for, plus the grace
    grace = timedelta(seconds=meta.get("deletionGracePeriodSeconds") or 0)
    return PodView(
        cell=cell,
        phase=status.get("phase", "Pending"),
        deleting=bool(deletion),
        exit_code=exit_code,
        problem="; ".join(problems),
        ip=status.get("podIP"),
        disruption=_disruption(status),
        scheduled=scheduled,
        released=(meta.get("annotations") or {}).get(KUEUE_RETRIABLE_ANNOTATION) == "false",
        refusal=refusal or "",
        name=meta.get("name", ""),
        replacement=int(meta["labels"].get(REPLACEMENT_LABEL, 0)),
        node=(pod.get("spec") or {}).get("nodeName") or "",
        deleting_since=parse_timestamp(deletion) - grace if deletion else None,
    )


def overdue(pod: PodView, now: datetime, lost_node_seconds: float) -> bool:
    """Terminating for `lost_node_seconds` on a node: its kubelet has not confirmed the
    deletion, and on a lost node never will (kubernetes/kubernetes#72226)."""
    if pod.deleting_since is None or not pod.node:
        return False
    return (now - pod.deleting_since).total_seconds() >= lost_node_seconds


def terminated(pod: PodView) -> bool:
    """Its containers have stopped: a pod being deleted that only a finalizer still holds
    (Kueue's, until it sees the replacement), and that has written its last checkpoint."""
    return pod.phase in ("Failed", "Succeeded")


def node_ready(node: dict[str, Any] | None) -> bool:
    """A node object's Ready condition is True (a node that is gone is not ready)."""
    conditions = ((node or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _disruption(status: dict[str, Any]) -> str:
    """Why Kubernetes took the pod away, if it did: the `DisruptionTarget` condition
    (preemption, the eviction API, the taint manager, pod GC after its node was lost) or
    the kubelet's own eviction (`reason: Evicted`); "" for anything else."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            said = f"{condition.get('reason', 'DisruptionTarget')}: {condition.get('message', '')}"
            return said.strip(": ")
    if status.get("reason") == "Evicted":
        return f"Evicted: {status.get('message', '')}".strip(": ")
    return ""


def cell_views(run: LipizzanerRun, pods: list[PodView]) -> dict[int, PodView]:
    """Each cell's pod, its latest replacement when an older one is still there; a pod of
    several cells (labelled with its first) stands for each."""
    latest = sorted(pods, key=lambda pod: pod.replacement)
    return {cell: pod for pod in latest for cell in pod_group(run, pod.cell)}
