"""One cell in one pass (`cells.py`, through `decide`): restarts counted once,
disruptions not counted, given-up cells, refusals, replacements under names of their
own, and pods stuck on a lost node."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from decisions import T0, condition, make_run, pods, step
from lipizzaner_core.status import RunStatus
from lipizzaner_operator.observed import (
    PodView,
    cell_views,
    view_pod,
)
from lipizzaner_operator.reconcile import succeed


def test_a_failed_cell_is_recreated_with_an_event_and_counted_once():
    run = make_run()
    status = step(run, RunStatus(), {}).status
    failed = pods()
    failed[2] = PodView(cell=2, phase="Failed", exit_code=1)
    decision = step(run, status, failed)
    assert decision.delete == [2] and decision.create == []
    assert decision.status.cell_records[2].phase == "Restarting"
    assert decision.status.cells.restarts == 1
    assert [e.reason for e in decision.events] == ["CellRestarted"]
    assert "cell 2 (row 1, col 0)" in decision.events[0].message
    # The pod is gone next time: it is created again, and not counted a second time.
    gone = {i: p for i, p in pods().items() if i != 2}
    decision = step(run, decision.status, gone)
    assert decision.create == [2]
    assert decision.status.cells.restarts == 1


def test_with_two_cells_per_pod_pods_are_made_and_restarted_whole():
    """cellsPerPod 2: two pods; one failing restarts both its cells (each counts it), and
    the pod is deleted and created once, named by its first cell."""
    run = make_run(cell={"cellsPerPod": 2})
    decision = step(run, RunStatus(), {})
    assert decision.create == [0, 2]
    views = [PodView(cell=0, phase="Running"), PodView(cell=2, phase="Failed", exit_code=1)]
    assert sorted(cell_views(run, views)) == [0, 1, 2, 3]
    decision = step(run, decision.status, cell_views(run, views))
    assert decision.delete == [2] and decision.create == []
    records = decision.status.cell_records
    assert [r.phase for r in records] == ["Running", "Running", "Restarting", "Restarting"]
    assert [r.restarts for r in records] == [0, 0, 1, 1]
    decision = step(run, decision.status, cell_views(run, views[:1]))
    assert decision.create == [2] and decision.status.cells.restarts == 2


def test_past_the_restart_limit_the_run_fails_naming_the_cell():
    run = make_run(failurePolicy={"maxRestartsPerCell": 1})
    status = step(run, RunStatus(), {}).status
    status.cell_records[3].restarts = 1
    live = pods()
    live[3] = PodView(cell=3, phase="Failed", exit_code=137)
    decision = step(run, status, live)
    status = decision.status
    assert status.phase == "Failed"
    assert "cell 3 (row 1, col 1) failed (exit code 137) after 1 restarts" in status.message
    assert "maxRestartsPerCell" in status.message
    assert condition(status, "Failed").status == "True"
    assert condition(status, "Failed").reason == "CellFailed"
    assert status.completion_time is not None
    assert sorted(decision.delete) == [0, 1, 2]  # the others stop and free their GPUs
    assert [e.type for e in decision.events] == ["Warning"]


def test_bad_configuration_fails_at_once():
    run = make_run()
    status = step(run, RunStatus(), {}).status
    live = pods()
    live[0] = PodView(cell=0, phase="Failed", exit_code=2)
    status = step(run, status, live).status
    assert (status.phase, condition(status, "Failed").reason) == ("Failed", "BadConfiguration")
    assert "kubectl logs tiny-cell-0" in status.message


def test_a_vanished_pod_is_a_disruption_recreated_and_not_counted():
    run = make_run(failurePolicy={"maxRestartsPerCell": 0})
    status = step(run, step(run, RunStatus(), {}).status, pods()).status
    decision = step(run, status, {i: p for i, p in pods().items() if i != 1})
    assert decision.create == [1]
    record = decision.status.cell_records[1]
    assert (record.restarts, record.disruptions) == (0, 1)
    assert decision.status.cells.disruptions == 1
    assert [e.reason for e in decision.events] == ["CellDisrupted", "Pending"]
    assert "its pod is gone" in decision.events[0].message
    assert "not counted toward spec.failurePolicy.maxRestartsPerCell" in decision.events[0].message


def disrupted_pod(reason: str, message: str) -> dict:
    return {
        "metadata": {"name": "tiny-cell-2", "labels": {"lipizzaner.io/cell": "2"}},
        "status": {
            "phase": "Failed",
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message}
            ],
            "containerStatuses": [{"state": {"terminated": {"exitCode": 137}}}],
        },
    }


def test_preempted_and_evicted_pods_are_recreated_without_counting():
    """maxRestartsPerCell 0: one counted failure would fail the run; disruptions do not."""
    run = make_run(failurePolicy={"maxRestartsPerCell": 0})
    status = step(run, step(run, RunStatus(), {}).status, pods()).status
    preempted = view_pod(disrupted_pod("PreemptionByScheduler", "Kueue preempted the run"))
    evicted_pod = {
        "metadata": {"name": "tiny-cell-3", "labels": {"lipizzaner.io/cell": "3"}},
        "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"},
    }
    evicted = view_pod(evicted_pod)
    assert preempted.disruption == "PreemptionByScheduler: Kueue preempted the run"
    assert evicted.disruption == "Evicted: low on memory"
    decision = step(run, status, {**pods(), 2: preempted, 3: evicted})
    assert decision.status.phase == "Pending" and sorted(decision.delete) == [2, 3]  # not Failed
    assert decision.status.cells.restarts == 0 and decision.status.cells.disruptions == 2
    assert [e.reason for e in decision.events] == ["CellDisrupted", "CellDisrupted", "Pending"]
    assert "was disrupted (PreemptionByScheduler: Kueue preempted" in decision.events[0].message


def test_a_pod_going_away_says_why_and_the_reason_stays_with_its_recreation():
    run = make_run()
    status = step(run, step(run, RunStatus(), {}).status, pods()).status
    going = {
        **pods(),
        0: PodView(0, "Running", deleting=True, disruption="DeletionByPodGC: node gone"),
    }
    status = step(run, status, going).status
    assert status.cell_records[0].message == "disrupted: DeletionByPodGC: node gone"
    decision = step(run, status, {i: p for i, p in pods().items() if i != 0})
    assert decision.create == [0]
    assert "was disrupted (DeletionByPodGC: node gone)" in decision.events[0].message


def test_with_max_failed_cells_a_cell_past_its_restarts_is_given_up_and_the_run_goes_on():
    run = make_run(failurePolicy={"maxRestartsPerCell": 0, "maxFailedCells": 1})
    status = step(run, step(run, RunStatus(), {}).status, pods()).status
    broken = {**pods(), 1: PodView(1, "Failed", exit_code=1)}
    decision = step(run, status, broken)
    status = decision.status
    assert status.phase == "Running" and status.cell_records[1].phase == "Failed"
    assert "going on without given-up cells [1]" in status.message
    assert [e.reason for e in decision.events] == ["CellGivenUp"]
    assert "given up (1 of spec.failurePolicy.maxFailedCells 1)" in decision.events[0].message
    done = {i: PodView(i, "Succeeded") for i in (0, 2, 3)} | {1: PodView(1, "Failed", exit_code=1)}
    decision = step(run, status, done)
    assert decision.assemble and "the other cells succeeded" in decision.status.message
    assert "(given up: [1])" in succeed(decision.status, "s3://b/x/ensemble", T0).message
    # A second cell past its restarts is one too many: the run fails.
    again = {**pods(), 1: PodView(1, "Failed", exit_code=1), 2: PodView(2, "Failed", exit_code=1)}
    decision = step(run, status, again)
    assert decision.status.phase == "Failed"
    assert "cell 2 (row 1, col 0) failed (exit code 1) after 0 restarts" in decision.status.message


def test_a_cells_own_refusal_reaches_the_runs_failure():
    pod = {
        "metadata": {"name": "tiny-cell-2", "labels": {"lipizzaner.io/cell": "2"}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 2,
                            "message": "INFO starting\nERROR cannot start: bucket 'b' is gone\n",
                        }
                    }
                }
            ],
        },
    }
    run = make_run()
    status = step(run, step(run, RunStatus(), {}).status, {**pods(), 2: view_pod(pod)}).status
    assert status.phase == "Failed"
    assert "rejected its configuration (exit code 2): bucket 'b' is gone" in status.message


def test_a_stopped_pod_held_by_a_finalizer_is_replaced_under_a_name_of_its_own():
    """Kueue keeps a failed pod until it sees its replacement: the replacement does not
    wait for it to go (kubernetes-sigs/kueue#5130)."""
    run = make_run()
    status = step(run, RunStatus(), pods()).status
    failed = {**pods(), 1: PodView(cell=1, phase="Failed", exit_code=1, name="tiny-cell-1")}
    decision = step(run, status, failed)
    assert decision.delete == [1] and decision.create == []
    held = {**pods(), 1: replace(failed[1], deleting=True)}
    decision = step(run, decision.status, held)
    assert decision.create == [1]  # at once, the old pod still there
    record = decision.status.cell_records[1]
    assert (record.restarts, record.disruptions) == (1, 0)  # counted once
    still_stopping = {**pods(), 1: PodView(cell=1, phase="Running", deleting=True)}
    assert step(run, status, still_stopping).create == []  # writing its last checkpoint


def test_the_latest_replacement_stands_for_its_cell():
    old = PodView(cell=1, phase="Failed", deleting=True, name="tiny-cell-1")
    new = PodView(cell=1, phase="Pending", name="tiny-cell-1-r1", replacement=1)
    assert cell_views(make_run(), [new, old])[1] == new
    assert cell_views(make_run(), [old, new])[1] == new


def test_a_pod_stuck_terminating_on_a_lost_node_is_force_deleted_and_replaced():
    run = make_run(failurePolicy={"lostNodeSeconds": 300})
    status = step(run, RunStatus(), pods()).status
    stuck = PodView(
        cell=2, phase="Running", deleting=True, node="node-a", deleting_since=T0, name="tiny-cell-2"
    )
    waiting = step(
        run, status, {**pods(), 2: replace(stuck, node_lost=True)}, now=T0 + timedelta(seconds=299)
    )
    assert waiting.force_delete == [] and waiting.create == []
    later = T0 + timedelta(seconds=300)
    healthy_node = step(run, status, {**pods(), 2: stuck}, now=later)
    assert healthy_node.force_delete == []  # its kubelet will finish the deletion
    decision = step(run, status, {**pods(), 2: replace(stuck, node_lost=True)}, now=later)
    assert decision.force_delete == [2] and decision.create == [2]
    record = decision.status.cell_records[2]
    assert (record.disruptions, record.restarts) == (1, 0)
    (event,) = [e for e in decision.events if e.reason == "CellNodeLost"]
    assert "node node-a is not Ready" in event.message and event.type == "Warning"


def test_a_pods_replacement_and_deletion_time_are_read_from_the_pod():
    pod = {
        "metadata": {
            "name": "tiny-cell-3-r2",
            "labels": {
                "lipizzaner.io/cell": "3",
                "lipizzaner.io/replacement": "2",
                "kueue.x-k8s.io/queue-name": "team-a",
            },
            "deletionTimestamp": "2026-11-24T12:02:00Z",
            "deletionGracePeriodSeconds": 120,
        },
        "spec": {
            "nodeName": "node-b",
            "schedulingGates": [{"name": "kueue.x-k8s.io/admission"}],
        },
        "status": {"phase": "Pending"},
    }
    view = view_pod(pod)
    assert (view.name, view.replacement, view.node) == ("tiny-cell-3-r2", 2, "node-b")
    assert view.deleting_since == T0
    assert view.problem == "waiting for Kueue to admit the run (LocalQueue team-a)"
