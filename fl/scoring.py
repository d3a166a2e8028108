"""Proof-of-learning scores of model deltas on the shared validation set.

Layer (b) of proof of learning: a delta is useful if the base model plus that
delta alone has a lower validation loss than the base model (RONI, "reject on
negative influence", Barreno et al. 2010) and if it points the same way as the
round's robust aggregate (FLTrust-style cosine, Cao et al. NDSS 2021).

Every result here becomes chain state, so it is an integer (parts per million)
computed by the sequential Numba kernels of ``fl.eval_kernels``: no BLAS, no
parallel float reduction, no fastmath; floats are rounded half to even with
Python's ``round``.  A loss that is not finite or exceeds ``LOSS_PPM_MAX`` is
reported as ``LOSS_PPM_MAX`` (the worst score) instead of raising, so a wild
delta is rejected rather than crashing the state transition.

Updates: ``compute_update_norm_ppm`` is exact integer arithmetic (``isqrt``);
``get_update_digest`` detects copied deltas (free riders).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fl import eval_kernels
from fl.models import ModelSpec, ModelSpecError, compute_param_count
from fl.quantize import QuantizedUpdates, QuantizedVector, dequantize, verify_quantized

PPM = 1_000_000
LOSS_PPM_MAX = 10**15  # a saturated loss: 1e9 nats, far beyond any useful model
VALIDATION_ROWS_MAX = 1_000_000
UPDATE_DIGEST_TAG = b"bcfl/fl/update-digest/v1\x00"

FloatArray = npt.NDArray[np.float64]
_KIND_CODES = {
    "logistic": eval_kernels.KIND_LOGISTIC,
    "linear": eval_kernels.KIND_LINEAR,
    "softmax": eval_kernels.KIND_SOFTMAX,
    "mlp": eval_kernels.KIND_MLP,
}


class ScoringInputError(ValueError):
    """Validation data, parameters or deltas that cannot be scored."""


@dataclass(frozen=True)
class DeltaScore:
    client_id: int
    loss_before_ppm: int  # base model
    loss_after_ppm: int  # base + this delta alone
    improvement_ppm: int  # loss_before - loss_after (negative = harmful, RONI rejects)
    agreement_ppm: int  # cos(delta, robust aggregate) * 1e6, in [-1e6, 1e6] (FLTrust-style)


def _as_validation(spec: ModelSpec, x: FloatArray, y: npt.NDArray[np.generic]) -> FloatArray:
    """Checks the validation set and returns the labels as float64 (exact for class ids)."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != spec.n_features:
        raise ScoringInputError(f"validation features must be (m, {spec.n_features})")
    m = x.shape[0]
    if not 1 <= m <= VALIDATION_ROWS_MAX:
        raise ScoringInputError(f"validation rows {m} not in [1, {VALIDATION_ROWS_MAX}]")
    if x.dtype != np.float64 or not np.all(np.isfinite(x)):
        raise ScoringInputError("validation features must be finite float64")
    if not isinstance(y, np.ndarray) or y.shape != (m,):
        raise ScoringInputError(f"validation labels must have shape ({m},)")
    yf = y.astype(np.float64)
    if not np.all(np.isfinite(yf)):
        raise ScoringInputError("validation labels must be finite")
    if not spec.is_regression:
        classes = 2 if spec.kind == "logistic" else spec.n_classes
        if not np.all((yf == np.floor(yf)) & (yf >= 0) & (yf < classes)):
            raise ScoringInputError(f"class labels must be integers in [0, {classes})")
    return np.ascontiguousarray(yf)


def _check_params(spec: ModelSpec, params: FloatArray) -> FloatArray:
    if not isinstance(params, np.ndarray) or params.shape != (compute_param_count(spec),):
        raise ScoringInputError(f"params must have shape ({compute_param_count(spec)},)")
    if params.dtype != np.float64 or not np.all(np.isfinite(params)):
        raise ScoringInputError("params must be finite float64")
    return np.ascontiguousarray(params)


def _loss_to_ppm(loss: float) -> int:
    if not math.isfinite(loss):
        return LOSS_PPM_MAX
    scaled = loss * PPM
    if scaled >= LOSS_PPM_MAX:
        return LOSS_PPM_MAX
    return round(scaled)  # half to even; loss >= 0 (up to l2), so no lower saturation


def _loss_ppm_unchecked(spec: ModelSpec, params: FloatArray, x: FloatArray, yf: FloatArray) -> int:
    if not np.all(np.isfinite(params)):
        return LOSS_PPM_MAX
    loss = eval_kernels.compute_mean_loss(
        _KIND_CODES[spec.kind],
        x,
        yf,
        params,
        spec.n_features,
        spec.hidden,
        spec.n_classes,
        spec.is_regression,
        spec.l2,
    )
    return _loss_to_ppm(float(loss))


def compute_validation_loss_ppm(
    spec: ModelSpec, params: FloatArray, x: FloatArray, y: npt.NDArray[np.generic]
) -> int:
    """Mean validation loss (+ L2, as ``fl.models``) times 1e6, rounded half to even."""
    yf = _as_validation(spec, x, y)
    p = _check_params(spec, params)
    return _loss_ppm_unchecked(spec, p, np.ascontiguousarray(x), yf)


def compute_accuracy_ppm(
    spec: ModelSpec, params: FloatArray, x: FloatArray, y: npt.NDArray[np.generic]
) -> int:
    """Fraction of correctly classified rows times 1e6, exact (integer, half to even)."""
    if spec.is_regression:
        raise ModelSpecError("accuracy is for classification models")
    yf = _as_validation(spec, x, y)
    p = _check_params(spec, params)
    correct = int(
        eval_kernels.count_correct(
            _KIND_CODES[spec.kind],
            np.ascontiguousarray(x),
            yf,
            p,
            spec.n_features,
            spec.hidden,
            spec.n_classes,
        )
    )
    return _div_round_half_even(correct * PPM, x.shape[0])


def _div_round_half_even(num: int, den: int) -> int:
    assert den > 0
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


def score_deltas(
    spec: ModelSpec,
    base_params: FloatArray,
    deltas: QuantizedUpdates,
    client_ids: Sequence[int],
    aggregate: FloatArray,
    x_val: FloatArray,
    y_val: npt.NDArray[np.generic],
) -> list[DeltaScore]:
    """One ``DeltaScore`` per row of ``deltas``, in the order of ``client_ids``.

    ``loss_after`` is the loss of ``base + dequantize(row)`` (an element-wise
    IEEE addition, identical everywhere); ``agreement`` compares the row with
    the round's robust aggregate (float64 vector in real units).
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
    if not isinstance(aggregate, np.ndarray) or aggregate.shape != (d,):
        raise ScoringInputError(f"aggregate must have shape ({d},)")
    agg = np.ascontiguousarray(aggregate, dtype=np.float64)
    if not np.all(np.isfinite(agg)):
        raise ScoringInputError("aggregate must be finite")
    before = _loss_ppm_unchecked(spec, base, x, yf)
    scores: list[DeltaScore] = []
    for row, client in enumerate(ids):
        q = np.ascontiguousarray(deltas.values[row])
        after = _loss_ppm_unchecked(spec, base + dequantize(q, deltas.scale_exp), x, yf)
        cos = float(eval_kernels.compute_cosine_q_f(q, agg))
        agreement = round(cos * PPM)
        assert -PPM <= agreement <= PPM
        scores.append(DeltaScore(client, before, after, before - after, agreement))
    return scores


def compute_update_norm_ppm(update: QuantizedVector) -> int:
    """``|q * 2**-s|_2 * 1e6`` rounded to nearest (half up), in exact integer arithmetic."""
    verify_quantized(update.values, update.scale_exp)
    q = update.values.astype(np.int64)
    sq = int(np.dot(q, q))  # int64 dot: exact (<= d * 2**30 < 2**53), no BLAS for ints
    s = update.scale_exp
    # norm_ppm = sqrt(sq * 1e12 / 4**s); round(sqrt(v)) = floor((floor(2 sqrt v) + 1) / 2)
    num, den = 4 * sq * PPM * PPM, 1
    if s >= 0:
        den = 4**s
    else:
        num *= 4 ** (-s)
    return (math.isqrt(num // den) + 1) // 2


def get_update_digest(update: QuantizedVector) -> bytes:
    """sha256(tag, scale exponent, dimension, int16 little-endian values): equal iff a copy."""
    verify_quantized(update.values, update.scale_exp)
    if update.values.ndim != 1:
        raise ScoringInputError("an update is a 1-D vector")
    h = hashlib.sha256(UPDATE_DIGEST_TAG)
    h.update(int(update.scale_exp).to_bytes(1, "little", signed=True))
    h.update(int(update.values.shape[0]).to_bytes(4, "little"))
    h.update(update.values.astype("<i2").tobytes())
    return h.digest()


def is_zero_update(update: QuantizedVector) -> bool:
    verify_quantized(update.values, update.scale_exp)
    return not bool(np.any(update.values))
