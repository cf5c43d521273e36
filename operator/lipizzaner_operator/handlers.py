"""kopf handlers: thin. Read the run and its pods, call `decide`, carry out what it says.

One timer per run reconciles everything (children, restarts, suspend, deadline, TTL,
completion), so an operator restarted mid-run resumes where it was. Handlers are
registered into a registry passed in, so every test gets its own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf
from lipizzaner_core.contract import CONTROLLER_NAME, KUEUE_RETRIABLE_ANNOTATION
from lipizzaner_core.crd import GROUP, PLURAL, VERSION
from lipizzaner_core.ensemble import assemble_ensemble
from lipizzaner_core.layout import ENSEMBLE_MANIFEST, RunLayout
from lipizzaner_core.placement import port_of
from lipizzaner_core.spec import LipizzanerRun, SpecError, parse_run
from lipizzaner_core.status import (
    RECORDS_KEY,
    STATUS_CELLS,
    RunStatus,
    decode_records,
    notable,
)
from lipizzaner_core.storage import S3_CREDENTIALS, join
from lipizzaner_core.wire.tls import TlsError, TlsMaterial, generate, run_identity

from lipizzaner_operator.decision import Decision, aggregated
from lipizzaner_operator.kube import KubeClient, connection_info, load_configuration, poll_cells
from lipizzaner_operator.maintenance import release_pods
from lipizzaner_operator.metrics import OperatorMetrics
from lipizzaner_operator.names import (
    CELL_PODS,
    FINALIZER,
    PREFIX,
    cell_selector,
    cells_config_map_name,
    search_job_name,
    tls_secret_name,
)
from lipizzaner_operator.observed import (
    PodView,
    cell_views,
    node_ready,
    overdue,
    view_job,
    view_pod,
)
from lipizzaner_operator.pod_cache import PodCache, WatchTimeouts
from lipizzaner_operator.reconcile import decide, fail, succeed
from lipizzaner_operator.render import (
    CellDefaults,
    render_cells_config_map,
    render_config_map,
    render_network_policy,
    render_pod,
    render_pod_group,
    render_search_job,
    render_service,
    render_tls_secret,
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
        _ensure_shared_children(body, run, namespace, kube, config)
        tls = _run_tls(body, run, namespace, kube)
    pods = _cell_pods(run, namespace, kube, cache, metrics)
    pods = _with_lost_nodes(pods, kube, now, run.spec.failure_policy.lost_node_seconds)
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
    known = _with_every_record(old, run, namespace, kube)
    decision = decide(run, generation, known, views, progress, now, search)
    _carry_out(body, run, namespace, decision, views, kube, cache, config, logger)
    metrics.pod_creations.inc(len(decision.create))
    reasons = [e.reason for e in decision.events]
    metrics.cell_restarts.inc(reasons.count("CellRestarted"))
    metrics.cell_disruptions.inc(reasons.count("CellDisrupted"))
    metrics.cells_given_up.inc(reasons.count("CellGivenUp"))
    if decision.assemble or decision.searched:
        layout = output_layout(run, namespace, kube)
    if decision.assemble:
        final = not decision.search
        decision.status = _assemble(run, layout, decision.status, now, logger, final)
        if decision.search and decision.status.phase != "Failed":
            job = render_search_job(run, namespace, config.cell)
            kopf.adopt(job, owner=body)
            kube.create(job)
    if decision.searched:
        decision.status = _searched(run, layout, decision.status, now)
    for event in aggregated(decision.events):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if decision.delete_run:
        logger.info("deleting the finished run: spec.ttlSecondsAfterFinished has passed")
        kube.delete_run(namespace, run.metadata.name, FINALIZER)
        return old, old  # nothing left to patch
    return old, _bounded(body, run, namespace, known, decision.status, kube)


def _cell_pods(
    run: LipizzanerRun, namespace: str, kube: KubeClient, cache: PodCache, metrics: OperatorMetrics
) -> list[PodView]:
    """The run's cell pods from the watch-fed cache; listed only while the cache has not
    shown what the operator last did to them (`pod_cache.py`)."""
    cached = cache.pods(namespace, run.metadata.name)
    if cached is not None:
        return cached
    metrics.pod_lists.inc()
    return [view_pod(p) for p in kube.list_pods(namespace, cell_selector(run))]


def _with_every_record(
    status: RunStatus, run: LipizzanerRun, namespace: str, kube: KubeClient
) -> RunStatus:
    """The status with every cell's record: a big grid's are in its cells ConfigMap (the
    status names only some); a run that has none yet has them all in its status."""
    if run.spec.grid.size <= STATUS_CELLS or status.cells_config_map is None:
        return status
    data = kube.read_config_map(namespace, status.cells_config_map) or {}
    try:
        records = decode_records(data[RECORDS_KEY])
    except (KeyError, ValueError) as exc:  # gone or damaged: what the status has is kept
        name = status.cells_config_map
        log.warning("run %s: no cell records in %s: %s", run.metadata.name, name, exc)
        return status
    return status.model_copy(update={"cell_records": records})


def _bounded(
    body: kopf.Body,
    run: LipizzanerRun,
    namespace: str,
    known: RunStatus,
    status: RunStatus,
    kube: KubeClient,
) -> RunStatus:
    """The status to write: past STATUS_CELLS cells, every record goes to the cells
    ConfigMap (when one changed) and the status keeps the notable ones."""
    if run.spec.grid.size <= STATUS_CELLS:
        return status
    if status.cell_records != known.cell_records or known.cells_config_map is None:
        records = render_cells_config_map(run, namespace, status.cell_records)
        kopf.adopt(records, owner=body)
        kube.apply_config_map(records)
    return status.model_copy(
        update={
            "cell_records": notable(status.cell_records),
            "cells_config_map": cells_config_map_name(run),
        }
    )


def _with_lost_nodes(
    pods: list[PodView], kube: KubeClient, now: datetime, bound: float
) -> list[PodView]:
    """Mark the pods overdue in deleting whose node is not Ready (a read per such node)."""
    ready = {
        node: node_ready(kube.read_node(node))
        for node in {p.node for p in pods if overdue(p, now, bound)}
    }
    return [replace(p, node_lost=True) if ready.get(p.node) is False else p for p in pods]


def _invalid(old: RunStatus, message: str, now: datetime) -> RunStatus:
    return old if old.phase == "Failed" else fail(old, "InvalidSpec", message, now)


def _ensure_shared_children(
    body: kopf.Body, run: LipizzanerRun, namespace: str, kube: KubeClient, config: OperatorConfig
) -> None:
    children = [render_config_map(run, namespace), render_service(run, namespace, config.cell)]
    pod_group = render_pod_group(run, namespace)
    if pod_group is not None:
        children.append(pod_group)
    if config.network_policy_operator_namespace:
        children.append(
            render_network_policy(
                run, namespace, config.cell, config.network_policy_operator_namespace
            )
        )
    for child in children:
        kopf.adopt(child, owner=body)
        if child["kind"] == "ConfigMap":
            kube.apply_config_map(child)
        else:
            kube.create(child)


def _run_tls(
    body: kopf.Body, run: LipizzanerRun, namespace: str, kube: KubeClient
) -> TlsMaterial | None:
    """The run's certificates, for its pods and the operator's own status calls.

    Without a Secret of the user's, the first pass creates `<run>-tls` with a fresh CA; it
    is read back, so two passes that raced agree on the one the server kept.
    """
    if not run.spec.exchange.tls.enabled:
        return None
    name = tls_secret_name(run)
    files = kube.read_secret(namespace, name)
    if files is None and not run.spec.exchange.tls.secret_name:
        identity = run_identity(run.metadata.name, namespace)
        secret = render_tls_secret(run, namespace, generate(identity))
        kopf.adopt(secret, owner=body)
        kube.create(secret)
        files = kube.read_secret(namespace, name)
    if files is None:
        log.warning("run %s: no Secret %s for spec.exchange.tls", run.metadata.name, name)
        return None
    try:
        return TlsMaterial.from_files(files, f"Secret {name}")
    except TlsError as exc:
        log.warning("run %s: %s", run.metadata.name, exc)
        return None


def _carry_out(
    body: kopf.Body,
    run: LipizzanerRun,
    namespace: str,
    decision: Decision,
    views: dict[int, PodView],
    kube: KubeClient,
    cache: PodCache,
    config: OperatorConfig,
    logger: logging.Logger | kopf.Logger,
) -> None:
    """Do what `decide` said, to the pods observed (by their own names), and tell the pod
    cache what to expect of them."""
    name = run.metadata.name
    for index in decision.release:  # before any delete: Kueue holds a retriable group's pods
        kube.annotate_pod(namespace, views[index].name, {KUEUE_RETRIABLE_ANNOTATION: "false"})
    for index in decision.delete:
        logger.info("deleting pod %s", views[index].name)
        kube.delete_pod(namespace, views[index].name)
        cache.expect(namespace, name, views[index].name, "deleted")
    for index in decision.force_delete:
        logger.warning("force-deleting pod %s: its node is lost", views[index].name)
        kube.delete_pod(namespace, views[index].name, force=True)
        cache.expect(namespace, name, views[index].name, "gone")
    records = {r.cell: r for r in decision.status.cell_records}
    pods = []
    for index in decision.create:
        record = records.get(index)
        restarts = record.restarts if record else 0
        replacement = record.restarts + record.disruptions if record else 0
        pod = render_pod(run, namespace, index, restarts, config.cell, replacement)
        kopf.adopt(pod, owner=body)
        pods.append(pod)
    kube.create_all(pods)
    for pod in pods:
        cache.expect(namespace, name, pod["metadata"]["name"], "created")


def output_layout(run: LipizzanerRun, namespace: str, kube: KubeClient) -> RunLayout:
    """The run's output as its cells reach it: with the keys of its credentialsSecret when
    it names one (else the operator's own environment, `storage.secretName`). Its own
    storage options: no lock, nothing global."""
    name = run.spec.output.credentials_secret
    found = kube.read_secret(namespace, name) if name else None
    credentials = {k: v.decode() for k, v in (found or {}).items() if k in S3_CREDENTIALS}
    return RunLayout.of(run, credentials=credentials)


def _assemble(
    run: LipizzanerRun,
    layout: RunLayout,
    status: RunStatus,
    now: datetime,
    logger: logging.Logger | kopf.Logger,
    final: bool,
) -> RunStatus:
    """Assemble the run's ensemble; succeed if it is the `final` step."""
    try:
        assemble_ensemble(run, layout)
    except Exception as exc:  # storage errors come in many types; all end the run the same way
        logger.exception("assembling the ensemble failed")
        return fail(status, "EnsembleFailed", f"assembling the ensemble failed: {exc}", now)
    return succeed(status, layout.ensemble, now) if final else status


def _searched(run: LipizzanerRun, layout: RunLayout, status: RunStatus, now: datetime) -> RunStatus:
    """The search's Job completed: succeed with the ensemble it wrote, said in a line."""
    searched = layout.optimised_ensemble(run.spec.ensemble.method)
    try:
        manifest = layout.storage.read_json(join(searched, ENSEMBLE_MANIFEST))
        found, own = manifest["objective"], manifest["search"]["bestCell"]["objective"]
    except Exception as exc:  # missing, unreadable or not a search's manifest: all the same
        message = f"the ensemble search's Job completed, but {searched} has no ensemble: {exc}"
        return fail(status, "EnsembleSearchFailed", message, now)
    said = (
        f"the {run.spec.ensemble.method} search's ensemble, {found['name']} "
        f"{found['value']:.4g} (the best cell's {own:.4g}), written to {searched}"
    )
    return succeed(status, layout.ensemble, now, searched, said)


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
