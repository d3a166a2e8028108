"""Numba kernels for exact aggregation over int16 update matrices.

Every kernel is ``cache=True`` and never ``fastmath``.  Integer kernels may run
in parallel in any order because integer addition is associative: the result is
the same for every thread count.  Float kernels (Weiszfeld, centered clipping,
FLTrust weighting) parallelise only over independent outputs, and each output is
a sequential loop in a fixed order, so they are also bit-identical for every
thread count.  LLVM does not contract ``a*b+c`` into FMA without fast-math
flags, so the float results are the IEEE results of the written expressions.

Layout: updates are ``n x d`` row-major.  Column-wise kernels copy a tile of
``TILE_COORDS`` coordinates into a transposed ``tile x n`` buffer so that each
coordinate's ``n`` values are contiguous while selecting.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

TILE_COORDS = 256
DIST_TILE_COORDS = 2048
DIST_CHUNKS = 32


def compute_sorting_network(
    n: int, ranks_lo: int, ranks_hi: int, sums_only: bool = False
) -> npt.NDArray[np.int64]:
    """Batcher odd-even merge sort comparators for ``n`` inputs, pruned to ranks ``[lo, hi)``.

    The network is built for the next power of two; comparators touching a
    padded index are dropped (padding with +inf makes them no-ops).  A backward
    pass then drops comparators that cannot influence the wanted output ranks
    or, with ``sums_only``, the sums of the ranks below, inside and above
    ``[ranks_lo, ranks_hi)`` (all a trimmed sum needs).
    """
    assert 1 <= n and 0 <= ranks_lo < ranks_hi <= n
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    t = 1
    while t < size:
        k = t
        while k >= 1:
            j = k % t
            while j + k < size:
                for i in range(min(k, size - j - k)):
                    a = i + j
                    b = i + j + k
                    if a // (t * 2) == b // (t * 2) and b < n:
                        pairs.append((a, b))
                j += 2 * k
            k //= 2
        t *= 2
    kept: list[tuple[int, int]] = []
    if sums_only:
        # Only the sums of three rank classes [0, lo), [lo, hi), [hi, n) matter: a
        # comparator no kept later comparator touches, whose two ends fall in one
        # class, can only swap two values within that class (induction from the end).
        def rank_class(p: int) -> int:
            return 0 if p < ranks_lo else (1 if p < ranks_hi else 2)

        touched: set[int] = set()
        for a, b in reversed(pairs):
            if a not in touched and b not in touched and rank_class(a) == rank_class(b):
                continue
            kept.append((a, b))
            touched.update((a, b))
    else:
        needed = set(range(ranks_lo, ranks_hi))
        for a, b in reversed(pairs):
            if a in needed or b in needed:
                kept.append((a, b))
                needed.add(a)
                needed.add(b)
    kept.reverse()
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


@njit(cache=True)
def _load_sorted_tile(
    values: npt.NDArray[np.int16],
    pairs: npt.NDArray[np.int64],
    j0: int,
    width: int,
    buf: npt.NDArray[np.int16],
) -> None:  # pragma: no cover
    """Copy ``values[:, j0:j0+width]`` into ``buf`` and run the comparator network row-wise.

    Each comparator is an elementwise min/max of two rows, so every coordinate
    of the tile is sorted at once with SIMD and no data-dependent branches.
    """
    n = values.shape[0]
    for i in range(n):
        src = values[i, j0 : j0 + width]
        dst = buf[i]
        for k in range(width):
            dst[k] = src[k]
    for p in range(pairs.shape[0]):
        ra = buf[pairs[p, 0]]
        rb = buf[pairs[p, 1]]
        for k in range(width):
            x = ra[k]
            y = rb[k]
            ra[k] = x if x < y else y
            rb[k] = y if x < y else x


@njit(cache=True, parallel=True)
def compute_trimmed_sums(
    values: npt.NDArray[np.int16], pairs: npt.NDArray[np.int64], trim: int
) -> npt.NDArray[np.int64]:  # pragma: no cover
    """Per coordinate: the exact sum of the sorted values ``[trim : n - trim]``.

    ``pairs`` must sort (at least) ranks ``[trim, n - trim)`` of ``n`` inputs.
    """
    n, d = values.shape
    out = np.empty(d, dtype=np.int64)
    n_tiles = (d + TILE_COORDS - 1) // TILE_COORDS
    for t in prange(n_tiles):
        j0 = t * TILE_COORDS
        width = min(d, j0 + TILE_COORDS) - j0
        buf = np.empty((n, TILE_COORDS), dtype=np.int16)
        _load_sorted_tile(values, pairs, j0, width, buf)
        acc = np.zeros(TILE_COORDS, dtype=np.int64)
        for i in range(trim, n - trim):
            row = buf[i]
            for k in range(width):
                acc[k] += row[k]
        for k in range(width):
            out[j0 + k] = acc[k]
    return out


@njit(cache=True, parallel=True)
def compute_weighted_sums(
    values: npt.NDArray[np.int16], weights: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:  # pragma: no cover
    """Per coordinate: the exact sum ``sum_i weights[i] * values[i, j]``."""
    n, d = values.shape
    out = np.zeros(d, dtype=np.int64)
    n_tiles = (d + DIST_TILE_COORDS - 1) // DIST_TILE_COORDS
    for t in prange(n_tiles):
        j0 = t * DIST_TILE_COORDS
        j1 = min(d, j0 + DIST_TILE_COORDS)
        acc = np.zeros(j1 - j0, dtype=np.int64)  # local: no aliasing with the rows
        for i in range(n):
            w = weights[i]
            if w == 0:
                continue
            row = values[i, j0:j1]
            for k in range(j1 - j0):
                acc[k] += w * np.int64(row[k])
        out[j0:j1] = acc
    return out


@njit(cache=True, parallel=True)
def compute_gram(values: npt.NDArray[np.int16]) -> npt.NDArray[np.int64]:  # pragma: no cover
    """The exact ``n x n`` Gram matrix ``<values[i], values[j]>`` (upper triangle filled).

    Coordinates are cut into ``DIST_CHUNKS`` fixed chunks (parallel) and tiles
    that stay in L1.  Row ``i`` is multiplied against four rows at once so each
    load of ``values[i]`` feeds four accumulators; 1-D row views let LLVM
    vectorise the int64 loop.  Integer sums: exact in any order.
    """
    n, d = values.shape
    chunk = (d + DIST_CHUNKS - 1) // DIST_CHUNKS
    partial = np.zeros((DIST_CHUNKS, n, n), dtype=np.int64)
    for c in prange(DIST_CHUNKS):
        lo = c * chunk
        hi = min(d, lo + chunk)
        for t0 in range(lo, hi, DIST_TILE_COORDS):
            t1 = min(hi, t0 + DIST_TILE_COORDS)
            width = t1 - t0
            for i in range(n):
                ra = values[i, t0:t1]
                j = i
                while j + 3 < n:
                    r0 = values[j, t0:t1]
                    r1 = values[j + 1, t0:t1]
                    r2 = values[j + 2, t0:t1]
                    r3 = values[j + 3, t0:t1]
                    s0 = np.int64(0)
                    s1 = np.int64(0)
                    s2 = np.int64(0)
                    s3 = np.int64(0)
                    for k in range(width):
                        x = np.int64(ra[k])
                        s0 += x * r0[k]
                        s1 += x * r1[k]
                        s2 += x * r2[k]
                        s3 += x * r3[k]
                    partial[c, i, j] += s0
                    partial[c, i, j + 1] += s1
                    partial[c, i, j + 2] += s2
                    partial[c, i, j + 3] += s3
                    j += 4
                while j < n:
                    rb = values[j, t0:t1]
                    s = np.int64(0)
                    for k in range(width):
                        s += np.int64(ra[k]) * rb[k]
                    partial[c, i, j] += s
                    j += 1
    out = np.zeros((n, n), dtype=np.int64)
    for c in range(DIST_CHUNKS):
        for i in range(n):
            for j in range(i, n):
                out[i, j] += partial[c, i, j]
    return out


@njit(cache=True)
def compute_pairwise_sq_distances(
    values: npt.NDArray[np.int16],
) -> npt.NDArray[np.int64]:  # pragma: no cover
    """The exact ``n x n`` matrix of squared distances, ``G_ii + G_jj - 2 G_ij`` in int64.

    Bounds: ``|G_ij| <= d * 2**30`` and ``D_ij <= d * 2**32``, both far below
    ``2**63`` for ``d <= D_MAX = 2**21``.
    """
    n = values.shape[0]
    gram = compute_gram(values)
    out = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            dist = gram[i, i] + gram[j, j] - 2 * gram[i, j]
            out[i, j] = dist
            out[j, i] = dist
    return out


@njit(cache=True, parallel=True)
def compute_dots_with(
    values: npt.NDArray[np.int16], reference: npt.NDArray[np.int16]
) -> npt.NDArray[np.int64]:  # pragma: no cover
    """Exact ``<values[i], reference>`` per row; the last entry is ``<reference, reference>``."""
    n, d = values.shape
    out = np.zeros(n + 1, dtype=np.int64)
    for i in prange(n + 1):
        row = values[i] if i < n else reference
        s = np.int64(0)
        for k in range(d):
            s += np.int64(row[k]) * np.int64(reference[k])
        out[i] = s
    return out


@njit(cache=True, parallel=True)
def compute_row_sq_norms(
    values: npt.NDArray[np.int16],
) -> npt.NDArray[np.int64]:  # pragma: no cover
    """Exact squared L2 norm of every row."""
    n, d = values.shape
    out = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        row = values[i]
        s = np.int64(0)
        for k in range(d):
            x = np.int64(row[k])
            s += x * x
        out[i] = s
    return out


@njit(cache=True, parallel=True)
def compute_bulyan_sums(
    values: npt.NDArray[np.int16], pairs: npt.NDArray[np.int64], beta: int
) -> npt.NDArray[np.int64]:  # pragma: no cover
    """Per coordinate: exact sum of the ``beta`` values closest to the coordinate's median.

    ``pairs`` must fully sort ``n`` inputs.  Distances are compared as
    ``|2x - (a + b)|`` against the exact median numerator ``a + b``; on equal
    distance the lower value wins, so the chosen multiset is unique.
    """
    n, d = values.shape
    out = np.empty(d, dtype=np.int64)
    m_lo = (n - 1) // 2
    m_hi = n // 2
    n_tiles = (d + TILE_COORDS - 1) // TILE_COORDS
    for t in prange(n_tiles):
        j0 = t * TILE_COORDS
        width = min(d, j0 + TILE_COORDS) - j0
        buf = np.empty((n, TILE_COORDS), dtype=np.int16)
        _load_sorted_tile(values, pairs, j0, width, buf)
        for k in range(width):
            med2 = np.int64(buf[m_lo, k]) + np.int64(buf[m_hi, k])
            lo = m_lo  # window is [lo, hi) in sorted order
            hi = m_lo
            s = np.int64(0)
            for _ in range(beta):
                if hi >= n:
                    lo -= 1
                    s += np.int64(buf[lo, k])
                elif lo <= 0:
                    s += np.int64(buf[hi, k])
                    hi += 1
                else:
                    dist_low = med2 - 2 * np.int64(buf[lo - 1, k])
                    dist_high = 2 * np.int64(buf[hi, k]) - med2
                    if dist_low <= dist_high:
                        lo -= 1
                        s += np.int64(buf[lo, k])
                    else:
                        s += np.int64(buf[hi, k])
                        hi += 1
            out[j0 + k] = s
    return out


@njit(cache=True, parallel=True)
def compute_neighbour_means(
    values: npt.NDArray[np.int16], neighbours: npt.NDArray[np.int64]
) -> npt.NDArray[np.int16]:  # pragma: no cover
    """Row i becomes the mean of rows ``neighbours[i]``, rounded half to even (exact integers)."""
    n, d = values.shape
    m = neighbours.shape[1]
    out = np.empty((n, d), dtype=np.int16)
    for i in prange(n):
        acc = np.zeros(d, dtype=np.int64)
        for r in range(m):
            row = values[neighbours[i, r]]
            for k in range(d):
                acc[k] += row[k]
        dst = out[i]
        for k in range(d):
            s = acc[k]
            q = s // m  # floor division, then round half to even
            twice_rem = 2 * (s - q * m)
            if twice_rem > m or (twice_rem == m and (q & 1) == 1):
                q += 1
            dst[k] = q
    return out


@njit(cache=True, parallel=True)
def compute_scaled_rows(
    values: npt.NDArray[np.int16], factors: npt.NDArray[np.float64]
) -> npt.NDArray[np.int16]:  # pragma: no cover
    """``rint(values[i] * factors[i])`` with ``0 <= factors[i] <= 1`` (no saturation possible)."""
    n, d = values.shape
    out = np.empty((n, d), dtype=np.int16)
    for i in prange(n):
        f = factors[i]
        row = values[i]
        dst = out[i]
        for k in range(d):
            dst[k] = np.int16(np.rint(np.float64(row[k]) * f))
    return out


@njit(cache=True, parallel=True)
def compute_distances_to(
    values: npt.NDArray[np.int16], z: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:  # pragma: no cover
    """Euclidean distance from each row to ``z``; each row summed sequentially in k order."""
    n, d = values.shape
    out = np.empty(n, dtype=np.float64)
    for i in prange(n):
        row = values[i]
        s = 0.0
        for k in range(d):
            diff = np.float64(row[k]) - z[k]
            s += diff * diff
        out[i] = np.sqrt(s)
    return out


@njit(cache=True, parallel=True)
def compute_combination(
    values: npt.NDArray[np.int16],
    coefs: npt.NDArray[np.float64],
    base: npt.NDArray[np.float64],
    base_coef: float,
) -> npt.NDArray[np.float64]:  # pragma: no cover
    """Per coordinate ``base_coef * base[k] + sum_i coefs[i] * values[i, k]``.

    The sum runs over ``i = 0, 1, ...`` in that order for every coordinate
    (tiles only change which coordinates a thread owns), so the result is the
    same for every thread count.
    """
    n, d = values.shape
    out = np.empty(d, dtype=np.float64)
    n_tiles = (d + DIST_TILE_COORDS - 1) // DIST_TILE_COORDS
    for t in prange(n_tiles):
        j0 = t * DIST_TILE_COORDS
        j1 = min(d, j0 + DIST_TILE_COORDS)
        acc = out[j0:j1]
        for k in range(j1 - j0):
            acc[k] = base_coef * base[j0 + k]
        for i in range(n):
            c = coefs[i]
            row = values[i, j0:j1]
            for k in range(j1 - j0):
                acc[k] += c * np.float64(row[k])
    return out
