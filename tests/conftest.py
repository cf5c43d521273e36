from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lipizzaner_core.spec import API_VERSION, KIND

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"


def run_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """A LipizzanerRun named `name` with these spec sections."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


TINY_RING = run_manifest(
    "tiny",
    grid={"rows": 2, "cols": 2},
    generations=4,
    seed=5,
    dataset={"name": "gaussian-ring", "size": 2000},
    network={
        "latentSize": 8,
        "generator": {"hiddenSizes": [32]},
        "discriminator": {"hiddenSizes": [32]},
    },
    coevolution={"learningRate": 0.001, "fitness": {"sampleSize": 200}},
    mixture={"scoreSampleSize": 200, "sigma": 0.05},
    training={"batchSize": 50, "batchesPerGeneration": 5, "device": "cpu"},
    checkpoint={"every": 2},
)


def wait_until(condition, timeout: float = 240.0, poll: float = 0.05) -> bool:
    """Whether `condition()` came true within `timeout` seconds (generous: the suite must
    pass with the other core busy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> dict[str, Any]:
    """A 2x2 run on the ring with tiny networks that trains in a second or two."""
    manifest = copy.deepcopy(TINY_RING)
    manifest["spec"]["output"] = {"uri": str(tmp_path / "out")}
    return manifest


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """Inception-v3 weights of the standard architecture, randomly initialised (He, so the
    features do not vanish), as a safetensors file: the real ones cannot be downloaded."""
    from lipizzaner_cell.scores.inception import inception_network
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = {k: v.contiguous() for k, v in inception_network(None).state_dict().items()}
    for tensor in weights.values():
        if tensor.dim() == 4:
            torch.nn.init.kaiming_normal_(tensor, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "inception.safetensors"
    save_file(weights, str(path))
    return path


@pytest.fixture
def s3_endpoint(monkeypatch):
    """An S3 server on loopback (moto) with a bucket `runs`, and the credentials to use it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runs")
    yield endpoint
    server.stop()


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test split not found at {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture
def tiny_mnist_manifest(mnist_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """A 1x2 grid on 5 % of the MNIST digits for one generation of two small batches."""
    return run_manifest(
        "mnist-tiny",
        grid={"rows": 1, "cols": 2},
        generations=1,
        dataset={"name": "mnist", "path": str(mnist_dir), "samplingRatio": 0.05},
        coevolution={"fitness": {"sampleSize": 50}},
        mixture={"scoreSampleSize": 50},
        training={"batchSize": 20, "batchesPerGeneration": 2, "device": "cpu"},
        output={"uri": str(tmp_path / "out")},
    )


def unavailable(problem: str) -> None:
    """A real server a test needs cannot run here: skip locally, fail under CI=true
    (.ci/run installs everything, so there it is a broken install)."""
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def required_tool(name: str, package: str) -> str:
    """The path of a program from Debian's `package` that a test runs for real."""
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed (apt-get install {package}; .ci/run does)")
    return str(found)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory):
    """The real API server (hack/envtest.sh), one per test session, with the CRD installed.

    Where it cannot run (no etcd or Go), its tests are skipped, except under CI=true.
    """
    from envtest import ControlPlane, control_plane_available

    problem = control_plane_available()
    if problem is not None:
        unavailable(f"the Kubernetes control plane cannot start: {problem}")
    plane = ControlPlane(tmp_path_factory.mktemp("envtest")).start()
    try:
        plane.install_crd()
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def cluster(control_plane, request: pytest.FixtureRequest):
    """A namespace of this test's own on the real API server, removed afterwards."""
    from envtest import Cluster

    name = request.node.name.lower().replace("_", "-")
    view = Cluster(control_plane, "".join(c for c in name if c.isalnum() or c == "-"))
    yield view
    view.cleanup()


def ring(**fields: Any):
    """The 8-Gaussian ring at its defaults (or `fields`), drawn from seed 0."""
    from lipizzaner_cell.data.loading import load_dataset
    from lipizzaner_core.spec.datasets import GaussianRingSpec

    return load_dataset(GaussianRingSpec(name="gaussian-ring", **fields), seed=0)


# The end-to-end tests' node and operator, one for the whole session (tests/e2e/).
pytest_plugins = ["e2e.fixtures"]
