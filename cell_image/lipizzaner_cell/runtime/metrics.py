"""A cell's Prometheus metrics (`/metrics` on its process's metrics port).

The cells one process hosts share one endpoint (`MetricsEndpoint`): one set of families,
each cell its own children, so a pod of several cells is scraped on one port.

Every series carries run, cell, row and col; the only other labels are bounded: the
neighbour's direction, a pull's outcome, the score's name, a mixture member's cell.
The generation is a value, never a label. docs/metrics.md lists them all.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lipizzaner_cell.algorithm.report import FIGURES, GenerationReport, figures

CELL_LABELS = ("run", "cell", "row", "col")
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 600)
EXCHANGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CHECKPOINT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class MetricsEndpoint:
    """One process's registry: each family made once, whichever of its cells asks first."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._families: dict[str, Any] = {}
        self._lock = threading.Lock()

    def family(self, kind: type, name: str, text: str, labels: tuple[str, ...], **options):
        with self._lock:
            if name not in self._families:
                self._families[name] = kind(name, text, labels, registry=self.registry, **options)
            return self._families[name]

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, host, registry=self.registry)


class CellMetrics:
    """One cell's series on its process's endpoint: a generation's figures (`FIGURES`,
    one gauge each), its scores, the exchange, checkpoints and restarts."""

    def __init__(
        self,
        run: str,
        cell: int,
        row: int,
        col: int,
        restarts: int,
        endpoint: MetricsEndpoint | None = None,
    ) -> None:
        self.endpoint = endpoint or MetricsEndpoint()
        self.registry = self.endpoint.registry
        self.labels = {"run": run, "cell": str(cell), "row": str(row), "col": str(col)}
        self._generation_series()
        self._exchange_series()
        self.checkpoint = self.metric(
            Histogram,
            "checkpoint_duration_seconds",
            "Time to write one checkpoint",
            buckets=CHECKPOINT_BUCKETS,
        )
        self.restarts = self.metric(Gauge, "restarts", "How often this cell was restarted")
        self.restarts.set(restarts)

    def metric(self, kind: type, name: str, text: str, extra: tuple[str, ...] = (), **options):
        """A family with extra labels, or else the one child of this cell."""
        labels = (*CELL_LABELS, *extra)
        family = self.endpoint.family(kind, f"lipizzaner_cell_{name}", text, labels, **options)
        return family if extra else family.labels(**self.labels)

    def _generation_series(self) -> None:
        self.generation = self.metric(Gauge, "generation", "Generations completed so far")
        self.completed = self.metric(Counter, "generations_completed", "Generations completed")
        self.duration = self.metric(
            Histogram,
            "generation_duration_seconds",
            "Wall time of one generation",
            buckets=GENERATION_BUCKETS,
        )
        self.figures = {
            figure: self.metric(Gauge, figure.gauge, figure.help)
            for figure in FIGURES
            if figure.gauge
        }
        self.score = self.metric(
            Gauge, "score", "The mixture's score (lower is better)", extra=("score",)
        )
        self.kept_score = self.metric(
            Gauge,
            "kept_score",
            "Keep-best: the best mixture score so far, the one the cell would end with",
            extra=("score",),
        )
        self.mixture_weight = self.metric(
            Gauge, "mixture_weight", "Weight of a neighbourhood member's generator", ("member",)
        )
        self.samples = self.metric(Counter, "samples_trained", "Real samples trained on")

    def _exchange_series(self) -> None:
        self.exchange = self.metric(
            Histogram,
            "exchange_duration_seconds",
            "Time of one pull of a neighbour's state",
            ("direction", "outcome"),
            buckets=EXCHANGE_BUCKETS,
        )
        self.received = self.metric(
            Counter, "exchange_received_bytes", "Bytes received from a neighbour", ("direction",)
        )
        self.failures = self.metric(
            Counter,
            "exchange_failures",
            "Pulls that failed (unreachable, deadline)",
            ("direction",),
        )
        self.rejected = self.metric(
            Counter,
            "exchange_rejected_states",
            "Neighbour states rejected as malformed",
            ("direction",),
        )
        self.refused = self.metric(
            Counter,
            "exchange_refused_requests",
            "Requests this cell's server refused: malformed, or from a peer of another run",
            ("reason",),
        )
        self.tls = self.metric(Gauge, "exchange_tls", "1 when the exchange uses mutual TLS")

    def prepare_directions(self, directions: list[str]) -> None:
        """Exchange counters start at 0 for every neighbour, so "no failures" is a 0."""
        for direction in directions:
            for family in (self.received, self.failures, self.rejected):
                family.labels(**self.labels, direction=direction)
        for reason in ("malformed", "peer"):
            self.refused.labels(**self.labels, reason=reason)

    def record_generation(
        self,
        report: GenerationReport,
        seconds: float,
        score_name: str | None,
        weights: dict[int, float],
    ) -> None:
        self.generation.set(report.generation)
        self.completed.inc()
        self.duration.observe(seconds)
        for figure, value in figures(report).items():
            if figure.gauge:
                self.figures[figure].set(value)
        self.samples.inc(report.samples_trained)
        if report.mixture_score is not None and score_name is not None:
            self.score.labels(**self.labels, score=score_name).set(report.mixture_score)
        if report.kept_score is not None and score_name is not None:
            self.kept_score.labels(**self.labels, score=score_name).set(report.kept_score)
        for member, weight in weights.items():
            self.mixture_weight.labels(**self.labels, member=str(member)).set(weight)

    def record_refused(self, reason: str) -> None:
        self.refused.labels(**self.labels, reason=reason).inc()

    def record_pull(self, direction: str, outcome: str, seconds: float, received: int) -> None:
        """One pull of a neighbour's state; outcome: new, unchanged, failed or rejected."""
        self.exchange.labels(**self.labels, direction=direction, outcome=outcome).observe(seconds)
        self.received.labels(**self.labels, direction=direction).inc(received)
        if outcome == "failed":
            self.failures.labels(**self.labels, direction=direction).inc()
        elif outcome == "rejected":
            self.rejected.labels(**self.labels, direction=direction).inc()
