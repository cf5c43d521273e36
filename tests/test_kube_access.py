"""Who the operator is on a real API server: how it authenticates, and that the chart's
least-privilege RBAC is enough for a whole run and no more.

The chart is rendered by Helm's own engine and its objects go to kube-apiserver; the
operator then runs as the chart's ServiceAccount with a token from the TokenRequest API,
mounted the way a pod gets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from envtest import GROUP, PLURAL, VERSION, Cluster, ControlPlane, wait_for
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config
from lipizzaner_cell.commands.cli import main as cli_main
from lipizzaner_cell.executors.in_process import run_in_process
from lipizzaner_core.contract import SPEC_FILE
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import parse_run
from lipizzaner_operator.kube import CredentialsError, connection_info, load_configuration
from operator_harness import drive_to_success, manifest, operator, phase_is, terminated
from test_helm import VALUE_SETS, render

ROOT = Path(__file__).resolve().parents[1]
# Stand-ins for the Prometheus Operator's PodMonitor and ServiceMonitor CRDs (their real
# definitions cannot be fetched here): the kinds exist, their specs are not checked.
MONITOR_CRDS = Path(__file__).parent / "data" / "monitoring-crds.yaml"


def ensure_namespace(cluster: Cluster, name: str) -> None:
    try:
        cluster.core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
    except ApiException as exc:
        if exc.status != 409:
            raise


RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def install_rbac(cluster: Cluster, values: dict) -> tuple[str, str]:
    """The chart's identities and grants, under a release of this test's own.

    Returns the release namespace and the operator's ServiceAccount name.
    """
    release = f"r{uuid.uuid4().hex[:6]}"
    namespace = cluster.create_namespace("lipizzaner-system")
    objects, _ = render(values, name=release, namespace=namespace)
    cluster.plane.apply([o for o in objects if o["kind"] in RBAC_KINDS])
    return namespace, f"{release}-lipizzaner-operator"


def token_for(cluster: Cluster, namespace: str, account: str) -> str:
    """A ServiceAccount's token from the TokenRequest API, as the kubelet gets it."""
    request = {"spec": {"expirationSeconds": 3600}}
    answer = cluster.core.create_namespaced_service_account_token(account, namespace, request)
    return answer.status.token


def allowed(api: client.ApiClient, verb: str, resource: str, namespace: str) -> bool:
    """Does the API server let this identity do it? Asked by doing it."""
    core = client.CoreV1Api(api)
    calls = {
        ("list", "secrets"): lambda: core.list_namespaced_secret(namespace),
        ("list", "pods"): lambda: core.list_namespaced_pod(namespace),
        ("get", "configmaps"): lambda: core.read_namespaced_config_map("x", namespace),
        ("list", PLURAL): lambda: client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        ),
    }
    try:
        calls[(verb, resource)]()
    except ApiException as exc:
        if exc.status == 403:
            return False
        if exc.status != 404:
            raise
    return True


def mount_in_cluster_credentials(
    monkeypatch: pytest.MonkeyPatch, plane: ControlPlane, token: str, directory: Path
) -> None:
    """What a pod sees: the service's host and port in its environment, and the token and
    CA as files (at paths of our own: the pod's are /var/run/secrets/...)."""
    token_file, ca_file = directory / "token", directory / "ca.crt"
    token_file.write_text(token)
    ca_file.write_bytes(plane.ca_file.read_bytes())
    host, port = plane.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token_file))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca_file))


def test_least_privilege_runs_a_whole_run_in_cluster(cluster, tmp_path, monkeypatch):
    """The cluster-wide chart's grants, the in-cluster token: a run from start to end,
    with mutual TLS (the operator makes the run's Secret and reads the cells with it)."""
    namespace, account = install_rbac(cluster, {})
    token = token_for(cluster, namespace, account)
    mount_in_cluster_credentials(monkeypatch, cluster.plane, token, tmp_path)
    info = connection_info(load_configuration())
    assert (info.token, info.scheme, info.ca_path) == (token, "Bearer", str(tmp_path / "ca.crt"))
    drive_to_success(cluster, tmp_path, namespaces=(), tls=True)
    cluster.custom.delete_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "demo"
    )


def test_least_privilege_namespaced_mode_is_denied_elsewhere(cluster, tmp_path):
    namespace, account = install_rbac(cluster, {"watchNamespaces": [cluster.namespace]})
    token = token_for(cluster, namespace, account)
    kubeconfig = cluster.plane.token_kubeconfig(tmp_path / "operator.kubeconfig", token)
    with operator(cluster, kubeconfig=kubeconfig):
        cluster.create_run(manifest(tmp_path, failurePolicy={"maxRestartsPerCell": 0}))
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        wait_for("Pending", phase_is(cluster, "Pending"))
        cluster.set_pod_status("demo-cell-0", terminated("Failed", 1))
        wait_for("Failed", phase_is(cluster, "Failed"))
        wait_for("the healthy cell deleted", lambda: set(cluster.pods()) == {0})
    api = cluster.plane.api_client(kubeconfig)
    assert allowed(api, "list", PLURAL, cluster.namespace)
    for resource in ("secrets", "pods", PLURAL):
        assert not allowed(api, "list", resource, namespace), resource
        assert not allowed(api, "list", resource, "default"), resource
    assert not allowed(api, "list", "secrets", cluster.namespace)


def test_least_privilege_runs_a_searched_ensemble_as_a_job(cluster, tmp_path):
    """spec.ensemble greedy, the namespaced chart's grants: after the cells, the operator
    assembles the run's own ensemble and creates the search's Job; the test plays its pod
    by running the pod's command on the spec the pod mounts, and kube-controller-manager's
    job controller completes the Job."""
    namespace, account = install_rbac(cluster, {"watchNamespaces": [cluster.namespace]})
    token = token_for(cluster, namespace, account)
    kubeconfig = cluster.plane.token_kubeconfig(tmp_path / "operator.kubeconfig", token)
    document = manifest(tmp_path, ensemble={"method": "greedy", "samples": 300, "maxSize": 3})
    run = parse_run(document)
    run_in_process(run, resume=False)  # real cell results
    layout = RunLayout.of(run)
    layout.storage.remove_tree(layout.ensemble)
    jobs = f"/apis/batch/v1/namespaces/{cluster.namespace}/jobs"
    with operator(cluster, kubeconfig=kubeconfig):
        cluster.create_run(document)
        wait_for("two cell pods", lambda: len(cluster.pods()) == 2)
        for i in range(2):
            cluster.set_pod_status(f"demo-cell-{i}", terminated("Succeeded", 0))
        job = wait_for("the search's Job", lambda: cluster.get(f"{jobs}/demo-ensemble"))
        assert job["metadata"]["ownerReferences"][0]["kind"] == "LipizzanerRun"
        assert layout.storage.exists(layout.ensemble_manifest)  # assembled first
        status = wait_for(
            "the run following its Job",
            lambda: "in Job demo-ensemble" in (s := cluster.status("demo"))["message"] and s,
        )
        assert status["phase"] == "Running"
        pod = wait_for(
            "the Job's pod",
            lambda: next(iter(job_pods(cluster)), None),
        )
        container = pod["spec"]["containers"][0]
        spec_file = tmp_path / "run.yaml"
        config = cluster.get(f"/api/v1/namespaces/{cluster.namespace}/configmaps/demo-spec")
        spec_file.write_text(config["data"]["run.yaml"])
        command = [spec_file if word == SPEC_FILE else word for word in container["command"]]
        assert command[0] == "lipizzaner"
        assert cli_main([str(word) for word in command[1:]]) == 0
        cluster.set_pod_status(pod["metadata"]["name"], terminated("Succeeded", 0))
        status = wait_for("Succeeded", phase_is(cluster, "Succeeded"))
    searched = layout.optimised_ensemble("greedy")
    assert status["ensemble"] == {"uri": layout.ensemble, "searchedUri": searched}
    assert "the greedy search's ensemble, mode-kl" in status["message"]
    assert layout.storage.exists(f"{searched}/manifest.json")


def job_pods(cluster) -> list[dict]:
    return [
        p
        for p in cluster.items("pods")
        if p["metadata"].get("labels", {}).get("job-name") == "demo-ensemble"
    ]


def test_the_cells_service_account_can_read_nothing(cluster, tmp_path):
    install_rbac(cluster, {"watchNamespaces": [cluster.namespace]})
    token = token_for(cluster, cluster.namespace, "lipizzaner-cell")
    api = cluster.plane.api_client(
        cluster.plane.token_kubeconfig(tmp_path / "cell.kubeconfig", token)
    )
    for verb, resource in [
        ("list", "pods"),
        ("list", "secrets"),
        ("get", "configmaps"),
        ("list", PLURAL),
    ]:
        assert not allowed(api, verb, resource, cluster.namespace), resource


def exec_plugin_kubeconfig(plane: ControlPlane, path: Path) -> Path:
    """A kubeconfig whose user is an exec credential plugin (as cloud CLIs install)."""
    token = (plane.directory / "admin-token").read_text().strip()
    plugin = path.with_suffix(".plugin.py")
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    plugin.write_text(f"import json\nprint(json.dumps({credential!r}))\n")
    document = yaml.safe_load(plane.kubeconfig.read_text())
    document["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        }
    }
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("credential", ["token", "client-certificate", "exec-plugin"])
def test_the_operator_authenticates_as_the_kubernetes_client_does(
    cluster, tmp_path, credential, monkeypatch
):
    plane = cluster.plane
    kubeconfig = {
        "token": lambda: plane.kubeconfig,
        "client-certificate": lambda: plane.directory / "kubeconfig-cert",
        "exec-plugin": lambda: exec_plugin_kubeconfig(plane, tmp_path / "exec.kubeconfig"),
    }[credential]()
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    info = connection_info(load_configuration())
    if credential == "client-certificate":
        assert info.certificate_path and info.private_key_path and info.token is None
    else:
        assert info.token == (plane.directory / "admin-token").read_text().strip()
    with operator(cluster, kubeconfig=kubeconfig):
        cluster.create_run(manifest(tmp_path))
        wait_for("pods", lambda: len(cluster.pods()) == 2)
        wait_for("a status written", phase_is(cluster, "Pending"))


def operator_process(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    return subprocess.run(
        [sys.executable, "-m", "lipizzaner_operator.operator_main", "--metrics-port=0"],
        env={**env, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_usable_credential_is_a_one_line_startup_error(control_plane, tmp_path):
    anonymous = yaml.safe_load(control_plane.kubeconfig.read_text())
    anonymous["users"][0]["user"] = {}
    (tmp_path / "anonymous").write_text(yaml.safe_dump(anonymous))
    with pytest.raises(CredentialsError, match=r"no credential for https://127\.0\.0\.1"):
        connection_info(_configuration(anonymous))
    for kubeconfig, expected in [
        (tmp_path / "anonymous", "no credential for https://127.0.0.1"),
        (tmp_path / "missing", "no Kubernetes configuration"),
    ]:
        done = operator_process(kubeconfig)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], done.stderr
        assert "Traceback" not in done.stderr


def _configuration(document: dict) -> client.Configuration:
    configuration = client.Configuration()
    config.load_kube_config_from_dict(document, client_configuration=configuration)
    return configuration


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_the_chart_renders_is_accepted_by_the_server(cluster, name):
    """The CRD, RBAC, Deployment, ConfigMaps and monitors (after their CRDs), as a dry run."""
    values = json.loads(json.dumps(VALUE_SETS[name]))
    release_namespace = cluster.create_namespace("lipizzaner-system")
    watched = [f"{n}-{uuid.uuid4().hex[:4]}" for n in values.get("watchNamespaces", [])]
    if watched:
        values["watchNamespaces"] = watched
    for namespace in watched:
        ensure_namespace(cluster, namespace)
    cluster.plane.apply(list(yaml.safe_load_all(MONITOR_CRDS.read_text())))
    for crd in ("podmonitors", "servicemonitors", "prometheusrules"):
        cluster.plane.wait_established(f"crd/{crd}.monitoring.coreos.com")
    objects, _ = render(values, name=f"r{uuid.uuid4().hex[:6]}", namespace=release_namespace)
    chart_crd = yaml.safe_load((ROOT / "helm/lipizzaner/crds/lipizzanerruns.yaml").read_text())
    cluster.plane.apply([chart_crd, *objects], "--dry-run=server")
    for namespace in watched:
        cluster.delete_namespace(namespace)
