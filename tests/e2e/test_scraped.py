"""Prometheus scrapes a real run's cells and the operator's pod through
`kubernetes_sd_configs` with the cluster's kubeconfig, in the job that docs/metrics.md
gives users without the Prometheus Operator, and every query of the shipped Grafana
dashboard answers for that run. The Prometheus is hack/cluster.sh's build: Debian's is
built without the Kubernetes discovery."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from pathlib import Path

import yaml
from e2e.fixtures import OPERATOR_NAMESPACE, all_running, apply_run, tiny_run
from e2e.node import ROOT, Node
from envtest import wait_for
from lipizzaner_cell.executors.local_processes import free_port_block
from test_metrics import expressions, query


def documented_job(node: Node, namespaces: list[str]) -> dict:
    """docs/metrics.md's scrape job for Prometheus without its operator, given the test
    cluster's kubeconfig (Prometheus runs on the host here, not in a pod)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    block = re.search(r"```yaml\n(scrape_configs:.*?)```", text, re.DOTALL)
    assert block, "docs/metrics.md has no scrape_configs block"
    (job,) = yaml.safe_load(block.group(1))["scrape_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    discovery.update(kubeconfig_file=str(node.kubeconfig), namespaces={"names": namespaces})
    return job


def for_the_run(expr: str, namespace: str, run: str) -> str:
    """A panel's query with Grafana's variables set to this run, as a user picks it."""
    return (
        expr.replace("$__rate_interval", "30s")
        .replace("$namespace", namespace)
        .replace("$run", run)
    )


def test_every_dashboard_query_answers_for_a_run_scraped_in_the_cluster(
    operator: Node, namespace: str, tmp_path: Path
):
    node = operator
    run = tiny_run(node, namespace, name="watched", generations=2000)
    run["spec"]["semiSupervised"] = {"enabled": True}  # its cells report accuracy too
    apply_run(node, namespace, run)
    wait_for("four cells Running", lambda: all_running(node, namespace, "watched"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [documented_job(node, [namespace, OPERATOR_NAMESPACE])],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port_block(1)
    server = subprocess.Popen(
        [
            str(node.bin / "prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        silent = expressions()
        deadline = time.monotonic() + 300
        while silent and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # Prometheus is still starting
                silent = [
                    e for e in silent if not query(base, for_the_run(e, namespace, "watched"))
                ]
            time.sleep(1)
        assert not silent, f"panels without data for the run: {silent}"
        cells = query(base, f'count(lipizzaner_cell_generation{{namespace="{namespace}"}})')
        assert cells[0]["value"][1] == "4"
    finally:
        server.terminate()
        server.wait(10)
        node.kubectl("delete", "lpz", "watched", "-n", namespace, "--wait=false")
