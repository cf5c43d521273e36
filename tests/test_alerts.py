"""The chart's alerts, rendered by Helm's own engine and tested by Prometheus' own
`promtool test rules` against synthetic series: each fires when it should, and a healthy
run raises none."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import required_tool
from test_helm import render

HEALTHY = 'lipizzaner_cell_generation{namespace="ml", run="r", cell="0"}'
LABELS = {"namespace": "ml", "run": "r", "cell": "0"}


@pytest.fixture
def promtool() -> str:
    return required_tool("promtool", "prometheus")


def rule_groups(values: dict) -> list[dict]:
    objects, _ = render({"prometheusRule": {"enabled": True, **values}})
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def alert(name: str, at: str, labels: dict[str, str] | None = None, summary: str = "") -> dict:
    """Expect `name` firing at `at` with these labels and summary (None: not firing)."""
    if labels is None:
        return {"eval_time": at, "alertname": name, "exp_alerts": []}
    fired = {
        "exp_labels": {**labels, "severity": severity(name)},
        "exp_annotations": {"summary": summary},
    }
    return {"eval_time": at, "alertname": name, "exp_alerts": [fired]}


def severity(name: str) -> str:
    return "critical" if name == "LipizzanerOperatorDown" else "warning"


def run_promtool(promtool: str, tmp_path: Path, groups: list[dict], tests: list[dict]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    spec = tmp_path / "test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def operator_up(minutes: int) -> dict:
    return {"series": 'lipizzaner_operator_runs{phase="Running"}', "values": f"1x{minutes}"}


def test_a_stuck_cell_alerts_and_a_training_one_does_not(promtool, tmp_path):
    groups = rule_groups({"stuckMinutes": 10})
    series = [
        {"series": HEALTHY, "values": "1+1x40"},
        {"series": HEALTHY.replace('"0"', '"1"'), "values": "5+0x40"},
        operator_up(40),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                alert(
                    "LipizzanerCellStuck",
                    "30m",
                    {**LABELS, "cell": "1"},
                    "Run r cell 1 made no generation progress for 10 minutes",
                ),
                alert("LipizzanerCellStuck", "8m", None),  # not yet: stuck for 10 minutes
                alert("LipizzanerOperatorDown", "30m", None),
            ],
        }
    ]
    run_promtool(promtool, tmp_path, groups, tests)


def test_restarts_exchange_failures_and_a_missing_operator_alert(promtool, tmp_path):
    groups = rule_groups({"restarts": 3, "exchangeFailuresPerSecond": 0.5})
    failures = 'lipizzaner_cell_exchange_failures_total{namespace="ml", run="r", cell="0", '
    series = [
        {"series": 'lipizzaner_cell_restarts{namespace="ml", run="r", cell="0"}', "values": "3x20"},
        {"series": 'lipizzaner_cell_restarts{namespace="ml", run="r", cell="1"}', "values": "1x20"},
        {"series": failures + 'direction="north"}', "values": "0+60x20"},  # 1 a second
        {"series": failures.replace('"0"', '"1"') + 'direction="north"}', "values": "0+6x20"},
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                alert(
                    "LipizzanerCellRestarting",
                    "2m",
                    LABELS,
                    "Run r cell 0 has been restarted 3 times",
                ),
                alert(
                    "LipizzanerExchangeFailing",
                    "15m",
                    LABELS,
                    "Run r cell 0 fails 1 neighbour pulls a second",
                ),
                alert(
                    "LipizzanerOperatorDown",
                    "10m",
                    {},
                    "The Lipizzaner operator exports no metrics: it is down or not scraped",
                ),
            ],
        }
    ]
    run_promtool(promtool, tmp_path, groups, tests)
