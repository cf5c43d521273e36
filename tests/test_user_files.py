"""What a user's own files and flags meet: data checked before any cell starts, arrays
kept in their own range, scores beside their yardsticks, a lone GAN, a cluster that is not
there, and flags that say what they take."""

from __future__ import annotations

import copy
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from lipizzaner_cell.commands.cli import main
from lipizzaner_cell.ensembles.samples import render_png
from PIL import Image


def write(tmp_path: Path, manifest: dict, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def array_run(tiny_manifest: dict, path: Path, **dataset) -> dict:
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["dataset"] = {"name": "array", "path": str(path), **dataset}
    return manifest


def digits(tmp_path: Path, **arrays) -> Path:
    """8x8 'digits': a bright stroke in the middle, a border that is always 0."""
    rng = np.random.default_rng(0)
    images = np.zeros((200, 8, 8))
    images[:, 2:6, 3:5] = rng.uniform(8, 16, size=(200, 4, 2))
    path = tmp_path / "digits.npz"
    np.savez(path, images=images, labels=rng.integers(0, 10, 200), **arrays)
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "no file"),
        ("wrong shape", "need an array of N >= 2 samples"),
        ("nan", "NaN or infinite values (the first in sample 7)"),
        ("key", "dataset.key: 'pixels' not in"),
        ("labels", "dataset.labelsKey: 'few' in"),
        ("not an array", "is not a readable .npy or .npz file"),
    ],
)
def test_bad_data_is_refused_in_one_line_before_any_cell_starts(
    tiny_manifest, tmp_path, capsys, case, expected
):
    path = digits(tmp_path, few=np.arange(5), flat=np.arange(3.0))
    extra = {}
    if case == "missing":
        path = tmp_path / "nowhere.npz"
    elif case == "wrong shape":
        extra = {"key": "flat"}
    elif case == "nan":
        bad = np.ones((20, 4))
        bad[7, 2] = np.nan
        path = tmp_path / "nan.npy"
        np.save(path, bad)
    elif case == "key":
        extra = {"key": "pixels"}
    elif case == "labels":
        extra = {"key": "images", "labelsKey": "few"}
    else:
        path = tmp_path / "text.npy"
        path.write_text("not numbers")
    manifest = array_run(tiny_manifest, path, **extra)
    spec = write(tmp_path, manifest)
    for command in (["validate", spec], ["run", spec, "--quiet"]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and spec in err[0], err
    assert not (tmp_path / "out").exists()


def test_remote_bad_data_stops_the_run_with_exit_2_and_the_cells_line(
    tiny_manifest, tmp_path, capsys, s3_endpoint
):
    import boto3

    bad = np.ones((20, 4))
    bad[3, 0] = np.inf
    buffer = io.BytesIO()
    np.save(buffer, bad)
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket="runs", Key="data/bad.npy", Body=buffer.getvalue()
    )
    manifest = array_run(tiny_manifest, Path("unused"))
    manifest["spec"]["output"] = {"uri": str(tmp_path / "out"), "endpointUrl": s3_endpoint}
    manifest["spec"]["dataset"]["path"] = "s3://runs/data/bad.npy"
    capsys.readouterr()
    assert main(["run", write(tmp_path, manifest), "--quiet", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "s3://runs/data/bad.npy holds 1 NaN or infinite values" in err
    assert "Traceback" not in err


def test_array_samples_stay_in_each_pixels_own_range(tiny_manifest, tmp_path):
    path = digits(tmp_path)
    manifest = array_run(tiny_manifest, path, key="images")
    manifest["spec"]["generations"] = 1
    assert main(["run", write(tmp_path, manifest), "--quiet", "--in-process"]) == 0
    out = tmp_path / "samples.npz"
    assert main(["sample", str(tmp_path / "out" / "ensemble"), "-n", "200", "-o", str(out)]) == 0
    samples = np.load(out, allow_pickle=False)["samples"]
    images = np.load(path, allow_pickle=False)["images"]
    assert samples.shape == (200, 8, 8)
    assert (samples >= images.min(axis=0) - 1e-9).all() and (
        samples <= images.max(axis=0) + 1e-9
    ).all()
    assert (samples[:, 0, :] == 0).all()  # the border is 0 in every image: so in every sample


def test_preview_tiles_are_separated_by_white_lines():
    black = np.zeros((4, 1, 28, 28), dtype=np.uint8)
    description = {"shape": [1, 28, 28], "values": {"scale": [127.5], "offset": [127.5]}}
    pixels = np.asarray(Image.open(io.BytesIO(render_png(black, description))).convert("L"))
    dark = pixels < 60
    rows = np.flatnonzero(dark.any(axis=1))
    columns = np.flatnonzero(dark.any(axis=0))
    # Two blocks of tiles each way, a white gap between them.
    assert (np.diff(rows) > 1).sum() == 1 and (np.diff(columns) > 1).sum() == 1


def test_scores_are_printed_between_real_data_and_noise(tiny_manifest, tmp_path, capsys):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["generations"] = 1
    assert main(["run", write(tmp_path, manifest), "--quiet", "--in-process"]) == 0
    said = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in said.splitlines() if "│" in line}
    assert "real data" in rows and "noise" in rows
    kept = json.loads((tmp_path / "out" / "references" / "yardsticks.json").read_text())
    real, noise = kept["scores"]["real"]["mode_kl"], kept["scores"]["noise"]["mode_kl"]
    assert real < 0.1 < noise  # real data covers the modes; noise does not
    assert "mode KL" in said and "(real data" in said and ", noise " in said


def test_a_lone_gan_with_the_defaults_trains_as_a_plain_gan(tiny_manifest, tmp_path, capsys):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"].update(grid={"rows": 1, "cols": 1}, generations=4)
    assert "tournamentSize" not in manifest["spec"]["coevolution"]
    spec = write(tmp_path, manifest)
    assert main(["validate", spec]) == 0
    assert main(["run", spec, "--quiet", "--in-process"]) == 0
    history = [
        json.loads(line)
        for line in (tmp_path / "out" / "cells" / "0" / "history.jsonl").read_text().splitlines()
    ]
    assert all(line["offspring_accepted"] == line["offspring_offered"] == 2 for line in history)
    losses = {round(line["generator_loss"], 6) for line in history}
    assert len(losses) == len(history)  # it moves every generation: not frozen


def test_the_single_gan_example_is_a_valid_1x1_run():
    example = Path(__file__).resolve().parents[1] / "examples" / "single-gan.yaml"
    assert main(["validate", str(example)]) == 0
    spec = yaml.safe_load(example.read_text())["spec"]
    assert spec["grid"] == {"rows": 1, "cols": 1}
    assert "tournamentSize" not in spec.get("coevolution", {})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kubeconfig_to(tmp_path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("command", "code"),
    [(["status", "tiny"], 1), (["logs", "tiny"], 1), (["submit", "RUN"], 1)],
)
def test_an_unreachable_cluster_is_one_line_and_exit_1(tiny_manifest, tmp_path, command, code):
    config = kubeconfig_to(tmp_path, f"http://127.0.0.1:{closed_port()}")
    command = [write(tmp_path, tiny_manifest) if part == "RUN" else part for part in command]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lipizzaner_cell.commands.cli", *command],
        env={"KUBECONFIG": str(config), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Kubernetes API server at" in lines[0], lines
    assert "Traceback" not in done.stderr and time.monotonic() - started < 120


def test_a_broken_kubeconfig_is_exit_2(tmp_path, capsys, monkeypatch):
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [")
    monkeypatch.setenv("KUBECONFIG", str(broken))
    assert main(["status", "tiny"]) == 2
    assert "no usable Kubernetes configuration" in capsys.readouterr().err


def test_logs_read_a_runs_output_folder(tiny_manifest, tmp_path, capsys):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"].update(generations=1, grid={"rows": 1, "cols": 2})
    assert main(["run", write(tmp_path, manifest), "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["logs", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "== cell 0, attempt 0 ==" in said and "== cell 1, attempt 0 ==" in said
    assert "generation 1/1" in said


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "RUN", "--threads", "-3"], "argument --threads: must be >= 1, got -3"),
        (["run", "RUN", "--threads", "x"], "argument --threads: must be a whole number"),
        (["train-classifier", "--data", "d", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
        (["submit", "RUN", "--timeout", "0"], "--timeout: must be > 0 (seconds), got 0"),
        (["submit", "RUN", "--max-score", "nan"], "--max-score: must be a finite number"),
        (["logs", "x/y", "--cell", "-1"], "--cell: must be >= 0, got -1"),
        (["logs", "x/y", "--attempt", "-2"], "--attempt: must be >= 0, got -2"),
    ],
)
def test_every_numeric_flag_says_what_it_takes(tiny_manifest, tmp_path, capsys, args, expected):
    args = [write(tmp_path, tiny_manifest) if part == "RUN" else part for part in args]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_fewer_generations_than_a_run_finished_says_so(tiny_manifest, tmp_path, capsys):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["generations"] = 4
    spec = write(tmp_path, manifest)
    assert main(["run", spec, "--quiet", "--in-process"]) == 0
    capsys.readouterr()
    assert main(["run", spec, "--quiet", "--in-process", "--generations", "2"]) == 0
    said = capsys.readouterr().err
    assert "finished at 4 generations, more than the 2 asked; nothing to do" in said
    assert "complete (2 generations)" not in said


def test_final_scoring_is_shown_and_timed(tiny_manifest, tmp_path, capsys):
    from lipizzaner_cell.executors.local_processes import _describe
    from lipizzaner_core.wire import cell_pb2

    status = cell_pb2.CellStatus(phase=cell_pb2.CellStatus.Phase.FINISHING)

    class Process:
        succeeded = given_up = False
        restarts = 0

    assert _describe(Process(), status, 10_000) == "final scoring: 10000 samples"  # type: ignore[arg-type]
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"].update(generations=1, grid={"rows": 1, "cols": 2})
    assert main(["run", write(tmp_path, manifest), "--quiet", "--threads", "1"]) == 0
    log = (tmp_path / "out" / "cells" / "0" / "logs" / "attempt-0.log").read_text()
    assert "final scoring: 10000 samples of the mixture" in log and "final scoring took" in log
    first = log.splitlines()[0].split()[0]
    assert time.strptime(first[:19], "%Y-%m-%dT%H:%M:%S")  # ISO 8601 timestamps


ROOT = Path(__file__).resolve().parents[1]


def test_the_quickstarts_duration_is_the_same_in_the_readme_and_the_example():
    example = (ROOT / "examples" / "quickstart.yaml").read_text().splitlines()[0]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "under a minute on 2 CPU cores" in example
    assert "quickstart, a 2x2 grid on the 8-Gaussian ring that takes under a minute" in readme


def test_the_readme_lists_every_array_field():
    row = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if "| `array` |" in line
    )
    assert "`key`" in row and "`labelsKey`" in row


def test_a_manifest_says_only_what_its_networks_use_and_keeps_weighted_members():
    from conftest import TINY_RING
    from lipizzaner_core.ensemble import build_manifest
    from lipizzaner_core.spec import parse_run

    result = {
        "cell": 0,
        "row": 0,
        "col": 0,
        "generation": 4,
        "objective": {"name": "mode-kl", "value": 0.5},
        "scores": {},
        "data": {"shape": [2]},
        "provenance": {},
        "mixture": [
            {"cell": 0, "weight": 0.75, "file": "mixture/generator-0.safetensors"},
            {"cell": 1, "weight": 0.0, "file": "mixture/generator-1.safetensors"},
            {"cell": 2, "weight": 0.25, "file": "mixture/generator-2.safetensors"},
        ],
    }
    manifest = build_manifest(parse_run(TINY_RING), [result])
    assert "cell" not in manifest["network"]["generator"]
    assert "width" not in manifest["network"]["generator"]
    assert manifest["network"]["generator"]["hiddenSizes"] == [32]
    assert [(g["sourceCell"], g["weight"]) for g in manifest["generators"]] == [
        (0, 0.75),
        (2, 0.25),
    ]


def test_history_shows_whole_scores_and_plots_accuracy(tiny_manifest, tmp_path, capsys):
    from lipizzaner_cell.runtime.history import render_curves, scalars

    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["generations"] = 2
    assert main(["run", write(tmp_path, manifest), "--quiet", "--in-process"]) == 0
    capsys.readouterr()
    assert main(["history", str(tmp_path / "out"), "-o", str(tmp_path / "h.png")]) == 0
    said = capsys.readouterr().out
    assert "…" not in said  # nothing cut at 80 columns
    assert "the scores' ends on this data: real data" in said and "; noise " in said
    line = json.loads(
        (tmp_path / "out" / "cells" / "0" / "history.jsonl").read_text().splitlines()[0]
    )
    line["accuracy"] = 0.5
    assert scalars(line)["accuracy/discriminator"] == 0.5
    png = render_curves({0: [line]}, "t")
    width = Image.open(io.BytesIO(png)).size[0]
    without = Image.open(io.BytesIO(render_curves({0: [{**line, "accuracy": None}]}, "t"))).size[0]
    assert width > without  # a fourth panel: held-out accuracy


def test_a_sequences_preview_says_how_many_curves_it_draws(tmp_path, monkeypatch):
    import lipizzaner_cell.executors.in_process as in_process
    from lipizzaner_cell.ensembles.samples import CURVES

    example = yaml.safe_load((ROOT / "examples" / "sequences.yaml").read_text())
    spec = example["spec"]
    spec.update(grid={"rows": 1, "cols": 1}, generations=1, output={"uri": str(tmp_path)})
    spec["dataset"]["size"] = 200
    spec["training"] = {"batchSize": 32, "batchesPerGeneration": 2, "device": "cpu"}
    spec["score"] = {"finalSamples": 100}
    titles = []
    monkeypatch.setattr(in_process, "write_samples", lambda *a, title, **k: titles.append(title))
    assert main(["run", write(tmp_path, example), "--quiet", "--in-process"]) == 0
    assert f"{CURVES} samples" in titles[0] and "64 samples" not in titles[0]


def test_a_torn_last_history_line_is_skipped_with_a_warning(
    tiny_manifest, tmp_path, caplog, capsys
):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["generations"] = 2
    assert main(["run", write(tmp_path, manifest), "--quiet", "--in-process"]) == 0
    history = tmp_path / "out" / "cells" / "0" / "history.jsonl"
    history.write_text(history.read_text() + '{"generation": 3, "gener')
    assert main(["history", str(tmp_path / "out"), "-o", str(tmp_path / "h.png")]) == 0
    assert f"{history} line 3: skipped" in caplog.text


def test_a_missing_bucket_is_one_line_and_never_created(
    tiny_manifest, tmp_path, capsys, s3_endpoint
):
    import boto3

    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["output"] = {"uri": "s3://no-such-bucket/tiny", "endpointUrl": s3_endpoint}
    capsys.readouterr()
    assert main(["run", write(tmp_path, manifest), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"bucket 'no-such-bucket' does not exist at {s3_endpoint}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    buckets = boto3.client("s3", endpoint_url=s3_endpoint).list_buckets()["Buckets"]
    assert [b["Name"] for b in buckets] == ["runs"]


def test_a_cell_refuses_a_missing_bucket_in_the_line_its_launcher_passes_on(
    tiny_manifest, tmp_path, s3_endpoint
):
    """A pod's cell meets the bucket first: its `cannot start:` line is what the operator
    shows in the run's status."""
    from lipizzaner_core.contract import CANNOT_START

    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["output"] = {"uri": "s3://no-such-bucket/tiny", "endpointUrl": s3_endpoint}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "lipizzaner_cell.runtime.cell_process"),
            *("--run-spec", write(tmp_path, manifest), "--cells", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    refusal = next(line for line in done.stderr.splitlines() if CANNOT_START in line)
    assert "spec.output.uri s3://no-such-bucket/tiny: bucket 'no-such-bucket' does not" in refusal
