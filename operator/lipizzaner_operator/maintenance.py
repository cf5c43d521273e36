"""Cluster chores beside reconciling, each a `lipizzaner-operator` subcommand that the
chart also runs as a Helm hook: bring the CRD up to date before an upgrade (Helm never
updates `crds/`), delete the runs before an uninstall (while the operator can still
finalize them), and release runs that an uninstalled operator left behind (and their
pods from Kueue, as the operator does for a run deleted while it runs)."""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException
from lipizzaner_core.contract import KUEUE_QUEUE_LABEL, KUEUE_RETRIABLE_ANNOTATION, RUN_LABEL
from lipizzaner_core.crd import CRD_NAME, crd_manifest

from lipizzaner_operator.kube import KubeClient, Manifest
from lipizzaner_operator.names import FIELD_MANAGER, FINALIZER


class ChoreError(RuntimeError):
    """A chore that cannot be done, said in one line."""


def apply_crd(kube: KubeClient) -> str:
    """Make the cluster's CRD this version's own (server-side apply); its name."""
    try:
        kube.apply_crd(crd_manifest(), FIELD_MANAGER)
    except ApiException as exc:
        if exc.status == 404:
            raise ChoreError(
                f"the CRD {CRD_NAME} is not installed: install the chart without --skip-crds, "
                "or apply crds/lipizzanerruns.yaml yourself"
            ) from None
        raise ChoreError(f"could not apply the CRD {CRD_NAME}: {exc.status} {exc.reason}") from None
    return CRD_NAME


def _named(run: Manifest) -> str:
    return f"{run['metadata']['namespace']}/{run['metadata']['name']}"


def delete_runs(
    kube: KubeClient,
    namespaces: list[str],
    timeout: float,
    say: Callable[[str], None],
    poll_seconds: float = 1.0,
) -> int:
    """Delete every run in these namespaces (all, if none are named) and wait until the
    operator has let them go; how many there were. Outputs stay where they are."""
    runs = kube.list_runs(namespaces)
    for run in runs:
        if not run["metadata"].get("deletionTimestamp"):
            say(f"deleting {_named(run)}")
            kube.delete_run_now(run["metadata"]["namespace"], run["metadata"]["name"])
    deadline = time.monotonic() + timeout
    left = [_named(r) for r in kube.list_runs(namespaces)]
    while left:
        if time.monotonic() >= deadline:
            raise ChoreError(
                f"{len(left)} run(s) still there after {timeout:.0f} s: {', '.join(left[:5])}; "
                "is the operator running? `lipizzaner-operator release-finalizers` lets go of "
                "runs that no operator will finalize"
            )
        time.sleep(poll_seconds)
        now_left = [_named(r) for r in kube.list_runs(namespaces)]
        if len(now_left) != len(left):
            say(f"waiting for {len(now_left)} run(s) to go")
        left = now_left
    return len(runs)


def release_pods(kube: KubeClient, run: Manifest) -> None:
    """Mark a Kueue run's pods not retriable (nothing for runs outside Kueue)."""
    meta = run["metadata"]
    if KUEUE_QUEUE_LABEL not in (meta.get("labels") or {}):
        return
    for pod in kube.list_pods(meta["namespace"], f"{RUN_LABEL}={meta['name']}"):
        name = pod["metadata"]["name"]
        kube.annotate_pod(meta["namespace"], name, {KUEUE_RETRIABLE_ANNOTATION: "false"})


def release_finalizers(kube: KubeClient, namespaces: list[str]) -> list[str]:
    """Release the runs being deleted that still carry our finalizer; their names."""
    released = []
    for run in kube.list_runs(namespaces):
        meta = run["metadata"]
        if meta.get("deletionTimestamp") and FINALIZER in meta.get("finalizers", []):
            release_pods(kube, run)
            kube.release_finalizer(run, FINALIZER)
            released.append(_named(run))
    return released
