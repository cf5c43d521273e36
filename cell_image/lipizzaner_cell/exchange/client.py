"""Pulling neighbours' centres over gRPC: one background thread per neighbour.

Each puller keeps the newest valid state of its neighbour. The generation loop only reads
those cached states, so it never waits on the network (except once, at start-up, for the
first states, with a timeout). Failures back off exponentially with jitter; a state that
does not validate is counted, and the last good one is kept.

A new state is decoded into the buffer of the state before the last when nobody reads
that one any more, instead of into fresh memory: the kernel's first touch of each fresh
page cost a large pull more than the transfer itself (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import torch
from lipizzaner_core.wire import cell_pb2
from lipizzaner_core.wire.channels import channel
from lipizzaner_core.wire.service import GET_CENTRE
from lipizzaner_core.wire.status import get_status
from lipizzaner_core.wire.tls import TlsMaterial

from lipizzaner_cell.algorithm.neighbourhood import CentreState
from lipizzaner_cell.exchange.codec import (
    CHUNK_BYTES,
    CentreArchitecture,
    StateRejected,
    decode_centre,
    new_payload,
)
from lipizzaner_cell.exchange.server import CentreBoard

log = logging.getLogger(__name__)
_Phase = cell_pb2.CellStatus.Phase
FINISHED_PHASES = (_Phase.FINISHING, _Phase.SUCCEEDED, _Phase.FAILED)


@dataclass
class PullPolicy:
    poll_seconds: float = 0.2
    deadline_seconds: float = 30.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    max_state_bytes: int = 512 << 20
    tls: TlsMaterial | None = None  # mutual TLS with the run's certificate


@dataclass
class PullStats:
    received: int = 0
    rejected: int = 0
    failures: int = 0
    bytes_received: int = 0
    seconds: list[float] = field(default_factory=list)
    last_error: str = ""


def centre_call(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable:
    """GetCentre returning raw bytes: the codec parses and validates every chunk itself."""
    return channel.unary_stream(
        GET_CENTRE, request_serializer=cell_pb2.CentreRequest.SerializeToString
    )


# Told of every pull: outcome (new, unchanged, failed, rejected), seconds, bytes received.
PullObserver = Callable[[str, float, int], None]


class NeighbourPuller(threading.Thread):
    def __init__(
        self,
        cell: int,
        address: str,
        expected: CentreArchitecture,
        policy: PullPolicy | None = None,
        on_pull: PullObserver | None = None,
    ) -> None:
        super().__init__(name=f"pull-cell-{cell}", daemon=True)
        self.cell, self.address = cell, address
        self.on_pull = on_pull
        self.expected = expected
        self.policy = policy or PullPolicy()
        self.latest: CentreState | None = None
        self._payload: torch.Tensor | None = None  # the buffer `latest`'s tensors view
        self._spare: torch.Tensor | None = None  # the one before, free for the next state
        self._receiving: torch.Tensor | None = None  # the one a pull decodes into
        self._reads: Counter[int] = Counter()  # payloads being read, by id
        self.stats = PullStats()
        self.first_state = threading.Event()
        self._updated = threading.Condition()
        self._stopping = threading.Event()
        self._random = random.Random(cell)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        with channel(
            self.address,
            self.policy.backoff_initial,
            self.policy.backoff_max,
            max_receive_bytes=CHUNK_BYTES + (64 << 10),
            tls=self.policy.tls,
        ) as grpc_channel:
            get_centre = centre_call(grpc_channel)
            backoff = self.policy.backoff_initial
            while not self._stopping.is_set():
                if self.pull_once(get_centre):
                    backoff = self.policy.backoff_initial
                    self._stopping.wait(self.policy.poll_seconds)
                else:
                    self._stopping.wait(backoff * (0.5 + self._random.random()))
                    backoff = min(backoff * 2, self.policy.backoff_max)

    def pull_once(self, get_centre: grpc.UnaryStreamMultiCallable) -> bool:
        """One request; True unless it failed or was rejected."""
        have = self.latest.generation if self.latest else -1
        started = time.perf_counter()
        received = 0

        def counted(stream):
            nonlocal received
            for item in stream:
                received += len(item)
                yield item

        try:
            stream = get_centre(
                cell_pb2.CentreRequest(newer_than_generation=have),
                timeout=self.policy.deadline_seconds,
            )
            state = decode_centre(
                counted(stream), self.expected, self.policy.max_state_bytes, self.payload_buffer
            )
            if state is not None and state.cell != self.cell:
                raise StateRejected(f"asked cell {self.cell}, got a state of cell {state.cell}")
        except StateRejected as exc:
            self.stats.rejected += 1
            self.stats.last_error = f"{StateRejected.grpc_code}: {exc}"
            log.warning("rejected a state from cell %d (%s): %s", self.cell, self.address, exc)
            self._observe("rejected", started, received)
            return False
        except grpc.RpcError as exc:
            self.stats.failures += 1
            self.stats.last_error = f"{exc.code().name}: {exc.details()}"
            self._observe("failed", started, received)
            return False
        self._observe("unchanged" if state is None else "new", started, received)
        self.stats.bytes_received += received
        if state is not None:
            with self._updated:
                self._spare = self._payload
                self.latest, self._payload = state, self._receiving
                self._updated.notify_all()
            self.stats.received += 1
            self.stats.seconds.append(time.perf_counter() - started)
            self.first_state.set()
        return True

    def payload_buffer(self, size: int) -> torch.Tensor:
        """The spare payload buffer when it has the size and nobody reads it, else a
        fresh one."""
        with self._updated:
            spare, self._spare = self._spare, None
            if spare is not None and (spare.numel() != size or self._reads[id(spare)]):
                spare = None
        self._receiving = new_payload(size) if spare is None else spare
        return self._receiving

    @contextlib.contextmanager
    def reading(self) -> Iterator[CentreState | None]:
        """`latest`, whose tensors stay as they are until the block ends."""
        with self._updated:
            state, payload = self.latest, self._payload
            self._reads[id(payload)] += 1
        try:
            yield state
        finally:
            with self._updated:
                self._reads[id(payload)] -= 1
                if not self._reads[id(payload)]:
                    del self._reads[id(payload)]

    def _observe(self, outcome: str, started: float, received: int) -> None:
        if self.on_pull is not None:
            self.on_pull(outcome, time.perf_counter() - started, received)

    def wait_for_generation(self, generation: int, timeout: float) -> bool:
        """Block until a state of at least `generation` arrived, or the timeout passed."""
        with self._updated:
            return self._updated.wait_for(
                lambda: self.latest is not None and self.latest.generation >= generation, timeout
            )


class SiblingPuller:
    """A neighbour in the same process, read from its board: no gRPC, no copy (a centre's
    tensors are never written after publishing). It answers as a `NeighbourPuller` does;
    its pulls are not counted in the exchange's metrics."""

    def __init__(self, cell: int, address: str, board: CentreBoard, policy: PullPolicy) -> None:
        self.cell, self.address, self.board, self.policy = cell, address, board, policy
        self.stats = PullStats()

    @property
    def latest(self) -> CentreState | None:
        return self.board.latest

    @property
    def first_state(self) -> _Arrived:
        return _Arrived(self)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        pass

    @contextlib.contextmanager
    def reading(self) -> Iterator[CentreState | None]:
        yield self.board.latest

    def wait_for_generation(self, generation: int, timeout: float) -> bool:
        with self.board.changed:
            return self.board.changed.wait_for(
                lambda: self.latest is not None and self.latest.generation >= generation, timeout
            )


@dataclass
class _Arrived:
    """A sibling's first state, waited for as a puller's `first_state` event."""

    puller: SiblingPuller

    def wait(self, timeout: float | None = None) -> bool:
        return self.puller.wait_for_generation(0, timeout if timeout is not None else 1e9)


Puller = NeighbourPuller | SiblingPuller


class GrpcNeighbourhood:
    """The engine's `NeighbourhoodProvider` over gRPC: cached pulls in, a board out.

    `wait_seconds` (`exchange.neighbourWaitSeconds`): before handing out the states, wait
    up to this long in all for each neighbour to reach the generation asked for. A
    neighbour that does not is marked late at the generation it had, and is not waited
    for again until it publishes a newer state: a dead neighbour costs one wait, not one
    per generation. `stop` cuts a wait short.
    """

    WAIT_SLICE = 0.5  # seconds between looks at `stop`

    def __init__(
        self,
        board: CentreBoard,
        pullers: dict[int, Puller],
        wait_seconds: float = 0.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.board = board
        self.pullers = pullers
        self.wait_seconds = wait_seconds
        self.stop = stop or threading.Event()
        self.late: dict[int, int] = {}  # neighbour: the generation it was late at

    def start(self) -> None:
        for puller in self.pullers.values():
            puller.start()

    @contextlib.contextmanager
    def neighbour_states(self, generation: int) -> Iterator[dict[int, CentreState]]:
        """Each neighbour's newest state, none of them overwritten until the block ends;
        first, up to `wait_seconds`, for states of at least `generation`."""
        if self.wait_seconds > 0:
            self.wait_for(generation, self.wait_seconds)
        with contextlib.ExitStack() as reads:
            states = {c: reads.enter_context(p.reading()) for c, p in self.pullers.items()}
            yield {c: state for c, state in states.items() if state is not None}

    def publish(self, state: CentreState) -> None:
        self.board.publish(state)

    def wait_for(self, generation: int, timeout: float) -> list[int]:
        """Wait up to `timeout` seconds in all for every neighbour that has a state and
        is not known to be late to reach `generation`; return those newly found late."""
        deadline = time.monotonic() + timeout
        newly_late = []
        for cell, puller in self.pullers.items():
            latest = puller.latest
            if latest is None or self.late.get(cell) == latest.generation:
                continue  # missing (the engine goes on without it), or late and unchanged
            self.late.pop(cell, None)
            while not puller.wait_for_generation(generation, self._slice(deadline)):
                if self.stop.is_set() or time.monotonic() >= deadline:
                    self.late[cell] = puller.latest.generation if puller.latest else -1
                    newly_late.append(cell)
                    break
        if newly_late:
            log.info(
                "generation %d: neighbours %s are late; going on with their newest states",
                generation + 1,
                newly_late,
            )
        return newly_late

    def _slice(self, deadline: float) -> float:
        if self.stop.is_set():
            return 0.0
        return max(0.0, min(self.WAIT_SLICE, deadline - time.monotonic()))

    def wait_for_first_states(self, timeout: float) -> list[int]:
        """Wait up to `timeout` seconds in all; return the neighbours still missing."""
        deadline = time.monotonic() + timeout
        for puller in self.pullers.values():
            puller.first_state.wait(max(0.0, deadline - time.monotonic()))
        return self.missing()

    def missing(self) -> list[int]:
        return sorted(c for c, p in self.pullers.items() if p.latest is None)

    def linger(
        self,
        generations: int,
        timeout: float,
        stop: threading.Event,
        finished: Callable[[int], bool] = lambda cell: False,
    ) -> list[int]:
        """Keep serving this cell's final state until no neighbour needs it any more.

        A neighbour is done once it has finished the run's `generations`: its last state
        arrived here, its status says so, or, once it is gone, `finished(cell)` (its
        result in the output). A cell that left at once would starve a slower neighbour
        still waiting for its states. Bounded by `timeout` and `stop`; returns the
        neighbours it stopped waiting for.
        """
        deadline = time.monotonic() + timeout
        pending = dict(self.pullers)
        channels = {
            c: channel(p.address, backoff_max=1.0, tls=p.policy.tls) for c, p in pending.items()
        }
        try:
            while pending and time.monotonic() < deadline and not stop.is_set():
                for cell, puller in list(pending.items()):
                    if puller.latest is not None and puller.latest.generation >= generations:
                        del pending[cell]
                        continue
                    status = get_status(channels[cell], timeout=1.0)
                    if status is None:
                        done = finished(cell)
                    else:
                        done = status.generation >= generations or status.phase in FINISHED_PHASES
                    if done:
                        del pending[cell]
                stop.wait(0.2 if pending else 0)
        finally:
            for grpc_channel in channels.values():
                grpc_channel.close()
        return sorted(pending)

    def rejected(self) -> int:
        return sum(p.stats.rejected for p in self.pullers.values())

    def close(self) -> None:
        for puller in self.pullers.values():
            puller.stop()
        for puller in self.pullers.values():
            if puller.is_alive():  # never started when the cell failed before training
                puller.join(timeout=5)
