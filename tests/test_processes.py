"""Cells as separate processes talking gRPC: the launcher, crashes, stops, S3 output."""

import json
import platform
import resource
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import yaml
from cell_processes import cell_command, quick, run_cell, write_spec
from conftest import wait_until
from lipizzaner_cell.commands.cli import main as cli_main
from lipizzaner_cell.executors.local_processes import LocalRun, free_port_block, run_local
from lipizzaner_core.ensemble import assemble_ensemble
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from lipizzaner_core.storage import Storage
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.status import status_call


def test_a_2x2_run_in_processes_writes_its_ensemble_to_s3(tiny_manifest, s3_endpoint):
    manifest = quick(tiny_manifest, output={"uri": "s3://runs/tiny", "endpointUrl": s3_endpoint})
    run = parse_run(manifest)
    result = run_local(run, show_progress=False, threads=1)
    assert result["bestCell"] in range(4)
    storage = Storage.with_endpoint(s3_endpoint)
    stored = storage.read_json("s3://runs/tiny/ensemble/manifest.json")
    assert stored["generators"] == result["generators"]
    for entry in stored["generators"]:
        assert len(storage.read_bytes(f"s3://runs/tiny/ensemble/{entry['file']}")) > 0
    for cell in range(4):
        cell_result = storage.read_json(f"s3://runs/tiny/cells/{cell}/result.json")
        assert storage.exists(f"s3://runs/tiny/cells/{cell}/logs/attempt-0.log")
        assert cell_result["generation"] == 4 and cell_result["missingNeighbours"] == []


def test_the_runs_own_s3_endpoint_serves_in_process_fresh_and_assembly(
    tiny_manifest, s3_endpoint, tmp_path, monkeypatch
):
    """No path falls back to AWS's default endpoint: the spec's endpointUrl is used
    in-process, by --fresh and by the ensemble's assembly (as the operator does it)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    output = {"uri": "s3://runs/inproc", "endpointUrl": s3_endpoint}
    manifest = quick(tiny_manifest, generations=1, output=output)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    storage = Storage.with_endpoint(s3_endpoint)
    assert cli_main(["run", str(path), "--in-process", "--quiet"]) == 0
    first = storage.read_json("s3://runs/inproc/ensemble/manifest.json")
    storage.write_bytes("s3://runs/inproc/cells/0/stale.txt", b"left from before")
    assert cli_main(["run", str(path), "--in-process", "--quiet", "--fresh"]) == 0
    assert not storage.exists("s3://runs/inproc/cells/0/stale.txt")
    storage.remove_tree("s3://runs/inproc/ensemble")
    run = parse_run(manifest)
    assert assemble_ensemble(run, RunLayout.of(run))["generators"] == first["generators"]
    assert storage.exists("s3://runs/inproc/ensemble/manifest.json")


def test_a_killed_process_is_restarted_and_its_cells_resume_from_their_checkpoints(
    tiny_manifest, tmp_path
):
    """Two cells to a process (`cellsPerPod: 2`): killing the process of cells 2 and 3
    restarts it, both resume from their checkpoints, and the other process trains on."""
    manifest = quick(
        tiny_manifest,
        generations=40,
        checkpoint={"every": 2},
        training={"batchSize": 50, "batchesPerGeneration": 30, "device": "cpu"},
    )
    manifest["spec"]["cell"] = {"cellsPerPod": 2}
    run = parse_run(manifest)
    output = run.output_uri()
    local = LocalRun(run, tmp_path, threads=1)
    assert [p.cells for p in local.processes] == [range(0, 2), range(2, 4)]
    victim = local.process_of(2)
    try:
        local.start()
        layout = RunLayout.of(run)

        def victim_checkpointed() -> bool:
            """Both victims hold a checkpoint from generation 4 on. Not 4 itself: a cell
            keeps only its newest two, so a slow poll can miss any one of them."""
            local.tick()
            return all(
                any(int(name) >= 4 for name in layout.cell(c).completed_checkpoints())
                for c in (2, 3)
            )

        assert wait_until(victim_checkpointed, timeout=300)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(30)

        def neighbour_generations() -> list[int]:
            local.poll_status()  # statuses only: no tick, so the victim stays down for now
            return [local.statuses[i].generation for i in (0, 1)]

        at_kill = neighbour_generations()
        # The neighbours train on while the victim is down: wait until both have moved.
        assert wait_until(
            lambda: all(g > k for g, k in zip(neighbour_generations(), at_kill, strict=True)),
            timeout=300,
        )

        def victim_back() -> bool:
            local.tick()
            return victim.restarts == 1 and all(
                getattr(local.statuses[c], "restarts", 0) == 1 for c in (2, 3)
            )

        assert wait_until(victim_back, timeout=300)
        assert wait_until(local.tick, timeout=600, poll=0.1)
    finally:
        local.stop_all(grace_seconds=5)
        local.close()
    assert victim.restarts == 1 and victim.history == [-signal.SIGKILL]
    log = victim.log_path.read_text()
    assert "cell 2 cell" not in log and "cell 2 generation" in log  # one prefix, said once
    for cell in (2, 3):
        resumed = [line for line in log.splitlines() if f"cell {cell} resumed from" in line]
        assert resumed and int(resumed[0].rsplit(" ", 1)[-1]) >= 4
    results = [Storage().read_json(f"{output}/cells/{i}/result.json") for i in range(4)]
    assert all(r["generation"] == 40 for r in results)


def test_a_neighbour_that_never_starts_is_reported_and_the_cell_finishes(tiny_manifest, tmp_path):
    manifest = quick(tiny_manifest, grid={"rows": 1, "cols": 2})
    manifest["spec"]["exchange"] = {"firstStateTimeoutSeconds": 1}
    done = run_cell(write_spec(tmp_path, manifest), cell=0, ports=2, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no state yet from neighbours [1]" in done.stderr
    result = json.loads((tmp_path / "out" / "cells" / "0" / "result.json").read_text())
    assert result["missingNeighbours"] == [1]
    assert [m["cell"] for m in result["mixture"]] == [0]
    # The cell keeps its own log in the output (what a pod leaves behind).
    kept = (tmp_path / "out" / "cells" / "0" / "logs" / "attempt-0.log").read_text()
    assert "no state yet from neighbours [1]" in kept and "generation 4/4" in kept


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tiny_manifest, tmp_path):
    manifest = quick(
        tiny_manifest, grid={"rows": 1, "cols": 1}, generations=10_000, checkpoint={"every": 1000}
    )
    manifest["spec"]["coevolution"]["tournamentSize"] = 1  # a 1x1 neighbourhood holds one
    spec_path = write_spec(tmp_path, manifest)
    port = free_port_block(1)
    process = subprocess.Popen(cell_command(spec_path, 0, port), stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = status_call(channel)

            def training() -> bool:
                try:
                    status = stub(cell_pb2.StatusRequest(), timeout=1)
                except grpc.RpcError:
                    return False
                return status.generation >= 3

            assert wait_until(training, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    names = Storage().list_dir(str(tmp_path / "out" / "cells" / "0" / "checkpoints"))
    assert len(names) == 1 and int(names[0]) >= 3
    assert "stopped by SIGTERM" in process.stderr.read()
    kept = (tmp_path / "out" / "cells" / "0" / "logs" / "attempt-0.log").read_text()
    assert "stopped by SIGTERM" in kept


def test_bad_configuration_exits_with_code_2(tiny_manifest, tmp_path):
    done = run_cell(write_spec(tmp_path, tiny_manifest), cell=7, ports=1, timeout=60)
    assert done.returncode == 2 and "outside the 2x2 grid" in done.stderr
    assert "Traceback" not in done.stderr
    manifest = {**tiny_manifest, "spec": {**tiny_manifest["spec"], "cell": {"cellsPerPod": 2}}}
    spec_path = write_spec(tmp_path, manifest)
    for cells, said in [("1-2", "spans pods of spec.cell.cellsPerPod 2"), ("3-1", "the last")]:
        command = [*cell_command(spec_path, 0, 50051), "--port-by", "slot", "--cells", cells]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_stops_every_cell_after_its_checkpoint(tiny_manifest, tmp_path):
    manifest = quick(tiny_manifest, generations=10_000, checkpoint={"every": 1, "keep": 1})
    manifest["metadata"]["name"] = "interrupted"
    spec_path = write_spec(tmp_path, manifest)
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lipizzaner_cell.commands.cli",
            "run",
            str(spec_path),
            "--quiet",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoints = [tmp_path / "out" / "cells" / str(cell) / "checkpoints" for cell in range(4)]

    def all_training() -> bool:
        return all(Storage().list_dir(str(path)) for path in checkpoints)

    def cells_running() -> bool:
        found = subprocess.run(["pgrep", "-f", "lipizzaner-interrupted-"], capture_output=True)
        return bool(found.stdout.split())

    try:
        assert wait_until(all_training, timeout=120)
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 130  # 128 + SIGINT, as a shell reports it
    finally:
        launcher.kill()
    assert not cells_running()
    assert "resume" in launcher.stdout.read()
    for path in checkpoints:
        names = Storage().list_dir(str(path))
        assert len(names) == 1 and int(names[0]) >= 1


def test_cell_threads_follow_the_container_cpu_limit(tmp_path):
    from lipizzaner_cell.runtime.cell_process import default_threads

    limit = tmp_path / "cpu.max"
    limit.write_text("200000 100000\n")
    assert default_threads(str(limit)) == 2
    limit.write_text("50000 100000\n")
    assert default_threads(str(limit)) == 1
    limit.write_text("max 100000\n")
    assert default_threads(str(limit)) >= 1
    assert default_threads(str(tmp_path / "missing")) >= 1


def test_a_run_with_mutual_tls_exchanges_and_finishes(tiny_manifest):
    """`lipizzaner run` makes the run's certificates; every cell serves and pulls over mTLS."""
    manifest = quick(tiny_manifest, grid={"rows": 1, "cols": 2}, generations=2)
    manifest["spec"]["exchange"]["tls"] = {"enabled": True}
    run = parse_run(manifest)
    result = run_local(run, show_progress=False, threads=1)
    layout = RunLayout.of(run)
    for cell in range(2):
        assert layout.storage.read_json(layout.cell(cell).result)["missingNeighbours"] == []
        kept = layout.storage.read_bytes(layout.cell(cell).log(0)).decode()
        assert "(mutual TLS)" in kept
    assert result["bestCell"] in (0, 1) and result["generators"]


def test_generator_emas_cross_the_wire_between_cell_processes(tiny_manifest):
    """`training.generatorEma`: every centre state carries its EMA over gRPC, and each
    cell accepts its neighbour's (a rejected state would leave the neighbour missing)."""
    manifest = quick(tiny_manifest, grid={"rows": 1, "cols": 2}, generations=2)
    manifest["spec"]["training"]["generatorEma"] = {"decay": 0.99}
    run = parse_run(manifest)
    result = run_local(run, show_progress=False, threads=1)
    layout = RunLayout.of(run)
    for cell in range(2):
        assert layout.storage.read_json(layout.cell(cell).result)["missingNeighbours"] == []
        assert "rejected" not in layout.storage.read_bytes(layout.cell(cell).log(0)).decode()
    assert len(result["generators"]) >= 1


def test_unusable_tls_material_exits_with_code_2(tiny_manifest, tmp_path):
    spec_path = write_spec(tmp_path, tiny_manifest)
    command = [*cell_command(spec_path, 0, free_port_block(1)), "--tls-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "bad TLS material" in done.stderr and "missing ca.crt, tls.crt, tls.key" in done.stderr
    assert "Traceback" not in done.stderr


def test_with_max_failed_cells_a_dead_cell_is_given_up_and_the_rest_finish(tiny_manifest, tmp_path):
    """maxRestartsPerCell 0, maxFailedCells 1: a killed cell is not restarted; its
    neighbours train on without it and the ensemble comes from the three that finished.

    With the last mixtures (`keep: last`): a mixture kept from before the kill may hold a
    copy of the dead cell's generator, rightly, so keep-best would make this depend on
    when the kill lands."""
    manifest = quick(
        tiny_manifest,
        generations=24,
        failurePolicy={"maxRestartsPerCell": 0, "maxFailedCells": 1},
        training={"batchSize": 50, "batchesPerGeneration": 10, "device": "cpu"},
    )
    manifest["spec"]["mixture"] = {**manifest["spec"]["mixture"], "keep": "last"}
    manifest["spec"]["exchange"] = {"firstStateTimeoutSeconds": 5}
    run = parse_run(manifest)
    local = LocalRun(run, Path(run.output_uri()).parent, threads=1)
    victim = local.process_of(1)
    try:
        local.start()
        assert wait_until(
            lambda: (
                (local.poll_status() or 0) == 0
                and local.statuses[1] is not None
                and local.statuses[1].generation >= 2
            ),
            timeout=300,
        )
        victim.process.send_signal(signal.SIGKILL)
        assert wait_until(local.tick, timeout=600, poll=0.1)
    finally:
        local.stop_all(grace_seconds=5)
        local.close()
    assert victim.given_up and victim.restarts == 0
    assert [p.succeeded for p in local.processes] == [True, False, True, True]
    manifest_out = assemble_ensemble(run, RunLayout.of(run))
    assert manifest_out["bestCell"] != 1
    assert 1 not in [entry["cell"] for entry in manifest_out["cells"]]


def test_the_cell_process_fixes_glibcs_mmap_threshold():
    """Large blocks are mapped apart and given back (glibc); 0 leaves glibc's own rule.
    Blocks under the threshold freed and allocated again reuse their pages instead of
    faulting fresh ones in (the heap's top is not trimmed after each)."""
    from lipizzaner_cell.runtime.cell_process import fix_mmap_threshold

    if platform.libc_ver()[0] != "glibc":
        assert fix_mmap_threshold(4 << 20) is False
        return
    assert fix_mmap_threshold(4 << 20) is True
    assert fix_mmap_threshold(0) is False
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        block = b"\x01" * (2 << 20)  # 512 pages written, as a 2 MiB gRPC message's are
        del block
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults < 2 * 512


def test_port_blocks_handed_out_by_one_process_never_overlap():
    """A block promised to a run stays its own until bound: the test of the dashboard
    once gave Prometheus a cell's gRPC port that was free, but promised."""
    blocks = [range(base, base + 40) for base in (free_port_block(40) for _ in range(100))]
    ports = [port for block in blocks for port in block]
    assert len(ports) == len(set(ports))
