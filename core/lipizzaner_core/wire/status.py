"""Asking a cell how it is: its gRPC GetStatus, shared by the launcher and the operator."""

from __future__ import annotations

import logging

import grpc

from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.service import GET_STATUS

log = logging.getLogger(__name__)


def status_call(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        GET_STATUS,
        request_serializer=cell_pb2.StatusRequest.SerializeToString,
        response_deserializer=cell_pb2.CellStatus.FromString,
    )


def get_status(channel: grpc.Channel, timeout: float) -> cell_pb2.CellStatus | None:
    """The cell's status, or None while it cannot answer (starting, gone, partitioned)."""
    try:
        return status_call(channel)(cell_pb2.StatusRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        log.debug("no status: %s", exc.code())
        return None
