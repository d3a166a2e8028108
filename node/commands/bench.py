"""``bcfl bench <mode>``: benchmarks that print a table and write JSON (and plots).

Each mode lives in ``node/bench/<mode>.py`` and exposes ``main(argv) -> int``.
Benchmarks live under ``node`` because they read the clock; the code they
measure in ``consensus`` and ``fl`` never does.
"""

from __future__ import annotations

import importlib
import sys

MODES: dict[str, str] = {
    "consensus": "a localnet of N validators under an open- or closed-loop load",
    "core": "the PBFT core alone in the simulator (no network)",
    "transport": "the libp2p path alone",
    "aggregation": "robust aggregation kernels vs NumPy and Flower",
    "ledger": "state transition and mempool throughput, in process",
    "node": "the node layer of N validators in one process (no network)",
    "round": "one learning round end to end",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: bcfl bench <mode> [options]\n\nmodes:")
        for name, text in MODES.items():
            print(f"  {name:<12} {text}")
        return 0
    mode = argv[0]
    if mode not in MODES:
        print(f"bcfl bench: unknown mode {mode!r}; one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    module_name = f"node.bench.{mode}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"bcfl bench: mode {mode!r} is not available in this build", file=sys.stderr)
        return 2
    result: int = module.main(argv[1:])
    return result
