"""Load a saved ensemble, draw samples by its mixture weights, and picture them."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lipizzaner_core.layout import ENSEMBLE_MANIFEST
from lipizzaner_core.spec_training import NetworkPartSpec
from lipizzaner_core.storage import Storage, join
from safetensors.torch import load as load_tensors

from lipizzaner_cell.datasets import ValueMap
from lipizzaner_cell.mixture import sample_mixture
from lipizzaner_cell.networks import build_generator


@dataclass
class Ensemble:
    manifest: dict[str, Any]
    generators: list[torch.nn.Module]
    weights: torch.Tensor

    @property
    def values(self) -> ValueMap:
        return ValueMap(**self.manifest["data"]["values"])

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        """`count` samples in the data's own value range (pixels 0-255, 2-D coordinates)."""
        latent = self.manifest["network"]["latentSize"]
        noise = torch.randn((count, latent), generator=torch.Generator().manual_seed(seed))
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 1))
        model = sample_mixture(self.generators, self.weights, noise)[order]
        return self.values.to_data(model.numpy())


def load_ensemble(uri: str, storage: Storage | None = None) -> Ensemble:
    """An ensemble from `<uri>/manifest.json` (`uri` may also name the manifest itself)."""
    storage = storage or Storage()
    base = uri.removesuffix(f"/{ENSEMBLE_MANIFEST}")
    manifest = storage.read_json(join(base, ENSEMBLE_MANIFEST))
    part = NetworkPartSpec.model_validate(manifest["network"]["generator"])
    shape = tuple(manifest["data"]["shape"])
    generators = []
    for entry in manifest["generators"]:
        net = build_generator(part, manifest["network"]["latentSize"], shape)
        net.load_state_dict(load_tensors(storage.read_bytes(join(base, entry["file"]))))
        generators.append(net.eval())
    weights = torch.tensor([g["weight"] for g in manifest["generators"]], dtype=torch.float64)
    return Ensemble(manifest, generators, weights)


def render_png(samples: np.ndarray, data: dict[str, Any], title: str = "") -> bytes:
    """2-D data: a scatter over the data and its modes; images: a square grid."""
    # Not "Matplotlib is building the font cache" on a user's first run: nothing to act on.
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if len(data["shape"]) == 2:
        fig, ax = _curves(plt, samples, data)
    elif len(data["shape"]) == 1:
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        if data.get("reference"):
            real = np.asarray(data["reference"])
            ax.scatter(real[:, 0], real[:, 1], s=4, alpha=0.3, c="grey", label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=4, alpha=0.5, label="samples")
        if data.get("modes"):
            modes = np.asarray(data["modes"])
            ax.scatter(modes[:, 0], modes[:, 1], s=60, marker="x", c="red", label="modes")
        ax.set_aspect("equal")
        ax.legend(loc="upper right")
    else:
        side = int(np.ceil(np.sqrt(len(samples))))
        channels, height, width = data["shape"]
        values = ValueMap(**data["values"])
        # The data's own range to [0, 1]: pixels 0-255, floats in [0, 1] or [-1, 1] alike.
        samples = (samples.astype(np.float64) - values.low) / max(values.high - values.low, 1e-12)
        canvas = np.ones((side * height, side * width, channels))
        for k, image in enumerate(samples):
            row, col = divmod(k, side)
            canvas[row * height : (row + 1) * height, col * width : (col + 1) * width] = (
                image.transpose(1, 2, 0)
            )
        fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
        pixels = np.clip(canvas, 0.0, 1.0)
        ax.imshow(pixels.squeeze(-1) if channels == 1 else pixels, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    if title:
        ax.set_title(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


CURVES = 6  # sequences drawn of each kind


def _curves(plt: Any, samples: np.ndarray, data: dict[str, Any]) -> tuple[Any, Any]:
    """Sequences: the first channel of a few generated ones over a few real ones."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for k, real in enumerate(np.asarray(data.get("reference") or [])[:CURVES]):
        ax.plot(real[:, 0], c="grey", alpha=0.6, label="data" if k == 0 else None)
    for k, sample in enumerate(samples[:CURVES]):
        ax.plot(sample[:, 0], c=f"C{k}", label="samples" if k == 0 else None)
    ax.set_xlabel("step")
    ax.legend(loc="upper right")
    return fig, ax


SAMPLE_FORMATS = (".png", ".npz")


def write_samples(
    target: str,
    samples: np.ndarray,
    data: dict[str, Any],
    title: str = "",
    storage: Storage | None = None,
) -> None:
    """`.npz` writes the raw samples (key `samples`), `.png` a picture."""
    storage = storage or Storage()
    if not target.lower().endswith(SAMPLE_FORMATS):
        raise ValueError(f"{target}: the output must end in .png (a picture) or .npz (samples)")
    if target.lower().endswith(".npz"):
        buffer = io.BytesIO()
        np.savez(buffer, samples=samples)
        storage.write_bytes(target, buffer.getvalue())
    else:
        storage.write_bytes(target, render_png(samples, data, title))


def preview_title(run: str, manifest: dict[str, Any], count: int) -> str:
    """Which run, which mixture, how many samples, and its score with what that score is."""
    generators = len(manifest["generators"])
    plural = "" if generators == 1 else "s"
    title = (
        f"{run}: ensemble of cell {manifest['bestCell']} ({generators} generator{plural}), "
        f"{count} samples"
    )
    objective = manifest.get("objective")
    if objective:
        title += f"\n{describe_score(objective['name'], objective['value'])}"
    return title


SCORE_NAMES = {
    "fid": "FID (MNIST classifier)",
    "tvd": "class TVD from uniform",
    "mode-kl": "mode KL",
    "swd": "sliced Wasserstein distance",
    "spectrum": "log-spectrum distance",
}


def describe_score(name: str, value: float) -> str:
    """`FID (MNIST classifier) 12.3, lower is better`: every score here is a distance."""
    return f"{SCORE_NAMES.get(name, name)} {value:.4g}, lower is better"
