"""The Dockerfiles (no Docker engine runs here): pinned bases, non-root, and the operator
image's install command run for real in a fresh virtual environment."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "operator": ROOT / "operator" / "Dockerfile",
    "cell": ROOT / "cell_image" / "Dockerfile",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_images_pin_their_base_and_run_as_non_root(image):
    steps = instructions(DOCKERFILES[image])
    assert [arg for op, arg in steps if op == "FROM"] == ["$BASE"]
    (base,) = [arg.removeprefix("BASE=") for op, arg in steps if op == "ARG"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    users = [arg for op, arg in steps if op == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    # The uid has a passwd entry: kopf looks its user up by uid (getpass), and a pod of an
    # unknown uid crashed at start on the real node.
    uid = users[-1].split(":")[0]
    assert any(op == "RUN" and f"useradd --uid {uid} " in arg for op, arg in steps)
    entry = [arg for op, arg in steps if op == "ENTRYPOINT"]
    assert entry == [f'["lipizzaner-{image}"]']


def install_command(image: str) -> list[str]:
    runs = [arg for op, arg in instructions(DOCKERFILES[image]) if op == "RUN"]
    project = [r for r in runs if "./core" in r]
    assert len(project) == 1
    return shlex.split(project[0].split("&&")[0])


def test_the_cell_image_installs_cuda_torch_then_core_and_the_cell():
    runs = [arg for op, arg in instructions(DOCKERFILES["cell"]) if op == "RUN"]
    assert runs[0] == "python3 -m pip install --no-cache-dir torch==2.13.0 torchvision==0.28.0"
    assert install_command("cell")[-2:] == ["./core", "./cell_image"]


def test_the_operator_image_installs_core_and_operator_only(tmp_path):
    """Run the Dockerfile's own install line in a fresh venv: the operator starts, and
    neither torch nor the cell's package is there to import."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    command = install_command("operator")
    assert command[:4] == ["python3", "-m", "pip", "install"]
    assert command[-2:] == ["./core", "./operator"]
    # From a copy of the two folders, as the image's build context has them: the build
    # leaves nothing in the repository, and nothing else is there to be picked up.
    source = tmp_path / "src"
    for folder in ("core", "operator"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("build"))
    subprocess.run(
        [str(venv / "bin" / "python"), *command[1:]],
        cwd=source,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    python = str(venv / "bin" / "python")
    for absent in ("torch", "lipizzaner_cell"):
        found = subprocess.run([python, "-c", f"import {absent}"], capture_output=True)
        assert found.returncode != 0, f"the operator image would contain {absent}"
    modules = sorted(p.stem for p in (ROOT / "operator" / "lipizzaner_operator").glob("*.py"))
    imported = subprocess.run(
        [python, "-c", "; ".join(f"import lipizzaner_operator.{m}" for m in modules)],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    helped = subprocess.run(
        [str(venv / "bin" / "lipizzaner-operator"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--namespace" in helped.stdout
