"""Deterministic Numba kernels that evaluate a model on the shared validation set.

These run inside the state transition (proof-of-learning scores, Shapley
utilities), so every validator must get the same bits.  Hence: no BLAS, no
parallel loops, no ``fastmath``; every sum is one sequential loop in a fixed
order (rows ascending, features ascending, bias last).  LLVM does not contract
``a*b+c`` into FMA without fast-math flags, so each result is the IEEE result
of the written expression.  ``exp``/``log1p``/``log`` come from the platform
libm (glibc's are correctly rounded in practice, not by specification); the
callers round to parts-per-million, which hides last-bit differences except
at a rounding boundary (documented in docs/fl.md).

Parameter layouts are those of ``fl.models`` (weights row-major ``f x c``,
then biases; the MLP is ``W1 (f x h), b1, W2 (h x c), b2``).

The MLP forward pass (``_mlp_outputs``) walks the hidden units in chunks of
``MLP_UNITS_CHUNK`` and the rows in blocks of 4, so a chunk of ``W1`` stays in
cache for every row and the first layer vectorises across units (element-wise,
no reassociation).  The *order of every sum is unchanged*: hidden unit ``j`` of
row ``i`` is ``((0 + x_i0 W_0j) + x_i1 W_1j + ...) + b_j`` and output ``l`` is
``(0 + sum over j ascending of hid_j W2_jl) + b2_l``, chunks in ascending
order, so the bits equal the one-row-at-a-time loop (tests compare the two).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

KIND_LOGISTIC = 0
KIND_LINEAR = 1
KIND_SOFTMAX = 2
KIND_MLP = 3

FloatArray = npt.NDArray[np.float64]


@njit(cache=True)
def _affine_row(x: FloatArray, i: int, p: FloatArray, f: int, c: int, out: FloatArray) -> None:
    for j in range(c):
        acc = 0.0
        for k in range(f):
            acc += x[i, k] * p[k * c + j]
        out[j] = acc + p[f * c + j]


MLP_UNITS_CHUNK = 256
MLP_ROWS_BLOCK = 4


@njit(cache=True)
def _mlp_outputs(x: FloatArray, p: FloatArray, f: int, h: int, c: int, out: FloatArray) -> None:
    """``out[i, l]``: output ``l`` of every row ``i`` (m x c), in the sequential sum order."""
    m = x.shape[0]
    b1 = f * h
    w2 = b1 + h
    b2 = w2 + h * c
    out[:, :] = 0.0
    hid = np.empty((MLP_ROWS_BLOCK, MLP_UNITS_CHUNK))
    h0 = hid[0]
    h1 = hid[1]
    h2 = hid[2]
    h3 = hid[3]
    for j0 in range(0, h, MLP_UNITS_CHUNK):
        width = min(MLP_UNITS_CHUNK, h - j0)
        bias = p[b1 + j0 : b1 + j0 + width]
        w2_chunk = p[w2 + j0 * c : w2 + (j0 + width) * c]
        for i0 in range(0, m, MLP_ROWS_BLOCK):
            rows = min(MLP_ROWS_BLOCK, m - i0)
            hid[:, :] = 0.0
            for k in range(f):
                w = p[k * h + j0 : k * h + j0 + width]
                for r in range(rows):
                    xv = x[i0 + r, k]
                    hr = hid[r]
                    for jj in range(width):
                        hr[jj] += xv * w[jj]
            for r in range(rows):
                hr = hid[r]
                for jj in range(width):
                    a = hr[jj] + bias[jj]
                    hr[jj] = a if a > 0.0 else 0.0
            # Four rows at once: four independent sums in flight, each in j order.
            for l_out in range(c):
                a0 = out[i0, l_out]
                a1 = out[i0 + 1, l_out] if rows > 1 else 0.0
                a2 = out[i0 + 2, l_out] if rows > 2 else 0.0
                a3 = out[i0 + 3, l_out] if rows > 3 else 0.0
                for jj in range(width):
                    u = w2_chunk[jj * c + l_out]
                    a0 += h0[jj] * u
                    a1 += h1[jj] * u
                    a2 += h2[jj] * u
                    a3 += h3[jj] * u
                out[i0, l_out] = a0
                if rows > 1:
                    out[i0 + 1, l_out] = a1
                if rows > 2:
                    out[i0 + 2, l_out] = a2
                if rows > 3:
                    out[i0 + 3, l_out] = a3
    for i in range(m):
        for l_out in range(c):
            out[i, l_out] += p[b2 + l_out]


@njit(cache=True)
def _compute_outputs(
    kind: int, x: FloatArray, p: FloatArray, f: int, h: int, c_out: int
) -> FloatArray:
    m = x.shape[0]
    out = np.empty((m, c_out))
    if kind == KIND_MLP:
        _mlp_outputs(x, p, f, h, c_out, out)
    else:
        row = np.empty(c_out)
        for i in range(m):
            _affine_row(x, i, p, f, c_out, row)
            out[i, :] = row
    return out


@njit(cache=True)
def _cross_entropy(out: FloatArray, c: int, label: int) -> float:
    mx = out[0]
    for j in range(1, c):
        if out[j] > mx:
            mx = out[j]
    s = 0.0
    for j in range(c):
        s += math.exp(out[j] - mx)
    return math.log(s) + mx - out[label]


@njit(cache=True)
def _argmax(out: FloatArray, c: int) -> int:
    best = 0
    for j in range(1, c):
        if out[j] > out[best]:  # strict: the first maximum wins, as np.argmax
            best = j
    return best


@njit(cache=True)
def compute_mean_loss(
    kind: int,
    x: FloatArray,
    y: FloatArray,
    p: FloatArray,
    f: int,
    h: int,
    c: int,
    regression: bool,
    l2: float,
) -> float:
    """Mean loss over the rows plus ``l2 / 2 * |p|^2``, every sum sequential."""
    m = x.shape[0]
    c_out = 1 if kind == KIND_LOGISTIC or kind == KIND_LINEAR else c
    outputs = _compute_outputs(kind, x, p, f, h, c_out)
    total = 0.0
    for i in range(m):
        total += compute_row_loss(kind, outputs[i], c_out, y[i], regression)
    loss = total / m
    if l2 > 0.0:
        loss += 0.5 * l2 * compute_sum_squares(p)
    return loss


@njit(cache=True)
def compute_sum_squares(p: FloatArray) -> float:
    """``sum p_k^2``, one sequential sum in index order."""
    sq = 0.0
    for k in range(p.shape[0]):
        sq += p[k] * p[k]
    return sq


@njit(cache=True)
def compute_row_loss(
    kind: int, out: FloatArray, c_out: int, label: float, regression: bool
) -> float:
    if kind == KIND_LOGISTIC:
        z = out[0]
        # log(1 + e^z) - y z, stable for any sign of z
        return max(z, 0.0) + math.log1p(math.exp(-abs(z))) - label * z
    if regression:
        r = out[0] - label
        return 0.5 * (r * r)
    return _cross_entropy(out, c_out, int(label))


@njit(cache=True)
def count_correct(
    kind: int, x: FloatArray, y: FloatArray, p: FloatArray, f: int, h: int, c: int
) -> int:
    """Rows whose predicted class equals the label (logistic: ``z > 0`` means class 1)."""
    m = x.shape[0]
    c_out = 1 if kind == KIND_LOGISTIC else c
    outputs = _compute_outputs(kind, x, p, f, h, c_out)
    correct = 0
    for i in range(m):
        out = outputs[i]
        if kind == KIND_LOGISTIC:
            pred = 1 if out[0] > 0.0 else 0
        else:
            pred = _argmax(out, c_out)
        if pred == int(y[i]):
            correct += 1
    return correct


@njit(cache=True)
def compute_dot_q_f(q: npt.NDArray[np.int16], a: FloatArray) -> float:
    """``sum float(q_k) * a_k``, one sequential sum in index order."""
    dot = 0.0
    for k in range(q.shape[0]):
        dot += float(q[k]) * a[k]
    return dot


@njit(cache=True)
def compute_cosine_q_f(q: npt.NDArray[np.int16], a: FloatArray) -> float:
    """cos(q, a) for an int16 vector and a float vector; 0 when either is zero.

    ``|q|^2`` is an exact integer; ``q.a`` and ``|a|^2`` are sequential float sums.
    The scale exponent of ``q`` cancels, so it is not needed.
    """
    dot = 0.0
    aa = 0.0
    qq = np.int64(0)
    for k in range(q.shape[0]):
        qk = np.int64(q[k])
        dot += float(qk) * a[k]
        aa += a[k] * a[k]
        qq += qk * qk
    if qq == 0 or aa == 0.0:
        return 0.0
    cos = dot / (math.sqrt(float(qq)) * math.sqrt(aa))
    return min(1.0, max(-1.0, cos))
