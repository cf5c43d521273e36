"""A big grid costs each cell only its neighbours, and the operator no more than a pass:
- a cell of a 32x32 grid starts with one puller (one channel, one DNS name) per
  neighbour, whatever the grid's size;
- packing cells into pods (`cellsPerPod`) holds at 32x32 in rendering and in decisions;
- a status pass over 1,024 cells takes what answered within its interval;
- 1,024 cells disrupted at once are one Event, not 1,024;
- a 16x16 run's status names 16 cells, and its ConfigMap every cell, and its passes
  read their pods from the watch-fed cache with a few requests each (the real API
  server, the real operator)."""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from conftest import TINY_RING, ring
from envtest import wait_for
from kubernetes.client.rest import RESTClientObject
from lipizzaner_cell.commands.cli import main
from lipizzaner_cell.runtime import peers
from lipizzaner_cell.runtime.cell_process import build_parser
from lipizzaner_core.contract import ExitCode
from lipizzaner_core.spec import parse_run
from lipizzaner_core.status import (
    RECORDS_KEY,
    STATUS_CELLS,
    CellRecord,
    RunStatus,
    decode_records,
    encode_records,
    notable,
)
from lipizzaner_operator import kube
from lipizzaner_operator.decision import aggregated
from lipizzaner_operator.observed import CellProgress, PodView
from lipizzaner_operator.reconcile import decide
from lipizzaner_operator.render import CellDefaults, render_pod
from operator_harness import manifest, operator, running, terminated

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def big_run(cells_per_pod: int = 1, neighbourhood: str = "von-neumann"):
    manifest = copy.deepcopy(TINY_RING)
    manifest["metadata"]["name"] = "big"
    manifest["spec"]["grid"] = {"rows": 32, "cols": 32, "neighbourhood": neighbourhood}
    manifest["spec"]["cell"] = {"cellsPerPod": cells_per_pod}
    return parse_run(manifest)


@pytest.mark.parametrize(("neighbourhood", "size"), [("von-neumann", 4), ("moore", 8)])
def test_a_cell_of_a_32x32_grid_starts_with_one_channel_per_neighbour(
    monkeypatch, neighbourhood, size
):
    run = big_run(neighbourhood=neighbourhood)
    template = "{pod}.big-cells.ml.svc:{port}"
    args = build_parser().parse_args(["--peer-template", template, "--cells", "0"])
    addresses: list[int] = []
    real = peers.peer_address
    monkeypatch.setattr(
        peers, "peer_address", lambda r, a, cell: addresses.append(cell) or real(r, a, cell)
    )
    dataset = ring()
    cell = 5 * 32 + 7  # row 5, col 7
    pullers = peers.neighbour_pullers(run, args, cell, dataset, None, None)
    expected = {n.index for n in run.spec.grid.topology().neighbours(cell)}
    assert len(pullers) == len(expected) == size
    assert sorted(addresses) == sorted(expected)  # a name looked up for each, no more
    assert {p.address.split(".")[0] for p in pullers.values()} == {
        f"big-cell-{i}" for i in expected
    }
    assert not any(p.is_alive() for p in pullers.values())  # started by the cell, later


def test_cells_packed_four_to_a_pod_at_32x32_make_256_pods_with_names_of_their_own():
    run = big_run(cells_per_pod=4)
    decision = decide(run, 1, RunStatus(), {}, {}, T0)
    assert decision.create == list(range(0, 1024, 4))
    pods = [render_pod(run, "ml", i, 0, CellDefaults()) for i in decision.create]
    names = {p["metadata"]["name"] for p in pods}
    assert len(names) == 256 and "big-cells-1020-1023" in names
    assert {p["spec"]["hostname"] for p in pods} == names
    running = {i: PodView(cell=i - i % 4, phase="Running") for i in range(1024)}
    status = decide(run, 1, decision.status, running, {}, T0).status
    assert status.cells.running == 1024 and status.phase == "Running"


def test_a_status_pass_over_many_cells_takes_what_answered_within_its_interval(monkeypatch):
    """Every cell that answers is heard; a pass with cells that hang returns at its
    interval with what did answer, instead of waiting for them."""
    release = threading.Event()

    def answer(address: str, timeout: float, tls=None) -> CellProgress | None:
        cell = int(address.split(":")[1]) - 50000
        if cell % 8 == 0:  # one in eight is unreachable: no answer within the timeout
            release.wait(timeout)
            return None
        return CellProgress(generation=cell)

    monkeypatch.setattr(kube, "cell_progress", answer)
    pods = {i: PodView(cell=i, phase="Running", ip="10.0.0.1") for i in range(1024)}
    answering = {i for i in range(1024) if i % 8}
    heard = kube.poll_cells(pods, lambda cell: 50000 + cell, 0.05, within=600)
    assert set(heard) == answering  # and it did not wait 600 s
    assert all(progress.generation == cell for cell, progress in heard.items())
    try:  # now the unreachable hang for good: the pass ends anyway, with what it heard
        partial = kube.poll_cells(pods, lambda cell: 50000 + cell, 3600, within=1.0)
    finally:
        release.set()
    assert set(partial) <= answering


def test_many_cells_disrupted_at_once_are_one_event():
    run = big_run()
    status = decide(run, 1, RunStatus(), {}, {}, T0).status
    running = {i: PodView(cell=i, phase="Running") for i in range(1024)}
    status = decide(run, 1, status, running, {}, T0).status
    preempted = {i: pod for i, pod in running.items() if i >= 8}  # cells 0-7 gone
    decision = decide(run, 1, status, preempted, {}, T0)
    assert [e.reason for e in decision.events].count("CellDisrupted") == 8
    (said,) = [e for e in aggregated(decision.events) if e.reason == "CellDisrupted"]
    assert said.message.startswith("8 cells (cells 0-7): cell 0 (row 0, col 0) was disrupted")
    few = {i: pod for i, pod in running.items() if i >= 2}
    decision = decide(run, 1, status, few, {}, T0)
    assert len([e for e in aggregated(decision.events) if e.reason == "CellDisrupted"]) == 2


def test_a_16x16_run_keeps_a_small_status_and_every_record_in_its_cells_config_map(
    cluster, tmp_path, monkeypatch, capsys
):
    """256 cells against the real API server: all their pods created, a status that
    names 16 cells whatever the grid, and every cell's record in the ConfigMap the status
    names, which `lipizzaner status --cells` reads."""
    document = manifest(tmp_path, name="wide", grid={"rows": 16, "cols": 16})
    with operator(cluster) as metrics:
        cluster.create_run(document)
        pods = wait_for("256 cell pods", lambda: len(p := cluster.pods()) == 256 and p)
        for index in range(0, 256, 2):  # half of them run
            cluster.set_pod_status(pods[index]["metadata"]["name"], running("10.1.0.1"))
        cluster.set_pod_status(pods[201]["metadata"]["name"], terminated("Failed", 1))
        status = wait_for(
            "cell 201's restart in the status",
            lambda: (
                (s := cluster.status("wide"))
                and any(
                    r["cell"] == 201 and r.get("restarts") == 1 for r in s.get("cellRecords", [])
                )
                and s
            ),
        )
        assert len(status["cellRecords"]) <= STATUS_CELLS
        assert status["cells"]["restarts"] == 1 and status["cells"]["running"] == 128
        assert status["cellsConfigMap"] == "wide-cells"
        size = len(json.dumps(cluster.run("wide"), separators=(",", ":")))
        assert size < 16_000  # and it does not grow with the grid
        data = cluster.core.read_namespaced_config_map("wide-cells", cluster.namespace).data
        records = decode_records(data[RECORDS_KEY])
        assert [r.cell for r in records] == list(range(256))
        assert records[201].restarts == 1 and records[200].phase == "Running"

        # The steady state: each pass reads its pods from the watch-fed cache, never lists
        # them, and makes a few requests whatever the grid.
        calls = counting_requests(monkeypatch)
        passes = lambda: metrics.registry.get_sample_value(PASSES)  # noqa: E731
        first, lists = passes(), metrics.registry.get_sample_value(POD_LISTS)
        wait_for("20 passes", lambda: passes() >= first + 20)
        made = Counter(calls)
        assert metrics.registry.get_sample_value(POD_LISTS) == lists
        assert not [call for call in made if call.startswith("GET ") and call.endswith("/pods")]
        assert sum(made.values()) / (passes() - first) <= 6, made

    monkeypatch.setenv("KUBECONFIG", str(cluster.plane.kubeconfig))
    args = ["status", "wide", "-n", cluster.namespace, "--cells", "--json"]
    assert main(args) == ExitCode.OK
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["cells"]) == 256 and shown["cells"][201]["restarts"] == 1


PASSES = "lipizzaner_operator_reconcile_seconds_count"
POD_LISTS = "lipizzaner_operator_pod_lists_total"


def counting_requests(monkeypatch) -> Counter[str]:
    """From now on, every request this process's kubernetes client makes (the operator's),
    as "VERB path", a watch as WATCH."""
    calls: Counter[str] = Counter()
    request = RESTClientObject.request

    def counted(self, method, url, query_params=None, *args, **kwargs):
        verb = "WATCH" if dict(query_params or []).get("watch") else method
        calls[f"{verb} {urlsplit(url).path}"] += 1
        return request(self, method, url, query_params, *args, **kwargs)

    monkeypatch.setattr(RESTClientObject, "request", counted)
    return calls


def test_the_status_names_the_cells_in_trouble_first_then_the_best():
    records = [CellRecord(cell=i, phase="Running", score=1.0 + i / 1000) for i in range(1024)]
    records[700] = CellRecord(cell=700, phase="Failed", restarts=3, message="gave up")
    records[5] = CellRecord(cell=5, phase="Restarting", restarts=1)
    records[9] = CellRecord(cell=9, phase="Running", disruptions=2, score=9.0)
    records[300] = CellRecord(cell=300, phase="Pending", message="cannot be scheduled")
    shown = notable(records)
    assert len(shown) == STATUS_CELLS and [r.cell for r in shown] == sorted(r.cell for r in shown)
    assert {5, 9, 300, 700} <= {r.cell for r in shown}
    best = {r.cell for r in shown} - {5, 9, 300, 700}
    assert best == {0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13}  # the lowest scores
    assert notable(records[:16]) == records[:16]  # a small grid: every cell
    assert decode_records(encode_records(records)) == records
    assert len(encode_records(records)) < 64 * 1024
