"""Fuzz a real cell server over gRPC on loopback (cell_image/lipizzaner_cell/exchange/server.py).

Each input is one request: its first byte picks GetCentre or GetStatus, the rest are the
request's bytes, sent as they are. Every call must be answered correctly (a GetCentre
stream decodes into the published state, or is empty when the caller has it already; a
GetStatus is the cell's status) or refused with INVALID_ARGUMENT. Any other status, a
crash, growing memory, or a server that stops answering (health checked every 64
inputs) is a finding.

    python fuzz/server_fuzz.py fuzz/corpus/server -max_total_time=60
    python fuzz/server_fuzz.py --write-seeds fuzz/corpus/server
"""

from __future__ import annotations

import functools

import atheris
from harness import OUR_PACKAGES, run, target_state  # imports torch

with atheris.instrument_imports(include=OUR_PACKAGES):
    import grpc
    import torch
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from lipizzaner_cell.algorithm.neighbourhood import CentreState
    from lipizzaner_cell.exchange.codec import CentreArchitecture, decode_centre
    from lipizzaner_cell.exchange.server import CellService, CentreBoard, start_server
    from lipizzaner_core.wire import cell_pb2
    from lipizzaner_core.wire.service import GET_CENTRE, GET_STATUS

GENERATION = 5
METHODS = (GET_CENTRE, GET_STATUS)
TARGET = target_state()
STATE = CentreState(
    2,
    GENERATION,
    generator_lr=1e-3,
    discriminator_lr=2e-3,
    generator_fitness=0.5,
    discriminator_fitness=0.25,
    mixture_weights={2: 1.0},
    **TARGET,
)
STATUS = cell_pb2.CellStatus(cell=2, generation=GENERATION, generations=10)


class Target:
    """One server for the whole run: a fuzzer that restarted it would miss leaks."""

    def __init__(self) -> None:
        board = CentreBoard()
        board.publish(STATE)
        self.service = CellService(board, lambda: STATUS)
        self.server, port = start_server(self.service, 0, "127.0.0.1")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.get_centre = self.channel.unary_stream(METHODS[0])
        self.get_status = self.channel.unary_unary(METHODS[1])
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.calls = 0

    def check(self, data: bytes) -> None:
        if not data:
            return
        method, request = data[0] % 2, data[1:]
        try:
            if method == 0:
                self.check_centre(request, list(self.get_centre(request, timeout=10)))
            else:
                if cell_pb2.CellStatus.FromString(self.get_status(request, timeout=10)) != STATUS:
                    raise AssertionError("GetStatus answered another status")
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise AssertionError(f"{METHODS[method]}: {exc.code()} {exc.details()}") from None
        self.calls += 1
        if self.calls % 64 == 0:
            answer = self.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                raise AssertionError(f"health: {answer.status}")

    @staticmethod
    def check_centre(request: bytes, chunks: list[bytes]) -> None:
        have = cell_pb2.CentreRequest.FromString(request).newer_than_generation
        state = decode_centre(chunks, CentreArchitecture.of(STATE), 1 << 20)
        if have >= GENERATION:
            if state is not None:
                raise AssertionError(f"resent generation {GENERATION} to a caller that has {have}")
            return
        if state is None or state.generation != GENERATION:
            raise AssertionError(f"caller at {have} did not get generation {GENERATION}")
        for name, tensor in STATE.generator.items():
            if not torch.equal(state.generator[name], tensor):
                raise AssertionError(f"generator.{name} changed on the way")


@functools.cache
def target() -> Target:
    return Target()


def test_one_input(data: bytes) -> None:
    target().check(data)


def seeds() -> dict[str, bytes]:
    centre = cell_pb2.CentreRequest
    return {
        "centre-fresh": b"\x00" + centre(newer_than_generation=-1).SerializeToString(),
        "centre-current": b"\x00" + centre(newer_than_generation=GENERATION).SerializeToString(),
        "centre-empty": b"\x00",
        "status": b"\x01" + cell_pb2.StatusRequest().SerializeToString(),
        "garbage": b"\x00\xff\xff\xff garbage",
    }


if __name__ == "__main__":
    run(test_one_input, __doc__, seeds)
