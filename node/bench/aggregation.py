"""``bcfl bench aggregation``: exact Numba rules vs a NumPy float64 reference vs Flower.

For each (n, d) it builds a random int16 update matrix (``scale_exp`` 12),
times ``fl.aggregation.aggregate`` for each rule, the NumPy reference in
``fl.reference`` and, when ``flwr`` imports, Flower's
``flwr.server.strategy.aggregate`` functions on the same float64 data, plus the
time to read the n x d input once (``values.max()``), the floor for any rule.
Reports the best of ``--repeats`` runs, the first-call (compile or cache load)
time per rule and the SHA-256 of every aggregate, and writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl import reference as ref
from fl.aggregation import ParamValue, aggregate, compute_aggregate_digest
from fl.quantize import D_MAX, QuantizedUpdates, dequantize

BENCH_RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan")
SCALE_EXP = 12


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _flower() -> Any | None:
    try:
        from flwr.server.strategy import aggregate as flower_aggregate
    except Exception:  # noqa: BLE001 - any import failure means "unavailable"
        return None
    return flower_aggregate


def _f_for(n: int) -> int:
    return max(1, (n - 3) // 4)  # the largest f Bulyan accepts (n >= 4f + 3)


def _flower_fn(
    fa: Any, rule: str, results: list[tuple[list[np.ndarray], int]], f: int
) -> Callable[[], object] | None:
    if rule == "mean":
        return lambda: fa.aggregate(results)
    if rule == "median":
        return lambda: fa.aggregate_median(results)
    if rule == "trimmed_mean":
        return lambda: fa.aggregate_trimmed_avg(results, f / len(results))
    if rule == "krum":
        return lambda: fa.aggregate_krum(results, f, 0)
    if rule == "multi_krum":
        return lambda: fa.aggregate_krum(results, f, len(results) - f)
    if rule == "bulyan":
        return lambda: fa.aggregate_bulyan(list(results), f, fa.aggregate_krum, to_keep=0)
    return None


@dataclass(frozen=True)
class BenchOptions:
    rules: tuple[str, ...]
    repeats: int
    flower_repeats: int
    flower_max_d: int
    flower_bulyan_max_n: int
    seed: int


def run_case(n: int, d: int, opts: BenchOptions, flower: Any | None) -> dict[str, Any]:
    rng = np.random.default_rng(opts.seed)
    values = rng.integers(-4000, 4001, size=(n, d)).astype(np.int16)
    updates = QuantizedUpdates(values, SCALE_EXP)
    x = dequantize(values, SCALE_EXP)
    w = np.ones(n)
    ids = list(range(n))
    f = _f_for(n)
    results = [([x[i]], 1) for i in range(n)]
    case: dict[str, Any] = {
        "n": n,
        "d": d,
        "f": f,
        "read_once_ms": _best_ms(lambda: values.max(), max(3, opts.repeats)),
        "rules": {},
    }
    for rule in opts.rules:
        params: dict[str, ParamValue] = (
            {"f": f} if rule in ("trimmed_mean", "krum", "multi_krum", "bulyan") else {}
        )
        exact = functools.partial(aggregate, rule, updates, ids, None, params)
        numpy_ref = functools.partial(ref.reference_aggregate, rule, x, w, params)
        t0 = time.perf_counter()
        first = aggregate(rule, updates, ids, None, params)
        first_ms = (time.perf_counter() - t0) * 1e3
        entry: dict[str, Any] = {
            "first_call_ms": first_ms,
            "exact_ms": _best_ms(exact, opts.repeats),
            "sha256": compute_aggregate_digest(first).hex(),
            "selected_count": len(first.selected),
        }
        entry["numpy_ms"] = _best_ms(numpy_ref, 1 if rule == "bulyan" else opts.repeats)
        entry["read_once_ratio"] = entry["exact_ms"] / case["read_once_ms"]
        fn = _flower_fn(flower, rule, results, f) if flower is not None else None
        if fn is None:
            entry["flower_ms"] = None
            entry["flower"] = "unavailable" if flower is None else "no equivalent"
        elif d > opts.flower_max_d:
            entry["flower_ms"] = None
            entry["flower"] = f"skipped (d > --flower-max-d {opts.flower_max_d})"
        elif rule == "bulyan" and n > opts.flower_bulyan_max_n:
            entry["flower_ms"] = None
            entry["flower"] = f"skipped (n > --flower-bulyan-max-n {opts.flower_bulyan_max_n})"
        else:
            entry["flower_ms"] = _best_ms(fn, opts.flower_repeats)
            entry["speedup_vs_flower"] = entry["flower_ms"] / entry["exact_ms"]
        case["rules"][rule] = entry
    return case


_COLD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from fl.aggregation import aggregate
from fl.quantize import QuantizedUpdates
out = {"import_ms": (time.perf_counter() - t0) * 1e3}
v = np.random.default_rng(0).integers(-100, 101, size=(11, 1000)).astype(np.int16)
u = QuantizedUpdates(v, 12)
for rule in sys.argv[1].split(","):
    p = {"f": 2} if rule in ("trimmed_mean", "krum", "multi_krum", "bulyan") else {}
    t0 = time.perf_counter()
    aggregate(rule, u, list(range(11)), None, p)
    out[rule] = (time.perf_counter() - t0) * 1e3
print(json.dumps(out))
"""


def measure_cold_compile(rules: tuple[str, ...]) -> dict[str, float]:
    """First-call time per rule in a fresh process with an empty Numba cache directory,
    then again in a fresh process that reuses the cache (``cache=True``)."""
    import os
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[2]
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(root))
        for label in ("cold_cache", "warm_cache"):
            proc = subprocess.run(
                [sys.executable, "-c", _COLD_SCRIPT, ",".join(rules)],
                env=env,
                cwd=root,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            result[label] = json.loads(proc.stdout)
    return result


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bcfl bench aggregation", description=__doc__)
    p.add_argument("--n", default="10,50,100", help="comma-separated client counts")
    p.add_argument("--d", default="1e5,1e6", help="comma-separated dimensions")
    p.add_argument("--rules", default=",".join(BENCH_RULES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-flower", action="store_true", help="do not import flwr")
    p.add_argument("--flower-max-d", type=int, default=10**7, help="skip Flower above this d")
    p.add_argument("--flower-repeats", type=int, default=1, help="repeats for Flower (slow)")
    p.add_argument(
        "--flower-bulyan-max-n",
        type=int,
        default=50,
        help="skip Flower's Bulyan above this n (it runs n - 2f full Krums)",
    )
    p.add_argument("--threads", type=int, default=0, help="Numba threads (0: Numba's default)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time first calls in fresh processes with an empty / reused cache",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/aggregation.json")
    args = p.parse_args(argv)
    rules = tuple(r for r in args.rules.split(",") if r)
    try:
        ns, ds = _ints(args.n), _ints(args.d)
    except ValueError:
        print("bcfl bench aggregation: --n and --d take comma-separated numbers", file=sys.stderr)
        return 2
    if not ns or not ds or min(ns) < 1 or min(ds) < 1 or max(ds) > D_MAX or max(ns) > 1000:
        print(f"bcfl bench aggregation: need 1 <= n <= 1000 and 1 <= d <= {D_MAX}", file=sys.stderr)
        return 2
    bad = [r for r in rules if r not in BENCH_RULES + ("geometric_median", "centered_clipping")]
    if bad or args.repeats < 1:
        print(f"bcfl bench aggregation: bad rules {bad} or repeats", file=sys.stderr)
        return 2
    opts = BenchOptions(
        rules,
        args.repeats,
        max(1, args.flower_repeats),
        args.flower_max_d,
        args.flower_bulyan_max_n,
        args.seed,
    )
    flower = None if args.no_flower else _flower()
    import numba

    threads_max = int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))
    if args.threads:
        if not 1 <= args.threads <= threads_max:
            print(
                f"bcfl bench aggregation: --threads must be in [1, {threads_max}]", file=sys.stderr
            )
            return 2
        numba.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "flower": "unavailable" if flower is None else "available",
        "numba_threads": numba.get_num_threads(),
        "cases": [],
    }
    for n in ns:
        for d in ds:
            case = run_case(n, d, opts, flower)
            report["cases"].append(case)
            for rule, e in case["rules"].items():
                fl_ms = "n/a" if e["flower_ms"] is None else f"{e['flower_ms']:.1f}"
                print(
                    f"n={n:<4} d={d:<8} {rule:<14} exact {e['exact_ms']:8.1f} ms  "
                    f"numpy {e['numpy_ms']:8.1f} ms  flower {fl_ms:>8} ms  "
                    f"read-once x{e['read_once_ratio']:.1f}  first {e['first_call_ms']:.0f} ms",
                    flush=True,
                )
    if args.compile:
        report["first_call_ms"] = measure_cold_compile(rules)
        print("first call, empty cache (ms):", json.dumps(report["first_call_ms"]["cold_cache"]))
        print("first call, reused cache (ms):", json.dumps(report["first_call_ms"]["warm_cache"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0
