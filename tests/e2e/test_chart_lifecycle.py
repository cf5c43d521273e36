"""The chart's hooks on the real node, with the real `helm`: an upgrade brings an older
release's CRD up to date (Helm itself never updates `crds/`), and an uninstall deletes the
runs while the operator can still finalize them, so none is left hanging.

The chart is installed again afterwards, for the modules that follow."""

from __future__ import annotations

import json

import yaml
from e2e.fixtures import (
    OPERATOR_NAMESPACE,
    apply_run,
    install_chart,
    operator_pods,
    status,
    succeeded,
    tiny_run,
)
from e2e.node import CHART, Node
from envtest import older_crd, wait_for
from lipizzaner_core.crd import CRD_NAME


def crd_fields(node: Node) -> tuple[set[str], set[str]]:
    """The installed CRD's failurePolicy fields and status fields."""
    crd = json.loads(node.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    policy = schema["spec"]["properties"]["failurePolicy"]["properties"]
    return set(policy), set(schema["status"]["properties"])


def test_an_upgrade_updates_the_crd_and_an_uninstall_deletes_the_runs(
    operator: Node, namespace: str
):
    node = operator
    older = node.directory / "older-crd.yaml"
    older.write_text(yaml.safe_dump(older_crd()))
    node.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(older))
    assert "lostNodeSeconds" not in crd_fields(node)[0]
    apply_run(node, namespace, tiny_run(node, namespace, name="before"))
    wait_for("the run managed", lambda: status(node, namespace, "before").get("phase"))

    helm = str(node.bin / "helm")
    node.run(helm, "upgrade", "lipizzaner", str(CHART), "-n", OPERATOR_NAMESPACE, "--wait")
    policy, status_fields = crd_fields(node)
    assert "lostNodeSeconds" in policy and "bestAccuracy" in status_fields
    newer = tiny_run(node, namespace, name="after", failurePolicy={"lostNodeSeconds": 600})
    apply_run(node, namespace, newer)  # strict: refused by the older CRD
    assert succeeded(node, namespace, "before")["phase"] == "Succeeded"

    try:
        done = node.run(
            *(helm, "uninstall", "lipizzaner", "-n", OPERATOR_NAMESPACE),
            *("--wait", "--timeout", "5m"),
            timeout=420,
        )
        assert "uninstalled" in done.stdout
        runs = node.get("lpz", "-n", namespace)["items"]
        assert runs == []  # both gone: none hangs on the operator's finalizer
        wait_for("the operator gone", lambda: not operator_pods(node))
    finally:
        install_chart(node)
