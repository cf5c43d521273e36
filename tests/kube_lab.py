"""A Kubernetes API for operator tests: kmock's stateful emulator, filling five gaps of kmock 0.8.

- objects get a `uid`, `creationTimestamp`, `generation` and a growing `resourceVersion`
  (kopf's finalizer JSON-patches test the resourceVersion; ownerReferences need the uid);
- a failed JSON-patch `test` answers 422, as the API server does (kmock: 500);
- LIST returns the current resourceVersion and WATCH sends only newer changes (kmock
  replays every object on every WATCH);
- label selectors (`a=b`, `a`, `a!=b`) filter LIST and WATCH (kmock ignores them);
- spec changes bump `metadata.generation`;
- `/api/v1/namespaces[/NAME]` parses as the Namespace resource (kmock's path parser takes
  `namespaces` for a namespace segment and crashes), so kopf can watch named namespaces.
The emulator runs on its own event loop in a thread, so tests and kopf's runner (another
thread) talk to it over real HTTP, like to an API server.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonpatch
import kmock
import kmock._internal.parsing
import yaml

# resource: (kind, subresources, namespaced); kopf waits until namespaces and CRDs are
# discoverable before it watches anything.
RESOURCES = {
    "v1/namespaces": ("Namespace", set(), False),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", set(), False),
    "v1/pods": ("Pod", {"status"}, True),
    "v1/services": ("Service", set(), True),
    "v1/configmaps": ("ConfigMap", set(), True),
    "v1/events": ("Event", set(), True),
    "lipizzaner.io/v1alpha1/lipizzanerruns": ("LipizzanerRun", {"status"}, True),
}


_parse_path = kmock._internal.parsing.parse_path


def _parse_path_with_namespaces(path: str) -> Any:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        name = parts[3] if len(parts) == 4 else None
        return kmock._internal.parsing.ParsedPath("", "v1", "namespaces", None, name, None)
    return _parse_path(path)


kmock._internal.parsing.parse_path = _parse_path_with_namespaces


def matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


def _version(obj: dict[str, Any]) -> int:
    text = obj.get("metadata", {}).get("resourceVersion", "0")
    return int(text) if text.isdigit() else 0


class LabEmulator(kmock.KubernetesEmulator):
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.version = 0
        for key, (kind, subresources, namespaced) in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=kind,
                namespaced=namespaced,
                verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
                subresources=subresources,
            )

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.action == kmock.action.CREATE:
            meta = request.data.setdefault("metadata", {})
            meta.update(
                uid=str(uuid.uuid4()),
                resourceVersion=self._next_version(),
                generation=1,
                creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
        elif request.resource is not None and request.action == kmock.action.UPDATE:
            self._stamp_update(request)
        elif request.resource is not None and request.action == kmock.action.DELETE:
            self.version += 1
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            error = kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
            return await self._render_error(error)

    def _stamp_update(self, request: kmock.Request) -> None:
        version = self._next_version()
        key = (request.resource, request.namespace, request.name)
        generation = 1
        if key in self.objects and not self.objects[key].deleted:
            generation = self.objects[key].get("metadata", {}).get("generation", 1)
        if isinstance(request.data, dict):
            touches_spec = "spec" in request.data and request.subresource != "status"
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = version
            if touches_spec:
                meta["generation"] = generation + 1
        elif isinstance(request.data, list):
            touches_spec = any(op.get("path", "").startswith("/spec") for op in request.data)
            request.data.append(
                {"op": "replace", "path": "/metadata/resourceVersion", "value": version}
            )
            if touches_spec:
                request.data.append(
                    {"op": "replace", "path": "/metadata/generation", "value": generation + 1}
                )

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector", "")
        result["items"] = [
            item
            for item in result["items"]
            if matches(item.get("metadata", {}).get("labels") or {}, selector)
        ]
        result["metadata"]["resourceVersion"] = str(self.version)
        return result

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        since = request.params.get("resourceVersion", "")
        since_version = int(since) if since.isdigit() else -1
        selector = request.params.get("labelSelector", "")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict):
                obj = event.get("object", {})
                if event.get("type") != "DELETED" and _version(obj) <= since_version:
                    continue
                if not matches(obj.get("metadata", {}).get("labels") or {}, selector):
                    continue
            yield event


class KubeLab:
    """The emulator served on 127.0.0.1 from a background thread, plus a kubeconfig for it."""

    def __init__(self, workdir: Path) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name="kube-lab", daemon=True)
        self.emulator: LabEmulator | None = None
        self.url = ""

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with LabEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> KubeLab:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Kubernetes emulator did not start")
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.url)))
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def objects(self, plural: str) -> Iterator[dict[str, Any]]:
        """Live objects of one resource (e.g. "pods"), as plain dicts; read on the lab's loop."""

        async def snapshot() -> list[dict[str, Any]]:
            assert self.emulator is not None
            return [
                dict(obj.raw)
                for (resource, _, _), obj in list(self.emulator.objects.items())
                if resource.plural == plural and not obj.deleted
            ]

        return iter(asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(10))


def kubeconfig(server: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server}}],
        "users": [{"name": "lab", "user": {"token": "lab-token"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "current-context": "lab",
    }
