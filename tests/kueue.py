"""Kueue's real controller manager against a test control plane: its CRDs, its pod and
Kueue webhooks (served on 127.0.0.1 with a certificate of a CA made here, registered with
the API server by URL), a ClusterQueue with a quota, a LocalQueue and two priority
classes. Built by `hack/kueue.sh` from its Go module; only the plain-pod integration is
on, and only in namespaces labelled `kueue-managed: "true"`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envtest import ROOT, ControlPlane, wait_for
from lipizzaner_cell.executors.local_processes import free_port_block

SCRIPT = ROOT / "hack" / "kueue.sh"
API = "kueue.x-k8s.io/v1beta2"
MANAGED = {"kueue-managed": "true"}  # the namespaces whose pods Kueue manages
QUEUE = "cells"  # the LocalQueue of every managed namespace here


def kueue_dir() -> Path:
    done = subprocess.run([SCRIPT, "dir"], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def kueue_unavailable() -> str | None:
    """Why Kueue cannot run here, or None when it can."""
    if not (kueue_dir() / "kueue").exists() and shutil.which("go") is None:
        return "Kueue is not built and there is no Go toolchain to build it (see .ci/run)"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "Kueue's manager needs root and unshare here (its certificate path is fixed)"
    return None


def in_own_etc(directory: Path, command: list[str]) -> list[str]:
    """`command` in a mount namespace of its own whose /etc also has kueue/metrics/certs
    (an overlay): without internal certificate management, Kueue's manager reads its
    metrics certificate from that fixed path."""
    upper, work = directory / "etc-upper", directory / "etc-work"
    certs = upper / "kueue" / "metrics" / "certs"
    certs.mkdir(parents=True)
    work.mkdir()
    for name in ("tls.crt", "tls.key"):
        shutil.copy(directory / name, certs / name)
    mount = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'{mount} && exec "$@"',
        "sh",
        *command,
    ]


def serving_certificate(directory: Path) -> bytes:
    """A CA and the webhook server's certificate for 127.0.0.1 (tls.crt, tls.key in
    `directory`); the CA's certificate, for the webhooks' caBundle."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kueue-webhook-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM)


def webhooks(source: Path, port: int, ca: bytes) -> list[dict[str, Any]]:
    """Kueue's own webhook configurations, for pods and Kueue's objects only, pointed at
    the manager on 127.0.0.1 instead of its in-cluster Service."""
    bundle = base64.b64encode(ca).decode()
    configurations = []
    for document in yaml.safe_load_all(source.read_text()):
        kept = []
        for hook in document["webhooks"]:
            groups = {g for rule in hook["rules"] for g in rule["apiGroups"]}
            if not groups <= {"", "kueue.x-k8s.io"}:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
            if groups == {""}:  # pods: only those of the managed namespaces
                hook["namespaceSelector"] = {"matchLabels": MANAGED}
            kept.append(hook)
        document["metadata"]["name"] = f"kueue-{document['metadata']['name']}"
        document["webhooks"] = kept
        configurations.append(document)
    return configurations


def configuration(directory: Path, webhook_port: int, health_port: int) -> Path:
    path = directory / "config.yaml"
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(directory)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "managedJobsNamespaceSelector": {"matchLabels": MANAGED},
        "integrations": {"frameworks": ["pod"]},
        "featureGates": {"VisibilityOnDemand": False},  # an aggregated API: not needed here
    }
    path.write_text(yaml.safe_dump(config))
    return path


def queues(quota: dict[str, str]) -> list[dict[str, Any]]:
    """A ResourceFlavor, a ClusterQueue with `quota` that preempts lower priorities, and
    the priority classes `low` (10) and `high` (1000)."""
    resources = [{"name": name, "nominalQuota": value} for name, value in quota.items()]
    return [
        {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": "default"}},
        {
            "apiVersion": API,
            "kind": "ClusterQueue",
            "metadata": {"name": "cluster"},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": list(quota),
                        "flavors": [{"name": "default", "resources": resources}],
                    }
                ],
            },
        },
        *(
            {
                "apiVersion": API,
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
            for name, value in (("low", 10), ("high", 1000))
        ),
    ]


def local_queue(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "LocalQueue",
        "metadata": {"name": QUEUE, "namespace": namespace},
        "spec": {"clusterQueue": "cluster"},
    }


@contextmanager
def kueue(plane: ControlPlane, directory: Path, quota: dict[str, str]) -> Iterator[None]:
    """Kueue's manager on `plane`, serving its webhooks, with the queues of `queues`."""
    subprocess.run([SCRIPT, "build"], check=True, timeout=3600)
    source = kueue_dir()
    plane.apply([yaml.safe_load(p.read_text()) for p in sorted((source / "crds").glob("*.yaml"))])
    plane.wait_established("crd", "-l", "", "--all")
    webhook_port = free_port_block(2)
    health_port = webhook_port + 1
    ca = serving_certificate(directory)
    plane.kubectl("create", "namespace", "kueue-system")
    with (directory / "kueue.log").open("w") as log:
        config = configuration(directory, webhook_port, health_port)
        manager = subprocess.Popen(
            in_own_etc(
                directory,
                [str(source / "kueue"), f"--config={config}", f"--kubeconfig={plane.kubeconfig}"],
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            "Kueue's manager to be ready (see kueue.log)",
            lambda: _ready(f"http://127.0.0.1:{health_port}/readyz", manager, directory),
        )
        plane.apply(webhooks(source / "webhooks.yaml", webhook_port, ca))
        wait_for("Kueue's webhooks to answer", lambda: _queues_applied(plane, quota))
        yield
    finally:
        manager.terminate()
        try:
            manager.wait(timeout=30)
        except subprocess.TimeoutExpired:
            manager.kill()


def _ready(url: str, manager: subprocess.Popen, directory: Path) -> bool:
    if manager.poll() is not None:
        log = (directory / "kueue.log").read_text()[-3000:]
        raise AssertionError(f"Kueue's manager exited {manager.returncode}:\n{log}")
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def _queues_applied(plane: ControlPlane, quota: dict[str, str]) -> bool:
    """The queues applied through Kueue's own webhooks (they refuse while not served)."""
    try:
        plane.apply(queues(quota))
    except AssertionError:
        return False
    return True
