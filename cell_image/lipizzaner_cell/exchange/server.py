"""A cell's gRPC server: its newest centre, its status, and the standard health service.

Publishing swaps one reference; the first remote pull of a new centre encodes it once for
all, so training never waits on a reader and a slow reader never holds up the others.
With TLS, the transport admits only clients with a certificate from the run's CA, and
every call checks that the client's certificate names the run's identity too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.service import SERVICE
from lipizzaner_core.wire.tls import TlsMaterial, peer_identities

from lipizzaner_cell.algorithm.neighbourhood import CentreState
from lipizzaner_cell.exchange.codec import encode_centre

log = logging.getLogger(__name__)


class CentreBoard:
    """The newest published centre: as it is, for the cells of the same process
    (`client.SiblingPuller`), and encoded for remote pullers, once per generation, when
    the first of them asks (a cell whose neighbours all share its process never encodes)."""

    def __init__(self) -> None:
        self.latest: CentreState | None = None  # its tensors are never written again
        self.changed = threading.Condition()
        self._encoded: tuple[CentreState, list[bytes]] | None = None
        self._encoding = threading.Lock()

    def publish(self, state: CentreState) -> None:
        with self.changed:
            self.latest = state
            self.changed.notify_all()

    def newer_than(self, generation: int) -> list[bytes]:
        state = self.latest
        if state is None or state.generation <= generation:
            return []
        with self._encoding:
            if self._encoded is None or self._encoded[0] is not state:
                self._encoded = (state, encode_centre(state))
            return self._encoded[1]


MALFORMED = object()  # gRPC itself answers INTERNAL when a deserializer returns None


def _lenient(message_type: Any) -> Callable[[bytes], object]:
    """Parse a request, or return MALFORMED so the handler can answer INVALID_ARGUMENT."""

    def parse(data: bytes) -> object:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return MALFORMED

    return parse


# Told of every refused request: "malformed" (undecodable) or "peer" (another identity).
RefusalObserver = Callable[[str], None]


class CellService:
    def __init__(
        self,
        board: CentreBoard,
        status: Callable[[], cell_pb2.CellStatus],
        identity: str | None = None,
        on_refused: RefusalObserver | None = None,
    ) -> None:
        self.board = board
        self.status = status
        self.identity = identity  # with TLS: the run's identity every caller must carry
        self.on_refused = on_refused
        self.refused: dict[str, int] = {"malformed": 0, "peer": 0}

    def _refuse(self, context: grpc.ServicerContext, reason: str, code, message: str) -> None:
        self.refused[reason] += 1
        if self.on_refused is not None:
            self.on_refused(reason)
        context.abort(code, message)

    def _admit(self, request: object, what: str, context: grpc.ServicerContext) -> None:
        if self.identity is not None and self.identity not in peer_identities(context):
            self._refuse(
                context,
                "peer",
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client's certificate does not name this run ({self.identity})",
            )
        if request is MALFORMED:
            self._refuse(
                context, "malformed", grpc.StatusCode.INVALID_ARGUMENT, f"malformed {what}"
            )

    def get_centre(
        self, request: cell_pb2.CentreRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        self._admit(request, "CentreRequest", context)
        yield from self.board.newer_than(request.newer_than_generation)

    def get_status(
        self, request: cell_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> cell_pb2.CellStatus:
        self._admit(request, "StatusRequest", context)
        return self.status()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetCentre": grpc.unary_stream_rpc_method_handler(
                    self.get_centre,
                    request_deserializer=_lenient(cell_pb2.CentreRequest),
                    # Chunks are serialized once, at publish time.
                ),
                "GetStatus": grpc.unary_unary_rpc_method_handler(
                    self.get_status,
                    request_deserializer=_lenient(cell_pb2.StatusRequest),
                    response_serializer=cell_pb2.CellStatus.SerializeToString,
                ),
            },
        )


def start_server(
    service: CellService, port: int, host: str = "0.0.0.0", tls: TlsMaterial | None = None
) -> tuple[grpc.Server, int]:
    """Serve the cell and grpc.health.v1 (SERVING for "" and the Cell service)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((service.handler(),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, tls.server_credentials())
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC server listening on %s:%d%s", host, bound, " (mutual TLS)" if tls else "")
    return server, bound
