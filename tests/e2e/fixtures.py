"""The end-to-end tests' fixtures (a pytest plugin of tests/conftest.py, so the one node
serves every module) and the helpers they share: a small run in real pods, its pods, its
status, and what to read when it went wrong.

`LIPIZZANER_E2E_NODE=DIR` reuses a node already started with `hack/cluster.sh start DIR`
and `hack/images.sh build DIR`, and leaves it running: for working on these tests."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_RING, unavailable
from e2e.node import CHART, Node, start, stop, unavailable_because
from envtest import wait_for

OPERATOR_NAMESPACE = "lipizzaner-system"


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    problem = unavailable_because()
    if problem:
        unavailable(problem)
    reused = os.environ.get("LIPIZZANER_E2E_NODE")
    if reused:
        yield Node(Path(reused), {})
        return
    # Not pytest's tmp_path: a node's folder holds gigabytes until it is stopped, and
    # pytest keeps its last three sessions' folders.
    directory = Path(tempfile.gettempdir()) / f"lipizzaner-node-{uuid.uuid4().hex[:8]}"
    started = start(directory)
    try:
        yield started
    finally:
        stop(started)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def operator(node: Node) -> Node:
    """The chart, installed by helm with its defaults: the operator runs in its own pod,
    from the image hack/images.sh loaded, under the chart's ServiceAccount."""
    install_chart(node)
    return node


def install_chart(node: Node) -> None:
    """`helm upgrade --install` of the chart (its hooks run), then a ready operator."""
    node.run(
        str(node.bin / "helm"),
        *("upgrade", "--install", "lipizzaner", str(CHART)),
        *("-n", OPERATOR_NAMESPACE, "--create-namespace", "--wait", "--timeout", "10m"),
        timeout=900,
    )
    wait_for("the operator's pod to be ready", lambda: operator_pods(node, ready=True))


def operator_pods(node: Node, ready: bool = False) -> list[dict[str, Any]]:
    """The operator's pods (the ready ones only, with `ready`)."""
    pods = node.get("pods", "-n", OPERATOR_NAMESPACE)["items"]
    return [
        pod
        for pod in pods
        if not ready
        or any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
    ]


@pytest.fixture
def namespace(operator: Node) -> str:
    """A namespace of the test's own, with the bucket's credentials as Secret `s3`."""
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    operator.kubectl("create", "namespace", name)
    credentials = operator.s3_credentials()
    operator.kubectl(
        *("-n", name, "create", "secret", "generic", "s3"),
        f"--from-literal=AWS_ACCESS_KEY_ID={credentials['aws_access_key_id']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={credentials['aws_secret_access_key']}",
        "--from-literal=AWS_DEFAULT_REGION=us-east-1",
    )
    return name


def tiny_run(node: Node, namespace: str, name: str = "tiny", **spec: Any) -> dict[str, Any]:
    """A 2x2 run on the ring with tiny networks: a minute or two in pods on 2 cores, its
    output in the node's bucket, its cells over mutual TLS, no GPU asked for."""
    manifest = copy.deepcopy(TINY_RING)
    manifest["metadata"]["name"] = name
    manifest["spec"].update(
        score={"finalSamples": 500},
        exchange={"tls": {"enabled": True}},
        output={
            "uri": f"s3://{node.bucket}/runs/{namespace}/{name}",
            "endpointUrl": node.s3_endpoint,
            "credentialsSecret": "s3",
        },
        cell={"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
    )
    manifest["spec"].update(spec)
    return manifest


def apply_run(node: Node, namespace: str, manifest: dict[str, Any]) -> Path:
    """`kubectl apply -f` of the run, from a file as a user would; the file's path."""
    path = run_file(node, manifest)
    node.kubectl("apply", "-n", namespace, "-f", str(path))
    return path


def run_file(node: Node, manifest: dict[str, Any]) -> Path:
    path = node.directory / f"{manifest['metadata']['name']}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def status(node: Node, namespace: str, run: str) -> dict[str, Any]:
    """The run's status ({} before the operator's first pass, or once it is gone)."""
    found = node.kubectl("get", "lpz", run, "-n", namespace, "-o", "yaml", check=False)
    return (yaml.safe_load(found.stdout) or {}).get("status") or {} if found.returncode == 0 else {}


def cell_pods(node: Node, namespace: str, run: str) -> list[dict[str, Any]]:
    selector = f"lipizzaner.io/run={run}"
    return node.get("pods", "-n", namespace, "-l", selector)["items"]


def all_running(node: Node, namespace: str, run: str, count: int = 4) -> list[dict[str, Any]]:
    """The run's pods once all `count` are Running, else []."""
    pods = cell_pods(node, namespace, run)
    ready = len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods)
    return pods if ready else []


def generations(node: Node, namespace: str, run: str) -> dict[int, int]:
    """Each cell's generation as the run's status reports it."""
    records = status(node, namespace, run).get("cellRecords") or []
    return {r["cell"]: r.get("generation", 0) for r in records}


def succeeded(node: Node, namespace: str, run: str, timeout: int = 900) -> dict[str, Any]:
    """`kubectl wait --for=condition=Succeeded`, then the run's status."""
    done = node.kubectl(
        *("wait", "--for=condition=Succeeded", f"lpz/{run}", "-n", namespace),
        f"--timeout={timeout}s",
        check=False,
    )
    assert done.returncode == 0, done.stderr + describe(node, namespace)
    return status(node, namespace, run)


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def describe(node: Node, namespace: str) -> str:
    """What to read when a run did not succeed: its status and its pods' last lines."""
    lines = [node.kubectl("get", "lpz,pods", "-n", namespace, "-o", "wide").stdout]
    lines.append(node.kubectl("get", "lpz", "-n", namespace, "-o", "yaml").stdout)
    for pod in node.get("pods", "-n", namespace)["items"]:
        name = pod["metadata"]["name"]
        lines.append(node.kubectl("logs", "-n", namespace, name, "--tail=20", check=False).stdout)
    return "\n".join(lines)
