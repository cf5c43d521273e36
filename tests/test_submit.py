"""`lipizzaner submit`, `status`, `logs` and `delete` against the real API server
(hack/envtest.sh).

No operator and no kubelet run here: the test plays the operator, writing the run's status
and Events as it would, and checks what a CI job sees: output, exit codes, the JSON result.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RING
from envtest import GROUP, PLURAL, VERSION, Cluster, wait_for
from lipizzaner_cell.commands.cli import main
from lipizzaner_core.contract import ExitCode


@pytest.fixture
def kubeconfig(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    monkeypatch.setenv("KUBECONFIG", str(cluster.plane.kubeconfig))
    return cluster


def manifest_file(tmp_path: Path, name: str = "tiny") -> Path:
    document = copy.deepcopy(TINY_RING)
    document["metadata"]["name"] = name
    document["spec"]["output"] = {"uri": f"file://{tmp_path}/out/{{name}}"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def play_operator(cluster: Cluster, name: str, phase: str, score: float | None) -> threading.Thread:
    """In the background: once the run exists, report progress, an Event, then the end."""

    def write(status: dict) -> None:
        cluster.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, cluster.namespace, PLURAL, name, {"status": status}
        )

    def act() -> None:
        run = wait_for(f"run {name}", lambda: cluster.run(name))
        write({"phase": "Running", "grid": "2x2", "generation": {"min": 1, "max": 2}})
        cluster.core.create_namespaced_event(
            cluster.namespace,
            {
                "metadata": {"name": f"{name}.restart"},
                "involvedObject": {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "LipizzanerRun",
                    "name": name,
                    "namespace": cluster.namespace,
                    "uid": run["metadata"]["uid"],
                },
                "type": "Warning",
                "reason": "CellRestarted",
                "message": "cell 3 exited with 1; recreated (1/3)",
            },
        )
        end = {"phase": phase, "message": f"the run {phase.lower()}"}
        if score is not None:
            end |= {"bestScore": score, "ensemble": {"uri": f"file:///out/{name}/ensemble"}}
        write({**end, "generation": {"min": 4, "max": 4}})

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def test_submit_creates_the_run_and_status_reads_it(kubeconfig, tmp_path, capsys):
    namespace = kubeconfig.namespace
    assert main(["submit", str(manifest_file(tmp_path)), "-n", namespace]) == ExitCode.OK
    assert f"created LipizzanerRun tiny in namespace {namespace}" in capsys.readouterr().out
    created = kubeconfig.run("tiny")
    assert created["spec"]["generations"] == TINY_RING["spec"]["generations"]
    assert main(["status", "tiny", "-n", namespace, "--json"]) == ExitCode.OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["phase"] == "Pending" and summary["ensemble"] is None
    assert summary["output"] == f"file://{tmp_path}/out/tiny"


def test_submit_wait_follows_the_run_to_its_ensemble(kubeconfig, tmp_path, capsys):
    result = tmp_path / "result.json"
    operator = play_operator(kubeconfig, "tiny", "Succeeded", 0.42)
    code = main(
        [
            *("submit", str(manifest_file(tmp_path)), "-n", kubeconfig.namespace),
            *("--wait", "--timeout", "120", "--max-score", "0.5", "--result", str(result)),
        ]
    )
    operator.join(timeout=60)
    said = capsys.readouterr()
    assert code == ExitCode.OK, said.err
    assert "tiny succeeded: ensemble file:///out/tiny/ensemble, best score 0.42" in said.out
    assert "Warning CellRestarted: cell 3 exited with 1; recreated (1/3)" in said.err
    assert "tiny: Succeeded, generation 4-4/4" in said.err
    outcome = json.loads(result.read_text())
    assert outcome["phase"] == "Succeeded" and outcome["bestScore"] == 0.42
    assert outcome["ensemble"] == "file:///out/tiny/ensemble"


@pytest.mark.parametrize(
    ("phase", "score", "extra", "said"),
    [
        ("Failed", None, [], "tiny Failed: the run failed"),
        ("Succeeded", 0.42, ["--max-score", "0.1"], "best score 0.42 is above --max-score 0.1"),
    ],
)
def test_a_failed_run_or_a_missed_score_exits_1(
    kubeconfig, tmp_path, capsys, phase, score, extra, said
):
    operator = play_operator(kubeconfig, "tiny", phase, score)
    path = str(manifest_file(tmp_path))
    code = main(["submit", path, "-n", kubeconfig.namespace, "--wait", *extra])
    operator.join(timeout=60)
    assert code == ExitCode.FAILED
    assert said in capsys.readouterr().err


def test_refused_runs_exit_2_with_the_reason(kubeconfig, tmp_path, capsys, monkeypatch):
    namespace = kubeconfig.namespace
    path = str(manifest_file(tmp_path))
    assert main(["submit", path, "-n", namespace]) == ExitCode.OK
    assert main(["submit", path, "-n", namespace]) == ExitCode.BAD_INPUT
    assert 'lipizzanerruns.lipizzaner.io "tiny" already exists' in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: lipizzaner.io/v1alpha1\n")
    assert main(["submit", str(bad), "-n", namespace]) == ExitCode.BAD_INPUT
    assert main(["status", "nothing", "-n", namespace]) == ExitCode.BAD_INPUT
    assert f"no LipizzanerRun nothing in namespace {namespace}" in capsys.readouterr().err
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    assert main(["submit", path, "-n", namespace]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "no usable Kubernetes configuration" in err and "Traceback" not in err


def test_waiting_past_the_timeout_exits_3_and_leaves_the_run(kubeconfig, tmp_path, capsys):
    path = str(manifest_file(tmp_path))
    code = main(["submit", path, "-n", kubeconfig.namespace, "--wait", "--timeout", "1"])
    assert code == ExitCode.TIMED_OUT
    assert "tiny is still Pending after 1 s; it goes on" in capsys.readouterr().err
    assert kubeconfig.run("tiny") is not None


def test_logs_come_from_the_runs_output(kubeconfig, tmp_path, capsys):
    namespace = kubeconfig.namespace
    assert main(["submit", str(manifest_file(tmp_path)), "-n", namespace]) == ExitCode.OK
    assert main(["logs", "tiny", "-n", namespace]) == ExitCode.FAILED  # nothing kept yet
    cells = tmp_path / "out" / "tiny" / "cells"
    for cell, attempt in ((0, 0), (0, 1), (1, 0)):
        folder = cells / str(cell) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"attempt-{attempt}.log").write_text(f"cell {cell} start {attempt}\n")
    capsys.readouterr()
    assert main(["logs", "tiny", "-n", namespace]) == ExitCode.OK
    printed = capsys.readouterr().out
    assert "== cell 0, attempt 1 ==\ncell 0 start 1" in printed
    assert "cell 1 start 0" in printed and "cell 0 start 0" not in printed
    assert main(["logs", "tiny", "-n", namespace, "--cell", "0", "--attempt", "0"]) == 0
    assert capsys.readouterr().out.strip().endswith("cell 0 start 0")


def test_the_python_executor_runs_waits_and_times_out(kubeconfig, tmp_path):
    """docs/operator.md's snippet: the Kubernetes executor, torch-free."""
    from lipizzaner_cell.executors.kubernetes import KubernetesExecutor, RunRefused
    from lipizzaner_core.spec import load_run

    runs = KubernetesExecutor.connect(namespace=kubeconfig.namespace)
    run = load_run(manifest_file(tmp_path))
    assert runs.run(run).phase == "Pending"
    with pytest.raises(RunRefused, match="already exists"):
        runs.run(run)
    with pytest.raises(TimeoutError, match=r"tiny is still Pending after 0\.5 s"):
        runs.wait("tiny", timeout=0.5, poll_seconds=0.1)
    operator = play_operator(kubeconfig, "tiny", "Succeeded", 0.25)
    view = runs.wait("tiny", timeout=120, poll_seconds=0.2)
    operator.join(timeout=60)
    assert view.summary()["ensemble"] == "file:///out/tiny/ensemble"
    assert view.status.best_score == 0.25
    assert [e["reason"] for e in runs.events("tiny")] == ["CellRestarted"]


def test_delete_removes_the_run_from_the_cluster(kubeconfig, tmp_path, capsys):
    namespace = kubeconfig.namespace
    assert main(["submit", str(manifest_file(tmp_path)), "-n", namespace]) == ExitCode.OK
    assert main(["delete", "tiny", "-n", namespace]) == ExitCode.OK
    assert "tiny: stopped; its output stays" in capsys.readouterr().out
    wait_for("the run to be gone", lambda: kubeconfig.run("tiny") is None)
    assert main(["delete", "tiny", "-n", namespace]) == ExitCode.BAD_INPUT
    assert f"no LipizzanerRun tiny in namespace {namespace}" in capsys.readouterr().err
