"""Fixed inputs for the golden aggregation hashes; run as a script it prints them as JSON.

Used by ``test_golden.py`` in-process and in fresh subprocesses with different
``NUMBA_NUM_THREADS``: every run must print the same SHA-256 per rule.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from fl.aggregation import ParamValue, aggregate, compute_aggregate_digest
from fl.quantize import QuantizedUpdates, QuantizedVector

# large enough (n * d >= 2**22) that aggregate() runs the kernels multi-threaded
GOLDEN_DIM = 1 << 18

CASES: dict[
    str, tuple[str, dict[str, ParamValue], tuple[tuple[str, dict[str, ParamValue]], ...]]
] = {
    "mean": ("mean", {}, ()),
    "median": ("median", {}, ()),
    "trimmed_mean": ("trimmed_mean", {"f": 3}, ()),
    "krum": ("krum", {"f": 3}, ()),
    "multi_krum": ("multi_krum", {"f": 3}, ()),
    "bulyan": ("bulyan", {"f": 3}, ()),
    "geometric_median": ("geometric_median", {"iterations": 6}, ()),
    "centered_clipping": ("centered_clipping", {"tau": 2.0, "iterations": 3}, ()),
    "fltrust": ("fltrust", {}, ()),
    "nnm+median": ("median", {}, (("nnm", {"f": 3}),)),
    "clip+mean": ("mean", {}, (("clip", {"clip_norm": 5.0}),)),
}


def make_inputs(
    n: int = 16, d: int = GOLDEN_DIM, seed: int = 7
) -> tuple[QuantizedUpdates, QuantizedVector, list[int], list[int]]:
    rng = np.random.default_rng(seed)
    honest = rng.normal(0.1, 0.05, size=(n, d))
    honest[:3] = rng.normal(-2.0, 1.0, size=(3, d))  # three Byzantine rows
    q = np.clip(np.rint(np.ldexp(honest, 10)), -32767, 32767).astype(np.int16)
    ref = np.clip(np.rint(np.ldexp(rng.normal(0.1, 0.05, size=d), 10)), -32767, 32767).astype(
        np.int16
    )
    ids = [int(i) for i in rng.permutation(1000)[:n]]
    weights = [int(w) for w in rng.integers(1, 100, size=n)]
    return QuantizedUpdates(q, 10), QuantizedVector(ref, 10, 0), ids, weights


def compute_golden_digests(d: int = GOLDEN_DIM) -> dict[str, str]:
    updates, reference, ids, weights = make_inputs(d=d)
    out = {}
    for name, (rule, params, pre) in CASES.items():
        result = aggregate(rule, updates, ids, weights, params, reference, pre)
        out[name] = compute_aggregate_digest(result).hex()
    return out


if __name__ == "__main__":
    json.dump(
        compute_golden_digests(int(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN_DIM), sys.stdout
    )
