"""The operator under kopf's real event loop, against the kmock Kubernetes emulator.

The test plays the kubelet: it moves pods through their phases over the API. Cells'
progress comes from real gRPC status servers on loopback addresses (the pods' IPs), and
the ensemble is assembled from real cell results of a tiny in-process run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kopf
import pytest
from conftest import TINY_RING
from kopf.testing import KopfRunner
from kube_lab import KubeLab
from kubernetes import client, config
from lipizzaner_cell.cell_main import CellStatusBoard
from lipizzaner_cell.in_process import run_in_process
from lipizzaner_cell.wire.server import CellService, CentreBoard, start_server
from lipizzaner_operator import storage
from lipizzaner_operator.handlers import OperatorConfig, operator_settings, register
from lipizzaner_operator.local_launcher import free_port_block
from lipizzaner_operator.metrics import OperatorMetrics
from lipizzaner_operator.render import CellDefaults
from lipizzaner_operator.spec import parse_run

NAMESPACE = "lab"
GROUP, VERSION, PLURAL = "lipizzaner.io", "v1alpha1", "lipizzanerruns"


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll until `condition()` is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Cluster:
    """The test's view of the emulated API: the run, its pods, kubelet-style updates."""

    def __init__(self, lab: KubeLab) -> None:
        api = config.new_client_from_config(str(lab.kubeconfig))
        self.lab = lab
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def create_run(self, manifest: dict, namespace: str = NAMESPACE) -> None:
        manifest = copy.deepcopy(manifest)
        manifest["metadata"]["namespace"] = namespace
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    def run(self, name: str) -> dict | None:
        for obj in self.lab.objects(PLURAL):
            if obj["metadata"]["name"] == name:
                return obj
        return None

    def status(self, name: str) -> dict:
        return (self.run(name) or {}).get("status") or {}

    def patch_spec(self, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": spec}
        )

    def pods(self) -> dict[int, dict]:
        return {
            int(p["metadata"]["labels"]["lipizzaner.io/cell"]): p for p in self.lab.objects("pods")
        }

    def set_pod_status(self, name: str, status: dict) -> None:
        self.core.patch_namespaced_pod_status(
            name, NAMESPACE, {"status": status}, _preload_content=False
        )

    def events(self) -> list[dict]:
        return list(self.lab.objects("events"))


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeLab]:
    with KubeLab(tmp_path) as kube_lab:
        monkeypatch.setenv("KUBECONFIG", str(kube_lab.kubeconfig))
        yield kube_lab


@pytest.fixture
def cluster(lab: KubeLab) -> Cluster:
    return Cluster(lab)


@contextmanager
def operator(grpc_port: int = 50051, namespaces: tuple[str, ...] = ()) -> Iterator[OperatorMetrics]:
    """The real operator: kopf's CLI and event loop, our handlers in a fresh registry."""
    registry = kopf.OperatorRegistry()
    metrics = OperatorMetrics(lambda: [])
    register(
        registry,
        OperatorConfig(
            cell=CellDefaults(grpc_port=grpc_port),
            reconcile_seconds=0.2,
            status_timeout_seconds=1.0,
        ),
        metrics,
    )
    scope = [f"--namespace={n}" for n in namespaces] or ["--all-namespaces"]
    args = ["run", *scope, "--standalone"]
    with KopfRunner(args, registry=registry, settings=operator_settings(), timeout=30):
        yield metrics


def manifest(tmp_path: Path, name: str = "demo", **spec: Any) -> dict:
    document = copy.deepcopy(TINY_RING)
    document["metadata"]["name"] = name
    document["spec"].update(grid={"rows": 1, "cols": 2}, generations=2)
    document["spec"]["output"] = {"uri": f"file://{tmp_path}/out/{{name}}"}
    document["spec"].update(spec)
    return document


def running(ip: str) -> dict:
    return {"phase": "Running", "podIP": ip}


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


def test_a_run_goes_from_creation_to_an_assembled_ensemble(cluster, tmp_path):
    document = manifest(tmp_path)
    run = parse_run(document)
    run_in_process(run, resume=False)  # real cell results for the operator to assemble
    output = run.output_uri()
    storage.remove_tree(storage.join(output, "ensemble"))
    port = free_port_block(1)
    boards = [CellStatusBoard(i, 2, 0) for i in range(2)]
    servers = [
        start_server(CellService(CentreBoard(), lambda b=b: b.message), port, f"127.0.0.{i + 1}")[0]
        for i, b in enumerate(boards)
    ]
    try:
        with operator(grpc_port=port):
            cluster.create_run(document)
            pods = wait_for("two cell pods", lambda: len(cluster.pods()) == 2 and cluster.pods())
            uid = cluster.run("demo")["metadata"]["uid"]
            owner = {"kind": "LipizzanerRun", "name": "demo", "uid": uid}
            children = [*pods.values(), *cluster.lab.objects("services")]
            children += list(cluster.lab.objects("configmaps"))
            assert len(children) == 4
            for child in children:
                reference = child["metadata"]["ownerReferences"][0]
                assert {k: reference[k] for k in owner} == owner
                assert reference["controller"] is True
            status = wait_for("Pending", lambda: cluster.status("demo").get("phase") == "Pending")

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

            for i in range(2):
                cluster.set_pod_status(f"demo-cell-{i}", terminated("Succeeded", 0))
            status = wait_for(
                "Succeeded", lambda: (s := cluster.status("demo")).get("phase") == "Succeeded" and s
            )
    finally:
        for server in servers:
            server.stop(None)
    assert condition(status, "Succeeded")["status"] == "True"
    assert status["ensemble"]["uri"] == storage.join(output, "ensemble")
    manifest_json = storage.read_json(storage.join(output, "ensemble", "manifest.json"))
    assert manifest_json["run"] == "demo" and manifest_json["generators"]
    assert status["completionTime"] and status["observedGeneration"] == 1


def test_failed_cells_are_recreated_until_the_limit_then_the_run_fails(cluster, tmp_path):
    with operator() as metrics:
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
        wait_for(
            "a CellRestarted event",
            lambda: any(e.get("reason") == "CellRestarted" for e in cluster.events()),
        )
        cluster.set_pod_status("demo-cell-0", terminated("Failed", 1))
        status = wait_for(
            "Failed", lambda: (s := cluster.status("demo")).get("phase") == "Failed" and s
        )
        assert "cell 0 (row 0, col 0) failed (exit code 1) after 1 restarts" in status["message"]
        assert condition(status, "Failed")["reason"] == "CellFailed"
        # The healthy cell is stopped too; the failed pod stays for its logs.
        wait_for("cell 1 stopped", lambda: set(cluster.pods()) == {0})


def test_suspend_deletes_the_pods_and_resume_recreates_them(cluster, tmp_path):
    with operator():
        cluster.create_run(manifest(tmp_path))
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        cluster.patch_spec("demo", {"suspend": True})
        wait_for("no pods", lambda: cluster.pods() == {})
        status = wait_for(
            "Suspended", lambda: (s := cluster.status("demo")).get("phase") == "Suspended" and s
        )
        assert condition(status, "Suspended")["status"] == "True"
        cluster.patch_spec("demo", {"suspend": False})
        wait_for("pods again", lambda: len(cluster.pods()) == 2)
        status = wait_for(
            "Pending", lambda: (s := cluster.status("demo")).get("phase") == "Pending" and s
        )
        assert status["cells"]["restarts"] == 0
        assert condition(status, "Suspended")["status"] == "False"


def test_a_restarted_operator_adopts_the_running_pods(cluster, tmp_path):
    with operator():
        cluster.create_run(manifest(tmp_path))
        pods = wait_for("pods", lambda: len(cluster.pods()) == 2 and cluster.pods())
        for i in range(2):
            cluster.set_pod_status(f"demo-cell-{i}", running(f"10.9.0.{i}"))
        wait_for("Running", lambda: cluster.status("demo").get("phase") == "Running")
    uids = {i: p["metadata"]["uid"] for i, p in pods.items()}
    with operator():
        cluster.set_pod_status("demo-cell-1", terminated("Succeeded", 0))
        wait_for("the new operator's view", lambda: cluster.status("demo")["cells"]["succeeded"])
        assert {i: p["metadata"]["uid"] for i, p in cluster.pods().items()} == uids
        status = cluster.status("demo")
        assert status["phase"] == "Running" and status["cells"]["restarts"] == 0


def test_deleting_a_run_removes_the_finalizer(cluster, tmp_path):
    with operator():
        cluster.create_run(manifest(tmp_path))
        wait_for(
            "our finalizer",
            lambda: (
                "lipizzaner.io/finalizer" in cluster.run("demo")["metadata"].get("finalizers", [])
            ),
        )
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "demo")
        wait_for("the run to be gone", lambda: cluster.run("demo") is None)


def test_an_invalid_run_fails_with_the_field_named(cluster, tmp_path):
    with operator():
        cluster.create_run(manifest(tmp_path, output={"uri": "./runs/{name}"}))
        status = wait_for(
            "Failed", lambda: (s := cluster.status("demo")).get("phase") == "Failed" and s
        )
    assert status["message"].startswith("spec.output.uri: must be object storage")
    assert condition(status, "Failed")["reason"] == "InvalidSpec"
    assert cluster.pods() == {}


def test_a_failed_run_is_deleted_after_its_ttl(cluster, tmp_path):
    with operator():
        cluster.create_run(manifest(tmp_path, ttlSecondsAfterFinished=0))
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        cluster.set_pod_status("demo-cell-1", terminated("Failed", 2))
        wait_for("the run to be gone", lambda: cluster.run("demo") is None)


def test_a_namespaced_operator_leaves_other_namespaces_alone(cluster, tmp_path):
    for namespace in ("lab", "elsewhere"):
        cluster.core.create_namespace({"metadata": {"name": namespace}}, _preload_content=False)
    with operator(namespaces=("lab",)):
        cluster.create_run(manifest(tmp_path, name="theirs"), namespace="elsewhere")
        cluster.create_run(manifest(tmp_path, name="ours"))
        wait_for("our pods", lambda: len(cluster.pods()) == 2)
        wait_for("our status", lambda: cluster.status("ours").get("phase") == "Pending")
    assert {p["metadata"]["namespace"] for p in cluster.pods().values()} == {"lab"}
    assert cluster.status("theirs") == {}


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
