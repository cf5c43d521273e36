"""Sample-quality scores, and the one objective the mixture ES minimises.

- 2-D mixtures of Gaussians: modes covered, fraction of high-quality samples (within
  3 standard deviations of a mode) and a mode-histogram KL.
- 28x28 grey images: FID in the feature space of the project's MNIST classifier, and the
  total variation distance of its predicted class histogram from uniform.
Real-data statistics are computed once per dataset and process and cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from lipizzaner_cell.classifier import load_classifier
from lipizzaner_cell.datasets import Dataset


class Scorer(Protocol):
    objective_name: str

    def scores(self, samples: torch.Tensor) -> dict[str, float]: ...

    def objective(self, samples: torch.Tensor) -> float:
        """Lower is better."""
        ...


@dataclass(frozen=True)
class ModeScorer:
    """Scores for samples of a known mixture of Gaussians, in model space."""

    modes: torch.Tensor
    std: float
    objective_name: str = "mode-kl"

    def _assign(self, samples: torch.Tensor) -> torch.Tensor:
        """Index of each sample's mode, or -1 for samples farther than 3 std from all."""
        distances = torch.cdist(samples.double().cpu(), self.modes.double())
        nearest = distances.min(dim=1)
        return torch.where(nearest.values <= 3 * self.std, nearest.indices, -1)

    def _counts(self, samples: torch.Tensor) -> torch.Tensor:
        assigned = self._assign(samples)
        return torch.bincount(assigned[assigned >= 0], minlength=len(self.modes)).double()

    def objective(self, samples: torch.Tensor) -> float:
        """KL(uniform over modes || smoothed high-quality mode histogram).

        0 for samples spread evenly over all modes; off-mode samples count as missing mass,
        so both dropped modes and low-quality samples raise it.
        """
        k = len(self.modes)
        share = (self._counts(samples) + 0.5) / (samples.shape[0] + 0.5 * k)
        return float(-math.log(k) - share.log().mean())

    def scores(self, samples: torch.Tensor) -> dict[str, float]:
        counts = self._counts(samples)
        n, k = samples.shape[0], len(self.modes)
        covered = int((counts >= 0.2 * n / k).sum())  # PacGAN: 1/5 of a fair share
        return {
            "modes_covered": float(covered),
            "modes_total": float(k),
            "high_quality_fraction": float(counts.sum() / n),
            "mode_kl": self.objective(samples),
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


_REAL_STATS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
FEATURE_CHUNK = 256  # images per classifier call: fits the CPU caches


class ClassifierScorer:
    """FID and class-histogram TVD under the project's MNIST classifier."""

    def __init__(self, real: Dataset, objective_name: str = "fid") -> None:
        if real.shape != (1, 28, 28):
            raise ValueError(
                f"mixture.scoreType: {objective_name} uses the project's MNIST classifier and "
                f"needs 28x28 grey images, dataset {real.name} has shape {real.shape}"
            )
        self.objective_name = objective_name
        # channels_last and small chunks: about 5x faster on a CPU core than NCHW in
        # chunks of 2,000 (the mixture ES scores twice per generation).
        self.classifier = load_classifier().to(memory_format=torch.channels_last)
        key = real.identity or str(id(real))
        if key not in _REAL_STATS:
            _REAL_STATS[key] = feature_statistics(self._features(real.data)[0])
        self.real_mu, self.real_cov = _REAL_STATS[key]

    @torch.inference_mode()
    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [
            self.classifier(chunk.cpu().float().contiguous(memory_format=torch.channels_last))
            for chunk in images.split(FEATURE_CHUNK)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def scores(self, samples: torch.Tensor) -> dict[str, float]:
        features, logits = self._features(samples)
        histogram = torch.bincount(logits.argmax(1), minlength=10).double() / len(samples)
        return {
            "fid": frechet_distance(*feature_statistics(features), self.real_mu, self.real_cov),
            "tvd": float(0.5 * (histogram - 0.1).abs().sum()),
        }

    def objective(self, samples: torch.Tensor) -> float:
        return self.scores(samples)[self.objective_name]


def build_scorer(score_type: str, dataset: Dataset) -> Scorer | None:
    """The scorer a run uses; `auto` picks by what the data allows, `none` disables it."""
    if score_type == "auto":
        if dataset.modes is not None:
            score_type = "mode-kl"
        elif dataset.shape == (1, 28, 28):
            score_type = "fid"
        else:
            return None
    if score_type == "none":
        return None
    if score_type == "mode-kl":
        if dataset.modes is None:
            raise ValueError(
                f"mixture.scoreType: mode-kl needs synthetic data with known modes "
                f"(gaussian-ring or gaussian-grid), got dataset {dataset.name}"
            )
        return ModeScorer(dataset.modes, float(dataset.mode_std or 0.0))
    return ClassifierScorer(dataset, score_type)
