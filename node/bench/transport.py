"""``bcfl bench transport``: the libp2p path alone (Noise + Yamux direct streams).

How it works. N transports run in one trio run on 127.0.0.1 (so the numbers
are an upper bound for one core: sender and receiver share it). For each frame
size it measures, for ``--duration`` seconds each:

- one way: validator 0 streams frames to validator 1 with backpressure
  (``send_wait``); the receiver counts frames and bytes;
- round trips: validator 0 sends a frame, validator 1 echoes it, one at a time;
- broadcast (N > 2): validator 0 broadcasts; frames received by all peers.

Prints a table, and JSON to stdout and ``--output``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from node.bench.common import get_machine_info
from node.keys import KeyPair
from node.transport import (
    TrafficClass,
    Transport,
    TransportConfig,
    ValidatorAddress,
)

HOST = "127.0.0.1"
DEFAULT_SIZES_BYTES = (200, 65536)
WARMUP_TIMEOUT_S = 30.0


def get_free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bcfl bench transport", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--nodes", type=int, default=2, help="transports to start (2..16)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES_BYTES), help="frame sizes"
    )
    parser.add_argument("--output", type=Path, help="write the JSON result here too")
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 16:
        parser.error("--nodes must be between 2 and 16")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if any(not 1 <= s <= 4 * 1024 * 1024 for s in args.sizes):
        parser.error("--sizes must be between 1 and 4194304 bytes")
    return args


@asynccontextmanager
async def open_mesh(nodes: int) -> AsyncIterator[list[Transport]]:
    keys = [KeyPair.generate() for _ in range(nodes)]
    validators = [
        ValidatorAddress(i, k.public_key, HOST, get_free_port()) for i, k in enumerate(keys)
    ]
    config = TransportConfig(
        outbound_queue_frames={TrafficClass.CONSENSUS: 256, TrafficClass.TRANSACTIONS: 256},
        inbound_queue_frames={TrafficClass.CONSENSUS: 4096, TrafficClass.TRANSACTIONS: 4096},
    )
    transports = [Transport(keys[i], HOST, validators[i].port, validators, config)
                  for i in range(nodes)]
    async with trio.open_nursery() as nursery:
        for transport in transports:
            await nursery.start(transport.run)
        with trio.fail_after(WARMUP_TIMEOUT_S):
            for transport in transports:
                transport.broadcast(b"warmup")
            for transport in transports:
                for _ in range(nodes - 1):
                    await transport.inbound().receive()
        yield transports
        nursery.cancel_scope.cancel()


async def measure_one_way(
    transports: list[Transport], size: int, duration_s: float
) -> dict[str, Any]:
    sender, receiver = transports[0], transports[1]
    frame = b"\x5a" * size
    received = {"frames": 0, "bytes": 0}

    async def consume() -> None:
        async for _, data in receiver.inbound():
            received["frames"] += 1
            received["bytes"] += len(data)

    async def produce() -> None:
        while True:
            await sender.send_wait(1, frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        nursery.start_soon(produce)
        await trio.sleep(min(0.5, duration_s / 4))  # warm up windows
        start_frames, start_bytes = received["frames"], received["bytes"]
        start = time.perf_counter()
        await trio.sleep(duration_s)
        elapsed = time.perf_counter() - start
        frames, nbytes = received["frames"] - start_frames, received["bytes"] - start_bytes
        nursery.cancel_scope.cancel()
    await drain(transports)
    return {
        "frames_per_s": frames / elapsed,
        "mb_per_s": nbytes / elapsed / 1e6,
        "frames": frames,
        "elapsed_s": elapsed,  # the duration; ``frames`` is the sample count
    }


async def measure_round_trips(
    transports: list[Transport], size: int, duration_s: float
) -> dict[str, Any]:
    a, b = transports[0], transports[1]
    frame = b"\xa5" * size

    async def echo() -> None:
        async for sender, data in b.inbound():
            await b.send_wait(sender, data)

    count = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        start = time.perf_counter()
        deadline = start + duration_s
        while time.perf_counter() < deadline:
            await a.send_wait(1, frame)
            _, reply = await a.inbound().receive()
            assert len(reply) == size
            count += 1
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return {
        "round_trips_per_s": count / elapsed,
        "mean_rtt_ms": 1000.0 * elapsed / max(count, 1),
        "round_trips": count,
        "elapsed_s": elapsed,
    }


async def measure_broadcast(
    transports: list[Transport], size: int, duration_s: float
) -> dict[str, Any]:
    frame = b"\x3c" * size
    received = {"frames": 0}
    peers = transports[1:]

    async def consume(transport: Transport) -> None:
        async for _ in transport.inbound():
            received["frames"] += 1

    async def produce() -> None:
        while True:
            for peer in range(1, len(transports)):
                await transports[0].send_wait(peer, frame)

    async with trio.open_nursery() as nursery:
        for transport in peers:
            nursery.start_soon(consume, transport)
        nursery.start_soon(produce)
        await trio.sleep(min(0.5, duration_s / 4))
        start_frames, start = received["frames"], time.perf_counter()
        await trio.sleep(duration_s)
        elapsed = time.perf_counter() - start
        frames = received["frames"] - start_frames
        nursery.cancel_scope.cancel()
    await drain(transports)
    return {
        "broadcasts_per_s": frames / len(peers) / elapsed,
        "frames_received_per_s": frames / elapsed,
        "mb_per_s_total": frames * size / elapsed / 1e6,
    }


async def drain(transports: list[Transport]) -> None:
    """Let in-flight frames land and discard them, so the next case starts clean."""
    await trio.sleep(0.3)
    for transport in transports:
        for traffic in TrafficClass:
            while True:
                try:
                    transport.inbound(traffic).receive_nowait()
                except trio.WouldBlock:
                    break


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    async with open_mesh(args.nodes) as transports:
        for size in args.sizes:
            case: dict[str, Any] = {"frame_bytes": size}
            case["one_way"] = await measure_one_way(transports, size, args.duration)
            case["round_trip"] = await measure_round_trips(transports, size, args.duration)
            if args.nodes > 2:
                case["broadcast"] = await measure_broadcast(transports, size, args.duration)
            results.append(case)
        metrics = transports[0].get_metrics()
    return {
        "benchmark": "transport",
        "machine": get_machine_info(),
        "stack": "libp2p tcp + noise + yamux, one process, 127.0.0.1",
        "nodes": args.nodes,
        "duration_s": args.duration,
        "results": results,
        "sender_drops": metrics["drops"],
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'frame':>9} {'frames/s':>10} {'MB/s':>8} {'RTT/s':>8} {'RTT ms':>8}", file=sys.stderr)
    for case in report["results"]:
        one_way, rtt = case["one_way"], case["round_trip"]
        print(
            f"{case['frame_bytes']:>9} {one_way['frames_per_s']:>10.0f} {one_way['mb_per_s']:>8.1f}"
            f" {rtt['round_trips_per_s']:>8.0f} {rtt['mean_rtt_ms']:>8.2f}",
            file=sys.stderr,
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report = trio.run(run_bench, args)
    print_table(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
