"""Nodes whose kubelets the test plays: Node objects that post a Ready heartbeat every
second until stopped, as a kubelet would, for the node lifecycle controller to watch."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from kubernetes import client

CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "4"}


class Heartbeats:
    """Nodes that post a Ready heartbeat every second until `stop(node)`; `close()` ends
    the beating and deletes them. `taints` go on every node (a NoSchedule one keeps pods
    off a node that is only there to be alive)."""

    def __init__(self, core: client.CoreV1Api, names: list[str], taints: list | None = None):
        self.core = core
        self.names = list(names)
        self.alive = set(names)
        self.done = threading.Event()
        for name in names:
            labels = {"kubernetes.io/hostname": name}
            body = {"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}
            core.create_node(body, _preload_content=False)
            status = {"capacity": CAPACITY, "allocatable": CAPACITY}
            core.patch_node_status(name, {"status": status}, _preload_content=False)
        self.beat()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def beat(self) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
        ready |= {"lastHeartbeatTime": now, "lastTransitionTime": now}
        for name in sorted(self.alive):
            self.core.patch_node_status(
                name, {"status": {"conditions": [ready]}}, _preload_content=False
            )

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.beat()

    def stop(self, name: str) -> None:
        self.alive.discard(name)

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        for name in self.names:
            self.core.delete_node(name, _preload_content=False)
