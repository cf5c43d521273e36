"""`lipizzaner classify`: a semi-supervised run's classifier on data, from its ensemble.

The ensemble of a semi-supervised run holds the best cell's discriminator and its
neighbours' (`manifest.json`, "classifier"). The best cell's own discriminator classifies
by default; `vote` takes the majority vote of all of them. Data comes as an array file in
the data's own range (pixel values 0-255, say), or as the run's own held-out split.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lipizzaner_core.layout import ENSEMBLE_MANIFEST
from lipizzaner_core.spec import parse_run
from lipizzaner_core.spec.training import NetworkPartSpec
from lipizzaner_core.storage import Storage, damaged_as, join

from lipizzaner_cell.algorithm.networks import build_discriminator
from lipizzaner_cell.algorithm.semi_supervised import predictions
from lipizzaner_cell.algorithm.weights import load_weights
from lipizzaner_cell.data.arrays import read_array
from lipizzaner_cell.data.loading import load_dataset

HELD_OUT = "held-out"  # DATA: the run's own held-out samples


@dataclass
class Classifier:
    manifest: dict[str, Any]
    nets: list[torch.nn.Module]  # the best cell's first

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["data"]["shape"])


def ensemble_manifest_uri(uri: str, storage: Storage) -> str:
    """The ensemble manifest of ENSEMBLE_OR_RUN: `<uri>/manifest.json`, else the run's
    `<uri>/ensemble/manifest.json`."""
    base = uri.rstrip("/").removesuffix(f"/{ENSEMBLE_MANIFEST}")
    direct = join(base, ENSEMBLE_MANIFEST)
    return direct if storage.exists(direct) else join(base, "ensemble", ENSEMBLE_MANIFEST)


def load_classifier(uri: str, storage: Storage) -> Classifier:
    """The classifiers of the ensemble at, or of the run at, `uri`."""
    manifest_uri = ensemble_manifest_uri(uri, storage)
    manifest = storage.read_json(manifest_uri)  # FileNotFoundError: no ensemble there
    found = manifest.get("classifier") if isinstance(manifest, dict) else None
    if found is None:
        raise ValueError(f"{uri}: not a semi-supervised run's ensemble (it has no classifier)")
    with damaged_as(manifest_uri):
        part = NetworkPartSpec.model_validate(found["network"])
        shape, classes = tuple(manifest["data"]["shape"]), int(found["classes"])
        files = [
            join(manifest_uri.removesuffix(f"/{ENSEMBLE_MANIFEST}"), member["file"])
            for member in found["members"]
        ]
    nets = [
        load_weights(build_discriminator(part, shape, classes), storage, file) for file in files
    ]
    return Classifier(manifest, nets)


def held_out_data(classifier: Classifier, storage: Storage) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's held-out samples (model space) and their classes."""
    spec = parse_run(classifier.manifest["spec"]).spec
    dataset = load_dataset(spec.dataset, spec.seed, storage)
    training, held_out = dataset.split(spec.dataset.validation_fraction)
    chosen = held_out or training
    assert chosen.labels is not None  # the run classified it
    return chosen.data, chosen.labels


def file_data(
    classifier: Classifier, path: str, key: str | None, labels_key: str | None, storage: Storage
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Samples of an array file, in the data's own range, into model space; and their
    classes under `labels_key`, if given."""
    raw = read_array(storage, path, key, "--key")
    shape = classifier.shape
    if raw.ndim < 1 or raw[0].size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: samples of shape {raw.shape[1:]} do not fit the run's data {list(shape)}"
        )
    values = classifier.manifest["data"]["values"]
    flat = raw.reshape(raw.shape[0], -1).astype(np.float64)
    model = (flat - np.asarray(values["offset"])) / np.asarray(values["scale"])
    samples = torch.from_numpy(model.reshape(raw.shape[0], *shape)).float()
    if labels_key is None:
        return samples, None
    labels = read_array(storage, path, labels_key, "--labels-key")
    if labels.shape != (raw.shape[0],):
        raise ValueError(f"{path}: {labels_key} holds {labels.shape}, not one class per sample")
    return samples, torch.from_numpy(labels.astype(np.int64))


def classify(classifier: Classifier, samples: torch.Tensor, vote: bool) -> torch.Tensor:
    """Each sample's class by the best cell's discriminator, or by the vote of all."""
    return predictions(classifier.nets if vote else classifier.nets[:1], samples)


def predictions_csv(predicted: torch.Tensor, labels: torch.Tensor | None) -> bytes:
    """index,prediction[,label] per sample."""
    out = io.StringIO()
    out.write("index,prediction" + (",label\n" if labels is not None else "\n"))
    for i, p in enumerate(predicted.tolist()):
        out.write(f"{i},{p}" + (f",{int(labels[i])}\n" if labels is not None else "\n"))
    return out.getvalue().encode()
