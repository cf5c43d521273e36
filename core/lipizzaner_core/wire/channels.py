"""gRPC channel options shared by the cells' pullers and the launcher (torch-free)."""

from __future__ import annotations

import grpc


def channel(
    address: str,
    backoff_initial: float = 0.1,
    backoff_max: float = 5.0,
    max_receive_bytes: int | None = None,
) -> grpc.Channel:
    """An insecure channel whose reconnect backoff stays within [initial, max] seconds.

    gRPC's own reconnect backoff grows to two minutes: a peer that was not up at the first
    attempt would then go unseen long after it started.
    """
    options = [
        ("grpc.initial_reconnect_backoff_ms", int(backoff_initial * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(backoff_initial * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(backoff_max * 1000)),
    ]
    if max_receive_bytes is not None:
        options.append(("grpc.max_receive_message_length", max_receive_bytes))
    return grpc.insecure_channel(address, options=options)
