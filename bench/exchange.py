"""Neighbour-state transfer over loopback: our gRPC exchange vs the limits, side by side.

For states of 1, 10, 50 and 200 MB, in one run:
  raw TCP   the same bytes through a plain socket: the physical limit here;
  gRPC      one GetCentre pull between two cell servers, decoding and validation included;
  mTLS      the same pull over mutual TLS (spec.exchange.tls) with the run's certificates;
  original  the original Lipizzaner's path, re-created here only as a reference:
            torch.save to bytes, base64, JSON, one HTTP response; the reader reverses it.
Prints MB/s and the ratios; each figure is the best of --repeats transfers.

    python bench/exchange.py [--sizes 1 10 50 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import base64
import http.server
import io
import json
import socket
import threading
import time
import urllib.request

import torch
from lipizzaner_cell.neighbourhood import CentreState
from lipizzaner_cell.wire.client import NeighbourPuller, PullPolicy, centre_call
from lipizzaner_cell.wire.codec import CentreArchitecture
from lipizzaner_cell.wire.server import CellService, CentreBoard, start_server
from lipizzaner_core.wire.channels import channel
from lipizzaner_core.wire.tls import TlsMaterial, generate, run_identity
from rich.console import Console
from rich.table import Table

MB = 1_000_000


def make_state(megabytes: int) -> CentreState:
    generator = {"weight": torch.randn(megabytes * MB // 4)}
    discriminator = {"weight": torch.randn(16)}
    return CentreState(1, 1, generator, discriminator, 2e-4, 2e-4, 0.5, 0.5, {1: 1.0})


def best_of(repeats: int, transfer) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        transfer()
        times.append(time.perf_counter() - started)
    return min(times)


def raw_tcp_seconds(payload: bytes, repeats: int) -> float:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(repeats):
            connection, _ = listener.accept()
            with connection:
                connection.sendall(payload)

    threading.Thread(target=serve, daemon=True).start()

    def receive() -> None:
        buffer = bytearray(len(payload))
        view, got = memoryview(buffer), 0
        with socket.create_connection(("127.0.0.1", port)) as sock:
            while got < len(payload):
                got += sock.recv_into(view[got:])

    seconds = best_of(repeats, receive)
    listener.close()
    return seconds


def grpc_seconds(
    state: CentreState, repeats: int, tls: TlsMaterial | None = None
) -> tuple[float, float]:
    board = CentreBoard()
    started = time.perf_counter()
    board.publish(state)  # once per generation, whatever the number of readers
    publish = time.perf_counter() - started
    identity = None if tls is None else tls.identity
    service = CellService(board, lambda: None, identity)
    server, port = start_server(service, 0, "127.0.0.1", tls)
    address = f"127.0.0.1:{port}"
    puller = NeighbourPuller(
        1,
        address,
        CentreArchitecture.of(state),
        PullPolicy(max_state_bytes=1 << 31, tls=tls),
    )
    with channel(address, tls=tls) as grpc_channel:
        call = centre_call(grpc_channel)

        def pull() -> None:
            puller.latest = None  # ask for the state afresh every time
            if not puller.pull_once(call):
                raise RuntimeError(puller.stats.last_error)

        seconds = best_of(repeats, pull)
    server.stop(None)
    return seconds, publish


def original_seconds(state: CentreState, repeats: int) -> float:
    """torch.save -> base64 -> JSON -> HTTP, then back; torch.load with weights_only."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            buffer = io.BytesIO()
            torch.save(state.generator, buffer)
            body = json.dumps({"generator": base64.b64encode(buffer.getvalue()).decode()})
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def fetch() -> None:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with urllib.request.urlopen(url) as response:
            document = json.loads(response.read())
        raw = base64.b64decode(document["generator"])
        torch.load(io.BytesIO(raw), weights_only=True)

    seconds = best_of(repeats, fetch)
    server.shutdown()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", metavar="PNG", help="also draw the MB/s figure to this file")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {
        "raw TCP": [],
        "gRPC (ours)": [],
        "gRPC, mTLS": [],
        "original": [],
    }
    table = Table(title=f"Neighbour state over loopback, MB/s (best of {args.repeats})")
    for column in (
        "state",
        "raw TCP",
        "gRPC",
        "mTLS",
        "original",
        "gRPC / raw",
        "mTLS / gRPC",
        "gRPC / original",
        "publish (once)",
    ):
        table.add_column(column, justify="right")
    tls = generate(run_identity("bench", None))
    for size in args.sizes:
        state = make_state(size)
        payload = state.generator["weight"].numpy().tobytes()
        raw = raw_tcp_seconds(payload, args.repeats)
        ours, publish = grpc_seconds(state, args.repeats)
        secured, _ = grpc_seconds(state, args.repeats, tls)
        original = original_seconds(state, args.repeats)
        for name, seconds in zip(rates, (raw, ours, secured, original), strict=True):
            rates[name].append(size / seconds)
        table.add_row(
            f"{size} MB",
            f"{size / raw:,.0f}",
            f"{size / ours:,.0f}",
            f"{size / secured:,.0f}",
            f"{size / original:,.0f}",
            f"{raw / ours:.2f}",
            f"{ours / secured:.2f}",
            f"{original / ours:.1f}x",
            f"{publish * 1000:.0f} ms",
        )
    Console().print(table)
    if args.plot:
        plot(args.sizes, rates, args.plot)


def plot(sizes: list[int], rates: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    width = 0.8 / len(rates)
    for k, (name, values) in enumerate(rates.items()):
        ax.bar([i + k * width for i in range(len(sizes))], values, width, label=name)
    ax.set_xticks([i + width for i in range(len(sizes))], [f"{s} MB" for s in sizes])
    ax.set_ylabel("MB/s (loopback)")
    ax.set_title("Neighbour state transfer")
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
