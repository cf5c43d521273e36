"""The operator's Prometheus metrics.

Runs by phase are counted at scrape time from the live LipizzanerRun objects, so a deleted
run vanishes from the metric; the counters have no per-run labels, so their series stay
bounded however many runs come and go.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from lipizzaner_core.status import RunPhase
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lipizzaner_operator.reconcile import GANG_WAITING

log = logging.getLogger(__name__)
PHASES: tuple[RunPhase, ...] = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


class RunsByPhase(Collector):
    def __init__(self, list_runs: Callable[[], list[dict]]) -> None:
        self.list_runs = list_runs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            runs = self.list_runs()
        except Exception:  # a scrape must not fail because the API server is away
            log.warning("cannot list LipizzanerRuns for the metrics", exc_info=True)
            return
        tally = Tally((run.get("status") or {}).get("phase", "Pending") for run in runs)
        family = GaugeMetricFamily(
            "lipizzaner_operator_runs", "LipizzanerRuns by phase", labels=["phase"]
        )
        for phase in PHASES:
            family.add_metric([phase], tally.get(phase, 0))
        yield family
        gang = GaugeMetricFamily(
            "lipizzaner_operator_runs_waiting_for_gang",
            "Gang-scheduled runs whose cells are not all placed yet (spec.scheduling.podGroup)",
        )
        gang.add_metric(
            [],
            sum(
                (run.get("status") or {}).get("message", "").startswith(GANG_WAITING)
                for run in runs
            ),
        )
        yield gang


class OperatorMetrics:
    def __init__(self, list_runs: Callable[[], list[dict]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(RunsByPhase(list_runs))
        self.cell_restarts = self._counter(
            "cell_restarts",
            "Cell pods recreated after a failure (counted toward maxRestartsPerCell)",
        )
        self.cell_disruptions = self._counter(
            "cell_disruptions",
            "Cell pods recreated after a disruption: preempted, evicted, node or pod lost",
        )
        self.cells_given_up = self._counter(
            "cells_given_up",
            "Cells given up past their restarts (spec.failurePolicy.maxFailedCells)",
        )
        self.reconcile_errors = self._counter(
            "reconcile_errors", "Reconciliations that raised (kopf retries them)"
        )
        self.pod_creations = self._counter("pod_creations", "Cell pods created")
        self.pod_lists = self._counter(
            "pod_lists",
            "Passes that listed their run's pods: the pod cache had not yet shown what the "
            "operator last did to them",
        )
        self.reconcile_seconds = Histogram(
            "lipizzaner_operator_reconcile_seconds",
            "How long one pass over one run took: its pods, its cells' status, its decisions",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def _counter(self, name: str, documentation: str) -> Counter:
        return Counter(f"lipizzaner_operator_{name}", documentation, registry=self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, host, registry=self.registry)
