"""The one-node cluster of `hack/cluster.sh` for the end-to-end tests: a real kubelet with
containerd, a CNI bridge, kube-proxy, CoreDNS and SeaweedFS's S3 server, with the images
of `hack/images.sh` loaded and the chart installed by the real `helm`."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "hack" / "cluster.sh"
IMAGES = ROOT / "hack" / "images.sh"
CHART = ROOT / "helm" / "lipizzaner"
PACKAGES = ("containerd", "runc", "buildah", "mmdebstrap", "iptables", "catatonit", "go")


def unavailable_because() -> str | None:
    """Why a node cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a node needs root"
    missing = [tool for tool in PACKAGES if shutil.which(tool) is None]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("containernetworking-plugins")
    return f"{', '.join(missing)} not installed (see .ci/run)" if missing else None


@dataclass
class Node:
    """A started cluster: its folder, kubeconfig, tools and the S3 server's settings."""

    directory: Path
    timings: dict[str, float]

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def bin(self) -> Path:
        done = subprocess.run([CLUSTER, "bin"], capture_output=True, text=True, check=True)
        return Path(done.stdout.strip())

    def env(self) -> dict[str, str]:
        """The environment of a command on the host: the cluster's kubeconfig and the S3
        server's endpoint and credentials."""
        values = dict(line.split("=", 1) for line in self.s3_lines())
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            **{k: v for k, v in values.items() if k.startswith("AWS_")},
        }

    def s3_credentials(self) -> dict[str, str]:
        """boto3's keyword arguments for the bucket's credentials."""
        values = dict(line.split("=", 1) for line in self.s3_lines())
        return {
            "aws_access_key_id": values["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": values["AWS_SECRET_ACCESS_KEY"],
            "region_name": values["AWS_DEFAULT_REGION"],
        }

    def s3_lines(self) -> list[str]:
        return (self.directory / "s3.env").read_text().split()

    @property
    def s3_endpoint(self) -> str:
        ports = dict(p.split("=", 1) for p in (self.directory / "ports.env").read_text().split())
        return ports["S3_ENDPOINT"]

    @property
    def bucket(self) -> str:
        return dict(line.split("=", 1) for line in self.s3_lines())["S3_BUCKET"]

    def run(
        self, *command: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """A command on the host against the cluster (kubectl, helm, lipizzaner)."""
        done = subprocess.run(
            list(command), env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)}: exit {done.returncode}\n{done.stderr}")
        return done

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.bin / "kubectl"), *args, check=check)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """containerd's own client on the node's runtime (Kubernetes' namespace)."""
        socket = self.directory / "containerd" / "containerd.sock"
        return self.run("ctr", "--address", str(socket), "-n", "k8s.io", *args, check=check)

    def get(self, *args: str) -> Any:
        return yaml.safe_load(self.kubectl("get", *args, "-o", "yaml").stdout)

    def apply(self, manifest: dict[str, Any], namespace: str) -> None:
        path = self.directory / f"apply-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        self.kubectl("apply", "-n", namespace, "-f", str(path))


def start(directory: Path) -> Node:
    """The cluster started and the images loaded (stopped again if either fails)."""
    node = Node(directory, {})
    try:
        started = time.monotonic()
        subprocess.run([CLUSTER, "start", str(directory)], check=True, timeout=3600)
        node.timings["cluster start"] = time.monotonic() - started
        started = time.monotonic()
        subprocess.run([IMAGES, "build", str(directory)], check=True, timeout=3600)
        node.timings["images build and load"] = time.monotonic() - started
    except BaseException:
        stop(node)
        raise
    return node


def stop(node: Node) -> None:
    subprocess.run([CLUSTER, "stop", str(node.directory)], check=True, timeout=300)
