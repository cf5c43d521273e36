"""CRD upgrades on a control plane of this module's own (the tests replace its CRD).

Helm never updates a chart's `crds/` (helm/helm#6581), so after `helm upgrade` the cluster
would keep the old release's CRD: new spec fields refused, new status fields pruned.
`lipizzaner-operator apply-crd` (the chart's pre-upgrade hook) applies this version's.
And the plan for leaving v1alpha1: v1beta1 served beside it from the same schema, with
conversion `None`, works while the schemas are compatible.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from envtest import GROUP, PLURAL, Cluster, ControlPlane, older_crd, private_plane, wait_for
from kubernetes.client.exceptions import ApiException
from lipizzaner_core.crd import crd_manifest
from lipizzaner_operator.operator_main import main
from operator_harness import manifest, operator


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> Iterator[ControlPlane]:
    with private_plane(tmp_path_factory.mktemp("upgrades")) as started:
        yield started


@pytest.fixture
def cluster(plane: ControlPlane, request: pytest.FixtureRequest) -> Cluster:
    return Cluster(plane, request.node.name.lower().replace("_", "-")[:40])


def stored(cluster: Cluster, name: str) -> dict:
    return cluster.run(name) or {}


def test_apply_crd_brings_an_older_crd_up_to_date_and_old_runs_keep_reconciling(
    plane, cluster, tmp_path, monkeypatch, capsys
):
    plane.apply([older_crd()], "--force-conflicts")
    newer = manifest(tmp_path, name="new", failurePolicy={"lostNodeSeconds": 60})
    with operator(cluster):  # the older release's operator
        cluster.create_run(manifest(tmp_path, name="old"))
        wait_for("the old run reconciled", lambda: cluster.status("old").get("phase"))
        with pytest.raises(ApiException) as refused:
            cluster.create_run(newer)  # strict: the older CRD does not know the field
        assert "lostNodeSeconds" in refused.value.body
        generation = cluster.status("old").get("observedGeneration") or 0

    # helm upgrade: the pre-upgrade hook, then the new operator.
    monkeypatch.setenv("KUBECONFIG", str(plane.kubeconfig))
    main(["apply-crd"])
    assert capsys.readouterr().out == f"applied the CRD {PLURAL}.{GROUP}\n"
    with operator(cluster):
        wait_for("the new field accepted", lambda: _created(cluster, newer))
        assert stored(cluster, "new")["spec"]["failurePolicy"]["lostNodeSeconds"] == 60
        cluster.custom.patch_namespaced_custom_object_status(
            GROUP, "v1alpha1", cluster.namespace, PLURAL, "old", {"status": {"bestAccuracy": 0.5}}
        )
        assert cluster.status("old")["bestAccuracy"] == 0.5  # a new status field, kept
        cluster.patch_spec("old", {"suspend": True})
        wait_for(
            "the old run reconciled after the upgrade",
            lambda: cluster.status("old").get("phase") == "Suspended",
        )
        assert cluster.status("old")["observedGeneration"] > generation


def _created(cluster: Cluster, run: dict) -> bool:
    try:
        cluster.create_run(run)
    except ApiException as exc:
        if exc.status == 409:
            return True
        if exc.status == 422 or exc.status == 400:  # the CRD's new schema not served yet
            return False
        raise
    return True


def test_v1beta1_served_beside_v1alpha1_without_conversion_round_trips_runs(
    plane, cluster, tmp_path
):
    """docs/operator.md's versioning plan: v1beta1 from the same schema, the storage
    version, conversion None; runs written as either version read as both."""
    crd = copy.deepcopy(crd_manifest())
    (alpha,) = crd["spec"]["versions"]
    beta = copy.deepcopy(alpha) | {"name": "v1beta1", "storage": True}
    alpha["storage"] = False
    crd["spec"]["versions"] = [alpha, beta]
    crd["spec"]["conversion"] = {"strategy": "None"}
    # The last test here: v1beta1, once stored, stays in the CRD's storedVersions.
    plane.apply([crd], "--force-conflicts")
    cluster.create_run(manifest(tmp_path, name="either"))  # as v1alpha1

    def read(version: str) -> dict:
        return cluster.custom.get_namespaced_custom_object(
            GROUP, version, cluster.namespace, PLURAL, "either"
        )

    as_beta = wait_for("the run served as v1beta1", lambda: read("v1beta1"))
    assert as_beta["apiVersion"] == f"{GROUP}/v1beta1"
    assert as_beta["spec"] == read("v1alpha1")["spec"]
    with operator(cluster):  # the operator, still on v1alpha1, reconciles it
        wait_for("the run reconciled", lambda: cluster.status("either").get("phase"))
        cluster.custom.delete_namespaced_custom_object(
            GROUP, "v1beta1", cluster.namespace, PLURAL, "either"
        )
        wait_for("the run deleted through v1beta1", lambda: cluster.run("either") is None)
