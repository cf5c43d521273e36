"""`lipizzaner-operator`: the kopf operator for LipizzanerRun, with our settings baked in."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from lipizzaner_core import __version__

from lipizzaner_operator.handlers import OperatorConfig, operator_settings, register
from lipizzaner_operator.kube import (
    CredentialsError,
    KubeClient,
    connection_info,
    load_configuration,
)
from lipizzaner_operator.leader import LeaderElection
from lipizzaner_operator.maintenance import (
    ChoreError,
    apply_crd,
    delete_runs,
    release_finalizers,
)
from lipizzaner_operator.metrics import OperatorMetrics
from lipizzaner_operator.names import LEASE_NAME
from lipizzaner_operator.pod_cache import WatchTimeouts
from lipizzaner_operator.render import CellDefaults

DEFAULTS = CellDefaults()


def env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    default: str | int | float,
    help: str,
    variable: str | None = None,
) -> None:
    """A flag of the default's type whose default comes from its LIPIZZANER_* variable
    (`--cell-image`: LIPIZZANER_CELL_IMAGE), named in its help."""
    variable = variable or "LIPIZZANER_" + flag.removeprefix("--").replace("-", "_").upper()
    kind = type(default)
    raw = os.environ.get(variable)
    parser.add_argument(
        flag,
        type=kind,
        default=kind(raw) if raw else default,
        help=f"{help} [{variable}, default %(default)s]",
    )


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="lipizzaner-operator",
        description="Watch LipizzanerRun objects and run their cells as pods (wraps `kopf run`). "
        "Flags default to the LIPIZZANER_* variables named in their help.",
    )
    parser.add_argument("--version", action="version", version=f"lipizzaner {__version__}")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[n for n in env("LIPIZZANER_WATCH_NAMESPACES", "").split(",") if n],
        help="watch only this namespace (repeatable) [LIPIZZANER_WATCH_NAMESPACES, "
        "comma-separated; default: all namespaces]",
    )
    env_option(parser, "--liveness", "http://0.0.0.0:8080/healthz", "liveness endpoint URL")
    env_option(
        parser, "--cell-image", DEFAULTS.image, "image of runs that name none in spec.cell.image"
    )
    env_option(parser, "--reconcile-seconds", 5.0, "how often each run is reconciled")
    timeouts = WatchTimeouts()
    env_option(
        parser,
        "--watch-server-timeout",
        timeouts.server,
        "seconds after which the API server ends each watch request (then list and watch again)",
    )
    env_option(
        parser,
        "--watch-client-timeout",
        timeouts.client,
        "seconds before a watch request is dropped",
    )
    env_option(
        parser,
        "--watch-connect-timeout",
        timeouts.connect,
        "seconds to connect for a watch request",
    )
    env_option(
        parser,
        "--watch-liveness-seconds",
        300.0,
        "the liveness endpoint fails once the watch has missed a run the API server lists, "
        "or the runs could not be listed, for this long",
    )
    env_option(
        parser,
        "--metrics-port",
        8000,
        "serve Prometheus /metrics on this port, 0 for none",
        variable="LIPIZZANER_OPERATOR_METRICS_PORT",
    )
    parser.add_argument(
        "--network-policy-namespace",
        default=env("LIPIZZANER_NETWORK_POLICY_NAMESPACE") or None,
        metavar="NAMESPACE",
        help="give each run a NetworkPolicy that admits only its own cells and the operator "
        "pods of NAMESPACE to the cells' gRPC port [LIPIZZANER_NETWORK_POLICY_NAMESPACE, "
        "default: no policies]",
    )
    parser.add_argument(
        "--leader-election",
        action="store_true",
        default=env("LIPIZZANER_LEADER_ELECTION", "").lower() in ("1", "true"),
        help="run as one of several replicas: only the holder of the Lease "
        "lipizzaner-operator reconciles [LIPIZZANER_LEADER_ELECTION, default off]",
    )
    parser.add_argument(
        "--lease-namespace",
        default=env("LIPIZZANER_LEASE_NAMESPACE") or env("POD_NAMESPACE") or "default",
        help="namespace of the Lease [LIPIZZANER_LEASE_NAMESPACE, else POD_NAMESPACE, "
        "default %(default)s]",
    )
    env_option(
        parser,
        "--lease-seconds",
        15.0,
        "a standby takes over a Lease not renewed for this long; the leader renews every "
        "seventh of it and stands down after two thirds without a renewal",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    release = commands.add_parser(
        "release-finalizers",
        help="let runs being deleted go, once no operator is left to do it",
        description="Take the operator's finalizer off every LipizzanerRun that is being "
        "deleted, so that `kubectl delete` of a run does not hang after the operator was "
        "uninstalled. Their pods go with them (owner references); outputs stay.",
    )
    delete = commands.add_parser(
        "delete-runs",
        help="delete every run and wait until the operator has let them go (before an "
        "uninstall: the chart's pre-delete hook)",
        description="Delete every LipizzanerRun and wait until the operator has finalized "
        "each (its cells stopped, its pods gone). Outputs stay. Exits 1 naming the runs "
        "left when the timeout passes.",
    )
    delete.add_argument(
        "--timeout", type=float, default=240.0, help="seconds to wait (default %(default)s)"
    )
    for chore in (release, delete):
        chore.add_argument(
            "-n",
            "--namespace",
            dest="chore_namespaces",
            action="append",
            default=[],
            metavar="NAMESPACE",
            help="only in this namespace (repeatable; default: the watched namespaces, "
            "LIPIZZANER_WATCH_NAMESPACES, else all)",
        )
    commands.add_parser(
        "apply-crd",
        help="bring the cluster's CRD up to this version's (server-side apply; the chart's "
        "pre-upgrade hook)",
        description="Server-side apply this version's LipizzanerRun CRD over the installed "
        "one, which `helm upgrade` never updates: new spec fields are then accepted and new "
        "status fields kept. Needs get and patch on the CRD.",
    )
    return parser


def chore(args: argparse.Namespace, kube: KubeClient) -> None:
    """One of the subcommands (`maintenance.py`), said line by line."""
    if args.command == "apply-crd":
        print(f"applied the CRD {apply_crd(kube)}")
        return
    namespaces = args.chore_namespaces or args.namespace
    if args.command == "release-finalizers":
        released = release_finalizers(kube, namespaces)
        for name in released:
            print(f"released {name}")
        print(f"{len(released)} run(s) released")
    else:
        deleted = delete_runs(kube, namespaces, args.timeout, lambda line: print(line, flush=True))
        print(f"{deleted} run(s) deleted")


def identity() -> str:
    """This replica's name in the Lease: its pod's name, else host and process."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        configuration = load_configuration()
        connection_info(configuration)  # refuse now, not with 403s later
    except CredentialsError as exc:
        print(f"lipizzaner-operator: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    api = client.ApiClient(configuration)
    kube = KubeClient(api)
    if args.command:
        try:
            chore(args, kube)
        except ChoreError as exc:
            print(f"lipizzaner-operator: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except ApiException as exc:
            print(
                f"lipizzaner-operator: the API server said {exc.status} {exc.reason}",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        return
    metrics = OperatorMetrics(lambda: kube.list_runs(args.namespace))
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    leading = None
    stop = threading.Event()
    if args.leader_election:
        election = LeaderElection(
            client.CoordinationV1Api(api),
            args.lease_namespace,
            LEASE_NAME,
            identity(),
            lease_seconds=args.lease_seconds,
            renew_deadline_seconds=args.lease_seconds * 2 / 3,
            renew_seconds=args.lease_seconds / 7,
        )
        election.start(stop)
        leading = election.leading
    timeouts = WatchTimeouts(
        server=args.watch_server_timeout,
        client=args.watch_client_timeout,
        connect=args.watch_connect_timeout,
    )
    registry = kopf.OperatorRegistry()
    register(
        registry,
        OperatorConfig(
            cell=CellDefaults(image=args.cell_image),
            reconcile_seconds=args.reconcile_seconds,
            network_policy_operator_namespace=args.network_policy_namespace,
            leading=leading,
            namespaces=tuple(args.namespace),
            watch_liveness_seconds=args.watch_liveness_seconds,
            watch=timeouts,
        ),
        metrics,
    )
    kopf.run(
        registry=registry,
        settings=operator_settings(timeouts),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    stop.set()


if __name__ == "__main__":
    main()
