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


@njit(cache=True)
def _mlp_row(
    x: FloatArray, i: int, p: FloatArray, f: int, h: int, c: int, hid: FloatArray, out: FloatArray
) -> None:
    a = f * h
    for j in range(h):
        acc = 0.0
        for k in range(f):
            acc += x[i, k] * p[k * h + j]
        acc += p[a + j]
        hid[j] = acc if acc > 0.0 else 0.0
    w2 = a + h
    b2 = w2 + h * c
    for l_out in range(c):
        acc = 0.0
        for j in range(h):
            acc += hid[j] * p[w2 + j * c + l_out]
        out[l_out] = acc + p[b2 + l_out]


@njit(cache=True)
def _row_outputs(
    kind: int,
    x: FloatArray,
    i: int,
    p: FloatArray,
    f: int,
    h: int,
    c: int,
    hid: FloatArray,
    out: FloatArray,
) -> None:
    if kind == KIND_MLP:
        _mlp_row(x, i, p, f, h, c, hid, out)
    else:
        _affine_row(x, i, p, f, c, out)


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
    out = np.empty(c_out)
    hid = np.empty(max(h, 1))
    total = 0.0
    for i in range(m):
        _row_outputs(kind, x, i, p, f, h, c_out, hid, out)
        if kind == KIND_LOGISTIC:
            z = out[0]
            # log(1 + e^z) - y z, stable for any sign of z
            total += max(z, 0.0) + math.log1p(math.exp(-abs(z))) - y[i] * z
        elif regression:
            r = out[0] - y[i]
            total += 0.5 * (r * r)
        else:
            total += _cross_entropy(out, c_out, int(y[i]))
    loss = total / m
    if l2 > 0.0:
        sq = 0.0
        for k in range(p.shape[0]):
            sq += p[k] * p[k]
        loss += 0.5 * l2 * sq
    return loss


@njit(cache=True)
def count_correct(
    kind: int, x: FloatArray, y: FloatArray, p: FloatArray, f: int, h: int, c: int
) -> int:
    """Rows whose predicted class equals the label (logistic: ``z > 0`` means class 1)."""
    m = x.shape[0]
    c_out = 1 if kind == KIND_LOGISTIC else c
    out = np.empty(c_out)
    hid = np.empty(max(h, 1))
    correct = 0
    for i in range(m):
        _row_outputs(kind, x, i, p, f, h, c_out, hid, out)
        if kind == KIND_LOGISTIC:
            pred = 1 if out[0] > 0.0 else 0
        else:
            pred = _argmax(out, c_out)
        if pred == int(y[i]):
            correct += 1
    return correct


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
