"""The cell contract: what the launcher, the operator and the cell agree on.

One place for each fact: the cell's flags and the environment variables they may come
from, exit codes, ports, pod labels and the spec file's path in a pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of every command and of the cell: 2 is never worth a retry."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2  # bad configuration or arguments
    TIMED_OUT = 3  # `lipizzaner submit --wait` gave up waiting; the run goes on


# How a cell's log line begins when it refuses its configuration (exit 2): the launcher
# repeats that line as the run's one-line reason.
CANNOT_START = "cannot start: "


def refusal_in(log: str) -> str | None:
    """Why a cell refused its configuration, from its log (or its pod's termination
    message, which holds the log's end): the last `cannot start:` line's reason."""
    found = [line for line in log.splitlines() if CANNOT_START in line]
    return found[-1].split(CANNOT_START, 1)[1].strip() if found else None


GRPC_PORT = 50051
CELL_GROUP = 10001  # the cell image's group; pods' fsGroup, so mounted Secrets are readable
METRICS_PORT = 9090
SPEC_FILE = "/etc/lipizzaner/run.yaml"  # where a pod mounts its run's manifest
TLS_DIR = "/etc/lipizzaner/tls"  # where a pod mounts its run's certificates
RUN_LABEL, CELL_LABEL = "lipizzaner.io/run", "lipizzaner.io/cell"
# The ensemble Job's command (`spec.ensemble`): the cell image's CLI, reading the mounted spec.
ENSEMBLE_SEARCH_COMMAND = ["lipizzaner", "ensemble", "optimize", "--run-spec", SPEC_FILE]
CONTROLLER_NAME = "lipizzaner.io/operator"  # spec.managedBy of the runs this operator runs
# Kueue's plain-pod-group contract: the run's queue label, copied onto each cell pod.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
# "false" once the run has ended: Kueue then finishes the group's Workload and frees its
# quota (a retriable group would wait for replacement pods).
KUEUE_RETRIABLE_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"
# The scheduling gate Kueue's webhook puts on a managed pod until its group is admitted.
KUEUE_ADMISSION_GATE = "kueue.x-k8s.io/admission"
ROW_LABEL, COL_LABEL = "lipizzaner.io/row", "lipizzaner.io/col"
# Gang scheduling: how a cell pod names its PodGroup, for coscheduling and for Volcano.
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_ANNOTATION = "scheduling.k8s.io/group-name"


@dataclass(frozen=True)
class CellFlag:
    """One `lipizzaner-cell` flag; its value may also come from `variable`."""

    flag: str
    variable: str
    kind: type
    default: str | None
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


CELL_FLAGS: dict[str, CellFlag] = {
    flag.name: flag
    for flag in (
        CellFlag("--run-spec", "LIPIZZANER_RUN_SPEC", str, None, "LipizzanerRun manifest file"),
        CellFlag(
            "--cells",
            "LIPIZZANER_CELLS",
            str,
            None,
            "the cells this process hosts: an index (row-major) or FIRST-LAST",
        ),
        CellFlag(
            "--peer-template",
            "LIPIZZANER_PEER_TEMPLATE",
            str,
            "127.0.0.1:{port}",
            "a peer's address from {run}, {index}, {pod} (its pod's name), {port}",
        ),
        CellFlag(
            "--grpc-port-base", "LIPIZZANER_GRPC_PORT", int, str(GRPC_PORT), "gRPC port of cell 0"
        ),
        CellFlag(
            "--port-by",
            "LIPIZZANER_PORT_BY",
            str,
            "slot",
            "cell i listens on base + i (`cell`: every cell on one machine) or on base + its "
            "slot in its pod (`slot`)",
            ("cell", "slot"),
        ),
        CellFlag(
            "--metrics-port",
            "LIPIZZANER_METRICS_PORT",
            int,
            None,
            "serve the process's /metrics on this base port, offset like its first cell's "
            "gRPC port; default: no metrics",
        ),
        CellFlag("--listen-host", "LIPIZZANER_LISTEN_HOST", str, "0.0.0.0", "address to listen on"),
        CellFlag("--output", "LIPIZZANER_OUTPUT", str, None, "override spec.output.uri"),
        CellFlag(
            "--threads",
            "LIPIZZANER_THREADS",
            int,
            None,
            "torch intra-op threads (default: the container's CPU limit, else all cores)",
        ),
        CellFlag(
            "--mmap-threshold",
            "LIPIZZANER_MMAP_THRESHOLD",
            int,
            str(4 << 20),
            "glibc: allocations from this many bytes up are mapped apart and given back when "
            "freed, and each heap keeps up to twice this free at its top (0: glibc's own "
            "thresholds, which climb and keep freed memory per thread)",
        ),
        CellFlag(
            "--tls-dir",
            "LIPIZZANER_TLS_DIR",
            str,
            None,
            "serve and pull over mutual TLS with ca.crt, tls.crt and tls.key from here",
        ),
        CellFlag(
            "--restarts",
            "LIPIZZANER_RESTARTS",
            int,
            "0",
            "how often this cell was restarted (reported in its status)",
        ),
        CellFlag(
            "--attempt",
            "LIPIZZANER_ATTEMPT",
            int,
            None,
            "this start's number, which names its kept log (default: the next one free in "
            "the output, so no start overwrites another's log)",
        ),
        CellFlag(
            "--parent-pid",
            "LIPIZZANER_PARENT_PID",
            int,
            None,
            "stop at a checkpoint when this process (the local launcher) is gone",
        ),
    )
}


def cell_arguments(**values: object) -> list[str]:
    """The cell's command-line arguments for these values (flag names as keywords)."""
    arguments = []
    for name, value in values.items():
        if value is not None:
            arguments += [CELL_FLAGS[name].flag, str(value)]
    return arguments


def cell_environment(**values: object) -> dict[str, str]:
    """The same values as the environment variables a pod passes them in."""
    return {CELL_FLAGS[name].variable: str(v) for name, v in values.items() if v is not None}
