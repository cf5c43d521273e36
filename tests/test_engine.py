"""The generation loop on tiny grids: it learns, it resumes bit for bit, every loss trains."""

import pytest
import torch
from engine_runs import assert_resume_is_bit_exact, layout_result, two_cells, with_spec
from lipizzaner_cell.algorithm import training
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.individual import mutate_learning_rate
from lipizzaner_cell.algorithm.neighbourhood import InProcessExchange
from lipizzaner_cell.algorithm.report import GENERATION_PHASES
from lipizzaner_cell.algorithm.state import State
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.runtime.checkpoint import restore_latest, save_checkpoint
from lipizzaner_cell.scores.scorers import ModeScorer
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from lipizzaner_core.storage import Storage


def test_resume_from_a_checkpoint_continues_bit_for_bit(tiny_manifest, tmp_path):
    assert_resume_is_bit_exact(tiny_manifest, tmp_path)


def test_a_semi_supervised_run_resumes_bit_for_bit(tiny_manifest, tmp_path):
    """Its labelled samples are drawn anew from the cell's seed; its batches from the
    checkpointed generators."""
    manifest = with_spec(tiny_manifest, semiSupervised={"enabled": True, "labelledBatchSize": 20})
    manifest["spec"]["dataset"]["labelRate"] = 0.05
    assert_resume_is_bit_exact(manifest, tmp_path)


P3 = {"populationSize": 3, "tournamentSize": 3, "replacements": 2}


# Populations of several individuals: clones, imports and replacements must share no
# optimizer state, or a resumed run (whose individuals were loaded apart) diverges.
@pytest.mark.parametrize(
    "coevolution",
    [
        {"populationSize": 2, "tournamentSize": 3, "replacements": 2},
        P3,
        {**P3, "replacementRule": "offspring"},
        {"populationSize": 2, "selection": False},
        {"populationSize": 2, "tournamentSize": 3, "replacements": 1},
    ],
    ids=["p2-faithful", "p3-faithful", "p3-offspring", "p2-no-selection", "p2-r1"],
)
def test_resume_is_bit_exact_with_larger_populations(tiny_manifest, tmp_path, coevolution):
    manifest = with_spec(tiny_manifest, grid={"rows": 2, "cols": 2}, generations=6)
    manifest["spec"]["coevolution"].update(coevolution)
    manifest["spec"]["training"]["batchesPerGeneration"] = 3
    assert_resume_is_bit_exact(manifest, tmp_path, generations=6)


class EngineWithACounter(CellEngine):
    """An engine that gained a field: a tensor and a count, saved by the engine alone."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pulls = 0
        self.running = torch.zeros(3)

    def state_dict(self) -> State:
        state = super().state_dict()
        state.values["pulls"] = self.pulls
        state.tensors["running"] = self.running
        return state

    def load_state_dict(self, state: State) -> None:
        super().load_state_dict(state)
        self.pulls = state.values["pulls"]
        self.running = state.tensors["running"].clone()


def test_a_field_the_engine_gains_resumes_without_a_change_to_checkpoints(tiny_manifest, tmp_path):
    """The engine owns its state: checkpoint.py writes whatever state_dict() says."""
    run = parse_run(tiny_manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    cell = RunLayout(str(tmp_path), Storage()).cell(0)
    exchange = InProcessExchange()
    trained = EngineWithACounter(run, 0, exchange.provider([]), dataset)
    trained.step()
    trained.pulls, trained.running = 7, torch.tensor([1.0, 2.0, 3.0])
    save_checkpoint(trained, cell, keep=1)

    resumed = EngineWithACounter(run, 0, exchange.provider([]), dataset)
    assert restore_latest(resumed, cell)
    assert (resumed.pulls, resumed.generation) == (7, 1)
    assert torch.equal(resumed.running, torch.tensor([1.0, 2.0, 3.0]))
    for kept, back in zip(trained.generators, resumed.generators, strict=True):
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                kept.net.state_dict().values(), back.net.state_dict().values(), strict=True
            )
        )


def test_checkpoints_are_pruned_to_keep(tiny_manifest, tmp_path):
    manifest = with_spec(tiny_manifest, generations=6, checkpoint={"every": 1, "keep": 2})
    run_in_process(parse_run(manifest), resume=False)
    names = Storage().list_dir(f"{tiny_manifest['spec']['output']['uri']}/cells/0/checkpoints")
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


@pytest.mark.parametrize(
    "loss", ["bce", "heuristic", "minimax", "mse", "wgan", "wgan-gp", "mustangs"]
)
def test_every_loss_trains_and_moves_the_weights(tiny_manifest, loss):
    engines = two_cells(with_spec(tiny_manifest, loss=loss, grid={"rows": 1, "cols": 2}))
    before = [p.detach().clone() for p in engines[0].generators[0].net.parameters()]
    report = engines[0].step()
    after = list(engines[0].generators[0].net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert report.neighbours_present == 1
    assert torch.isfinite(torch.tensor([report.generator_loss, report.discriminator_loss])).all()
    assert tuple(report.seconds) == GENERATION_PHASES  # what the benchmarks tabulate


def test_mustangs_at_creation_trains_each_cell_with_its_draw_and_resumes_bit_for_bit(
    tiny_manifest, tmp_path
):
    manifest = with_spec(tiny_manifest, loss="mustangs", mustangs={"draw": "at-creation"})
    assert_resume_is_bit_exact(manifest, tmp_path)
    drawn = [
        layout_result(with_spec(manifest, output={"uri": str(tmp_path / "a")}), c)["loss"]
        for c in range(4)
    ]
    assert set(drawn) <= {"bce", "mse", "heuristic"}


def test_wgan_clips_the_critic_and_trains_it_five_times_per_generator_step(tiny_manifest):
    manifest = with_spec(tiny_manifest, loss="wgan", grid={"rows": 1, "cols": 2})
    manifest["spec"]["coevolution"]["selection"] = False  # locals train in place
    manifest["spec"]["training"]["batchesPerGeneration"] = 10
    engine = two_cells(manifest)[0]
    engine.step()
    critic, generator = engine.discriminators[0], engine.generators[0]
    assert all(p.abs().max() <= 0.01 for p in critic.net.parameters())
    assert isinstance(critic.optimizer, torch.optim.RMSprop)
    assert float(critic.optimizer.state_dict()["state"][0]["step"]) == 10
    assert float(generator.optimizer.state_dict()["state"][0]["step"]) == 2


def test_the_original_wgan_trains_blocks_of_critic_steps_after_each_generator_step(
    tiny_manifest, tmp_path
):
    """`wgan-original`: a generator step, then a block of critic steps from the same batch
    on, rates mutated once per block; 100 a block while the cell's generator steps are
    fewer than 25 and at every 500th, else 5; the count survives a resume."""
    manifest = with_spec(tiny_manifest, loss="wgan-original", grid={"rows": 1, "cols": 2})
    manifest["spec"]["coevolution"]["selection"] = False  # locals train in place
    manifest["spec"]["training"]["batchesPerGeneration"] = 12
    trainer = two_cells(manifest)[0].trainer
    assert list(trainer.schedule()) == [(0, "g", True)] + [(b, "d", b == 0) for b in range(12)]
    trainer.generator_steps = 30
    blocks = [(0, "g", True)] + [(b, "d", b == 0) for b in range(5)]
    blocks += [(5, "g", True)] + [(b, "d", b == 5) for b in range(5, 10)]
    blocks += [(10, "g", True), (10, "d", True), (11, "d", False)]
    assert list(trainer.schedule()) == blocks
    assert trainer.generator_steps == 33
    trainer.generator_steps = 498  # the 500th step warms up again
    assert [role for _, role, _ in trainer.schedule()] == ["g"] + ["d"] * 5 + ["g"] + ["d"] * 7
    engine = two_cells(manifest)[0]
    engine.step()
    critic = engine.discriminators[0]
    assert all(p.abs().max() <= 0.01 for p in critic.net.parameters())
    assert isinstance(critic.optimizer, torch.optim.RMSprop)
    assert engine.fitness_loss.name == "bce"  # the original ranked its WGAN by BCE
    manifest["spec"]["training"]["batchesPerGeneration"] = 4
    assert_resume_is_bit_exact(manifest, tmp_path)


@pytest.mark.parametrize(("skip", "discriminator_steps"), [(0, 6), (1, 3), (2, 2)])
def test_the_discriminator_trains_on_batches_where_batch_mod_skip_plus_one_is_zero(
    tiny_manifest, skip, discriminator_steps
):
    """The original's discriminator_skip_each_nth_step; 1 (its MNIST value) trains D on
    every other batch, never "not at all"."""
    manifest = with_spec(tiny_manifest, grid={"rows": 1, "cols": 1})
    manifest["spec"]["coevolution"].update(
        discriminatorSkipEveryNth=skip, tournamentSize=1, selection=False
    )
    manifest["spec"]["training"]["batchesPerGeneration"] = 6
    run = parse_run(manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    engine = CellEngine(run, 0, InProcessExchange().provider([]), dataset)
    engine.step()
    state = engine.discriminators[0].optimizer.state_dict()["state"][0]
    assert float(state["step"]) == discriminator_steps
    assert float(engine.generators[0].optimizer.state_dict()["state"][0]["step"]) == 6


def test_without_selection_the_local_individuals_train_in_place_against_the_neighbourhood(
    tiny_manifest,
):
    """The original's enable_selection: False: no clones, no replacement; local players
    train against the whole neighbourhood's opponents and are re-scored after."""
    manifest = with_spec(tiny_manifest, grid={"rows": 1, "cols": 2})
    manifest["spec"]["coevolution"]["selection"] = False
    engine = two_cells(manifest)[0]
    local_g, local_d = engine.generators[0], engine.discriminators[0]
    weights = [p.detach().clone() for p in local_g.net.parameters()]
    hood = engine.snapshot_neighbourhood()
    players = engine.select(hood)
    assert (
        players.generators == engine.generators and players.discriminators == engine.discriminators
    )
    assert players.generator_opponents == hood.discriminators  # local and the neighbour's
    assert players.discriminator_opponents == hood.generators
    report = engine.step()
    assert engine.generators[0] is local_g and engine.discriminators[0] is local_d
    assert any(
        not torch.equal(a, b) for a, b in zip(local_g.net.parameters(), weights, strict=True)
    )
    assert (report.offspring_offered, report.offspring_accepted) == (0, 0)
    assert local_g.fitness < float("inf")


@pytest.mark.parametrize("send_moments", [True, False])
def test_a_selected_neighbour_continues_its_own_adam_moments(tiny_manifest, send_moments):
    """As in the original, an imported individual brings its optimizer state; with
    `exchange.optimizerState: false` it continues a copy of the local individual's."""
    manifest = with_spec(tiny_manifest, grid={"rows": 1, "cols": 2})
    manifest["spec"]["exchange"] = {"optimizerState": send_moments}
    manifest["spec"]["coevolution"]["tournamentSize"] = 2
    engines = two_cells(manifest)
    for engine in engines:
        engine.step()
        engine.publish_centre()
    engines[0].provider.exchange.commit()
    engine, neighbour = engines
    hood = engine.snapshot_neighbourhood()
    imported = hood.generators[-1]
    for individual in hood.generators:
        individual.fitness = 0.0 if individual is imported else 1.0  # the import wins
    expected = (neighbour if send_moments else engine).generators[0].moments()
    players = engine.select(hood)
    assert all(g.source_cell == 1 for g in players.generators)
    got = players.generators[0].moments()
    assert got.keys() == expected.keys() and got
    assert all(torch.equal(got[k].cpu(), expected[k].cpu()) for k in got)


def test_generator_and_discriminator_learning_rates_may_differ(tiny_manifest):
    manifest = with_spec(tiny_manifest, grid={"rows": 1, "cols": 1})
    manifest["spec"]["coevolution"].update(
        tournamentSize=1, generatorLearningRate=1e-4, discriminatorLearningRate=4e-4
    )
    manifest["spec"]["coevolution"]["mutation"] = {"probability": 0.0}
    run = parse_run(manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    engine = CellEngine(run, 0, InProcessExchange().provider([]), dataset)
    engine.step()
    assert engine.generators[0].learning_rate == 1e-4
    assert engine.discriminators[0].learning_rate == 4e-4
    assert engine.discriminators[0].optimizer.param_groups[0]["lr"] == 4e-4


def test_the_mutation_rule_of_the_spec_is_the_one_the_cell_trains_with(tiny_manifest, monkeypatch):
    manifest = with_spec(tiny_manifest, grid={"rows": 1, "cols": 1})
    manifest["spec"]["coevolution"].update(tournamentSize=1)
    manifest["spec"]["coevolution"]["mutation"] = {"probability": 1.0, "rule": "unbiased"}
    rules = []

    def recorded(*args, **kwargs):
        rules.append(args[5])
        return mutate_learning_rate(*args, **kwargs)

    monkeypatch.setattr(training, "mutate_learning_rate", recorded)
    run = parse_run(manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    CellEngine(run, 0, InProcessExchange().provider([]), dataset).step()
    assert rules and set(rules) == {"unbiased"}
