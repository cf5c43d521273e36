"""Rendering is pure: golden manifests, admission on a real API server, passthrough."""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from conftest import TINY_RING
from lipizzaner_cell.commands.cli import build_parser as cli_parser
from lipizzaner_cell.runtime.cell_process import build_parser, hosted_cells
from lipizzaner_cell.runtime.peers import peer_address
from lipizzaner_core.contract import SPEC_FILE
from lipizzaner_core.spec import load_run, parse_run
from lipizzaner_core.spec.kubernetes import reserved
from lipizzaner_core.wire.tls import generate
from lipizzaner_operator.names import cell_selector
from lipizzaner_operator.render import (
    CellDefaults,
    render_config_map,
    render_network_policy,
    render_pod,
    render_pod_group,
    render_search_job,
    render_service,
    render_tls_secret,
)

GOLDEN = Path(__file__).parent / "golden"
DEFAULTS = CellDefaults(image="registry.example/lipizzaner-cell:1.0")


def full_run():
    """A 2x3 run using every passthrough field."""
    manifest = copy.deepcopy(TINY_RING)
    manifest["metadata"]["name"] = "mnist-grid"
    manifest["spec"]["grid"] = {"rows": 2, "cols": 3}
    manifest["spec"]["output"] = {
        "uri": "s3://bucket/runs/{name}",
        "endpointUrl": "http://minio.storage:9000",
        "credentialsSecret": "s3-credentials",
    }
    manifest["spec"]["cell"] = {
        "image": "registry.example/lipizzaner-cell:gpu",
        "imagePullPolicy": "Always",
        "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}},
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "training",
        "serviceAccountName": "lipizzaner-cell",
        "imagePullSecrets": [{"name": "registry"}],
        "env": [{"name": "TORCH_CUDNN_V8_API_ENABLED", "value": "1"}],
        "volumes": [{"name": "mnist", "persistentVolumeClaim": {"claimName": "mnist-data"}}],
        "volumeMounts": [{"name": "mnist", "mountPath": "/data", "readOnly": True}],
        "labels": {"kueue.x-k8s.io/priority-class": "research", "cost-centre": "ml-42"},
        "annotations": {"kueue.x-k8s.io/podset-required-topology": "cloud.provider.com/rack"},
    }
    manifest["spec"]["exchange"] = {"tls": {"enabled": True, "secretName": "mnist-grid-certs"}}
    return parse_run(manifest)


def rendered(run, namespace="ml"):
    return {
        "configmap": render_config_map(run, namespace),
        "service": render_service(run, namespace, DEFAULTS),
        "networkpolicy": render_network_policy(run, namespace, DEFAULTS, "lipizzaner-system"),
        "pod-4": render_pod(run, namespace, 4, restarts=2, defaults=DEFAULTS),
        "job-ensemble": render_search_job(run, namespace, DEFAULTS),
    }


@pytest.mark.parametrize("kind", ["configmap", "service", "networkpolicy", "pod-4", "job-ensemble"])
def test_rendered_objects_match_their_golden_files(kind):
    obj = rendered(full_run())[kind]
    golden = GOLDEN / f"{kind}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(yaml.safe_dump(obj, sort_keys=False))
    assert obj == yaml.safe_load(golden.read_text()), f"UPDATE_GOLDEN=1 rewrites {golden}"


def all_runs():
    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    return [full_run(), parse_run(copy.deepcopy(TINY_RING)), *map(load_run, examples)]


@pytest.mark.parametrize("run", all_runs(), ids=lambda r: r.metadata.name)
def test_every_rendered_object_is_accepted_by_the_api_server(cluster, run):
    """Strict field validation and admission (a dry run) on kube-apiserver."""
    namespace = cluster.namespace
    needed = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "lipizzaner-cell", "namespace": namespace},
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": "training"},
            "value": 1000,
        },
    ]
    cluster.plane.apply(needed)
    objects = [
        render_config_map(run, namespace),
        render_service(run, namespace, DEFAULTS),
        render_network_policy(run, namespace, DEFAULTS, "lipizzaner-system"),
        *(render_pod(run, namespace, i, 0, DEFAULTS) for i in range(run.spec.grid.rows)),
        render_search_job(run, namespace, DEFAULTS),
    ]
    if run.spec.exchange.tls.enabled:
        objects.append(render_tls_secret(run, namespace, generate("x.y.lipizzaner")))
    cluster.plane.apply(objects, "--dry-run=server")


def cell_arguments_in(pod) -> argparse.Namespace:
    """What the cell's own parser makes of a rendered pod's environment."""
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}
    with mock.patch.dict(os.environ, env):
        return build_parser().parse_args([])


def test_the_ensemble_job_runs_the_cell_images_search_where_the_cells_ran():
    run = full_run()
    job = render_search_job(run, "ml", DEFAULTS)
    pod = render_pod(run, "ml", 0, 0, DEFAULTS)
    container, cell = job["spec"]["template"]["spec"]["containers"][0], pod["spec"]["containers"][0]
    assert job["metadata"]["name"] == "mnist-grid-ensemble"
    assert container["command"][:3] == ["lipizzaner", "ensemble", "optimize"]
    arguments = cli_parser().parse_args(container["command"][1:])
    assert arguments.run_spec == SPEC_FILE and arguments.run is None
    for key in ("image", "resources", "envFrom", "volumeMounts"):
        assert container[key] == cell[key] or key == "volumeMounts"
    assert container["volumeMounts"] == [m for m in cell["volumeMounts"] if m["name"] != "tls"]
    for key in ("nodeSelector", "tolerations", "affinity", "serviceAccountName"):
        assert job["spec"]["template"]["spec"][key] == pod["spec"][key]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_cells_find_each_other_through_the_headless_service():
    run = full_run()
    service = render_service(run, "ml", DEFAULTS)
    assert service["metadata"]["name"] == "mnist-grid-cells"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod = render_pod(run, "ml", 4, 0, DEFAULTS)
    assert pod["spec"]["hostname"] == "mnist-grid-cell-4"
    assert pod["spec"]["subdomain"] == "mnist-grid-cells"
    args = cell_arguments_in(pod)
    assert peer_address(run, args, 1) == "mnist-grid-cell-1.mnist-grid-cells.ml.svc:50051"
    assert hosted_cells(run, args) == range(4, 5)
    # The selector matches the pods' labels, and cell_selector picks them out.
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    for term in cell_selector(run).split(","):
        key, value = term.split("=")
        assert labels[key] == value


def test_labels_name_the_cell_and_its_position():
    labels = render_pod(full_run(), "ml", 4, 0, DEFAULTS)["metadata"]["labels"]
    assert labels["lipizzaner.io/cell"] == "4"
    assert (labels["lipizzaner.io/row"], labels["lipizzaner.io/col"]) == ("1", "1")
    assert labels["app.kubernetes.io/managed-by"] == "lipizzaner-operator"


def test_defaults_give_one_gpu_the_measured_memory_and_the_operators_image():
    run = parse_run(copy.deepcopy(TINY_RING))
    container = render_pod(run, "default", 0, 0, DEFAULTS)["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"memory": "1600Mi"},
        "limits": {"memory": "3200Mi", "nvidia.com/gpu": 1},
    }
    grouped = copy.deepcopy(TINY_RING)
    grouped["spec"]["cell"] = {"cellsPerPod": 4}
    container = render_pod(parse_run(grouped), "default", 0, 0, DEFAULTS)["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"memory": "2200Mi"}  # 1600 + 3 x 200
    assert container["image"] == DEFAULTS.image
    assert "envFrom" not in container
    assert container["readinessProbe"]["grpc"] == {"port": DEFAULTS.grpc_port}


def test_the_config_map_holds_the_whole_run_with_defaults():
    run = full_run()
    data = render_config_map(run, "ml")["data"]["run.yaml"]
    assert parse_run(yaml.safe_load(data)) == run


def test_the_operator_imports_no_torch():
    """The operator image has no torch: everything it runs must import without it."""
    code = (
        "import sys\n"
        "import lipizzaner_operator.operator_main, lipizzaner_operator.kube\n"
        "import lipizzaner_core.wire.status\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cells_per_pod_puts_consecutive_cells_in_one_pod_each_on_its_own_port():
    """3x3 with cellsPerPod 4: pods of cells 0-3, 4-7 and 8; a cell of a group listens on
    the gRPC port base + its slot, peers find it at its pod's name, the gang and Kueue
    count pods, and the network policy admits the pod's range of gRPC ports."""
    manifest = copy.deepcopy(TINY_RING)
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    manifest["spec"]["grid"] = {"rows": 3, "cols": 3}
    manifest["spec"]["cell"] = {"cellsPerPod": 4}
    manifest["spec"]["scheduling"] = {"podGroup": "volcano"}
    run = parse_run(manifest)
    assert run.spec.process_groups() == [range(0, 4), range(4, 8), range(8, 9)]
    pod = render_pod(run, "ml", 5, 0, DEFAULTS)
    assert pod["metadata"]["name"] == pod["spec"]["hostname"] == "tiny-cells-4-7"
    assert pod["metadata"]["labels"]["lipizzaner.io/cell"] == "4"
    assert "lipizzaner.io/row" not in pod["metadata"]["labels"]
    assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "3"
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports == {
        "grpc": 50051,
        "grpc-1": 50052,
        "grpc-2": 50053,
        "grpc-3": 50054,
        "metrics": 9090,
    }
    args = cell_arguments_in(pod)
    assert hosted_cells(run, args) == range(4, 8)
    assert peer_address(run, args, 6) == "tiny-cells-4-7.tiny-cells.ml.svc:50053"
    assert peer_address(run, args, 8) == "tiny-cell-8.tiny-cells.ml.svc:50051"
    assert render_pod(run, "ml", 8, 0, DEFAULTS)["metadata"]["name"] == "tiny-cell-8"
    assert render_pod_group(run, "ml")["spec"] == {"minMember": 3}
    policy = render_network_policy(run, "ml", DEFAULTS, "lipizzaner-system")["spec"]
    assert policy["ingress"][0]["ports"] == [{"port": 50051, "protocol": "TCP", "endPort": 50054}]


def test_the_cell_command_in_docs_exchange_md_finds_its_peers():
    """docs/exchange.md's `lipizzaner-cell` command, parsed by the cell's own parser, for
    a 3x3 run `x` of four cells per pod."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "exchange.md").read_text()
    block = text.split("```\nlipizzaner-cell ", 1)[1].split("```", 1)[0]
    args = build_parser().parse_args(shlex.split(block.replace("\\\n", " ")))
    manifest = copy.deepcopy(TINY_RING)
    manifest["metadata"]["name"] = "x"
    manifest["spec"].update(grid={"rows": 3, "cols": 3}, cell={"cellsPerPod": 4})
    run = parse_run(manifest)
    assert hosted_cells(run, args) == range(4, 8)
    assert peer_address(run, args, 1) == "x-cells-0-3.x-cells:50052"
    assert peer_address(run, args, 8) == "x-cell-8.x-cells:50051"


def test_the_network_policy_admits_only_the_runs_cells_and_the_operator_to_grpc():
    run = full_run()
    policy = render_network_policy(run, "ml", DEFAULTS, "lipizzaner-system")["spec"]
    pod_labels = render_pod(run, "ml", 0, 0, DEFAULTS)["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    grpc_rule, metrics_rule = policy["ingress"]
    assert grpc_rule["ports"] == [{"port": DEFAULTS.grpc_port, "protocol": "TCP"}]
    peers, operator = grpc_rule["from"]
    assert peers["podSelector"]["matchLabels"]["lipizzaner.io/run"] == "mnist-grid"
    assert operator["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "lipizzaner-system"
    }
    assert "from" not in metrics_rule  # Prometheus may scrape from anywhere


def test_with_mutual_tls_the_pods_mount_the_runs_certificates():
    """The user's Secret, or else the run's own; the probe turns to TCP (kubelets' gRPC
    probes speak no TLS)."""
    run = full_run()
    pod = render_pod(run, "ml", 0, 0, DEFAULTS)
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LIPIZZANER_TLS_DIR"] == "/etc/lipizzaner/tls"
    assert {"name": "tls", "mountPath": "/etc/lipizzaner/tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "mnist-grid-certs"
    assert container["readinessProbe"]["tcpSocket"] == {"port": DEFAULTS.grpc_port}

    own_manifest = copy.deepcopy(TINY_RING)
    own_manifest["spec"]["exchange"] = {"tls": {"enabled": True}}
    own = parse_run(own_manifest)
    secret = render_tls_secret(own, "ml", generate("tiny.ml.lipizzaner"))
    assert secret["metadata"]["name"] == "tiny-tls" and secret["type"] == "kubernetes.io/tls"
    assert sorted(secret["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    own_pod = render_pod(own, "ml", 0, 0, DEFAULTS)
    assert {"name": "tls", "secret": {"secretName": "tiny-tls", "defaultMode": 0o440}} in own_pod[
        "spec"
    ]["volumes"]

    plain = render_pod(parse_run(copy.deepcopy(TINY_RING)), "ml", 0, 0, DEFAULTS)
    assert plain["spec"]["containers"][0]["readinessProbe"]["grpc"] == {"port": DEFAULTS.grpc_port}
    assert all(v["name"] != "tls" for v in plain["spec"]["volumes"])


def gang_run(pod_group: str, **scheduling):
    manifest = copy.deepcopy(TINY_RING)
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    manifest["spec"]["scheduling"] = {"podGroup": pod_group, **scheduling}
    return parse_run(manifest)


def test_kueue_admits_the_cells_as_one_plain_pod_group():
    """The run's queue label, the group's name and size on every pod (Kueue's contract)."""
    run = gang_run("none")
    pods = [render_pod(run, "ml", i, 0, DEFAULTS) for i in range(4)]
    for pod in pods:
        labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert labels["kueue.x-k8s.io/pod-group-name"] == "tiny"
        assert annotations == {"kueue.x-k8s.io/pod-group-total-count": "4"}
    plain = render_pod(parse_run(copy.deepcopy(TINY_RING)), "ml", 0, 0, DEFAULTS)
    assert "annotations" not in plain["metadata"]
    assert not any(k.startswith("kueue") for k in plain["metadata"]["labels"])


def test_a_gang_gets_a_pod_group_of_every_cell():
    run = gang_run("coscheduling", schedulerName="scheduler-plugins", scheduleTimeoutSeconds=90)
    group = render_pod_group(run, "ml")
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["metadata"]["name"] == "tiny-cells"
    assert group["spec"] == {"minMember": 4, "scheduleTimeoutSeconds": 90}
    pod = render_pod(run, "ml", 2, 0, DEFAULTS)
    assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "tiny-cells"
    assert pod["spec"]["schedulerName"] == "scheduler-plugins"
    volcano = gang_run("volcano")
    assert render_pod_group(volcano, "ml")["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert render_pod_group(volcano, "ml")["spec"] == {"minMember": 4}
    pod = render_pod(volcano, "ml", 0, 0, DEFAULTS)
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "tiny-cells"
    assert pod["spec"]["schedulerName"] == "volcano"
    assert render_pod_group(parse_run(copy.deepcopy(TINY_RING)), "ml") is None


@pytest.mark.parametrize("gang", ["coscheduling", "volcano"])
def test_every_key_the_operator_sets_on_a_cell_pod_is_refused_in_the_spec(gang):
    """spec.cell.labels and annotations may not name a key the operator sets itself."""
    manifest = copy.deepcopy(TINY_RING)
    manifest["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "research"}
    manifest["spec"]["scheduling"] = {"podGroup": gang}
    run = parse_run(manifest)
    pod, job = render_pod(run, "ml", 0, 0, DEFAULTS), render_search_job(run, "ml", DEFAULTS)
    for metadata in (pod["metadata"], job["metadata"], job["spec"]["template"]["metadata"]):
        for key in [*metadata["labels"], *metadata.get("annotations", {})]:
            assert reserved(key), key
