"""Scores: mode statistics, the FID classifier, sliced Wasserstein, Inception, precision
and recall, the scorer each dataset gets, and the cached reference embeddings."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ring
from lipizzaner_cell.data.datasets import Dataset, ValueMap
from lipizzaner_cell.data.images import PIXELS
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.scores.choice import build_scorer
from lipizzaner_cell.scores.scorers import (
    PRECISION_RECALL_ROWS,
    ClassifierScorer,
    ModeScorer,
    class_tvd,
    precision_recall,
)
from lipizzaner_core.spec.datasets import (
    GaussianGridSpec,
    MnistSpec,
)
from lipizzaner_core.spec.outcome import ScoreSpec


def test_mode_scorer_on_real_data_and_on_a_collapsed_generator():
    data = load_dataset(GaussianGridSpec(name="gaussian-grid"), seed=0)
    scorer = ModeScorer(data.modes, data.mode_std)
    real = scorer.scores(data.data)
    assert real["modes_covered"] == 25 and real["high_quality_fraction"] > 0.95
    collapsed = data.modes[3].repeat(1000, 1)
    bad = scorer.scores(collapsed)
    assert bad["modes_covered"] == 1 and bad["high_quality_fraction"] == 1.0
    assert bad["mode_kl"] > real["mode_kl"] + 1.0
    halfway = (data.modes[0] + data.modes[6]) / 2  # between diagonal neighbours
    off_mode = scorer.scores(halfway.repeat(1000, 1))
    assert off_mode["high_quality_fraction"] == 0.0


def test_classifier_fid_separates_real_digits_from_noise(mnist_dir):
    data = load_dataset(MnistSpec(name="mnist", path=str(mnist_dir)), seed=0)
    scorer = ClassifierScorer(data)
    half = scorer.scores(data.data[:5000])
    noise = scorer.scores(torch.rand(2000, 1, 28, 28) * 2 - 1)
    assert half["fid"] < 5 < noise["fid"] / 10
    assert half["tvd"] < 0.05
    ones = data.data[data.labels == 1][:500]
    assert scorer.scores(ones)["tvd"] > 0.8


def test_scorer_choice_follows_the_data():
    assert build_scorer("auto", ring()).objective_name == "mode-kl"
    with pytest.raises(ValueError, match=r"mixture.scoreType: fid needs a feature network"):
        build_scorer("fid", ring())
    with pytest.raises(ValueError, match=r"mixture.scoreType: fid .* 28x28 grey"):
        build_scorer("fid", ring(), score=ScoreSpec(features="mnist-cnn"))
    assert build_scorer("none", ring()) is None


def colour_images(count: int, seed: int, hue: float) -> Dataset:
    """Blobs of one colour on a dark background, in model space [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.full((count, 3, 32, 32), -0.8)
    centres = torch.randint(8, 24, (count, 2), generator=gen)
    for k, (y, x) in enumerate(centres.tolist()):
        images[k, 0, y - 4 : y + 4, x - 4 : x + 4] = hue
        images[k, 2, y - 4 : y + 4, x - 4 : x + 4] = -hue
    return Dataset(name="colour", data=images, values=PIXELS)


def test_colour_images_and_arrays_get_the_sliced_wasserstein_score():
    real = colour_images(2000, 0, 0.9)
    scorer = build_scorer("auto", real)
    assert scorer.objective_name == "swd"
    same = scorer.objective(colour_images(1000, 1, 0.9).data)
    shifted = scorer.objective(colour_images(1000, 1, 0.0).data)
    noise = scorer.objective(torch.rand(1000, 3, 32, 32) * 2 - 1)
    assert same < 0.1 * shifted and shifted < noise
    assert scorer.objective(colour_images(1000, 1, 0.9).data) == same  # deterministic
    alike = scorer.final_scores(scorer.embed(colour_images(1000, 1, 0.9).data))
    one = scorer.final_scores(scorer.embed(colour_images(1, 1, 0.9).data.repeat(1000, 1, 1, 1)))
    assert alike["precision"] > 0.5 and alike["recall"] > 0.5
    assert one["recall"] < 0.1  # one image repeated covers almost nothing
    points = Dataset(name="array", data=torch.randn(3000, 2), values=ValueMap([1.0], [0.0]))
    assert build_scorer("auto", points).objective_name == "swd"
    swd = build_scorer("swd", ring())
    collapsed = ring().data[:1].repeat(1000, 1)
    assert swd.scores(ring().data[:1000])["swd"] < 0.3 * swd.scores(collapsed)["swd"]


def test_precision_and_recall_separate_quality_from_coverage(mnist_dir):
    """Kynkäänniemi et al.: a generator of good ones only is precise but covers little;
    real digits score high on both."""
    data = load_dataset(MnistSpec(name="mnist", path=str(mnist_dir)), seed=0)
    training, validation = data.split(0.2)
    scorer = ClassifierScorer(validation)
    real = scorer.final_scores(scorer.embed(training.data[:2000]))
    ones = scorer.final_scores(scorer.embed(training.data[training.labels == 1][:2000]))
    noise = scorer.final_scores(scorer.embed(torch.rand(2000, 1, 28, 28) * 2 - 1))
    assert real["precision"] > 0.6 and real["recall"] > 0.6
    assert ones["precision"] > 0.6 and ones["recall"] < 0.3
    assert noise["precision"] < 0.1
    assert set(real) == {"fid", "tvd", "precision", "recall"}


def test_a_classifier_of_the_same_architecture_scores_from_a_uri(mnist_dir, tmp_path):
    """`score.features: <URI>`: a 28x28 classifier trained on the user's own data."""
    from lipizzaner_cell.scores.mnist_classifier import train_classifier
    from safetensors.torch import load_file

    data = load_dataset(MnistSpec(name="mnist", path=str(mnist_dir)), seed=0)
    weights = tmp_path / "own.safetensors"
    train_classifier(data.data[:3000], data.labels[:3000], weights, epochs=1, holdout=500)
    score = ScoreSpec(features=str(weights))
    scorer = build_scorer("fid", data, score=score)
    own = load_file(str(weights))
    assert all(torch.equal(own[k], v) for k, v in scorer.network.state_dict().items())
    digits, noise = scorer.scores(data.data[3000:5000]), scorer.scores(torch.rand(2000, 1, 28, 28))
    assert digits["fid"] < noise["fid"] / 10
    with pytest.raises(
        FileNotFoundError, match=r"missing\.safetensors: classifier weights missing"
    ):
        build_scorer("fid", data, score=ScoreSpec(features=str(tmp_path / "missing.safetensors")))
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(
        ValueError, match=r"bad\.safetensors: not the weights of the 28x28 classifier"
    ):
        build_scorer("fid", data, score=ScoreSpec(features=str(tmp_path / "bad.safetensors")))


def test_inception_scores_load_safetensors_weights_and_report_kid_and_is(
    inception_weights, monkeypatch
):
    """The real network and protocol (torch-fidelity's), with random weights of the same
    architecture: the standard ones cannot be downloaded here."""
    from lipizzaner_cell.scores.inception import WEIGHTS_ENVIRONMENT, load_weights

    weights = load_weights(str(inception_weights))
    real = colour_images(24, 0, 0.9)
    with pytest.raises(
        ValueError, match=r"score\.inceptionWeights: inception-v3 needs its weights"
    ):
        build_scorer("auto", real, score=ScoreSpec(features="inception-v3"))
    monkeypatch.setenv(WEIGHTS_ENVIRONMENT, str(inception_weights))
    scorer = build_scorer("auto", real, score=ScoreSpec(features="inception-v3"))
    assert scorer.objective_name == "fid"
    assert torch.equal(scorer.network.state_dict()["fc.weight"], weights["fc.weight"])
    same = scorer.final_scores(scorer.embed(colour_images(16, 1, 0.9).data))
    noise = scorer.final_scores(scorer.embed(torch.rand(16, 3, 32, 32) * 2 - 1))
    assert set(same) == {
        "fid",
        "kid",
        "kid_std",
        "inception_score",
        "inception_score_std",
        "precision",
        "recall",
    }
    assert same["fid"] < noise["fid"] and same["kid"] < noise["kid"]
    assert same["inception_score"] >= 1.0
    grey = Dataset(name="grey", data=torch.rand(4, 1, 28, 28) * 2 - 1, values=PIXELS)
    assert scorer.embed(grey.data).shape == (4, 2048 + 1008)  # grey repeats to RGB


def test_the_documented_weight_conversion_gives_a_file_the_scorer_loads(tmp_path):
    """docs/scores.md's one-off conversion of torch-fidelity's .pth, run as written on a
    file of the same layout (it runs in its own process: nothing here unpickles)."""
    from lipizzaner_cell.scores.inception import inception_network, load_weights

    doc = (Path(__file__).parents[1] / "docs" / "scores.md").read_text()
    command = next(line for line in doc.splitlines() if line.startswith("python -c"))
    script = shlex.split(command)[2]
    state = inception_network(None).state_dict()
    torch.save(state, tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    converted = load_weights(str(tmp_path / "inception-2015-12-05.safetensors"))
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], v) for k, v in state.items())
    inception_network(converted)  # loads strictly


def test_the_reference_embedding_is_computed_once_per_run_and_never_served_stale(
    tmp_path, monkeypatch
):
    """Cells of one run share the real data's embedding (Inception's, on real data sets)
    through the run's storage; other weights, other data or a damaged file mean computing
    it afresh."""
    from lipizzaner_cell.scores import scorers
    from lipizzaner_cell.scores.mnist_classifier import load_classifier
    from lipizzaner_cell.scores.references import ReferenceCache, reference_digest
    from lipizzaner_core.storage import Storage
    from safetensors.torch import load_file, save_file

    def another_process() -> None:  # nothing in this process's memory
        monkeypatch.setattr(scorers, "_REAL_EMBEDDINGS", {})

    def cached_files() -> list[Path]:
        return sorted((tmp_path / "references").glob("*.safetensors"))

    def digits(seed: int) -> Dataset:
        noise = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        return Dataset(name="grey", data=noise * 2 - 1, values=PIXELS)

    real = digits(0)
    cache = ReferenceCache(str(tmp_path / "references"), Storage())
    first = ClassifierScorer(real, references=cache)
    assert len(cached_files()) == 1
    another_process()
    with monkeypatch.context() as no_network:
        no_network.setattr(ClassifierScorer, "_embed_chunk", lambda *_: pytest.fail("recomputed"))
        second = ClassifierScorer(real, references=cache)
    assert torch.equal(second.real, first.real)

    other_weights = tmp_path / "other.safetensors"
    save_file({k: v * 1.5 for k, v in load_classifier(None).state_dict().items()}, other_weights)
    for other in (
        ClassifierScorer(real, weights=str(other_weights), references=cache),
        ClassifierScorer(digits(1), references=cache),
    ):
        assert not torch.equal(other.real, first.real)
    assert len(cached_files()) == 3

    damaged = tmp_path / "references" / f"{reference_digest(first.network, real)}.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    another_process()
    again = ClassifierScorer(real, references=cache)
    assert torch.equal(again.real, first.real)
    assert torch.equal(load_file(str(damaged))["embedding"], first.real)  # rewritten


def test_precision_and_recall_in_row_batches_equal_torch_fidelitys_whole_matrices():
    """The memory-saving batches change nothing: the same precision and recall as
    torch-fidelity's all-at-once computation, on more rows than one batch holds."""
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    generator = torch.Generator().manual_seed(0)
    count = 3 * PRECISION_RECALL_ROWS + 17
    generated = torch.randn(count, 8, generator=generator)
    real = torch.randn(count, 8, generator=generator) * 1.3 + 0.2
    precision, recall = calculate_precision_recall_full(
        generated.double(), real.double(), neighborhood=3
    )
    assert precision_recall(generated, real) == {"precision": precision, "recall": recall}
    assert 0 < recall < precision < 1  # a case where the two differ, neither trivially


def test_class_tvd_is_zero_for_even_classes_and_near_one_for_a_single_class():
    even = torch.eye(5).repeat(20, 1)  # 100 samples, 20 of each of 5 classes
    assert class_tvd(even) == pytest.approx(0.0)
    one = torch.zeros(100, 5)
    one[:, 2] = 1
    assert class_tvd(one) == pytest.approx(0.8)  # 1 - 1/5
