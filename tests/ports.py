"""Blocks of loopback ports for tests that start real listeners (validator processes, demos).

A block is checked free and then bound a moment later by another process, so two things can
take it in between: an outgoing connection anywhere on the machine (the kernel hands those
ports from ``ip_local_port_range``) and another pytest-xdist worker doing the same check. Blocks
therefore come from below the ephemeral range, and each worker draws only from its own slice
of that span, so neither can race us; the bind check still guards against leftovers (a node of
an earlier test that is shutting down)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from node.commands.testnet import find_ports_in_use

SPAN_LOW_PORT = 20_000
EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")
WORKER_SLICES_MAX = 8
TRIES_MAX = 100


def get_ephemeral_low_port() -> int:
    try:
        return int(EPHEMERAL_RANGE_PATH.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; other systems keep theirs higher still


def get_worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3" under xdist
    digits = worker.removeprefix("gw")
    return int(digits) % WORKER_SLICES_MAX if digits.isdigit() else 0


def find_free_port_block(count: int) -> int:
    """The first port of ``count`` consecutive free loopback ports owned by this worker."""
    span_high = max(get_ephemeral_low_port(), SPAN_LOW_PORT + WORKER_SLICES_MAX * 256)
    slice_size = (span_high - SPAN_LOW_PORT) // WORKER_SLICES_MAX
    assert count <= slice_size, f"a block of {count} ports does not fit a worker's slice"
    low = SPAN_LOW_PORT + get_worker_index() * slice_size
    rng = random.Random()
    for _ in range(TRIES_MAX):
        base = rng.randrange(low, low + slice_size - count + 1)
        if not find_ports_in_use("127.0.0.1", list(range(base, base + count))):
            return base
    raise AssertionError(f"no {count} free consecutive ports in {low}..{low + slice_size}")
