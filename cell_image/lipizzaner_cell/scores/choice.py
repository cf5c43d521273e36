"""Which scorer a run uses, from `mixture.scoreType` and the `score` section.

Two roles: the objective (every generation's mixture ES, keep-best and the choice of the
run's ensemble: cheap) and the final report (scores GAN users compare: may be costly,
computed once per cell). The final report reuses the objective's scorer unless
`score.final` names another feature network.
"""

from __future__ import annotations

import os

import torch
from lipizzaner_core.spec.outcome import ScoreSpec
from lipizzaner_core.storage import Storage

from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.scores.references import ReferenceCache
from lipizzaner_cell.scores.scorers import (
    ClassifierScorer,
    ModeScorer,
    Scorer,
    SlicedWassersteinScorer,
    SpectrumScorer,
)

AUTO = ScoreSpec()


def feature_network(features: str, dataset: Dataset) -> str | None:
    """`score.features` resolved: `auto` is the MNIST CNN for 28x28 grey images (not for
    Fashion-MNIST's clothes: a digit classifier's features would not say what FID claims),
    else none."""
    if features == "auto":
        digits = dataset.shape == (1, 28, 28) and dataset.name != "fashion-mnist"
        return "mnist-cnn" if digits else None
    return features


def build_scorer(
    score_type: str,
    dataset: Dataset,
    device: torch.device | None = None,
    score: ScoreSpec = AUTO,
    storage: Storage | None = None,
    network: str | None = None,
    references: ReferenceCache | None = None,
) -> Scorer | None:
    """The scorer of `score_type` against `dataset` (the real reference); `auto` picks the
    most telling one the data allows: mode KL for known modes, the spectrum distance for
    sequences, FID where a feature network applies, else the sliced Wasserstein distance.
    `none`: no scoring (and no ES).

    `network` overrides `score.features` (the final report's network); `references`
    caches the real data's embedding for the run (`references.py`).
    """
    network = feature_network(network or score.features, dataset)
    if score_type == "auto":
        score_type = "mode-kl" if dataset.modes is not None else "fid" if network else "swd"
        score_type = "spectrum" if len(dataset.shape) == 2 else score_type
    if score_type == "none":
        return None
    if score_type == "spectrum":
        if len(dataset.shape) != 2:
            raise ValueError(
                f"mixture.scoreType: spectrum needs sequences (N x T x C), got dataset "
                f"{dataset.name} of shape {dataset.shape}"
            )
        return SpectrumScorer(dataset)
    if score_type == "swd":
        return SlicedWassersteinScorer(dataset, device)
    if score_type == "mode-kl":
        if dataset.modes is None:
            raise ValueError(
                f"mixture.scoreType: mode-kl needs synthetic data with known modes "
                f"(gaussian-ring or gaussian-grid), got dataset {dataset.name}"
            )
        return ModeScorer(dataset.modes, float(dataset.mode_std or 0.0))
    if network is None:
        raise ValueError(
            f"mixture.scoreType: {score_type} needs a feature network, and dataset "
            f"{dataset.name} of shape {dataset.shape} has none by default: set score.features "
            "(inception-v3, or a 28x28 classifier's safetensors)"
        )
    if network == "inception-v3":
        return inception_scorer(score_type, dataset, device, score, storage, references)
    weights = None if network == "mnist-cnn" else network
    return ClassifierScorer(dataset, score_type, device, weights, storage, references)


def inception_scorer(
    score_type: str,
    dataset: Dataset,
    device: torch.device | None,
    score: ScoreSpec,
    storage: Storage | None,
    references: ReferenceCache | None,
) -> Scorer:
    from lipizzaner_cell.scores.inception import WEIGHTS_ENVIRONMENT, InceptionScorer, load_weights

    if score_type != "fid":
        raise ValueError(
            f"mixture.scoreType: {score_type} needs a 10-class classifier; inception-v3 scores fid"
        )
    uri = score.inception_weights or os.environ.get(WEIGHTS_ENVIRONMENT)
    if not uri:
        raise ValueError(
            "score.inceptionWeights: inception-v3 needs its weights: set it, or "
            f"{WEIGHTS_ENVIRONMENT}, to a safetensors file (see docs/scores.md)"
        )
    weights = load_weights(uri, storage)
    return InceptionScorer(dataset, weights, device, references=references)


def build_report_scorer(
    objective: Scorer | None,
    score_type: str,
    dataset: Dataset,
    device: torch.device | None = None,
    score: ScoreSpec = AUTO,
    storage: Storage | None = None,
    references: ReferenceCache | None = None,
) -> Scorer | None:
    """The final report's scorer against `dataset`: the objective's kind in the
    `score.final` network (the objective's own network when that is the same)."""
    if objective is None or score.final_network == score.features:
        return build_scorer(score_type, dataset, device, score, storage, references=references)
    network = score.final_network
    return build_scorer("fid", dataset, device, score, storage, network, references)
