"""`lipizzaner run` and `lipizzaner sample` end to end, on tiny runs."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from lipizzaner_cell.commands.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_manifest(tmp_path, manifest) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def test_run_writes_results_ensemble_and_preview(tiny_manifest, tmp_path, capsys):
    assert main(["run", write_manifest(tmp_path, tiny_manifest), "--quiet", "--in-process"]) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "ensemble" / "manifest.json").read_text())
    results = [json.loads((out / "cells" / str(i) / "result.json").read_text()) for i in range(4)]
    best = min(results, key=lambda r: r["objective"]["value"])
    for result in results:  # population 1, one replacement each for G and D, 4 generations
        assert result["offspring"]["offered"] == 8
        assert 0 <= result["offspring"]["accepted"] <= 8
    assert manifest["bestCell"] == best["cell"]
    assert manifest["objective"]["name"] == "mode-kl"
    assert set(manifest["scores"]) == {
        "modes_covered",
        "modes_total",
        "high_quality_fraction",
        "mode_kl",
    }
    assert sum(g["weight"] for g in manifest["generators"]) == pytest.approx(1.0)
    assert {g["sourceCell"] for g in manifest["generators"]} == {
        best["cell"],
        *{m["cell"] for m in best["mixture"]},
    }
    for entry in manifest["generators"]:
        assert (out / "ensemble" / entry["file"]).exists()
    assert manifest["spec"]["spec"]["grid"] == {
        "rows": 2,
        "cols": 2,
        "neighbourhood": "von-neumann",
    }
    assert manifest["provenance"]["torch"]
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC
    assert "ensemble" in capsys.readouterr().out


def test_sample_draws_pictures_and_raw_arrays_in_data_range(tiny_manifest, tmp_path):
    assert main(["run", write_manifest(tmp_path, tiny_manifest), "--quiet"]) == 0
    ensemble = str(tmp_path / "out" / "ensemble")
    assert main(["sample", ensemble, "-n", "64", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["sample", ensemble, "-n", "500", "-o", str(tmp_path / "s.npz")]) == 0
    samples = np.load(tmp_path / "s.npz", allow_pickle=False)["samples"]
    assert samples.shape == (500, 2)
    assert np.abs(samples).max() > 1.0  # data space: the ring has radius 2, model space is [-1, 1]
    assert main(["sample", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.png")]) == 2


def test_run_on_mnist_with_dcgan_scores_fid_and_draws_a_grid(tiny_mnist_manifest, tmp_path):
    manifest = tiny_mnist_manifest
    manifest["spec"]["network"] = {
        "latentSize": 16,
        "generator": {"architecture": "dcgan", "width": 8},
        "discriminator": {"architecture": "dcgan", "width": 8},
    }
    assert main(["run", write_manifest(tmp_path, manifest), "--quiet"]) == 0
    result = json.loads((tmp_path / "out" / "ensemble" / "manifest.json").read_text())
    assert set(result["scores"]) == {"fid", "tvd", "precision", "recall"}
    assert result["scores"]["fid"] > 0 and result["trainScores"].keys() == result["scores"].keys()
    assert result["data"]["shape"] == [1, 28, 28]
    # Both cells scored against the same two references, computed once for the run.
    assert len(list((tmp_path / "out" / "references").glob("*.safetensors"))) == 2
    assert (
        main(
            [
                "sample",
                str(tmp_path / "out" / "ensemble"),
                "-n",
                "9",
                "-o",
                str(tmp_path / "digits.npz"),
            ]
        )
        == 0
    )
    digits = np.load(tmp_path / "digits.npz", allow_pickle=False)["samples"]
    assert digits.shape == (9, 1, 28, 28) and digits.min() >= 0 and digits.max() <= 255


def test_run_reports_a_bad_spec_with_exit_code_2(tiny_manifest, tmp_path, capsys):
    broken = copy.deepcopy(tiny_manifest)
    broken["spec"]["coevolution"]["tournamentSize"] = 0
    assert main(["run", write_manifest(tmp_path, broken)]) == 2
    assert "spec.coevolution.tournamentSize: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["sample"], ["train-classifier"]])
def test_every_command_has_help(command):
    done = subprocess.run(
        [sys.executable, "-m", "lipizzaner_cell.commands.cli", *command, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "usage: lipizzaner" in done.stdout


def test_train_classifier_command_reports_accuracy(mnist_dir, tmp_path, capsys):
    out = tmp_path / "clf.safetensors"
    assert (
        main(["train-classifier", "--data", str(mnist_dir), "--out", str(out), "--epochs", "1"])
        == 0
    )
    assert out.exists() and json.loads(out.with_suffix(".json").read_text())["test_accuracy"] > 0.9
    assert "test accuracy" in capsys.readouterr().err
