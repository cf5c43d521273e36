"""Checkpoints verify themselves: a damaged one is passed over for the one before it, and
a cell with none intact refuses to start rather than train over the run from scratch."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from lipizzaner_cell.commands.cli import main
from lipizzaner_core.layout import CHECKPOINT_FILES, CHECKPOINT_MARKER, RunLayout
from lipizzaner_core.storage import Storage, write_durably

KINDS = [*CHECKPOINT_FILES, CHECKPOINT_MARKER]


def trained(tiny_manifest: dict, tmp_path: Path, generations: int = 4) -> tuple[str, RunLayout]:
    """A run trained to `generations`, checkpointed at 2 and 4 (both kept)."""
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["generations"] = generations
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main(["run", str(path), "--in-process", "--quiet"]) == 0
    return str(path), RunLayout(str(tmp_path / "out"), Storage())


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_checkpoint_file_resumes_from_the_one_before(
    tiny_manifest, tmp_path, caplog, kind, how
):
    path, layout = trained(tiny_manifest, tmp_path)
    newest = Path(layout.cell(0).checkpoint("000004")) / kind
    damage(newest, how)
    assert main(["run", path, "--in-process", "--quiet", "--generations", "5"]) == 0
    assert f"{newest}: damaged" in caplog.text
    assert "resumed from the older checkpoint 000002" in caplog.text
    history = (tmp_path / "out" / "cells" / "0" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in history] == [1, 2, 3, 4, 5]


def test_no_intact_checkpoint_is_one_line_naming_the_files_and_exit_2(
    tiny_manifest, tmp_path, capsys
):
    path, layout = trained(tiny_manifest, tmp_path)
    for name in ("000002", "000004"):
        damage(Path(layout.cell(1).checkpoint(name)) / "state.safetensors", "truncated")
    results = {c: Path(layout.cell(c).result).read_bytes() for c in range(4)}
    capsys.readouterr()
    assert main(["run", path, "--in-process", "--quiet", "--generations", "6"]) == 2
    said = capsys.readouterr().err
    last = said.strip().splitlines()[-1]  # after the progress lines: the one reason
    assert "no intact checkpoint" in last and "--fresh" in last and "Traceback" not in said
    assert "000002/state.safetensors" in last and "000004/state.safetensors" in last
    assert {c: Path(layout.cell(c).result).read_bytes() for c in range(4)} == results


def test_as_processes_a_truncated_checkpoint_resumes_and_none_intact_is_exit_2(
    tiny_manifest, tmp_path, capsys
):
    path, layout = trained(tiny_manifest, tmp_path)
    newest = Path(layout.cell(2).checkpoint("000004")) / "state.safetensors"
    damage(newest, "truncated")
    assert main(["run", path, "--quiet", "--generations", "5"]) == 0
    log = Path(layout.cell(2).log(0)).read_text()
    assert f"{newest}: damaged" in log and "cannot join thread" not in log
    for name in layout.cell(3).completed_checkpoints():
        damage(Path(layout.cell(3).checkpoint(name)) / "state.json", "truncated")
    capsys.readouterr()
    assert main(["run", path, "--quiet", "--generations", "7"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "Traceback" not in err
    assert "cannot join thread" not in Path(layout.cell(3).log(1)).read_text()


def test_a_checkpoint_without_its_marker_is_incomplete(tiny_manifest, tmp_path):
    _, layout = trained(tiny_manifest, tmp_path)
    (Path(layout.cell(0).checkpoint("000004")) / CHECKPOINT_MARKER).unlink()
    assert layout.cell(0).completed_checkpoints() == ["000002"]


def test_durable_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    write_durably(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_no_json_file_holds_nan(tmp_path):
    storage = Storage()
    storage.write_json(str(tmp_path / "x.json"), {"score": float("nan"), "b": [float("inf"), 1.0]})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"score": None, "b": [None, 1.0]}
