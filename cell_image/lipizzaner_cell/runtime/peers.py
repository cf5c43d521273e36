"""Where a cell process's cells listen, and how each finds and pulls its neighbours: the
ports, the peers' addresses from `--peer-template`, and a puller per neighbour expecting
the architectures the spec gives every cell (in memory for a neighbour in the process)."""

from __future__ import annotations

import argparse
from functools import partial

import torch
from lipizzaner_core.placement import group_of, pod_name, port_of
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.wire.tls import TlsMaterial

from lipizzaner_cell.algorithm.individual import moment_template
from lipizzaner_cell.algorithm.losses import spec_loss
from lipizzaner_cell.algorithm.networks import build_discriminator, build_generator
from lipizzaner_cell.algorithm.semi_supervised import discriminator_classes
from lipizzaner_cell.data.datasets import Dataset
from lipizzaner_cell.exchange.client import NeighbourPuller, Puller, PullPolicy, SiblingPuller
from lipizzaner_cell.exchange.codec import CentreArchitecture, architecture_of
from lipizzaner_cell.exchange.server import CentreBoard
from lipizzaner_cell.runtime.metrics import CellMetrics


def cell_port(run: LipizzanerRun, args: argparse.Namespace, base: int, cell: int) -> int:
    return port_of(base, cell, run.spec.cell.cells_per_pod, args.port_by)


def peer_address(run: LipizzanerRun, args: argparse.Namespace, cell: int) -> str:
    """Where `cell` listens, from `--peer-template` ({run}, {index}, {pod}, {port})."""
    group = group_of(cell, run.spec.grid.size, run.spec.cell.cells_per_pod)
    return args.peer_template.format(
        run=run.metadata.name,
        index=cell,
        pod=pod_name(run.metadata.name, group),
        port=cell_port(run, args, args.grpc_port_base, cell),
    )


def neighbour_pullers(
    run: LipizzanerRun,
    args: argparse.Namespace,
    cell: int,
    dataset: Dataset,
    metrics: CellMetrics | None,
    tls: TlsMaterial | None,
    siblings: dict[int, CentreBoard] | None = None,
) -> dict[int, Puller]:
    """One puller per neighbour, expecting the architectures the spec gives every cell; a
    neighbour in this process (its board in `siblings`) is read in memory instead."""
    policy = PullPolicy(max_state_bytes=run.spec.exchange.max_state_megabytes << 20, tls=tls)
    network, optimizer = run.spec.network, spec_loss(run.spec.loss).optimizer
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        shape, classes = dataset.shape, discriminator_classes(run.spec, dataset)
        generator = build_generator(network.generator, network.latent_size, shape)
        discriminator = build_discriminator(network.discriminator, shape, classes)
        expected = CentreArchitecture(
            architecture_of(generator.state_dict()),
            architecture_of(discriminator.state_dict()),
            architecture_of(moment_template(generator, optimizer)),
            architecture_of(moment_template(discriminator, optimizer)),
        )
    pullers: dict[int, Puller] = {}
    for neighbour in run.spec.grid.topology().neighbours(cell):
        address = peer_address(run, args, neighbour.index)
        board = (siblings or {}).get(neighbour.index)
        if board is not None:
            pullers[neighbour.index] = SiblingPuller(neighbour.index, address, board, policy)
            continue
        record = None if metrics is None else partial(metrics.record_pull, neighbour.direction)
        pullers[neighbour.index] = NeighbourPuller(
            neighbour.index, address, expected, policy, on_pull=record
        )
    return pullers
