"""Differential privacy: trainer-side clipping and noise, and epsilon accounting for the chain.

A trainer clips its update to L2 norm ``C`` and adds ``N(0, (z C)^2)`` per
coordinate (``clip_and_noise``; Gaussian mechanism, as the DP-FedAvg
client-level variant of McMahan et al. 2018; with per-example clipping inside
local DP-SGD the same accounting applies per step).  Each submitted delta
declares ``(noise_multiplier z, sampling_rate q, steps T)``; its privacy cost is
``T``-fold self-composition of the Poisson-subsampled Gaussian mechanism,
computed with the Renyi-DP accountant of Google's ``dp_accounting`` library
(Mironov 2017; Mironov, Talwar, Zhang 2019) and converted to (epsilon, delta).

What goes on chain is an integer: micro-epsilon rounded UP, so the recorded
spend never understates the true accountant value.  ``dp_accounting`` works in
float64 with NumPy/SciPy special functions; across machines those may differ in
the last bit, which changes the micro-epsilon only if the true value lies
within ~1e-16 relative of a micro boundary (documented in docs/fl.md).

The budget check (the chain's job) composes the whole history of an
institution: ``compute_composed_epsilon_micro(history + [new], delta) <=
budget``, which is tighter than adding per-delta epsilons.

For some (z, q) the accountant cannot evaluate a few fractional Renyi orders
below 2 and drops them, logging an absl WARNING per order per call ("failed to
converge ... Excluding this order"): epsilon is then the minimum over the other
orders, still an upper bound. A validator computes epsilons on every learning
block, so those lines buried the node's own log; ``_DropExcludedOrderNotices``
drops exactly them and nothing else from the ``absl`` logger.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

import dp_accounting
import numpy as np
import numpy.typing as npt
from dp_accounting.rdp import RdpAccountant

MICRO = 1_000_000
STEPS_MAX = 10_000_000
HISTORY_MAX = 10_000
NOISE_MULTIPLIER_MIN = 0.1  # below this the RDP bound is useless (epsilon in the hundreds+)
NOISE_MULTIPLIER_MAX = 1_000.0
EPSILON_MICRO_MAX = 10**15  # larger values are reported as an error, not stored
COMPOSED_CACHE_ENTRIES = 1024

FloatArray = npt.NDArray[np.float64]
EXCLUDED_ORDER_NOTICE = "Excluding this order from the epsilon computation"


class _DropExcludedOrderNotices(logging.Filter):
    """See the module docstring: the accountant's notice that it skipped an order."""

    def filter(self, record: logging.LogRecord) -> bool:
        return EXCLUDED_ORDER_NOTICE not in record.getMessage()


_ABSL_LOGGER = logging.getLogger("absl")
if not any(isinstance(f, _DropExcludedOrderNotices) for f in _ABSL_LOGGER.filters):
    _ABSL_LOGGER.addFilter(_DropExcludedOrderNotices())


class PrivacyInputError(ValueError):
    """Invalid DP parameters (the message names the parameter and its allowed range)."""


def clip_and_noise(
    update: FloatArray, clip_norm: float, noise_multiplier: float, rng: np.random.Generator
) -> FloatArray:
    """Scale ``update`` to L2 norm <= ``clip_norm`` and add ``N(0, (z * clip_norm)^2)`` noise."""
    arr = np.asarray(update, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise PrivacyInputError("update must be a non-empty finite 1-D vector")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyInputError(f"clip_norm must be finite and > 0, got {clip_norm}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyInputError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    norm = float(np.sqrt(np.sum(arr * arr)))
    clipped = arr * (clip_norm / norm) if norm > clip_norm else arr.copy()
    if noise_multiplier == 0:
        return clipped
    return clipped + rng.normal(0.0, noise_multiplier * clip_norm, size=arr.shape)


def _check_entry(noise_multiplier: float, sampling_rate: float, steps: int) -> None:
    if not isinstance(noise_multiplier, int | float) or isinstance(noise_multiplier, bool):
        raise PrivacyInputError("noise_multiplier must be a number")
    if not (
        math.isfinite(noise_multiplier)
        and NOISE_MULTIPLIER_MIN <= noise_multiplier <= NOISE_MULTIPLIER_MAX
    ):
        raise PrivacyInputError(
            f"noise_multiplier {noise_multiplier} not in "
            f"[{NOISE_MULTIPLIER_MIN}, {NOISE_MULTIPLIER_MAX}]"
        )
    if not isinstance(sampling_rate, int | float) or isinstance(sampling_rate, bool):
        raise PrivacyInputError("sampling_rate must be a number")
    if not (math.isfinite(sampling_rate) and 0 < sampling_rate <= 1):
        raise PrivacyInputError(f"sampling_rate {sampling_rate} not in (0, 1]")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= STEPS_MAX:
        raise PrivacyInputError(f"steps {steps!r} must be an int in [1, {STEPS_MAX}]")


def _check_delta(delta: float) -> None:
    if not isinstance(delta, int | float) or isinstance(delta, bool):
        raise PrivacyInputError("delta must be a number")
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise PrivacyInputError(f"delta {delta} not in (0, 1)")


def _event(noise_multiplier: float, sampling_rate: float, steps: int) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(float(noise_multiplier))
    step: dp_accounting.DpEvent = (
        gaussian
        if sampling_rate == 1
        else dp_accounting.PoissonSampledDpEvent(float(sampling_rate), gaussian)
    )
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _to_micro(epsilon: float) -> int:
    if not math.isfinite(epsilon) or epsilon * MICRO > EPSILON_MICRO_MAX:
        raise PrivacyInputError(f"epsilon {epsilon} is unbounded for these parameters")
    return max(0, math.ceil(epsilon * MICRO))


def compute_epsilon_micro(
    noise_multiplier: float, sampling_rate: float, steps: int, delta: float
) -> int:
    """Epsilon (micro-units, rounded up) of one delta: ``steps`` Poisson-subsampled Gaussians."""
    _check_entry(noise_multiplier, sampling_rate, steps)
    _check_delta(delta)
    accountant = RdpAccountant()
    accountant.compose(_event(noise_multiplier, sampling_rate, steps))
    return _to_micro(float(accountant.get_epsilon(delta)))


def compute_composed_epsilon_micro(
    history: Sequence[tuple[float, float, int]], delta: float
) -> int:
    """Epsilon (micro, rounded up) after composing every ``(z, q, steps)`` in ``history``."""
    _check_delta(delta)
    if len(history) > HISTORY_MAX:
        raise PrivacyInputError(f"history of {len(history)} entries exceeds {HISTORY_MAX}")
    if not history:
        return 0
    # Entries with the same (z, q) merge into one self-composition of the summed steps
    # (RDP composes additively), so a long history with few settings stays cheap; the
    # grouping is sorted, hence a function of the history alone.
    steps_by_setting: dict[tuple[float, float], int] = {}
    for entry in history:
        if len(entry) != 3:
            raise PrivacyInputError("a history entry is (noise_multiplier, sampling_rate, steps)")
        z, q, t = entry
        _check_entry(z, q, t)
        key = (float(z), float(q))
        steps_by_setting[key] = steps_by_setting.get(key, 0) + t
    settings = tuple((z, q, t) for (z, q), t in sorted(steps_by_setting.items()))
    return _compute_settings_epsilon_micro(settings, float(delta))


@functools.lru_cache(maxsize=COMPOSED_CACHE_ENTRIES)
def _compute_settings_epsilon_micro(
    settings: tuple[tuple[float, float, int], ...], delta: float
) -> int:
    """Memoised: the RDP accountant takes ~0.1-0.3 s, and every hospital of a round that
    uses the same DP settings has the same grouped history, checked at admission, in the
    proposer's block and in every validator's apply. A pure function of its arguments."""
    events = [_event(z, q, t) for z, q, t in settings]
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return _to_micro(float(accountant.get_epsilon(delta)))


def clear_epsilon_cache() -> None:
    """Forget memoised compositions (benchmarks time the accountant as a fresh node)."""
    _compute_settings_epsilon_micro.cache_clear()


def is_within_budget(
    history: Sequence[tuple[float, float, int]],
    new_entry: tuple[float, float, int],
    delta: float,
    budget_micro: int,
) -> bool:
    """Would composing ``new_entry`` after ``history`` keep epsilon <= ``budget_micro``?"""
    if isinstance(budget_micro, bool) or not isinstance(budget_micro, int) or budget_micro < 0:
        raise PrivacyInputError("budget_micro must be a non-negative int")
    try:
        spent = compute_composed_epsilon_micro([*history, new_entry], delta)
    except PrivacyInputError as exc:
        if "unbounded" in str(exc):
            return False
        raise
    return spent <= budget_micro
