from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"

TINY_RING: dict[str, Any] = {
    "apiVersion": "lipizzaner.io/v1alpha1",
    "kind": "LipizzanerRun",
    "metadata": {"name": "tiny"},
    "spec": {
        "grid": {"rows": 2, "cols": 2},
        "generations": 4,
        "seed": 5,
        "dataset": {"name": "gaussian-ring", "size": 2000},
        "network": {
            "latentSize": 8,
            "generator": {"hiddenSizes": [32]},
            "discriminator": {"hiddenSizes": [32]},
        },
        "coevolution": {"learningRate": 0.001, "fitness": {"sampleSize": 200}},
        "mixture": {"scoreSampleSize": 200, "sigma": 0.05},
        "training": {"batchSize": 50, "batchesPerGeneration": 5, "device": "cpu"},
        "checkpoint": {"every": 2},
    },
}


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> dict[str, Any]:
    """A 2x2 run on the ring with tiny networks that trains in a second or two."""
    manifest = copy.deepcopy(TINY_RING)
    manifest["spec"]["output"] = {"uri": str(tmp_path / "out")}
    return manifest


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test split not found at {MNIST_DIR}")
    return MNIST_DIR
