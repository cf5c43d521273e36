"""`lipizzaner-operator`: the kopf operator for LipizzanerRun, with our settings baked in."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf
from kubernetes import client
from lipizzaner_core import __version__

from lipizzaner_operator.handlers import OperatorConfig, operator_settings, register
from lipizzaner_operator.kube import (
    CredentialsError,
    KubeClient,
    connection_info,
    load_configuration,
)
from lipizzaner_operator.metrics import OperatorMetrics
from lipizzaner_operator.render import CellDefaults

DEFAULTS = CellDefaults()


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
    parser.add_argument(
        "--liveness",
        default=env("LIPIZZANER_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="liveness endpoint URL [LIPIZZANER_LIVENESS, default %(default)s]",
    )
    parser.add_argument(
        "--cell-image",
        default=env("LIPIZZANER_CELL_IMAGE", DEFAULTS.image),
        help="image of runs that name none in spec.cell.image "
        "[LIPIZZANER_CELL_IMAGE, default %(default)s]",
    )
    parser.add_argument(
        "--reconcile-seconds",
        type=float,
        default=float(env("LIPIZZANER_RECONCILE_SECONDS", "5")),
        help="how often each run is reconciled [LIPIZZANER_RECONCILE_SECONDS, default %(default)s]",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("LIPIZZANER_OPERATOR_METRICS_PORT", "8000")),
        help="serve Prometheus /metrics on this port, 0 for none "
        "[LIPIZZANER_OPERATOR_METRICS_PORT, default %(default)s]",
    )
    parser.add_argument(
        "--network-policy-namespace",
        default=env("LIPIZZANER_NETWORK_POLICY_NAMESPACE") or None,
        metavar="NAMESPACE",
        help="give each run a NetworkPolicy that admits only its own cells and the operator "
        "pods of NAMESPACE to the cells' gRPC port [LIPIZZANER_NETWORK_POLICY_NAMESPACE, "
        "default: no policies]",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


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
    kube = KubeClient(client.ApiClient(configuration))
    metrics = OperatorMetrics(lambda: kube.list_runs(args.namespace))
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    registry = kopf.OperatorRegistry()
    register(
        registry,
        OperatorConfig(
            cell=CellDefaults(image=args.cell_image),
            reconcile_seconds=args.reconcile_seconds,
            network_policy_operator_namespace=args.network_policy_namespace,
        ),
        metrics,
    )
    kopf.run(
        registry=registry,
        settings=operator_settings(),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":
    main()
