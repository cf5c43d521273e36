"""Recovery on a control plane of this module's own, with the controllers a cluster runs
against lost nodes: the node lifecycle controller (it marks a node that stops posting
heartbeats unreachable and taints it) and the taint eviction controller (it deletes the
node's pods, which then stay Terminating: no kubelet will ever confirm it).

- A cell on a lost node is force-deleted after `failurePolicy.lostNodeSeconds` and
  recreated on a node that is alive, as a disruption.
- An API server frozen with SIGSTOP: the operator's liveness endpoint fails while its
  watch is out of step, and once the API server goes on, the operator reconciles a run
  created after the freeze by itself.

The nodes are Node objects whose heartbeats the test posts (no kubelet runs them); the
freeze would stop every other test's API server, hence a control plane of their own.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from envtest import Cluster, ControlPlane, private_plane, wait_for
from heartbeats import Heartbeats
from lipizzaner_cell.executors.local_processes import free_port_block
from lipizzaner_operator.pod_cache import WatchTimeouts
from operator_harness import manifest, operator, running

# A node is unreachable 5 s after its last heartbeat (the default is 50 s).
NODE_FLAGS = "--node-monitor-grace-period=5s --node-monitor-period=1s"


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> Iterator[ControlPlane]:
    with private_plane(
        tmp_path_factory.mktemp("recovery"),
        controllers="node-lifecycle-controller,taint-eviction-controller",
        controller_flags=NODE_FLAGS,
    ) as started:
        yield started


@pytest.fixture
def cluster(plane: ControlPlane, request: pytest.FixtureRequest) -> Cluster:
    return Cluster(plane, request.node.name.lower().replace("_", "-")[:40])


def test_a_cell_on_a_lost_node_is_force_deleted_and_recreated_elsewhere(cluster, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    nodes = Heartbeats(cluster.core, [f"node-a-{suffix}", f"node-b-{suffix}"])
    # Cells tolerate an unreachable node for 1 s (the default is 300 s), then are evicted.
    tolerations = [
        {"key": f"node.kubernetes.io/{key}", "operator": "Exists", "effect": "NoExecute"}
        | {"tolerationSeconds": 1}
        for key in ("unreachable", "not-ready")
    ]
    run = manifest(
        tmp_path,
        cell={"tolerations": tolerations},
        failurePolicy={"lostNodeSeconds": 3},
    )
    try:
        with operator(cluster):
            cluster.create_run(run)

            def bound() -> dict[int, str] | None:
                placed = {i: p["spec"].get("nodeName") for i, p in cluster.pods().items()}
                return placed if len(placed) == 2 and all(placed.values()) else None

            placed = wait_for("both cells placed on a node", bound)
            for index in placed:
                cluster.set_pod_status(f"demo-cell-{index}", running(f"10.1.0.{index + 1}"))
            lost, first = placed[0], cluster.pods()[0]["metadata"]["uid"]
            nodes.stop(lost)

            def replaced() -> str | None:
                pod = cluster.pods().get(0)
                if pod is None or pod["metadata"]["uid"] == first:
                    return None
                return pod["spec"].get("nodeName")

            elsewhere = wait_for("cell 0 recreated on a node that is alive", replaced)
            assert elsewhere != lost
            reasons = [e.get("reason") for e in cluster.events()]
            assert "CellNodeLost" in reasons
            lost_events = [e for e in cluster.events() if e.get("reason") == "CellNodeLost"]
            assert lost in lost_events[0]["message"]
            records = {r["cell"]: r for r in cluster.status("demo")["cellRecords"]}
            assert records[0]["disruptions"] == 1 and records[0]["restarts"] == 0
    finally:
        nodes.close()


def healthz(url: str) -> int:
    """The liveness endpoint's HTTP status (0: no answer in time)."""
    try:
        with urllib.request.urlopen(url, timeout=20) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, TimeoutError):
        return 0


def test_the_operator_outlives_a_frozen_api_server_and_sees_runs_made_after(
    plane, cluster, tmp_path
):
    port = free_port_block(1)
    url = f"http://127.0.0.1:{port}/healthz"
    timeouts = WatchTimeouts(server=10, client=12, connect=3)
    with operator(cluster, liveness=url, watch_liveness_seconds=5, timeouts=timeouts):
        cluster.create_run(manifest(tmp_path, name="before"))
        wait_for("the first run reconciled", lambda: cluster.status("before").get("phase"))
        wait_for("a healthy operator", lambda: healthz(url) == 200)

        api_server = plane.pid("kube-apiserver")
        os.kill(api_server, signal.SIGSTOP)  # (a test stopped here: `stop` sends SIGCONT)
        try:
            frozen_at = time.monotonic()
            wait_for("the liveness endpoint to fail", lambda: healthz(url) == 500, timeout=120)
            assert time.monotonic() - frozen_at >= 5  # not before the bound
        finally:
            os.kill(api_server, signal.SIGCONT)

        cluster.create_run(manifest(tmp_path, name="after"))
        wait_for("the run made after the freeze reconciled", lambda: cluster.status("after"))
        wait_for("the liveness endpoint healthy again", lambda: healthz(url) == 200)
