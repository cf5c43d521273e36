"""The operator under kopf's real event loop, against a real kube-apiserver with
kube-controller-manager (hack/envtest.sh).

There is no kubelet: the test plays it, moving pods through their phases with the status
subresource. Cells' progress comes from real gRPC status servers on loopback addresses
(the pods' IPs), and the ensemble is assembled from real cell results of a tiny
in-process run. Each test has a namespace of its own and an operator watching only it,
unless the test is about scope.
"""

from __future__ import annotations

import json

import pytest
from envtest import GROUP, PLURAL, VERSION, wait_for
from kubernetes.client.exceptions import ApiException
from lipizzaner_cell.exchange.server import CellService, CentreBoard, start_server
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.executors.local_processes import free_port_block
from lipizzaner_cell.runtime.cell_life import CellStatusBoard
from lipizzaner_core.spec import parse_run
from lipizzaner_operator.kube import KubeClient
from lipizzaner_operator.render import CellDefaults, render_pod
from operator_harness import (  # noqa: F401 - the autouse check of kopf's status writes
    _no_inconsistent_status_writes,
    condition,
    drive_to_success,
    manifest,
    operator,
    owned_children,
    phase_is,
    running,
    terminated,
)


def test_a_run_goes_from_creation_to_an_assembled_ensemble(cluster, tmp_path):
    drive_to_success(cluster, tmp_path)
    printed = cluster.plane.kubectl("get", "lpz", "-n", cluster.namespace)
    assert "Succeeded" in printed.stdout and "1x2" in printed.stdout


def test_a_pod_of_two_cells_reports_both_and_its_run_succeeds(cluster, tmp_path):
    """cellsPerPod 2 on a 1x2 grid: one pod `demo-cells-0-1`, accepted by the real API
    server with a gRPC port per slot; the operator reads each cell on its own port."""
    document = manifest(tmp_path, cell={"cellsPerPod": 2})
    run = parse_run(document)
    run_in_process(run, resume=False)  # real cell results for the operator to assemble
    boards = [CellStatusBoard(i, 2, 0) for i in range(2)]
    port = free_port_block(2)
    servers = [
        start_server(CellService(CentreBoard(), lambda b=b: b.message), port + i, "127.0.0.1")[0]
        for i, b in enumerate(boards)
    ]
    try:
        with operator(cluster, port):
            cluster.create_run(document)
            pods = wait_for("one pod", lambda: len(cluster.pods()) == 1 and cluster.pods())
            (pod,) = pods.values()
            assert pod["metadata"]["name"] == "demo-cells-0-1"
            ports = [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]]
            assert ports == [port, port + 1, 9090]
            for i in range(2):
                boards[i].update(generation=i + 1)
            cluster.set_pod_status("demo-cells-0-1", running("127.0.0.1"))
            status = wait_for(
                "both cells' progress",
                lambda: (
                    (s := cluster.status("demo")).get("generation", {}) == {"min": 1, "max": 2}
                    and s
                ),
            )
            assert status["cells"]["running"] == 2
            cluster.set_pod_status("demo-cells-0-1", terminated("Succeeded", 0))
            status = wait_for("Succeeded", phase_is(cluster, "Succeeded"))
    finally:
        for server in servers:
            server.stop(None)
    assert status["cells"]["succeeded"] == 2


def test_failed_cells_are_recreated_until_the_limit_then_the_run_fails(cluster, tmp_path):
    with operator(cluster) as metrics:
        cluster.create_run(manifest(tmp_path, failurePolicy={"maxRestartsPerCell": 1}))
        first = wait_for("pods", lambda: len(cluster.pods()) == 2 and cluster.pods())
        old_uid = first[0]["metadata"]["uid"]
        cluster.set_pod_status("demo-cell-0", terminated("Failed", 1))
        replaced = wait_for(
            "a new pod for cell 0",
            lambda: (p := cluster.pods().get(0)) and p["metadata"]["uid"] != old_uid and p,
        )
        env = {e["name"]: e["value"] for e in replaced["spec"]["containers"][0]["env"]}
        assert env["LIPIZZANER_RESTARTS"] == "1"
        # A name of its own (Kueue may hold the failed pod until it sees it), the same
        # DNS name for its neighbours.
        assert replaced["metadata"]["name"] == "demo-cell-0-r1"
        assert replaced["spec"]["hostname"] == "demo-cell-0"
        wait_for("restart count", lambda: cluster.status("demo")["cells"]["restarts"] == 1)
        assert metrics.registry.get_sample_value("lipizzaner_operator_cell_restarts_total") == 1
        assert metrics.registry.get_sample_value("lipizzaner_operator_pod_creations_total") == 3
        event = wait_for(
            "a CellRestarted event",
            lambda: next((e for e in cluster.events() if e.get("reason") == "CellRestarted"), None),
        )
        assert event["involvedObject"]["name"] == "demo" and event["type"] == "Warning"
        cluster.set_pod_status("demo-cell-0-r1", terminated("Failed", 1))
        status = wait_for("Failed", phase_is(cluster, "Failed"))
        assert "cell 0 (row 0, col 0) failed (exit code 1) after 1 restarts" in status["message"]
        assert condition(status, "Failed")["reason"] == "CellFailed"
        # The healthy cell is stopped too; the failed pod stays for its logs.
        wait_for("cell 1 stopped", lambda: set(cluster.pods()) == {0})


def test_suspend_deletes_the_pods_and_resume_recreates_them(cluster, tmp_path):
    with operator(cluster):
        cluster.create_run(manifest(tmp_path))
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        cluster.patch_spec("demo", {"suspend": True})
        wait_for("no pods", lambda: cluster.pods() == {})
        status = wait_for("Suspended", phase_is(cluster, "Suspended"))
        assert condition(status, "Suspended")["status"] == "True"
        cluster.patch_spec("demo", {"suspend": False})
        wait_for("pods again", lambda: len(cluster.pods()) == 2)
        status = wait_for("Pending", phase_is(cluster, "Pending"))
        assert status["cells"]["restarts"] == 0
        assert condition(status, "Suspended")["status"] == "False"


def test_a_run_past_its_active_deadline_fails_and_stops_its_cells(cluster, tmp_path):
    with operator(cluster):
        cluster.create_run(manifest(tmp_path, activeDeadlineSeconds=2))
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        status = wait_for("Failed", phase_is(cluster, "Failed"))
        assert condition(status, "Failed")["reason"] == "DeadlineExceeded"
        assert "activeDeadlineSeconds (2 s)" in status["message"]
        wait_for("every cell stopped", lambda: cluster.pods() == {})


def test_a_restarted_operator_adopts_the_running_pods(cluster, tmp_path):
    with operator(cluster):
        cluster.create_run(manifest(tmp_path))
        pods = wait_for("pods", lambda: len(cluster.pods()) == 2 and cluster.pods())
        for i in range(2):
            cluster.set_pod_status(f"demo-cell-{i}", running(f"10.9.0.{i + 1}"))
        wait_for("Running", phase_is(cluster, "Running"))
    uids = {i: p["metadata"]["uid"] for i, p in pods.items()}
    with operator(cluster):
        cluster.set_pod_status("demo-cell-1", terminated("Succeeded", 0))
        wait_for("the new operator's view", lambda: cluster.status("demo")["cells"]["succeeded"])
        assert {i: p["metadata"]["uid"] for i, p in cluster.pods().items()} == uids
        status = cluster.status("demo")
        assert status["phase"] == "Running" and status["cells"]["restarts"] == 0
    assert len(cluster.items("pods")) == 2  # no duplicates


def test_deleting_a_run_removes_the_finalizer_and_the_garbage_collector_its_children(
    cluster, tmp_path
):
    with operator(cluster):
        cluster.create_run(manifest(tmp_path))
        wait_for("the run's pods, Service and ConfigMap", lambda: len(owned_children(cluster)) == 4)
        wait_for(
            "our finalizer",
            lambda: "lipizzaner.io/finalizer" in cluster.run("demo")["metadata"]["finalizers"],
        )
        cluster.custom.delete_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, PLURAL, "demo"
        )
        wait_for("the run to be gone", lambda: cluster.run("demo") is None)
    # kube-controller-manager's garbage collector follows the ownerReferences.
    wait_for("every owned object to be deleted", lambda: owned_children(cluster) == [])


def test_an_invalid_run_fails_with_the_field_named(cluster, tmp_path):
    with operator(cluster):
        cluster.create_run(manifest(tmp_path, output={"uri": "./runs/{name}"}))
        status = wait_for("Failed", phase_is(cluster, "Failed"))
    assert status["message"].startswith("spec.output.uri: must be object storage")
    assert condition(status, "Failed")["reason"] == "InvalidSpec"
    assert cluster.pods() == {}


def test_a_failed_run_is_deleted_after_its_ttl(cluster, tmp_path):
    with operator(cluster):
        cluster.create_run(manifest(tmp_path, ttlSecondsAfterFinished=1))
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        cluster.set_pod_status("demo-cell-1", terminated("Failed", 2))
        status = wait_for("Failed", phase_is(cluster, "Failed"))
        assert condition(status, "Failed")["reason"] == "BadConfiguration"
        wait_for("the run to be gone", lambda: cluster.run("demo") is None)


def test_deleting_a_run_past_its_ttl_keeps_other_controllers_finalizers(cluster, tmp_path):
    """The operator lets go of its own finalizer only: another controller's stays, and
    the run waits, being deleted, until that controller is done."""
    with operator(cluster):
        document = manifest(tmp_path, ttlSecondsAfterFinished=1)
        document["metadata"]["finalizers"] = ["example.com/keep"]
        cluster.create_run(document)
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        cluster.set_pod_status("demo-cell-1", terminated("Failed", 2))
        deleting = wait_for(
            "the run being deleted",
            lambda: (r := cluster.run("demo")) and r["metadata"].get("deletionTimestamp") and r,
        )
        wait_for(
            "our finalizer released",
            lambda: cluster.run("demo")["metadata"]["finalizers"] == ["example.com/keep"],
        )
    assert deleting["metadata"]["deletionTimestamp"]


def test_a_namespaced_operator_leaves_other_namespaces_alone(cluster, tmp_path):
    elsewhere = cluster.create_namespace("elsewhere")
    try:
        with operator(cluster):
            cluster.create_run(manifest(tmp_path, name="theirs"), namespace=elsewhere)
            cluster.create_run(manifest(tmp_path, name="ours"))
            wait_for("our pods", lambda: len(cluster.pods()) == 2)
            wait_for("our status", phase_is(cluster, "Pending", "ours"))
        assert cluster.pods(elsewhere) == {}
        assert cluster.status("theirs", elsewhere) == {}
    finally:
        cluster.delete_namespace(elsewhere)


def test_a_cluster_wide_operator_runs_every_namespace(cluster, tmp_path):
    other = cluster.create_namespace("other")
    try:
        with operator(cluster, namespaces=()):
            cluster.create_run(manifest(tmp_path, name="first"))
            cluster.create_run(manifest(tmp_path, name="second"), namespace=other)
            wait_for("pods in both", lambda: len(cluster.pods()) == 2 == len(cluster.pods(other)))
            wait_for("both statuses", phase_is(cluster, "Pending", "second", other))
            wait_for("both statuses", phase_is(cluster, "Pending", "first"))
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, other, PLURAL, "second")
            wait_for("the other run deleted", lambda: cluster.run("second", other) is None)
    finally:
        cluster.delete_namespace(other)


def test_operator_flags_default_to_their_environment_variables(monkeypatch, capsys):
    from lipizzaner_operator.operator_main import build_parser

    assert build_parser().parse_args([]).namespace == []  # all namespaces
    monkeypatch.setenv("LIPIZZANER_WATCH_NAMESPACES", "team-a,team-b")
    monkeypatch.setenv("LIPIZZANER_RECONCILE_SECONDS", "2.5")
    args = build_parser().parse_args([])
    assert (args.namespace, args.reconcile_seconds) == (["team-a", "team-b"], 2.5)
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--help"])
    assert done.value.code == 0 and "LIPIZZANER_CELL_IMAGE" in capsys.readouterr().out


def test_the_operators_own_writes_are_strictly_validated(cluster, tmp_path):
    """A misspelt field in an object the operator creates is an error, never pruned."""
    run = parse_run({**manifest(tmp_path), "metadata": {"name": "demo"}})
    pod = render_pod(run, cluster.namespace, 0, 0, CellDefaults())
    pod["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(ApiException) as refused:
        KubeClient(cluster.api).create(pod)
    assert refused.value.status in (400, 422)
    message = json.loads(refused.value.body)["message"]
    assert 'unknown field "spec.containers[0].imagePulPolicy"' in message
    assert cluster.pods() == {}


def test_the_operator_reads_a_runs_output_with_the_runs_own_credentials(cluster):
    """The operator assembles with the keys of the run's credentialsSecret, not only its
    own environment: on a real node, a run whose bucket only its Secret opens failed with
    'Unable to locate credentials'."""
    from conftest import TINY_RING
    from kubernetes import client as k8s
    from lipizzaner_operator.ensemble_steps import output_layout

    body = {
        "metadata": {"name": "s3"},
        "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key", "OTHER": "x"},
    }
    k8s.CoreV1Api(cluster.api).create_namespaced_secret(cluster.namespace, body)
    spec = {**TINY_RING["spec"], "output": {"uri": "s3://b/r", "endpointUrl": "http://e:1"}}
    run = parse_run(
        {**TINY_RING, "spec": {**spec, "output": {**spec["output"], "credentialsSecret": "s3"}}}
    )
    layout = output_layout(run, cluster.namespace, KubeClient(cluster.api))
    assert layout.storage.options == {
        "s3": {"endpoint_url": "http://e:1", "key": "id", "secret": "key"}
    }
    plain = parse_run({**TINY_RING, "spec": spec})
    assert output_layout(plain, cluster.namespace, KubeClient(cluster.api)).storage.options == {
        "s3": {"endpoint_url": "http://e:1"}
    }
