"""Neighbour exchange over real gRPC on loopback, and what happens to malformed input."""

import filecmp
import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lipizzaner_cell.algorithm.individual import UNKNOWN_ORIGIN
from lipizzaner_cell.algorithm.neighbourhood import CentreState
from lipizzaner_cell.exchange.client import NeighbourPuller, PullPolicy, centre_call
from lipizzaner_cell.exchange.codec import (
    CHUNK_BYTES,
    CentreArchitecture,
    decode_centre,
    encode_centre,
)
from lipizzaner_cell.exchange.server import CellService, CentreBoard, start_server
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.service import GET_CENTRE, GET_STATUS, SERVICE
from lipizzaner_core.wire.status import status_call
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_are_what_the_proto_generates(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for fresh in module.generate(tmp_path):
        committed = ROOT / "core" / "lipizzaner_core" / "wire" / fresh.name
        assert filecmp.cmp(fresh, committed, shallow=False), (
            f"{fresh.name} is stale: run protos/generate.py"
        )


def centre(cell: int, generation: int, width: int = 4, dtype=torch.float32) -> CentreState:
    torch.manual_seed(generation)
    g = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width)).to(dtype).state_dict()
    d = nn.Linear(width, 1).to(dtype).state_dict()
    moments = {"0.step": torch.tensor(3.0), "0.exp_avg": torch.randn(width, 3).to(dtype)}
    return CentreState(
        cell,
        generation,
        g,
        d,
        1e-3,
        2e-3,
        0.25,
        0.75,
        {cell: 0.6, 9: 0.4},
        generator_moments=moments,
        discriminator_moments={"0.exp_avg_sq": torch.rand(1, width).to(dtype)},
        generator_ema={name: tensor + 1 for name, tensor in g.items()},
        generator_origin=(cell, 0),
        discriminator_origin=(9, 2),
    )


@pytest.fixture
def served():
    board = CentreBoard()
    service = CellService(board, lambda: cell_pb2.CellStatus(cell=1, generation=3))
    server, port = start_server(service, 0, host="127.0.0.1")
    yield board, service, f"127.0.0.1:{port}"
    server.stop(None)


def puller_for(state: CentreState, address: str, **policy) -> NeighbourPuller:
    return NeighbourPuller(
        state.cell,
        address,
        CentreArchitecture.of(state),
        PullPolicy(**policy),
    )


def test_a_board_encodes_a_centre_once_at_its_first_remote_pull():
    """Publishing only swaps the state (a sibling reads it as is); the first pull of a new
    state encodes it, and every later pull of it reuses those chunks."""
    board = CentreBoard()
    first, second = centre(1, 1), centre(1, 2)
    board.publish(first)
    assert board.latest is first and board.newer_than(1) == []
    chunks = board.newer_than(0)
    assert chunks == encode_centre(first) and board.newer_than(-1) is chunks
    board.publish(second)
    assert board.newer_than(1) == encode_centre(second)


def test_a_state_without_origins_decodes_with_unknown_ones():
    """An older cell's state (no origins in its header) is read, its lineages unknown."""
    state = replace(centre(1, 1), generator_origin=UNKNOWN_ORIGIN)
    state = replace(state, discriminator_origin=UNKNOWN_ORIGIN)
    header = cell_pb2.CentreChunk.FromString(encode_centre(state)[0]).header
    assert not header.HasField("generator_origin")
    got = decode_centre(encode_centre(state), CentreArchitecture.of(state), 1 << 30)
    assert got is not None and got.generator_origin == got.discriminator_origin == (-1, -1)


def test_received_tensors_are_bit_identical_and_old_states_are_not_resent(served):
    board, _, address = served
    state = centre(cell=1, generation=5)
    board.publish(state)
    puller = puller_for(state, address)
    with grpc.insecure_channel(address) as channel:
        call = centre_call(channel)
        assert puller.pull_once(call)
        got = puller.latest
        for name, tensor in state.generator.items():
            assert got.generator[name].dtype == tensor.dtype
            assert torch.equal(got.generator[name], tensor), name
        assert got.mixture_weights == state.mixture_weights
        for part in ("generator_moments", "discriminator_moments", "generator_ema"):
            sent, received = getattr(state, part), getattr(got, part)
            assert sent.keys() == received.keys()
            assert all(torch.equal(received[k], t) for k, t in sent.items()), part
        assert (got.generation, got.generator_lr, got.discriminator_fitness) == (5, 1e-3, 0.75)
        assert (got.generator_origin, got.discriminator_origin) == ((1, 0), (9, 2))
        sent = puller.stats.bytes_received
        assert puller.pull_once(call)  # generation 5 again: nothing is sent
        assert puller.stats.bytes_received == sent and puller.stats.received == 1
        board.publish(centre(cell=1, generation=6))
        assert puller.pull_once(call) and puller.latest.generation == 6


def test_a_state_without_moments_is_accepted_and_wrong_moments_are_not(served):
    """Moments (`exchange.optimizerState: false`) and the generator's EMA
    (`training.generatorEma` unset) are optional, but when sent they must fit the
    receiving cell's networks like the weights do."""
    board, _, address = served
    full = centre(cell=1, generation=5)
    puller = puller_for(full, address)
    with grpc.insecure_channel(address) as channel:
        call = centre_call(channel)
        board.publish(
            replace(full, generator_moments={}, discriminator_moments={}, generator_ema={})
        )
        assert puller.pull_once(call), puller.stats.last_error
        assert puller.latest.generator_moments == {} == puller.latest.discriminator_moments
        assert puller.latest.generator_ema == {}
        wrong = {"0.exp_avg": torch.zeros(2, 3), "0.step": torch.tensor(3.0)}
        board.publish(replace(full, generation=6, generator_moments=wrong))
        assert not puller.pull_once(call)
        assert "generator_moments.0.exp_avg: shape (2, 3)" in puller.stats.last_error
        short = {k: v for k, v in full.generator_ema.items() if k != "0.bias"}
        board.publish(replace(full, generation=7, generator_ema=short))
        assert not puller.pull_once(call)
    assert "generator_ema: missing tensors ['0.bias']" in puller.stats.last_error


def test_a_50_megabyte_state_streams_without_raising_message_limits(served):
    board, _, address = served
    state = centre(cell=1, generation=1, width=3_300_000)  # about 53 MB of float32
    chunks = encode_centre(state)
    assert max(len(c) for c in chunks) <= CHUNK_BYTES + 64
    board.publish(state)
    puller = puller_for(state, address)
    with grpc.insecure_channel(address) as channel:
        assert puller.pull_once(centre_call(channel)), puller.stats.last_error
    assert puller.stats.bytes_received > 50_000_000
    assert torch.equal(puller.latest.generator["0.weight"], state.generator["0.weight"])


def _storage(state: CentreState) -> int:
    return state.generator["0.weight"].untyped_storage().data_ptr()


def _equal(got: CentreState, sent: CentreState) -> bool:
    pairs = [*zip(got.generator.values(), sent.generator.values(), strict=True)]
    pairs += [*zip(got.generator_moments.values(), sent.generator_moments.values(), strict=True)]
    return all(torch.equal(a, b) for a, b in pairs)


def test_a_new_state_reuses_the_buffer_of_the_state_before_the_last(served):
    board, _, address = served
    states = [centre(cell=1, generation=g) for g in (1, 2, 3, 4)]
    puller = puller_for(states[0], address)
    with grpc.insecure_channel(address) as channel:
        call = centre_call(channel)
        buffers = []
        for state in states:
            board.publish(state)
            assert puller.pull_once(call), puller.stats.last_error
            assert _equal(puller.latest, state)
            buffers.append(_storage(puller.latest))
    assert buffers[0] != buffers[1]  # the newest and the one before coexist
    assert buffers[2] == buffers[0] and buffers[3] == buffers[1]  # then they alternate


def test_a_state_being_read_is_never_overwritten(served):
    """The engine copies its neighbours' states while it holds them; a puller that gets
    two newer states meanwhile decodes the second into fresh memory, not into them."""
    from lipizzaner_cell.exchange.client import GrpcNeighbourhood

    board, _, address = served
    states = [centre(cell=1, generation=g) for g in (1, 2, 3, 4, 5, 6)]
    puller = puller_for(states[0], address)
    neighbourhood = GrpcNeighbourhood(board, {1: puller})
    with grpc.insecure_channel(address) as channel:
        call = centre_call(channel)

        def pull(state: CentreState) -> int:
            board.publish(state)
            assert puller.pull_once(call) and _equal(puller.latest, state)
            return _storage(puller.latest)

        first = pull(states[0])
        pull(states[1])
        with neighbourhood.neighbour_states(0) as held:
            read = held[1]
            assert pull(states[2]) == first  # generation 1's buffer: nobody reads it
            fourth = pull(states[3])  # generation 2's buffer is being read: fresh memory
            assert fourth not in (first, _storage(read))
            assert read.generation == 2 and _equal(read, states[1])
        assert pull(states[4]) == first and pull(states[5]) == fourth  # alternating again


def test_the_background_puller_keeps_the_newest_state(served):
    board, _, address = served
    state = centre(cell=1, generation=2)
    board.publish(state)
    puller = puller_for(state, address, poll_seconds=0.01)
    puller.start()
    assert puller.first_state.wait(10)
    board.publish(centre(cell=1, generation=3))
    assert puller.wait_for_generation(3, timeout=10)
    puller.stop()
    puller.join(5)
    assert not puller.is_alive()
    assert puller.latest.generation == 3


def hostile_chunks(kind: str, good: CentreState) -> list[bytes]:
    if kind == "wrong-shapes":
        chunks = encode_centre(centre(good.cell, 9, width=5))
    elif kind == "wrong-dtypes":
        chunks = encode_centre(centre(good.cell, 9, dtype=torch.float64))
    elif kind == "truncated":
        chunks = encode_centre(centre(good.cell, 9, width=400_000))[:-1]
    elif kind == "random-bytes":
        return [os.urandom(2048) for _ in range(3)]
    elif kind == "data-before-header":
        chunks = encode_centre(centre(good.cell, 9))[::-1]
    elif kind == "wrong-cell":
        chunks = encode_centre(centre(good.cell + 1, 9))
    else:
        raise AssertionError(kind)
    return chunks


@pytest.fixture
def hostile():
    """A real gRPC server on loopback that answers GetCentre with whatever `mode` says."""
    mode = {"kind": "good", "good": None}

    def get_centre(request, context):
        if mode["kind"] == "good":
            yield from encode_centre(mode["good"])
        else:
            yield from hostile_chunks(mode["kind"], mode["good"])

    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {"GetCentre": grpc.unary_stream_rpc_method_handler(get_centre)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield mode, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize(
    "kind",
    [
        "wrong-shapes",
        "wrong-dtypes",
        "truncated",
        "random-bytes",
        "data-before-header",
        "wrong-cell",
        "oversize",
    ],
)
def test_malformed_states_are_rejected_counted_and_the_last_good_one_kept(hostile, kind):
    mode, address = hostile
    good = centre(cell=2, generation=4)
    mode["good"] = good
    limit = 16 if kind == "oversize" else 512 << 20
    puller = puller_for(good, address, max_state_bytes=1 << 20)
    with grpc.insecure_channel(address) as channel:
        call = centre_call(channel)
        assert puller.pull_once(call)
        puller.policy.max_state_bytes = limit
        mode["kind"] = "good" if kind == "oversize" else kind
        mode["good"] = centre(cell=2, generation=8) if kind == "oversize" else good
        assert not puller.pull_once(call)
    assert puller.stats.rejected == 1
    assert puller.stats.last_error.startswith("INVALID_ARGUMENT")
    assert puller.latest.generation == 4
    assert torch.equal(puller.latest.generator["0.weight"], good.generator["0.weight"])


def test_garbage_requests_get_invalid_argument_and_the_cell_keeps_serving(served):
    board, service, address = served
    board.publish(centre(cell=1, generation=1))
    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary(GET_STATUS)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff garbage", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stream = channel.unary_stream(GET_CENTRE)
        with pytest.raises(grpc.RpcError) as info:
            list(stream(os.urandom(64) + b"\xff", timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        status = status_call(channel)(cell_pb2.StatusRequest(), timeout=5)
        assert status.generation == 3
    assert service.refused == {"malformed": 2, "peer": 0}
