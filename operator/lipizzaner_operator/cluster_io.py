"""A reconcile pass's reads and writes on the cluster: the run's pods (from the watch-fed
cache), the records a big grid keeps in a ConfigMap, its shared children and
certificates, and carrying out what `decide` said. `handlers.reconcile` calls them in
order; the decisions themselves stay pure (`reconcile.py`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

import kopf
from lipizzaner_core.contract import KUEUE_RETRIABLE_ANNOTATION
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.status import RECORDS_KEY, STATUS_CELLS, RunStatus, decode_records, notable
from lipizzaner_core.wire.tls import TlsError, TlsMaterial, generate, run_identity

from lipizzaner_operator.decision import Decision
from lipizzaner_operator.kube import KubeClient
from lipizzaner_operator.metrics import OperatorMetrics
from lipizzaner_operator.names import cell_selector, cells_config_map_name, tls_secret_name
from lipizzaner_operator.observed import PodView, node_ready, overdue, view_pod
from lipizzaner_operator.pod_cache import PodCache
from lipizzaner_operator.render import (
    CellDefaults,
    render_cells_config_map,
    render_config_map,
    render_network_policy,
    render_pod,
    render_pod_group,
    render_service,
    render_tls_secret,
)

log = logging.getLogger(__name__)


def cell_pods(
    run: LipizzanerRun, namespace: str, kube: KubeClient, cache: PodCache, metrics: OperatorMetrics
) -> list[PodView]:
    """The run's cell pods from the watch-fed cache; listed only while the cache has not
    shown what the operator last did to them (`pod_cache.py`)."""
    cached = cache.pods(namespace, run.metadata.name)
    if cached is not None:
        return cached
    metrics.pod_lists.inc()
    return [view_pod(p) for p in kube.list_pods(namespace, cell_selector(run))]


def with_every_record(
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


def bounded_status(
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


def with_lost_nodes(
    pods: list[PodView], kube: KubeClient, now: datetime, bound: float
) -> list[PodView]:
    """Mark the pods overdue in deleting whose node is not Ready (a read per such node)."""
    ready = {
        node: node_ready(kube.read_node(node))
        for node in {p.node for p in pods if overdue(p, now, bound)}
    }
    return [replace(p, node_lost=True) if ready.get(p.node) is False else p for p in pods]


def ensure_shared_children(
    body: kopf.Body,
    run: LipizzanerRun,
    namespace: str,
    kube: KubeClient,
    cell: CellDefaults,
    network_policy_namespace: str | None,
) -> None:
    """The run's ConfigMap, Service and, where asked for, PodGroup and NetworkPolicy."""
    children = [render_config_map(run, namespace), render_service(run, namespace, cell)]
    pod_group = render_pod_group(run, namespace)
    if pod_group is not None:
        children.append(pod_group)
    if network_policy_namespace:
        children.append(render_network_policy(run, namespace, cell, network_policy_namespace))
    for child in children:
        kopf.adopt(child, owner=body)
        if child["kind"] == "ConfigMap":
            kube.apply_config_map(child)
        else:
            kube.create(child)


def run_tls(
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


def carry_out(
    body: kopf.Body,
    run: LipizzanerRun,
    namespace: str,
    decision: Decision,
    views: dict[int, PodView],
    kube: KubeClient,
    cache: PodCache,
    cell: CellDefaults,
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
        pod = render_pod(run, namespace, index, restarts, cell, replacement)
        kopf.adopt(pod, owner=body)
        pods.append(pod)
    kube.create_all(pods)
    for pod in pods:
        cache.expect(namespace, name, pod["metadata"]["name"], "created")
