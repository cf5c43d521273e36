"""A LipizzanerRun on a cluster, from the outside: create it, read it, wait for it.

The shape of the Kubeflow SDK's `TrainerClient`, torch-free: `lipizzaner submit`, `status`
and `logs` are built on it, and a notebook or a CI script can use it as it is:

    client = RunClient.connect()                       # the kubeconfig's context
    client.create(load_run("run.yaml"))
    view = client.wait("mnist-3x3", timeout=24 * 3600)  # raises TimeoutError
    print(view.phase, view.status.ensemble.uri)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from lipizzaner_core.crd import GROUP, PLURAL, VERSION
from lipizzaner_core.spec import LipizzanerRun, parse_run
from lipizzaner_core.status import RunStatus

FINISHED = ("Succeeded", "Failed")


class ClusterError(RuntimeError):
    """No cluster to talk to, or an answer that is not about the run itself."""


class ClusterUnreachable(ClusterError):
    """The API server did not answer (down, or the network): worth trying again."""


class RunRefused(ValueError):
    """The API server refused to create the run: invalid, or its name is taken."""


class RunNotFound(LookupError):
    """No run of that name in the namespace."""


@dataclass(frozen=True)
class RunView:
    """A run as the cluster has it: its spec and its status."""

    run: LipizzanerRun
    status: RunStatus
    namespace: str

    @property
    def name(self) -> str:
        return self.run.metadata.name

    @property
    def phase(self) -> str:
        return self.status.phase

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def summary(self) -> dict[str, Any]:
        """What a CI job keeps: outcome, ensemble and scores (JSON-ready)."""
        status = self.status
        return {
            "run": self.name,
            "namespace": self.namespace,
            "phase": status.phase,
            "message": status.message,
            "grid": status.grid,
            "generation": status.generation.model_dump(),
            "generations": self.run.spec.generations,
            "bestScore": status.best_score,
            "ensemble": status.ensemble.uri if status.ensemble else None,
            "output": self.run.output_uri(),
            "restarts": status.cells.restarts,
            "startTime": status.start_time,
            "completionTime": status.completion_time,
        }


def load_api(context: str | None = None) -> tuple[client.ApiClient, str]:
    """An API client for a kubeconfig context (KUBECONFIG, else ~/.kube/config; default:
    the current context) and that context's namespace ("default" if it names none)."""
    path = os.environ.get("KUBECONFIG")
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=path, context=context, client_configuration=configuration
        )
        contexts, current = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        where = path or "~/.kube/config"
        raise ClusterError(f"no usable Kubernetes configuration in {where}: {exc}") from None
    chosen = next((c for c in contexts if c["name"] == context), current) if context else current
    namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    return client.ApiClient(configuration), namespace


def _reason(exc: ApiException) -> str:
    """The API server's own one-line message."""
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


@contextmanager
def reaching(api: client.ApiClient) -> Iterator[None]:
    """API calls whose connection fails say so in one line, naming the server."""
    try:
        yield
    except HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ClusterUnreachable(
            f"cannot reach the Kubernetes API server at {api.configuration.host}: {reason}"
        ) from None


@dataclass
class RunClient:
    api: client.ApiClient
    namespace: str

    @classmethod
    def connect(cls, context: str | None = None, namespace: str | None = None) -> RunClient:
        api, default_namespace = load_api(context)
        return cls(api, namespace or default_namespace)

    @property
    def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create(self, run: LipizzanerRun) -> RunView:
        """Create the run in this namespace; RunRefused says why the server would not."""
        # Unset optional fields stay unset: the server defaults them (and refuses a null
        # where its schema has an enum).
        body = run.model_dump(by_alias=True, mode="json", exclude_none=True)
        body["metadata"] = {**body["metadata"], "namespace": self.namespace}
        with reaching(self.api):
            try:
                created = self._custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, body, field_validation="Strict"
                )
            except ApiException as exc:
                if exc.status in (400, 409, 422):
                    raise RunRefused(_reason(exc)) from None
                raise ClusterError(f"creating {run.metadata.name}: {_reason(exc)}") from None
        return self._view(created)

    def get(self, name: str) -> RunView:
        with reaching(self.api):
            try:
                found = self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name
                )
            except ApiException as exc:
                if exc.status == 404:
                    raise RunNotFound(
                        f"no LipizzanerRun {name} in namespace {self.namespace}"
                    ) from None
                raise ClusterError(f"reading {name}: {_reason(exc)}") from None
        return self._view(found)

    def events(self, name: str) -> list[dict[str, str]]:
        """The run's Events, oldest first: restarts, failures, what the operator said."""
        selector = f"involvedObject.name={name},involvedObject.kind=LipizzanerRun"
        with reaching(self.api):
            try:
                found = client.CoreV1Api(self.api).list_namespaced_event(
                    self.namespace, field_selector=selector
                )
            except ApiException as exc:
                raise ClusterError(f"reading the events of {name}: {_reason(exc)}") from None
        events = [
            {
                "time": str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp),
                "type": e.type or "",
                "reason": e.reason or "",
                "message": e.message or "",
                "uid": e.metadata.uid,
            }
            for e in found.items
        ]
        return sorted(events, key=lambda e: e["time"])

    def wait(
        self,
        name: str,
        timeout: float,
        poll_seconds: float = 2.0,
        on_poll: Callable[[RunView], None] | None = None,
    ) -> RunView:
        """Read the run until it has Succeeded or Failed; TimeoutError after `timeout`
        seconds (the run goes on)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                view = self.get(name)
            except ClusterUnreachable:  # a blip in a long wait: try again until the deadline
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll_seconds)
                continue
            if on_poll is not None:
                on_poll(view)
            if view.finished:
                return view
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} is still {view.phase} after {timeout:g} s")
            time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))

    def _view(self, obj: dict[str, Any]) -> RunView:
        manifest = {key: obj[key] for key in ("apiVersion", "kind", "metadata", "spec")}
        manifest["metadata"] = {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"].get("namespace"),
        }
        status = RunStatus.model_validate(obj.get("status") or {})
        return RunView(parse_run(manifest), status, self.namespace)
