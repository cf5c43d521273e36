"""Sample-quality scores, and the one objective the mixture ES minimises.

- 2-D mixtures of Gaussians: modes covered, fraction of high-quality samples (within
  3 standard deviations of a mode) and a mode-histogram KL.
- 28x28 grey images: FID in the feature space of the project's MNIST classifier (or one of
  its architecture trained on other data), the total variation distance of its predicted
  class histogram from uniform, and in final reports precision and recall.
- Images in Inception-v3's features: `inception.py`. Which scorer a run uses: `choice.py`.
- Any other data (colour images, arrays): the sliced Wasserstein distance to the real
  data, which needs neither modes nor a trained network.
Real-data embeddings are computed once per dataset and process, and once per run where the
run's storage caches them (`references.py`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from lipizzaner_core.storage import Storage
from torch.nn import functional as F

from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.scores.mnist_classifier import FEATURES, load_classifier
from lipizzaner_cell.scores.references import ReferenceCache, reference_digest


class Scorer(ABC):
    """Scores computed from per-sample embeddings (classifier features, mode assignments).

    Embeddings of different samples are independent, so the mixture ES can cache them per
    generator and score a candidate mixture by re-using the rows it shares with the last.
    """

    objective_name: str

    @abstractmethod
    def embed(self, samples: torch.Tensor) -> torch.Tensor:
        """One row per sample, on the CPU."""

    @abstractmethod
    def objective_of(self, embedded: torch.Tensor) -> float:
        """The objective of embedded samples; lower is better."""

    @abstractmethod
    def scores_of(self, embedded: torch.Tensor) -> dict[str, float]: ...

    def objective(self, samples: torch.Tensor) -> float:
        return self.objective_of(self.embed(samples))

    def scores(self, samples: torch.Tensor) -> dict[str, float]:
        return self.scores_of(self.embed(samples))

    def final_scores(self, embedded: torch.Tensor) -> dict[str, float]:
        """The scores a run reports at its end; the same as `scores_of` unless a scorer
        has costlier ones that are only worth computing once."""
        return self.scores_of(embedded)


@dataclass(frozen=True)
class ModeScorer(Scorer):
    """Scores for samples of a known mixture of Gaussians, in model space."""

    modes: torch.Tensor
    std: float
    objective_name: str = "mode-kl"

    def embed(self, samples: torch.Tensor) -> torch.Tensor:
        """Index of each sample's mode, or -1 for samples farther than 3 std from all."""
        distances = torch.cdist(samples.double().cpu(), self.modes.double())
        nearest = distances.min(dim=1)
        return torch.where(nearest.values <= 3 * self.std, nearest.indices, -1)

    def _counts(self, assigned: torch.Tensor) -> torch.Tensor:
        return torch.bincount(assigned[assigned >= 0], minlength=len(self.modes)).double()

    def objective_of(self, embedded: torch.Tensor) -> float:
        """KL(uniform over modes || smoothed high-quality mode histogram).

        0 for samples spread evenly over all modes; off-mode samples count as missing mass,
        so both dropped modes and low-quality samples raise it.
        """
        k = len(self.modes)
        share = (self._counts(embedded) + 0.5) / (embedded.shape[0] + 0.5 * k)
        return float(-math.log(k) - share.log().mean())

    def scores_of(self, embedded: torch.Tensor) -> dict[str, float]:
        counts = self._counts(embedded)
        n, k = embedded.shape[0], len(self.modes)
        covered = int((counts >= 0.2 * n / k).sum())  # PacGAN: 1/5 of a fair share
        return {
            "modes_covered": float(covered),
            "modes_total": float(k),
            "high_quality_fraction": float(counts.sum() / n),
            "mode_kl": self.objective_of(embedded),
        }


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2), in float64 via a symmetric root."""
    values, vectors = torch.linalg.eigh(cov1)
    root1 = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * middle)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    features = features.double()
    return features.mean(0), torch.cov(features.T)


# Real-data embeddings by `reference_digest` (the network's weights and the data), computed
# once per process.
_REAL_EMBEDDINGS: dict[str, torch.Tensor] = {}
# Images per feature-network call: small chunks fit a CPU core's caches, a GPU wants big ones.
FEATURE_CHUNK = {"cpu": 256, "cuda": 8192}
PRECISION_RECALL_SAMPLES = 10_000
# Rows of pairwise distances at a time: 250 x 10,000 doubles are 20 MB, where the whole
# 10,000 x 10,000 matrices (torch-fidelity's default) took a cell to 2.7 GB resident.
PRECISION_RECALL_ROWS = 250


def precision_recall(generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Kynkäänniemi et al.'s precision and recall (k = 3, torch-fidelity's implementation,
    in its memory-saving row batches) on equal numbers of generated and real samples (at
    most PRECISION_RECALL_SAMPLES)."""
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    count = min(len(generated), len(real), PRECISION_RECALL_SAMPLES)
    precision, recall = calculate_precision_recall_part(
        generated[:count].double(),
        real[:count].double(),
        neighborhood=3,
        batch_size=PRECISION_RECALL_ROWS,
    )
    return {"precision": precision, "recall": recall}


class FeatureScorer(Scorer):
    """Scores in the feature space of a network: FID against the real data's statistics
    for the ES, and in the final report precision and recall (and what else the network
    supports).

    An embedded sample is one row: the network's `feature_count` features, then whatever
    else it outputs (class logits).
    """

    feature_count: int
    network: torch.nn.Module

    def __init__(
        self,
        real: Dataset,
        device: torch.device,
        objective_name: str,
        references: ReferenceCache | None = None,
    ) -> None:
        self.objective_name = objective_name
        self.device = device
        self.chunk = FEATURE_CHUNK.get(device.type, 256)
        key = reference_digest(self.network, real)
        if key not in _REAL_EMBEDDINGS:
            _REAL_EMBEDDINGS[key] = self._embed_reference(key, real, references)
        self.real = _REAL_EMBEDDINGS[key]
        self.real_mu, self.real_cov = feature_statistics(self.features(self.real))

    def _embed_reference(
        self, key: str, real: Dataset, references: ReferenceCache | None
    ) -> torch.Tensor:
        if references is None:
            return self.embed(real.data)
        return references.embedding(key, len(real.data), lambda: self.embed(real.data))

    @abstractmethod
    def _embed_chunk(self, images: torch.Tensor) -> torch.Tensor: ...

    @torch.inference_mode()
    def embed(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._embed_chunk(chunk) for chunk in samples.split(self.chunk)]).cpu()

    def features(self, embedded: torch.Tensor) -> torch.Tensor:
        return embedded[:, : self.feature_count]

    def fid(self, embedded: torch.Tensor) -> float:
        mu, cov = feature_statistics(self.features(embedded))
        return frechet_distance(mu, cov, self.real_mu, self.real_cov)

    def objective_of(self, embedded: torch.Tensor) -> float:
        return self.scores_of(embedded)[self.objective_name]

    def final_scores(self, embedded: torch.Tensor) -> dict[str, float]:
        """`scores_of` plus precision and recall in the network's features."""
        scores = precision_recall(self.features(embedded), self.features(self.real))
        return {**self.scores_of(embedded), **scores}


class ClassifierScorer(FeatureScorer):
    """FID and class-histogram TVD under a 28x28 grey-image classifier: the project's MNIST
    CNN, or one of the same architecture from a safetensors file (`score.features: URI`)."""

    feature_count = FEATURES

    def __init__(
        self,
        real: Dataset,
        objective_name: str = "fid",
        device: torch.device | None = None,
        weights: str | None = None,
        storage: Storage | None = None,
        references: ReferenceCache | None = None,
    ) -> None:
        if real.shape != (1, 28, 28):
            raise ValueError(
                f"mixture.scoreType: {objective_name} in a classifier's features needs 28x28 "
                f"grey images, dataset {real.name} has shape {real.shape}"
            )
        device = device or torch.device("cpu")
        # channels_last: about 5x faster on a CPU core than NCHW (with the small chunks).
        self.network = load_classifier(weights, storage).to(device)
        self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        super().__init__(real, device, objective_name, references)

    def _embed_chunk(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, torch.float32, non_blocking=True)
        return torch.cat(self.network(images.contiguous(memory_format=torch.channels_last)), 1)

    def scores_of(self, embedded: torch.Tensor) -> dict[str, float]:
        return {"fid": self.fid(embedded), "tvd": class_tvd(embedded[:, FEATURES:])}


def class_tvd(logits: torch.Tensor) -> float:
    """The total variation distance of the predicted classes' histogram from uniform: 0
    when every class is generated equally often, near 1 when one class takes everything."""
    classes = logits.shape[1]
    histogram = torch.bincount(logits.argmax(1), minlength=classes).double() / len(logits)
    return float(0.5 * (histogram - 1 / classes).abs().sum())


class SlicedWassersteinScorer(Scorer):
    """The sliced Wasserstein distance between samples and the real data, in data space.

    Each sample is projected onto fixed random unit directions; per direction the 1-D
    Wasserstein-2 distance is the root mean squared difference of the two sets' quantiles,
    and the score is the root mean square over directions (in the data's own units, 0 for
    identical distributions). Images are average-pooled to at most 16x16 first, so the
    score compares shapes and colours rather than pixel noise, at a bounded cost.
    Directions and the real reference set are seeded: the score is a deterministic
    function of the samples.
    """

    objective_name = "swd"
    DIRECTIONS, REFERENCE, QUANTILES, SIDE = 128, 4096, 256, 16

    def __init__(self, real: Dataset, device: torch.device | None = None) -> None:
        # Directions depend on the data's dimension only, so every reference (validation,
        # training) scores samples in the same projections.
        rows = torch.randperm(len(real.data), generator=torch.Generator().manual_seed(1))
        reference = self._flatten(real.data[rows[: self.REFERENCE]].cpu())
        directions = torch.randn(
            reference.shape[1], self.DIRECTIONS, generator=torch.Generator().manual_seed(0)
        )
        self.directions = directions.double() / directions.double().norm(dim=0)
        self.levels = (torch.arange(self.QUANTILES, dtype=torch.float64) + 0.5) / self.QUANTILES
        self.reference = reference @ self.directions
        self.real_quantiles = torch.quantile(self.reference, self.levels, dim=0)

    def _flatten(self, samples: torch.Tensor) -> torch.Tensor:
        samples = samples.detach().cpu().double()
        if samples.dim() == 4 and samples.shape[-1] > self.SIDE:
            samples = F.adaptive_avg_pool2d(samples, self.SIDE)
        return samples.flatten(1)

    def embed(self, samples: torch.Tensor) -> torch.Tensor:
        """Each sample's projections onto the fixed directions."""
        return self._flatten(samples) @ self.directions

    def objective_of(self, embedded: torch.Tensor) -> float:
        quantiles = torch.quantile(embedded, self.levels, dim=0)
        return float((quantiles - self.real_quantiles).square().mean().sqrt())

    def scores_of(self, embedded: torch.Tensor) -> dict[str, float]:
        return {"swd": self.objective_of(embedded)}

    def final_scores(self, embedded: torch.Tensor) -> dict[str, float]:
        """`swd` plus precision and recall in the same projections (for images: of the
        pooled pixels; cruder than in a trained network's features, but every dataset
        gets them)."""
        return {**self.scores_of(embedded), **precision_recall(embedded, self.reference)}


class SpectrumScorer(Scorer):
    """Sequences (N x T x C) scored by what real ones look like over time.

    A sample's embedding is its log power spectrum per channel (`log1p` of the squared
    magnitudes of its real FFT over the steps), then its autocorrelation at lags 1 to T/2.
    The objective, `spectrum`, is the root mean square difference between the mean log
    spectra of the samples and of the real reference: a generator stuck on one frequency,
    or one that makes noise, is far from real data that spreads over a band. The report
    adds the same distance between mean autocorrelations, and precision and recall in the
    embedding.
    """

    objective_name = "spectrum"
    REFERENCE = 4096

    def __init__(self, real: Dataset) -> None:
        rows = torch.randperm(len(real.data), generator=torch.Generator().manual_seed(1))
        self.steps, self.channels = real.shape
        self.frequencies = (self.steps // 2 + 1) * self.channels
        self.reference = self.embed(real.data[rows[: self.REFERENCE]])
        self.real_mean = self.reference.mean(0)

    def embed(self, samples: torch.Tensor) -> torch.Tensor:
        x = samples.detach().cpu().double()
        x = x - x.mean(1, keepdim=True)
        spectrum = torch.log1p(torch.fft.rfft(x, dim=1).abs().square()).flatten(1)
        lags = range(1, self.steps // 2 + 1)
        energy = x.square().sum(1).clamp_min(1e-12)
        correlation = [(x[:, lag:] * x[:, :-lag]).sum(1) / energy for lag in lags]
        return torch.cat([spectrum, torch.stack(correlation, 1).flatten(1)], 1)

    def _distance(self, embedded: torch.Tensor, part: slice) -> float:
        gap = embedded[:, part].mean(0) - self.real_mean[part]
        return float(gap.square().mean().sqrt())

    def objective_of(self, embedded: torch.Tensor) -> float:
        return self._distance(embedded, slice(0, self.frequencies))

    def scores_of(self, embedded: torch.Tensor) -> dict[str, float]:
        return {
            "spectrum": self.objective_of(embedded),
            "autocorrelation": self._distance(embedded, slice(self.frequencies, None)),
        }

    def final_scores(self, embedded: torch.Tensor) -> dict[str, float]:
        return {**self.scores_of(embedded), **precision_recall(embedded, self.reference)}
