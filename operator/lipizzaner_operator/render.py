"""Kubernetes objects of a run, as pure functions of the validated spec.

A run owns: a ConfigMap `<run>-spec` holding the full manifest (defaults filled in), a
headless Service `<run>-cells` (peers resolve `<pod>.<run>-cells.<ns>.svc`, also before
they are ready), one Pod per cell, `<run>-cell-<i>` (or, with `spec.cell.cellsPerPod`
above 1, one per group of consecutive cells, `<run>-cells-<first>-<last>`, each cell on
the gRPC port base + its slot, one /metrics for the pod) and, with mutual TLS and no
Secret of the user's, a Secret `<run>-tls` holding the run's own CA and certificate. Pods
never restart in place (`restartPolicy: Never`): the operator recreates a failed pod under
the same name, and the new container resumes from its cells' checkpoints.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import yaml
from lipizzaner_core.contract import (
    CELL_GROUP,
    CELL_LABEL,
    COL_LABEL,
    COSCHEDULING_LABEL,
    ENSEMBLE_SEARCH_COMMAND,
    GRPC_PORT,
    KUEUE_GROUP_COUNT_ANNOTATION,
    KUEUE_POD_GROUP_LABEL,
    KUEUE_QUEUE_LABEL,
    METRICS_PORT,
    ROW_LABEL,
    RUN_LABEL,
    SPEC_FILE,
    TLS_DIR,
    VOLCANO_ANNOTATION,
    cell_environment,
)
from lipizzaner_core.placement import cells_text
from lipizzaner_core.spec import LipizzanerRun, dump_run
from lipizzaner_core.status import RECORDS_KEY, CellRecord, encode_records
from lipizzaner_core.wire.tls import TlsMaterial

from lipizzaner_operator.names import (
    OPERATOR_LABELS,
    POD_GROUP_APIS,
    REPLACEMENT_LABEL,
    cells_config_map_name,
    config_map_name,
    kueue_queue,
    pod_group,
    pod_group_name,
    pod_hostname,
    pod_name,
    run_labels,
    search_job_name,
    service_name,
    tls_secret_name,
)

# Time for a cell to finish its batch and write a checkpoint after SIGTERM.
TERMINATION_GRACE_SECONDS = 120

Manifest = dict[str, Any]


@dataclass(frozen=True)
class CellDefaults:
    """What the operator's installation decides, not the run: image and ports."""

    image: str = "ghcr.io/lipizzaner-k8s/cell:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    grpc_port: int = GRPC_PORT
    metrics_port: int = METRICS_PORT


def _metadata(name: str, namespace: str, labels: dict[str, str]) -> Manifest:
    return {"name": name, "namespace": namespace, "labels": labels}


def _annotated(metadata: Manifest, annotations: dict[str, str]) -> Manifest:
    """`metadata` with these annotations, if there are any."""
    return {**metadata, "annotations": dict(annotations)} if annotations else metadata


def render_config_map(run: LipizzanerRun, namespace: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config_map_name(run), namespace, run_labels(run, "spec")),
        "data": {"run.yaml": yaml.safe_dump(dump_run(run), sort_keys=False)},
    }


def render_cells_config_map(
    run: LipizzanerRun, namespace: str, records: list[CellRecord]
) -> Manifest:
    """Every cell's record (the status names only some of a big grid's)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(cells_config_map_name(run), namespace, run_labels(run, "cells")),
        "data": {RECORDS_KEY: encode_records(records)},
    }


def render_tls_secret(run: LipizzanerRun, namespace: str, material: TlsMaterial) -> Manifest:
    """The run's own CA and certificate, in the shape of a cert-manager Secret."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(tls_secret_name(run), namespace, run_labels(run, "tls")),
        "type": "kubernetes.io/tls",
        "data": {key: base64.b64encode(value).decode() for key, value in material.files().items()},
    }


def render_pod_group(run: LipizzanerRun, namespace: str) -> Manifest | None:
    """A PodGroup of minMember = every cell, for the gang scheduler the spec names."""
    scheduling = run.spec.scheduling
    if scheduling.pod_group == "none":
        return None
    spec: Manifest = {"minMember": len(run.spec.process_groups())}
    if scheduling.pod_group == "coscheduling":
        spec["scheduleTimeoutSeconds"] = scheduling.schedule_timeout_seconds
    return {
        "apiVersion": POD_GROUP_APIS[scheduling.pod_group],
        "kind": "PodGroup",
        "metadata": _metadata(pod_group_name(run), namespace, run_labels(run, "cell")),
        "spec": spec,
    }


def _ports(defaults: CellDefaults) -> list[tuple[str, int]]:
    return [("grpc", defaults.grpc_port), ("metrics", defaults.metrics_port)]


def _grpc_ports(defaults: CellDefaults, cells: range) -> list[Manifest]:
    """A pod's gRPC ports: `grpc` for its first cell, `grpc-<slot>` for the others."""
    return [
        {
            "name": "grpc" if slot == 0 else f"grpc-{slot}",
            "containerPort": defaults.grpc_port + slot,
            "protocol": "TCP",
        }
        for slot in range(len(cells))
    ]


def render_service(run: LipizzanerRun, namespace: str, defaults: CellDefaults) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service_name(run), namespace, run_labels(run, "cell")),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {RUN_LABEL: run.metadata.name, "app.kubernetes.io/component": "cell"},
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                for name, port in _ports(defaults)
            ],
        },
    }


def render_network_policy(
    run: LipizzanerRun, namespace: str, defaults: CellDefaults, operator_namespace: str
) -> Manifest:
    """Only this run's cells and the operator reach a cell's gRPC port; metrics stay open."""
    cells = {RUN_LABEL: run.metadata.name, "app.kubernetes.io/component": "cell"}
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
        "podSelector": {"matchLabels": OPERATOR_LABELS},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(service_name(run), namespace, run_labels(run, "cell")),
        "spec": {
            "podSelector": {"matchLabels": cells},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": cells}}, operator],
                    "ports": [_port_range(defaults.grpc_port, run.spec.cell.cells_per_pod)],
                },
                {"ports": [{"port": defaults.metrics_port, "protocol": "TCP"}]},
            ],
        },
    }


def _port_range(first: int, count: int) -> Manifest:
    """A NetworkPolicy port: one, or a range for the slots of a pod of several cells."""
    port: Manifest = {"port": first, "protocol": "TCP"}
    if count > 1:
        port["endPort"] = first + count - 1
    return port


def _cell_env(
    run: LipizzanerRun, namespace: str, cells: range, restarts: int, defaults: CellDefaults
) -> list[Manifest]:
    values = cell_environment(
        run_spec=SPEC_FILE,
        cells=cells_text(cells),
        peer_template=f"{{pod}}.{service_name(run)}.{namespace}.svc:{{port}}",
        grpc_port_base=defaults.grpc_port,
        port_by="slot",
        metrics_port=defaults.metrics_port,
        restarts=restarts,
        tls_dir=TLS_DIR if run.spec.exchange.tls.enabled else None,
    )
    return [{"name": k, "value": v} for k, v in values.items()] + list(run.spec.cell.env)


def _readiness_probe(run: LipizzanerRun, defaults: CellDefaults) -> Manifest:
    """The kubelet's gRPC probe speaks no TLS: with mTLS, a TCP probe of the same port
    (the health service says SERVING from the moment the port listens, so both agree)."""
    check: Manifest = (
        {"tcpSocket": {"port": defaults.grpc_port}}
        if run.spec.exchange.tls.enabled
        else {"grpc": {"port": defaults.grpc_port}}
    )
    return {**check, "periodSeconds": 10, "failureThreshold": 3}


def render_pod(
    run: LipizzanerRun,
    namespace: str,
    index: int,
    restarts: int,
    defaults: CellDefaults,
    replacement: int = 0,
) -> Manifest:
    """The pod of cell `index` (and of the other cells of its group); `restarts` is how
    often it was recreated after failures (shown in its cells' statuses), `replacement`
    how often in all (its name's `-r<k>`)."""
    cells = pod_group(run, index)
    name = pod_name(run, index, replacement)
    # The user's labels and annotations first: the operator's own keys are refused in
    # the spec, and would win here anyway.
    labels = {**run.spec.cell.labels, **run_labels(run, "cell"), CELL_LABEL: str(cells.start)}
    labels[REPLACEMENT_LABEL] = str(replacement)
    if len(cells) == 1:
        row, col = run.spec.grid.topology().position(index)
        labels |= {ROW_LABEL: str(row), COL_LABEL: str(col)}
    annotations = dict(run.spec.cell.annotations)
    queue = kueue_queue(run)
    if queue:  # Kueue's plain pod group: admitted, and preempted, as one
        labels |= {KUEUE_QUEUE_LABEL: queue, KUEUE_POD_GROUP_LABEL: run.metadata.name}
        annotations[KUEUE_GROUP_COUNT_ANNOTATION] = str(len(run.spec.process_groups()))
    scheduling = run.spec.scheduling
    if scheduling.pod_group == "coscheduling":
        labels[COSCHEDULING_LABEL] = pod_group_name(run)
    elif scheduling.pod_group == "volcano":
        annotations[VOLCANO_ANNOTATION] = pod_group_name(run)
    container = {
        **_container(run, "cell", ["lipizzaner-cell"], defaults),
        "env": _cell_env(run, namespace, cells, restarts, defaults),
        "ports": [
            *_grpc_ports(defaults, cells),
            {"name": "metrics", "containerPort": defaults.metrics_port, "protocol": "TCP"},
        ],
        "readinessProbe": _readiness_probe(run, defaults),
    }
    volumes = []
    if run.spec.exchange.tls.enabled:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append(
            # Readable by the cells' group only (fsGroup below), whatever their image's uid.
            {"name": "tls", "secret": {"secretName": tls_secret_name(run), "defaultMode": 0o440}}
        )
    scheduler = scheduling.scheduler_name or (
        "volcano" if scheduling.pod_group == "volcano" else None
    )
    pod_spec: Manifest = {
        "hostname": pod_hostname(run, index),
        "subdomain": service_name(run),
        **_pod_spec(run, container, volumes, scheduler),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
    }
    metadata = _annotated(_metadata(name, namespace, labels), annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _container(
    run: LipizzanerRun, name: str, command: list[str], defaults: CellDefaults
) -> Manifest:
    """What a cell's and the ensemble Job's containers share: the cell image, the run's
    resources, its spec mounted, its storage credentials, no privileges."""
    template = run.spec.cell
    container: Manifest = {
        "name": name,
        "image": template.image or defaults.image,
        "imagePullPolicy": template.image_pull_policy or defaults.image_pull_policy,
        "command": command,
        # The log's end becomes the termination message: a cell's `cannot start:` line
        # reaches the run's status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": template.pod_resources(),
        "volumeMounts": [
            {"name": "run-spec", "mountPath": SPEC_FILE.rsplit("/", 1)[0], "readOnly": True},
            *template.volume_mounts,
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if run.spec.output.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": run.spec.output.credentials_secret}}]
    return container


def _pod_spec(
    run: LipizzanerRun, container: Manifest, volumes: list[Manifest], scheduler: str | None
) -> Manifest:
    """A pod spec around `container`: never restarted in place, placed as the cells are."""
    template = run.spec.cell
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        # fsGroup: mounted Secrets belong to this group, which every container process
        # joins (a root-owned 0400 key was unreadable to the non-root cell on a real node).
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": CELL_GROUP,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "run-spec", "configMap": {"name": config_map_name(run)}},
            *volumes,
            *template.volumes,
        ],
    }
    optional = {
        "schedulerName": scheduler,
        "nodeSelector": template.node_selector,
        "tolerations": template.tolerations,
        "affinity": template.affinity,
        "priorityClassName": template.priority_class_name,
        "serviceAccountName": template.service_account_name,
        "imagePullSecrets": template.image_pull_secrets,
    }
    pod_spec.update({key: value for key, value in optional.items() if value})
    return pod_spec


# Retries of the ensemble Job's pod before the search, and so the run, fails.
SEARCH_BACKOFF_LIMIT = 2


def render_search_job(run: LipizzanerRun, namespace: str, defaults: CellDefaults) -> Manifest:
    """The Job of `spec.ensemble`'s search: the cell image's `lipizzaner ensemble optimize`
    on the finished run's output, with a cell's resources, placement and credentials."""
    labels = {**run.spec.cell.labels, **run_labels(run, "ensemble")}
    container = {
        **_container(run, "ensemble", ENSEMBLE_SEARCH_COMMAND, defaults),
        "env": list(run.spec.cell.env),
    }
    job_labels = dict(labels)
    queue = kueue_queue(run)
    if queue:  # Kueue admits the Job as it admitted the cells
        job_labels[KUEUE_QUEUE_LABEL] = queue
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _annotated(
            _metadata(search_job_name(run), namespace, job_labels), run.spec.cell.annotations
        ),
        "spec": {
            "backoffLimit": SEARCH_BACKOFF_LIMIT,
            "template": {
                "metadata": _annotated({"labels": labels}, run.spec.cell.annotations),
                "spec": _pod_spec(run, container, [], run.spec.scheduling.scheduler_name),
            },
        },
    }
