"""The operator under kopf's real event loop, against a real kube-apiserver with
kube-controller-manager (hack/envtest.sh).

There is no kubelet: the test plays it, moving pods through their phases with the status
subresource. Cells' progress comes from real gRPC status servers on loopback addresses
(the pods' IPs), and the ensemble is assembled from real cell results of a tiny
in-process run. Each test has a namespace of its own and an operator watching only it,
unless the test is about scope.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import kopf
import pytest
from conftest import TINY_RING
from envtest import GROUP, PLURAL, VERSION, Cluster, wait_for
from kopf.testing import KopfRunner
from kubernetes.client.exceptions import ApiException
from lipizzaner_cell.cell_main import CellStatusBoard
from lipizzaner_cell.in_process import run_in_process
from lipizzaner_cell.local_launcher import free_port_block
from lipizzaner_cell.wire.server import CellService, CentreBoard, start_server
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from lipizzaner_core.wire.tls import TlsMaterial, run_identity
from lipizzaner_operator.handlers import OperatorConfig, operator_settings, register
from lipizzaner_operator.kube import KubeClient
from lipizzaner_operator.metrics import OperatorMetrics
from lipizzaner_operator.render import CellDefaults, render_pod


@pytest.fixture(autouse=True)
def _no_inconsistent_status_writes(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """kopf warns when a status patch does not read back as written: never acceptable."""
    caplog.set_level(logging.INFO)
    yield
    messages = [r.getMessage() for r in caplog.get_records("call")]
    assert [m for m in messages if "inconsistencies" in m] == []


@contextmanager
def operator(
    cluster: Cluster,
    grpc_port: int = 50051,
    namespaces: tuple[str, ...] | None = None,
    kubeconfig: Path | None = None,
) -> Iterator[OperatorMetrics]:
    """The real operator: kopf's CLI and event loop, our handlers in a fresh registry.

    It watches the test's namespace unless told otherwise (() means all namespaces), and
    logs in with the admin kubeconfig unless given another.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(kubeconfig or cluster.plane.kubeconfig))
        registry = kopf.OperatorRegistry()
        metrics = OperatorMetrics(lambda: [])
        register(
            registry,
            OperatorConfig(
                cell=CellDefaults(grpc_port=grpc_port),
                reconcile_seconds=0.3,
                status_timeout_seconds=1.0,
            ),
            metrics,
        )
        watched = (cluster.namespace,) if namespaces is None else namespaces
        scope = [f"--namespace={n}" for n in watched] or ["--all-namespaces"]
        args = ["run", *scope, "--standalone"]
        with KopfRunner(args, registry=registry, settings=operator_settings(), timeout=60):
            yield metrics


def manifest(tmp_path: Path, name: str = "demo", **spec: Any) -> dict:
    document = copy.deepcopy(TINY_RING)
    document["metadata"]["name"] = name
    document["spec"].update(grid={"rows": 1, "cols": 2}, generations=2)
    document["spec"]["output"] = {"uri": f"file://{tmp_path}/out/{{name}}"}
    document["spec"].update(spec)
    return document


def running(ip: str) -> dict:
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}


def terminated(phase: str, exit_code: int) -> dict:
    container = {
        "name": "cell",
        "image": "cell:test",
        "imageID": "sha256:0",
        "ready": False,
        "restartCount": 0,
        "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}},
    }
    return {"phase": phase, "containerStatuses": [container]}


def condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def phase_is(cluster: Cluster, phase: str, name: str = "demo", namespace: str | None = None):
    return lambda: (s := cluster.status(name, namespace)).get("phase") == phase and s


def owned_children(cluster: Cluster) -> list[dict]:
    return [
        obj
        for kind in ("pods", "services", "configmaps")
        for obj in cluster.items(kind)
        if any(r["kind"] == "LipizzanerRun" for r in obj["metadata"].get("ownerReferences", []))
    ]


def kubectl_wait(cluster: Cluster, run: str) -> subprocess.Popen[str]:
    """`kubectl wait --for=condition=Succeeded`, as a CI job runs it, in the background."""
    return subprocess.Popen(
        [
            str(cluster.plane.bin / "kubectl"),
            f"--kubeconfig={cluster.plane.kubeconfig}",
            f"--namespace={cluster.namespace}",
            "wait",
            "--for=condition=Succeeded",
            f"lpz/{run}",
            "--timeout=300s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@contextmanager
def status_servers(
    boards: list[CellStatusBoard], port: int, tls: TlsMaterial | None = None
) -> Iterator[None]:
    """Real gRPC status servers for the cells, cell i on 127.0.0.(i+1)."""
    identity = None if tls is None else tls.identity
    servers = [
        start_server(
            CellService(CentreBoard(), lambda b=b: b.message, identity),
            port,
            f"127.0.0.{i + 1}",
            tls,
        )[0]
        for i, b in enumerate(boards)
    ]
    try:
        yield
    finally:
        for server in servers:
            server.stop(None)


def drive_to_success(
    cluster: Cluster,
    tmp_path: Path,
    kubeconfig: Path | None = None,
    namespaces=None,
    tls: bool = False,
) -> dict:
    """A whole run as the operator sees it: created, progressing, succeeded, assembled.

    Returns the final status after checking every step on the way; `kubectl wait` must
    return once (and only once) the run has succeeded. With `tls`, the cells serve over
    mutual TLS with the certificates the operator made, and it reads their progress so.
    """
    document = manifest(tmp_path, exchange={"tls": {"enabled": tls}})
    run = parse_run(document)
    run_in_process(run, resume=False)  # real cell results for the operator to assemble
    layout = RunLayout.of(run)
    layout.storage.remove_tree(layout.ensemble)
    boards = [CellStatusBoard(i, 2, 0) for i in range(2)]
    waiter = None
    port = free_port_block(1)
    try:
        with (
            operator(cluster, port, namespaces=namespaces, kubeconfig=kubeconfig),
            ExitStack() as servers,
        ):
            cluster.create_run(document)
            pods = wait_for("two cell pods", lambda: len(cluster.pods()) == 2 and cluster.pods())
            uid = cluster.run("demo")["metadata"]["uid"]
            owner = {"kind": "LipizzanerRun", "name": "demo", "uid": uid}
            children = wait_for(
                "the pods, Service and ConfigMap",
                lambda: len(found := owned_children(cluster)) == 4 and found,
            )
            for child in children:
                reference = child["metadata"]["ownerReferences"][0]
                assert {k: reference[k] for k in owner} == owner
                assert reference["controller"] is True
            assert sorted(p["metadata"]["name"] for p in pods.values()) == [
                "demo-cell-0",
                "demo-cell-1",
            ]
            wait_for("Pending", phase_is(cluster, "Pending"))
            waiter = kubectl_wait(cluster, "demo")
            material = run_certificates(cluster, pods[0], uid) if tls else None
            servers.enter_context(status_servers(boards, port, material))

            for i in range(2):
                boards[i].update(generation=i + 1, scores={"mixture": 0.5 + i})
                cluster.set_pod_status(f"demo-cell-{i}", running(f"127.0.0.{i + 1}"))
            status = wait_for(
                "progress from the cells' GetStatus",
                lambda: (s := cluster.status("demo")).get("generation", {}).get("max") == 2 and s,
            )
            assert status["phase"] == "Running"
            assert condition(status, "Running")["status"] == "True"
            assert status["generation"] == {"min": 1, "max": 2}
            assert status["bestScore"] == 0.5
            assert status["grid"] == "1x2" and status["cells"]["running"] == 2
            assert waiter.poll() is None  # still waiting: the run has not succeeded

            for i in range(2):
                cluster.set_pod_status(f"demo-cell-{i}", terminated("Succeeded", 0))
            status = wait_for("Succeeded", phase_is(cluster, "Succeeded"))
            out, _ = waiter.communicate(timeout=120)
            assert waiter.returncode == 0 and "condition met" in out, out
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
    assert condition(status, "Succeeded")["status"] == "True"
    assert status["ensemble"]["uri"] == layout.ensemble
    ensemble = layout.storage.read_json(layout.ensemble_manifest)
    assert ensemble["run"] == "demo" and ensemble["generators"]
    assert status["completionTime"] and status["observedGeneration"] == 1
    return status


def run_certificates(cluster: Cluster, pod: dict, uid: str) -> TlsMaterial:
    """The Secret the operator made for the run: owned by it, mounted by its pods."""
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "demo-tls"
    secret = cluster.core.read_namespaced_secret("demo-tls", cluster.namespace)
    assert secret.metadata.owner_references[0].uid == uid
    files = {k: base64.b64decode(v) for k, v in secret.data.items()}
    material = TlsMaterial.from_files(files, "Secret demo-tls")
    assert material.identity == run_identity("demo", cluster.namespace)
    return material


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
        wait_for("restart count", lambda: cluster.status("demo")["cells"]["restarts"] == 1)
        assert metrics.registry.get_sample_value("lipizzaner_operator_cell_restarts_total") == 1
        assert metrics.registry.get_sample_value("lipizzaner_operator_pod_creations_total") == 3
        event = wait_for(
            "a CellRestarted event",
            lambda: next((e for e in cluster.events() if e.get("reason") == "CellRestarted"), None),
        )
        assert event["involvedObject"]["name"] == "demo" and event["type"] == "Warning"
        cluster.set_pod_status("demo-cell-0", terminated("Failed", 1))
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
