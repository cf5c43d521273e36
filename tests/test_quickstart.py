"""The README's main job: the quickstart example, as shipped, covers all 8 modes."""

import json
from pathlib import Path

from lipizzaner_operator.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


def test_quickstart_covers_all_eight_modes(tmp_path):
    output = tmp_path / "quickstart"
    assert main(["run", str(EXAMPLE), "--output", str(output), "--quiet"]) == 0
    manifest = json.loads((output / "ensemble" / "manifest.json").read_text())
    assert manifest["scores"]["modes_covered"] == 8
    assert manifest["scores"]["high_quality_fraction"] > 0.4
    assert (output / "samples.png").exists()
