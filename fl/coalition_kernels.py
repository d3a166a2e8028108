"""Validation loss of base + FedAvg(S) for many coalitions S of one round's MLP deltas at once.

Why. Exact one-round Shapley needs the loss of every coalition (1,024 for 10
hospitals).  Evaluating each coalition's model from scratch costs
``m * (f + c) * h`` multiply-adds (m validation rows, f features, h hidden
units, c outputs): ~1.2e8 at d = 1e6, about 14 ms, so 14 s per round close.
The first layer is linear in the parameters, so its pre-activations split into
the base model's plus a weighted sum of per-delta projections computed once:

    z_S[r, j] = Zb[r, j] + t_S * T_S[r, j],      t_S = 2**-s / W_S,
    T_S[r, j] = sum over i in S (ascending) of w_i * P_i[r, j],
    P_i[r, j] = (sum over k ascending of x[r, k] * q_i[k, j]) + q_i[b1_j],
    Zb[r, j]  = (sum over k ascending of x[r, k] * W1[k, j]) + b1[j]

(``q_i`` the int16 delta, ``w_i`` its weight, ``W_S`` the coalition's total
weight, ``s`` the scale exponent).  A coalition then costs ``m * h * (c + 3)``
operations: the ReLU, the second layer and the loss.  The second layer's
parameters are those of ``fl.contribution``'s FedAvg, bit for bit:
``W2 + (float(sum_i w_i q_i) / W_S) * 2**-s`` from exact int64 sums.

Determinism. Every sum above has a fixed order: ``T_S`` adds the members in
ascending row order starting from 0.0 (the coalitions are processed in
lexicographic order and a coalition reuses the partial sums of the members it
shares with the previous one as a prefix, which is the same sequence of
additions); the second layer sums hidden units in ascending order into an
accumulator that starts at 0.0, then adds the bias; the loss sums rows in
ascending order.  Element-wise loops vectorise without reassociation (no
fastmath); chunk widths change the memory layout, never the order, so
``units_chunk`` does not change the result.  The bits differ from evaluating
``base + FedAvg(S)`` directly only by where the first layer rounds (the real
numbers are equal); ``fl.contribution`` documents which kinds use this path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from fl.eval_kernels import KIND_MLP, compute_row_loss

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int16Array = npt.NDArray[np.int16]

ROWS_BLOCK = 128


@njit(cache=True)
def _project_chunk(
    x_t: FloatArray,
    params: FloatArray | Int16Array,
    f: int,
    h: int,
    j0: int,
    width: int,
    out: FloatArray,
) -> None:
    """``out[jj, r] = (sum_k x[r, k] * W1[k, j0 + jj]) + b1[j0 + jj]``, ``W1``/``b1`` from
    ``params`` (the base model, or one int16 delta: each value converted exactly to float)."""
    out[:width, :] = 0.0
    for jj in range(width):
        acc = out[jj]
        for k in range(f):
            wv = float(params[k * h + j0 + jj])
            xk = x_t[k]
            for r in range(acc.shape[0]):
                acc[r] += xk[r] * wv
        bias = float(params[f * h + j0 + jj])
        for r in range(acc.shape[0]):
            acc[r] += bias


@njit(cache=True)
def compute_coalition_mean_losses(
    x: FloatArray,
    y: FloatArray,
    base: FloatArray,
    q: Int16Array,
    weights: IntArray,
    members: IntArray,
    offsets: IntArray,
    shared: IntArray,
    coefficients: FloatArray,
    total_weights: FloatArray,
    scale: float,
    f: int,
    h: int,
    c: int,
    regression: bool,
    units_chunk: int,
) -> FloatArray:
    """Mean validation loss (no L2 term) of the MLP ``base + FedAvg(S)`` for every coalition.

    Coalition ``s`` is ``members[offsets[s]:offsets[s + 1]]`` (row indices of ``q``,
    strictly ascending, non-empty, positive total weight ``total_weights[s]``);
    ``shared[s]`` is how many leading members it shares with coalition ``s - 1``
    (0 for the first); ``coefficients[s] = 2**-scale_exp / W_S``; ``scale = 2**-scale_exp``.
    """
    m = x.shape[0]
    n = q.shape[0]
    count = offsets.shape[0] - 1
    depth_max = 0
    for s in range(count):
        depth = offsets[s + 1] - offsets[s]
        assert depth >= 1 and total_weights[s] > 0.0
        assert 0 <= shared[s] <= depth
        assert shared[s] == 0 or (s > 0 and shared[s] <= offsets[s] - offsets[s - 1])
        for e in range(offsets[s], offsets[s + 1]):
            assert 0 <= members[e] < n and (e == offsets[s] or members[e - 1] < members[e])
        for e in range(shared[s]):  # the reused prefix really is shared
            assert members[offsets[s] + e] == members[offsets[s - 1] + e]
        depth_max = max(depth_max, depth)
    b1 = f * h
    w2 = b1 + h
    b2 = w2 + h * c
    totals = np.zeros(count)
    wf = weights.astype(np.float64)
    for r0 in range(0, m, ROWS_BLOCK):
        mr = min(ROWS_BLOCK, m - r0)
        x_t = np.ascontiguousarray(x[r0 : r0 + mr, :].T)
        projections = np.empty((n, units_chunk, mr))
        base_z = np.empty((units_chunk, mr))
        stack = np.zeros((depth_max + 1, units_chunk, mr))
        sums2 = np.zeros((depth_max + 1, units_chunk * c), dtype=np.int64)
        layer2 = np.empty(units_chunk * c)
        hidden = np.empty(mr)
        acc = np.zeros((count, c, mr))
        for j0 in range(0, h, units_chunk):
            width = min(units_chunk, h - j0)
            _project_chunk(x_t, base, f, h, j0, width, base_z)
            for i in range(n):
                _project_chunk(x_t, q[i], f, h, j0, width, projections[i])
            for s in range(count):
                start = offsets[s]
                depth = offsets[s + 1] - start
                first_level = shared[s]
                for level in range(first_level, depth):
                    i = members[start + level]
                    wq = weights[i]
                    q_i = q[i]
                    for e in range(width * c):
                        sums2[level + 1, e] = sums2[level, e] + wq * np.int64(q_i[w2 + j0 * c + e])
                u_s = sums2[depth]
                w_s = total_weights[s]
                for e in range(width * c):
                    layer2[e] = base[w2 + j0 * c + e] + (float(u_s[e]) / w_s) * scale
                coefficient = coefficients[s]
                last = depth - 1  # the level this coalition adds last (if any is new)
                for jj in range(width):
                    # One unit at a time across the levels, so its rows stay in L1.
                    for level in range(first_level, last):
                        i = members[start + level]
                        w_i = wf[i]
                        for r in range(mr):
                            stack[level + 1, jj, r] = (
                                stack[level, jj, r] + w_i * projections[i, jj, r]
                            )
                    if first_level <= last and c == 2:
                        # Binary classification, the common case: the last level, the ReLU
                        # and both outputs in one pass over the rows.
                        i = members[start + last]
                        w_i = wf[i]
                        u0 = layer2[2 * jj]
                        u1 = layer2[2 * jj + 1]
                        for r in range(mr):
                            t = stack[last, jj, r] + w_i * projections[i, jj, r]
                            stack[depth, jj, r] = t
                            z = base_z[jj, r] + coefficient * t
                            a = z if z > 0.0 else 0.0
                            acc[s, 0, r] += a * u0
                            acc[s, 1, r] += a * u1
                        continue
                    if first_level <= last:  # the last level, fused with the ReLU
                        i = members[start + last]
                        w_i = wf[i]
                        for r in range(mr):
                            t = stack[last, jj, r] + w_i * projections[i, jj, r]
                            stack[depth, jj, r] = t
                            z = base_z[jj, r] + coefficient * t
                            hidden[r] = z if z > 0.0 else 0.0
                    else:  # no new level: a prefix of the previous coalition (never when sorted)
                        for r in range(mr):
                            z = base_z[jj, r] + coefficient * stack[depth, jj, r]
                            hidden[r] = z if z > 0.0 else 0.0
                    for l_out in range(c):
                        wv = layer2[jj * c + l_out]
                        for r in range(mr):
                            acc[s, l_out, r] += hidden[r] * wv
        row_out = np.empty(c)
        for s in range(count):
            start = offsets[s]
            w_s = total_weights[s]
            for l_out in range(c):
                u = np.int64(0)
                for e in range(start, offsets[s + 1]):
                    i = members[e]
                    u += weights[i] * np.int64(q[i, b2 + l_out])
                bias = base[b2 + l_out] + (float(u) / w_s) * scale
                for r in range(mr):
                    acc[s, l_out, r] += bias
            for r in range(mr):
                for l_out in range(c):
                    row_out[l_out] = acc[s, l_out, r]
                totals[s] += compute_row_loss(KIND_MLP, row_out, c, y[r0 + r], regression)
    return totals / m
