"""The Helm chart, rendered and linted by Helm's own engine (helm-python-sdk), offline."""

from __future__ import annotations

import json
from pathlib import Path

import helm_python as helm
import pytest
import yaml
from lipizzaner_core.spec import load_run
from lipizzaner_operator.names import OPERATOR_LABELS
from lipizzaner_operator.render import CellDefaults, render_pod

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "lipizzaner"
NAMESPACE = "lipizzaner-system"
VALUE_SETS = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "monitors": {
        "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "network-policy": {"networkPolicy": {"enabled": True}},
    "high-availability": {"replicaCount": 2, "leaseSeconds": 20},
    "everything": {
        "watchNamespaces": ["ml"],
        "logLevel": "debug",
        "storage": {"secretName": "s3-credentials"},
        "cell": {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:x"}}},
        "dashboard": {"labels": {"grafana_dashboard": "yes"}},
        "nodeSelector": {"pool": "system"},
        "imagePullSecrets": [{"name": "registry"}],
    },
}


def render_all(values: dict, name: str = "lpz", namespace: str = NAMESPACE):
    """Every object the chart renders with these values, hooks included, and NOTES.txt."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=name, namespace=namespace, is_install=True)
    notes = files.pop("lipizzaner/templates/NOTES.txt")
    objects = [d for text in files.values() for d in yaml.safe_load_all(text) if d]
    return objects, notes


def is_hook(obj: dict) -> bool:
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


def render(values: dict, name: str = "lpz", namespace: str = NAMESPACE) -> tuple[list[dict], str]:
    """The release's own objects (not its hooks) with these values, and its NOTES.txt."""
    objects, notes = render_all(values, name, namespace)
    return [o for o in objects if not is_hook(o)], notes


def hooks(values: dict) -> dict[str, dict]:
    """The chart's hook objects by kind and name (`Job/lpz-lipizzaner-apply-crd`)."""
    objects, _ = render_all(values)
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects if is_hook(o)}


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_strict_lint_passes(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_notes_tell_the_user_how_to_start_a_run():
    _, notes = render({})
    assert "kubectl apply -f examples/mnist-3x3-gpu.yaml" in notes


def test_the_chart_crd_is_the_generated_crd():
    assert (CHART / "crds" / "lipizzanerruns.yaml").read_text() == (
        ROOT / "crds" / "lipizzanerruns.yaml"
    ).read_text()


def test_the_operator_deployment_is_locked_down():
    objects, _ = render({})
    (deployment,) = by_kind(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LIPIZZANER_CELL_IMAGE"] == "ghcr.io/lipizzaner-k8s/cell:0.1.0"
    assert env["LIPIZZANER_WATCH_NAMESPACES"] == ""
    assert "LIPIZZANER_NETWORK_POLICY_NAMESPACE" not in env
    assert OPERATOR_LABELS.items() <= spec["template"]["metadata"]["labels"].items()


def rules(role: dict) -> dict[str, set[str]]:
    return {
        f"{group}/{resource}": set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_cluster_wide_rbac_grants_only_what_the_operator_uses():
    objects, _ = render({})
    roles = {r["metadata"]["name"]: rules(r) for r in by_kind(objects, "ClusterRole")}
    main = roles["lpz-lipizzaner-operator"]
    assert main == {
        "lipizzaner.io/lipizzanerruns": {"get", "list", "watch", "patch", "delete"},
        "lipizzaner.io/lipizzanerruns/status": {"get", "patch"},
        # watch: the operator's pod cache; patch: Kueue's retriable annotation
        "/pods": {"list", "watch", "create", "patch", "delete"},
        "/configmaps": {"get", "create", "patch"},
        "/services": {"create"},
        "/secrets": {"get", "create"},  # spec.exchange.tls: the run's certificates
        "batch/jobs": {"get", "create"},  # spec.ensemble: the search's Job
        "scheduling.x-k8s.io/podgroups": {"create"},  # spec.scheduling.podGroup
        "scheduling.volcano.sh/podgroups": {"create"},
        "/events": {"create"},
    }
    assert roles["lpz-lipizzaner-operator-discovery"] == {
        "apiextensions.k8s.io/customresourcedefinitions": {"list", "watch"},
        "/namespaces": {"list", "watch"},
        "/nodes": {"get"},  # is the node of a pod stuck terminating lost?
    }
    assert not by_kind(objects, "Role")


def test_namespaced_mode_uses_roles_in_the_watched_namespaces():
    objects, _ = render(VALUE_SETS["namespaced"])
    assert [r["metadata"]["name"] for r in by_kind(objects, "ClusterRole")] == [
        "lpz-lipizzaner-operator-discovery"
    ]
    namespaces = {r["metadata"]["namespace"] for r in by_kind(objects, "Role")}
    assert namespaces == {"team-a", "team-b"}
    bound = {b["metadata"]["namespace"] for b in by_kind(objects, "RoleBinding")}
    assert bound == namespaces
    cell_accounts = [
        a["metadata"]["namespace"]
        for a in by_kind(objects, "ServiceAccount")
        if a["metadata"]["name"] == "lipizzaner-cell"
    ]
    assert sorted(cell_accounts) == ["team-a", "team-b"]
    (deployment,) = by_kind(objects, "Deployment")
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["LIPIZZANER_WATCH_NAMESPACES"] == "team-a,team-b"


def test_monitors_select_the_cells_and_the_operator():
    objects, _ = render(VALUE_SETS["monitors"])
    (pod_monitor,) = by_kind(objects, "PodMonitor")
    (service_monitor,) = by_kind(objects, "ServiceMonitor")
    assert pod_monitor["metadata"]["labels"]["release"] == "prometheus"
    assert service_monitor["metadata"]["labels"]["release"] == "prometheus"
    run = load_run(ROOT / "examples" / "mnist-3x3-gpu.yaml")
    cell = render_pod(run, "ml", 0, 0, CellDefaults())
    assert (
        pod_monitor["spec"]["selector"]["matchLabels"].items() <= cell["metadata"]["labels"].items()
    )
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    (service,) = by_kind(objects, "Service")
    (deployment,) = by_kind(objects, "Deployment")
    operator_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= operator_labels.items()
    assert service_monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_network_policy_mode_tells_the_operator_and_grants_it():
    objects, _ = render(VALUE_SETS["network-policy"])
    (deployment,) = by_kind(objects, "Deployment")
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["LIPIZZANER_NETWORK_POLICY_NAMESPACE"] == NAMESPACE
    roles = {r["metadata"]["name"]: rules(r) for r in by_kind(objects, "ClusterRole")}
    assert roles["lpz-lipizzaner-operator"]["networking.k8s.io/networkpolicies"] == {"create"}


def test_the_dashboard_config_map_carries_the_dashboard_for_the_sidecar():
    objects, _ = render({})
    (config_map,) = [
        c for c in by_kind(objects, "ConfigMap") if "dashboard" in c["metadata"]["name"]
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "lipizzaner.json").read_text())
    assert json.loads(config_map["data"]["lipizzaner.json"]) == shipped
    objects, _ = render({"dashboard": {"enabled": False}})
    assert not [c for c in by_kind(objects, "ConfigMap") if "dashboard" in c["metadata"]["name"]]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"watchNamespace": ["a"]}, "watchNamespace"),
        ({"podMonitor": {"enable": True}}, "enable"),
        ({"reconcileSeconds": "fast"}, "reconcileSeconds"),
        ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"metrics": {"port": 70000}}, "port"),
        ({"watchNamespaces": ["Bad_Name"]}, "watchNamespaces"),
    ],
)
def test_the_values_schema_rejects_typos_and_bad_values(values, named):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert named in str(caught.value)


def test_two_replicas_elect_a_leader_keep_one_up_and_may_touch_only_their_lease():
    objects, _ = render(VALUE_SETS["high-availability"])
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LIPIZZANER_LEADER_ELECTION"]["value"] == "true"
    assert env["LIPIZZANER_LEASE_SECONDS"]["value"] == "20"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (budget,) = by_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["selector"]["matchLabels"] == selector
    lease_role = next(
        r for r in by_kind(objects, "Role") if "leader-election" in r["metadata"]["name"]
    )
    assert lease_role["metadata"]["namespace"] == NAMESPACE
    assert rules(lease_role) == {"coordination.k8s.io/leases": {"get", "create", "update"}}
    single, _ = render({})
    assert not by_kind(single, "PodDisruptionBudget")
    (deployment,) = by_kind(single, "Deployment")
    names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "LIPIZZANER_LEADER_ELECTION" not in names


def test_hooks_apply_the_crd_before_upgrades_and_delete_runs_before_uninstalls():
    found = hooks(VALUE_SETS["namespaced"])
    apply = found["Job/lpz-lipizzaner-apply-crd"]
    delete = found["Job/lpz-lipizzaner-delete-runs"]
    assert apply["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert delete["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    (deployment,) = by_kind(render(VALUE_SETS["namespaced"])[0], "Deployment")
    operator_pod = deployment["spec"]["template"]["spec"]
    for job, args, account in (
        (apply, ["apply-crd"], "lpz-lipizzaner-apply-crd"),
        (delete, ["delete-runs", "--timeout", "240"], "lpz-lipizzaner-operator"),
    ):
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["lipizzaner-operator"] and container["args"] == args
        assert container["image"] == operator_pod["containers"][0]["image"]
        assert pod["serviceAccountName"] == account
        assert pod["securityContext"] == operator_pod["securityContext"]
        assert container["securityContext"] == operator_pod["containers"][0]["securityContext"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["LIPIZZANER_WATCH_NAMESPACES"] == "team-a,team-b"
    # The CRD hook may read and patch one object, nothing else; it goes with the Job.
    role = found["ClusterRole/lpz-lipizzaner-apply-crd"]
    assert role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["lipizzanerruns.lipizzaner.io"],
            "verbs": ["get", "patch"],
        }
    ]
    for obj in found.values():
        policy = obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        assert policy == "before-hook-creation,hook-succeeded"
    assert hooks({"crds": {"apply": False}, "uninstall": {"deleteRuns": False}}) == {}


def test_the_watch_timeouts_and_liveness_bound_reach_the_operator():
    objects, _ = render({"watch": {"serverTimeoutSeconds": 120, "livenessSeconds": 600}})
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LIPIZZANER_WATCH_SERVER_TIMEOUT"] == "120"
    assert env["LIPIZZANER_WATCH_CLIENT_TIMEOUT"] == "330"
    assert env["LIPIZZANER_WATCH_CONNECT_TIMEOUT"] == "30"
    assert env["LIPIZZANER_WATCH_LIVENESS_SECONDS"] == "600"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
