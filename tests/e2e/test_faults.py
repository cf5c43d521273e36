"""Faults on the real node: a cell's process killed by the runtime, a pod deleted or
evicted, the operator's own pod killed, a run suspended and resumed, and a finished run's
time to live, each with real containers, real signals and a real garbage collector."""

from __future__ import annotations

import json

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

# Long enough to be hit mid-run (a few seconds a generation in pods on 2 cores), short
# enough for CI: checkpoints every 2 generations, so a restart has one to resume from.
LONGER = {"generations": 16, "checkpoint": {"every": 2}}


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
