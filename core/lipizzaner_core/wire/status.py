"""Asking a cell how it is: its gRPC GetStatus, shared by the launcher and the operator."""

from __future__ import annotations

import logging

import grpc

from lipizzaner_core.wire import cell_pb2, cell_pb2_grpc

log = logging.getLogger(__name__)


def get_status(channel: grpc.Channel, timeout: float) -> cell_pb2.CellStatus | None:
    """The cell's status, or None while it cannot answer (starting, gone, partitioned)."""
    try:
        return cell_pb2_grpc.CellStub(channel).GetStatus(cell_pb2.StatusRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        log.debug("no status: %s", exc.code())
        return None
