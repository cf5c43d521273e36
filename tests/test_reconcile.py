"""The operator's pure decision function for the run as a whole: phases, the ensemble and
its search, suspend, deadline, TTL, gangs and Kueue (one cell's decisions: test_cells.py)."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta

from conftest import TINY_RING
from decisions import T0, condition, make_run, pods, step
from lipizzaner_core.spec import parse_run
from lipizzaner_core.status import RunStatus
from lipizzaner_operator.observed import (
    CellProgress,
    JobView,
    PodView,
    view_job,
    view_pod,
)
from lipizzaner_operator.reconcile import decide, succeed


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
