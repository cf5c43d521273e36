import copy

import pytest
import yaml
from conftest import TINY_RING
from lipizzaner_cell.commands.cli import main
from lipizzaner_core.spec import SpecError, dump_run, load_run, parse_run


def errors_for(patch: dict) -> list[str]:
    manifest = copy.deepcopy(TINY_RING)
    for path, value in patch.items():
        *parents, leaf = path.split(".")
        node = manifest
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    with pytest.raises(SpecError) as info:
        parse_run(manifest)
    return info.value.errors


def test_defaults_are_the_original_mnist_configuration_with_half_the_fitness_samples():
    run = parse_run({**TINY_RING, "spec": {"dataset": {"name": "mnist", "path": "/data"}}})
    co = run.spec.coevolution
    assert (co.population_size, co.tournament_size) == (1, 2)
    # 1e-3, not the original's 2e-4, for perceptrons (docs/algorithm.md).
    assert run.spec.initial_rate("generator") == run.spec.initial_rate("discriminator") == 1e-3
    assert (co.mutation.alpha, co.mutation.probability) == (1e-4, 0.5)
    assert co.mutation.rule == "original"  # the formula as written, drift and all
    # 500, not the original's 1000: same quality, half the time (docs/algorithm.md).
    assert (co.fitness.sample_size, co.fitness.mode) == (500, "average")
    assert run.spec.mixture.sigma == 0.01
    assert run.spec.training.batch_size == 100
    assert run.spec.network.generator.hidden_sizes == [256, 256]
    assert run.spec.network.latent_size == 64


@pytest.mark.parametrize(
    ("coevolution", "generator", "discriminator"),
    [
        ({}, 2e-4, 1e-3),  # each player by its own network: a DCGAN generator, an MLP critic
        ({"learningRate": 5e-4}, 5e-4, 5e-4),  # one rate for both overrides both defaults
        ({"learningRate": 5e-4, "discriminatorLearningRate": 1e-4}, 5e-4, 1e-4),
        ({"generatorLearningRate": 3e-4}, 3e-4, 1e-3),
    ],
)
def test_a_players_initial_rate_is_its_own_then_the_shared_one_then_its_networks_default(
    coevolution: dict, generator: float, discriminator: float
):
    spec = {
        "dataset": {"name": "mnist", "path": "/data"},
        "network": {"generator": {"architecture": "dcgan"}},
        "coevolution": coevolution,
    }
    run = parse_run({**TINY_RING, "spec": spec})
    assert run.spec.initial_rate("generator") == generator
    assert run.spec.initial_rate("discriminator") == discriminator


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"spec.grid.rows": 0}, "spec.grid.rows: must be >= 1, got 0"),
        ({"spec.grid.cols": -2}, "spec.grid.cols: must be >= 1, got -2"),
        ({"spec.grid.neighbourhood": "hex"}, "spec.grid.neighbourhood: must be "),
        ({"spec.generations": 0}, "spec.generations: must be >= 1, got 0"),
        ({"spec.grid.colums": 3}, "spec.grid.colums: unknown field"),
        ({"spec.dataset": {"name": "cifar"}}, "spec.dataset.name: must be one of"),
        ({"spec.dataset": {"name": "mnist"}}, "spec.dataset.path: required field is missing"),
        ({"spec.dataset.samplingRatio": 1.5}, "spec.dataset.samplingRatio: must be <= 1"),
        (
            {"spec.dataset": {"name": "fashion-mnist", "path": "d", "download": True}},
            "spec.dataset.download: unknown field",
        ),
        ({"spec.dataset": {"name": "cifar10"}}, "spec.dataset.path: required field is missing"),
        (
            {"spec.dataset": {"name": "cifar10", "path": "d", "split": "val"}},
            "spec.dataset.split: must be",
        ),
        (
            {"spec.dataset": {"name": "image-folder", "path": "d", "crop": "side"}},
            "spec.dataset.crop: must be",
        ),
        (
            {"spec.dataset": {"name": "image-folder", "path": "d", "imageSize": 100}},
            "spec.dataset.imageSize: must be",
        ),
        ({"spec.coevolution.mutation.probability": 2}, "spec.coevolution.mutation.probability"),
        ({"spec.coevolution.fitness.mode": "median"}, "spec.coevolution.fitness.mode: must be"),
        ({"spec.loss": "hinge"}, "spec.loss: must be"),
        ({"spec.network.generator.hiddenSizes": []}, "spec.network.generator.hiddenSizes"),
        ({"spec.mixture.scoreType": "is"}, "spec.mixture.scoreType: must be"),
        ({"spec.coevolution.replacements": 3}, "spec.coevolution.replacements: must be <="),
        (
            {"spec.network.generator.architecture": "dcgan"},
            "spec.network.generator.architecture: dcgan needs an image dataset",
        ),
        (
            {"spec.network.discriminator.architecture": "rnn"},
            "spec.network.discriminator.architecture: rnn needs a sequence dataset",
        ),
        ({"spec.network.generator.cell": "cnn"}, "spec.network.generator.cell: must be"),
        (
            {"spec.ensemble": {"method": "all"}},
            "spec.ensemble.method: must be 'best-cell', 'greedy', 'ga', 'greedy-grid', "
            "'reo-gen' or 'nreo-gen'",
        ),
        ({"spec.ensemble": {"maxSize": 0}}, "spec.ensemble.maxSize: must be >= 1, got 0"),
        (
            {"spec.ensemble": {"method": "greedy", "objective": "spectrum"}},
            "spec.ensemble.objective: spectrum needs a sequence dataset (sequences, sine-waves), "
            "got dataset gaussian-ring",
        ),
        (
            {"spec.ensemble": {"method": "ga"}, "spec.mixture.scoreType": "none"},
            "spec.ensemble.objective: method ga needs a score to search by",
        ),
        (
            {"spec.mixture.scoreType": "spectrum"},
            "spec.mixture.scoreType: spectrum needs a sequence dataset",
        ),
        (
            {"spec.dataset": {"name": "sine-waves", "minFrequency": 3, "maxFrequency": 2}},
            "spec.dataset.maxFrequency: must be >= minFrequency",
        ),
        (
            {"spec.coevolution.mutation": {"rule": "drift"}},
            "spec.coevolution.mutation.rule: must be 'original' or 'unbiased'",
        ),
        (
            {"spec.mixture": {"schedule": "end"}},
            "spec.mixture.keep: best compares a score taken every generation",
        ),
        (
            {"spec.mustangs": {"draw": "at-creation"}},
            "spec.mustangs.draw: only loss: mustangs draws losses, got loss bce",
        ),
        (
            {"spec.training.stacking": {"cells": 4}, "spec.cell": {"cellsPerPod": 6}},
            "spec.cell.cellsPerPod: training.stacking.cells 4 stacks the cells of one process, "
            "so cellsPerPod must be a multiple of it, got 6",
        ),
        ({"metadata.name": "Bad_Name"}, "metadata.name: must match"),
        ({"kind": "Job"}, "kind: must be 'LipizzanerRun'"),
    ],
)
def test_errors_name_the_field_path_and_reason(patch, expected):
    errors = errors_for(patch)
    assert any(line.startswith(expected) for line in errors), errors


def test_every_error_is_reported_at_once():
    errors = errors_for({"spec.grid.rows": 0, "spec.generations": 0, "spec.typo": 1})
    assert len(errors) == 3


def test_round_trip_through_camel_case_keeps_every_value(tmp_path):
    run = parse_run(TINY_RING)
    dumped = dump_run(run)
    assert dumped["spec"]["training"]["batchesPerGeneration"] == 5
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dumped))
    assert load_run(path) == run


def test_validate_command_exit_codes_and_messages(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(TINY_RING))
    broken = copy.deepcopy(TINY_RING)
    broken["spec"]["grid"]["rows"] = 0
    bad.write_text(yaml.safe_dump(broken))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 2
    assert "spec.grid.rows: must be >= 1, got 0" in capsys.readouterr().err
    (tmp_path / "junk.yaml").write_text("spec: [unclosed")
    assert main(["validate", str(tmp_path / "junk.yaml")]) == 2


def test_example_manifests_are_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        load_run(path)
