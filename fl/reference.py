"""Plain NumPy float64 reference implementations of the aggregation rules.

Straightforward code (sorts, ``np.mean``, ``np.linalg.norm``) over the
dequantised ``n x d`` float64 matrix, rows in ascending client-id order.  They
are what the exact kernels are checked against (equal within quantisation
error, same selected clients) and the "NumPy" column of the benchmark.  They are
NOT bit-exact across machines and never feed the chain.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def reference_mean(x: FloatArray, w: FloatArray) -> FloatArray:
    return np.asarray((w[:, None] * x).sum(axis=0) / w.sum(), dtype=np.float64)


def reference_median(x: FloatArray) -> FloatArray:
    return np.asarray(np.median(x, axis=0), dtype=np.float64)


def reference_trimmed_mean(x: FloatArray, f: int) -> FloatArray:
    s = np.sort(x, axis=0)
    return np.asarray(s[f : x.shape[0] - f].mean(axis=0), dtype=np.float64)


def reference_sq_distances(x: FloatArray) -> FloatArray:
    sq = (x * x).sum(axis=1)
    return np.asarray(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))


def reference_krum_scores(dist: FloatArray, active: list[int], f: int) -> dict[int, float]:
    m = len(active) - f - 2
    return {i: float(np.sort([dist[i, j] for j in active if j != i])[:m].sum()) for i in active}


def reference_krum(x: FloatArray, f: int) -> tuple[FloatArray, int]:
    scores = reference_krum_scores(reference_sq_distances(x), list(range(x.shape[0])), f)
    best = min(scores, key=lambda i: (scores[i], i))
    return x[best].copy(), best


def reference_multi_krum(
    x: FloatArray, w: FloatArray, f: int, m: int
) -> tuple[FloatArray, list[int]]:
    scores = reference_krum_scores(reference_sq_distances(x), list(range(x.shape[0])), f)
    chosen = sorted(sorted(scores, key=lambda i: (scores[i], i))[:m])
    return reference_mean(x[chosen], w[chosen]), chosen


def reference_bulyan(x: FloatArray, f: int) -> tuple[FloatArray, list[int]]:
    n = x.shape[0]
    theta, dist = n - 2 * f, reference_sq_distances(x)
    active, chosen = list(range(n)), []
    for _ in range(theta):
        if len(active) - f - 2 >= 1:
            scores = reference_krum_scores(dist, active, f)
            best = min(active, key=lambda i: (scores[i], i))
        else:
            best = active[0]
        chosen.append(best)
        active.remove(best)
    chosen.sort()
    beta = theta - 2 * f
    sub = np.sort(x[chosen], axis=0)
    med = np.median(sub, axis=0)
    # beta closest to the median per coordinate; a stable sort over sorted values
    # lets the lower value win a tie, as in the exact kernel
    order = np.argsort(np.abs(sub - med), axis=0, kind="stable")[:beta]
    return np.take_along_axis(sub, order, axis=0).mean(axis=0), chosen


def reference_geometric_median(
    x: FloatArray, w: FloatArray, iterations: int, nu: float
) -> FloatArray:
    z = reference_mean(x, w)
    for _ in range(iterations):
        c = w / np.maximum(nu, np.linalg.norm(x - z, axis=1))
        z = (c[:, None] * x).sum(axis=0) / c.sum()
    return z


def reference_centered_clipping(
    x: FloatArray, w: FloatArray, tau: float, iterations: int, start: FloatArray | None
) -> FloatArray:
    v = np.median(x, axis=0) if start is None else start.copy()
    for _ in range(iterations):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        scale = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
        v = v + ((w * scale)[:, None] * diff).sum(axis=0) / w.sum()
    return v


def reference_fltrust(x: FloatArray, g0: FloatArray) -> tuple[FloatArray, FloatArray]:
    norms = np.linalg.norm(x, axis=1)
    g_norm = np.linalg.norm(g0)
    cos = (x @ g0) / np.maximum(norms * g_norm, 1e-300)
    trust = np.maximum(cos, 0.0)
    if trust.sum() == 0:
        return np.zeros(x.shape[1]), trust
    scaled = x * (g_norm / np.maximum(norms, 1e-300))[:, None]
    return (trust[:, None] * scaled).sum(axis=0) / trust.sum(), trust


def reference_clip(x: FloatArray, clip_norm: float) -> FloatArray:
    norms = np.linalg.norm(x, axis=1)
    return x * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))[:, None]


def reference_nnm(x: FloatArray, f: int) -> FloatArray:
    dist = reference_sq_distances(x)
    n = x.shape[0]
    out = np.empty_like(x)
    for i in range(n):
        order = sorted(range(n), key=lambda j: (dist[i, j], j))[: n - f]
        out[i] = x[order].mean(axis=0)
    return out


def reference_aggregate(
    rule: str,
    x: FloatArray,
    w: FloatArray,
    params: Mapping[str, float],
    reference: FloatArray | None = None,
) -> FloatArray:
    """Dispatch by rule name (same names and parameters as ``fl.aggregation.RULES``)."""
    f = int(params.get("f", 1))
    if rule == "mean":
        return reference_mean(x, w)
    if rule == "median":
        return reference_median(x)
    if rule == "trimmed_mean":
        return reference_trimmed_mean(x, f)
    if rule == "krum":
        return reference_krum(x, f)[0]
    if rule == "multi_krum":
        return reference_multi_krum(x, w, f, int(params.get("m", 0)) or x.shape[0] - f)[0]
    if rule == "bulyan":
        return reference_bulyan(x, f)[0]
    if rule == "geometric_median":
        return reference_geometric_median(
            x, w, int(params.get("iterations", 8)), float(params.get("nu", 1e-6))
        )
    if rule == "centered_clipping":
        return reference_centered_clipping(
            x, w, float(params.get("tau", 1.0)), int(params.get("iterations", 3)), reference
        )
    if rule == "fltrust":
        assert reference is not None
        return reference_fltrust(x, reference)[0]
    raise ValueError(f"unknown rule {rule!r}")
