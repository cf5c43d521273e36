"""The operator's decisions as one pure function: observed state in, actions and status out.

`decide` is level-triggered: it needs only the run, its last status, the pods that exist
now and the cells' reported progress (read into values by `observed.py`), so an operator
restarted mid-run simply carries on (existing pods are adopted, nothing is created
twice). The kopf handlers do the I/O.

Run phases: Pending (cells' pods not all running yet) -> Running -> Succeeded | Failed;
Suspended while `spec.suspend` is true. Each cell keeps a record in the status (its phase,
restarts, generation, score), which is how a pod that vanished is told from one never made.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from lipizzaner_core.placement import cells_named
from lipizzaner_core.policy import Verdict, judge
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.status import (
    CellCounts,
    CellRecord,
    EnsembleStatus,
    GenerationRange,
    RunStatus,
    parse_timestamp,
    timestamp,
    with_conditions,
)

from lipizzaner_operator.names import kueue_queue, pod_group, pod_name, search_job_name
from lipizzaner_operator.observed import CellProgress, JobView, PodView, overdue, terminated

GANG_WAITING = "waiting for the gang"  # a gang-scheduled run's message until all are placed


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    cell: int | None = None  # the cell it is about, if one


# More Events than this of one reason in one pass are said as one (a preempted 32x32 grid
# is one Event, not 1,024).
EVENTS_OF_A_KIND = 3


def aggregated(events: list[Event]) -> list[Event]:
    """The pass's Events, those of one reason about more than EVENTS_OF_A_KIND cells
    said once: the cells named in spans, with the first one's message as an example."""
    about: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        if event.cell is not None:
            about.setdefault((event.type, event.reason), []).append(event)
    many = {kind for kind, said in about.items() if len(said) > EVENTS_OF_A_KIND}
    kept = [e for e in events if e.cell is None or (e.type, e.reason) not in many]
    for kind in many:
        said = about[kind]
        cells = cells_named(sorted(e.cell for e in said if e.cell is not None))
        message = f"{len(said)} {cells.split(' ', 1)[0]} ({cells}): {said[0].message}; ..."
        kept.append(replace(said[0], message=message, cell=None))
    return kept


@dataclass
class Decision:
    status: RunStatus
    create: list[int] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    assemble: bool = False  # every cell succeeded: build the ensemble, then call `succeed`
    search: bool = False  # with `assemble`: then create the ensemble search's Job instead
    searched: bool = False  # the search's Job completed: read its ensemble, then `succeed`
    delete_run: bool = False  # ttlSecondsAfterFinished has passed
    release: list[int] = field(default_factory=list)  # pods to mark not retriable (Kueue)
    force_delete: list[int] = field(default_factory=list)  # pods stuck on a lost node


def _by_pods(run: LipizzanerRun, decision: Decision) -> Decision:
    """The cells to create, delete or release, as their pods' first cells, each pod once."""
    for name in ("create", "delete", "release", "force_delete"):
        cells = getattr(decision, name)
        setattr(decision, name, list(dict.fromkeys(pod_group(run, c).start for c in cells)))
    return decision


def _records(run: LipizzanerRun, status: RunStatus) -> dict[int, CellRecord]:
    size = run.spec.grid.size
    old = {r.cell: r for r in status.cell_records}
    return {i: old[i].model_copy() if i in old else CellRecord(cell=i) for i in range(size)}


def _position(run: LipizzanerRun, index: int) -> str:
    row, col = run.spec.grid.topology().position(index)
    return f"cell {index} (row {row}, col {col})"


def fail(status: RunStatus, reason: str, message: str, now: datetime) -> RunStatus:
    status = status.model_copy(
        update={"phase": "Failed", "message": message, "completion_time": timestamp(now)}
    )
    status.conditions = with_conditions(status, reason, message, now)
    return status


def succeed(
    status: RunStatus,
    ensemble_uri: str,
    now: datetime,
    searched_uri: str | None = None,
    searched: str = "",
) -> RunStatus:
    """The run succeeded with its ensemble (and `spec.ensemble`'s searched one, said so)."""
    message = f"ensemble written to {ensemble_uri}"
    given_up = [r.cell for r in status.cell_records if r.phase == "Failed"]
    if given_up:
        message += f" from the cells that finished (given up: {given_up})"
    if searched:
        message += f"; {searched}"
    status = status.model_copy(
        update={
            "phase": "Succeeded",
            "message": message,
            "ensemble": EnsembleStatus(uri=ensemble_uri, searched_uri=searched_uri),
            "completion_time": timestamp(now),
        }
    )
    status.conditions = with_conditions(status, "AllCellsSucceeded", message, now)
    return status


def _finished(run: LipizzanerRun, status: RunStatus, pods: dict[int, PodView], now: datetime):
    """A finished run only stops leftover cells and, after its TTL, deletes itself."""
    decision = Decision(status=status)
    if status.phase == "Failed":
        decision.delete = _live(pods)
    ttl = run.spec.ttl_seconds_after_finished
    if ttl is not None and status.completion_time is not None:
        finished = parse_timestamp(status.completion_time)
        decision.delete_run = now >= finished + timedelta(seconds=ttl)
    return decision


def _unreleased(run: LipizzanerRun, pods: dict[int, PodView]) -> list[int]:
    """An ended run's pods that Kueue still counts as a retriable group."""
    if not kueue_queue(run):
        return []
    return [i for i, p in pods.items() if not p.released and not p.deleting]


def _live(pods: dict[int, PodView]) -> list[int]:
    """Cells whose pods still run (or could): what a failed run stops."""
    return [i for i, p in pods.items() if not p.deleting and p.phase not in ("Failed", "Succeeded")]


def _suspended(status: RunStatus, records, pods: dict[int, PodView], now: datetime) -> Decision:
    """Stop every unfinished cell; their checkpoints stay, `suspend: false` resumes them."""
    delete = []
    for index, record in records.items():
        if record.phase == "Succeeded":
            continue
        record.phase = "Suspended"
        pod = pods.get(index)
        if pod is not None and not pod.deleting:
            delete.append(index)
    status.phase, status.message = "Suspended", "spec.suspend is true"
    status.start_time = None  # activeDeadlineSeconds counts from the resume, as for Jobs
    return Decision(status=status, delete=delete)


def decide(
    run: LipizzanerRun,
    generation: int | None,
    old: RunStatus,
    pods: dict[int, PodView],
    progress: dict[int, CellProgress],
    now: datetime,
    search: JobView | None = None,
) -> Decision:
    """What to do now, and the run's new status. `pods` has each cell's pod (`cell_views`);
    the pods to create, delete or release come back as their first cells. `search` is the
    ensemble search's Job, once there is one."""
    status = old.model_copy(deep=True)
    status.observed_generation = generation
    status.grid = f"{run.spec.grid.rows}x{run.spec.grid.cols}"
    if status.phase in ("Succeeded", "Failed"):
        decision = _finished(run, status, pods, now)
        decision.release = _unreleased(run, pods)
        return _by_pods(run, decision)
    records = _records(run, status)
    if run.spec.suspend:
        decision = _suspended(status, records, pods, now)
        reason = "Suspended"
    else:
        decision = _active(run, status, records, pods, progress, now, search)
        reason = "CellsProgressing"
    status = decision.status
    status.cell_records = [records[i] for i in sorted(records)]
    status.cells = _counts(records.values())
    generations = [r.generation for r in records.values()] or [0]
    status.generation = GenerationRange(min=min(generations), max=max(generations))
    scores = [r.score for r in records.values() if r.score is not None]
    status.best_score = min(scores) if scores else None
    accuracies = [r.accuracy for r in records.values() if r.accuracy is not None]
    status.best_accuracy = max(accuracies) if accuracies else None
    if status.phase != "Failed":  # `fail` has set the conditions with its own reason
        status.conditions = with_conditions(status, reason, status.message, now)
    if status.phase == "Failed":
        decision.release = _unreleased(run, pods)
    if status.phase != old.phase:
        kind: Literal["Normal", "Warning"] = "Warning" if status.phase == "Failed" else "Normal"
        decision.events.append(Event(kind, status.phase, status.message or status.phase))
    return _by_pods(run, decision)


def _active(
    run: LipizzanerRun,
    status: RunStatus,
    records: dict[int, CellRecord],
    pods: dict[int, PodView],
    progress: dict[int, CellProgress],
    now: datetime,
    search: JobView | None,
) -> Decision:
    decision = Decision(status=status)
    deadline = run.spec.active_deadline_seconds
    if status.start_time is None:
        status.start_time = timestamp(now)
    elif deadline is not None and now >= parse_timestamp(status.start_time) + timedelta(
        seconds=deadline
    ):
        message = f"the run took longer than spec.activeDeadlineSeconds ({deadline} s)"
        return _failed(decision, pods, "DeadlineExceeded", message, now)
    for index, record in records.items():
        given_up = sum(r.phase == "Failed" for r in records.values())
        verdict = _observe(run, index, record, pods.get(index), decision, given_up, now)
        if verdict is not None and verdict.action == "fail":
            message = f"{_position(run, index)} {verdict.message}"
            if verdict.reason == "BadConfiguration":
                message += f"; see `kubectl logs {_pod_of(run, index, pods)}`"
            return _failed(decision, pods, verdict.reason, message, now)
        _take_progress(record, progress.get(index))
    _summarise(status, records, decision)
    if decision.assemble and run.spec.ensemble.searched:
        return _search_step(run, decision, search, pods, now)
    if run.spec.scheduling.pod_group != "none" and status.phase == "Pending":
        placed = sum(p.scheduled or p.phase != "Pending" for p in pods.values())
        status.message = (
            f"{GANG_WAITING}: {placed} of {run.spec.grid.size} cells placed "
            f"(PodGroup {run.metadata.name}-cells, {run.spec.scheduling.pod_group})"
        )
    return decision


def _pod_of(run: LipizzanerRun, index: int, pods: dict[int, PodView]) -> str:
    """The name of the cell's pod as observed (its first pod's, if there is none)."""
    pod = pods.get(index)
    return pod.name if pod is not None and pod.name else pod_name(run, index)


def _search_step(
    run: LipizzanerRun,
    decision: Decision,
    job: JobView | None,
    pods: dict[int, PodView],
    now: datetime,
) -> Decision:
    """Every cell has finished and `spec.ensemble` names a search: assemble the run's own
    ensemble and start the search's Job, follow the Job, or end the run with it."""
    method, name = run.spec.ensemble.method, search_job_name(run)
    if job is None:
        decision.search = True
        decision.status.message += f", then searching for another ({method}, Job {name})"
        return decision
    decision.assemble = False
    if job.outcome == "Failed":
        message = (
            f"the ensemble search (Job {name}) failed: {job.message}; the best cell's "
            "ensemble is written, and `lipizzaner ensemble optimize` runs the search again"
        )
        return _failed(decision, pods, "EnsembleSearchFailed", message, now)
    decision.searched = job.outcome == "Complete"
    decision.status.message = (
        f"searching every cell's generators for an ensemble ({method}) in Job {name}"
    )
    return decision


def _failed(
    decision: Decision, pods: dict[int, PodView], reason: str, message: str, now: datetime
) -> Decision:
    """The run fails: its status says why, and every cell still running is stopped."""
    decision.status = fail(decision.status, reason, message, now)
    decision.delete = _live(pods)
    return decision


GONE = "its pod is gone (deleted, or its node lost)"
DISRUPTED = "disrupted: "  # a cell record's message while its disrupted pod goes away


def _observe(
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
            _force_delete(run, index, record, pod, decision)
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
        _restart(run, index, record, verdict, decision)
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
        _restart(run, index, record, verdict, decision)
    elif verdict.action == "give-up":
        record.phase, record.message = "Failed", verdict.message
        decision.events.append(
            Event("Warning", verdict.reason, f"{_position(run, index)} {verdict.message}", index)
        )
    return verdict


def _force_delete(
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
            "Warning", "CellNodeLost", f"{_position(run, index)}: {said}; force-deleting it", index
        )
    )


def _restart(
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
            f"{_position(run, index)} {verdict.message}; recreating its pod to resume from "
            f"its checkpoint {counted}",
            index,
        )
    )


def _take_progress(record: CellRecord, progress: CellProgress | None) -> None:
    if progress is None:
        return
    if record.phase != "Succeeded":
        record.generation = max(record.generation, progress.generation)
    if progress.score is not None:
        record.score = progress.score
    if progress.accuracy is not None:
        record.accuracy = progress.accuracy


def _summarise(status: RunStatus, records: dict[int, CellRecord], decision: Decision) -> None:
    """The run's phase and message from its cells' records (a Failed record: given up)."""
    problems = _problems(records)
    given_up = [i for i, r in records.items() if r.phase == "Failed"]
    without = f"going on without given-up cells {given_up}" if given_up else ""
    if all(r.phase in ("Succeeded", "Failed") for r in records.values()):
        decision.assemble = True
        finished = "all cells succeeded" if not given_up else "the other cells succeeded"
        status.phase, status.message = "Running", f"{finished}; assembling the ensemble"
    elif all(r.phase in ("Running", "Succeeded", "Failed") for r in records.values()):
        status.phase, status.message = "Running", without
    else:
        status.phase = "Pending"
        status.message = "; ".join(problems[:3]) or "waiting for cell pods to run"


def _problems(records: dict[int, CellRecord]) -> list[str]:
    """Each distinct problem once, after the cells that have it (`cells 0-3, 6: ...`): a
    missing image or Secret is one line however many cells wait on it."""
    cells_of: dict[str, list[int]] = {}
    for index, record in sorted(records.items()):
        if record.message:
            cells_of.setdefault(record.message, []).append(index)
    return [f"{cells_named(cells)}: {message}" for message, cells in cells_of.items()]


def _counts(records) -> CellCounts:
    counts = CellCounts()
    for record in records:
        if record.phase in ("Running", "Succeeded", "Failed"):
            key = record.phase.lower()
        else:
            key = "pending"
        setattr(counts, key, getattr(counts, key) + 1)
        counts.restarts += record.restarts
        counts.disruptions += record.disruptions
    return counts
