"""The README's main job: the quickstart example, as shipped, covers all 8 modes."""

import json
from pathlib import Path

from lipizzaner_cell.commands.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


def run_quickstart(output: Path, *flags: str) -> dict:
    assert main(["run", str(EXAMPLE), "--output", str(output), "--quiet", *flags]) == 0
    assert (output / "samples.png").exists()
    return json.loads((output / "ensemble" / "manifest.json").read_text())["scores"]


def test_quickstart_covers_all_eight_modes(tmp_path):
    """In one process the run is deterministic: exactly the shipped example's result."""
    scores = run_quickstart(tmp_path / "quickstart", "--in-process", "--threads", "1")
    assert scores["modes_covered"] == 8
    assert scores["high_quality_fraction"] > 0.4
