"""One cell in one pass: its record brought up to date with its pod, and what the pass
must do about it (recreate it, force-delete it from a lost node, count a restart or a
disruption, give it up), by the rule table of `lipizzaner_core.policy`. Pure."""

from __future__ import annotations

from datetime import datetime

from lipizzaner_core.policy import Verdict, judge
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.status import CellRecord

from lipizzaner_operator.decision import Decision, Event
from lipizzaner_operator.observed import CellProgress, PodView, overdue, terminated


def position(run: LipizzanerRun, index: int) -> str:
    """How Events and messages name a cell: its index, row and column."""
    row, col = run.spec.grid.topology().position(index)
    return f"cell {index} (row {row}, col {col})"


GONE = "its pod is gone (deleted, or its node lost)"
DISRUPTED = "disrupted: "  # a cell record's message while its disrupted pod goes away


def observe(
    run: LipizzanerRun,
    index: int,
    record: CellRecord,
    pod: PodView | None,
    decision: Decision,
    given_up: int,
    now: datetime,
) -> Verdict | None:
    """Bring one cell's record up to date with its pod; a stopped cell gets a verdict
    (`lipizzaner_core.policy`), and a restart is scheduled here."""
    policy = run.spec.failure_policy
    if record.phase in ("Succeeded", "Failed"):  # Failed: given up
        return None
    if pod is not None and pod.deleting:
        if pod.disruption:  # said while it goes, and remembered once it is replaced
            record.message = DISRUPTED + pod.disruption
        if pod.node_lost and overdue(pod, now, policy.lost_node_seconds):
            force_delete(run, index, record, pod, decision)
        elif not terminated(pod):
            return None  # still stopping: its last checkpoint is being written
        pod = None  # as good as gone: its replacement has a name of its own
    if pod is None:
        existed = record.phase in ("Pending", "Running")
        decision.create.append(index)
        if not existed:
            record.phase, record.message = "Pending", ""
            return None
        why = (
            record.message.removeprefix(DISRUPTED) if record.message.startswith(DISRUPTED) else GONE
        )
        verdict = judge(None, record.restarts, policy.max_restarts_per_cell, disruption=why)
        record.phase, record.message = "Pending", ""
        restart(run, index, record, verdict, decision)
        return verdict
    if pod.phase == "Succeeded":
        record.phase, record.generation, record.message = "Succeeded", run.spec.generations, ""
        return None
    if pod.phase != "Failed":
        record.phase = "Running" if pod.phase == "Running" else "Pending"
        record.message = pod.problem
        return None
    verdict = judge(
        pod.exit_code,
        record.restarts,
        policy.max_restarts_per_cell,
        pod.disruption,
        given_up,
        policy.max_failed_cells,
        pod.refusal,
    )
    if verdict.action == "restart":
        record.phase = "Restarting"
        decision.delete.append(index)
        restart(run, index, record, verdict, decision)
    elif verdict.action == "give-up":
        record.phase, record.message = "Failed", verdict.message
        decision.events.append(
            Event("Warning", verdict.reason, f"{position(run, index)} {verdict.message}", index)
        )
    return verdict


def force_delete(
    run: LipizzanerRun, index: int, record: CellRecord, pod: PodView, decision: Decision
) -> None:
    """Its node is lost and will never confirm the deletion: delete the pod without it, so
    that the cell can be recreated elsewhere (a disruption, once it is gone)."""
    said = (
        f"NodeLost: node {pod.node} is not Ready and the pod has been terminating for "
        f"{run.spec.failure_policy.lost_node_seconds} s"
    )
    record.message = DISRUPTED + said
    decision.force_delete.append(index)
    decision.events.append(
        Event(
            "Warning", "CellNodeLost", f"{position(run, index)}: {said}; force-deleting it", index
        )
    )


def restart(
    run: LipizzanerRun, index: int, record: CellRecord, verdict: Verdict, decision: Decision
) -> None:
    """Count the restart (a disruption does not count) and say so in an Event."""
    limit = run.spec.failure_policy.max_restarts_per_cell
    if verdict.counted:
        record.restarts += 1
        counted = f"({record.restarts}/{limit})"
    else:
        record.disruptions += 1
        counted = "(a disruption: not counted toward spec.failurePolicy.maxRestartsPerCell)"
    decision.events.append(
        Event(
            "Warning",
            verdict.reason,
            f"{position(run, index)} {verdict.message}; recreating its pod to resume from "
            f"its checkpoint {counted}",
            index,
        )
    )


def take_progress(record: CellRecord, progress: CellProgress | None) -> None:
    if progress is None:
        return
    if record.phase != "Succeeded":
        record.generation = max(record.generation, progress.generation)
    if progress.score is not None:
        record.score = progress.score
    if progress.accuracy is not None:
        record.accuracy = progress.accuracy
