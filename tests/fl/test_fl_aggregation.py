"""Aggregation rules: agreement with the NumPy float64 reference, exactness of the kernels,
breakdown properties on adversarial inputs, order invariance and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from fl import kernels
from fl import reference as ref
from fl.aggregation import RULES, AggregationInputError, aggregate
from fl.quantize import QuantizedUpdates, QuantizedVector, dequantize

SCALE = 10
STEP = 2.0**-SCALE


def _make(n: int, d: int, seed: int, byzantine: int = 0) -> tuple[QuantizedUpdates, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.2, 0.1, size=(n, d))
    if byzantine:
        x[:byzantine] = rng.normal(-3.0, 2.0, size=(byzantine, d))
    q = np.clip(np.rint(np.ldexp(x, SCALE)), -32767, 32767).astype(np.int16)
    return QuantizedUpdates(q, SCALE), dequantize(q, SCALE)


PARAMS = {
    "mean": {},
    "median": {},
    "trimmed_mean": {"f": 2},
    "krum": {"f": 2},
    "multi_krum": {"f": 2},
    "bulyan": {"f": 2},
    "geometric_median": {"iterations": 5},
    "centered_clipping": {"tau": 0.5},
    "fltrust": {},
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("n", [11, 12])
def test_rule_matches_numpy_reference(rule: str, n: int) -> None:
    updates, x = _make(n, 257, seed=n, byzantine=2)
    rng = np.random.default_rng(99)
    g0 = np.rint(np.ldexp(rng.normal(0.2, 0.1, size=257), SCALE)).astype(np.int16)
    reference = QuantizedVector(g0, SCALE, 0)
    weights = np.ones(n, dtype=np.int64)
    got = aggregate(
        rule,
        updates,
        list(range(n)),
        weights,
        PARAMS[rule],
        reference if rule == "fltrust" else None,
    )
    want = ref.reference_aggregate(
        rule,
        x,
        weights.astype(float),
        PARAMS[rule],
        dequantize(g0, SCALE) if rule == "fltrust" else None,
    )
    # exact rules agree to rounding of one division; float rules to well under one step
    assert np.max(np.abs(got.aggregate - want)) <= STEP / 2
    if rule == "krum":
        assert got.selected == (ref.reference_krum(x, 2)[1],)
    if rule == "multi_krum":
        assert list(got.selected) == ref.reference_multi_krum(x, weights.astype(float), 2, n - 2)[1]
    if rule == "bulyan":
        assert list(got.selected) == ref.reference_bulyan(x, 2)[1]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 33])
def test_trimmed_sums_are_exact(n: int) -> None:
    rng = np.random.default_rng(n)
    v = rng.integers(-32767, 32768, size=(n, 1000)).astype(np.int16)
    v[:, :5] = 7  # ties
    v[:, 5:400] = rng.integers(-3, 4, size=(n, 395))  # many ties
    for trim in range(0, (n + 1) // 2):
        want = np.sort(v.astype(np.int64), axis=0)[trim : n - trim].sum(axis=0)
        for sums_only in (False, True):
            pairs = kernels.compute_sorting_network(n, trim, n - trim, sums_only)
            np.testing.assert_array_equal(kernels.compute_trimmed_sums(v, pairs, trim), want)


def test_pairwise_distances_are_exact_at_extremes() -> None:
    v = np.full((4, 3000), 32767, dtype=np.int16)
    v[1] = -32767
    v[2, ::2] = -32767
    got = kernels.compute_pairwise_sq_distances(v)
    w = v.astype(np.int64)
    want = ((w[:, None, :] - w[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(got, want)
    assert got[0, 1] == 3000 * 65534**2


def test_neighbour_means_round_half_to_even() -> None:
    v = np.array([[1, 3, -1, 2], [2, 2, -2, 3]], dtype=np.int16)
    out = kernels.compute_neighbour_means(v, np.array([[0, 1], [0, 1]], dtype=np.int64))
    # sums 3, 5, -3, 5 over 2 -> 1.5, 2.5, -1.5, 2.5 -> 2, 2, -2, 2
    np.testing.assert_array_equal(out[0], [2, 2, -2, 2])


def test_order_of_arrival_does_not_matter() -> None:
    updates, _ = _make(13, 300, seed=3, byzantine=3)
    ids = list(range(100, 113))
    perm = np.random.default_rng(1).permutation(13)
    shuffled = QuantizedUpdates(np.ascontiguousarray(updates.values[perm]), SCALE)
    for rule in ("krum", "bulyan", "geometric_median", "multi_krum"):
        a = aggregate(rule, updates, ids, None, PARAMS[rule])
        b = aggregate(rule, shuffled, [ids[i] for i in perm], None, PARAMS[rule])
        assert a.aggregate.tobytes() == b.aggregate.tobytes()
        assert a.selected == b.selected


def test_krum_tie_broken_by_lowest_client_id() -> None:
    v = np.zeros((7, 10), dtype=np.int16)
    result = aggregate(
        "krum", QuantizedUpdates(v, SCALE), [50, 40, 60, 30, 70, 80, 90], None, {"f": 1}
    )
    assert result.selected == (30,)


@pytest.mark.parametrize(
    "rule", ["median", "trimmed_mean", "bulyan", "geometric_median", "krum", "multi_krum"]
)
def test_breakdown_f_arbitrary_rows_are_ignored(rule: str) -> None:
    n, f, d = 15, 3, 200
    updates, x = _make(n, d, seed=5)
    honest = x[f:]
    bad = updates.values.copy()
    bad[:f] = 32767  # f arbitrary (here: maximal) rows
    bad[0, ::2] = -32767
    result = aggregate(
        rule,
        QuantizedUpdates(bad, SCALE),
        list(range(n)),
        None,
        {"f": f} if "f" in RULES[rule].defaults else {},
    )
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    assert np.all(result.aggregate >= lo - STEP) and np.all(result.aggregate <= hi + STEP)
    if rule in ("krum", "multi_krum", "bulyan"):
        assert not set(result.selected) & set(range(f))


def test_krum_never_selects_a_far_outlier_even_if_it_is_lowest_id() -> None:
    updates, _ = _make(9, 100, seed=8)
    v = updates.values.copy()
    v[0] += 2000
    result = aggregate("krum", QuantizedUpdates(v, SCALE), list(range(9)), None, {"f": 2})
    assert result.selected != (0,)
    assert result.scores[0] == max(result.scores)


def test_mean_is_broken_by_one_row_but_median_is_not() -> None:
    updates, x = _make(9, 50, seed=2)
    v = updates.values.copy()
    v[4] = 32767
    bad = QuantizedUpdates(v, SCALE)
    assert aggregate("mean", bad, list(range(9))).aggregate.min() > x.max() + 1.0
    assert aggregate("median", bad, list(range(9))).aggregate.max() <= x.max()


def test_fltrust_gives_zero_trust_to_opposite_updates() -> None:
    updates, _ = _make(6, 80, seed=4)
    v = updates.values.copy()
    v[2] = -v[2]
    ref_vec = QuantizedVector(updates.values[0].copy(), SCALE, 0)
    result = aggregate("fltrust", QuantizedUpdates(v, SCALE), list(range(6)), None, {}, ref_vec)
    assert result.scores[2] == 0.0 and 2 not in result.selected
    assert result.scores[0] == pytest.approx(1.0)


def test_clip_pre_aggregator_bounds_norms() -> None:
    updates, _ = _make(5, 400, seed=6, byzantine=1)
    result = aggregate(
        "mean", updates, list(range(5)), None, {}, None, [("clip", {"clip_norm": 0.5})]
    )
    assert np.linalg.norm(result.aggregate) <= 0.5 + 400**0.5 * STEP


def test_weighted_mean_uses_integer_weights_exactly() -> None:
    v = np.array([[10, -20], [40, 20]], dtype=np.int16)
    result = aggregate("mean", QuantizedUpdates(v, 0), [1, 2], [3, 1])
    np.testing.assert_array_equal(result.aggregate, [(30 + 40) / 4, (-60 + 20) / 4])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "krum", "params": {"f": 4}}, "n > 2f \\+ 2"),
        ({"rule": "bulyan", "params": {"f": 2}}, "n >= 4f \\+ 3"),
        ({"rule": "trimmed_mean", "params": {"f": 5}}, "n > 2f"),
        ({"rule": "nope"}, "unknown rule"),
        ({"rule": "krum", "params": {"g": 1}}, "unknown parameter"),
        ({"rule": "krum", "params": {"f": 1.5}}, "must be an integer"),
        ({"rule": "centered_clipping", "params": {"tau": float("nan")}}, "finite"),
        ({"rule": "mean", "ids": [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]}, "unique"),
        ({"rule": "mean", "ids": [0, 1]}, "2 client ids for 10 updates"),
        ({"rule": "mean", "weights": [1] * 9}, "weights must be 10 integers"),
        ({"rule": "mean", "weights": [0] * 10}, "positive sum"),
        ({"rule": "mean", "weights": [1.0] * 10}, "integers"),
        ({"rule": "fltrust"}, "needs a reference"),
        ({"rule": "mean", "pre": [("nnm", {"f": 10})]}, "nnm needs n > f"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs: dict, message: str) -> None:
    updates, _ = _make(10, 20, seed=1)
    with pytest.raises(AggregationInputError, match=message):
        aggregate(
            kwargs["rule"],
            updates,
            kwargs.get("ids", list(range(10))),
            kwargs.get("weights"),
            kwargs.get("params"),
            None,
            kwargs.get("pre", ()),
        )


def test_reference_shape_mismatch_is_rejected() -> None:
    updates, _ = _make(5, 20, seed=1)
    bad_ref = QuantizedVector(np.zeros(19, dtype=np.int16), SCALE, 0)
    with pytest.raises(AggregationInputError, match="reference has shape"):
        aggregate("fltrust", updates, list(range(5)), None, {}, bad_ref)


@pytest.mark.parametrize(
    ("pre", "rule", "expected"),
    [
        (
            ("clip", {"clip_norm": 2.0}),
            "mean",
            lambda x, w: ref.reference_mean(ref.reference_clip(x, 2.0), w),
        ),
        (("nnm", {"f": 2}), "median", lambda x, w: ref.reference_median(ref.reference_nnm(x, 2))),
        (("nnm", {"f": 2}), "krum", lambda x, w: ref.reference_krum(ref.reference_nnm(x, 2), 2)[0]),
    ],
)
def test_pre_aggregators_match_numpy_reference(pre, rule, expected) -> None:  # type: ignore[no-untyped-def]
    updates, x = _make(11, 300, seed=12, byzantine=2)
    got = aggregate(
        rule, updates, list(range(11)), None, {"f": 2} if rule == "krum" else {}, None, [pre]
    )
    want = expected(x, np.ones(11))
    # one re-rounding of each entry (half a step) plus the rule's own rounding
    assert np.max(np.abs(got.aggregate - want)) <= STEP
