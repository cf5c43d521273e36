"""The cell pods as a watch tells them: listed once, then followed, by label selector on
the server, so that a reconcile pass reads memory instead of listing its run's pods. Each
pod is kept as the operator's view of it (`PodView`, a few hundred bytes), not as the
object (tens of kilobytes in Python).

A pass must never act on a cache that has not yet seen what the operator itself just did:
it would create a replacement twice, or count one restart twice. So `expect` records each
pod the operator creates or deletes, and `pods` answers None for a run until the watch has
shown all of it; that pass lists instead, as every pass did before (client-go's
"expectations", kubernetes/kubernetes' ReplicaSet controller).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes import client, watch
from lipizzaner_core.contract import RUN_LABEL

from lipizzaner_operator.observed import PodView, view_pod

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, pod name)
Change = Literal["created", "deleted", "gone"]
# Past this, an expectation is dropped and the cache trusted (client-go waits 5 minutes).
EXPECTATION_SECONDS = 300.0
# After a failed list or watch, wait this long before listing again.
RETRY_SECONDS = 2.0


def shows(change: Change, pod: PodView | None) -> bool:
    """Whether `pod` (None: not in the cache) shows the change the operator made."""
    if change == "created":
        return pod is not None
    if change == "deleted":  # gracefully: being deleted, or gone
        return pod is None or pod.deleting
    return pod is None  # "gone": force-deleted


@dataclass(frozen=True)
class Cached:
    run: str
    pod: PodView


@dataclass
class Expectation:
    run: str
    change: Change
    since: float  # time.monotonic() when the operator made it


@dataclass(frozen=True)
class WatchTimeouts:
    """Watch requests (kopf's of the runs, ours of the pods) end, time out and give up
    connecting after these (seconds), so a stream that hangs is dropped and listed again
    instead of leaving the operator deaf."""

    server: int = 300  # whole seconds: the API server's `timeoutSeconds`
    client: float = 330.0
    connect: float = 30.0


class PodCache:
    """Cell pods of the watched namespaces (all of them: `namespaces` empty), by run."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespaces: tuple[str, ...],
        selector: str,
        timeouts: WatchTimeouts | None = None,
    ) -> None:
        self.core = core
        self.namespaces = namespaces
        self.selector = selector
        self.timeouts = timeouts or WatchTimeouts()
        self._lock = threading.Lock()
        self._pods: dict[Key, Cached] = {}
        self._expected: dict[Key, Expectation] = {}
        self._listed: set[str | None] = set()  # the scopes (namespace; None: all) listed
        self._stop = threading.Event()
        self.lists = 0  # lists made, the first included: what the API server served us

    def start(self) -> None:
        """Follow each watched namespace (or the whole cluster) in a thread of its own."""
        for scope in self.namespaces or (None,):
            threading.Thread(
                target=self._follow, args=(scope,), name=f"pods:{scope or '*'}", daemon=True
            ).start()

    def stop(self) -> None:
        """The threads end after their current request."""
        self._stop.set()

    def pods(self, namespace: str, run: str) -> list[PodView] | None:
        """The run's cell pods, or None when the cache cannot say yet: not listed yet, or
        something the operator did to the run's pods has not reached it."""
        with self._lock:
            if not ({namespace, None} & self._listed):
                return None
            now = time.monotonic()
            for (where, name), expected in list(self._expected.items()):
                if now - expected.since > EXPECTATION_SECONDS:
                    log.warning("pod %s/%s: the watch never showed it %s", where, name, expected)
                    del self._expected[(where, name)]
                elif where == namespace and expected.run == run:
                    return None
            return [
                cached.pod
                for (where, _), cached in self._pods.items()
                if where == namespace and cached.run == run
            ]

    def expect(self, namespace: str, run: str, name: str, change: Change) -> None:
        """The operator has made `change` to this pod of `run`: until the cache shows it,
        the run's pods are not answered from the cache."""
        key = (namespace, name)
        with self._lock:
            if not shows(change, _pod(self._pods.get(key))):
                self._expected[key] = Expectation(run, change, time.monotonic())

    def _follow(self, namespace: str | None) -> None:
        while not self._stop.is_set():
            try:
                version = self._list(namespace)
                for event in self._events(namespace, version):
                    self._take(event)
            except Exception as exc:  # the API server away, 410 Gone, a dropped stream
                log.info("pods of %s: listing again after %s", namespace or "all namespaces", exc)
                self._stop.wait(RETRY_SECONDS)

    def _list(self, namespace: str | None) -> str:
        """List the pods afresh; what the operator expected before the list is settled."""
        started = time.monotonic()
        if namespace is None:
            answer = self.core.list_pod_for_all_namespaces(
                label_selector=self.selector, _preload_content=False
            )
        else:
            answer = self.core.list_namespaced_pod(
                namespace, label_selector=self.selector, _preload_content=False
            )
        listed = json.loads(answer.data)
        with self._lock:
            self.lists += 1
            self._pods = {k: p for k, p in self._pods.items() if not _within(k, namespace)}
            for pod in listed["items"]:
                self._store(pod)
            self._expected = {
                k: e
                for k, e in self._expected.items()
                if not (_within(k, namespace) and e.since < started)
            }
            self._listed.add(namespace)
        return listed["metadata"]["resourceVersion"]

    def _events(self, namespace: str | None, version: str) -> Iterator[dict[str, Any]]:
        """The watch's events from `version` on, watch after watch, until one fails."""
        while not self._stop.is_set():
            stream = watch.Watch()
            arguments: dict[str, Any] = {
                "label_selector": self.selector,
                "resource_version": version,
                "allow_watch_bookmarks": True,
                "timeout_seconds": self.timeouts.server,
                "_request_timeout": (self.timeouts.connect, self.timeouts.client),
                "deserialize": False,
            }
            if namespace is None:
                events = stream.stream(self.core.list_pod_for_all_namespaces, **arguments)
            else:
                events = stream.stream(self.core.list_namespaced_pod, namespace, **arguments)
            for event in events:
                version = event["object"]["metadata"]["resourceVersion"]
                yield event

    def _take(self, event: dict[str, Any]) -> None:
        if event["type"] == "BOOKMARK":
            return
        pod = event["object"]
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if event["type"] == "DELETED":
                self._pods.pop(key, None)
            else:
                self._store(pod)
            expected = self._expected.get(key)
            seen = _pod(self._pods.get(key))
            if expected and (event["type"] == "DELETED" or shows(expected.change, seen)):
                del self._expected[key]

    def _store(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            cached = Cached(meta["labels"][RUN_LABEL], view_pod(pod))
        except (KeyError, ValueError) as exc:  # labelled as a cell, but not one of ours
            log.warning("pod %s/%s: not a cell pod: %s", meta["namespace"], meta["name"], exc)
            return
        self._pods[(meta["namespace"], meta["name"])] = cached


def _pod(cached: Cached | None) -> PodView | None:
    return None if cached is None else cached.pod


def _within(key: Key, namespace: str | None) -> bool:
    """The pod is in the scope a list covers (None: every namespace)."""
    return namespace is None or key[0] == namespace
