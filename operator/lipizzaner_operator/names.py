"""Every name, label, annotation and finalizer the operator owns, each with what it names.

Pure functions of the run (kubeflow/trainer's constants file is the model): `render.py`
builds objects with these names, and the decider (`reconcile.py`) and the observer
(`observed.py`) find them by the same names without importing the renderer. Names the
cell shares (its labels, ports, environment) are the cell contract's, in
`lipizzaner_core.contract`.
"""

from __future__ import annotations

from lipizzaner_core.contract import KUEUE_QUEUE_LABEL, RUN_LABEL
from lipizzaner_core.placement import group_of
from lipizzaner_core.placement import pod_name as group_pod_name
from lipizzaner_core.spec import LipizzanerRun

# The prefix of the operator's own annotations (kopf's progress and last-handled state).
PREFIX = "lipizzaner.io"
# The finalizer a run carries while the operator manages it.
FINALIZER = f"{PREFIX}/finalizer"
# Which replacement of its cell a pod is (0: the first pod; `pod_name`).
REPLACEMENT_LABEL = f"{PREFIX}/replacement"
# Who the API server records as the owner of the fields the operator applies (the CRD),
# and the `app.kubernetes.io/managed-by` of everything it creates.
FIELD_MANAGER = "lipizzaner-operator"
# The coordination Lease the operator's replicas elect a leader with.
LEASE_NAME = "lipizzaner-operator"

# The labels of the operator's own pods (the chart sets them; the NetworkPolicy admits them).
OPERATOR_LABELS = {
    "app.kubernetes.io/name": "lipizzaner",
    "app.kubernetes.io/component": "operator",
}

# Gang scheduling: the API of each scheduler's PodGroup (how a pod names its group is
# the contract's: COSCHEDULING_LABEL, VOLCANO_ANNOTATION).
POD_GROUP_APIS = {
    "coscheduling": "scheduling.x-k8s.io/v1alpha1",  # scheduler-plugins
    "volcano": "scheduling.volcano.sh/v1beta1",
}


def config_map_name(run: LipizzanerRun) -> str:
    """The ConfigMap holding the run's full manifest, defaults filled in."""
    return f"{run.metadata.name}-spec"


def cells_config_map_name(run: LipizzanerRun) -> str:
    """The ConfigMap holding every cell's record, for grids bigger than the status shows."""
    return f"{run.metadata.name}-cells"


def service_name(run: LipizzanerRun) -> str:
    """The headless Service the cells resolve each other through."""
    return f"{run.metadata.name}-cells"


def pod_group_name(run: LipizzanerRun) -> str:
    """The gang scheduler's PodGroup of the run's cell pods."""
    return f"{run.metadata.name}-cells"


def search_job_name(run: LipizzanerRun) -> str:
    """The Job of `spec.ensemble`'s search."""
    return f"{run.metadata.name}-ensemble"


def tls_secret_name(run: LipizzanerRun) -> str:
    """The Secret the cells' certificates come from: the user's, or the run's own."""
    return run.spec.exchange.tls.secret_name or f"{run.metadata.name}-tls"


def pod_group(run: LipizzanerRun, cell: int) -> range:
    """The cells of `cell`'s pod."""
    return group_of(cell, run.spec.grid.size, run.spec.cell.cells_per_pod)


def pod_hostname(run: LipizzanerRun, cell: int) -> str:
    """The host name of the pod that hosts `cell`, the same for every replacement: with
    the run's Service as subdomain, the DNS name its neighbours reach it by."""
    return group_pod_name(run.metadata.name, pod_group(run, cell))


def pod_name(run: LipizzanerRun, cell: int, replacement: int = 0) -> str:
    """The name of the pod that hosts `cell`: its host name, then `-r<k>` for the k-th
    replacement. A replacement has a name of its own, so it can be created while its
    predecessor is still held (Kueue keeps a failed pod of a group until it sees the
    replacement, kubernetes-sigs/kueue#5130)."""
    hostname = pod_hostname(run, cell)
    return hostname if replacement == 0 else f"{hostname}-r{replacement}"


def kueue_queue(run: LipizzanerRun) -> str | None:
    """The LocalQueue the run's own label names, if any."""
    labels = (run.metadata.model_extra or {}).get("labels") or {}
    return labels.get(KUEUE_QUEUE_LABEL)


def run_labels(run: LipizzanerRun, component: str) -> dict[str, str]:
    """The labels of every object of the run; `component` says which part it is."""
    return {
        "app.kubernetes.io/name": "lipizzaner",
        "app.kubernetes.io/instance": run.metadata.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        RUN_LABEL: run.metadata.name,
    }


# Every run's cell pods (`run_labels`): what the operator's pod cache watches.
CELL_PODS = f"app.kubernetes.io/managed-by={FIELD_MANAGER},app.kubernetes.io/component=cell"


def cell_selector(run: LipizzanerRun) -> str:
    """The label selector of a run's cell pods."""
    return f"{RUN_LABEL}={run.metadata.name},app.kubernetes.io/component=cell"
