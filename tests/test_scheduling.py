"""Where cells land: the real kube-scheduler places cell pods on fake GPU nodes.

The nodes are Node objects with `nvidia.com/gpu` capacity and a GPU taint, registered by
the test (no kubelet runs them). Pods of a run with the default GPU limit, a nodeSelector
and a toleration go to GPU nodes; when the GPUs run out, the other run's pods stay
Pending and its status says why.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from envtest import Cluster, wait_for
from kubernetes.client.exceptions import ApiException
from operator_harness import manifest, operator, phase_is

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(name: str, labels: dict[str, str], gpus: int) -> tuple[dict, dict]:
    """A Node object and the status a kubelet would report for it."""
    capacity = {"cpu": "16", "memory": "128Gi", "pods": "110"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "spec": {"taints": [GPU_TAINT] if gpus else []},
    }
    status = {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }
    return body, status


@pytest.fixture
def gpu_nodes(cluster: Cluster) -> Iterator[dict[str, str]]:
    """Two H100 nodes with one GPU each, and a CPU node; removed afterwards, with any pod
    bound to them (no kubelet would ever confirm those pods' deletion)."""
    suffix = uuid.uuid4().hex[:6]
    kinds = {f"gpu-a-{suffix}": 1, f"gpu-b-{suffix}": 1, f"cpu-{suffix}": 0}
    for name, gpus in kinds.items():
        body, status = node(name, {"gpu": "h100"} if gpus else {}, gpus)
        cluster.core.create_node(body, _preload_content=False)
        cluster.core.patch_node_status(name, {"status": status}, _preload_content=False)
        # The API server taints a new node not-ready; the node lifecycle controller would
        # lift that once the kubelet reports Ready. We are both: lift it.
        cluster.core.patch_node(name, {"spec": body["spec"]}, _preload_content=False)
    yield {name: "gpu" if gpus else "cpu" for name, gpus in kinds.items()}
    for pod in cluster.items("pods"):
        try:
            cluster.core.delete_namespaced_pod(
                pod["metadata"]["name"], cluster.namespace, grace_period_seconds=0
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
    for name in kinds:
        cluster.core.delete_node(name, _preload_content=False)


def placed(cluster: Cluster) -> dict[int, str]:
    return {i: p["spec"].get("nodeName", "") for i, p in cluster.pods().items()}


def test_cells_land_on_gpu_nodes_and_wait_when_the_gpus_run_out(cluster, gpu_nodes, tmp_path):
    placement = {
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    with operator(cluster):
        cluster.create_run(manifest(tmp_path, name="first", cell=placement))
        nodes = wait_for(
            "both cells bound to nodes",
            lambda: len(p := placed(cluster)) == 2 and all(p.values()) and p,
        )
        assert {gpu_nodes[name] for name in nodes.values()} == {"gpu"}
        assert len(set(nodes.values())) == 2  # one GPU each: one cell per node

        cluster.create_run(manifest(tmp_path, name="second", cell=placement))
        status = wait_for(
            "the second run to say why it waits",
            lambda: (
                "cannot be scheduled" in (s := cluster.status("second")).get("message", "") and s
            ),
        )
        assert status["phase"] == "Pending"
        assert "Insufficient nvidia.com/gpu" in status["message"]
        # One cell's condition, or both cells' said once when the scheduler has seen both.
        waiting = r"cells? 0(-1)?: cannot be scheduled: 0/3 nodes are available"
        assert re.search(waiting, status["message"])
        second = [p for p in cluster.items("pods") if p["metadata"]["name"].startswith("second")]
        assert [p["spec"].get("nodeName") for p in second] == [None, None]
        assert phase_is(cluster, "Pending", "first")()
