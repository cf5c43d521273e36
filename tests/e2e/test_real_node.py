"""End to end on a real node (`hack/cluster.sh`): the images built, the chart installed by
helm, runs trained in real pods that find each other through cluster DNS, exchange over
the pod network with mutual TLS and write to a real S3 server. Skipped where a node
cannot run (and failed under CI=true, where .ci/run installs everything)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from e2e.fixtures import (
    all_running,
    apply_run,
    parse_time,
    run_file,
    status,
    succeeded,
    tiny_run,
)
from e2e.node import Node
from envtest import wait_for


def test_a_run_trains_in_real_pods_through_dns_and_mtls_to_its_ensemble_in_s3(
    operator: Node, namespace: str, tmp_path: Path
):
    node = operator
    applied = time.monotonic()
    apply_run(node, namespace, tiny_run(node, namespace))
    running = wait_for("four cell pods Running", lambda: all_running(node, namespace, "tiny"))
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
        lambda: status(node, namespace, "tiny").get("generation", {}).get("min", 0) >= 1,
    )
    node.timings["apply to every cell's first generation"] = time.monotonic() - applied
    ensemble = succeeded(node, namespace, "tiny")["ensemble"]["uri"]
    node.timings["apply to Succeeded"] = time.monotonic() - applied
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
