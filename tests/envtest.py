"""A real Kubernetes control plane for the tests: `hack/envtest.sh` (etcd, kube-apiserver,
kube-controller-manager on 127.0.0.1), started once per test session.

There is no kubelet: tests play it, setting pod phases and exit codes through the pods'
status subresource. Each test gets a namespace of its own (`Cluster.namespace`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from lipizzaner_core.crd import crd_manifest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "envtest.sh"
CRD_FILE = ROOT / "crds" / "lipizzanerruns.yaml"
GROUP, VERSION, PLURAL = "lipizzaner.io", "v1alpha1", "lipizzanerruns"
# The first build takes minutes; afterwards the control plane is ready in seconds.
START_TIMEOUT = float(os.environ.get("LIPIZZANER_ENVTEST_START_TIMEOUT", "2400"))


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 180.0) -> Any:
    """Poll until `condition()` is truthy; fail naming `what` after `timeout` seconds.

    The deadline is generous on purpose: the suite must pass on a busy 2-core machine.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def older_crd() -> dict:
    """This CRD as an older release had it: no `failurePolicy.lostNodeSeconds` in the
    spec, no `bestAccuracy` in the status."""
    crd = copy.deepcopy(crd_manifest())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    failure_policy = schema["spec"]["properties"]["failurePolicy"]
    del failure_policy["properties"]["lostNodeSeconds"]
    failure_policy["default"].pop("lostNodeSeconds")
    schema["spec"]["properties"]["failurePolicy"] = failure_policy
    del schema["status"]["properties"]["bestAccuracy"]
    return crd


def binaries() -> Path:
    """Where hack/envtest.sh keeps (or will build) kube-apiserver and friends."""
    answer = subprocess.run([SCRIPT, "bin"], capture_output=True, text=True, check=True)
    return Path(answer.stdout.strip())


def control_plane_available() -> str | None:
    """Why the control plane cannot run here, or None when it can."""
    for tool in ("etcd", "openssl", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (see .ci/run)"
    if not (binaries() / "kube-apiserver").exists() and shutil.which("go") is None:
        return "no kube-apiserver built and no Go toolchain to build one (see .ci/run)"
    return None


class ControlPlane:
    """The started control plane: its directory, admin kubeconfig and clients."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.kubeconfig = directory / "kubeconfig"
        self.bin = Path(
            subprocess.run([SCRIPT, "bin"], capture_output=True, text=True).stdout.strip()
        )

    def start(self, controllers: str = "", controller_flags: str = "") -> ControlPlane:
        """Start it; `controllers` (comma-separated) and `controller_flags` are added to
        the controller manager's (hack/envtest.sh)."""
        env = {
            **os.environ,
            "LIPIZZANER_ENVTEST_CONTROLLERS": controllers,
            "LIPIZZANER_ENVTEST_CONTROLLER_FLAGS": controller_flags,
        }
        subprocess.run(
            [SCRIPT, "start", str(self.directory)], check=True, timeout=START_TIMEOUT, env=env
        )
        return self

    def pid(self, name: str) -> int:
        """The process id of one of its processes (`kube-apiserver`, `etcd`, ...)."""
        for line in (self.directory / "pids").read_text().splitlines():
            process, pid = line.split()
            if process == name:
                return int(pid)
        raise KeyError(name)

    def stop(self) -> None:
        subprocess.run([SCRIPT, "stop", str(self.directory)], check=True, timeout=120)

    @property
    def server(self) -> str:
        return yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]

    @property
    def ca_file(self) -> Path:
        return self.directory / "pki" / "ca.crt"

    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        return config.new_client_from_config(str(kubeconfig or self.kubeconfig))

    def kubectl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def apply(self, objects: list[dict], *extra: str) -> None:
        """`kubectl apply --server-side` with strict field validation, as an installer would."""
        done = subprocess.run(
            [
                str(self.bin / "kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                "apply",
                "--server-side",
                "--field-manager=tests",
                "--validate=strict",
                *extra,
                "-f",
                "-",
            ],
            input=yaml.safe_dump_all(objects),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr

    def install_crd(self) -> None:
        """Apply the generated CRD (server-side, strict) and wait until it is served."""
        done = self.kubectl("apply", "--server-side", "--field-manager=tests", "-f", str(CRD_FILE))
        assert done.returncode == 0, done.stderr
        self.wait_established(f"crd/{PLURAL}.{GROUP}")

    def wait_established(self, *crds: str, timeout: float = 180.0) -> None:
        """Wait until these CRDs (`crd/<name>`, or kubectl's selectors) are served.

        `kubectl wait` fails at once instead of waiting while a new CRD has no conditions
        yet (".status.conditions accessor error"), which a busy machine makes likely, so it
        is asked again until the deadline."""

        def established() -> bool:
            done = self.kubectl("wait", "--for=condition=Established", "--timeout=10s", *crds)
            return done.returncode == 0

        wait_for(f"{' '.join(crds)} to be established", established, timeout)

    def token_kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig for another identity (a ServiceAccount's token) on the same server."""
        document = yaml.safe_load(self.kubeconfig.read_text())
        document["users"][0]["user"] = {"token": token}
        path.write_text(yaml.safe_dump(document))
        return path


@contextlib.contextmanager
def private_plane(directory: Path, controllers: str = "", controller_flags: str = ""):
    """A control plane of one module's own, the CRD installed, for tests that would disturb
    the others' (freezing the API server, replacing the CRD, node controllers)."""
    problem = control_plane_available()
    if problem is not None:
        from conftest import unavailable

        unavailable(f"the Kubernetes control plane cannot start: {problem}")
    plane = ControlPlane(directory).start(controllers, controller_flags)
    try:
        plane.install_crd()
        yield plane
    finally:
        plane.stop()


class Cluster:
    """One test's view of the control plane: its own namespace, the run, its pods."""

    def __init__(self, plane: ControlPlane, prefix: str) -> None:
        self.plane = plane
        self.api = plane.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = self.create_namespace(prefix)

    def create_namespace(self, prefix: str) -> str:
        """A fresh namespace, usable once its default ServiceAccount exists (the
        controller manager creates it; pods are refused before that)."""
        name = f"{prefix[:40].rstrip('-')}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
        wait_for(
            f"the default ServiceAccount of {name}",
            lambda: self._exists(
                lambda: self.core.read_namespaced_service_account("default", name)
            ),
        )
        return name

    @staticmethod
    def _exists(read: Callable[[], Any]) -> bool:
        try:
            read()
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def get(self, path: str) -> dict | None:
        """GET a raw API path as JSON; None when it is not found."""
        try:
            response = self.api.call_api(
                path, "GET", auth_settings=["BearerToken"], _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return yaml.safe_load(response.data)

    def create_run(self, manifest: dict, namespace: str | None = None) -> dict:
        namespace = namespace or self.namespace
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, manifest, field_validation="Strict"
        )

    def run(self, name: str, namespace: str | None = None) -> dict | None:
        namespace = namespace or self.namespace
        return self.get(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}")

    def status(self, name: str, namespace: str | None = None) -> dict:
        return (self.run(name, namespace) or {}).get("status") or {}

    def patch_spec(self, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def items(self, plural: str, namespace: str | None = None, api: str = "/api/v1") -> list:
        namespace = namespace or self.namespace
        return (self.get(f"{api}/namespaces/{namespace}/{plural}") or {}).get("items", [])

    def pods(self, namespace: str | None = None) -> dict[int, dict]:
        """Live cell pods by cell index (pods being deleted are left out)."""
        return {
            int(p["metadata"]["labels"]["lipizzaner.io/cell"]): p
            for p in self.items("pods", namespace)
            if "lipizzaner.io/cell" in p["metadata"].get("labels", {})
            and not p["metadata"].get("deletionTimestamp")
        }

    def set_pod_status(self, name: str, status: dict) -> None:
        """Play the kubelet: write a pod's status through its subresource."""
        self.core.patch_namespaced_pod_status(
            name, self.namespace, {"status": status}, _preload_content=False
        )

    def events(self) -> list[dict]:
        return self.items("events")

    def delete_namespace(self, namespace: str) -> None:
        """Let go of its runs (no operator is left to remove their finalizers), then
        delete it; the namespace controller removes the rest."""
        for run in self.items(PLURAL, namespace, api=f"/apis/{GROUP}/{VERSION}"):
            name = run["metadata"]["name"]
            try:
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": None}}
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
        self.core.delete_namespace(namespace, _preload_content=False)

    def cleanup(self) -> None:
        self.delete_namespace(self.namespace)
