"""Byzantine-robust aggregation over fixed-point updates: one interface, a registry of rules.

``aggregate(rule, updates, client_ids, weights, params, reference, pre)`` takes an
``n x d`` int16 matrix (``QuantizedUpdates``), client ids, integer weights
(e.g. sample counts) and integer/float parameters named by the chain, and
returns an ``AggregationResult``: the float64 aggregate in real units, the ids
whose updates entered it, a score per client and a few diagnostics.

Rows are first put in ascending client-id order, so every tie (equal Krum
scores, equal distances) is broken by client id and the result does not depend
on the order the updates arrived in.  Validation (shapes, ids, weights, n vs f,
parameter types) is separate from the math and raises ``AggregationInputError``
with a message that names the problem.

Determinism: selection, distances and sums are exact integers (``fl.kernels``);
a mean is one float64 division of two exactly representable integers per
coordinate (correctly rounded by IEEE 754); scaling by ``2**-s`` is exact.  The
iterative float rules (geometric median, centered clipping, FLTrust) use a
fixed iteration count and fixed summation order, so they are bit-identical on
every thread count; see ``docs/fl.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numba
import numpy as np
import numpy.typing as npt

from fl import kernels
from fl.quantize import (
    N_CLIENTS_MAX,
    Q_MAX_INT16,
    QuantizedUpdates,
    QuantizedVector,
)

FloatArray = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
ParamValue = int | float
EXACT_FLOAT_MAX = 2**53
WEISZFELD_ITERATIONS_MAX = 100
CCLIP_ITERATIONS_MAX = 100
SMALL_INPUT_ENTRIES = 1 << 22  # below this many n*d entries (8 MiB), kernels use one thread
PRE_AGGREGATORS_MAX = 4


class AggregationInputError(ValueError):
    """Bad input to an aggregation rule; nothing was computed."""


@dataclass(frozen=True)
class AggregationResult:
    """What a rule returns.  ``client_ids`` and ``scores`` are in ascending id order."""

    aggregate: FloatArray
    selected: tuple[int, ...]
    client_ids: tuple[int, ...]
    scores: FloatArray
    diagnostics: Mapping[str, ParamValue | str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Inputs:
    """Validated inputs in canonical (ascending id) order."""

    values: npt.NDArray[np.int16]
    scale_exp: int
    ids: tuple[int, ...]
    weights: Int64Array
    params: Mapping[str, ParamValue]
    reference: npt.NDArray[np.int16] | None


RuleFn = Callable[[_Inputs], AggregationResult]


@dataclass(frozen=True)
class RuleSpec:
    """A named rule: its function, its parameters with defaults, and its n-vs-f condition."""

    name: str
    fn: RuleFn
    defaults: Mapping[str, ParamValue]
    min_clients: Callable[[Mapping[str, ParamValue]], int]
    condition: str
    needs_reference: bool = False


# ---------------------------------------------------------------- helpers


def _dequantize_sums(sums: Int64Array, divisor: int, scale_exp: int) -> FloatArray:
    """``sums / divisor * 2**-scale_exp``: exact conversion, one correctly rounded division."""
    assert divisor > 0
    assert sums.size == 0 or int(np.abs(sums).max()) < EXACT_FLOAT_MAX, "sum exceeds 2**53"
    return np.ldexp(sums.astype(np.float64) / float(divisor), -scale_exp)


@lru_cache(maxsize=256)
def _network(n: int, lo: int, hi: int, sums_only: bool) -> Int64Array:
    pairs = kernels.compute_sorting_network(n, lo, hi, sums_only)
    pairs.setflags(write=False)
    return pairs


def _trimmed_sums(values: npt.NDArray[np.int16], trim: int) -> Int64Array:
    n = values.shape[0]
    return kernels.compute_trimmed_sums(values, _network(n, trim, n - trim, True), trim)


def _mean_of_rows(inp: _Inputs, rows: Sequence[int]) -> FloatArray:
    w = np.zeros(len(inp.ids), dtype=np.int64)
    for r in rows:
        w[r] = inp.weights[r]
    if int(w.sum()) == 0:  # all selected weights zero: fall back to equal weights
        for r in rows:
            w[r] = 1
    sums = kernels.compute_weighted_sums(inp.values, w)
    return _dequantize_sums(sums, int(w.sum()), inp.scale_exp)


def _krum_scores(dist: Int64Array, active: Sequence[int], f: int) -> dict[int, int]:
    """Krum score of each active row: sum of its ``len(active) - f - 2`` smallest distances."""
    m = len(active) - f - 2
    assert m >= 1
    scores: dict[int, int] = {}
    for i in active:
        others = sorted(int(dist[i, j]) for j in active if j != i)
        scores[i] = sum(others[:m])
    return scores


def _f_of(inp: _Inputs) -> int:
    return int(inp.params["f"])


# ---------------------------------------------------------------- rules


def _rule_mean(inp: _Inputs) -> AggregationResult:
    rows = list(range(len(inp.ids)))
    agg = _mean_of_rows(inp, rows)
    return AggregationResult(agg, inp.ids, inp.ids, inp.weights.astype(np.float64), {})


def _rule_median(inp: _Inputs) -> AggregationResult:
    n = len(inp.ids)
    trim = (n - 1) // 2
    sums = _trimmed_sums(inp.values, trim)
    agg = _dequantize_sums(sums, n - 2 * trim, inp.scale_exp)
    return AggregationResult(agg, inp.ids, inp.ids, np.zeros(n), {"trim": trim})


def _rule_trimmed_mean(inp: _Inputs) -> AggregationResult:
    n = len(inp.ids)
    trim = _f_of(inp)
    sums = _trimmed_sums(inp.values, trim)
    agg = _dequantize_sums(sums, n - 2 * trim, inp.scale_exp)
    return AggregationResult(agg, inp.ids, inp.ids, np.zeros(n), {"trim": trim})


def _rule_krum(inp: _Inputs) -> AggregationResult:
    n = len(inp.ids)
    f = _f_of(inp)
    dist = kernels.compute_pairwise_sq_distances(inp.values)
    scores = _krum_scores(dist, range(n), f)
    best = min(range(n), key=lambda i: (scores[i], i))
    agg = np.ldexp(inp.values[best].astype(np.float64), -inp.scale_exp)
    score_arr = np.array([float(scores[i]) for i in range(n)])
    return AggregationResult(agg, (inp.ids[best],), inp.ids, score_arr, {"winner": inp.ids[best]})


def _rule_multi_krum(inp: _Inputs) -> AggregationResult:
    n = len(inp.ids)
    f = _f_of(inp)
    m = int(inp.params["m"]) or n - f
    if not 1 <= m <= n:
        raise AggregationInputError(f"multi_krum: m={m} must be in [1, n={n}]")
    dist = kernels.compute_pairwise_sq_distances(inp.values)
    scores = _krum_scores(dist, range(n), f)
    chosen = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
    agg = _mean_of_rows(inp, chosen)
    score_arr = np.array([float(scores[i]) for i in range(n)])
    return AggregationResult(agg, tuple(inp.ids[i] for i in chosen), inp.ids, score_arr, {"m": m})


def _rule_bulyan(inp: _Inputs) -> AggregationResult:
    """El Mhamdi et al. 2018: theta = n - 2f rows by repeated Krum, then beta = theta - 2f
    values per coordinate closest to the coordinate-wise median, averaged."""
    n = len(inp.ids)
    f = _f_of(inp)
    theta = n - 2 * f
    beta = theta - 2 * f
    dist = kernels.compute_pairwise_sq_distances(inp.values)
    active = list(range(n))
    chosen: list[int] = []
    first_scores = _krum_scores(dist, active, f)
    for _ in range(theta):
        # Krum on the remaining set; with fewer than f + 3 rows left every row
        # scores 0 in Krum's formula, so the lowest id is taken (documented)
        if len(active) - f - 2 >= 1:
            scores = _krum_scores(dist, active, f)
            best = min(active, key=lambda i: (scores[i], i))
        else:
            best = active[0]
        chosen.append(best)
        active.remove(best)
    chosen.sort()
    sub = np.ascontiguousarray(inp.values[chosen])
    sums = kernels.compute_bulyan_sums(sub, _network(theta, 0, theta, False), beta)
    agg = _dequantize_sums(sums, beta, inp.scale_exp)
    score_arr = np.array([float(first_scores[i]) for i in range(n)])
    return AggregationResult(
        agg, tuple(inp.ids[i] for i in chosen), inp.ids, score_arr, {"theta": theta, "beta": beta}
    )


def _rule_geometric_median(inp: _Inputs) -> AggregationResult:
    """Weiszfeld iterations (RFA, Pillutla et al. 2022) from the weighted mean, fixed count."""
    n, d = inp.values.shape
    iterations = int(inp.params["iterations"])
    # the smoothing floor is in quantised units: distances below it count as it
    nu = float(inp.params["nu"]) * 2.0**inp.scale_exp
    w_total = int(inp.weights.sum())
    z = np.ldexp(_mean_of_rows(inp, list(range(n))), inp.scale_exp)  # back to quantised units
    zeros = np.zeros(d, dtype=np.float64)
    dists = kernels.compute_distances_to(inp.values, z)
    for _ in range(iterations):
        raw = [float(inp.weights[i]) / w_total / max(nu, float(dists[i])) for i in range(n)]
        total = 0.0
        for c in raw:  # sequential on purpose: fixed summation order
            total += c
        coefs = np.array([c / total for c in raw], dtype=np.float64)
        z = kernels.compute_combination(inp.values, coefs, zeros, 0.0)
        dists = kernels.compute_distances_to(inp.values, z)
    agg = np.ldexp(z, -inp.scale_exp)
    scores = np.ldexp(dists, -inp.scale_exp)
    return AggregationResult(agg, inp.ids, inp.ids, scores, {"iterations": iterations})


def _rule_centered_clipping(inp: _Inputs) -> AggregationResult:
    """Karimireddy et al. 2021: v += mean_i clip(x_i - v, tau), L times, from a start centre.

    The centre starts at the reference update when given (e.g. the previous
    round's aggregate), else at the exact coordinate-wise median.
    """
    n, d = inp.values.shape
    tau = float(inp.params["tau"]) * 2.0**inp.scale_exp
    iterations = int(inp.params["iterations"])
    w_total = int(inp.weights.sum())
    if inp.reference is not None:
        v = inp.reference.astype(np.float64)
    else:
        trim = (n - 1) // 2
        v = _trimmed_sums(inp.values, trim).astype(np.float64) / float(n - 2 * trim)
    clipped = 0
    dists = kernels.compute_distances_to(inp.values, v)
    for _ in range(iterations):
        coefs_list = []
        clipped = 0
        for i in range(n):
            factor = 1.0 if dists[i] <= tau else tau / float(dists[i])
            clipped += int(dists[i] > tau)
            coefs_list.append(float(inp.weights[i]) / w_total * factor)
        kept = 1.0
        for c in coefs_list:  # sequential: v_new = (1 - sum c_i) v + sum c_i x_i
            kept -= c
        v = kernels.compute_combination(inp.values, np.array(coefs_list), v, kept)
        dists = kernels.compute_distances_to(inp.values, v)
    agg = np.ldexp(v, -inp.scale_exp)
    scores = np.ldexp(dists, -inp.scale_exp)
    return AggregationResult(agg, inp.ids, inp.ids, scores, {"clipped_last_iteration": clipped})


def _rule_fltrust(inp: _Inputs) -> AggregationResult:
    """Cao et al. NDSS 2021: trust ReLU(cos(x_i, g0)); x_i rescaled to |g0|; weighted by trust."""
    assert inp.reference is not None
    n, _ = inp.values.shape
    dots = kernels.compute_dots_with(inp.values, inp.reference)
    norms2 = kernels.compute_row_sq_norms(inp.values)
    ref_norm = math.sqrt(float(dots[n]))
    trust = np.zeros(n, dtype=np.float64)
    for i in range(n):
        if norms2[i] > 0 and ref_norm > 0:
            cos = float(dots[i]) / (math.sqrt(float(norms2[i])) * ref_norm)
            trust[i] = max(0.0, cos)
    total = 0.0
    for t in trust:
        total += float(t)
    d = inp.values.shape[1]
    if total == 0.0:
        return AggregationResult(np.zeros(d), (), inp.ids, trust, {"trust_total": 0.0})
    coefs = np.zeros(n, dtype=np.float64)
    for i in range(n):
        if trust[i] > 0.0:
            coefs[i] = trust[i] / total * (ref_norm / math.sqrt(float(norms2[i])))
    agg_q = kernels.compute_combination(inp.values, coefs, np.zeros(d), 0.0)
    selected = tuple(inp.ids[i] for i in range(n) if trust[i] > 0.0)
    return AggregationResult(
        np.ldexp(agg_q, -inp.scale_exp), selected, inp.ids, trust, {"trust_total": total}
    )


# ---------------------------------------------------------------- pre-aggregators


def _pre_clip(
    values: npt.NDArray[np.int16],
    scale_exp: int,
    params: Mapping[str, ParamValue],
) -> npt.NDArray[np.int16]:
    """Scale each row to L2 norm at most ``clip_norm`` (real units), re-rounded half to even."""
    bound = float(params["clip_norm"]) * 2.0**scale_exp
    norms2 = kernels.compute_row_sq_norms(values)
    factors = np.ones(values.shape[0], dtype=np.float64)
    for i in range(values.shape[0]):
        norm = math.sqrt(float(norms2[i]))
        if norm > bound:
            factors[i] = bound / norm
    return kernels.compute_scaled_rows(values, factors)


def _pre_nnm(
    values: npt.NDArray[np.int16],
    scale_exp: int,
    params: Mapping[str, ParamValue],
) -> npt.NDArray[np.int16]:
    """Nearest-neighbour mixing (Allouah et al. 2023): row i -> mean of its n - f nearest rows
    (itself included; distance ties by id), rounded half to even."""
    n = values.shape[0]
    f = int(params["f"])
    dist = kernels.compute_pairwise_sq_distances(values)
    m = n - f
    nbrs = np.empty((n, m), dtype=np.int64)
    for i in range(n):
        order = sorted(range(n), key=lambda j: (int(dist[i, j]), j))
        nbrs[i] = order[:m]
    return kernels.compute_neighbour_means(values, nbrs)


PRE_AGGREGATORS: dict[
    str,
    tuple[
        Callable[[npt.NDArray[np.int16], int, Mapping[str, ParamValue]], npt.NDArray[np.int16]],
        Mapping[str, ParamValue],
    ],
] = {
    "clip": (_pre_clip, {"clip_norm": 1.0}),
    "nnm": (_pre_nnm, {"f": 0}),
}


def _need(k: int) -> Callable[[Mapping[str, ParamValue]], int]:
    return lambda p: k * int(p["f"])


RULES: dict[str, RuleSpec] = {
    spec.name: spec
    for spec in (
        RuleSpec("mean", _rule_mean, {}, lambda p: 1, "n >= 1"),
        RuleSpec("median", _rule_median, {}, lambda p: 1, "n >= 1 (breaks down at f >= n/2)"),
        RuleSpec(
            "trimmed_mean", _rule_trimmed_mean, {"f": 1}, lambda p: 2 * int(p["f"]) + 1, "n > 2f"
        ),
        RuleSpec("krum", _rule_krum, {"f": 1}, lambda p: 2 * int(p["f"]) + 3, "n > 2f + 2"),
        RuleSpec(
            "multi_krum",
            _rule_multi_krum,
            {"f": 1, "m": 0},
            lambda p: 2 * int(p["f"]) + 3,
            "n > 2f + 2; m = 0 means n - f",
        ),
        RuleSpec("bulyan", _rule_bulyan, {"f": 1}, lambda p: 4 * int(p["f"]) + 3, "n >= 4f + 3"),
        RuleSpec(
            "geometric_median",
            _rule_geometric_median,
            {"iterations": 8, "nu": 1e-6},
            lambda p: 1,
            "n >= 1 (breakdown 1/2)",
        ),
        RuleSpec(
            "centered_clipping",
            _rule_centered_clipping,
            {"tau": 1.0, "iterations": 3},
            lambda p: 1,
            "n >= 1; robust when f < n/2 and tau is well chosen",
        ),
        RuleSpec(
            "fltrust",
            _rule_fltrust,
            {},
            lambda p: 1,
            "n >= 1; needs a trusted reference update",
            needs_reference=True,
        ),
    )
}


# ---------------------------------------------------------------- validation + entry point


def _validate_params(
    kind: str, given: Mapping[str, ParamValue], defaults: Mapping[str, ParamValue]
) -> dict[str, ParamValue]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise AggregationInputError(
            f"{kind}: unknown parameter(s) {unknown}; known {sorted(defaults)}"
        )
    merged: dict[str, ParamValue] = dict(defaults)
    for key, value in given.items():
        want_int = isinstance(defaults[key], int)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AggregationInputError(f"{kind}: parameter {key!r} must be a number")
        if want_int and not isinstance(value, int):
            raise AggregationInputError(f"{kind}: parameter {key!r} must be an integer")
        if not math.isfinite(float(value)) or value < 0:
            raise AggregationInputError(f"{kind}: parameter {key!r} must be finite and >= 0")
        merged[key] = value
    for key in ("tau", "clip_norm"):
        if key in merged and not float(merged[key]) > 0:
            raise AggregationInputError(f"{kind}: parameter {key!r} must be > 0")
    if "iterations" in merged and not 1 <= int(merged["iterations"]) <= WEISZFELD_ITERATIONS_MAX:
        raise AggregationInputError(
            f"{kind}: iterations must be in [1, {WEISZFELD_ITERATIONS_MAX}]"
        )
    return merged


def _validate(
    updates: QuantizedUpdates,
    client_ids: Sequence[int],
    weights: Sequence[int] | npt.NDArray[np.integer] | None,
    reference: QuantizedVector | None,
) -> tuple[list[int], Int64Array]:
    if not isinstance(updates, QuantizedUpdates):
        raise AggregationInputError("updates must be QuantizedUpdates (int16 matrix + scale)")
    if updates.values.ndim != 2:
        raise AggregationInputError(f"updates must be n x d, got shape {updates.values.shape}")
    n = updates.n_clients
    if not 1 <= n <= N_CLIENTS_MAX:
        raise AggregationInputError(f"number of clients {n} not in [1, {N_CLIENTS_MAX}]")
    ids = list(client_ids)
    if len(ids) != n:
        raise AggregationInputError(f"{len(ids)} client ids for {n} updates")
    if any(isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 0 for i in ids):
        raise AggregationInputError("client ids must be non-negative integers")
    if len(set(int(i) for i in ids)) != n:
        raise AggregationInputError("client ids must be unique")
    if weights is None:
        w = np.ones(n, dtype=np.int64)
    else:
        w_arr = np.asarray(weights)
        if w_arr.shape != (n,) or not np.issubdtype(w_arr.dtype, np.integer):
            raise AggregationInputError(
                f"weights must be {n} integers, got {w_arr.dtype} {w_arr.shape}"
            )
        if int(w_arr.min()) < 0 or int(w_arr.sum()) <= 0:
            raise AggregationInputError("weights must be >= 0 with a positive sum")
        w = w_arr.astype(np.int64)
    # keeps every weighted column sum below 2**53 (exact in float64)
    if int(w.sum()) * Q_MAX_INT16 >= EXACT_FLOAT_MAX:
        raise AggregationInputError("sum of weights too large for exact sums (< 2**38)")
    if reference is not None:
        if not isinstance(reference, QuantizedVector):
            raise AggregationInputError("reference must be a QuantizedVector")
        if reference.values.shape != (updates.dim,):
            raise AggregationInputError(
                f"reference has shape {reference.values.shape}, updates have d={updates.dim}"
            )
        if reference.scale_exp != updates.scale_exp:
            raise AggregationInputError("reference and updates use different scale exponents")
        if reference.values.dtype != np.int16:
            raise AggregationInputError("reference values must be int16")
    return [int(i) for i in ids], w


@contextmanager
def _threads_for(size: int) -> Iterator[None]:
    """One Numba thread for small inputs: waking a thread pool costs more than the work.

    Only speed changes: every kernel gives the same bits for any thread count.
    """
    if size >= SMALL_INPUT_ENTRIES:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def aggregate(
    rule: str,
    updates: QuantizedUpdates,
    client_ids: Sequence[int],
    weights: Sequence[int] | npt.NDArray[np.integer] | None = None,
    params: Mapping[str, ParamValue] | None = None,
    reference: QuantizedVector | None = None,
    pre: Sequence[tuple[str, Mapping[str, ParamValue]]] = (),
) -> AggregationResult:
    """Aggregate ``updates`` with the named rule after the named pre-aggregators, in order."""
    if rule not in RULES:
        raise AggregationInputError(f"unknown rule {rule!r}; one of {sorted(RULES)}")
    spec = RULES[rule]
    ids, w = _validate(updates, client_ids, weights, reference)
    merged = _validate_params(rule, params or {}, spec.defaults)
    n = len(ids)
    need = spec.min_clients(merged)
    if n < need:
        raise AggregationInputError(
            f"{rule} needs {spec.condition}: got n={n}, f={merged.get('f')}"
        )
    if spec.needs_reference and reference is None:
        raise AggregationInputError(f"{rule} needs a reference update")
    if len(pre) > PRE_AGGREGATORS_MAX:
        raise AggregationInputError(f"at most {PRE_AGGREGATORS_MAX} pre-aggregators")
    pre_steps = []
    for pre_name, pre_params in pre:
        if pre_name not in PRE_AGGREGATORS:
            raise AggregationInputError(
                f"unknown pre-aggregator {pre_name!r}; one of {sorted(PRE_AGGREGATORS)}"
            )
        fn, defaults = PRE_AGGREGATORS[pre_name]
        pre_merged = _validate_params(pre_name, pre_params, defaults)
        if pre_name == "nnm" and not n > int(pre_merged["f"]):
            raise AggregationInputError(f"nnm needs n > f: got n={n}, f={pre_merged['f']}")
        pre_steps.append((fn, pre_merged))
    # validation is over: from here on only math
    order = sorted(range(n), key=lambda i: ids[i])
    if order == list(range(n)) and updates.values.flags.c_contiguous:
        values = updates.values  # already canonical: no copy (callers should sort by id)
    else:
        values = np.ascontiguousarray(updates.values[order])
    with _threads_for(n * updates.dim):
        for fn, pre_merged in pre_steps:
            values = fn(values, updates.scale_exp, pre_merged)
        inp = _Inputs(
            values=values,
            scale_exp=updates.scale_exp,
            ids=tuple(ids[i] for i in order),
            weights=np.ascontiguousarray(w[order]),
            params=merged,
            reference=None if reference is None else np.ascontiguousarray(reference.values),
        )
        result = spec.fn(inp)
    assert result.aggregate.shape == (updates.dim,)
    assert np.all(np.isfinite(result.aggregate))
    return result


def compute_aggregate_digest(result: AggregationResult) -> bytes:
    """SHA-256 over the little-endian float64 bytes of the aggregate (what validators compare)."""
    import hashlib

    return hashlib.sha256(result.aggregate.astype("<f8").tobytes()).digest()
