"""kopf handlers: thin. Read the run and its pods, call `decide`, carry out what it says.

One timer per run reconciles everything (children, restarts, suspend, deadline, TTL,
completion), so an operator restarted mid-run resumes where it was. Handlers are
registered into a registry passed in, so every test gets its own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from lipizzaner_core.contract import CONTROLLER_NAME
from lipizzaner_core.crd import GROUP, PLURAL, VERSION
from lipizzaner_core.placement import port_of
from lipizzaner_core.spec import LipizzanerRun, SpecError, parse_run
from lipizzaner_core.status import (
    RunStatus,
)

from lipizzaner_operator.cluster_io import (
    bounded_status,
    carry_out,
    cell_pods,
    ensure_shared_children,
    run_tls,
    with_every_record,
    with_lost_nodes,
)
from lipizzaner_operator.decision import aggregated
from lipizzaner_operator.ensemble_steps import assembled, output_layout, search_finished
from lipizzaner_operator.kube import KubeClient, connection_info, load_configuration, poll_cells
from lipizzaner_operator.maintenance import release_pods
from lipizzaner_operator.metrics import OperatorMetrics
from lipizzaner_operator.names import (
    CELL_PODS,
    FINALIZER,
    PREFIX,
    search_job_name,
)
from lipizzaner_operator.observed import (
    cell_views,
    view_job,
)
from lipizzaner_operator.pod_cache import PodCache, WatchTimeouts
from lipizzaner_operator.reconcile import decide, fail
from lipizzaner_operator.render import (
    CellDefaults,
    render_search_job,
)
from lipizzaner_operator.watch_health import WatchHealth

log = logging.getLogger(__name__)
# The watch check's own list of the runs gives up after this.
CHECK_LIST_SECONDS = 10.0


@dataclass(frozen=True)
class OperatorConfig:
    cell: CellDefaults = field(default_factory=CellDefaults)
    reconcile_seconds: float = 5.0
    status_timeout_seconds: float = 2.0
    # With a namespace: give each run a NetworkPolicy admitting only its own cells and
    # the operator pods of this namespace to the cells' gRPC port.
    network_policy_operator_namespace: str | None = None
    # With leader election (`leader.py`): set while this replica leads; None: it always acts.
    leading: threading.Event | None = None
    # The namespaces watched (none: all), and how long the watch may be out of step with
    # the API server before the liveness probe fails (`watch_health.py`).
    namespaces: tuple[str, ...] = ()
    watch_liveness_seconds: float = 300.0
    # The timeouts of every watch: kopf's of the runs, the pod cache's of the cells.
    watch: WatchTimeouts = field(default_factory=WatchTimeouts)


def operator_settings(timeouts: WatchTimeouts | None = None) -> kopf.OperatorSettings:
    """Our own finalizer and annotation names; events only for warnings and errors; the
    watch's timeouts (`OperatorConfig.watch`)."""
    timeouts = timeouts or WatchTimeouts()
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = timeouts.server
    settings.watching.client_timeout = timeouts.client
    settings.watching.connect_timeout = timeouts.connect
    return settings


def output_problem(run: LipizzanerRun) -> str | None:
    """The operator assembles the ensemble, so it must reach the output too."""
    uri = run.output_uri()
    if "://" in uri or uri.startswith("/"):
        return None
    return (
        f"spec.output.uri: must be object storage (s3://, gs://, ...) or an absolute path on "
        f"a shared volume, got {uri!r}: a relative path lives and dies inside each pod"
    )


def reconcile(
    body: kopf.Body,
    kube: KubeClient,
    cache: PodCache,
    config: OperatorConfig,
    metrics: OperatorMetrics,
    logger: logging.Logger | kopf.Logger,
) -> tuple[RunStatus, RunStatus]:
    """One pass over one run; returns the (old, new) status."""
    namespace = body["metadata"]["namespace"]
    old = RunStatus.model_validate(body.get("status") or {})
    now = datetime.now(UTC)
    manifest = {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec")}
    try:
        run = parse_run(manifest)
    except SpecError as exc:
        return old, _invalid(old, "; ".join(exc.errors), now)
    if run.spec.managed_by not in (None, CONTROLLER_NAME):
        return old, old  # another controller's (MultiKueue): not ours to touch
    problem = output_problem(run)
    if problem is not None:
        return old, _invalid(old, problem, now)
    tls = None
    if old.phase not in ("Succeeded", "Failed"):
        policy_namespace = config.network_policy_operator_namespace
        ensure_shared_children(body, run, namespace, kube, config.cell, policy_namespace)
        tls = run_tls(body, run, namespace, kube)
    pods = cell_pods(run, namespace, kube, cache, metrics)
    pods = with_lost_nodes(pods, kube, now, run.spec.failure_policy.lost_node_seconds)
    views = cell_views(run, pods)
    per_pod = run.spec.cell.cells_per_pod
    progress = poll_cells(
        views,
        lambda cell: port_of(config.cell.grpc_port, cell, per_pod, "slot"),
        config.status_timeout_seconds,
        tls,
        within=config.reconcile_seconds,
    )
    search = None
    if run.spec.ensemble.searched and old.phase not in ("Succeeded", "Failed"):
        job = kube.read_job(namespace, search_job_name(run))
        search = None if job is None else view_job(job)
    generation = body["metadata"].get("generation")
    known = with_every_record(old, run, namespace, kube)
    decision = decide(run, generation, known, views, progress, now, search)
    carry_out(body, run, namespace, decision, views, kube, cache, config.cell, logger)
    metrics.pod_creations.inc(len(decision.create))
    reasons = [e.reason for e in decision.events]
    metrics.cell_restarts.inc(reasons.count("CellRestarted"))
    metrics.cell_disruptions.inc(reasons.count("CellDisrupted"))
    metrics.cells_given_up.inc(reasons.count("CellGivenUp"))
    if decision.assemble or decision.searched:
        layout = output_layout(run, namespace, kube)
    if decision.assemble:
        final = not decision.search
        decision.status = assembled(run, layout, decision.status, now, logger, final)
        if decision.search and decision.status.phase != "Failed":
            job = render_search_job(run, namespace, config.cell)
            kopf.adopt(job, owner=body)
            kube.create(job)
    if decision.searched:
        decision.status = search_finished(run, layout, decision.status, now)
    for event in aggregated(decision.events):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if decision.delete_run:
        logger.info("deleting the finished run: spec.ttlSecondsAfterFinished has passed")
        kube.delete_run(namespace, run.metadata.name, FINALIZER)
        return old, old  # nothing left to patch
    return old, bounded_status(body, run, namespace, known, decision.status, kube)


def _invalid(old: RunStatus, message: str, now: datetime) -> RunStatus:
    return old if old.phase == "Failed" else fail(old, "InvalidSpec", message, now)


def register_watch_check(registry: kopf.OperatorRegistry, config: OperatorConfig) -> WatchHealth:
    """The check that the watch still hears the API server (`watch_health.py`), its
    thread and the liveness probe that reports it; the timers tell it what they hear."""
    health = WatchHealth(config.watch_liveness_seconds)

    @kopf.on.startup(registry=registry)
    def check_the_watch(memo: kopf.Memo, **_: Any) -> None:
        def listed() -> set[str]:
            runs = memo.kube.list_runs(list(config.namespaces), timeout=CHECK_LIST_SECONDS)
            return {run["metadata"]["uid"] for run in runs}

        memo.watch_checker = health.start_checking(listed)

    @kopf.on.cleanup(registry=registry)
    def stop_checking(memo: kopf.Memo, **_: Any) -> None:
        memo.watch_checker.set()

    @kopf.on.probe(id="watch", registry=registry)
    def watch_in_step(**_: Any) -> float:
        """Fails (the liveness endpoint answers 500) once the watch is deaf."""
        problem = health.problem()
        if problem is not None:
            raise kopf.PermanentError(problem)
        return round(health.seconds_in_step(), 1)

    return health


def register(
    registry: kopf.OperatorRegistry, config: OperatorConfig, metrics: OperatorMetrics
) -> None:
    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(load_configuration())

    @kopf.on.startup(registry=registry)
    def connect(memo: kopf.Memo, **_: Any) -> None:
        memo.kube = KubeClient.from_environment()
        memo.pods = PodCache(memo.kube.core, config.namespaces, CELL_PODS, config.watch)
        memo.pods.start()

    @kopf.on.cleanup(registry=registry)
    def disconnect(memo: kopf.Memo, **_: Any) -> None:
        memo.pods.stop()

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def release_from_kueue(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """A deleted run's pods go with it, and Kueue must let them go too: it keeps a
        retriable group's pods (and its quota) waiting for replacements."""
        release_pods(memo.kube, {"metadata": dict(body["metadata"])})

    health = register_watch_check(registry, config)

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=config.reconcile_seconds,
        backoff=config.reconcile_seconds,  # after an API error, retry at the usual pace
        registry=registry,
    )
    def reconcile_run(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
    ) -> None:
        health.heard(body["metadata"]["uid"])  # kopf keeps a timer for each run it watches
        if config.leading is not None and not config.leading.is_set():
            return  # a standby: the leader reconciles
        try:
            with metrics.reconcile_seconds.time():
                old, new = reconcile(body, memo.kube, memo.pods, config, metrics, logger)
        except Exception:
            metrics.reconcile_errors.inc()
            raise
        if new != old:
            patch.status.update(new.to_patch())
