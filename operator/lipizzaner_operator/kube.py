"""The operator's side effects: the Kubernetes API (official client) and the cells' GetStatus.

Objects travel as plain camelCase dicts, the same shape `render` produces and tests read.
Creating what exists and deleting what is gone are not errors: the reconciler is
level-triggered and may repeat itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from lipizzaner_core.crd import GROUP, PLURAL, VERSION
from lipizzaner_core.wire.channels import channel
from lipizzaner_core.wire.status import get_status
from lipizzaner_core.wire.tls import TlsMaterial

from lipizzaner_operator.observed import CellProgress, PodView

log = logging.getLogger(__name__)
Manifest = dict[str, Any]
# Every object we write is checked field by field: a typo is an error, never pruned.
STRICT = "Strict"
# Requests in flight at once when the operator creates many pods or asks many cells: a
# big grid's pods are created in seconds, without flooding the API server.
PARALLEL_REQUESTS = 16


class CredentialsError(RuntimeError):
    """No usable Kubernetes configuration or credential: a startup error, one line."""


def load_configuration() -> client.Configuration:
    """In a pod: its service account; elsewhere: the kubeconfig (KUBECONFIG or ~/.kube).

    The kubernetes client resolves every credential a kubeconfig can hold (a token, a
    client certificate, an exec plugin), so we take what it resolved, never parse it.
    """
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        try:
            # KUBECONFIG is read now, not when the kubernetes package was imported.
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        except (ConfigException, OSError, ValueError) as exc:
            where = os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise CredentialsError(
                f"no Kubernetes configuration: not in a pod, and {where}: {exc}"
            ) from None
    return configuration


def bearer_token(configuration: client.Configuration) -> str | None:
    """The token the client would send: kubeconfig token, exec plugin or in-cluster one.

    `auth_settings` is the client's own answer (it knows where each client version keeps
    the token: `api_key["BearerToken"]` since 36, `["authorization"]` before) and runs
    the refresh hook that re-reads an in-cluster token. The scheme word is dropped.
    """
    setting = configuration.auth_settings().get("BearerToken") or {}
    words = (setting.get("value") or "").split()
    if words and words[0].lower() == "bearer":  # the in-cluster loader writes "bearer"
        words = words[1:]
    return " ".join(words) or None


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """kopf's own API connection, from the same configuration as our client's.

    A configuration with no credential at all is refused: an operator that logs in
    anonymously fails every request later with 403s that name no cause.
    """
    token = bearer_token(configuration)
    certificate = configuration.cert_file if configuration.key_file else None
    if not (token or certificate or configuration.username):
        raise CredentialsError(
            f"no credential for {configuration.host}: the kubeconfig's user has no token, "
            "client certificate, exec plugin or password the operator can use"
        )
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme="Bearer" if token else None,
        token=token,
        certificate_path=certificate,
        private_key_path=configuration.key_file if certificate else None,
    )


@contextlib.contextmanager
def tolerating(status: int) -> Iterator[None]:
    """Let an API answer of `status` pass (404: not there, 409: already there)."""
    try:
        yield
    except ApiException as exc:
        if exc.status != status:
            raise


class KubeClient:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)

    @classmethod
    def from_environment(cls) -> KubeClient:
        return cls(client.ApiClient(load_configuration()))

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        response = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        return json.loads(response.data)["items"]

    def create(self, obj: Manifest) -> None:
        """Create a Pod, Service, ConfigMap, Secret, NetworkPolicy, Job or PodGroup; one that
        exists is left as it is.

        Responses stay unparsed: we never read them, and the client's models reject
        objects that other controllers filled in only partly.
        """
        if obj["kind"] == "PodGroup":  # a scheduler's custom resource
            group, version = obj["apiVersion"].split("/")
            namespace = obj["metadata"]["namespace"]
            with tolerating(409):
                self.custom.create_namespaced_custom_object(
                    group, version, namespace, "podgroups", obj, field_validation=STRICT
                )
            return
        create = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Secret": self.core.create_namespaced_secret,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
            "Job": self.batch.create_namespaced_job,
        }[obj["kind"]]
        with tolerating(409):  # already there
            create(
                obj["metadata"]["namespace"], obj, field_validation=STRICT, _preload_content=False
            )

    def create_all(self, objects: list[Manifest]) -> None:
        """`create` each, at most PARALLEL_REQUESTS at a time."""
        if len(objects) <= 1:
            for obj in objects:
                self.create(obj)
            return
        with ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(objects))) as pool:
            list(pool.map(self.create, objects))  # the first error, if any, is raised here

    def read_job(self, namespace: str, name: str) -> Manifest | None:
        """A Job as plain data; None when there is no such Job."""
        with tolerating(404):
            job = self.batch.read_namespaced_job(name, namespace, _preload_content=False)
            return json.loads(job.data)
        return None

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's data, decoded; None when there is no such Secret."""
        with tolerating(404):
            secret = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
            data = json.loads(secret.data).get("data") or {}
            return {key: base64.b64decode(value) for key, value in data.items()}
        return None

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data; None when there is no such ConfigMap."""
        with tolerating(404):
            found = self.core.read_namespaced_config_map(name, namespace, _preload_content=False)
            return json.loads(found.data).get("data") or {}
        return None

    def apply_config_map(self, obj: Manifest) -> None:
        """Create the ConfigMap, or bring its data up to date (new pods read the new spec)."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        current = None
        with tolerating(404):
            current = self.core.read_namespaced_config_map(name, namespace)
        if current is None:
            self.create(obj)
        elif current.data != obj["data"]:
            self.core.patch_namespaced_config_map(
                name,
                namespace,
                {"data": obj["data"]},
                field_validation=STRICT,
                _preload_content=False,
            )

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Add annotations to a pod; a pod that is gone is not an error."""
        with tolerating(404):
            self.core.patch_namespaced_pod(
                name, namespace, {"metadata": {"annotations": annotations}}, _preload_content=False
            )

    def delete_pod(self, namespace: str, name: str, force: bool = False) -> None:
        """Delete a pod; `force`: at once, without its kubelet's confirmation (a lost node)."""
        with tolerating(404):  # already gone
            self.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=0 if force else None, _preload_content=False
            )

    def read_node(self, name: str) -> Manifest | None:
        """A node as plain data; None when there is no such node."""
        with tolerating(404):
            return json.loads(self.core.read_node(name, _preload_content=False).data)
        return None

    def list_runs(self, namespaces: list[str], timeout: float | None = None) -> list[Manifest]:
        """Runs in these namespaces, or in all of them when the list is empty."""
        if not namespaces:
            answer = self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=timeout
            )
            return answer["items"]
        return [
            run
            for namespace in namespaces
            for run in self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _request_timeout=timeout
            )["items"]
        ]

    def delete_run(self, namespace: str, name: str, finalizer: str) -> None:
        """Delete a finished run, letting go of our own finalizer first.

        A finished run needs no clean-up (its children go with their ownerReferences), and
        kopf, asked from inside the very handler that deletes the run, sometimes never
        released the object (seen once in ten suite runs). Other controllers' finalizers
        stay; the resourceVersion makes the patch refuse a run that changed meanwhile.
        """
        with contextlib.suppress(ApiException):  # gone, or changed: the next pass retries
            run = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            self.release_finalizer(run, finalizer)
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def delete_run_now(self, namespace: str, name: str) -> None:
        """Ask for a run's deletion; its finalizers (ours: the operator) then let it go."""
        with tolerating(404):
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def apply_crd(self, crd: Manifest, manager: str) -> None:
        """Server-side apply of an existing CRD: our fields become what `crd` says, taking
        them over from whoever set them before (helm's install of `crds/`)."""
        self.extensions.patch_custom_resource_definition(
            crd["metadata"]["name"],
            crd,
            field_manager=manager,
            force=True,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
        )

    def release_finalizer(self, run: Manifest, finalizer: str) -> None:
        """Take our finalizer off a run; other controllers' stay, and the resourceVersion
        makes the patch refuse a run that changed meanwhile (ApiException 409)."""
        meta = run["metadata"]
        others = [f for f in meta.get("finalizers", []) if f != finalizer]
        patch = {"metadata": {"finalizers": others, "resourceVersion": meta["resourceVersion"]}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], patch
        )


def cell_progress(
    address: str, timeout: float, tls: TlsMaterial | None = None
) -> CellProgress | None:
    """A cell's GetStatus, or None while it cannot answer (starting, gone, partitioned)."""
    with channel(address, tls=tls) as cell_channel:
        status = get_status(cell_channel, timeout)
    if status is None:
        return None
    scores = status.scores
    return CellProgress(status.generation, scores.get("mixture"), scores.get("accuracy"))


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def poll_cells(
    pods: dict[int, PodView],
    port: Callable[[int], int],
    timeout: float,
    tls: TlsMaterial | None = None,
    within: float | None = None,
) -> dict[int, CellProgress]:
    """GetStatus of every cell of a running pod (`pods`: each cell's, `port`: where a cell
    listens in it), in parallel, with the run's certificate, if any. With `within`, the
    answers that came in that many seconds: a pass over a big grid stays within its
    interval, and the cells asked in a random order are all heard from over a few passes
    (the status keeps each cell's last report)."""
    running = [
        (i, _address(p.ip, port(i))) for i, p in pods.items() if p.phase == "Running" and p.ip
    ]
    if not running:
        return {}
    random.shuffle(running)
    pool = ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(running)))
    asked = {pool.submit(cell_progress, address, timeout, tls): i for i, address in running}
    done, _ = wait(asked, timeout=within)
    pool.shutdown(wait=False, cancel_futures=True)  # those still asking end by `timeout`
    return {asked[f]: answer for f in done if (answer := f.result()) is not None}
