"""The scale harness (`bench/scale_operator.py`) at 256 cells, as CI runs it: its own
real API server and scheduler, the real operator as a process, the harness as the node
and as every cell's gRPC status. Only the bounds that do not depend on the machine's
speed are asserted: the run object's bytes, no pod list in the steady state, and a few
requests a pass whatever the grid (docs/benchmarks.md has the timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_scale_harness_at_256_cells_keeps_the_bounds(control_plane, tmp_path):
    # control_plane: skipped where no API server can start, like every test that needs one.
    found = tmp_path / "scale.json"
    command = [
        *(sys.executable, "bench/scale_operator.py", "--sizes", "256", "--runs-at-once", "0"),
        *("--window", "15", "--reconcile-seconds", "1", "--json", str(found)),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (result,) = json.loads(found.read_text())
    assert result["cells"] == 256
    assert result["run object (KB)"] <= 64
    assert result["pod LISTs /min"] == 0, result  # the pods come from the operator's watch
    # The operator's few requests a pass, with the scheduler's and controllers' own.
    assert result["requests / pass"] <= 12, result
