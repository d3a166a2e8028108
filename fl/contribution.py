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

Utility of a round (``RoundUtility``): the
validation-loss decrease of base + FedAvg(S's deltas), memoised per subset.
Linear models evaluate base + FedAvg(S) directly: exact int64 column sums and
one IEEE division (as ``fl.aggregation``'s mean rule), the loss by the
deterministic kernel of ``fl.scoring``.  The MLP evaluates the same real number
through ``fl.coalition_kernels`` (first layer = base pre-activations plus a
weighted sum of per-delta projections), many coalitions per kernel call, which
costs ``m h (c + 3)`` per coalition instead of ``m h (f + c)``: 1,023
coalitions of ten d = 1e6 deltas in ~2 s instead of ~54 s.  Its first layer
rounds differently from the direct evaluation, so a utility can differ from it
by 1 ppm at a rounding boundary (none did on the tested rounds); every
validator runs this same code, so they agree bit for bit.  The exact game asks
for all ``2**n`` coalitions in one batch, Monte-Carlo for each group of
permutations' prefixes (same draws, same values as one at a time).

``split_reward`` mints exactly ``pool`` tokens (largest remainder, ties by id);
``update_reputation_ppm`` is an integer exponential moving average that rounds
toward its target, so it reaches 0 and 1e6 exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fl import coalition_kernels, eval_kernels
from fl.models import ModelSpec
from fl.quantize import Q_MAX_INT16, QuantizedUpdates, verify_quantized
from fl.scoring import (
    PPM,
    ScoringInputError,
    _as_validation,
    _check_params,
    _loss_ppm_unchecked,
    _loss_to_ppm,
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


def _prefetch(utility: Utility, subsets: list[frozenset[int]]) -> None:
    """Hand a batch-capable utility (``RoundUtility``) every subset it is about to be asked."""
    if isinstance(utility, RoundUtility):
        utility.prefetch(subsets)


def _exact_shapley(utility: Utility, ids: list[int]) -> dict[int, int]:
    n = len(ids)
    _prefetch(
        utility,
        [frozenset(ids[k] for k in range(n) if mask >> k & 1) for mask in range(1 << n)],
    )
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
    # Permutations are drawn in groups (the same draws, in the same order, as one at a
    # time) so a batch-capable utility evaluates a group's coalitions in one call.
    group_size = max(1, COALITIONS_PER_BATCH_MAX // len(ids))
    for first in range(0, permutations, group_size):
        group = [
            rng.permutation(order).tolist() for _ in range(min(group_size, permutations - first))
        ]
        _prefetch(utility, [frozenset(perm[: k + 1]) for perm in group for k in range(len(perm))])
        for perm in group:
            coalition: set[int] = set()
            previous = v_empty
            for player in perm:
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
    caller should memoise (``RoundUtility`` does).
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


COALITIONS_PER_BATCH_MAX = 4096  # bounds the kernel's accumulators (coalitions x c x rows)
KERNEL_WORKSPACE_BYTES = 1024 * 1024  # projections + partial sums of a chunk of units: L2


class RoundUtility:
    """``utility(S) = loss_ppm(base) - loss_ppm(base + FedAvg of S's deltas)``, memoised.

    ``utility(empty) == 0``; a subset whose weights are all zero also has
    utility 0 (FedAvg of nothing leaves the base model).  Linear models
    (``logistic``, ``linear``, ``softmax``) evaluate ``base + FedAvg(S)``
    directly (exact int64 column sums, one IEEE division, ``ldexp``).  The MLP
    evaluates the same real number through ``fl.coalition_kernels`` (first
    layer as base plus a weighted sum of per-delta projections; L2 term from
    the exact integer Gram matrix of the deltas), many coalitions per call:
    ``prefetch`` is how ``compute_shapley_ppm`` hands it every coalition it will
    ask for.  The result of a coalition never depends on which other coalitions
    were evaluated with it.
    """

    def __init__(
        self,
        spec: ModelSpec,
        base_params: FloatArray,
        deltas: QuantizedUpdates,
        client_ids: Sequence[int],
        weights: Sequence[int] | None,
        x_val: FloatArray,
        y_val: npt.NDArray[np.generic],
    ) -> None:
        self.spec = spec
        self.yf = _as_validation(spec, x_val, y_val)
        self.x = np.ascontiguousarray(x_val)
        self.base = _check_params(spec, base_params)
        verify_quantized(deltas.values, deltas.scale_exp)
        n, d = deltas.values.shape
        if d != self.base.shape[0]:
            raise ScoringInputError(f"deltas have dimension {d}, model has {self.base.shape[0]}")
        ids = [int(c) for c in client_ids]
        if len(ids) != n or len(set(ids)) != n or any(c < 0 for c in ids):
            raise ScoringInputError("client_ids must be unique non-negative ints, one per delta")
        w = [1] * n if weights is None else [int(v) for v in weights]
        if len(w) != n or any(v < 0 for v in w):
            raise ScoringInputError("weights must be non-negative ints, one per delta")
        if sum(w) * Q_MAX_INT16 >= EXACT_FLOAT_MAX:
            raise ScoringInputError("weights too large: column sums would exceed 2**53")
        self.row_of = {c: r for r, c in enumerate(ids)}
        self.weights = w
        self.values = np.ascontiguousarray(deltas.values)
        self.scale_exp = deltas.scale_exp
        self.loss_base = _loss_ppm_unchecked(spec, self.base, self.x, self.yf)
        self.memo: dict[frozenset[int], int] = {frozenset(): 0}
        self._gram: list[list[int]] | None = None
        self._base_dots: list[float] = []
        self._base_sq = 0.0

    def __call__(self, subset: frozenset[int]) -> int:
        cached = self.memo.get(subset)
        if cached is None:
            self.prefetch([subset])
            cached = self.memo[subset]
        return cached

    def prefetch(self, subsets: Iterable[frozenset[int]]) -> None:
        """Evaluate (and memoise) every subset not evaluated yet."""
        missing: dict[tuple[int, ...], frozenset[int]] = {}
        for subset in subsets:
            if subset in self.memo:
                continue
            unknown = [c for c in subset if c not in self.row_of]
            if unknown:
                raise ContributionInputError(f"unknown client ids {sorted(unknown)}")
            rows = tuple(sorted(self.row_of[c] for c in subset))
            if sum(self.weights[r] for r in rows) == 0:
                self.memo[subset] = 0
            else:
                missing[rows] = subset
        if not missing:
            return
        if self.spec.kind != "mlp":
            for rows, subset in missing.items():
                self.memo[subset] = self.loss_base - self._get_direct_loss_ppm(rows)
            return
        ordered = sorted(missing)  # lexicographic: shared prefixes are adjacent
        for first in range(0, len(ordered), COALITIONS_PER_BATCH_MAX):
            batch = ordered[first : first + COALITIONS_PER_BATCH_MAX]
            for rows, loss_ppm in zip(batch, self._get_mlp_losses_ppm(batch), strict=True):
                self.memo[missing[rows]] = self.loss_base - loss_ppm

    def _get_direct_loss_ppm(self, rows: tuple[int, ...]) -> int:
        d = self.values.shape[1]
        sums = np.zeros(d, dtype=np.int64)
        for r in rows:  # int64: exact in any order
            if self.weights[r]:
                sums += self.weights[r] * self.values[r].astype(np.int64)
        total_weight = sum(self.weights[r] for r in rows)
        mean = np.ldexp(sums.astype(np.float64) / float(total_weight), -self.scale_exp)
        return _loss_ppm_unchecked(self.spec, self.base + mean, self.x, self.yf)

    def _get_mlp_losses_ppm(self, batch: list[tuple[int, ...]]) -> list[int]:
        spec = self.spec
        n = self.values.shape[0]
        m = self.x.shape[0]
        members = np.fromiter((r for rows in batch for r in rows), dtype=np.int64)
        offsets = np.zeros(len(batch) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(rows) for rows in batch])
        shared = np.zeros(len(batch), dtype=np.int64)
        for s in range(1, len(batch)):
            shared[s] = _get_common_prefix_length(batch[s - 1], batch[s])
        total_weights = [sum(self.weights[r] for r in rows) for rows in batch]
        coefficients = np.ldexp(1.0 / np.asarray(total_weights, dtype=np.float64), -self.scale_exp)
        depth = max(len(rows) for rows in batch)
        rows_block = min(m, coalition_kernels.ROWS_BLOCK)
        per_unit_bytes = (n + depth + 2) * rows_block * 8
        units_chunk = max(1, min(spec.hidden, KERNEL_WORKSPACE_BYTES // per_unit_bytes, 512))
        losses = coalition_kernels.compute_coalition_mean_losses(
            self.x,
            self.yf,
            self.base,
            self.values,
            np.asarray(self.weights, dtype=np.int64),
            members,
            offsets,
            shared,
            coefficients,
            np.asarray(total_weights, dtype=np.float64),
            float(np.ldexp(1.0, -self.scale_exp)),
            spec.n_features,
            spec.hidden,
            spec.n_classes,
            spec.is_regression,
            units_chunk,
        )
        if spec.l2 > 0.0:
            squares = self._get_sum_squares(batch, shared.tolist(), coefficients.tolist())
            return [
                _loss_to_ppm(float(losses[s]) + 0.5 * spec.l2 * squares[s])
                for s in range(len(batch))
            ]
        return [_loss_to_ppm(float(loss)) for loss in losses]

    def _get_sum_squares(
        self, batch: list[tuple[int, ...]], shared: list[int], coefficients: list[float]
    ) -> list[float]:
        """``|base + FedAvg(S)|^2 = |b|^2 + 2 t (b . u) + t^2 |u|^2``, ``u = sum w_i q_i``,
        for each coalition of ``batch`` (lexicographic, ``shared`` prefixes as the kernel's).

        ``b . q_i`` are sequential float sums and ``|u|^2`` an exact integer from the
        Gram matrix of the deltas (both computed once per round); ``b . u`` adds the
        members in ascending order from 0.0. Both grow along the shared prefix, one new
        member at a time, so a coalition costs O(|S|).
        """
        if self._gram is None:
            q64 = self.values.astype(np.int64)
            n = q64.shape[0]
            gram = [[0] * n for _ in range(n)]
            for a in range(n):
                for b in range(a, n):  # int64 dot: exact (<= d * 2**30 < 2**63)
                    gram[a][b] = gram[b][a] = int(np.dot(q64[a], q64[b]))
            self._gram = gram
            self._base_dots = [
                float(eval_kernels.compute_dot_q_f(self.values[a], self.base)) for a in range(n)
            ]
            self._base_sq = float(eval_kernels.compute_sum_squares(self.base))
        gram = self._gram
        w = self.weights
        dots = [0.0]  # dots[k]: b . u over the first k members of the current coalition
        u_squares = [0]  # u_squares[k]: |u|^2 over the same members (exact)
        out = []
        for s, rows in enumerate(batch):
            del dots[shared[s] + 1 :], u_squares[shared[s] + 1 :]
            for level in range(shared[s], len(rows)):
                k = rows[level]
                cross = sum(w[a] * gram[a][k] for a in rows[:level])
                dots.append(dots[level] + float(w[k]) * self._base_dots[k])
                u_squares.append(u_squares[level] + 2 * w[k] * cross + w[k] * w[k] * gram[k][k])
            t = coefficients[s]
            value = self._base_sq + (2.0 * t) * dots[-1] + (t * t) * float(u_squares[-1])
            out.append(max(value, 0.0))
        return out


def _get_common_prefix_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


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
