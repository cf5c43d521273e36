"""Bad input on the real node, each said in one line of the run's status: an image that
does not exist (and the deadline that ends the wait), a bucket that does not exist, and a
credentials Secret that does not (yet) exist."""

from __future__ import annotations

import re

from e2e.fixtures import apply_run, describe, status, succeeded, tiny_run
from e2e.node import Node
from envtest import wait_for

MISSING_IMAGE = "ghcr.io/lipizzaner-k8s/cell:no-such-tag"


def message(node: Node, namespace: str, run: str) -> str:
    return status(node, namespace, run).get("message", "")


def test_a_missing_image_is_named_with_the_kubelets_reason_and_the_deadline_ends_the_run(
    operator: Node, namespace: str
):
    node = operator
    run = tiny_run(node, namespace, name="noimage", activeDeadlineSeconds=90)
    run["spec"]["cell"]["image"] = MISSING_IMAGE
    apply_run(node, namespace, run)
    said = wait_for(
        "the image and the kubelet's reason in the run's status",
        lambda: MISSING_IMAGE in (m := message(node, namespace, "noimage")) and m,
        timeout=60,
    )
    assert re.search(r"ErrImagePull|ImagePullBackOff|ErrImageNeverPull", said), said
    assert "\n" not in said and said.startswith("cells 0-3: "), said
    failed = wait_for(
        "the run failed past its deadline",
        lambda: (s := status(node, namespace, "noimage")).get("phase") == "Failed" and s,
        timeout=300,
    )
    assert "activeDeadlineSeconds (90 s)" in failed["message"]


def test_a_missing_bucket_fails_the_run_with_the_bucket_named(operator: Node, namespace: str):
    node = operator
    run = tiny_run(node, namespace, name="nobucket")
    run["spec"]["output"]["uri"] = "s3://no-such-bucket/runs/nobucket"
    apply_run(node, namespace, run)
    failed = wait_for(
        "the run failed",
        lambda: (s := status(node, namespace, "nobucket")).get("phase") == "Failed" and s,
        timeout=300,
    )
    said = failed["message"]
    assert "rejected its configuration (exit code 2): spec.output.uri" in said, describe(
        node, namespace
    )
    assert f"bucket 'no-such-bucket' does not exist at {node.s3_endpoint}" in said
    assert "\n" not in said


def test_a_missing_credentials_secret_is_named_and_the_cells_wait_for_it(
    operator: Node, namespace: str
):
    node = operator
    run = tiny_run(node, namespace, name="nosecret")
    run["spec"]["output"]["credentialsSecret"] = "late"
    apply_run(node, namespace, run)
    said = wait_for(
        "the Secret named in the run's status",
        lambda: 'secret "late" not found' in (m := message(node, namespace, "nosecret")) and m,
        timeout=120,
    )
    assert said == 'cells 0-3: CreateContainerConfigError: secret "late" not found', said
    credentials = node.s3_credentials()
    node.kubectl(
        *("-n", namespace, "create", "secret", "generic", "late"),
        f"--from-literal=AWS_ACCESS_KEY_ID={credentials['aws_access_key_id']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={credentials['aws_secret_access_key']}",
    )
    assert succeeded(node, namespace, "nosecret")["cells"]["restarts"] == 0
