"""A highly available operator: leader election over a Lease, on the real API server.

The pure rule, two electors racing for one Lease, and two real `lipizzaner-operator`
processes of which only the leader acts, the standby taking over when the leader dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

from envtest import Cluster, wait_for
from kubernetes import client
from lipizzaner_cell.executors.local_processes import free_port_block
from lipizzaner_operator.leader import LeaderElection, claim
from operator_harness import manifest, terminated

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def test_the_lease_rule():
    recent, stale = NOW - timedelta(seconds=3), NOW - timedelta(seconds=30)
    assert claim("me", recent, "me", NOW, 15) == "renew"
    assert claim("other", recent, "me", NOW, 15) == "wait"
    assert claim("other", stale, "me", NOW, 15) == "take"
    assert claim(None, None, "me", NOW, 15) == "take"


def elector(cluster: Cluster, identity: str) -> LeaderElection:
    return LeaderElection(
        client.CoordinationV1Api(cluster.api),
        cluster.namespace,
        "lipizzaner-operator",
        identity,
        lease_seconds=5.0,  # generous: a busy machine must not make the leader miss renewals
        renew_deadline_seconds=3.5,
        renew_seconds=0.3,
    )


def test_one_elector_leads_and_the_other_takes_over_when_it_stops(cluster):
    first, second = elector(cluster, "first"), elector(cluster, "second")
    stop_first, stop_second = threading.Event(), threading.Event()
    first.start(stop_first)
    wait_for("first leads", first.leading.is_set)
    second.start(stop_second)
    try:
        assert not second.leading.wait(2.0)  # the lease is held and renewed
        stop_first.set()  # the leader dies: it renews no more
        wait_for("second leads", second.leading.is_set, timeout=30)
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(
            "lipizzaner-operator", cluster.namespace
        )
        assert lease.spec.holder_identity == "second" and lease.spec.lease_transitions == 1
        assert not first.leading.is_set()
    finally:
        stop_first.set()
        stop_second.set()


def operator_process(cluster: Cluster, log) -> subprocess.Popen:
    """A real `lipizzaner-operator` replica with leader election and short timings."""
    command = [
        sys.executable,
        "-c",
        "from lipizzaner_operator.operator_main import main; main()",
        *("-n", cluster.namespace, "--leader-election", "--lease-namespace", cluster.namespace),
        *("--lease-seconds", "3", "--reconcile-seconds", "0.5", "--metrics-port", "0"),
        *("--liveness", f"http://127.0.0.1:{free_port_block(1)}/healthz"),
    ]
    env = {**os.environ, "KUBECONFIG": str(cluster.plane.kubeconfig)}
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def lease_holder(cluster: Cluster) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(
            "lipizzaner-operator", cluster.namespace
        )
    except client.exceptions.ApiException:
        return None
    return lease.spec.holder_identity


def test_two_operator_replicas_act_as_one_and_the_standby_takes_over(cluster, tmp_path):
    with ExitStack() as stack:
        logs = [stack.enter_context((tmp_path / f"op-{i}.log").open("w")) for i in range(2)]
        replicas = [operator_process(cluster, log) for log in logs]
        for process in replicas:
            stack.callback(process.wait, 30)
            stack.callback(process.kill)
        holder = wait_for("a leader", lambda: lease_holder(cluster))
        leader = next(p for p in replicas if holder.endswith(f"-{p.pid}"))
        standby = next(p for p in replicas if p is not leader)
        cluster.create_run(manifest(tmp_path, failurePolicy={"maxRestartsPerCell": 2}))
        first = wait_for("two pods", lambda: len(cluster.pods()) == 2 and cluster.pods())
        started = wait_for("status written", lambda: cluster.status("demo").get("startTime"))
        leader.send_signal(signal.SIGKILL)
        leader.wait(30)
        wait_for("the standby leads", lambda: lease_holder(cluster).endswith(f"-{standby.pid}"))
        cluster.set_pod_status("demo-cell-0", terminated("Failed", 1))
        old_uid = first[0]["metadata"]["uid"]
        wait_for(
            "cell 0 recreated by the new leader",
            lambda: (p := cluster.pods().get(0)) and p["metadata"]["uid"] != old_uid,
        )
        status = wait_for(
            "the restart counted once",
            lambda: (s := cluster.status("demo")).get("cells", {}).get("restarts") == 1 and s,
        )
        assert status["startTime"] == started  # the status went on where it was
        pods = wait_for(  # the failed pod deleted, its one replacement under a name of its own
            "the failed pod gone", lambda: len(p := cluster.items("pods")) == 2 and p
        )
        assert sorted(p["metadata"]["name"] for p in pods) == ["demo-cell-0-r1", "demo-cell-1"]
        events = [e for e in cluster.events() if e.get("reason") == "CellRestarted"]
        assert len(events) == 1 and events[0].get("count", 1) == 1  # acted on once
