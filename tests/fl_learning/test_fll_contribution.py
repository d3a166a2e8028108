"""Shapley values (exact and Monte-Carlo), the round utility, reward splitting, reputation."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl import contribution
from fl.aggregation import aggregate
from fl.contribution import (
    REPUTATION_INITIAL_PPM,
    ContributionInputError,
    RoundUtility,
    compute_efficiency_bound,
    compute_shapley_ppm,
    split_reward,
    update_reputation_ppm,
)
from fl.quantize import QuantizedUpdates
from fl.scoring import compute_validation_loss_ppm

CASES = Path(__file__).resolve().parent / "fll_cases.py"


def _load_cases():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fll_cases", CASES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fll_cases", module)
    spec.loader.exec_module(module)
    return module


cases = _load_cases()


def _table_utility(players: list[int], seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    table = {
        frozenset(s): int(rng.integers(-(10**6), 10**6))
        for r in range(len(players) + 1)
        for s in itertools.combinations(players, r)
    }
    table[frozenset()] = int(rng.integers(-1000, 1000))  # v(empty) need not be 0
    return table.__getitem__


def _brute_force(utility, players: list[int]) -> dict[int, Fraction]:  # type: ignore[no-untyped-def]
    """The definition: average marginal contribution over all n! orders."""
    totals = dict.fromkeys(players, Fraction(0))
    perms = list(itertools.permutations(players))
    for order in perms:
        seen: set[int] = set()
        for p in order:
            before = utility(frozenset(seen))
            seen.add(p)
            totals[p] += utility(frozenset(seen)) - before
    return {p: t / len(perms) for p, t in totals.items()}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_exact_equals_definition_and_efficiency_bound(n: int) -> None:
    players = [3 * k + 1 for k in range(n)]
    for seed in range(3):
        u = _table_utility(players, seed)
        got = compute_shapley_ppm(u, players, seed=0)
        ref = _brute_force(u, players)
        for p in players:
            assert abs(got[p] - ref[p]) <= Fraction(1, 2)  # one rounding, half to even
        gap = sum(got.values()) - (u(frozenset(players)) - u(frozenset()))
        assert abs(gap) <= compute_efficiency_bound(n) == n // 2


def test_symmetry_and_null_player() -> None:
    players = [2, 5, 9, 11]

    def u(s: frozenset[int]) -> int:  # 2 and 5 interchangeable, 11 a null player
        return 1000 * len(s & {2, 5}) ** 2 + 333 * (9 in s) + 7 * len(s & {2, 5}) * (9 in s)

    for exact_max in (12, 0):  # exact and Monte-Carlo
        phi = compute_shapley_ppm(u, players, seed=4, exact_players_max=exact_max)
        assert phi[11] == 0
        if exact_max:
            assert phi[2] == phi[5]


def test_monte_carlo_is_seeded_and_close_to_exact() -> None:
    r = cases.build_round(n_clients=10)
    u = RoundUtility(r.spec, r.base, r.deltas, r.ids, r.weights, r.x_val, r.y_val)
    exact = compute_shapley_ppm(u, r.ids, seed=0)
    mc_a = compute_shapley_ppm(u, r.ids, seed=11, exact_players_max=0, permutations=300)
    mc_b = compute_shapley_ppm(u, r.ids, seed=11, exact_players_max=0, permutations=300)
    mc_c = compute_shapley_ppm(u, r.ids, seed=12, exact_players_max=0, permutations=300)
    assert mc_a == mc_b and mc_a != mc_c
    total = u(frozenset(r.ids))
    for bound_sum in (exact, mc_a):
        assert abs(sum(bound_sum.values()) - total) <= compute_efficiency_bound(10)
    # marginals of the first joiners are large (diminishing returns), so the MC error is
    # judged against the round's total utility: a few per cent at 300 permutations
    errors = [abs(mc_a[p] - exact[p]) for p in r.ids]
    assert max(errors) <= 0.05 * abs(total) and sum(errors) / 10 <= 0.02 * abs(total)


def test_round_utility_matches_fedavg_and_flags_attackers() -> None:
    r = cases.build_round(n_clients=8, flip=(2,))
    u = RoundUtility(r.spec, r.base, r.deltas, r.ids, r.weights, r.x_val, r.y_val)
    assert u(frozenset()) == 0
    mean = aggregate("mean", r.deltas, r.ids, r.weights).aggregate
    loss = compute_validation_loss_ppm(r.spec, r.base, r.x_val, r.y_val)
    assert u(frozenset(r.ids)) == loss - compute_validation_loss_ppm(
        r.spec, r.base + mean, r.x_val, r.y_val
    )
    assert u(frozenset(r.ids)) == u(frozenset(reversed(r.ids)))  # memo and order agree
    phi = compute_shapley_ppm(u, r.ids, seed=0)
    assert phi[2] < 0 < min(v for k, v in phi.items() if k != 2)
    with pytest.raises(ContributionInputError):
        u(frozenset({99}))


def test_shapley_rejects_bad_arguments() -> None:
    def u(s: frozenset[int]) -> int:
        return len(s)

    with pytest.raises(ContributionInputError):
        compute_shapley_ppm(u, [1, 1], seed=0)
    with pytest.raises(ContributionInputError):
        compute_shapley_ppm(u, [1, 2], seed=0, exact_players_max=40)
    with pytest.raises(ContributionInputError):
        compute_shapley_ppm(u, [1, 2], seed=0, permutations=0)
    with pytest.raises(ContributionInputError):
        compute_shapley_ppm(lambda s: 0.5, [1, 2], seed=0)  # type: ignore[arg-type,return-value]
    assert compute_shapley_ppm(u, [], seed=0) == {}


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=10**12),
    st.dictionaries(st.integers(0, 10**6), st.integers(0, 10**9), max_size=30),
)
def test_split_reward_mints_exactly_the_pool(pool: int, shares: dict[int, int]) -> None:
    out = split_reward(pool, shares)
    assert set(out) == set(shares)
    total = sum(shares.values())
    if total == 0:
        assert all(v == 0 for v in out.values())
        return
    assert sum(out.values()) == pool
    for k, s in shares.items():
        assert abs(Fraction(out[k]) - Fraction(pool * s, total)) < 1  # proportional


def test_split_reward_ties_by_id_and_rejects_bad_input() -> None:
    assert split_reward(1, {5: 1, 2: 1, 9: 1}) == {2: 1, 5: 0, 9: 0}
    assert split_reward(2, {5: 1, 2: 1, 9: 1}) == {2: 1, 5: 1, 9: 0}
    assert split_reward(100, {1: 3, 2: 1}) == {1: 75, 2: 25}
    for bad in ({1: -1}, {-1: 1}):
        with pytest.raises(ContributionInputError):
            split_reward(10, bad)
    with pytest.raises(ContributionInputError):
        split_reward(-1, {1: 1})


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_reputation_is_monotone_and_bounded(r: int, alpha: int) -> None:
    up = update_reputation_ppm(r, True, alpha)
    down = update_reputation_ppm(r, False, alpha)
    assert r <= up <= 10**6 and 0 <= down <= r
    assert (up > r) == (r < 10**6) and (down < r) == (r > 0)  # always moves toward the target
    assert update_reputation_ppm(up, True, alpha) >= up


def test_reputation_converges_and_validates() -> None:
    r = REPUTATION_INITIAL_PPM
    for _ in range(200):
        r = update_reputation_ppm(r, True)
    assert r == 10**6
    for _ in range(200):
        r = update_reputation_ppm(r, False)
    assert r == 0
    assert update_reputation_ppm(500_000, True, 200_000) == 600_000
    for args in ((-1, True, 1), (10**6 + 1, True, 1), (5, True, 0), (5, True, 10**6 + 1)):
        with pytest.raises(ContributionInputError):
            update_reputation_ppm(*args)


def test_exact_cost_is_two_to_the_n_utility_calls() -> None:
    calls: list[frozenset[int]] = []

    def u(s: frozenset[int]) -> int:
        calls.append(s)
        return sum(s)

    phi = compute_shapley_ppm(u, list(range(12)), seed=0)
    assert len(calls) == 4096 and len(set(calls)) == 4096
    assert phi == {k: k for k in range(12)}  # additive game: phi_i = v({i})
    assert math.comb(12, 6) == sum(1 for s in calls if len(s) == 6)


def _direct_utility(r, rows: tuple[int, ...]) -> int:  # type: ignore[no-untyped-def]
    """The definition, evaluated the slow way: loss(base) - loss(base + FedAvg(rows))."""
    mean = aggregate(
        "mean",
        QuantizedUpdates(r.deltas.values[list(rows)], r.deltas.scale_exp),
        [r.ids[i] for i in rows],
        [r.weights[i] for i in rows],
    ).aggregate
    before = compute_validation_loss_ppm(r.spec, r.base, r.x_val, r.y_val)
    return before - compute_validation_loss_ppm(r.spec, r.base + mean, r.x_val, r.y_val)


def test_mlp_coalition_kernel_matches_direct_fedavg_loss() -> None:
    """The MLP's batched utility is the same real number as base + FedAvg(S) evaluated
    directly; only where the first layer rounds differs, so at most 1 ppm apart."""
    r = cases.build_mlp_round()
    u = RoundUtility(r.spec, r.base, r.deltas, r.ids, r.weights, r.x_val, r.y_val)
    n = len(r.ids)
    u.prefetch(frozenset(s) for k in range(n + 1) for s in itertools.combinations(r.ids, k))
    for k in range(1, len(r.ids) + 1):
        for rows in itertools.combinations(range(len(r.ids)), k):
            assert abs(u(frozenset(r.ids[i] for i in rows)) - _direct_utility(r, rows)) <= 1
    assert u(frozenset()) == 0


def test_mlp_coalition_value_does_not_depend_on_its_batch() -> None:
    """One coalition alone, in a batch with every other one, in reverse order or with a tiny
    kernel workspace (narrow unit chunks): the same bits, so every validator agrees."""
    r = cases.build_mlp_round(n_clients=5)
    args = (r.spec, r.base, r.deltas, r.ids, r.weights, r.x_val, r.y_val)
    subsets = [frozenset(s) for k in range(1, 6) for s in itertools.combinations(r.ids, k)]
    batched = RoundUtility(*args)
    batched.prefetch(subsets)
    reverse = RoundUtility(*args)
    reverse.prefetch(reversed(subsets))
    one_by_one = RoundUtility(*args)
    values = {s: batched(s) for s in subsets}
    assert values == {s: reverse(s) for s in subsets} == {s: one_by_one(s) for s in subsets}
    original = contribution.KERNEL_WORKSPACE_BYTES
    try:
        contribution.KERNEL_WORKSPACE_BYTES = 4096  # one or two hidden units per chunk
        narrow = RoundUtility(*args)
        narrow.prefetch(subsets)
        assert values == {s: narrow(s) for s in subsets}
    finally:
        contribution.KERNEL_WORKSPACE_BYTES = original


def test_shapley_prefetch_changes_no_value_exact_and_monte_carlo() -> None:
    """compute_shapley_ppm hands RoundUtility its coalitions in batches; a plain callable
    around a fresh utility (no prefetch) gives the same values, exact and Monte-Carlo."""
    r = cases.build_mlp_round(n_clients=6, hidden=20)
    args = (r.spec, r.base, r.deltas, r.ids, r.weights, r.x_val, r.y_val)
    plain = RoundUtility(*args)
    for kwargs in ({}, {"exact_players_max": 0, "permutations": 40}):
        fast = compute_shapley_ppm(RoundUtility(*args), r.ids, seed=3, **kwargs)
        slow = compute_shapley_ppm(lambda s: plain(s), r.ids, seed=3, **kwargs)
        assert fast == slow


def test_coalition_kernel_refuses_a_prefix_that_is_not_shared() -> None:
    """The kernel trusts ``shared`` to reuse partial sums, so it checks it first."""
    from fl import coalition_kernels

    r = cases.build_mlp_round(n_clients=3, hidden=4)
    spec = r.spec

    def run(members: list[int], offsets: list[int], shared: list[int]) -> None:
        count = len(offsets) - 1
        coalition_kernels.compute_coalition_mean_losses(
            r.x_val,
            r.y_val.astype(np.float64),
            r.base,
            r.deltas.values,
            np.asarray(r.weights, dtype=np.int64),
            np.asarray(members, dtype=np.int64),
            np.asarray(offsets, dtype=np.int64),
            np.asarray(shared, dtype=np.int64),
            np.ones(count),
            np.full(count, 10.0),
            1.0,
            spec.n_features,
            spec.hidden,
            spec.n_classes,
            False,
            2,
        )

    run([0, 0, 1], [0, 1, 3], [0, 1])  # {0}, then {0, 1} reusing {0}: fine
    for members, offsets, shared in (
        ([0, 1, 2], [0, 1, 3], [0, 1]),  # {0} then {1, 2}: nothing is shared
        ([1, 0], [0, 2], [0]),  # members out of order
        ([0, 5], [0, 2], [0]),  # a member that is not a delta
    ):
        with pytest.raises(AssertionError):
            run(members, offsets, shared)
