"""A finished run's output, damaged one file at a time: every command that reads an output
meets each damaged file with one line and exit 0 or 2, never a traceback or exit 1, and
changes no file it did not need (the damaged one and its own outputs aside)."""

from __future__ import annotations

import copy
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RING
from lipizzaner_cell.commands.cli import main
from test_semi_supervised import semi_supervised


def finished_run(root: Path, manifest: dict) -> tuple[Path, Path]:
    """A 1x2 semi-supervised run trained as processes (so it has logs and classifiers)."""
    manifest = semi_supervised(copy.deepcopy(manifest), rate=0.05)
    manifest["metadata"]["name"] = "damaged"
    manifest["spec"]["grid"] = {"rows": 1, "cols": 2}
    manifest["spec"]["generations"] = 2
    manifest["spec"]["checkpoint"] = {"every": 2, "keep": 1}
    manifest["spec"]["score"] = {"finalSamples": 300}
    manifest["spec"]["output"] = {"uri": str(root / "out")}
    spec = root / "run.yaml"
    spec.write_text(yaml.safe_dump(manifest))
    assert main(["run", str(spec), "--quiet", "--threads", "1"]) == 0
    return spec, root / "out"


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :]


# Every command that reads a run's output, with where its own outputs go.
def commands(spec: Path, output: Path, scratch: Path) -> dict[str, list[str]]:
    return {
        "run": ["run", str(spec), "--quiet"],
        "sample": ["sample", str(output / "ensemble"), "-n", "16", "-o", str(scratch / "s.png")],
        "history": ["history", str(output), "-o", str(scratch / "h.png")],
        "classify": ["classify", str(output), "held-out", "-o", str(scratch / "p.csv")],
        "optimize": ["ensemble", "optimize", str(output), "--samples", "50", "--max-size", "2"],
        "logs": ["logs", str(output)],
    }


OWN_OUTPUTS = ("ensemble-greedy/",)  # what `ensemble optimize` writes into the run


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path]:
    return finished_run(tmp_path_factory.mktemp("damaged"), TINY_RING)


@pytest.mark.parametrize("damage", [truncate, flip], ids=["truncated", "bit-flipped"])
def test_every_command_meets_every_damaged_file_with_one_line(
    pristine, tmp_path, capsys, damage: Callable[[bytes], bytes]
):
    spec_source, output_source = pristine
    files = sorted(digests(output_source))
    assert any("checkpoints" in f for f in files) and any("logs" in f for f in files)
    failures = []
    for name in files:
        output = tmp_path / "out"
        shutil.rmtree(output, ignore_errors=True)
        shutil.copytree(output_source, output)
        spec = tmp_path / "run.yaml"
        document = yaml.safe_load(spec_source.read_text())
        document["spec"]["output"]["uri"] = str(output)
        spec.write_text(yaml.safe_dump(document))
        target = output / name
        target.write_bytes(damage(target.read_bytes()))
        for command, argv in commands(spec, output, tmp_path).items():
            before = digests(output)
            capsys.readouterr()
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse only
                code = int(exc.code or 0)
            except Exception as exc:  # a traceback is what this test forbids
                failures.append(f"{name} / {command}: raised {type(exc).__name__}: {exc}")
                continue
            printed = capsys.readouterr()
            text = printed.out + printed.err
            if "Traceback" in text or code not in (0, 2):
                failures.append(f"{name} / {command}: exit {code}\n{text[-600:]}")
            if code == 2 and not printed.err.strip():
                failures.append(f"{name} / {command}: exit 2 without a reason")
            after = digests(output)
            changed = [
                f
                for f in set(before) | set(after)
                if before.get(f) != after.get(f) and f != name and not f.startswith(OWN_OUTPUTS)
            ]
            if changed:
                failures.append(f"{name} / {command}: changed {sorted(changed)}")
    assert not failures, "\n".join(failures)


def test_a_damaged_file_is_named_in_one_line(pristine, tmp_path, capsys):
    _spec_source, output_source = pristine
    output = tmp_path / "out"
    shutil.copytree(output_source, output)
    manifest = output / "ensemble" / "manifest.json"
    manifest.write_bytes(truncate(manifest.read_bytes()))
    capsys.readouterr()
    assert main(["sample", str(output / "ensemble"), "-o", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(manifest) in err and "damaged" in err
