"""Load a saved ensemble, draw samples by its mixture weights, and picture them."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lipizzaner_core.layout import ENSEMBLE_MANIFEST
from lipizzaner_core.spec.training import NetworkPartSpec
from lipizzaner_core.storage import Storage, damaged_as, join

from lipizzaner_cell.algorithm.mixture import sample_mixture
from lipizzaner_cell.algorithm.networks import build_generator
from lipizzaner_cell.algorithm.weights import load_weights
from lipizzaner_cell.data.datasets import ValueMap
from lipizzaner_cell.scores.yardsticks import Yardsticks, beside


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
    base = uri.rstrip("/").removesuffix(f"/{ENSEMBLE_MANIFEST}")
    manifest_uri = join(base, ENSEMBLE_MANIFEST)
    manifest = storage.read_json(manifest_uri)
    with damaged_as(manifest_uri):
        part = NetworkPartSpec.model_validate(manifest["network"]["generator"])
        shape = tuple(manifest["data"]["shape"])
        latent = int(manifest["network"]["latentSize"])
        weights = torch.tensor([g["weight"] for g in manifest["generators"]], dtype=torch.float64)
        files = [join(base, entry["file"]) for entry in manifest["generators"]]
        ValueMap(**manifest["data"]["values"])
        if not files or not bool(torch.isfinite(weights).all()) or weights.sum() <= 0:
            raise ValueError(f"generator weights {weights.tolist()} are no mixture")
        reference = manifest["data"].get("reference")
    if isinstance(reference, str):  # kept beside the manifest
        manifest["data"]["reference"] = storage.read_json(join(base, reference))
    generators = [
        load_weights(build_generator(part, latent, shape), storage, file) for file in files
    ]
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
        gap = max(1, height // 14)  # white lines between the tiles: 2 px at 28 px
        step_y, step_x = height + gap, width + gap
        canvas = np.ones((side * step_y - gap, side * step_x - gap, channels))
        for k, image in enumerate(samples):
            row, col = divmod(k, side)
            canvas[row * step_y : row * step_y + height, col * step_x : col * step_x + width] = (
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


def preview_title(
    run: str, manifest: dict[str, Any], count: int, ends: Yardsticks | None = None
) -> str:
    """Which run, which mixture, how many samples, and its score with what that score is
    and, given `ends`, what real data and noise score."""
    generators = len(manifest["generators"])
    plural = "" if generators == 1 else "s"
    title = (
        f"{run}: ensemble of cell {manifest['bestCell']} ({generators} generator{plural}), "
        f"{count} samples"
    )
    objective = manifest.get("objective")
    if objective:
        title += f"\n{describe_score(objective['name'], objective['value'], ends)}"
    return title


SCORE_NAMES = {
    "fid": "FID (MNIST classifier)",
    "tvd": "class TVD from uniform",
    "mode-kl": "mode KL",
    "swd": "sliced Wasserstein distance",
    "spectrum": "log-spectrum distance",
}


def describe_score(name: str, value: float, ends: Yardsticks | None = None) -> str:
    """`FID (MNIST classifier) 12.3 (real data 1.2, noise 310), lower is better`: every
    objective here is a distance."""
    shown = beside(name.replace("-", "_"), value, ends or {})
    return f"{SCORE_NAMES.get(name, name)} {shown}, lower is better"
