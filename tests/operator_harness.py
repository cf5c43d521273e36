"""What the operator tests share: an operator under kopf's real event loop against the
test's control plane (`operator`), manifests, the kubelet's part (pod phases), real gRPC
status servers for the cells, and one whole run driven to success (`drive_to_success`).

There is no kubelet: the tests play it, moving pods through their phases with the status
subresource. Import `_no_inconsistent_status_writes` into a test module to check that
kopf never wrote an inconsistent status there.
"""

from __future__ import annotations

import base64
import copy
import logging
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import kopf
import pytest
from conftest import TINY_RING
from envtest import Cluster, wait_for
from kopf.testing import KopfRunner
from lipizzaner_cell.exchange.server import CellService, CentreBoard, start_server
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.executors.local_processes import free_port_block
from lipizzaner_cell.runtime.cell_life import CellStatusBoard
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from lipizzaner_core.wire.tls import TlsMaterial, run_identity
from lipizzaner_operator.handlers import OperatorConfig, operator_settings, register
from lipizzaner_operator.metrics import OperatorMetrics
from lipizzaner_operator.pod_cache import WatchTimeouts
from lipizzaner_operator.render import CellDefaults


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
    liveness: str | None = None,
    watch_liveness_seconds: float = 300.0,
    timeouts: WatchTimeouts | None = None,
) -> Iterator[OperatorMetrics]:
    """The real operator: kopf's CLI and event loop, our handlers in a fresh registry.

    It watches the test's namespace unless told otherwise (() means all namespaces), and
    logs in with the admin kubeconfig unless given another. With `liveness` (a URL) it
    serves its liveness endpoint there.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(kubeconfig or cluster.plane.kubeconfig))
        registry = kopf.OperatorRegistry()
        metrics = OperatorMetrics(lambda: [])
        watched = (cluster.namespace,) if namespaces is None else namespaces
        register(
            registry,
            OperatorConfig(
                cell=CellDefaults(grpc_port=grpc_port),
                reconcile_seconds=0.3,
                status_timeout_seconds=1.0,
                namespaces=watched,
                watch_liveness_seconds=watch_liveness_seconds,
                watch=timeouts or WatchTimeouts(),
            ),
            metrics,
        )
        scope = [f"--namespace={n}" for n in watched] or ["--all-namespaces"]
        args = ["run", *scope, "--standalone"]
        if liveness:
            args.append(f"--liveness={liveness}")
        settings = operator_settings(timeouts)
        with KopfRunner(args, registry=registry, settings=settings, timeout=60):
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
                boards[i].update(
                    generation=i + 1, scores={"mixture": 0.5 + i, "accuracy": 0.6 + i / 10}
                )
                cluster.set_pod_status(f"demo-cell-{i}", running(f"127.0.0.{i + 1}"))
            status = wait_for(
                "progress from the cells' GetStatus",
                lambda: (s := cluster.status("demo")).get("generation", {}).get("max") == 2 and s,
            )
            assert status["phase"] == "Running"
            assert condition(status, "Running")["status"] == "True"
            assert status["generation"] == {"min": 1, "max": 2}
            assert status["bestScore"] == 0.5
            assert status["bestAccuracy"] == 0.7  # semi-supervised cells report accuracy
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
