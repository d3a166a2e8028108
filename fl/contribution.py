"""Contribution (one-round Shapley values), reward splitting and reputation, in integers.

Shapley value of player i for an integer utility v (Shapley 1953):

    phi_i = sum over S subset of N \\ {i} of |S|! (n-|S|-1)! / n! * (v(S + i) - v(S)).

``compute_shapley_ppm`` evaluates it exactly when there are at most
``exact_players_max`` players (2**n utilities, each computed once), with every
term an exact Python integer multiplied by ``n!``, and one final division
rounded half to even.  Above that it uses Monte-Carlo permutation sampling
(Castro et al. 2009): ``permutations`` permutations of the players sorted by
id, drawn from ``np.random.default_rng(seed)``; the seed comes from the block
hash, so every validator draws the same ones.  In both cases the unrounded
values sum to ``v(N) - v(empty)`` (efficiency; the MC marginals telescope per
permutation), and each value is rounded once, by at most 1/2, so

    |sum_i phi_i - (v(N) - v(empty))| <= n / 2     (``compute_efficiency_bound``).

Utility of a round (``compute_round_utility_fn``): the validation-loss decrease
of base + FedAvg(S's deltas), the FedAvg computed from exact int64 column sums
and one IEEE division (as ``fl.aggregation``'s mean rule), the loss by the
deterministic kernel of ``fl.scoring``; memoised per subset.

``split_reward`` mints exactly ``pool`` tokens (largest remainder, ties by id);
``update_reputation_ppm`` is an integer exponential moving average that rounds
toward its target, so it reaches 0 and 1e6 exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fl.models import ModelSpec
from fl.quantize import Q_MAX_INT16, QuantizedUpdates, verify_quantized
from fl.scoring import (
    PPM,
    ScoringInputError,
    _as_validation,
    _check_params,
    _loss_ppm_unchecked,
)

REPUTATION_INITIAL_PPM = 500_000
EXACT_PLAYERS_LIMIT = 16  # 2**16 utilities: the most exact Shapley may ever be asked for
PLAYERS_MAX = 1000
PERMUTATIONS_MAX = 100_000
EXACT_FLOAT_MAX = 2**53

Utility = Callable[[frozenset[int]], int]
FloatArray = npt.NDArray[np.float64]


class ContributionInputError(ValueError):
    """Invalid players, utilities, shares or reputation arguments."""


def _check_players(players: Sequence[int]) -> list[int]:
    ids = [int(p) for p in players]
    if len(set(ids)) != len(ids) or any(p < 0 for p in ids):
        raise ContributionInputError("players must be unique non-negative ints")
    if len(ids) > PLAYERS_MAX:
        raise ContributionInputError(f"{len(ids)} players exceeds the limit {PLAYERS_MAX}")
    return sorted(ids)


def _call(utility: Utility, subset: frozenset[int]) -> int:
    value = utility(subset)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ContributionInputError(f"utility must return an int, got {type(value).__name__}")
    return int(value)


def _div_round_half_even(num: int, den: int) -> int:
    assert den > 0
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


def compute_efficiency_bound(n_players: int) -> int:
    """Largest possible ``|sum phi - (v(N) - v(empty))|`` after rounding each value."""
    return n_players // 2


def _exact_shapley(utility: Utility, ids: list[int]) -> dict[int, int]:
    n = len(ids)
    values = [
        _call(utility, frozenset(ids[k] for k in range(n) if mask >> k & 1))
        for mask in range(1 << n)
    ]
    # weight of a coalition of size s not containing i, times n!
    weight = [math.factorial(s) * math.factorial(n - s - 1) for s in range(n)]
    totals = [0] * n
    for mask in range(1 << n):
        w = weight[mask.bit_count()] if mask != (1 << n) - 1 else 0
        v_mask = values[mask]
        for k in range(n):
            if not mask >> k & 1:
                totals[k] += w * (values[mask | 1 << k] - v_mask)
    n_fact = math.factorial(n)
    return {ids[k]: _div_round_half_even(totals[k], n_fact) for k in range(n)}


def _monte_carlo_shapley(
    utility: Utility, ids: list[int], seed: int, permutations: int
) -> dict[int, int]:
    rng = np.random.default_rng(seed)
    order = np.asarray(ids, dtype=np.int64)
    totals = dict.fromkeys(ids, 0)
    v_empty = _call(utility, frozenset())
    for _ in range(permutations):
        coalition: set[int] = set()
        previous = v_empty
        for player in rng.permutation(order).tolist():
            coalition.add(player)
            current = _call(utility, frozenset(coalition))
            totals[player] += current - previous
            previous = current
    return {p: _div_round_half_even(totals[p], permutations) for p in ids}


def compute_shapley_ppm(
    utility: Utility,
    players: Sequence[int],
    seed: int,
    exact_players_max: int = 12,
    permutations: int = 200,
) -> dict[int, int]:
    """Shapley value of every player (utility units, e.g. ppm of loss), keyed by id.

    Exact when ``len(players) <= exact_players_max`` (``seed`` unused), else
    Monte-Carlo over ``permutations`` seeded permutations.  Utilities must be
    ints; call-count is ``2**n`` (exact) or ``permutations * n + 1`` (MC), so the
    caller should memoise (``compute_round_utility_fn`` does).
    """
    ids = _check_players(players)
    if not 0 <= exact_players_max <= EXACT_PLAYERS_LIMIT:
        raise ContributionInputError(f"exact_players_max must be in [0, {EXACT_PLAYERS_LIMIT}]")
    if not 1 <= permutations <= PERMUTATIONS_MAX:
        raise ContributionInputError(f"permutations must be in [1, {PERMUTATIONS_MAX}]")
    if not isinstance(seed, int) or seed < 0:
        raise ContributionInputError("seed must be a non-negative int")
    if not ids:
        return {}
    if len(ids) <= exact_players_max:
        return _exact_shapley(utility, ids)
    return _monte_carlo_shapley(utility, ids, seed, permutations)


def compute_round_utility_fn(
    spec: ModelSpec,
    base_params: FloatArray,
    deltas: QuantizedUpdates,
    client_ids: Sequence[int],
    weights: Sequence[int] | None,
    x_val: FloatArray,
    y_val: npt.NDArray[np.generic],
) -> Utility:
    """``utility(S) = loss_ppm(base) - loss_ppm(base + FedAvg of S's deltas)``, memoised.

    ``utility(empty) == 0``; a subset whose weights are all zero also has
    utility 0 (FedAvg of nothing leaves the base model).  ``weights`` are
    non-negative ints (sample counts), ``None`` for equal weights.
    """
    yf = _as_validation(spec, x_val, y_val)
    x = np.ascontiguousarray(x_val)
    base = _check_params(spec, base_params)
    verify_quantized(deltas.values, deltas.scale_exp)
    n, d = deltas.values.shape
    if d != base.shape[0]:
        raise ScoringInputError(f"deltas have dimension {d}, model has {base.shape[0]}")
    ids = [int(c) for c in client_ids]
    if len(ids) != n or len(set(ids)) != n or any(c < 0 for c in ids):
        raise ScoringInputError("client_ids must be unique non-negative ints, one per delta")
    w = [1] * n if weights is None else [int(v) for v in weights]
    if len(w) != n or any(v < 0 for v in w):
        raise ScoringInputError("weights must be non-negative ints, one per delta")
    if sum(w) * Q_MAX_INT16 >= EXACT_FLOAT_MAX:
        raise ScoringInputError("weights too large: column sums would exceed 2**53")
    row_of = {c: r for r, c in enumerate(ids)}
    q64 = deltas.values.astype(np.int64)
    scale_exp = deltas.scale_exp
    loss_base = _loss_ppm_unchecked(spec, base, x, yf)
    memo: dict[frozenset[int], int] = {frozenset(): 0}

    def utility(subset: frozenset[int]) -> int:
        cached = memo.get(subset)
        if cached is not None:
            return cached
        unknown = [c for c in subset if c not in row_of]
        if unknown:
            raise ContributionInputError(f"unknown client ids {sorted(unknown)}")
        rows = sorted(row_of[c] for c in subset)
        total_weight = sum(w[r] for r in rows)
        if total_weight == 0:
            value = 0
        else:
            sums = np.zeros(d, dtype=np.int64)
            for r in rows:  # int64: exact in any order
                if w[r]:
                    sums += w[r] * q64[r]
            mean = np.ldexp(sums.astype(np.float64) / float(total_weight), -scale_exp)
            value = loss_base - _loss_ppm_unchecked(spec, base + mean, x, yf)
        memo[subset] = value
        return value

    return utility


def split_reward(pool: int, shares: Mapping[int, int]) -> dict[int, int]:
    """Split ``pool`` tokens proportionally to non-negative integer ``shares``.

    Largest remainder (Hamilton): each id gets ``floor(pool * s / S)``, and the
    leftover tokens go one each to the largest remainders, ties to the lower id.
    The result sums to ``pool`` exactly when some share is positive, else all 0.
    """
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise ContributionInputError("pool must be a non-negative int")
    items = sorted((int(k), v) for k, v in shares.items())
    for key, share in items:
        if key < 0:
            raise ContributionInputError("ids must be non-negative")
        if isinstance(share, bool) or not isinstance(share, int | np.integer) or share < 0:
            raise ContributionInputError(f"share of {key} must be a non-negative int")
    if len(items) > PLAYERS_MAX:
        raise ContributionInputError(f"{len(items)} shares exceeds the limit {PLAYERS_MAX}")
    total = sum(int(s) for _, s in items)
    if total == 0:
        return {key: 0 for key, _ in items}
    out: dict[int, int] = {}
    remainders: list[tuple[int, int]] = []
    for key, share in items:
        q, r = divmod(pool * int(share), total)
        out[key] = q
        remainders.append((-r, key))
    leftover = pool - sum(out.values())
    assert 0 <= leftover < len(items)
    for _, key in sorted(remainders)[:leftover]:
        out[key] += 1
    assert sum(out.values()) == pool
    return out


def update_reputation_ppm(reputation_ppm: int, accepted: bool, alpha_ppm: int = 200_000) -> int:
    """EMA toward 1e6 (accepted) or 0 (rejected), ``r + alpha (target - r)`` rounded to target."""
    if isinstance(reputation_ppm, bool) or not 0 <= reputation_ppm <= PPM:
        raise ContributionInputError(f"reputation must be an int in [0, {PPM}]")
    if isinstance(alpha_ppm, bool) or not 0 < alpha_ppm <= PPM:
        raise ContributionInputError(f"alpha must be an int in (0, {PPM}]")
    if accepted:
        step = -((-alpha_ppm * (PPM - reputation_ppm)) // PPM)  # ceil
        result = reputation_ppm + step
    else:
        step = -((-alpha_ppm * reputation_ppm) // PPM)
        result = reputation_ppm - step
    assert 0 <= result <= PPM
    return result
