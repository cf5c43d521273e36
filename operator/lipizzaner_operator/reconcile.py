"""The operator's decisions as one pure function: observed state in, actions and status out.

`decide` is level-triggered: it needs only the run, its last status, the pods that exist
now and the cells' reported progress (read into values by `observed.py`), so an operator
restarted mid-run simply carries on (existing pods are adopted, nothing is created
twice). The kopf handlers do the I/O.

Run phases: Pending (cells' pods not all running yet) -> Running -> Succeeded | Failed;
Suspended while `spec.suspend` is true. Each cell keeps a record in the status (its phase,
restarts, generation, score), which is how a pod that vanished is told from one never made;
`cells.py` brings each record up to date, and `decision.py` holds what the pass decided.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from lipizzaner_core.placement import cells_named
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

from lipizzaner_operator.cells import observe, position, take_progress
from lipizzaner_operator.decision import Decision, Event, by_pods
from lipizzaner_operator.names import kueue_queue, pod_name, search_job_name
from lipizzaner_operator.observed import CellProgress, JobView, PodView

GANG_WAITING = "waiting for the gang"  # a gang-scheduled run's message until all are placed


def _records(run: LipizzanerRun, status: RunStatus) -> dict[int, CellRecord]:
    size = run.spec.grid.size
    old = {r.cell: r for r in status.cell_records}
    return {i: old[i].model_copy() if i in old else CellRecord(cell=i) for i in range(size)}


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
        return by_pods(run, decision)
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
    return by_pods(run, decision)


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
        verdict = observe(run, index, record, pods.get(index), decision, given_up, now)
        if verdict is not None and verdict.action == "fail":
            message = f"{position(run, index)} {verdict.message}"
            if verdict.reason == "BadConfiguration":
                message += f"; see `kubectl logs {_pod_of(run, index, pods)}`"
            return _failed(decision, pods, verdict.reason, message, now)
        take_progress(record, progress.get(index))
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
