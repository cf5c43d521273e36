"""A second real data set for the quality protocol: the 8x8 handwritten digits that ship
inside scikit-learn's wheel (1,797 images, 10 classes; nothing is downloaded), run through
the `array` dataset, and two judges for them.

No packaged feature network knows 8x8 digits, so the judges are trained here: two small
perceptron classifiers from different seeds, on the runs' training split only, their
32-unit last hidden layer the feature space of the FID and their logits the class
histogram of the TVD. Their accuracy on the held-out split is reported with the scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.data.loading import load_dataset
from lipizzaner_cell.scores.scorers import FeatureScorer, class_tvd
from lipizzaner_core.spec.datasets import ArraySpec
from protocol import SECOND_SEED, Judges
from torch import nn

FEATURES = 32
EPOCHS = 60


def write_digits(path: Path) -> dict[str, str]:
    """The digits as an .npz (`images`: N x 1 x 8 x 8 in [0, 1], `labels`), and the
    spec's `dataset` section that reads them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=digits.target.astype(np.int64))
    return {"name": "array", "path": str(path), "key": "images", "labelsKey": "labels"}


class DigitsClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, FEATURES), nn.ReLU()
        )
        self.head = nn.Linear(FEATURES, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) for digits in model space, N x 1 x 8 x 8 in [-1, 1]."""
        features = self.body(x)
        return features, self.head(features)


def train_digits_classifier(training: Dataset, seed: int, epochs: int = EPOCHS) -> DigitsClassifier:
    """Adam on minibatches of 64 for `epochs` epochs, everything drawn from `seed`."""
    assert training.labels is not None
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitsClassifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(training.data), generator=generator)
        for rows in order.split(64):
            loss = nn.functional.cross_entropy(net(training.data[rows])[1], training.labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def accuracy(net: DigitsClassifier, data: Dataset) -> float:
    assert data.labels is not None
    with torch.no_grad():
        return float((net(data.data)[1].argmax(1) == data.labels).double().mean())


class DigitsScorer(FeatureScorer):
    """FID in a digits classifier's features and the TVD of its class histogram."""

    feature_count = FEATURES

    def __init__(self, real: Dataset, network: DigitsClassifier) -> None:
        self.network = network
        super().__init__(real, torch.device("cpu"), "fid")

    def _embed_chunk(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.network(images.float()), 1)

    def scores_of(self, embedded: torch.Tensor) -> dict[str, float]:
        return {"fid": self.fid(embedded), "tvd": class_tvd(embedded[:, FEATURES:])}


def digits_judges(
    dataset: dict[str, str], validation_fraction: float = 0.1, epochs: int = EPOCHS
) -> Judges:
    """Two judges, trained from seeds 0 and SECOND_SEED on the training split, scoring
    against the held-out split the runs never train on."""
    spec = ArraySpec.model_validate(dataset)
    training, held_out = load_dataset(spec, 0).split(validation_fraction)
    assert held_out is not None
    first, second = (train_digits_classifier(training, seed, epochs) for seed in (0, SECOND_SEED))
    scorers = (DigitsScorer(held_out, first), DigitsScorer(held_out, second))
    return Judges(scorers, accuracy(second, held_out))
