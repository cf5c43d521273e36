"""A LipizzanerRun on a cluster, from the outside: create it, read it, wait for it, delete it.

The executor of `lipizzaner submit`, `status`, `logs` and `delete` for a run on a cluster,
torch-free (the shape of the Kubeflow SDK's `TrainerClient`), and usable as it is from a
notebook or a CI script:

    runs = KubernetesExecutor.connect()                 # the kubeconfig's context
    runs.run(load_run("run.yaml"))
    view = runs.wait("mnist-3x3", timeout=24 * 3600)    # raises TimeoutError
    print(view.phase, view.status.ensemble.uri)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from lipizzaner_core.crd import GROUP, PLURAL, VERSION
from lipizzaner_core.layout import RunLayout
from lipizzaner_core.spec import LipizzanerRun, parse_run
from lipizzaner_core.status import RECORDS_KEY, CellRecord, RunStatus, decode_records
from urllib3.exceptions import HTTPError

from lipizzaner_cell.executors.base import CellLog, Executor, RunNotFound, RunView, kept_logs


class ClusterError(RuntimeError):
    """No cluster to talk to, or an answer that is not about the run itself."""


class ClusterUnreachable(ClusterError):
    """The API server did not answer (down, or the network): worth trying again."""


class RunRefused(ValueError):
    """The API server refused to create the run: invalid, or its name is taken."""


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
class KubernetesExecutor(Executor):
    api: client.ApiClient
    namespace: str
    transient = (ClusterUnreachable,)  # a blip in a long wait: tried again until its deadline

    @classmethod
    def connect(
        cls, context: str | None = None, namespace: str | None = None
    ) -> KubernetesExecutor:
        api, default_namespace = load_api(context)
        return cls(api, namespace or default_namespace)

    @property
    def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def run(self, run: LipizzanerRun) -> RunView:
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

    @contextmanager
    def _on_run(self, name: str, doing: str) -> Iterator[None]:
        """A call about the run `name`: no answer, no such run, or the server's refusal,
        each said in one line."""
        with reaching(self.api):
            try:
                yield
            except ApiException as exc:
                if exc.status == 404:
                    raise RunNotFound(
                        f"no LipizzanerRun {name} in namespace {self.namespace}"
                    ) from None
                raise ClusterError(f"{doing} {name}: {_reason(exc)}") from None

    def status(self, name: str) -> RunView:
        with self._on_run(name, "reading"):
            found = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        return self._view(found)

    def cells(self, view: RunView) -> list[CellRecord]:
        """Every cell's record: a big grid's are in the ConfigMap its status names (the
        status itself shows only some)."""
        name = view.status.cells_config_map
        if name is None:
            return view.status.cell_records
        with reaching(self.api):
            try:
                found = client.CoreV1Api(self.api).read_namespaced_config_map(name, self.namespace)
            except ApiException as exc:
                raise ClusterError(f"reading the cell records {name}: {_reason(exc)}") from None
        try:
            return decode_records((found.data or {})[RECORDS_KEY])
        except (KeyError, ValueError) as exc:
            raise ClusterError(f"the cell records in ConfigMap {name} are damaged: {exc}") from None

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

    def logs(self, name: str, cell: int | None = None, attempt: int | None = None) -> list[CellLog]:
        """The logs the run's cells kept in its output, found through its spec."""
        run = self.status(name).run
        cells = [cell] if cell is not None else list(range(run.spec.grid.size))
        return kept_logs(RunLayout.of(run), cells, attempt)

    def delete(self, name: str) -> None:
        """Delete the LipizzanerRun: the operator lets its pods go (they checkpoint on
        SIGTERM); its output stays where it is."""
        with self._on_run(name, "deleting"):
            self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )

    def _view(self, obj: dict[str, Any]) -> RunView:
        manifest = {key: obj[key] for key in ("apiVersion", "kind", "metadata", "spec")}
        manifest["metadata"] = {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"].get("namespace"),
        }
        status = RunStatus.model_validate(obj.get("status") or {})
        return RunView(parse_run(manifest), status, self.namespace)
