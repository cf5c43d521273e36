"""Faults on the real node: a cell's process killed by the runtime, a pod deleted or
evicted, the operator's own pod killed, a run suspended and resumed, a finished run's
time to live, and a node whose kubelet stops answering, each with real containers, real
signals, a real garbage collector and the real node lifecycle controller."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from e2e.fixtures import (
    OPERATOR_NAMESPACE,
    all_running,
    apply_run,
    cell_pods,
    describe,
    generations,
    operator_pods,
    status,
    succeeded,
    tiny_run,
)
from e2e.node import Node
from envtest import wait_for
from heartbeats import Heartbeats
from kubernetes import client, config

# Long enough to be hit mid-run, short enough for CI: on an idle 2-core machine a pod's
# generation took 0.7 s, and 16 generations ended before a kill after generation 3 landed;
# 40 leave the tests 25 s or more. Checkpoints every 2 generations, so a restart has one
# to resume from.
LONGER = {"generations": 40, "checkpoint": {"every": 2}}


def past_generation(node: Node, namespace: str, run: str, generation: int) -> bool:
    done = generations(node, namespace, run)
    return len(done) == 4 and min(done.values()) >= generation


def pods_by_cell(node: Node, namespace: str, run: str) -> dict[int, dict]:
    """The run's latest pods that are not being deleted, by cell (a replacement pod has a
    name of its own, `<run>-cell-<i>-r<k>`, and label `lipizzaner.io/replacement: k`)."""
    pods = sorted(
        (p for p in cell_pods(node, namespace, run) if not p["metadata"].get("deletionTimestamp")),
        key=lambda p: int(p["metadata"]["labels"].get("lipizzaner.io/replacement", 0)),
    )
    return {int(p["metadata"]["labels"]["lipizzaner.io/cell"]): p for p in pods}


def running_container(node: Node, namespace: str, run: str, cell: int) -> tuple[dict, str] | None:
    """The cell's pod and its running container's id in containerd, once it runs."""
    pod = pods_by_cell(node, namespace, run).get(cell)
    statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
    if not statuses or "running" not in (statuses[0].get("state") or {}):
        return None
    return pod, statuses[0]["containerID"].removeprefix("containerd://")


def uids(node: Node, namespace: str, run: str) -> dict[int, str]:
    return {cell: p["metadata"]["uid"] for cell, p in pods_by_cell(node, namespace, run).items()}


def test_a_cell_killed_by_the_runtime_is_restarted_from_its_checkpoint_and_counted(
    operator: Node, namespace: str
):
    node = operator
    apply_run(node, namespace, tiny_run(node, namespace, name="killed", **LONGER))
    wait_for("every cell past generation 3", lambda: past_generation(node, namespace, "killed", 3))
    pod, container = wait_for(
        "cell 0's container running", lambda: running_container(node, namespace, "killed", 0)
    )
    killed = node.ctr("tasks", "kill", "--signal", "SIGKILL", container, check=False)
    assert killed.returncode == 0, killed.stderr + describe(node, namespace)
    wait_for(
        "cell 0's pod recreated",
        lambda: uids(node, namespace, "killed").get(0) not in (None, pod["metadata"]["uid"]),
    )
    done = succeeded(node, namespace, "killed")
    assert done["cells"]["restarts"] == 1 and done["cells"]["disruptions"] == 0
    record = next(r for r in done["cellRecords"] if r["cell"] == 0)
    assert record["restarts"] == 1
    replacement = pods_by_cell(node, namespace, "killed")[0]["metadata"]["name"]
    assert replacement == "killed-cell-0-r1"
    log = node.kubectl("logs", "-n", namespace, replacement).stdout
    assert "resumed from its checkpoint at generation" in log, log
    events = node.get("events", "-n", namespace)["items"]
    assert any(e["reason"] == "CellRestarted" and "(exit code 137)" in e["message"] for e in events)


def test_a_deleted_and_an_evicted_pod_are_disruptions_not_restarts(operator: Node, namespace: str):
    node = operator
    run = tiny_run(
        node, namespace, name="disrupted", failurePolicy={"maxRestartsPerCell": 0}, **LONGER
    )
    apply_run(node, namespace, run)
    wait_for(
        "every cell past generation 3", lambda: past_generation(node, namespace, "disrupted", 3)
    )
    before = uids(node, namespace, "disrupted")
    node.kubectl("delete", "pod", "disrupted-cell-1", "-n", namespace, "--wait=false")
    eviction = node.directory / f"eviction-{namespace}.json"
    eviction.write_text(
        json.dumps(
            {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": "disrupted-cell-2", "namespace": namespace},
            }
        )
    )
    node.kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{namespace}/pods/disrupted-cell-2/eviction",
        "-f",
        str(eviction),
    )
    wait_for(
        "both pods recreated",
        lambda: (
            (now := uids(node, namespace, "disrupted"))
            and all(now.get(cell) not in (None, before[cell]) for cell in (1, 2))
        ),
    )
    done = succeeded(node, namespace, "disrupted")
    assert done["cells"]["disruptions"] == 2 and done["cells"]["restarts"] == 0
    evicted = next(r for r in done["cellRecords"] if r["cell"] == 2)
    assert evicted["disruptions"] == 1
    # Each a CellDisrupted Event, none a restart. (Its message names the eviction when a
    # pass saw the pod on its way out; a cell that stops at once may be gone before the
    # next pass, and is then "gone": tests/test_reconcile.py checks the wording.)
    events = node.get("events", "-n", namespace)["items"]
    said = [e["message"] for e in events if e["reason"] == "CellDisrupted"]
    assert sorted(m.split(" (row")[0] for m in said) == ["cell 1", "cell 2"], said
    assert not [e for e in events if e["reason"] == "CellRestarted"]


def test_the_operators_pod_killed_mid_run_is_replaced_and_the_run_completes(
    operator: Node, namespace: str
):
    node = operator
    apply_run(node, namespace, tiny_run(node, namespace, name="orphaned", **LONGER))
    wait_for("four cells Running", lambda: all_running(node, namespace, "orphaned"))
    before = uids(node, namespace, "orphaned")
    (killed,) = operator_pods(node)
    node.kubectl(
        "delete",
        "pod",
        killed["metadata"]["name"],
        "-n",
        OPERATOR_NAMESPACE,
        "--grace-period=0",
        "--force",
    )
    wait_for(
        "a new operator pod, ready",
        lambda: any(
            p["metadata"]["uid"] != killed["metadata"]["uid"]
            for p in operator_pods(node, ready=True)
        ),
    )
    done = succeeded(node, namespace, "orphaned")
    assert done["cells"]["restarts"] == 0 and done["cells"]["disruptions"] == 0
    # The new operator adopted the cells' pods: none was recreated, none duplicated.
    assert uids(node, namespace, "orphaned") == before


def test_suspend_stops_real_cells_at_a_checkpoint_and_resume_goes_on_from_it(
    operator: Node, namespace: str
):
    node = operator
    apply_run(node, namespace, tiny_run(node, namespace, name="paused", **LONGER))
    wait_for("every cell past generation 3", lambda: past_generation(node, namespace, "paused", 3))
    patch = ["patch", "lpz", "paused", "-n", namespace, "--type=merge", "-p"]
    node.kubectl(*patch, '{"spec": {"suspend": true}}')
    wait_for("no cell pods", lambda: cell_pods(node, namespace, "paused") == [])
    assert wait_for(
        "Suspended", lambda: status(node, namespace, "paused").get("phase") == "Suspended"
    )
    node.kubectl(*patch, '{"spec": {"suspend": false}}')
    done = succeeded(node, namespace, "paused")
    assert done["cells"]["restarts"] == 0
    for cell in range(4):
        log = node.kubectl("logs", "-n", namespace, f"paused-cell-{cell}").stdout
        assert "resumed from its checkpoint at generation" in log, log


def test_a_finished_runs_time_to_live_deletes_it_and_its_pods(operator: Node, namespace: str):
    node = operator
    apply_run(node, namespace, tiny_run(node, namespace, name="brief", ttlSecondsAfterFinished=5))
    wait_for("four cells Running", lambda: all_running(node, namespace, "brief"))
    wait_for(
        "the run and its pods deleted",
        lambda: (
            node.kubectl("get", "lpz", "brief", "-n", namespace, check=False).returncode != 0
            and cell_pods(node, namespace, "brief") == []
        ),
        timeout=600,
    )


def test_cells_on_a_node_that_stops_answering_are_force_deleted_and_recreated(
    operator: Node, namespace: str
):
    """The kubelet frozen (SIGSTOP): the node lifecycle controller marks the node
    unreachable, the taint manager deletes the cells' pods, which stay Terminating (no
    kubelet to confirm it), and after `lostNodeSeconds` the operator force-deletes them and
    creates their replacements. Once the kubelet answers again they run, resume from
    their checkpoints, and the run completes; every cell was disrupted, none restarted.

    A second node, which the test keeps alive and no pod may use, stands for the rest of
    a cluster: when every node of a cluster stops answering, the node lifecycle
    controller takes it for the control plane's own trouble ("master disruption mode"),
    lifts the taints and evicts nothing, so on one node alone nothing would be deleted."""
    node = operator
    tolerations = [
        {"key": f"node.kubernetes.io/{key}", "operator": "Exists", "effect": "NoExecute"}
        | {"tolerationSeconds": 1}
        for key in ("unreachable", "not-ready")
    ]
    # LONGER outlasts the 30 s until the node is marked unreachable (hack/cluster.sh).
    run = tiny_run(node, namespace, name="stranded", failurePolicy={"lostNodeSeconds": 5}, **LONGER)
    run["spec"]["cell"]["tolerations"] = tolerations
    apply_run(node, namespace, run)
    wait_for(
        "every cell past generation 3", lambda: past_generation(node, namespace, "stranded", 3)
    )
    before = uids(node, namespace, "stranded")
    pids = dict(line.split() for line in (node.directory / "node-pids").read_text().splitlines())
    kubelet = int(pids["kubelet"])
    core = client.CoreV1Api(config.new_client_from_config(str(node.kubeconfig)))
    keep_off = [{"key": "lipizzaner.io/witness", "effect": "NoSchedule"}]
    witness = Heartbeats(core, ["lipizzaner-witness"], taints=keep_off)
    os.kill(kubelet, signal.SIGSTOP)
    try:
        wait_for(
            "every cell's pod force-deleted and replaced",
            lambda: (
                (now := uids(node, namespace, "stranded")).keys() == before.keys()
                and not set(now.values()) & set(before.values())
            ),
            timeout=600,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{without_the_kubelet(node, namespace)}") from None
    finally:
        os.kill(kubelet, signal.SIGCONT)
        witness.close()
    done = succeeded(node, namespace, "stranded")
    # Every cell disrupted, none restarted. (A replacement may be evicted once more: placed
    # the moment the node answers again, it can meet the unreachable taint before the node
    # lifecycle controller has lifted it, and it tolerates that for 1 s only.)
    assert done["cells"]["restarts"] == 0
    assert all(r["disruptions"] >= 1 and r["restarts"] == 0 for r in done["cellRecords"])
    events = node.get("events", "-n", namespace)["items"]
    lost = [e for e in events if e["reason"] == "CellNodeLost"]
    assert lost and "lipizzaner-node is not Ready" in lost[0]["message"]
    for cell, pod in pods_by_cell(node, namespace, "stranded").items():
        log = node.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout
        assert "resumed from its checkpoint at generation" in log, (cell, log)


def without_the_kubelet(node: Node, namespace: str) -> str:
    """What to read when the lost node was not handled, asking only the API server (the
    kubelet is frozen, so no `kubectl logs`): the pods, the node, the Events, and the
    operator's log from the node's disk."""
    columns = (
        "custom-columns=NAME:.metadata.name,PHASE:.status.phase,"
        "DELETING:.metadata.deletionTimestamp,NODE:.spec.nodeName"
    )
    lines = [node.kubectl("get", "pods", "-n", namespace, "-o", columns).stdout]
    for each in node.get("nodes")["items"]:
        lines.append(each["metadata"]["name"])
        lines.append(json.dumps(each["spec"].get("taints"), indent=1))
        lines.append(json.dumps(each["status"]["conditions"], indent=1))
    lines.append(node.kubectl("get", "events", "-n", namespace).stdout)
    for log in sorted(Path("/var/log/pods").glob(f"{OPERATOR_NAMESPACE}_*/*/*.log")):
        lines.append(f"{log}:\n" + "\n".join(log.read_text().splitlines()[-60:]))
    return "\n".join(lines)
