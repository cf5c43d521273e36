"""A small MNIST CNN whose penultimate layer is the feature space of the project's FID.

The weights ship with the package (assets/mnist_classifier.safetensors, about 420 KB);
`lipizzaner train-classifier` rebuilds them from IDX files and reports test accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from lipizzaner_core.storage import Storage
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn
from torch.nn import functional as F

ASSET = "mnist_classifier.safetensors"
FEATURES = 64


class MnistClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(32 * 7 * 7, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) for images in model space, N x 1 x 28 x 28 in [-1, 1]."""
        features = self.features(self.conv(x))
        return features, self.head(features)


def asset_path() -> Path:
    return Path(str(resources.files("lipizzaner_cell") / "assets" / ASSET))


def load_classifier(uri: str | None = None, storage: Storage | None = None) -> MnistClassifier:
    """The packaged MNIST classifier, or one of its architecture from a safetensors URI
    (`lipizzaner train-classifier` writes them, from any 28x28 grey labelled data)."""
    storage = storage or Storage()
    uri = uri or str(asset_path())
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"{uri}: classifier weights missing; build them with "
            "`lipizzaner train-classifier --data DIR`"
        )
    model = MnistClassifier()
    try:
        model.load_state_dict(load(storage.read_bytes(uri)))
    except (RuntimeError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0]
        raise ValueError(f"{uri}: not the weights of the 28x28 classifier: {reason}") from None
    return model.eval()


@dataclass(frozen=True)
class TrainingReport:
    train_images: int
    test_images: int
    test_accuracy: float
    epochs: int


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    out: Path,
    epochs: int = 4,
    seed: int = 0,
    holdout: int = 2000,
) -> TrainingReport:
    """Train on all but the last `holdout` images, report accuracy on those, save weights."""
    torch.manual_seed(seed)
    train_x, test_x = images[:-holdout], images[-holdout:]
    train_y, test_y = labels[:-holdout], labels[-holdout:]
    model = MnistClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=rng)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            # Small random shifts make the features robust to generators' imperfect centring.
            shift = torch.randint(-2, 3, (2,), generator=rng).tolist()
            x = torch.roll(train_x[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x)[1], train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x)[1].argmax(1) == test_y).float().mean().item()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    report = TrainingReport(len(train_x), len(test_x), accuracy, epochs)
    out.with_suffix(".json").write_text(json.dumps(report.__dict__, indent=2) + "\n")
    return report
