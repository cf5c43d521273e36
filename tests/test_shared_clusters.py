"""The operator on a shared GPU cluster, against the real API server (hack/envtest.sh):
disruptions that are not failures, cells given up, Kueue's pod groups, gang scheduling and
runs another controller manages. As in test_operator.py, the test plays the kubelet;
Kueue and the gang schedulers cannot run here, so their PodGroup CRDs come from
tests/data/podgroup-crds.yaml and Kueue's contract is checked on the pods themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from envtest import GROUP, PLURAL, VERSION, wait_for
from kubernetes.client.exceptions import ApiException
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from operator_harness import (  # noqa: F401 - the autouse check of kopf's status writes
    _no_inconsistent_status_writes,
    manifest,
    operator,
    phase_is,
    terminated,
)


def test_a_preempted_or_deleted_pod_is_a_disruption_not_a_restart(cluster, tmp_path):
    """maxRestartsPerCell 0: a single counted failure would fail the run."""
    with operator(cluster) as metrics:
        cluster.create_run(manifest(tmp_path, failurePolicy={"maxRestartsPerCell": 0}))
        first = wait_for("pods", lambda: len(cluster.pods()) == 2 and cluster.pods())
        preempted = terminated("Failed", 137) | {
            "conditions": [
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "PreemptionByScheduler",
                    "message": "a higher-priority workload needed the GPU",
                }
            ]
        }
        cluster.set_pod_status("demo-cell-0", preempted)
        wait_for(
            "a new pod for cell 0",
            lambda: (
                (p := cluster.pods().get(0)) and p["metadata"]["uid"] != first[0]["metadata"]["uid"]
            ),
        )
        # Deleted outright (its node lost, or by hand): recreated and not counted either.
        cluster.core.delete_namespaced_pod("demo-cell-1", cluster.namespace, grace_period_seconds=0)
        cells = wait_for(
            "two disruptions",
            lambda: (c := cluster.status("demo").get("cells", {})).get("disruptions") == 2 and c,
        )
        assert cells["restarts"] == 0
        assert cluster.status("demo")["phase"] != "Failed"
        reasons = [e.get("reason") for e in cluster.events()]
        assert reasons.count("CellDisrupted") == 2
        assert metrics.registry.get_sample_value("lipizzaner_operator_cell_disruptions_total") == 2
        assert metrics.registry.get_sample_value("lipizzaner_operator_cell_restarts_total") == 0


POD_GROUP_CRDS = Path(__file__).parent / "data" / "podgroup-crds.yaml"


@pytest.mark.parametrize(
    ("pod_group", "api"),
    [
        ("coscheduling", "scheduling.x-k8s.io/v1alpha1"),
        ("volcano", "scheduling.volcano.sh/v1beta1"),
    ],
)
def test_a_gang_gets_its_pod_group_and_the_run_says_it_waits(cluster, tmp_path, pod_group, api):
    cluster.plane.apply(list(yaml.safe_load_all(POD_GROUP_CRDS.read_text())))
    group = api.split("/")[0]
    cluster.plane.wait_established(f"crd/podgroups.{group}")
    document = manifest(tmp_path, scheduling={"podGroup": pod_group})
    document["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    with operator(cluster):
        cluster.create_run(document)
        found = wait_for(
            "the PodGroup",
            lambda: cluster.get(f"/apis/{api}/namespaces/{cluster.namespace}/podgroups/demo-cells"),
        )
        assert found["spec"]["minMember"] == 2
        uid = cluster.run("demo")["metadata"]["uid"]
        assert found["metadata"]["ownerReferences"][0]["uid"] == uid
        pods = wait_for("two pods", lambda: len(cluster.pods()) == 2 and cluster.pods())
        for pod in pods.values():
            assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "demo"
            assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"
        wait_for(
            "the run waiting for its gang",
            lambda: (
                cluster.status("demo")
                .get("message", "")
                .startswith(
                    f"waiting for the gang: 0 of 2 cells placed (PodGroup demo-cells, {pod_group})"
                )
            ),
        )


def test_an_ended_kueue_run_marks_its_pods_not_retriable(cluster, tmp_path):
    document = manifest(tmp_path)
    document["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    with operator(cluster):
        cluster.create_run(document)
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        cluster.set_pod_status("demo-cell-0", terminated("Failed", 2))
        wait_for("Failed", phase_is(cluster, "Failed"))
        failed = wait_for(
            "the failed pod released from its Kueue group",
            lambda: (
                (p := cluster.pods().get(0))
                and p["metadata"].get("annotations", {}).get("kueue.x-k8s.io/retriable-in-group")
                == "false"
                and p
            ),
        )
    assert failed["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "demo"


def test_a_run_another_controller_manages_is_left_alone(cluster, tmp_path):
    theirs = manifest(tmp_path, name="theirs", managedBy="kueue.x-k8s.io/multikueue")
    with operator(cluster):
        cluster.create_run(theirs)
        cluster.create_run(manifest(tmp_path))
        wait_for("our run's pods", lambda: len(cluster.pods()) == 2)
        wait_for("our run's status", lambda: cluster.status("demo").get("phase") == "Pending")
        names = [p["metadata"]["name"] for p in cluster.items("pods")]
        assert not [n for n in names if n.startswith("theirs")]
        assert cluster.status("theirs") == {}
    with pytest.raises(ApiException) as refused:
        cluster.patch_spec("theirs", {"managedBy": "someone-else"})
    assert refused.value.status == 422 and "spec.managedBy is immutable" in refused.value.body


def test_a_cell_given_up_leaves_the_ensemble_to_the_others(cluster, tmp_path):
    """maxRestartsPerCell 0, maxFailedCells 1: cell 1 fails once and is given up; cell 0
    finishes, and the ensemble is assembled from it alone."""
    document = manifest(tmp_path, failurePolicy={"maxRestartsPerCell": 0, "maxFailedCells": 1})
    run = parse_run(document)
    run_in_process(run, resume=False)  # real results to assemble from...
    layout = RunLayout.of(run)
    layout.storage.remove_tree(layout.ensemble)
    layout.storage.remove_tree(layout.cell(1).uri)  # ...but none from the cell that fails
    with operator(cluster):
        cluster.create_run(document)
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        cluster.set_pod_status("demo-cell-1", terminated("Failed", 1))
        wait_for(
            "cell 1 given up",
            lambda: (
                [r["phase"] for r in cluster.status("demo").get("cellRecords", [])][1:]
                == ["Failed"]
            ),
        )
        cluster.set_pod_status("demo-cell-0", terminated("Succeeded", 0))
        status = wait_for("Succeeded", phase_is(cluster, "Succeeded"))
    assert "(given up: [1])" in status["message"]
    records = {r["cell"]: r for r in status["cellRecords"]}
    assert records[1]["phase"] == "Failed" and records[0]["phase"] == "Succeeded"
    ensemble = layout.storage.read_json(layout.ensemble_manifest)
    assert ensemble["bestCell"] == 0 and [c["cell"] for c in ensemble["cells"]] == [0]
    reasons = [e.get("reason") for e in cluster.events()]
    assert "CellGivenUp" in reasons and "CellFailed" not in reasons


def test_runs_left_behind_by_an_uninstalled_operator_are_released(
    cluster, tmp_path, monkeypatch, capsys
):
    """No operator runs: a deleted run hangs on our finalizer until `release-finalizers`."""
    from lipizzaner_operator.names import FINALIZER
    from lipizzaner_operator.operator_main import main

    for name in ("stuck", "alive"):
        run = manifest(tmp_path, name=name)
        run["metadata"]["finalizers"] = [FINALIZER]
        cluster.create_run(run)
    cluster.custom.delete_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "stuck"
    )
    assert cluster.run("stuck")["metadata"]["deletionTimestamp"]  # held by the finalizer

    monkeypatch.setenv("KUBECONFIG", str(cluster.plane.kubeconfig))
    main(["release-finalizers", "-n", cluster.namespace])
    assert capsys.readouterr().out == f"released {cluster.namespace}/stuck\n1 run(s) released\n"
    wait_for("the deleted run to be gone", lambda: cluster.run("stuck") is None)
    assert cluster.run("alive")["metadata"]["finalizers"] == [FINALIZER]  # not being deleted


def test_delete_runs_waits_for_the_operator_and_names_what_it_left(
    cluster, tmp_path, monkeypatch, capsys
):
    """The chart's pre-delete hook: runs deleted while the operator still finalizes them;
    with no operator left, a timeout that names the runs and the way out."""
    from lipizzaner_operator.names import FINALIZER
    from lipizzaner_operator.operator_main import main

    monkeypatch.setenv("KUBECONFIG", str(cluster.plane.kubeconfig))
    with operator(cluster):
        for name in ("first", "second"):
            cluster.create_run(manifest(tmp_path, name=name))
            wait_for(f"{name} managed", lambda n=name: cluster.status(n).get("phase"))
        main(["delete-runs", "-n", cluster.namespace, "--timeout", "120"])
        assert cluster.run("first") is None and cluster.run("second") is None

    left = manifest(tmp_path, name="left")
    left["metadata"]["finalizers"] = [FINALIZER]  # as if an operator had managed it
    cluster.create_run(left)
    with pytest.raises(SystemExit) as stopped:
        main(["delete-runs", "-n", cluster.namespace, "--timeout", "1"])
    assert stopped.value.code == 1
    said = capsys.readouterr()
    assert f"deleting {cluster.namespace}/left" in said.out
    assert said.err.count("\n") == 1
    assert f"1 run(s) still there after 1 s: {cluster.namespace}/left" in said.err
    assert "release-finalizers" in said.err
