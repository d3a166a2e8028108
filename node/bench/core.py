"""``bcfl bench core``: blocks per second the PBFT core alone commits in the simulator.

A fault-free simulation (no loss, one-tick delay) for n = 4, 7, 10, 16; reports committed
blocks per wall-clock second and messages handled per second, so the cost per message is
known before any network is added. JSON to stdout, optionally to ``--output FILE``.
"""

from __future__ import annotations

import argparse
import json
import time

from consensus.sim import Scenario, Simulation
from node.bench.common import get_machine_info


def measure(n: int, ticks: int) -> dict[str, float | int]:
    scenario = Scenario(
        seed=0,
        n=n,
        delay_max_ticks=1,
        chaos_ticks=ticks,
        liveness_ticks=0,
        check_liveness=False,
        propose_interval_ticks=1,
    )
    sim = Simulation(scenario, trace_max=0)
    start = time.perf_counter()
    result = sim.run()
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise RuntimeError(result.format_failure())
    blocks = min(result.heights.values())
    return {
        "n": n,
        "ticks": result.ticks,
        "blocks": blocks,
        "messages": result.messages,
        "seconds": round(elapsed, 4),
        "blocks_per_second": round(blocks / elapsed, 1),
        "messages_per_second": round(result.messages / elapsed, 1),
        "microseconds_per_message": round(1e6 * elapsed / max(result.messages, 1), 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bcfl bench core", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,7,10,16", help="comma-separated committee sizes")
    parser.add_argument("--ticks", type=int, default=300, help="simulated ticks per size")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    report = {"benchmark": "core", "machine": get_machine_info(),
              "parameters": {"sizes": sizes, "ticks": args.ticks},
              "results": [measure(n, args.ticks) for n in sizes]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return 0
