"""The operator's watch-fed cache of cell pods against the real API server: it follows
creations and deletions by label selector, keeps one list however many watches end, and
answers nothing for a run while what the operator did to its pods has not reached it."""

from __future__ import annotations

import pytest
from envtest import wait_for
from lipizzaner_operator import pod_cache
from lipizzaner_operator.names import CELL_PODS
from lipizzaner_operator.observed import PodView
from lipizzaner_operator.pod_cache import PodCache, WatchTimeouts, shows


def cell_pod(name: str, run: str, component: str = "cell", cell: str = "0") -> dict:
    labels = {
        "app.kubernetes.io/managed-by": "lipizzaner-operator",
        "app.kubernetes.io/component": component,
        "lipizzaner.io/run": run,
        "lipizzaner.io/cell": cell,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "cell", "image": "cell:test"}]},
    }


@pytest.fixture
def cache(cluster):
    # Watches that end every second: following must not mean listing again.
    found = PodCache(cluster.core, (cluster.namespace,), CELL_PODS, WatchTimeouts(server=1))
    found.start()
    yield found
    found.stop()


def names(cache: PodCache, namespace: str, run: str) -> set[str] | None:
    pods = cache.pods(namespace, run)
    return None if pods is None else {p.name for p in pods}


def create(cluster, pod: dict) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod, _preload_content=False)


def test_the_cache_follows_a_runs_cell_pods_with_one_list(cluster, cache):
    namespace = cluster.namespace
    wait_for("the first list", lambda: names(cache, namespace, "a") == set())
    create(cluster, cell_pod("a-cell-0", "a"))
    create(cluster, cell_pod("a-cell-1", "a"))
    create(cluster, cell_pod("b-cell-0", "b"))
    create(cluster, cell_pod("a-ensemble", "a", component="search"))  # not a cell: not watched
    create(cluster, cell_pod("a-impostor", "a", cell="none"))  # labelled as a cell, not one
    wait_for("run a's cells", lambda: names(cache, namespace, "a") == {"a-cell-0", "a-cell-1"})
    assert names(cache, namespace, "b") == {"b-cell-0"}
    cluster.core.delete_namespaced_pod("a-cell-1", namespace, grace_period_seconds=0)
    wait_for("a-cell-1 gone", lambda: names(cache, namespace, "a") == {"a-cell-0"})
    assert cache.pods("elsewhere", "a") is None  # a namespace it does not watch
    assert cache.lists == 1  # many watches have ended meanwhile; none needed a new list


def test_a_run_is_not_answered_until_the_cache_shows_what_the_operator_did(cluster, cache):
    namespace = cluster.namespace
    wait_for("the first list", lambda: names(cache, namespace, "a") == set())
    cache.expect(namespace, "a", "a-cell-0-r1", "created")
    assert cache.pods(namespace, "a") is None
    assert cache.pods(namespace, "b") == []  # another run's pods are still answered
    create(cluster, cell_pod("a-cell-0-r1", "a"))
    wait_for("the replacement seen", lambda: names(cache, namespace, "a") == {"a-cell-0-r1"})

    cluster.core.delete_namespaced_pod("a-cell-0-r1", namespace, grace_period_seconds=0)
    cache.expect(namespace, "a", "a-cell-0-r1", "gone")
    wait_for("its deletion seen", lambda: names(cache, namespace, "a") == set())
    cache.expect(namespace, "a", "a-cell-0-r1", "gone")  # what the cache shows: nothing owed
    assert cache.pods(namespace, "a") == []


def test_an_expectation_the_watch_never_meets_is_dropped_in_time(cluster, cache, monkeypatch):
    namespace = cluster.namespace
    wait_for("the first list", lambda: names(cache, namespace, "a") == set())
    cache.expect(namespace, "a", "a-cell-3", "created")  # say its creation was refused
    assert cache.pods(namespace, "a") is None
    monkeypatch.setattr(pod_cache, "EXPECTATION_SECONDS", 0.0)
    assert cache.pods(namespace, "a") == []


def test_what_shows_each_change():
    being_deleted = PodView(cell=0, phase="Running", deleting=True)
    running = PodView(cell=0, phase="Running")
    assert shows("created", running) and not shows("created", None)
    assert shows("deleted", being_deleted) and shows("deleted", None)
    assert not shows("deleted", running)
    assert shows("gone", None) and not shows("gone", being_deleted)
