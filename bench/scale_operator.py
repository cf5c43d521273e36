"""The operator at the scale users grow into, against the real API server.

A control plane of hack/envtest.sh, the real `lipizzaner-operator` as a process, and this
script as the node: one Node object, Ready with room for every pod, onto which the real
scheduler binds the cells, and which marks each cell pod Running with an address where
one gRPC status server of its own answers for every cell (so the operator's status
polling runs at full size). For each run size, and for several runs at once:

- seconds from `kubectl apply` to every pod created;
- seconds from the last pod Running to the run's status saying every cell runs;
- the API server's requests per minute by verb in the steady state (its own
  `apiserver_request_total`, over `--window` seconds in which this script is quiet);
- the run object's bytes;
- the operator's CPU (cores) in the steady state and resident memory;
- the mean reconcile pass (`lipizzaner_operator_reconcile_seconds`).

    python bench/scale_operator.py --sizes 16 64 256 1024 --runs-at-once 10 --plot scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from common import run_manifest
from kubernetes import client, config
from lipizzaner_cell.exchange.server import CellService, CentreBoard, start_server
from lipizzaner_cell.executors.local_processes import free_port_block
from lipizzaner_cell.runtime.cell_life import CellStatusBoard
from lipizzaner_core.crd import GROUP, PLURAL, VERSION

ROOT = Path(__file__).resolve().parents[1]
ENVTEST = ROOT / "hack" / "envtest.sh"
CRD = ROOT / "crds" / "lipizzanerruns.yaml"
GRPC_PORT = 50051  # the cells' port the operator dials (CellDefaults)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--runs-at-once", type=int, default=10, help="runs of 64 cells at once")
    parser.add_argument("--window", type=float, default=30.0, help="steady-state seconds")
    parser.add_argument("--reconcile-seconds", type=float, default=5.0)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="plot each figure against cells into this PNG")
    return parser.parse_args(argv)


@contextmanager
def control_plane() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="lipizzaner-scale-"))
    subprocess.run([ENVTEST, "start", str(directory)], check=True, stdout=subprocess.DEVNULL)
    try:
        yield directory
    finally:
        subprocess.run([ENVTEST, "stop", str(directory)], check=True)


def kubectl(plane: Path, *args: str) -> str:
    binary = Path(subprocess.check_output([ENVTEST, "bin"], text=True).strip()) / "kubectl"
    done = subprocess.run(
        [str(binary), f"--kubeconfig={plane / 'kubeconfig'}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def api_requests(plane: Path) -> Counter[str]:
    """The API server's `apiserver_request_total`, summed by verb, and its LISTs of pods
    apart (`pods LIST`)."""
    ports = dict(item.split("=", 1) for item in (plane / "ports.env").read_text().split())
    token = (plane / "admin-token").read_text().strip()
    request = urllib.request.Request(
        f"{ports['SERVER']}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    context = ssl.create_default_context(cafile=str(plane / "pki" / "ca.crt"))
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
        text = answer.read().decode()
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            verb = re.search(r'verb="([A-Z]+)"', line)
            if verb:
                count = float(line.rsplit(" ", 1)[1])
                totals[verb.group(1)] += count
                if verb.group(1) == "LIST" and 'resource="pods"' in line:
                    totals["pods LIST"] += count
    return totals


def operator_metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_megabytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait(what: str, condition: Callable[[], Any], timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise SystemExit(f"scale_operator: timed out waiting for {what}")


class Bench:
    def __init__(self, plane: Path, namespace: str, operator_pid: int, metrics_port: int):
        self.plane, self.namespace = plane, namespace
        self.operator_pid, self.metrics_port = operator_pid, metrics_port
        api = config.new_client_from_config(str(plane / "kubeconfig"))
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

    def add_node(self) -> None:
        """One Node, Ready, with room for every pod (no kubelet: this script is it)."""
        room = {"cpu": "100000", "memory": "100000Gi", "pods": "5000", "nvidia.com/gpu": "5000"}
        name = "scale-node"
        self.core.create_node({"metadata": {"name": name}}, _preload_content=False)
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
        status = {"capacity": room, "allocatable": room, "conditions": [ready]}
        self.core.patch_node_status(name, {"status": status}, _preload_content=False)
        self.core.patch_node(name, {"spec": {"taints": []}}, _preload_content=False)

    def pods(self) -> list[dict]:
        found = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        return json.loads(found.data)["items"]

    def run_object(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )

    def apply(self, names: list[str], side: int) -> None:
        documents = [
            run_manifest(
                name,
                side,
                side,
                generations=1000,
                dataset={"name": "gaussian-ring"},
                output={"uri": f"file:///tmp/lipizzaner-scale/{name}"},
            )
            for name in names
        ]
        path = self.plane / f"runs-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump_all(documents))
        kubectl(self.plane, "apply", "-n", self.namespace, "-f", str(path))

    def play_node(self, pods: list[dict]) -> None:
        """What kubelets would report: every pod Running, at the status server's address."""
        status = {"status": {"phase": "Running", "podIP": "127.0.0.1"}}

        def run(pod: dict) -> None:
            self.core.patch_namespaced_pod_status(
                pod["metadata"]["name"], self.namespace, status, _preload_content=False
            )

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(run, pods))

    def measure(self, names: list[str], side: int, window: float) -> dict[str, Any]:
        cells = side * side * len(names)
        applied = time.monotonic()
        self.apply(names, side)
        wait(f"{cells} pods", lambda: len(self.pods()) == cells)
        created = time.monotonic() - applied

        def bound() -> list[dict] | None:
            pods = self.pods()
            return pods if all(pod["spec"].get("nodeName") for pod in pods) else None

        pods = wait("every pod bound by the scheduler", bound)
        self.play_node(pods)
        running = time.monotonic()

        def all_running() -> bool:
            for name in names:
                counts = (self.run_object(name).get("status") or {}).get("cells") or {}
                if counts.get("running") != side * side:
                    return False
            return True

        wait("every run's status to say its cells run", all_running)
        noticed = time.monotonic() - running
        before_requests, before_cpu = api_requests(self.plane), cpu_seconds(self.operator_pid)
        passes = operator_metric(self.metrics_port, "lipizzaner_operator_reconcile_seconds_count")
        spent = operator_metric(self.metrics_port, "lipizzaner_operator_reconcile_seconds_sum")
        time.sleep(window)
        requests = api_requests(self.plane) - before_requests
        verbs = {verb: count for verb, count in requests.items() if verb != "pods LIST"}
        cpu = (cpu_seconds(self.operator_pid) - before_cpu) / window
        passes = (
            operator_metric(self.metrics_port, "lipizzaner_operator_reconcile_seconds_count")
            - passes
        )
        spent = (
            operator_metric(self.metrics_port, "lipizzaner_operator_reconcile_seconds_sum") - spent
        )
        size = max(len(json.dumps(self.run_object(n), separators=(",", ":"))) for n in names)
        result = {
            "runs": len(names),
            "cells": side * side,
            "pods created (s)": round(created, 1),
            "status says Running (s)": round(noticed, 1),
            "run object (KB)": round(size / 1024, 1),
            "operator CPU (cores)": round(cpu, 3),
            "operator RSS (MB)": round(rss_megabytes(self.operator_pid)),
            "pass (s)": round(spent / passes, 3) if passes else None,
            # Every client's requests (the scheduler's and controllers' too) per pass.
            "requests / pass": round(sum(verbs.values()) / passes, 1) if passes else None,
            "pod LISTs /min": round(requests["pods LIST"] * 60 / window),
            **{f"{verb} /min": round(count * 60 / window) for verb, count in sorted(verbs.items())},
        }
        for name in names:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )

        def gone() -> bool:  # as the node's kubelet: confirm each pod's deletion
            pods = self.pods()
            for pod in pods:
                if pod["metadata"].get("deletionTimestamp"):
                    self.core.delete_namespaced_pod(
                        pod["metadata"]["name"], self.namespace, grace_period_seconds=0
                    )
            return not pods

        wait("the runs and their pods gone", gone)
        return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    board = CellStatusBoard(0, 1000, 0)
    board.update(generation=7, scores={"mixture": 0.5})
    server, _ = start_server(
        CellService(CentreBoard(), lambda: board.message), GRPC_PORT, "127.0.0.1"
    )
    results = []
    try:
        with control_plane() as plane:
            kubectl(plane, "apply", "--server-side", "-f", str(CRD))
            kubectl(plane, "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}")
            namespace = f"scale-{uuid.uuid4().hex[:6]}"
            kubectl(plane, "create", "namespace", namespace)
            wait(
                "the default ServiceAccount",
                lambda: "default" in kubectl(plane, "get", "sa", "-n", namespace),
            )
            metrics_port = free_port_block(2)
            health_port = metrics_port + 1
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lipizzaner_operator.operator_main",
                    "-n",
                    namespace,
                    f"--reconcile-seconds={args.reconcile_seconds}",
                    f"--metrics-port={metrics_port}",
                    f"--liveness=http://127.0.0.1:{health_port}/healthz",
                ],
                env={**os.environ, "KUBECONFIG": str(plane / "kubeconfig")},
                stdout=subprocess.DEVNULL,
                stderr=(plane / "operator.log").open("w"),
            )
            try:
                bench = Bench(plane, namespace, operator.pid, metrics_port)
                bench.add_node()
                wait("the operator's metrics", lambda: _answers(metrics_port))
                for cells in args.sizes:
                    side = round(cells**0.5)
                    results.append(bench.measure([f"grid-{side}"], side, args.window))
                    print(results[-1], flush=True)
                if args.runs_at_once:
                    names = [f"many-{i}" for i in range(args.runs_at_once)]
                    results.append(bench.measure(names, 8, args.window))
                    print(results[-1], flush=True)
            finally:
                operator.terminate()
                operator.wait(timeout=60)
    finally:
        server.stop(None)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)


def _answers(port: int) -> bool:
    try:
        operator_metric(port, "lipizzaner_operator_pod_creations_total")
    except OSError:
        return False
    return True


def print_table(results: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for result in results for key in result))
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for result in results:
        print("| " + " | ".join(str(result.get(c, "-")) for c in columns) + " |")


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = [r for r in results if r["runs"] == 1]
    figures = [k for k in single[0] if k not in ("runs", "cells")]
    rows = (len(figures) + 2) // 3
    figure, axes = plt.subplots(rows, 3, figsize=(12, 3 * rows))
    for axis, key in zip(axes.flat, figures, strict=False):
        axis.plot([r["cells"] for r in single], [r.get(key) or 0 for r in single], "o-")
        axis.set_xscale("log", base=2)
        axis.set_ylim(bottom=0)  # from zero: a flat figure looks flat
        axis.set_title(key)
        axis.set_xlabel("cells in the run")
    for axis in list(axes.flat)[len(figures) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
