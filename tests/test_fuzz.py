"""The network edge under atheris (libFuzzer) for a bounded time: no finding may appear.

Both fuzzers run at once, each for FUZZ_SECONDS, from the corpus kept in fuzz/corpus/
(which replays every input found before, crashes included); what they find new goes to a
temporary folder, never into the repository. fuzz/*.py say what each one checks.
"""

from __future__ import annotations

import gc
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZERS = ("codec", "server")
FUZZ_SECONDS = int(os.environ.get("LIPIZZANER_FUZZ_SECONDS", "25"))


@pytest.fixture(scope="module")
def fuzzing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.Popen[str]]:
    pytest.importorskip("atheris")
    runs = {}
    for name in FUZZERS:
        scratch = tmp_path_factory.mktemp(f"fuzz-{name}")
        runs[name] = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "fuzz" / f"{name}_fuzz.py"),
                str(scratch),  # new inputs land here
                str(ROOT / "fuzz" / "corpus" / name),
                f"-max_total_time={FUZZ_SECONDS}",
                "-timeout=30",  # a call that hangs is a finding (memory: harness.MemoryGuard)
                f"-artifact_prefix={scratch}/",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
    return runs


@pytest.mark.parametrize("name", FUZZERS)
def test_no_input_crashes_or_hangs_the_network_edge(fuzzing, name):
    output, _ = fuzzing[name].communicate(timeout=FUZZ_SECONDS + 300)
    tail = "\n".join(line for line in output.splitlines() if "Instrumenting" not in line)[-3000:]
    assert fuzzing[name].returncode == 0, tail
    done = [line for line in output.splitlines() if line.startswith("Done ")]
    assert done and int(done[0].split()[1]) > 100, tail  # it really ran inputs


def test_the_memory_guard_fails_an_input_once_memory_keeps_growing(monkeypatch):
    pytest.importorskip("atheris")
    monkeypatch.syspath_prepend(str(ROOT / "fuzz"))
    from harness import MemoryGuard

    guard = MemoryGuard(limit_mb=32, settle=1, every=1)
    gc.collect()  # earlier tests' garbage freed now, not while the guard watches
    guard.check()  # the baseline
    kept = []
    with pytest.raises(MemoryError, match="resident memory grew"):
        for _ in range(64):
            # A fresh mapping, every page written: resident whatever free heap earlier
            # tests left behind (malloc would reuse that, and the RSS would not grow).
            block = mmap.mmap(-1, 8 << 20)
            block.write(b"\x01" * (8 << 20))
            kept.append(block)
            guard.check()
    assert len(kept) >= 3  # it let the first 24 MB pass
