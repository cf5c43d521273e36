"""The operator's pure decision function: phases, restarts, suspend, deadline, TTL."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from conftest import TINY_RING
from lipizzaner_core.spec import parse_run
from lipizzaner_core.status import RunStatus
from lipizzaner_operator.observed import (
    CellProgress,
    JobView,
    PodView,
    cell_views,
    view_job,
    view_pod,
)
from lipizzaner_operator.reconcile import decide, succeed

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def make_run(**spec):
    manifest = copy.deepcopy(TINY_RING)
    manifest["spec"].update(spec)
    return parse_run(manifest)


def pods(phase="Running"):
    return {i: PodView(cell=i, phase=phase, ip=f"10.0.0.{i}") for i in range(4)}


def step(run, status, live, progress=None, now=T0):
    return decide(run, 1, status, live, progress or {}, now)


def condition(status, kind):
    return next(c for c in status.conditions if c.type == kind)


def test_a_new_run_creates_every_cell_and_waits():
    decision = step(make_run(), RunStatus(), {})
    assert decision.create == [0, 1, 2, 3]
    status = decision.status
    assert (status.phase, status.grid, status.cells.pending) == ("Pending", "2x2", 4)
    assert status.start_time == "2026-11-24T12:00:00Z"
    assert condition(status, "Running").status == "False"


def test_running_cells_report_generations_and_the_best_score():
    run = make_run()
    status = step(run, RunStatus(), {}).status
    progress = {0: CellProgress(3, 0.9, 0.7), 1: CellProgress(1, 0.4, 0.8), 2: CellProgress(2)}
    decision = step(run, status, pods(), progress, T0 + timedelta(seconds=5))
    status = decision.status
    assert (status.phase, status.cells.running) == ("Running", 4)
    assert (status.generation.min, status.generation.max) == (0, 3)
    assert status.best_score == 0.4
    assert status.best_accuracy == 0.8 and status.cell_records[0].accuracy == 0.7
    assert condition(status, "Running").status == "True"
    assert decision.create == [] and decision.delete == []
    assert [e.reason for e in decision.events] == ["Running"]


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


def test_scheduling_and_image_problems_reach_the_run_message():
    pod = {
        "metadata": {"name": "tiny-cell-1", "labels": {"lipizzaner.io/cell": "1"}},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
            ],
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes have nvidia.com/gpu",
                }
            ],
        },
    }
    view = view_pod(pod)
    assert view.cell == 1 and view.phase == "Pending"
    run = make_run()
    live = {**pods(), 1: view}
    status = step(run, step(run, RunStatus(), {}).status, live).status
    assert status.phase == "Pending"
    assert "cell 1: ImagePullBackOff: not found" in status.message
    assert "cannot be scheduled: 0/3 nodes have nvidia.com/gpu" in status.message


def test_all_cells_succeeded_asks_for_the_ensemble():
    run = make_run()
    status = step(run, RunStatus(), {}).status
    decision = step(run, status, pods("Succeeded"))
    assert decision.assemble
    assert decision.status.generation.min == run.spec.generations
    done = succeed(decision.status, "s3://b/runs/tiny/ensemble", T0)
    assert done.phase == "Succeeded" and done.ensemble.uri == "s3://b/runs/tiny/ensemble"
    assert condition(done, "Succeeded").status == "True"
    assert condition(done, "Running").status == "False"
    # A finished run does nothing more.
    after = step(run, done, pods("Succeeded"))
    assert (after.create, after.delete, after.assemble) == ([], [], False)


def test_a_searched_ensemble_is_assembled_then_searched_in_a_job_then_succeeds():
    run = make_run(ensemble={"method": "ga"})
    status = step(run, RunStatus(), {}).status
    first = step(run, status, pods("Succeeded"))
    assert first.assemble and first.search and not first.searched
    assert first.status.phase == "Running"
    assert "then searching for another (ga, Job tiny-ensemble)" in first.status.message

    def with_job(job: JobView):
        return decide(run, 1, first.status, pods("Succeeded"), {}, T0, job)

    running = with_job(JobView())
    assert (running.assemble, running.search, running.searched) == (False, False, False)
    assert running.status.phase == "Running" and "in Job tiny-ensemble" in running.status.message
    assert with_job(JobView("Complete")).searched
    failed = with_job(JobView("Failed", "Job has reached the specified backoff limit"))
    assert failed.status.phase == "Failed" and not failed.searched
    assert condition(failed.status, "Failed").reason == "EnsembleSearchFailed"
    assert "backoff limit; the best cell's ensemble is written" in failed.status.message
    done = succeed(first.status, "/o/ensemble", T0, "/o/ensemble-ga", "ga: mode-kl 0.1")
    assert (done.ensemble.uri, done.ensemble.searched_uri) == ("/o/ensemble", "/o/ensemble-ga")
    assert done.message.endswith("; ga: mode-kl 0.1")


def test_a_job_is_read_by_its_finishing_condition():
    def job(*conditions):
        return {"status": {"conditions": [{"type": t, "status": v} for t, v in conditions]}}

    assert view_job({}) == JobView()
    assert view_job(job(("SuccessCriteriaMet", "True"))) == JobView()
    assert view_job(job(("SuccessCriteriaMet", "True"), ("Complete", "True"))).outcome == "Complete"
    assert view_job(job(("Failed", "False"))) == JobView()
    assert view_job(job(("Failed", "True"))).outcome == "Failed"


def test_suspend_stops_the_cells_and_resume_recreates_them_without_restarts():
    running = make_run()
    status = step(running, step(running, RunStatus(), {}).status, pods()).status
    suspended = make_run(suspend=True)
    decision = step(suspended, status, pods())
    assert sorted(decision.delete) == [0, 1, 2, 3]
    assert decision.status.phase == "Suspended"
    assert condition(decision.status, "Suspended").status == "True"
    status = step(suspended, decision.status, {}).status  # pods gone
    decision = step(running, status, {})
    assert decision.create == [0, 1, 2, 3]
    assert decision.status.cells.restarts == 0
    assert decision.status.phase == "Pending"


def test_the_active_deadline_fails_an_overdue_run():
    run = make_run(activeDeadlineSeconds=60)
    status = step(run, RunStatus(), {}).status
    assert step(run, status, pods(), now=T0 + timedelta(seconds=59)).status.phase == "Running"
    decision = step(run, status, pods(), now=T0 + timedelta(seconds=61))
    assert decision.status.phase == "Failed"
    assert condition(decision.status, "Failed").reason == "DeadlineExceeded"
    assert sorted(decision.delete) == [0, 1, 2, 3]


def test_a_finished_run_is_deleted_after_its_ttl():
    run = make_run(ttlSecondsAfterFinished=30)
    done = succeed(step(run, RunStatus(), {}).status, "file:///out/ensemble", T0)
    assert not step(run, done, {}, now=T0 + timedelta(seconds=29)).delete_run
    assert step(run, done, {}, now=T0 + timedelta(seconds=30)).delete_run
    assert not step(make_run(), done, {}, now=T0 + timedelta(days=9)).delete_run


def test_condition_times_change_only_when_a_condition_flips():
    run = make_run()
    first = step(run, RunStatus(), {}).status
    later = step(
        run,
        first,
        {i: PodView(cell=i, phase="Pending") for i in range(4)},
        now=T0 + timedelta(seconds=30),
    ).status
    assert condition(later, "Running").last_transition_time == "2026-11-24T12:00:00Z"
    running = step(run, later, pods(), now=T0 + timedelta(seconds=60)).status
    assert condition(running, "Running").last_transition_time == "2026-11-24T12:01:00Z"


def test_a_gang_scheduled_run_says_it_waits_for_its_gang():
    run = make_run(scheduling={"podGroup": "coscheduling"})
    status = step(run, RunStatus(), {}).status
    waiting = {i: PodView(i, "Pending", scheduled=i < 3) for i in range(4)}
    status = step(run, status, waiting).status
    assert status.phase == "Pending"
    assert status.message == (
        "waiting for the gang: 3 of 4 cells placed (PodGroup tiny-cells, coscheduling)"
    )
    assert step(run, status, pods()).status.phase == "Running"


def test_an_ended_kueue_run_releases_its_pod_group():
    """Marked not retriable, Kueue finishes the group's Workload and frees its quota."""
    manifest = copy.deepcopy(TINY_RING)
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    run = parse_run(manifest)
    status = step(run, step(run, RunStatus(), {}).status, pods()).status
    broken = {**pods(), 0: PodView(0, "Failed", exit_code=2)}
    decision = step(run, status, broken)
    assert decision.status.phase == "Failed"
    assert decision.release == [0, 1, 2, 3] and sorted(decision.delete) == [1, 2, 3]
    released = {i: PodView(i, "Failed", released=True) for i in range(4)}
    assert step(run, decision.status, released).release == []
    assert step(make_run(), RunStatus(), {}).release == []  # no queue: nothing to release


def test_one_problem_of_many_cells_is_said_once_with_the_cells_named():
    run = make_run()
    waiting = PodView(0, "Pending", problem='CreateContainerConfigError: secret "s3" not found')
    live = {i: replace(waiting, cell=i) for i in range(4)}
    status = step(run, step(run, RunStatus(), {}).status, live).status
    assert status.message == 'cells 0-3: CreateContainerConfigError: secret "s3" not found'


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
