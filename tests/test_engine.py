"""The generation loop on tiny grids: it learns, it resumes bit for bit, every loss trains."""

import copy

import pytest
import torch
from lipizzaner_cell.checkpoint import export_state
from lipizzaner_cell.datasets import load_dataset
from lipizzaner_cell.engine import CellEngine
from lipizzaner_cell.in_process import run_in_process
from lipizzaner_cell.neighbourhood import InProcessExchange
from lipizzaner_cell.scores import ModeScorer
from lipizzaner_operator import storage
from lipizzaner_operator.spec import parse_run
from lipizzaner_operator.topology import Grid


def with_spec(manifest: dict, **changes) -> dict:
    manifest = copy.deepcopy(manifest)
    manifest["spec"].update(changes)
    return manifest


def final_state(outcome) -> list[tuple[dict, dict]]:
    return [export_state(engine) for engine in outcome.engines]


def test_resume_from_a_checkpoint_continues_bit_for_bit(tiny_manifest, tmp_path):
    straight = with_spec(tiny_manifest, generations=4, output={"uri": str(tmp_path / "a")})
    first_leg = with_spec(tiny_manifest, generations=2, output={"uri": str(tmp_path / "b")})
    second_leg = with_spec(first_leg, generations=4)

    reference = run_in_process(parse_run(straight), resume=False)
    run_in_process(parse_run(first_leg), resume=False)
    resumed = run_in_process(parse_run(second_leg))

    assert resumed.resumed_at == {0: 2, 1: 2, 2: 2, 3: 2}
    for (ref_tensors, ref_meta), (res_tensors, res_meta) in zip(
        final_state(reference), final_state(resumed), strict=True
    ):
        assert ref_meta == res_meta
        assert ref_tensors.keys() == res_tensors.keys()
        for name, tensor in ref_tensors.items():
            assert torch.equal(tensor, res_tensors[name]), name


def test_checkpoints_are_pruned_to_keep(tiny_manifest, tmp_path):
    manifest = with_spec(tiny_manifest, generations=6, checkpoint={"every": 1, "keep": 2})
    run_in_process(parse_run(manifest), resume=False)
    names = storage.list_dir(f"{tiny_manifest['spec']['output']['uri']}/cells/0/checkpoints")
    assert names == ["000005", "000006"]


def test_cells_have_distinct_seeds_and_so_distinct_initial_networks(tiny_manifest):
    run = parse_run(tiny_manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    exchange = InProcessExchange()
    engines = [CellEngine(run, i, exchange.provider([]), dataset) for i in range(2)]
    first = [next(e.generators[0].net.parameters()) for e in engines]
    assert not torch.equal(first[0], first[1])


def initial_mode_coverage(run, dataset) -> float:
    exchange = InProcessExchange()
    engine = CellEngine(run, 0, exchange.provider([]), dataset)
    scorer = ModeScorer(dataset.modes, dataset.mode_std)
    with torch.no_grad():
        return scorer.scores(engine.generators[0].net(engine.noise(5000)))["modes_covered"]


def test_a_tiny_ring_run_covers_more_modes_than_at_generation_zero(tiny_manifest):
    manifest = with_spec(
        tiny_manifest,
        generations=20,
        dataset={"name": "gaussian-ring", "std": 0.1, "size": 5000},
        network={
            "latentSize": 16,
            "generator": {"hiddenSizes": [64, 64], "output": "linear"},
            "discriminator": {"hiddenSizes": [64, 64]},
        },
        training={"batchSize": 100, "batchesPerGeneration": 40, "device": "cpu"},
    )
    manifest["spec"]["coevolution"]["learningRate"] = 0.003
    run = parse_run(manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    before = initial_mode_coverage(run, dataset)
    outcome = run_in_process(run, resume=False)
    after = outcome.manifest["scores"]
    assert after["modes_covered"] > before
    assert after["modes_covered"] >= 6
    assert after["high_quality_fraction"] > 0.25
    reports = outcome.reports[0]
    assert reports[-1].mixture_score < reports[0].mixture_score


@pytest.mark.parametrize("loss", ["bce", "heuristic", "mse", "wgan-gp", "mustangs"])
def test_every_loss_trains_and_moves_the_weights(tiny_manifest, loss):
    run = parse_run(with_spec(tiny_manifest, loss=loss, grid={"rows": 1, "cols": 2}))
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    exchange = InProcessExchange()
    grid = Grid(1, 2)
    engines = [
        CellEngine(run, i, exchange.provider([n.index for n in grid.neighbours(i)]), dataset)
        for i in range(2)
    ]
    before = [p.detach().clone() for p in engines[0].generators[0].net.parameters()]
    for engine in engines:
        engine.publish_centre()
    exchange.commit()
    report = engines[0].step()
    after = list(engines[0].generators[0].net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert report.neighbours_present == 1
    assert torch.isfinite(torch.tensor([report.generator_loss, report.discriminator_loss])).all()


def test_discriminator_skip_every_nth_skips_discriminator_steps(tiny_manifest):
    manifest = with_spec(tiny_manifest, grid={"rows": 1, "cols": 1})
    manifest["spec"]["coevolution"].update(discriminatorSkipEveryNth=1, tournamentSize=1)
    run = parse_run(manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    engine = CellEngine(run, 0, InProcessExchange().provider([]), dataset)
    before = [p.detach().clone() for p in engine.discriminators[0].net.parameters()]
    engine.step()
    after = list(engine.discriminators[0].net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_a_missing_neighbour_is_left_out_and_its_weight_kept(tiny_manifest):
    run = parse_run(tiny_manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    exchange = InProcessExchange()
    engine = CellEngine(run, 0, exchange.provider([1, 2]), dataset)
    report = engine.step()
    assert report.neighbours_present == 0
    assert engine.mixture_weights[1] == engine.mixture_weights[2] == pytest.approx(1 / 3)
