"""gRPC channel options shared by the cells' pullers, the launcher and the operator."""

from __future__ import annotations

import grpc
import grpc.experimental

from lipizzaner_core.wire.tls import TlsMaterial


def channel(
    address: str,
    backoff_initial: float = 0.1,
    backoff_max: float = 5.0,
    max_receive_bytes: int | None = None,
    tls: TlsMaterial | None = None,
) -> grpc.Channel:
    """A channel whose reconnect backoff stays within [initial, max] seconds.

    gRPC's own reconnect backoff grows to two minutes: a peer that was not up at the first
    attempt would then go unseen long after it started. With `tls`, the channel presents
    the run's certificate and accepts only a server of the same run.
    """
    options: list[tuple[str, int | str]] = [
        ("grpc.initial_reconnect_backoff_ms", int(backoff_initial * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(backoff_initial * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(backoff_max * 1000)),
        # A server-streaming call (GetCentre) read on the calling thread instead of
        # through gRPC's polling thread: a smaller fixed cost per pull (docs/benchmarks.md).
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ]
    if max_receive_bytes is not None:
        options.append(("grpc.max_receive_message_length", max_receive_bytes))
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    options += tls.channel_options()
    return grpc.secure_channel(address, tls.channel_credentials(), options=options)
