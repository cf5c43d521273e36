"""Inception-v3 scores as GAN papers report them: FID, KID, Inception Score, precision/recall.

The network and the input protocol are torch-fidelity's (the TensorFlow FID graph ported
to PyTorch: uint8 images, TensorFlow 1.x bilinear resize to 299x299, 2048-d pool features,
1008 unbiased logits), so with the standard weights the numbers are torch-fidelity's. Its
own loader downloads the weights or unpickles a `.pth` file; here they come from a
safetensors file (any fsspec URI) instead, converted once as docs/scores.md shows.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from lipizzaner_core.storage import Storage
from safetensors import SafetensorError
from safetensors.torch import load

from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.scores.references import ReferenceCache
from lipizzaner_cell.scores.scorers import FeatureScorer

POOL_FEATURES = 2048
WEIGHTS_ENVIRONMENT = "LIPIZZANER_INCEPTION_WEIGHTS"
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; smaller sets use their own size


def inception_network(weights: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """torch-fidelity's Inception-v3 with these weights; None: randomly initialised (tests)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    extractor = fidelity.FeatureExtractorInceptionV3
    # Built without its loader (a download or an unpickled file): the layers only.
    with (
        mock.patch.object(fidelity, "load_state_dict_from_url", return_value={}),
        mock.patch.object(extractor, "load_state_dict"),
    ):
        net = extractor("inception-v3-compat", ["2048", "logits_unbiased"])
    if weights is not None:
        net.load_state_dict(weights)
    return net.eval()


def load_weights(uri: str, storage: Storage | None = None) -> dict[str, torch.Tensor]:
    storage = storage or Storage()
    if not storage.exists(uri):
        raise FileNotFoundError(f"score.inceptionWeights: {uri} does not exist")
    try:
        return load(storage.read_bytes(uri))
    except SafetensorError as exc:
        raise ValueError(
            f"score.inceptionWeights: {uri} is not a safetensors file: {exc}"
        ) from None


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Model-space images ([-1, 1]) as the uint8 RGB the network expects: quantised as a
    saved PNG would be, grey repeated to three channels."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


class InceptionScorer(FeatureScorer):
    """FID in Inception-v3's pool features; the final report adds KID, the Inception Score
    and precision/recall. Slow on a CPU: meant for final reports (`score.final`)."""

    feature_count = POOL_FEATURES

    def __init__(
        self,
        real: Dataset,
        weights: dict[str, torch.Tensor] | None,
        device: torch.device | None = None,
        references: ReferenceCache | None = None,
    ) -> None:
        if not real.is_image or real.shape[0] not in (1, 3):
            raise ValueError(
                f"score: inception-v3 needs grey or colour images, dataset {real.name} has "
                f"shape {real.shape}"
            )
        device = device or torch.device("cpu")
        self.network = inception_network(weights).to(device)
        super().__init__(real, device, "fid", references)

    def _embed_chunk(self, images: torch.Tensor) -> torch.Tensor:
        pool, logits = self.network(to_pixels(images.to(self.device)))
        return torch.cat([pool, logits], 1)

    def scores_of(self, embedded: torch.Tensor) -> dict[str, float]:
        return {"fid": self.fid(embedded)}

    def final_scores(self, embedded: torch.Tensor) -> dict[str, float]:
        from torch_fidelity.metric_isc import isc_features_to_metric
        from torch_fidelity.metric_kid import kid_features_to_metric

        features, real = self.features(embedded), self.features(self.real)
        subset = min(KID_SUBSET_SIZE, len(features), len(real))
        with contextlib.redirect_stderr(None):
            kid = kid_features_to_metric(features, real, kid_subset_size=subset, verbose=False)
        inception = isc_features_to_metric(embedded[:, POOL_FEATURES:], splits=10)
        return {
            **super().final_scores(embedded),
            "kid": kid["kernel_inception_distance_mean"],
            "kid_std": kid["kernel_inception_distance_std"],
            "inception_score": inception["inception_score_mean"],
            "inception_score_std": inception["inception_score_std"],
        }
