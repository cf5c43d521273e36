"""Metrics and the Grafana dashboard: every panel's query answers from a real Prometheus
server scraping a real local 2x2 run (and a real operator metrics endpoint)."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RING, required_tool
from lipizzaner_cell.algorithm.report import GenerationReport
from lipizzaner_cell.executors.local_processes import LocalRun, free_port_block
from lipizzaner_cell.runtime.metrics import CellMetrics
from lipizzaner_core.spec import parse_run
from lipizzaner_operator.kube import KubeClient
from lipizzaner_operator.metrics import OperatorMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "helm/lipizzaner/dashboards/lipizzaner.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def report(generation: int = 1) -> GenerationReport:
    return GenerationReport(
        generation=generation,
        generator_loss=0.7,
        discriminator_loss=1.3,
        generator_fitness=0.6,
        discriminator_fitness=1.2,
        generator_lr=2e-4,
        discriminator_lr=3e-4,
        mixture_score=0.25,
        offspring_offered=1,
        offspring_accepted=1,
        neighbours_present=2,
        samples_trained=500,
        kept_score=0.2,
        kept_generation=generation - 1,
        accuracy=0.85,
    )


def exported_names() -> set[str]:
    """Every sample name the cell and the operator export, once each has recorded once."""
    cell = CellMetrics("demo", 3, 1, 0, restarts=2)
    cell.prepare_directions(["north"])
    cell.record_generation(report(), 0.5, "fid", {3: 0.6, 1: 0.4})
    cell.record_pull("north", "new", 0.01, 1000)
    cell.checkpoint.observe(0.1)
    operator = OperatorMetrics(lambda: [{"status": {"phase": "Running"}}])
    return {
        sample.name
        for registry in (cell.registry, operator.registry)
        for family in registry.collect()
        for sample in family.samples
    }


def test_every_metric_a_panel_queries_is_exported():
    names = exported_names()
    queried = {m for e in expressions() for m in re.findall(r"lipizzaner_[a-z_]+", e)}
    assert queried, "the dashboard queries nothing"
    assert queried <= names, queried - names


def test_metric_names_follow_the_prometheus_rules():
    for name in exported_names():
        assert name.startswith(("lipizzaner_cell_", "lipizzaner_operator_")), name
        assert not name.endswith(("_ms", "_milliseconds", "_kb", "_mb")), name  # base units
    counters = {n for n in exported_names() if n.endswith("_total")}
    assert "lipizzaner_cell_samples_trained_total" in counters
    assert "lipizzaner_cell_exchange_received_bytes_total" in counters


def test_the_dashboard_is_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "run"}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in {"timeseries", "heatmap", "stat", "table"}, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"]
    kinds = {p["type"] for p in board["panels"]}
    assert "heatmap" in kinds  # the grid


def test_cell_metrics_record_what_happened():
    cell = CellMetrics("demo", 3, 1, 0, restarts=2)
    cell.prepare_directions(["north", "west"])
    cell.record_generation(report(4), 0.5, "fid", {3: 0.6, 1: 0.4})
    cell.record_pull("north", "failed", 0.2, 0)
    cell.record_pull("west", "new", 0.01, 4096)
    labels = {"run": "demo", "cell": "3", "row": "1", "col": "0"}
    value = cell.registry.get_sample_value
    assert value("lipizzaner_cell_generation", labels) == 4
    assert value("lipizzaner_cell_samples_trained_total", labels) == 500
    assert value("lipizzaner_cell_score", {**labels, "score": "fid"}) == 0.25
    assert value("lipizzaner_cell_kept_score", {**labels, "score": "fid"}) == 0.2
    assert value("lipizzaner_cell_classifier_accuracy", labels) == 0.85
    assert value("lipizzaner_cell_mixture_weight", {**labels, "member": "1"}) == 0.4
    assert value("lipizzaner_cell_exchange_failures_total", {**labels, "direction": "north"}) == 1
    assert value("lipizzaner_cell_exchange_failures_total", {**labels, "direction": "west"}) == 0
    west = {**labels, "direction": "west"}
    assert value("lipizzaner_cell_exchange_received_bytes_total", west) == 4096
    assert value("lipizzaner_cell_restarts", labels) == 2


def test_runs_by_phase_come_from_live_objects():
    runs = [{"status": {"phase": "Running"}}, {"status": {"phase": "Running"}}, {}]
    metrics = OperatorMetrics(lambda: runs)
    assert metrics.registry.get_sample_value("lipizzaner_operator_runs", {"phase": "Running"}) == 2
    assert metrics.registry.get_sample_value("lipizzaner_operator_runs", {"phase": "Pending"}) == 1
    runs.clear()  # deleted runs vanish at the next scrape
    assert metrics.registry.get_sample_value("lipizzaner_operator_runs", {"phase": "Running"}) == 0


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())["data"]["result"]


def concrete(expr: str) -> str:
    """A panel's query with Grafana's variables filled in as a user choosing "All" would."""
    return expr.replace("$__rate_interval", "30s").replace("$namespace", ".*").replace("$run", ".*")


@pytest.fixture
def prometheus_binary() -> str:
    return required_tool("prometheus", "prometheus")


def test_every_panel_answers_from_prometheus_scraping_a_real_run(
    prometheus_binary, cluster, tmp_path
):
    manifest = copy.deepcopy(TINY_RING)
    manifest["spec"].update(generations=5000, output={"uri": str(tmp_path / "out")})
    manifest["spec"]["semiSupervised"] = {"enabled": True}  # its cells report accuracy too
    run = parse_run(manifest)
    local = LocalRun(run, tmp_path, threads=1)
    # The operator's gauge of runs by phase reads a real API server.
    cluster.create_run({**copy.deepcopy(manifest), "metadata": {"name": "tiny"}})
    operator_port = free_port_block(1)
    OperatorMetrics(lambda: KubeClient(cluster.api).list_runs([cluster.namespace])).serve(
        operator_port, "127.0.0.1"
    )
    web_port = free_port_block(1)
    scrape = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "cells",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{p}" for p in local.metrics_ports],
                        "labels": {"namespace": "local"},
                    }
                ],
            },
            {
                "job_name": "operator",
                "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}],
            },
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(scrape))
    server = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{web_port}"
    local.start()
    try:
        empty = expressions()
        deadline = time.monotonic() + 120
        while empty and time.monotonic() < deadline:
            local.check_processes()
            with contextlib.suppress(OSError):  # Prometheus is still starting
                empty = [e for e in empty if not query(base, concrete(e))]
            time.sleep(0.5)
        assert not empty, f"panels without data: {empty}"
        cells = query(base, "count(lipizzaner_cell_generation)")
        assert cells[0]["value"][1] == "4"
    finally:
        local.stop_all()
        local.close()
        server.terminate()
        server.wait(10)
