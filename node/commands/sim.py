"""``bcfl sim``: run the deterministic PBFT simulator for one seed or a range of seeds.

bcfl sim --seed 7              one run; prints its trace on failure
bcfl sim --seeds 0:10000       a soak; prints every failing seed and a summary
bcfl sim --seed 7 --trace      print the full trace even when it passes
"""

from __future__ import annotations

import argparse
import sys

from consensus.sim import run_seed


def _parse_range(text: str) -> range:
    start, sep, stop = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected START:STOP, e.g. 0:10000")
    try:
        low, high = int(start), int(stop)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad range {text!r}") from exc
    if not 0 <= low < high:
        raise argparse.ArgumentTypeError("need 0 <= START < STOP")
    return range(low, high)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bcfl sim", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int, help="run one seed")
    group.add_argument("--seeds", type=_parse_range, help="run seeds START:STOP")
    parser.add_argument("--n", type=int, choices=(4, 7, 10, 16), help="force the committee size")
    parser.add_argument("--trace", action="store_true", help="print the trace of a passing run")
    parser.add_argument(
        "--unsafe-quorum", type=int, default=None, help="test only: a (broken) quorum size"
    )
    args = parser.parse_args(argv)
    seeds = range(args.seed, args.seed + 1) if args.seed is not None else args.seeds
    failed: list[int] = []
    for seed in seeds:
        result = run_seed(seed, n=args.n, unsafe_quorum_size=args.unsafe_quorum)
        if not result.ok:
            failed.append(seed)
            print(result.format_failure(), file=sys.stderr)
        elif args.trace:
            print("\n".join(result.trace))
        if len(seeds) == 1:
            status = "ok" if result.ok else "FAILED"
            print(
                f"seed {seed} n={result.scenario.n}: {status}; heights {result.heights}; "
                f"{result.ticks} ticks, {result.messages} messages"
            )
    if len(seeds) > 1:
        print(f"{len(seeds)} seeds, {len(failed)} failed" + (f": {failed}" if failed else ""))
    return 1 if failed else 0
