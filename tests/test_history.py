"""What a run leaves behind: each cell's per-generation history, kept through restarts,
and `lipizzaner history` to read it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from lipizzaner_cell.commands.cli import main
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.spec import parse_run
from lipizzaner_core.storage import Storage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMINGS = "seconds"  # the one field that differs between a straight and a resumed run


def history(output: Path, cell: int) -> list[dict]:
    text = (output / "cells" / str(cell) / "history.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def without_timings(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != TIMINGS} for line in lines]


def leg(manifest: dict, output: Path, generations: int) -> dict:
    manifest = copy.deepcopy(manifest)
    manifest["spec"].update(generations=generations, output={"uri": str(output)})
    manifest["spec"]["checkpoint"] = {"every": 2}
    return manifest


def test_each_cell_writes_one_line_per_generation_and_a_resume_continues_it(
    tiny_manifest, tmp_path
):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_in_process(parse_run(leg(tiny_manifest, straight, 4)), resume=False)
    run_in_process(parse_run(leg(tiny_manifest, split, 2)), resume=False)
    run_in_process(parse_run(leg(tiny_manifest, split, 4)))
    for cell in range(4):
        lines = history(straight, cell)
        assert [line["generation"] for line in lines] == [1, 2, 3, 4]
        first = lines[0]
        for key in ("generator_loss", "discriminator_loss", "generator_lr", "score"):
            assert isinstance(first[key], float), key
        assert first["score_name"] == "mode-kl"
        scores = [line["score"] for line in lines]
        assert [line["kept_score"] for line in lines] == [
            min(scores[: i + 1]) for i in range(len(scores))
        ]  # keep-best: the best so far
        assert set(first[TIMINGS]) >= {"training", "fitness", "mixture"}
        assert abs(sum(first["mixture_weights"].values()) - 1) < 1e-9
        # Resumed at generation 2, the history goes on exactly as the straight run's.
        assert without_timings(history(split, cell)) == without_timings(lines)


def test_history_lines_past_the_checkpoint_are_dropped_on_resume(tiny_manifest, tmp_path):
    """A crash between writing the history and the checkpoint leaves the history ahead."""
    output = tmp_path / "out"
    run_in_process(parse_run(leg(tiny_manifest, output, 2)), resume=False)
    path = output / "cells" / "0" / "history.jsonl"
    ahead = json.loads(path.read_text().splitlines()[-1]) | {"generation": 3}
    path.write_text(path.read_text() + json.dumps(ahead) + "\n")
    run_in_process(parse_run(leg(tiny_manifest, output, 4)))
    assert [line["generation"] for line in history(output, 0)] == [1, 2, 3, 4]


def test_the_history_command_summarises_and_plots(tiny_manifest, tmp_path, capsys):
    manifest = leg(tiny_manifest, tmp_path / "out", 3)
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(manifest))
    assert main(["run", str(spec), "--quiet", "--in-process"]) == 0
    capsys.readouterr()
    curves = tmp_path / "curves.png"
    assert main(["history", str(tmp_path / "out"), "-o", str(curves)]) == 0
    said = capsys.readouterr().out
    assert "best score" in said and "mode-kl" in said and "lower is better" in said
    assert curves.read_bytes()[:8] == PNG_MAGIC
    assert main(["history", str(tmp_path / "nowhere"), "-o", str(curves)]) == 2
    assert main(["history", str(tmp_path / "out"), "-o", str(tmp_path / "c.jpg")]) == 2


def tensorboard_scalars(data: bytes) -> dict[str, dict[int, float]]:
    """Scalars of one TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, dict[int, float]] = {}
    position = 0
    while position < len(data):
        length = int.from_bytes(data[position : position + 8], "little")
        event = Event.FromString(data[position + 12 : position + 12 + length])
        position += 12 + length + 4
        for value in event.summary.value:
            found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def test_the_history_goes_to_tensorboard_a_run_per_cell(tiny_manifest, tmp_path, capsys):
    output = tmp_path / "out"
    run_in_process(parse_run(leg(tiny_manifest, output, 3)), resume=False)
    curves = str(tmp_path / "curves.png")
    assert main(["history", str(output), "-o", curves, "--tensorboard"]) == 0
    assert f"tensorboard --logdir {output / 'tensorboard'}" in capsys.readouterr().out
    for cell in range(4):
        (events,) = (output / "tensorboard" / f"cell-{cell}").iterdir()
        scalars = tensorboard_scalars(events.read_bytes())
        lines = history(output, cell)
        assert scalars["loss/generator"] == pytest.approx(
            {line["generation"]: line["generator_loss"] for line in lines}
        )
        assert set(scalars["score/mode-kl"]) == {1, 2, 3}
        assert {"seconds/training", "learning_rate/discriminator"} <= set(scalars)
    # Any fsspec URI: written locally, then copied where it belongs.
    assert main(["history", str(output), "-o", curves, "--tensorboard", "memory://tb/x"]) == 0
    assert len(Storage().list_dir("memory://tb/x")) == 4


def test_an_older_runs_lines_without_the_newer_figures_are_read(tiny_manifest):
    """A history written before a figure existed (its field has a default): its lines
    are read as they are, not skipped as damaged."""
    from lipizzaner_cell.runtime.history import read_history
    from lipizzaner_core.layout import RunLayout

    run = parse_run(tiny_manifest)
    run_in_process(run, resume=False)
    layout = RunLayout.of(run).cell(0)
    older = [json.loads(line) for line in Path(layout.history).read_text().splitlines()]
    for line in older:
        for newer in ("neighbour_lag", "mixture_entropy", "generator_origins"):
            del line[newer]
    Path(layout.history).write_text("".join(json.dumps(line) + "\n" for line in older))
    assert [line["generation"] for line in read_history(layout)] == [1, 2, 3, 4]
