"""Datasets: every loader on small files it writes in each format (never pickled),
synthetic data, data dieting and the fixed validation split."""

import gzip
import http.server
import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ring
from lipizzaner_cell.data import idx
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.scores.choice import build_scorer
from lipizzaner_core.spec.datasets import (
    ArraySpec,
    Cifar10Spec,
    FashionMnistSpec,
    ImageFolderSpec,
    MnistSpec,
)


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
