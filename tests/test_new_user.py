"""What a new user meets: a finished run left alone, one-line errors with exit code 2,
a console that says what its numbers are, previews in the data's own range."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from lipizzaner_cell.commands.cli import main
from lipizzaner_cell.data.datasets import ValueMap
from lipizzaner_cell.ensembles.samples import render_png
from lipizzaner_core.ensemble import REFERENCE_FILE
from PIL import Image

RING = {"name": "gaussian-ring", "size": 2000}


def write(tmp_path: Path, manifest: dict, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def lipizzaner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lipizzaner_cell.commands.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_rerunning_a_finished_run_leaves_it_byte_for_byte_and_extending_resumes(
    tiny_manifest, tmp_path, capsys
):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"]["generations"] = 2
    path = write(tmp_path, manifest)
    assert main(["run", path, "--quiet"]) == 0
    out = tmp_path / "out"
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["run", path, "--quiet"]) == 0
    assert tree_digest(out) == before
    said = capsys.readouterr()
    assert "is complete (2 generations); nothing to do" in said.err
    assert str(out / "ensemble" / "manifest.json") in said.out

    assert main(["run", path, "--quiet", "--generations", "4"]) == 0
    said = capsys.readouterr()
    assert "resuming from checkpoints" in said.err and "cell 0 at 2" in said.err
    results = [json.loads((out / "cells" / str(i) / "result.json").read_text()) for i in range(4)]
    assert all(r["generation"] == 4 and r["missingNeighbours"] == [] for r in results)
    ensemble = json.loads((out / "ensemble" / "manifest.json").read_text())
    files = {p.name for p in (out / "ensemble").iterdir()} - {"manifest.json", REFERENCE_FILE}
    assert files == {g["file"] for g in ensemble["generators"]}  # nothing stale
    for result in results:
        mixture = {p.name for p in (out / "cells" / str(result["cell"]) / "mixture").iterdir()}
        assert mixture == {m["file"].split("/")[-1] for m in result["mixture"]}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--generations", "0"], "spec.generations: must be >= 1, got 0"),
        (["--generations", "-3"], "spec.generations: must be >= 1, got -3"),
    ],
)
def test_bad_run_overrides_are_one_line_errors(tiny_manifest, tmp_path, args, expected):
    done = lipizzaner("run", write(tmp_path, tiny_manifest), *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "[red]" not in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # refused before any cell started


@pytest.fixture(scope="module")
def finished_ensemble(tmp_path_factory) -> Path:
    from conftest import TINY_RING

    root = tmp_path_factory.mktemp("ensemble")
    manifest = copy.deepcopy(TINY_RING)
    manifest["spec"].update(generations=1, output={"uri": str(root / "out")})
    assert main(["run", write(root, manifest), "--quiet", "--in-process"]) == 0
    return root / "out" / "ensemble"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-n", "0", "-o", "x.png"], "-n: must be >= 1, got 0"),
        (["-n", "-5", "-o", "x.png"], "-n: must be >= 1, got -5"),
        (["-o", "x.jpg"], "must end in .png (a picture) or .npz"),
        (["-o", "x.txt"], "must end in .png (a picture) or .npz"),
        (["-o", "x"], "must end in .png (a picture) or .npz"),
    ],
)
def test_bad_sample_arguments_are_one_line_errors(finished_ensemble, tmp_path, args, expected):
    args = [a if not a.startswith("x") else str(tmp_path / a) for a in args]
    done = lipizzaner("sample", str(finished_ensemble), *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_train_classifier_names_its_flag_and_never_writes_into_the_package(tmp_path):
    done = lipizzaner("train-classifier", "--data", "/nonexistent")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("--data /nonexistent: no MNIST files")
    assert "dataset.download" not in done.stderr and "Traceback" not in done.stderr
    from lipizzaner_cell.commands.cli import build_parser

    args = build_parser().parse_args(["train-classifier", "--data", "somewhere"])
    assert args.out == "mnist-classifier.safetensors"  # here, not inside the package


def test_the_operator_without_a_kubeconfig_is_a_one_line_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    done = subprocess.run(
        [sys.executable, "-m", "lipizzaner_operator.operator_main", "--metrics-port=0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "no Kubernetes configuration" in done.stderr


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"dataset": {"name": "cifar"}}, "spec.dataset.name: must be one of"),
        ({"dataset": {"name": "cifar"}}, "got 'cifar'"),
        ({"generatoins": 3, "dataset": RING}, "spec.generatoins: unknown field (did you mean"),
        ({"grid": {"rows": "3"}, "dataset": RING}, "spec.grid.rows: must be an integer, got '3'"),
        ({"suspend": "yes", "dataset": RING}, "spec.suspend: must be true or false"),
    ],
)
def test_validate_names_the_field_the_value_and_a_likely_fix(tmp_path, spec, expected):
    manifest = {
        "apiVersion": "lipizzaner.io/v1alpha1",
        "kind": "LipizzanerRun",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    done = lipizzaner("validate", write(tmp_path, manifest))
    assert done.returncode == 2
    assert expected in done.stderr, done.stderr


def test_a_yaml_error_names_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [\n")
    done = lipizzaner("validate", str(broken))
    assert done.returncode == 2
    assert str(broken) in done.stderr and "<unicode string>" not in done.stderr


def test_the_run_summary_says_what_its_numbers_are(tiny_manifest, tmp_path, capsys):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"].update(generations=1, grid={"rows": 1, "cols": 1})
    manifest["spec"]["coevolution"]["tournamentSize"] = 1
    assert main(["run", write(tmp_path, manifest), "--quiet", "--in-process"]) == 0
    said = capsys.readouterr().out
    assert "lower is better" in said and "mode KL" in said
    assert "* the ensemble" in said
    assert "mixture of 1 generator:" in said  # not "1 generators"
    assert "modes_covered" in said  # headers are not truncated
    assert "cell logs:" in said


@pytest.mark.parametrize(
    ("values", "low", "high"),
    [
        (ValueMap([0.5], [0.5], "float32"), 0.0, 1.0),
        (ValueMap([1.0], [0.0], "float32"), -1.0, 1.0),
        (ValueMap([127.5], [127.5], "uint8"), 0, 255),
    ],
    ids=["float-0-1", "float-minus1-1", "uint8"],
)
def test_samples_and_previews_keep_the_datas_own_range_and_dtype(values, low, high):
    model = np.linspace(-1.5, 1.5, 2 * 1 * 4 * 4).reshape(2, 1, 4, 4)  # beyond [-1, 1] too
    data = values.to_data(model)
    assert data.dtype == np.dtype(values.dtype)
    assert data.min() == low and data.max() == high  # clipped into the data's range
    mid = values.to_data(np.zeros((1, 1, 4, 4)))
    description = {"shape": [1, 4, 4], "values": values.as_dict()}
    png = render_png(np.repeat(mid, 4, axis=0), description)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    tile = pixels[pixels < 250]  # the tiles, not the white lines between them
    grey = float(np.median(tile))
    assert 90 < grey < 170, "a mid-range sample must show as mid grey, not black or white"


def test_a_first_preview_says_nothing_about_matplotlibs_font_cache(tmp_path):
    """A fresh matplotlib configuration makes it build its font cache and say so, at the
    INFO level the `lipizzaner` command logs at."""
    script = (
        "import logging; logging.basicConfig(level=logging.INFO); "
        "import numpy as np; from lipizzaner_cell.ensembles.samples import render_png; "
        "render_png(np.zeros((4, 2)), {'shape': [2], 'values': {'scale': [1], 'offset': [0]}})"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"MPLCONFIGDIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "font cache" not in done.stderr and done.stderr.strip() == ""


def test_the_progress_display_ends_at_100_percent(tiny_manifest, tmp_path):
    from lipizzaner_cell.executors.local_processes import LocalRun, watch
    from lipizzaner_core.spec import parse_run

    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"].update(generations=2, grid={"rows": 1, "cols": 2})
    local = LocalRun(parse_run(manifest), tmp_path, threads=1)
    try:
        rows = watch(local, show_progress=False)
    finally:
        local.stop_all(grace_seconds=5)
        local.close()
    assert rows and all(completed == total for completed, total in rows), rows


def test_the_preview_names_the_run_the_samples_and_the_score(finished_ensemble):
    from lipizzaner_cell.ensembles.samples import preview_title

    manifest = json.loads((finished_ensemble / "manifest.json").read_text())
    title = preview_title("tiny", manifest, 1000)
    generators = len(manifest["generators"])
    assert title.startswith(f"tiny: ensemble of cell {manifest['bestCell']} ({generators} ")
    assert "1000 samples" in title and "mode KL" in title and "lower is better" in title
    # 2-D data: the preview draws the data itself, kept beside the manifest for that.
    assert manifest["data"]["reference"] == REFERENCE_FILE
    reference = json.loads((finished_ensemble / REFERENCE_FILE).read_text())
    assert len(reference) == 1000 and len(reference[0]) == 2
    assert len((finished_ensemble / "manifest.json").read_text().splitlines()) < 400


def test_a_run_without_a_score_says_so(tiny_manifest, tmp_path, capsys):
    manifest = copy.deepcopy(tiny_manifest)
    manifest["spec"].update(generations=1, grid={"rows": 1, "cols": 2})
    manifest["spec"]["mixture"]["scoreType"] = "none"
    assert main(["run", write(tmp_path, manifest), "--quiet", "--in-process"]) == 0
    said = capsys.readouterr().out
    assert "no score for this dataset" in said and "None" not in said
