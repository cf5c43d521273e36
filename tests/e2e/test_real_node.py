"""End to end on a real node (`hack/cluster.sh`): the images built, the chart installed by
helm, runs trained in real pods that find each other through cluster DNS, exchange over
the pod network with mutual TLS and write to a real S3 server. Skipped where a node
cannot run (and failed under CI=true, where .ci/run installs everything)."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_RING, unavailable
from e2e.node import CHART, Node, start, stop, unavailable_because
from envtest import wait_for


@pytest.fixture(scope="session")
def node() -> Node:
    problem = unavailable_because()
    if problem:
        unavailable(problem)
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
    node.run(
        str(node.bin / "helm"),
        *("install", "lipizzaner", str(CHART), "-n", "lipizzaner-system", "--create-namespace"),
        *("--wait", "--timeout", "10m"),
        timeout=900,
    )
    wait_for("the operator's pod to be ready", lambda: operator_ready(node))
    return node


def operator_ready(node: Node) -> bool:
    pods = node.get("pods", "-n", "lipizzaner-system")["items"]
    return any(
        condition["type"] == "Ready" and condition["status"] == "True"
        for pod in pods
        for condition in pod["status"].get("conditions", [])
    )


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


def run_file(node: Node, manifest: dict[str, Any]) -> Path:
    path = node.directory / f"{manifest['metadata']['name']}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def cell_pods(node: Node, namespace: str, run: str) -> list[dict[str, Any]]:
    selector = f"lipizzaner.io/run={run}"
    return node.get("pods", "-n", namespace, "-l", selector)["items"]


def test_a_run_trains_in_real_pods_through_dns_and_mtls_to_its_ensemble_in_s3(
    operator: Node, namespace: str, tmp_path: Path
):
    node = operator
    applied = time.monotonic()
    node.kubectl("apply", "-n", namespace, "-f", str(run_file(node, tiny_run(node, namespace))))
    running = wait_for(
        "four cell pods Running",
        lambda: (
            (pods := cell_pods(node, namespace, "tiny"))
            and len(pods) == 4
            and all(p["status"].get("phase") == "Running" for p in pods)
            and pods
        ),
    )
    node.timings["apply to all cells Running"] = time.monotonic() - applied
    starts = [
        (
            parse_time(p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
            - parse_time(p["metadata"]["creationTimestamp"])
        )
        for p in running
    ]
    node.timings["pod start latency (max)"] = max(starts)
    wait_for(
        "every cell's first generation",
        lambda: (
            (node.get("lpz", "tiny", "-n", namespace).get("status") or {})
            .get("generation", {})
            .get("min", 0)
            >= 1
        ),
    )
    node.timings["apply to every cell's first generation"] = time.monotonic() - applied
    done = node.kubectl(
        *("wait", "--for=condition=Succeeded", "lpz/tiny", "-n", namespace, "--timeout=900s"),
        check=False,
    )
    assert done.returncode == 0, done.stderr + describe(node, namespace)
    node.timings["apply to Succeeded"] = time.monotonic() - applied
    status = node.get("lpz", "tiny", "-n", namespace)["status"]
    ensemble = status["ensemble"]["uri"]
    assert ensemble == f"s3://{node.bucket}/runs/{namespace}/tiny/ensemble"
    # The cells found each other through cluster DNS and pulled over the pod network:
    # every cell heard from every neighbour, over mutual TLS.
    for cell in range(4):
        log = node.kubectl("logs", "-n", namespace, f"tiny-cell-{cell}").stdout
        assert "(mutual TLS)" in log and "no state yet from neighbours" not in log, log
    import fsspec

    with fsspec.open(
        f"s3://{node.bucket}/runs/{namespace}/tiny/cells/0/result.json",
        endpoint_url=node.s3_endpoint,
        key=node.s3_credentials()["aws_access_key_id"],
        secret=node.s3_credentials()["aws_secret_access_key"],
    ) as opened:
        result = json.load(opened)
    assert result["generation"] == 4 and result["missingNeighbours"] == []
    picture = tmp_path / "samples.png"
    lipizzaner = Path(sys.executable).parent / "lipizzaner"
    node.run(str(lipizzaner), "sample", ensemble, "-n", "64", "-o", str(picture))
    assert picture.stat().st_size > 1000
    print("timings (s):", json.dumps({k: round(v, 1) for k, v in node.timings.items()}))


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def describe(node: Node, namespace: str) -> str:
    """What to read when a run did not succeed: its status and its pods' last lines."""
    lines = [node.kubectl("get", "lpz,pods", "-n", namespace, "-o", "wide").stdout]
    for pod in node.get("pods", "-n", namespace)["items"]:
        name = pod["metadata"]["name"]
        lines.append(node.kubectl("logs", "-n", namespace, name, "--tail=20", check=False).stdout)
    return "\n".join(lines)


def test_submit_waits_for_a_run_and_logs_reads_its_cells(operator: Node, namespace: str):
    node = operator
    path = run_file(node, tiny_run(node, namespace, name="submitted"))
    lipizzaner = str(Path(sys.executable).parent / "lipizzaner")
    submitted = node.run(
        lipizzaner, "submit", str(path), "-n", namespace, "--wait", "--timeout", "900", timeout=1000
    )
    assert "submitted succeeded: ensemble s3://" in submitted.stdout, submitted.stderr
    logs = node.run(lipizzaner, "logs", "submitted", "-n", namespace, "--cell", "3")
    assert "== cell 3, attempt 0 ==" in logs.stdout and "generation 4/4" in logs.stdout
