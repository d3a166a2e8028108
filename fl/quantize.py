"""Fixed-point encoding of model updates.

A quantised update is an integer array ``q`` and a power-of-two scale exponent
``s``; the real value it stands for is ``q * 2**-s``.  Quantising multiplies by
``2**s`` (exact in binary floating point unless it overflows), rounds half to
even with ``np.rint`` (IEEE round-to-nearest-even, the same on every machine)
and saturates to the symmetric range ``[-q_max, q_max]``.  The number of
saturated entries is reported, never hidden.

Aggregation rules work on the integers only.  With ``|q| <= 2**15 - 1``:

* a weighted column sum is ``< n * w_max * 2**15``; the rules assert it stays
  below ``2**53`` so that its float64 conversion (and one division) is exact;
* a squared distance is ``< d * (2**16)**2 = d * 2**32``; below ``2**63`` for
  ``d < 2**31`` and, for the float64 Gram path, exact while ``d * 2**32 < 2**53``
  i.e. ``d < 2**21`` (about 2.1e6).  ``D_MAX`` caps ``d`` at ``2**21``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Q_MAX_INT16 = 2**15 - 1
SCALE_EXP_MIN = -64
SCALE_EXP_MAX = 64
N_CLIENTS_MAX = 1000
D_MAX = 2**21  # keeps every squared distance below 2**53 (see module docstring)

IntArray = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]


class QuantizationError(ValueError):
    """Raised for input that cannot be encoded: NaN/Inf, bad scale, bad shape."""


@dataclass(frozen=True)
class QuantizedUpdates:
    """``n`` client updates as an ``n x d`` int16 matrix with one shared scale exponent."""

    values: IntArray
    scale_exp: int

    def __post_init__(self) -> None:
        verify_quantized(self.values, self.scale_exp)

    @property
    def n_clients(self) -> int:
        return int(self.values.shape[0])

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])


@dataclass(frozen=True)
class QuantizedVector:
    """One update: an int16 vector, its scale exponent and how many entries saturated."""

    values: IntArray
    scale_exp: int
    saturated_count: int


def verify_quantized(values: npt.NDArray[np.generic], scale_exp: int) -> None:
    if not isinstance(values, np.ndarray) or values.dtype != np.int16:
        raise QuantizationError("quantised values must be a numpy int16 array")
    if values.ndim not in (1, 2):
        raise QuantizationError(f"quantised values must be 1-D or 2-D, got {values.ndim}-D")
    if values.ndim == 2 and values.shape[0] > N_CLIENTS_MAX:
        raise QuantizationError(f"{values.shape[0]} clients exceeds the limit {N_CLIENTS_MAX}")
    if values.shape[-1] == 0 or values.shape[-1] > D_MAX:
        raise QuantizationError(f"dimension {values.shape[-1]} not in [1, {D_MAX}]")
    if values.size and int(values.min()) < -Q_MAX_INT16:
        raise QuantizationError("quantised value -32768 is outside the symmetric range")
    if not isinstance(scale_exp, int) or not SCALE_EXP_MIN <= scale_exp <= SCALE_EXP_MAX:
        raise QuantizationError(
            f"scale exponent {scale_exp!r} not in [{SCALE_EXP_MIN}, {SCALE_EXP_MAX}]"
        )


def quantize(x: npt.ArrayLike, scale_exp: int) -> QuantizedVector:
    """Encode a float vector as int16 at scale ``2**scale_exp`` (round half to even, saturate)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise QuantizationError(f"expected a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise QuantizationError("update contains NaN or Inf")
    if not SCALE_EXP_MIN <= scale_exp <= SCALE_EXP_MAX:
        raise QuantizationError(f"scale exponent {scale_exp} out of range")
    scaled = np.rint(np.ldexp(arr, scale_exp))
    saturated = int(np.count_nonzero(np.abs(scaled) > Q_MAX_INT16))
    clipped = np.clip(scaled, -Q_MAX_INT16, Q_MAX_INT16).astype(np.int16)
    return QuantizedVector(values=clipped, scale_exp=scale_exp, saturated_count=saturated)


def dequantize(values: npt.NDArray[np.integer], scale_exp: int) -> FloatArray:
    """Exact conversion back to float64: ``values * 2**-scale_exp``."""
    return np.ldexp(values.astype(np.float64), -scale_exp)


def compute_scale_exp(max_abs: float, q_max: int = Q_MAX_INT16) -> int:
    """Largest exponent ``s`` with ``max_abs * 2**s <= q_max`` (so nothing saturates)."""
    if not np.isfinite(max_abs) or max_abs < 0:
        raise QuantizationError(f"max_abs must be finite and >= 0, got {max_abs}")
    if max_abs == 0.0:
        return SCALE_EXP_MAX
    _, exponent = np.frexp(q_max / max_abs)
    s = int(exponent)
    while s > SCALE_EXP_MIN and max_abs * 2.0**s > q_max:
        s -= 1
    return max(SCALE_EXP_MIN, min(SCALE_EXP_MAX, s))


def stack_updates(vectors: list[QuantizedVector]) -> QuantizedUpdates:
    """Stack client vectors that share one scale exponent into an ``n x d`` matrix."""
    if not vectors:
        raise QuantizationError("no updates to stack")
    exps = {v.scale_exp for v in vectors}
    if len(exps) != 1:
        raise QuantizationError(f"updates use different scale exponents {sorted(exps)}")
    dims = {v.values.shape for v in vectors}
    if len(dims) != 1:
        raise QuantizationError(f"updates have different shapes {sorted(dims)}")
    return QuantizedUpdates(np.stack([v.values for v in vectors]), vectors[0].scale_exp)


def quantize_matrix(x: npt.ArrayLike, scale_exp: int) -> tuple[QuantizedUpdates, int]:
    """Quantise an ``n x d`` float matrix row by row; returns the updates and saturation count."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise QuantizationError(f"expected an n x d matrix, got shape {arr.shape}")
    rows = [quantize(row, scale_exp) for row in arr]
    return stack_updates(rows), sum(r.saturated_count for r in rows)
