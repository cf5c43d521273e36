import gzip
import http.server
import io
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from lipizzaner_cell import idx
from lipizzaner_cell.datasets import PIXELS, Dataset, ValueMap, load_dataset
from lipizzaner_cell.networks import build_discriminator, build_generator
from lipizzaner_cell.scores import (
    PRECISION_RECALL_ROWS,
    ClassifierScorer,
    ModeScorer,
    precision_recall,
)
from lipizzaner_cell.scoring import build_scorer
from lipizzaner_core.spec import NetworkPartSpec, ScoreSpec
from lipizzaner_core.spec_datasets import (
    ArraySpec,
    Cifar10Spec,
    FashionMnistSpec,
    GaussianGridSpec,
    GaussianRingSpec,
    ImageFolderSpec,
    MnistSpec,
)


def ring(**kw):
    return load_dataset(GaussianRingSpec(name="gaussian-ring", **kw), seed=0)


def test_data_dieting_gives_each_cell_its_own_subset_of_the_right_size():
    data = ring(size=1000)
    a, b, a_again = data.subset(0.3, seed=1), data.subset(0.3, seed=2), data.subset(0.3, seed=1)
    assert len(a) == len(b) == 300
    assert torch.equal(a.data, a_again.data)
    assert not torch.equal(a.data, b.data)
    assert data.subset(1.0, seed=1) is data
    assert len(data.subset(0.0001, seed=1)) == 1


def test_synthetic_data_lies_in_model_space_and_maps_back_to_the_ring():
    data = ring(radius=2.0, std=0.02)
    assert data.data.abs().max() <= 1.0
    radii = np.linalg.norm(data.values.to_data(data.data.numpy()), axis=1)
    assert abs(radii.mean() - 2.0) < 0.01


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


def test_mnist_loads_from_the_idx_files(mnist_dir):
    data = load_dataset(MnistSpec(name="mnist", path=str(mnist_dir)), seed=0)
    assert data.shape == (1, 28, 28) and len(data) == 10_000
    assert torch.bincount(data.labels).tolist()[:3] == [980, 1135, 1032]
    assert data.data.min() == -1.0 and data.data.max() == 1.0


def test_missing_mnist_files_name_the_field_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset.path: no MNIST files.*download: true"):
        load_dataset(MnistSpec(name="mnist", path=str(tmp_path)), seed=0)


def test_idx_parser_rejects_bad_files():
    header = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big")
    assert idx.parse_idx(header + b"\x01\x02\x03").tolist() == [1, 2, 3]
    assert idx.parse_idx(gzip.compress(header + b"\x01\x02\x03")).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="truncated"):
        idx.parse_idx(header + b"\x01")
    with pytest.raises(ValueError, match="magic"):
        idx.parse_idx(b"PK\x03\x04garbage")


@pytest.fixture
def http_mirror(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_fetches_and_verifies_the_canonical_files(mnist_dir, http_mirror, tmp_path):
    root, url = http_mirror
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, root / name)
    target = tmp_path / "data"
    spec = MnistSpec(name="mnist", path=str(target), split="test", download=True, mirror=url)
    assert len(load_dataset(spec, seed=0)) == 10_000
    assert (target / "t10k-images-idx3-ubyte.gz").exists()


def test_download_refuses_a_file_with_the_wrong_checksum(mnist_dir, http_mirror, tmp_path):
    root, url = http_mirror
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", root / "t10k-images-idx3-ubyte.gz")
    spec = MnistSpec(
        name="mnist", path=str(tmp_path / "d"), split="test", download=True, mirror=url
    )
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_dataset(spec, seed=0)
    assert not (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").exists()


def test_array_dataset_round_trips_to_its_own_value_range(tmp_path):
    raw = np.random.default_rng(0).uniform(-5, 30, size=(100, 3))
    buffer = io.BytesIO()
    np.savez(buffer, points=raw)
    (tmp_path / "a.npz").write_bytes(buffer.getvalue())
    data = load_dataset(ArraySpec(name="array", path=str(tmp_path / "a.npz")), seed=0)
    assert data.data.abs().max() <= 1.0 + 1e-6
    assert np.allclose(data.values.to_data(data.data.double().numpy()), raw, atol=1e-4)
    with pytest.raises(KeyError, match=r"dataset\.key"):
        load_dataset(ArraySpec(name="array", path=str(tmp_path / "a.npz"), key="x"), seed=0)


def test_array_files_with_pickled_objects_are_refused(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_dataset(ArraySpec(name="array", path=str(tmp_path / "evil.npy")), seed=0)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (MNIST's and Fashion-MNIST's format)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_mnists_idx_files_and_is_not_scored_as_digits(tmp_path):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    images[:, 10:18, 6:22] = 255  # a grey "shirt"
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 9]))
    data = load_dataset(FashionMnistSpec(name="fashion-mnist", path=str(tmp_path)), seed=0)
    assert (data.name, data.shape, len(data)) == ("fashion-mnist", (1, 28, 28), 5)
    assert data.labels.tolist() == [0, 1, 2, 3, 9]
    assert data.data.max() == 1.0 and data.data.min() == -1.0
    assert data.identity.startswith("fashion-mnist:")
    assert build_scorer("auto", data).objective_name == "swd"  # no digit classifier
    with pytest.raises(FileNotFoundError, match=r"dataset.path: no Fashion-MNIST files") as e:
        load_dataset(FashionMnistSpec(name="fashion-mnist", path=str(tmp_path / "x")), seed=0)
    assert "download" not in str(e.value)


def cifar_record(label: int, red: int, green: int, blue: int) -> bytes:
    return bytes([label]) + bytes([red] * 1024 + [green] * 1024 + [blue] * 1024)


def test_cifar10_reads_its_binary_batches_never_the_pickled_ones(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(
        cifar_record(3, 255, 0, 128) + cifar_record(7, 0, 0, 0)
    )
    (folder / "data_batch_2.bin").write_bytes(cifar_record(9, 0, 255, 0))
    (folder / "test_batch.bin").write_bytes(cifar_record(1, 0, 0, 255))
    (folder / "data_batch_1").write_bytes(b"\x80\x04pickled: never read")
    data = load_dataset(Cifar10Spec(name="cifar10", path=str(tmp_path)), seed=0)
    assert (data.shape, len(data), data.labels.tolist()) == ((3, 32, 32), 3, [3, 7, 9])
    first = data.data[0]
    assert (first[0].unique().tolist(), first[1].unique().tolist()) == ([1.0], [-1.0])
    assert abs(first[2, 0, 0].item() - (128 / 127.5 - 1)) < 1e-6  # planes in R, G, B order
    test = load_dataset(Cifar10Spec(name="cifar10", path=str(tmp_path), split="test"), seed=0)
    assert test.labels.tolist() == [1] and test.identity != data.identity
    (folder / "data_batch_2.bin").write_bytes(cifar_record(9, 0, 0, 0)[:-1])
    with pytest.raises(ValueError, match=r"data_batch_2.bin holds 3072 bytes, not a whole"):
        load_dataset(Cifar10Spec(name="cifar10", path=str(tmp_path)), seed=0)
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-10 binary files.*never read"):
        load_dataset(Cifar10Spec(name="cifar10", path=str(tmp_path / "none")), seed=0)


def test_image_folder_crops_the_centre_square_before_resizing(tmp_path):
    """A 60x40 picture, red bands at the sides and green between: the centre square is
    all green; squashed whole, the red comes back at the edges."""
    from PIL import Image

    picture = Image.new("RGB", (60, 40), (0, 255, 0))
    for left in (0, 50):
        picture.paste((255, 0, 0), (left, 0, left + 10, 40))
    picture.save(tmp_path / "face.png")
    spec = ImageFolderSpec(name="image-folder", path=str(tmp_path), imageSize=128, crop="center")
    cropped = load_dataset(spec, seed=0)
    assert cropped.shape == (3, 128, 128)
    assert cropped.data[0, 0].max() == -1.0 and cropped.data[0, 1].min() == 1.0
    squashed = load_dataset(spec.model_copy(update={"crop": "none"}), seed=0)
    assert squashed.data[0, 0, :, 0].min() == 1.0  # red at the left edge
    grey = load_dataset(spec.model_copy(update={"channels": 1}), seed=0)
    assert grey.shape == (1, 128, 128)


def test_image_folder_resizes_and_converts(tmp_path):
    from PIL import Image

    for k in range(3):
        Image.new("RGB", (40, 50), (k * 100, 0, 255)).save(tmp_path / f"{k}.png")
    spec = ImageFolderSpec(name="image-folder", path=str(tmp_path), imageSize=32, channels=3)
    data = load_dataset(spec, seed=0)
    assert data.shape == (3, 32, 32) and len(data) == 3
    assert data.data[:, 2].min() == 1.0  # blue channel is 255 everywhere
    grey = load_dataset(spec.model_copy(update={"channels": 1, "image_size": 28}), seed=0)
    assert grey.shape == (1, 28, 28)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 128, 128)])
def test_dcgan_networks_fit_every_supported_image_size(shape):
    part = NetworkPartSpec(architecture="dcgan", width=8)
    generator, discriminator = build_generator(part, 16, shape), build_discriminator(part, shape)
    images = generator(torch.randn(4, 16))
    assert images.shape == (4, *shape)
    assert discriminator(images).shape == (4,)


def test_mlp_networks_are_the_original_perceptron_by_default():
    generator = build_generator(NetworkPartSpec(), 64, (1, 28, 28))
    assert [m.out_features for m in generator.modules() if hasattr(m, "out_features")] == [
        256,
        256,
        784,
    ]
    assert build_discriminator(NetworkPartSpec(), (2,))(torch.randn(5, 2)).shape == (5,)


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


def test_the_validation_split_is_fixed_disjoint_and_shared_by_every_seed():
    data = ring(size=1000)
    training, validation = data.split(0.1)
    assert (len(training), len(validation)) == (900, 100)
    rows = {tuple(x) for x in validation.data.tolist()}
    assert rows.isdisjoint(tuple(x) for x in training.data.tolist())
    _, again = data.split(0.1)
    assert torch.equal(again.data, validation.data)  # the same samples held out every time
    assert validation.identity != training.identity != data.identity  # cached apart
    assert data.split(0.0) == (data, None)
    assert data.split(0.0001)[1] is None  # rounds to no sample
    diet = training.subset(0.5, seed=3)
    assert len(diet) == 450 and diet.identity != training.identity


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
    from lipizzaner_cell.classifier import train_classifier
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
    from lipizzaner_cell.inception import WEIGHTS_ENVIRONMENT, load_weights

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
    from lipizzaner_cell.inception import inception_network, load_weights

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
    from lipizzaner_cell import scores
    from lipizzaner_cell.classifier import load_classifier
    from lipizzaner_cell.references import ReferenceCache, reference_digest
    from lipizzaner_core.storage import Storage
    from safetensors.torch import load_file, save_file

    def another_process() -> None:  # nothing in this process's memory
        monkeypatch.setattr(scores, "_REAL_EMBEDDINGS", {})

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
