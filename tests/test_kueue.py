"""Runs under Kueue's real controller manager (tests/kueue.py), on a control plane of this
module's own: Kueue's pod webhook would otherwise stand in every other test's way.

A run labelled with a LocalQueue is one plain pod group. Kueue gates its pods until the
group is admitted under the ClusterQueue's quota, keeps its finalizer on a failed pod
until a replacement exists (kubernetes-sigs/kueue#5130), preempts a lower-priority group
for a higher one, and frees the quota when the group ends. As elsewhere, the test plays
the kubelet (there is no node), and cells' results come from an in-process run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from envtest import Cluster, ControlPlane, private_plane, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kueue import MANAGED, QUEUE, kueue, kueue_unavailable, local_queue
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.contract import KUEUE_QUEUE_LABEL
from lipizzaner_core.spec import parse_run
from operator_harness import manifest, operator, phase_is, running, terminated

GATE = "kueue.x-k8s.io/admission"
# Room for one run of two cells (each asks for 1 CPU and 1 GiB), not two.
QUOTA = {"cpu": "3", "memory": "3Gi"}


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> Iterator[ControlPlane]:
    problem = kueue_unavailable()
    if problem is not None:
        from conftest import unavailable

        unavailable(problem)
    directory = tmp_path_factory.mktemp("kueue")
    with private_plane(directory / "plane") as started, kueue(started, directory, QUOTA):
        yield started


@pytest.fixture
def cluster(plane: ControlPlane, request: pytest.FixtureRequest) -> Cluster:
    """A namespace Kueue manages, with the LocalQueue `cells`."""
    view = Cluster(plane, request.node.name.lower().replace("_", "-")[:40])
    view.core.patch_namespace(view.namespace, {"metadata": {"labels": MANAGED}})
    plane.apply([local_queue(view.namespace)])
    return view


def queued_run(tmp_path: Path, name: str, priority: str = "low") -> dict:
    """A 1x2 run in the LocalQueue, its cells' results already in its output."""
    document = manifest(
        tmp_path,
        name=name,
        cell={
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "labels": {"kueue.x-k8s.io/priority-class": priority},
        },
    )
    document["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: QUEUE}
    run_in_process(parse_run(document), resume=False)
    return document


def pods_of(cluster: Cluster, run: str) -> list[dict]:
    """The run's pods, those being deleted too."""
    return [
        p
        for p in cluster.items("pods")
        if p["metadata"].get("labels", {}).get("lipizzaner.io/run") == run
    ]


def live(cluster: Cluster, run: str) -> dict[int, dict]:
    return {
        int(p["metadata"]["labels"]["lipizzaner.io/cell"]): p
        for p in pods_of(cluster, run)
        if not p["metadata"].get("deletionTimestamp")
    }


def gated(pod: dict) -> bool:
    return any(g["name"] == GATE for g in pod["spec"].get("schedulingGates") or [])


def admitted(cluster: Cluster, run: str) -> dict[int, dict] | None:
    pods = live(cluster, run)
    return pods if len(pods) == 2 and not any(gated(p) for p in pods.values()) else None


def usage(plane: ControlPlane) -> dict[str, str]:
    """The ClusterQueue's reserved quota, by resource."""
    custom = client.CustomObjectsApi(plane.api_client())
    found = custom.get_cluster_custom_object(
        "kueue.x-k8s.io", "v1beta2", "clusterqueues", "cluster"
    )
    used = (found.get("status") or {}).get("flavorsReservation") or []
    return {r["name"]: r["total"] for f in used for r in f["resources"]}


def test_a_run_is_gated_until_admitted_and_a_failed_cell_is_replaced(plane, cluster, tmp_path):
    document = queued_run(tmp_path, "demo")
    with operator(cluster):
        cluster.create_run(document)
        pods = wait_for("two cell pods", lambda: len(live(cluster, "demo")) == 2)
        assert pods
        pods = wait_for("the group admitted: its gates lifted", lambda: admitted(cluster, "demo"))
        for index, pod in pods.items():
            cluster.set_pod_status(pod["metadata"]["name"], running(f"10.1.0.{index + 1}"))
        wait_for("Running", phase_is(cluster, "Running"))

        failed = pods[1]["metadata"]["name"]
        cluster.set_pod_status(failed, terminated("Failed", 1))

        def replaced() -> dict | None:
            pod = live(cluster, "demo").get(1)
            return pod if pod and pod["metadata"]["uid"] != pods[1]["metadata"]["uid"] else None

        new = wait_for("cell 1 replaced", replaced)
        wait_for(
            "the failed pod let go by Kueue",
            lambda: (
                failed not in {p["metadata"]["name"] for p in pods_of(cluster, "demo")}
                or new["metadata"]["name"] == failed
            ),
        )
        wait_for(  # the group is still admitted
            "the replacement ungated", lambda: admitted(cluster, "demo")
        )
        cluster.set_pod_status(new["metadata"]["name"], running("10.1.0.2"))
        for pod in live(cluster, "demo").values():
            cluster.set_pod_status(pod["metadata"]["name"], terminated("Succeeded", 0))
        status = wait_for("Succeeded", phase_is(cluster, "Succeeded"))
        assert status["cellRecords"][1]["restarts"] == 1
        wait_for("the quota freed", lambda: set(usage(plane).values()) <= {"0"})


def play_kubelet(cluster: Cluster, run: str) -> None:
    """What a kubelet does with a pod being deleted: stop its container, then remove it
    (a finalizer, Kueue's, may keep it a while longer)."""
    for pod in pods_of(cluster, run):
        meta = pod["metadata"]
        if not meta.get("deletionTimestamp"):
            continue
        try:
            if pod["status"].get("phase") not in ("Failed", "Succeeded"):
                cluster.set_pod_status(meta["name"], terminated("Failed", 143))
            cluster.core.delete_namespaced_pod(
                meta["name"], cluster.namespace, grace_period_seconds=0, _preload_content=False
            )
        except ApiException as exc:
            if exc.status != 404:  # gone meanwhile
                raise


def start_running(cluster: Cluster, run: str) -> dict[int, dict]:
    """Once the run's pods are admitted, play the kubelet: they run."""
    pods = wait_for(f"{run} admitted: its gates lifted", lambda: admitted(cluster, run))
    for index, pod in pods.items():
        cluster.set_pod_status(pod["metadata"]["name"], running(f"10.1.0.{index + 1}"))
    wait_for(f"{run} Running", phase_is(cluster, "Running", run))
    return pods


def finish(cluster: Cluster, run: str) -> dict:
    for pod in live(cluster, run).values():
        cluster.set_pod_status(pod["metadata"]["name"], terminated("Succeeded", 0))
    return wait_for(f"{run} Succeeded", phase_is(cluster, "Succeeded", run))


def test_a_run_beyond_the_quota_waits_says_so_and_runs_once_it_is_freed(plane, cluster, tmp_path):
    with operator(cluster):
        cluster.create_run(queued_run(tmp_path, "first"))
        start_running(cluster, "first")
        cluster.create_run(queued_run(tmp_path, "second"))
        waiting = wait_for(
            "the second run to say it waits for Kueue",
            lambda: "waiting for Kueue" in (m := cluster.status("second").get("message", "")) and m,
        )
        assert f"LocalQueue {QUEUE}" in waiting and cluster.status("second")["phase"] == "Pending"
        assert all(gated(p) for p in live(cluster, "second").values())

        finish(cluster, "first")  # its quota goes to the second run
        start_running(cluster, "second")
        cluster.custom.delete_namespaced_custom_object(
            "lipizzaner.io", "v1alpha1", cluster.namespace, "lipizzanerruns", "second"
        )

        def gone() -> bool:
            play_kubelet(cluster, "second")
            return cluster.run("second") is None and not pods_of(cluster, "second")

        wait_for("the deleted run and its pods gone", gone)
        wait_for("the quota freed", lambda: set(usage(plane).values()) <= {"0"})


def test_a_higher_priority_run_preempts_and_the_preempted_one_resumes(plane, cluster, tmp_path):
    with operator(cluster):
        cluster.create_run(queued_run(tmp_path, "low"))
        first = start_running(cluster, "low")
        cluster.create_run(queued_run(tmp_path, "urgent", priority="high"))

        def preempted() -> bool:
            play_kubelet(cluster, "low")
            pods = live(cluster, "low")
            uids = {p["metadata"]["uid"] for p in first.values()}
            return len(pods) == 2 and not uids & {p["metadata"]["uid"] for p in pods.values()}

        wait_for("the low run's cells stopped and replaced", preempted)
        assert all(gated(p) for p in live(cluster, "low").values())  # until re-admitted
        start_running(cluster, "urgent")
        finish(cluster, "urgent")

        start_running(cluster, "low")  # re-admitted once the quota is back
        status = finish(cluster, "low")
        records = status["cellRecords"]
        assert [r["disruptions"] for r in records] == [1, 1]
        assert [r["restarts"] for r in records] == [0, 0]  # preemption is not a failure
        reasons = [e.get("reason") for e in cluster.events()]
        assert "CellDisrupted" in reasons and "CellRestarted" not in reasons


def test_a_failed_run_frees_its_quota(plane, cluster, tmp_path):
    with operator(cluster):
        cluster.create_run(queued_run(tmp_path, "doomed"))
        pods = start_running(cluster, "doomed")
        cluster.set_pod_status(pods[0]["metadata"]["name"], terminated("Failed", 2))
        wait_for("Failed", phase_is(cluster, "Failed", "doomed"))

        def freed() -> bool:
            play_kubelet(cluster, "doomed")
            return set(usage(plane).values()) <= {"0"}

        wait_for("the quota freed", freed)
