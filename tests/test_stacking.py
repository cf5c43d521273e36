"""Stacked cells (`training.stacking`): K cells' step 4 as one vmapped program, each cell
keeping its own decisions, numbers, checkpoints and life."""

import copy
import logging
import threading

import pytest
import torch
from conftest import wait_until
from engine_runs import assert_resume_is_bit_exact, final_state
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.neighbourhood import CentreState
from lipizzaner_cell.algorithm.stacked_steps import unstackable_because
from lipizzaner_cell.algorithm.stacking import training_stacks
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.driver import CellDriver
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from lipizzaner_core.topology import Grid

# Float32 rounding of batched kernels (a vmapped linear layer's input gradient is a batched
# matrix product): measured at most 1.2e-7 after 4 generations on this grid.
TOLERANCE = 1e-6


def stacked(manifest: dict, cells: int, out: str, **spec_changes) -> dict:
    manifest = copy.deepcopy(manifest)
    manifest["spec"].update(spec_changes)
    manifest["spec"]["training"]["stacking"] = {"cells": cells}
    manifest["spec"]["cell"] = {"cellsPerPod": 4}
    manifest["spec"]["output"] = {"uri": out}
    return manifest


def assert_close(reference, other) -> None:
    """Every tensor within TOLERANCE, and every decision (rates, origins) the same."""
    for (ref_tensors, ref_meta), (tensors, meta) in zip(reference, other, strict=True):
        assert ref_tensors.keys() == tensors.keys()
        for name, tensor in ref_tensors.items():
            if tensor.is_floating_point():
                assert torch.allclose(tensor, tensors[name], rtol=0, atol=TOLERANCE), name
            else:
                assert torch.equal(tensor, tensors[name]), name
        for role in ("generators", "discriminators"):
            for mine, theirs in zip(ref_meta[role], meta[role], strict=True):
                assert mine["learning_rate"] == theirs["learning_rate"]
                assert mine["source_cell"] == theirs["source_cell"]
                assert mine["fitness"] == pytest.approx(theirs["fitness"], abs=1e-5)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"coevolution": {"populationSize": 2, "fitness": {"sampleSize": 200}}},
        {"coevolution": {"selection": False, "fitness": {"sampleSize": 200}}},
        {"loss": "mustangs"},
        {
            "loss": "mse",
            "training": {
                "batchSize": 50,
                "batchesPerGeneration": 5,
                "generatorEma": {"decay": 0.0},
            },
        },
    ],
    ids=["defaults", "population-2", "selection-off", "mustangs", "mse-no-ema"],
)
def test_a_stacked_run_follows_the_unstacked_one(tiny_manifest, tmp_path, changes):
    """Four cells stacked in one program draw every decision as four cells on their own
    do, and end with the same tensors up to float32 rounding."""
    changes = copy.deepcopy(changes)
    if "coevolution" in changes:
        changes["coevolution"]["learningRate"] = 0.001
    alone = run_in_process(parse_run(stacked(tiny_manifest, 1, str(tmp_path / "a"), **changes)))
    together = run_in_process(parse_run(stacked(tiny_manifest, 4, str(tmp_path / "b"), **changes)))
    assert all(engine.stack is not None for engine in together.engines)
    assert_close(final_state(alone), final_state(together))


def test_resume_is_bit_exact_within_the_stacked_mode(tiny_manifest, tmp_path):
    assert_resume_is_bit_exact(stacked(tiny_manifest, 4, str(tmp_path / "x")), tmp_path)


class LiveBoard:
    """Centre states visible as soon as published: cells in free-running threads."""

    def __init__(self) -> None:
        self.states: dict[int, CentreState] = {}
        self.lock = threading.Lock()

    def provider(self, neighbours: list[int]):
        board = self

        class Provider:
            def neighbour_states(self, generation: int):
                with board.lock:
                    seen = {i: board.states[i] for i in neighbours if i in board.states}
                return _Hold(seen)

            def publish(self, state: CentreState) -> None:
                with board.lock:
                    board.states[state.cell] = state

        return Provider()


class _Hold:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


class Crash(Exception):
    pass


def test_a_stacked_cell_killed_and_restarted_while_its_siblings_go_on(tiny_manifest, tmp_path):
    """Four stacked cells, each in its own thread as in a cell process: cell 1 dies at
    generation 2; its siblings train on without it; restarted from its checkpoint, it
    joins the stack again and every cell finishes."""
    manifest = stacked(tiny_manifest, 4, str(tmp_path / "out"), generations=8)
    manifest["spec"]["checkpoint"] = {"every": 1}
    run = parse_run(manifest)
    layout = RunLayout.of(run)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    stack = training_stacks(run.spec, range(4), torch.device("cpu"), 1)[0]
    board, grid = LiveBoard(), Grid(2, 2)
    drivers: dict[int, CellDriver] = {}

    def start(cell: int) -> CellDriver:
        provider = board.provider([n.index for n in grid.neighbours(cell)])
        engine = CellEngine(run, cell, provider, dataset, stack=stack)
        driver = CellDriver(engine, layout.cell(cell))
        driver.resume()
        engine.publish_centre()
        drivers[cell] = driver
        return driver

    failures: list[BaseException] = []

    def life(driver: CellDriver, crash_at: int | None = None) -> None:
        torch.set_num_threads(1)
        try:
            with stack.membership(driver.engine.index):
                while not driver.done:
                    if driver.engine.generation == crash_at:
                        raise Crash
                    driver.advance()
        except Crash:
            pass
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=life, args=(start(cell), 2 if cell == 1 else None))
        for cell in range(4)
    ]
    for thread in threads:
        thread.start()
    threads[1].join(timeout=240)
    assert not threads[1].is_alive() and drivers[1].engine.generation == 2
    siblings_on = wait_until(lambda: all(drivers[c].engine.generation >= 5 for c in (0, 2, 3)))
    assert siblings_on, "the siblings did not train on without their dead stack member"
    restarted = start(1)
    assert restarted.engine.generation == 2  # its last checkpoint
    threads.append(threading.Thread(target=life, args=(restarted,)))
    threads[-1].start()
    for thread in threads:
        thread.join(timeout=240)
    assert not failures and not any(t.is_alive() for t in threads)
    assert [drivers[c].engine.generation for c in range(4)] == [8, 8, 8, 8]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"semiSupervised": {"enabled": True, "labelledBatchSize": 50}}, "semi-supervised"),
        ({"loss": "wgan-gp"}, "loss wgan-gp"),
        ({"loss": "wgan-original"}, "loss wgan-original"),
    ],
    ids=["semi-supervised", "wgan-gp", "wgan-original"],
)
def test_unstackable_runs_step_cell_by_cell_and_say_why(
    tiny_manifest, tmp_path, caplog, changes, reason
):
    """Runs whose steps draw random numbers or differ in structure fall back to steps
    cell by cell, say so once, and end exactly as the unstacked run."""
    if "semiSupervised" in changes:
        changes = {**changes, "dataset": {**tiny_manifest["spec"]["dataset"], "labelRate": 0.01}}
    with caplog.at_level(logging.WARNING):
        together = run_in_process(
            parse_run(stacked(tiny_manifest, 4, str(tmp_path / "b"), **changes)), resume=False
        )
    assert f"training.stacking: cells step one by one: {reason}" in caplog.text
    assert all(engine.stack is None for engine in together.engines)
    alone = run_in_process(
        parse_run(stacked(tiny_manifest, 1, str(tmp_path / "a"), **changes)), resume=False
    )
    for (ref, _), (tensors, _) in zip(final_state(alone), final_state(together), strict=True):
        assert all(torch.equal(t, tensors[n]) for n, t in ref.items())


def test_convolutional_and_recurrent_networks_are_not_stacked(tiny_manifest):
    datasets = {"dcgan": {"name": "mnist", "path": "mnist"}, "rnn": {"name": "sine-waves"}}
    for network, data in datasets.items():
        manifest = copy.deepcopy(tiny_manifest)
        manifest["spec"]["dataset"] = data
        manifest["spec"]["network"] = {"generator": {"architecture": network}}
        assert f"the {network} generator" in (unstackable_because(parse_run(manifest).spec) or "")
