"""How `lipizzaner run` stops: signals, a killed launcher, a second run on the same output,
and the logs of every start kept."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import wait_until
from lipizzaner_cell.commands.cli import main
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.storage import Storage

DEADLINE = 240.0  # generous: the suite must pass with the other core busy


def long_run(tiny_manifest: dict, tmp_path: Path, generations: int = 5000) -> Path:
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["generations"] = generations
    manifest["spec"]["exchange"] = {"firstStateTimeoutSeconds": 20}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def launch(spec: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "lipizzaner_cell.commands.cli", "run", str(spec), "-q", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def layout_of(tmp_path: Path) -> RunLayout:
    return RunLayout(str(tmp_path / "out"), Storage())


def all_checkpointed(layout: RunLayout, cells: int = 4) -> bool:
    return all(layout.cell(c).completed_checkpoints() for c in range(cells))


def cell_processes(output: Path) -> list[int]:
    """Pids of cell processes writing into `output`."""
    found = subprocess.run(["pgrep", "-f", f"lipizzaner_cell.*{output}"], capture_output=True)
    return [int(pid) for pid in found.stdout.split()]


def test_sigterm_stops_every_cell_at_a_checkpoint_and_a_resume_keeps_the_first_log(
    tiny_manifest, tmp_path
):
    spec, layout = long_run(tiny_manifest, tmp_path), layout_of(tmp_path)
    launcher = launch(spec)
    assert wait_until(lambda: all_checkpointed(layout)), "cells never checkpointed"
    launcher.send_signal(signal.SIGTERM)
    printed, _ = launcher.communicate(timeout=DEADLINE)
    assert launcher.returncode == 143, printed
    assert "stopped by SIGTERM" in printed and "Traceback" not in printed
    assert cell_processes(tmp_path / "out") == []
    assert not (tmp_path / "out" / "lease.json").exists()
    first_logs = {}
    for cell in range(4):
        log = Path(layout.cell(cell).log(0))
        assert "stopped by SIGTERM at generation" in log.read_text()
        first_logs[cell] = log.read_bytes()
    reached = min(int(layout.cell(c).completed_checkpoints()[-1]) for c in range(4))
    resumed = launch(spec, "--generations", str(reached + 2))
    printed, _ = resumed.communicate(timeout=DEADLINE)
    assert resumed.returncode == 0, printed
    for cell in range(4):
        assert Path(layout.cell(cell).log(0)).read_bytes() == first_logs[cell]
        assert "resumed from its checkpoint" in Path(layout.cell(cell).log(1)).read_text()


def test_ctrl_c_exits_130(tiny_manifest, tmp_path):
    spec, layout = long_run(tiny_manifest, tmp_path), layout_of(tmp_path)
    launcher = launch(spec)
    assert wait_until(lambda: all_checkpointed(layout))
    launcher.send_signal(signal.SIGINT)
    printed, _ = launcher.communicate(timeout=DEADLINE)
    assert launcher.returncode == 130, printed
    assert cell_processes(tmp_path / "out") == []


def test_cells_of_a_killed_launcher_stop_by_themselves_at_a_checkpoint(tiny_manifest, tmp_path):
    spec, layout = long_run(tiny_manifest, tmp_path), layout_of(tmp_path)
    launcher = launch(spec)
    assert wait_until(lambda: all_checkpointed(layout))
    assert len(cell_processes(tmp_path / "out")) == 4
    launcher.kill()
    launcher.communicate(timeout=DEADLINE)
    assert wait_until(lambda: not cell_processes(tmp_path / "out")), "orphaned cells train on"
    for cell in range(4):
        log = Path(layout.cell(cell).log(0)).read_text()
        assert "the launcher" in log and "stopping at a checkpoint" in log


def test_a_second_run_on_a_live_output_is_refused_naming_the_holder(tiny_manifest, tmp_path):
    spec, layout = long_run(tiny_manifest, tmp_path), layout_of(tmp_path)
    launcher = launch(spec)
    try:
        assert wait_until(lambda: all_checkpointed(layout))
        second = subprocess.run(
            [sys.executable, "-m", "lipizzaner_cell.commands.cli", "run", str(spec), "-q"],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert second.returncode == 2
        line = second.stderr.strip()
        assert len(line.splitlines()) == 1 and f"pid {launcher.pid}" in line, line
        assert "lease.json" in line
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.communicate(timeout=DEADLINE)
    assert launcher.returncode == 143  # the first run was not disturbed
    assert not (tmp_path / "out" / "lease.json").exists()


@pytest.mark.parametrize("holder", ["dead pid here", "silent elsewhere", "damaged"])
def test_a_stale_lease_is_taken_over_and_said(tiny_manifest, tmp_path, caplog, holder):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["generations"] = 1
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(manifest))
    lease = tmp_path / "out" / "lease.json"
    lease.parent.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    stale = {
        "dead pid here": {"host": socket.gethostname(), "pid": int(dead), "heartbeat": time.time()},
        "silent elsewhere": {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600},
    }
    lease.write_text("{ torn" if holder == "damaged" else json.dumps(stale[holder]))
    assert main(["run", str(spec), "--in-process", "--quiet"]) == 0
    assert "taking" in caplog.text and "over" in caplog.text
    assert not lease.exists()


def test_a_live_lease_elsewhere_is_respected(tiny_manifest, tmp_path, capsys):
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(tiny_manifest))
    lease = tmp_path / "out" / "lease.json"
    lease.parent.mkdir(parents=True)
    holder = {"host": "gpu-7", "pid": 4242, "started": "then", "heartbeat": time.time()}
    lease.write_text(json.dumps(holder))
    assert main(["run", str(spec), "--in-process", "--quiet"]) == 2
    assert "host gpu-7, pid 4242" in capsys.readouterr().err
    assert json.loads(lease.read_text()) == holder  # not ours: left alone
    assert not (tmp_path / "out" / "cells").exists()


def test_the_parent_watch_stops_the_cells_when_the_parent_is_gone():
    import threading

    from lipizzaner_cell.runtime.cell_life import Stop
    from lipizzaner_cell.runtime.cell_process import stop_when_orphaned

    stop = Stop()
    watch = threading.Thread(target=stop_when_orphaned, args=(os.getppid() + 1, stop, 0.01))
    watch.start()
    watch.join(DEADLINE)
    assert stop.is_set() and not watch.is_alive()
    assert stop.reason.startswith("the launcher's end")


def test_a_local_run_is_followed_and_stopped_through_its_executor(tiny_manifest, tmp_path, capsys):
    """`status`, `logs` and `delete` on a local run's output, while it trains and after."""
    spec, layout = long_run(tiny_manifest, tmp_path), layout_of(tmp_path)
    output = str(tmp_path / "out")
    launcher = launch(spec)
    assert wait_until(lambda: all_checkpointed(layout)), "cells never checkpointed"
    assert main(["status", output, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["phase"], status["grid"], status["generations"]) == ("Running", "2x2", 5000)
    assert status["generation"]["max"] >= 1 and status["namespace"] is None

    assert main(["delete", output]) == 0  # returns once the run has let its output go
    assert f"{output}: stopped; its output stays" in capsys.readouterr().out
    printed, _ = launcher.communicate(timeout=DEADLINE)
    assert launcher.returncode == 143, printed
    assert main(["status", output, "--json", "--cells"]) == 0
    stopped = json.loads(capsys.readouterr().out)
    assert stopped["phase"] == "Suspended"
    assert [c["cell"] for c in stopped["cells"]] == [0, 1, 2, 3]
    assert all(c["phase"] == "Suspended" and c["generation"] >= 1 for c in stopped["cells"])
    assert main(["status", output, "--cells"]) == 0
    assert "disruptions" in capsys.readouterr().out  # the cells' table
    assert main(["logs", output, "--cell", "1"]) == 0
    assert "stopped by SIGTERM at generation" in capsys.readouterr().out
    assert main(["delete", output]) == 2
    assert f"{output}: no lipizzaner run is training it" in capsys.readouterr().err


def test_status_of_a_folder_that_holds_no_run_is_one_line(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path}: no run there (no {tmp_path}/run.yaml)"


def test_delete_gives_up_on_a_run_that_will_not_stop_in_one_line(tmp_path, capsys):
    """A holder that ignores SIGTERM: `delete` says so after its bound instead of hanging."""
    from lipizzaner_cell.executors.local import LocalExecutor

    stubborn = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 120 & wait"])
    try:
        holder = {"host": socket.gethostname(), "pid": stubborn.pid, "heartbeat": time.time()}
        (tmp_path / "lease.json").write_text(json.dumps(holder))
        with pytest.raises(TimeoutError, match=f"pid {stubborn.pid} still trains it 1 s after"):
            LocalExecutor(stop_seconds=1).delete(str(tmp_path))
    finally:
        stubborn.kill()
        stubborn.wait()
