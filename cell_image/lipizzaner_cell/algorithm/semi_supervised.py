"""Semi-supervised training (SGAN): the labelled samples a cell may use, the classification
loss its discriminators add, and how well they classify.

A cell's labelled samples are `dataset.labelRate` of its training samples, the same count
from every class (as the original's balanced sampler), drawn from the cell's seed; with
`semiSupervised.labels: shared`, of the run's training split from the run's seed, the same
for every cell (`label_source`). Each
discriminator step adds the cross-entropy of a fresh labelled batch to the GAN loss,
weighted by `semiSupervised` (`weights_of`); fitness weighs them the same way
(`fitness.LabelAware`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from lipizzaner_core.spec import RunSpecBody
from torch import nn
from torch.nn import functional as F

from lipizzaner_cell.algorithm.fitness import LabelAware
from lipizzaner_cell.algorithm.networks import ClassifyingDiscriminator
from lipizzaner_cell.data.datasets import Dataset

ACCURACY_BATCH = 1000  # samples per forward pass when measuring accuracy


def discriminator_classes(spec: RunSpecBody, dataset: Dataset) -> int | None:
    """How many classes a run's discriminators tell apart: None unless semi-supervised."""
    return dataset.classes if spec.semi_supervised.enabled else None


def labelled_rows(
    labels: torch.Tensor, classes: int, rate: float | None, seed: int
) -> torch.Tensor:
    """The rows whose labels a cell may use: all without a rate, else round(rate * n /
    classes) of each class (at least one), drawn from `seed`, in row order."""
    if rate is None:
        return torch.arange(len(labels))
    per_class = max(1, round(rate * len(labels) / classes))
    rng = torch.Generator().manual_seed(seed)
    picked = []
    for k in range(classes):
        rows = (labels == k).nonzero().flatten()
        picked.append(rows[torch.randperm(len(rows), generator=rng)[:per_class]])
    return torch.cat(picked).sort().values


def label_source(
    spec: RunSpecBody, own: Dataset, whole: Dataset, cell_seed: int
) -> tuple[Dataset, int]:
    """Where a cell draws its labelled samples from, and with which seed: its own samples
    and seed (`labels: per-cell`), or the run's training split and seed (`shared`)."""
    if spec.semi_supervised.labels == "shared":
        return whole, spec.seed
    return own, cell_seed


def sample_digests(samples: torch.Tensor) -> list[str]:
    """A short digest of each sample's bytes: the run counts its distinct labelled samples
    as the union of its cells' digests (`ensemble.distinct_labelled`)."""
    rows = samples.detach().cpu().contiguous().flatten(1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in rows]


@dataclass
class SemiSupervision:
    """A cell's labelled samples and the data its accuracy is measured on (both on its
    device), and the weights of its discriminators' two losses."""

    samples: torch.Tensor
    classes: torch.Tensor
    unsupervised: float  # the weight of the GAN loss
    supervised: float  # the weight of the classification loss
    batch_size: int
    scored: tuple[torch.Tensor, torch.Tensor]  # held-out samples and their classes
    feature_matching: bool = False  # the generators' loss (`semiSupervised.generatorLoss`)

    @classmethod
    def of(
        cls,
        spec: RunSpecBody,
        index: int,
        training: Dataset,
        scored: Dataset,
        seed: int,
        device: torch.device,
    ) -> SemiSupervision | None:
        """The cell's semi-supervision, or None when the run is not semi-supervised.
        `training`: the cell's own samples; `scored`: those accuracy is measured on."""
        semi = spec.semi_supervised
        if not semi.enabled:
            return None
        if training.labels is None or training.classes is None or scored.labels is None:
            raise ValueError(
                f"semiSupervised.enabled: dataset {training.name} has no labels here (an image "
                "folder needs one sub-folder per class)"
            )
        rate = getattr(spec.dataset, "label_rate", None)
        rows = labelled_rows(training.labels, training.classes, rate, seed)
        unsupervised, supervised = semi.weights_of(index, spec.grid.size)
        return cls(
            training.data[rows].to(device),
            training.labels[rows].to(device),
            unsupervised,
            supervised,
            semi.labelled_batch_size,
            (scored.data.to(device), scored.labels.to(device)),
            semi.generator_loss == "feature-matching",
        )

    def label_aware(
        self, discriminators: list[nn.Module], samples: torch.Tensor, classes: torch.Tensor
    ) -> LabelAware:
        """The label-aware fitness terms of `discriminators` on these labelled samples."""
        with torch.no_grad():
            losses = [classification_loss(net, samples, classes) for net in discriminators]
        return LabelAware(self.unsupervised, self.supervised, torch.stack(losses))

    def accuracy(self, nets: list[nn.Module]) -> float:
        """The accuracy of `nets` (their vote) on the held-out data."""
        return accuracy(nets, *self.scored)

    def draw(self, count: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` labelled samples and their classes, drawn with replacement."""
        rows = torch.randint(len(self.classes), (count,), generator=rng, device=rng.device)
        return self.samples[rows], self.classes[rows]

    def discriminator_loss(
        self, net: nn.Module, gan_loss: torch.Tensor, rng: torch.Generator
    ) -> torch.Tensor:
        """A training step's loss: the weighted GAN loss plus the weighted cross-entropy
        of a fresh labelled batch."""
        samples, classes = self.draw(self.batch_size, rng)
        supervised = classification_loss(net, samples, classes)
        return self.unsupervised * gan_loss + self.supervised * supervised


def feature_matching(
    discriminator: nn.Module, fake: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """Salimans et al.'s generator loss: the mean squared difference of the mean
    discriminator features of a real and a generated batch (the real side held fixed)."""
    net = classifier(discriminator)
    with torch.no_grad():
        real_mean = net.features(real).mean(0)
    return (net.features(fake).mean(0) - real_mean).square().mean()


def classifier(net: nn.Module) -> ClassifyingDiscriminator:
    """`net` as the classifying discriminator a semi-supervised run builds."""
    if not isinstance(net, ClassifyingDiscriminator):
        raise TypeError(f"{type(net).__name__} does not classify: not a semi-supervised run's")
    return net


def classification_loss(
    net: nn.Module, samples: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """The cross-entropy of a classifying discriminator's class logits."""
    return F.cross_entropy(classifier(net).classify(samples), classes)


@torch.no_grad()
def predictions(nets: list[nn.Module], data: torch.Tensor) -> torch.Tensor:
    """Each sample's class: one net's, or the majority vote of several (ties go to the
    lowest class, as the original's vote)."""
    voters = [classifier(net) for net in nets]
    out = []
    for start in range(0, len(data), ACCURACY_BATCH):
        batch = data[start : start + ACCURACY_BATCH]
        votes = torch.stack([net.classify(batch).argmax(1) for net in voters])
        counts = F.one_hot(votes, voters[0].classes).sum(0)  # samples x classes
        out.append(counts.argmax(1))
    return torch.cat(out)


def accuracy(nets: list[nn.Module], data: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of `data` whose class `predictions` gets right."""
    return float((predictions(nets, data) == labels.to(data.device)).double().mean())
