"""Several cells in one process (a pod of `cell.cellsPerPod`): stops, logs, stacked
training, and neighbours read from each other's board in memory."""

import json
import signal
import subprocess

import grpc
from cell_processes import quick, write_spec
from conftest import wait_until
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.neighbourhood import InProcessExchange
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.exchange.client import NeighbourPuller, SiblingPuller
from lipizzaner_cell.exchange.server import CentreBoard
from lipizzaner_cell.executors.local_processes import cell_command as launcher_cell_command
from lipizzaner_cell.executors.local_processes import free_port_block
from lipizzaner_cell.runtime.cell_process import build_parser
from lipizzaner_cell.runtime.peers import neighbour_pullers
from lipizzaner_core.spec import parse_run
from lipizzaner_core.storage import Storage
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.status import status_call


def test_sigterm_stops_every_cell_of_a_process_at_a_checkpoint(tiny_manifest, tmp_path):
    """A process of two cells (a pod of `cellsPerPod: 2`): SIGTERM checkpoints both and
    exits 0, each cell saying so in its own kept log."""
    manifest = quick(
        tiny_manifest, grid={"rows": 1, "cols": 2}, generations=10_000, checkpoint={"every": 1000}
    )
    manifest["spec"]["cell"] = {"cellsPerPod": 2}
    port = free_port_block(2)
    command = launcher_cell_command(write_spec(tmp_path, manifest), range(2), port, 1)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    channels = [grpc.insecure_channel(f"127.0.0.1:{port + i}") for i in range(2)]
    try:
        stubs = [status_call(channel) for channel in channels]

        def both_training() -> bool:
            try:
                return all(s(cell_pb2.StatusRequest(), timeout=1).generation >= 2 for s in stubs)
            except grpc.RpcError:
                return False

        assert wait_until(both_training, timeout=120)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        for channel in channels:
            channel.close()
    for cell in range(2):
        out = tmp_path / "out" / "cells" / str(cell)
        names = Storage().list_dir(str(out / "checkpoints"))
        assert len(names) == 1 and int(names[0]) >= 2
        kept = (out / "logs" / "attempt-0.log").read_text()
        assert f"cell {cell} stopped by SIGTERM" in kept


def test_one_process_hosts_two_cells_and_each_keeps_its_own_log(tiny_manifest, tmp_path):
    """`--cells 0-1`: both cells of a 1x2 grid train in one process, exchange over gRPC
    on their own ports, and each cell's kept log holds its own lines, not its sibling's."""
    manifest = quick(tiny_manifest, grid={"rows": 1, "cols": 2})
    manifest["spec"]["cell"] = {"cellsPerPod": 2}
    command = launcher_cell_command(write_spec(tmp_path, manifest), range(2), free_port_block(2), 1)
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    for cell, sibling in [(0, 1), (1, 0)]:
        out = tmp_path / "out" / "cells" / str(cell)
        result = json.loads((out / "result.json").read_text())
        assert result["generation"] == 4 and result["missingNeighbours"] == []
        assert sorted(m["cell"] for m in result["mixture"]) == [0, 1]
        kept = (out / "logs" / "attempt-0.log").read_text()
        assert f"cell {cell} generation 4/4" in kept
        assert f"cell {sibling} generation" not in kept


def test_one_process_trains_four_stacked_cells_and_each_keeps_its_own_files(
    tiny_manifest, tmp_path
):
    """`training.stacking.cells: 4` in a pod of four (`--cells 0-3`): the cells train step
    4 as one program, exchange over gRPC, and each writes its own result, history,
    checkpoints and log, as unstacked cells do."""
    manifest = quick(tiny_manifest)
    manifest["spec"]["cell"] = {"cellsPerPod": 4}
    manifest["spec"]["training"]["stacking"] = {"cells": 4}
    command = launcher_cell_command(write_spec(tmp_path, manifest), range(4), free_port_block(4), 1)
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    assert "cells 0-3 train step 4 as one stacked program" in done.stderr
    for cell in range(4):
        out = tmp_path / "out" / "cells" / str(cell)
        result = json.loads((out / "result.json").read_text())
        assert result["generation"] == 4 and result["missingNeighbours"] == []
        history = (out / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["generation"] for line in history] == [1, 2, 3, 4]
        assert f"cell {cell} generation 4/4" in (out / "logs" / "attempt-0.log").read_text()


def test_neighbours_in_the_same_process_are_read_from_their_board(tiny_manifest):
    """A pod of cells 0 and 1 of a 2x2 grid: cell 0 reads cell 1 from its board in memory
    (no gRPC, no copy) and pulls cell 2 over gRPC; a published state is there at once."""
    manifest = quick(tiny_manifest)
    manifest["spec"]["cell"] = {"cellsPerPod": 2}
    run = parse_run(manifest)
    args = build_parser().parse_args(["--cells", "0-1", "--grpc-port-base", "50051"])
    boards = {0: CentreBoard(), 1: CentreBoard()}
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    pullers = neighbour_pullers(run, args, 0, dataset, None, None, boards)
    assert isinstance(pullers[1], SiblingPuller) and isinstance(pullers[2], NeighbourPuller)
    sibling = pullers[1]
    assert sibling.latest is None and not sibling.first_state.wait(0.01)
    state = CellEngine(run, 1, InProcessExchange().provider([]), dataset).centre_state()
    boards[1].publish(state)
    assert sibling.first_state.wait(0.01) and sibling.wait_for_generation(0, 0.01)
    with sibling.reading() as read:
        assert read is state
