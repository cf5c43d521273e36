"""Semi-supervised training: labelled samples, the classifying discriminator, label-aware
fitness, accuracy that grows, and the classifier a run leaves behind."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_RING
from lipizzaner_cell.algorithm.engine import CellEngine
from lipizzaner_cell.algorithm.fitness import LabelAware, evaluate_fitness, generator_fakes
from lipizzaner_cell.algorithm.individual import Individual
from lipizzaner_cell.algorithm.losses import LOSSES
from lipizzaner_cell.algorithm.neighbourhood import InProcessExchange
from lipizzaner_cell.algorithm.networks import ClassifyingDiscriminator, build_discriminator
from lipizzaner_cell.algorithm.semi_supervised import (
    SemiSupervision,
    classification_loss,
    feature_matching,
    labelled_rows,
    predictions,
    sample_digests,
)
from lipizzaner_cell.commands.cli import main
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_cell.executors.local_processes import run_local
from lipizzaner_core.ensemble import distinct_labelled
from lipizzaner_core.spec import parse_run
from lipizzaner_core.spec.datasets import ArraySpec, ImageFolderSpec
from torch import nn


def semi_supervised(manifest: dict, rate: float | None = 0.01, **semi) -> dict:
    manifest = copy.deepcopy(manifest)
    manifest["spec"]["semiSupervised"] = {"enabled": True, "labelledBatchSize": 50, **semi}
    if rate is not None:
        manifest["spec"]["dataset"]["labelRate"] = rate
    return manifest


def test_each_cell_draws_the_same_count_of_every_class_from_its_own_seed():
    labels = torch.arange(1000) % 4
    rows = labelled_rows(labels, 4, 0.02, seed=7)
    assert torch.bincount(labels[rows]).tolist() == [5, 5, 5, 5]
    assert torch.equal(rows, labelled_rows(labels, 4, 0.02, seed=7))
    assert not torch.equal(rows, labelled_rows(labels, 4, 0.02, seed=8))
    assert len(labelled_rows(labels, 4, None, seed=7)) == 1000
    assert len(labelled_rows(labels, 4, 1e-6, seed=7)) == 4  # at least one of each


def test_the_classifying_discriminators_logit_is_real_of_any_class():
    torch.manual_seed(0)
    net = build_discriminator(parse_run(TINY_RING).spec.network.discriminator, (2,), classes=3)
    x = torch.randn(5, 2)
    outputs = net.body(x)
    assert outputs.shape == (5, 4) and net.classify(x).shape == (5, 3)
    real = 1 - torch.softmax(outputs, 1)[:, 3]
    assert torch.allclose(torch.sigmoid(net(x)), real, atol=1e-6)


@pytest.mark.parametrize(
    ("part", "shape"),
    [
        ({"architecture": "dcgan", "width": 8}, (1, 28, 28)),
        ({"architecture": "rnn", "hiddenSizes": [8]}, (16, 2)),
    ],
)
def test_every_architecture_has_a_classifying_discriminator(part, shape):
    from lipizzaner_core.spec.training import NetworkPartSpec

    net = build_discriminator(NetworkPartSpec.model_validate(part), shape, classes=5)
    x = torch.randn(3, *shape)
    assert net(x).shape == (3,) and net.classify(x).shape == (3, 5)


class Fixed(nn.Module):
    """A body whose class logits are fixed: its vote is known."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_the_vote_takes_the_majority_and_a_tie_goes_to_the_lowest_class():
    first = ClassifyingDiscriminator(Fixed([[1, 0, 0, 0], [0, 0, 1, 0]]), 3)
    second = ClassifyingDiscriminator(Fixed([[0, 1, 0, 0], [0, 0, 1, 0]]), 3)
    third = ClassifyingDiscriminator(Fixed([[0, 1, 0, 0], [1, 0, 0, 0]]), 3)
    data = torch.zeros(2, 2)
    assert predictions([first], data).tolist() == [0, 2]
    assert predictions([first, second, third], data).tolist() == [1, 2]
    assert predictions([first, second], data).tolist() == [0, 2]  # a tie: 0 and 1


def test_discriminator_fitness_weighs_the_gan_loss_and_the_classification_loss():
    torch.manual_seed(0)
    spec = parse_run(TINY_RING).spec
    generators = [
        Individual.fresh(nn.Sequential(nn.Linear(8, 2)), 1e-3, 0, "adam") for _ in range(2)
    ]
    discriminators = [
        Individual.fresh(build_discriminator(spec.network.discriminator, (2,), 3), 1e-3, 0, "adam")
        for _ in range(2)
    ]
    real, noise = torch.randn(20, 2), torch.randn(20, 8)
    samples, classes = torch.randn(10, 2), torch.randint(3, (10,))
    fakes = generator_fakes(generators, noise)
    bce = LOSSES["bce"]
    evaluate_fitness(generators, discriminators, real, fakes, bce, "average")
    plain = [d.fitness for d in discriminators]
    with torch.no_grad():
        ce = torch.stack([classification_loss(d.net, samples, classes) for d in discriminators])
    aware = LabelAware(0.25, 2.0, ce)
    evaluate_fitness(generators, discriminators, real, fakes, bce, "average", label_aware=aware)
    for d, gan, c in zip(discriminators, plain, ce.tolist(), strict=True):
        assert d.fitness == pytest.approx(0.25 * gan + 2.0 * c)


def test_spread_weights_run_from_supervised_to_unsupervised_over_the_grid():
    semi = parse_run(semi_supervised(TINY_RING, weights="spread")).spec.semi_supervised
    assert [semi.weights_of(c, 4) for c in (0, 3)] == [(0.0, 1.0), (1.0, 0.0)]
    assert semi.weights_of(0, 1) == (0.5, 0.5)
    fixed = parse_run(semi_supervised(TINY_RING, unsupervisedWeight=0.3)).spec.semi_supervised
    assert fixed.weights_of(2, 4) == (0.3, 1.0)


def cell_engines(manifest: dict, cells: int = 2) -> list[CellEngine]:
    run = parse_run(manifest)
    dataset = load_dataset(run.spec.dataset, run.spec.seed)
    return [CellEngine(run, i, InProcessExchange().provider([]), dataset) for i in range(cells)]


def test_shared_labels_give_every_cell_one_labelled_subset_and_the_run_counts_it_once():
    """`labels: shared`: the cells hold the same labelled samples, drawn from the run's
    seed, so the run's distinct labels are a cell's; per-cell draws differ by cell."""
    per_cell, shared = (
        cell_engines(semi_supervised(TINY_RING, labels=labels)) for labels in ("per-cell", "shared")
    )
    assert torch.equal(shared[0].semi.samples, shared[1].semi.samples)
    assert not torch.equal(per_cell[0].semi.samples, per_cell[1].semi.samples)
    assert len(shared[0].semi.classes) == len(per_cell[0].semi.classes)  # labelRate of each
    for engines, distinct in ((shared, 1), (per_cell, 2)):
        results = [
            {"classifier": {"labelledDigests": sample_digests(e.semi.samples)}} for e in engines
        ]
        assert distinct_labelled(results) == distinct * len(engines[0].semi.classes)
    assert distinct_labelled([{"classifier": {}}]) is None  # a result from before the digests


@pytest.fixture(scope="module")
def ssl_ring(tmp_path_factory):
    """A 1x2 ring run, semi-supervised on 2 labelled samples of each of the 8 modes a cell."""
    manifest = semi_supervised(TINY_RING)
    manifest["spec"]["grid"] = {"rows": 1, "cols": 2}
    manifest["spec"]["generations"] = 10
    manifest["spec"]["training"]["batchesPerGeneration"] = 20
    output = tmp_path_factory.mktemp("ssl") / "out"
    manifest["spec"]["output"] = {"uri": str(output)}
    outcome = run_in_process(parse_run(manifest), resume=False, show_progress=False)
    return manifest, output, outcome


def test_the_discriminators_learn_to_classify_from_two_labels_a_mode(ssl_ring):
    _, _, outcome = ssl_ring
    for reports in outcome.reports:
        accuracies = [r.accuracy for r in reports]
        assert accuracies[0] < 0.6  # chance is 1/8
        assert accuracies[-1] >= 0.9, accuracies


def test_the_run_leaves_its_classifier_and_classify_agrees_with_it(ssl_ring, tmp_path, capsys):
    _, output, _ = ssl_ring
    manifest = json.loads((output / "ensemble" / "manifest.json").read_text())
    found = manifest["classifier"]
    assert found["classes"] == 8 and found["labelled"] == 16 and found["scoredOn"] == "validation"
    # Each cell drew its own 16 from its own seed: the run used up to twice as many.
    assert found["labels"] == "per-cell" and 16 < found["distinctLabelled"] <= 32
    assert found["members"][0]["sourceCell"] == manifest["bestCell"]
    assert all("accuracy" in cell for cell in manifest["cells"])
    predictions_file = tmp_path / "p.csv"
    for flags, key in (([], "discriminator"), (["--vote"], "neighbourhood")):
        assert main(["classify", str(output), "held-out", "-o", str(predictions_file), *flags]) == 0
        said = capsys.readouterr().out
        assert f"accuracy {found['accuracy'][key]:.4f}" in said
    lines = predictions_file.read_text().splitlines()
    assert lines[0] == "index,prediction,label" and len(lines) == 201  # the held-out 10 %
    # The same samples from a file, in the data's own range, give the same accuracy.
    run = parse_run(yaml.safe_load(yaml.safe_dump(manifest["spec"])))
    _, held = load_dataset(run.spec.dataset, run.spec.seed).split(0.1)
    raw = held.values.to_data(held.data.numpy())
    buffer = io.BytesIO()
    np.savez(buffer, x=raw, y=held.labels.numpy())
    (tmp_path / "held.npz").write_bytes(buffer.getvalue())
    arguments = ["classify", str(output / "ensemble"), str(tmp_path / "held.npz")]
    assert main([*arguments, "--labels-key", "y", "-o", str(predictions_file)]) == 0
    assert f"accuracy {found['accuracy']['discriminator']:.4f}" in capsys.readouterr().out


def test_classify_refuses_bad_input_in_one_line(ssl_ring, tiny_manifest, tmp_path, capsys):
    _, output, _ = ssl_ring
    wrong, right = tmp_path / "wrong.npz", tmp_path / "right.npz"
    for path, columns in ((wrong, 3), (right, 2)):
        buffer = io.BytesIO()
        np.savez(buffer, x=np.zeros((4, columns)))
        path.write_bytes(buffer.getvalue())
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(tiny_manifest))
    assert main(["run", str(plain), "--in-process", "--quiet"]) == 0
    capsys.readouterr()
    for arguments, said in (
        ([str(output), str(wrong)], "do not fit the run's data [2]"),
        ([str(output), "held-out", "-o", "p.txt"], "-o p.txt: must end in .csv"),
        ([str(output), str(right), "--labels-key", "y"], "--labels-key: 'y' not in"),
        ([str(tmp_path / "out"), "held-out"], "not a semi-supervised run's ensemble"),
        ([str(tmp_path / "nowhere"), "held-out"], "not found"),
    ):
        assert main(["classify", *arguments]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and said in lines[0], lines


def test_image_folders_take_their_classes_from_sub_folders(tmp_path):
    from PIL import Image

    for name, shade in (("cats", 10), ("dogs", 200)):
        (tmp_path / name).mkdir()
        for k in range(3):
            Image.new("L", (8, 8), shade + k).save(tmp_path / name / f"{k}.png")
    spec = ImageFolderSpec(name="image-folder", path=str(tmp_path), imageSize=28, channels=1)
    data = load_dataset(spec, seed=0)
    assert data.classes == 2 and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    Image.new("L", (8, 8), 0).save(tmp_path / "loose.png")
    unlabelled = load_dataset(spec, seed=0)
    assert unlabelled.labels is None
    run = parse_run(semi_supervised(TINY_RING)).spec
    with pytest.raises(ValueError, match="one sub-folder per class"):
        SemiSupervision.of(run, 0, unlabelled, unlabelled, 0, torch.device("cpu"))


def test_arrays_take_their_classes_from_a_labels_key(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(0).normal(size=(6, 2)), y=np.array([0, 2, 1, 2, 0, 1]))
    (tmp_path / "a.npz").write_bytes(buffer.getvalue())
    spec = ArraySpec(name="array", path=str(tmp_path / "a.npz"), key="x", labelsKey="y")
    data = load_dataset(spec, seed=0)
    assert data.classes == 3 and data.labels.tolist() == [0, 2, 1, 2, 0, 1]
    bad = ArraySpec(name="array", path=str(tmp_path / "a.npz"), key="x", labelsKey="x")
    with pytest.raises(ValueError, match=r"dataset\.labelsKey: 'x' .* must hold 6 integer"):
        load_dataset(bad, seed=0)


def test_cells_in_processes_exchange_classifying_discriminators(tmp_path):
    """Over gRPC the neighbours' K + 1 output discriminators pass the architecture check."""
    manifest = semi_supervised(TINY_RING)
    manifest["spec"].update(grid={"rows": 1, "cols": 2}, generations=2)
    manifest["spec"]["output"] = {"uri": str(tmp_path / "out")}
    ensemble = run_local(parse_run(manifest), show_progress=False, threads=1)
    assert ensemble["classifier"]["classes"] == 8
    for cell in range(2):
        result = json.loads((tmp_path / "out" / "cells" / str(cell) / "result.json").read_text())
        assert result["missingNeighbours"] == [] and len(result["classifier"]["members"]) == 2


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "semi-supervised-mnist.yaml"


def test_the_mnist_example_runs_and_its_classifier_classifies(mnist_dir, tmp_path, capsys):
    """The shipped example, shortened (one generation of five batches), on real digits."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["dataset"]["path"] = str(mnist_dir)
    manifest["spec"].update(generations=1, output={"uri": str(tmp_path / "out")})
    manifest["spec"]["training"]["batchesPerGeneration"] = 5
    manifest["spec"]["score"] = {"finalSamples": 500}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main(["run", str(path), "--in-process", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "classifier accuracy on the held-out data (10 classes, 100 labelled" in said
    assert main(["classify", str(tmp_path / "out"), "held-out", "-o", str(tmp_path / "p.csv")]) == 0
    assert " of 1000) by cell " in capsys.readouterr().out  # the held-out 10 %
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1001


def test_history_shows_each_cells_last_accuracy(ssl_ring, tmp_path, capsys):
    _, output, outcome = ssl_ring
    assert main(["history", str(output), "-o", str(tmp_path / "h.png")]) == 0
    said = capsys.readouterr().out
    assert "accuracy" in said and f"{outcome.reports[0][-1].accuracy:.4f}" in said


@pytest.mark.parametrize("architecture", ["mlp", "dcgan"])
def test_feature_matching_compares_the_mean_last_hidden_features(architecture):
    """Salimans et al.'s generator loss: 0 when the generated batch's mean features are
    the real batch's, positive otherwise; only the generated side carries gradients."""
    torch.manual_seed(0)
    shape = (1, 8, 8) if architecture == "mlp" else (3, 32, 32)
    part = parse_run(TINY_RING).spec.network.discriminator.model_copy(
        update={"architecture": architecture}
    )
    net = build_discriminator(part, shape, classes=3)
    real = torch.rand(16, *shape)
    assert net.features(real).shape[0] == 16
    same = feature_matching(net, real.clone(), real).detach()
    assert float(same) == pytest.approx(0.0, abs=1e-12)
    fake = torch.rand(16, *shape, requires_grad=True)
    value = feature_matching(net, fake, real)
    assert float(value.detach()) > 0
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_a_feature_matching_run_trains_its_generators_on_the_features(tmp_path):
    manifest = semi_supervised(TINY_RING, generatorLoss="feature-matching")
    manifest["spec"].update(generations=2, output={"uri": str(tmp_path / "out")})
    manifest["spec"]["training"]["batchesPerGeneration"] = 5
    outcome = run_in_process(parse_run(manifest), resume=False, show_progress=False)
    engine = outcome.engines[0]
    assert engine.semi.feature_matching
    losses = [r.generator_loss for reports in outcome.reports for r in reports]
    assert all(loss >= 0 for loss in losses)  # a squared distance, unlike -log D
