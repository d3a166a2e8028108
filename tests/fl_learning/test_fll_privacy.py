"""DP: clipping and noise, epsilon from dp_accounting's RDP accountant in micro-epsilon."""

from __future__ import annotations

import logging
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fl.privacy import (
    PrivacyInputError,
    clip_and_noise,
    compute_composed_epsilon_micro,
    compute_epsilon_micro,
    is_within_budget,
)

DELTA = 1e-5


def _direct(events: list[dp_accounting.DpEvent]) -> float:
    acc = RdpAccountant()
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return float(acc.get_epsilon(DELTA))


def _sgd(z: float, q: float, t: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), t
    )


def test_epsilon_matches_dp_accounting_rounded_up() -> None:
    eps = _direct([_sgd(1.1, 0.01, 1000)])
    got = compute_epsilon_micro(1.1, 0.01, 1000, DELTA)
    assert got == math.ceil(eps * 1e6) and got / 1e6 >= eps
    assert 1.0 < eps < 3.0  # the well-known regime: z = 1.1, q = 0.01, 1000 steps


def test_orders_the_accountant_skips_are_not_logged_and_the_value_is_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """z = 1, q = 0.1: dp_accounting drops orders 1.1-1.5 with an absl WARNING each (a
    validator logged them for every learning block). The notices go; the value is the
    accountant's, and other absl warnings still get through."""
    with caplog.at_level(logging.WARNING, logger="absl"):
        got = compute_epsilon_micro(1.0, 0.1, 7, DELTA)
        logging.getLogger("absl").warning("something else")
    assert got == math.ceil(_direct([_sgd(1.0, 0.1, 7)]) * 1e6)
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == ["something else"]


def test_epsilon_monotone_in_steps_noise_and_sampling() -> None:
    by_steps = [compute_epsilon_micro(1.0, 0.02, t, DELTA) for t in (1, 10, 100, 1000)]
    by_noise = [compute_epsilon_micro(z, 0.02, 100, DELTA) for z in (0.6, 0.8, 1.2, 2.0, 5.0)]
    by_rate = [compute_epsilon_micro(1.0, q, 100, DELTA) for q in (0.001, 0.01, 0.1, 1.0)]
    assert by_steps == sorted(set(by_steps))
    assert by_noise == sorted(set(by_noise), reverse=True)
    assert by_rate == sorted(set(by_rate))


def test_composition_matches_dp_accounting_and_beats_summing() -> None:
    history = [(1.1, 0.01, 300), (0.9, 0.05, 50), (2.0, 1.0, 3)]
    got = compute_composed_epsilon_micro(history, DELTA)
    assert got == math.ceil(
        _direct(
            [
                _sgd(1.1, 0.01, 300),
                _sgd(0.9, 0.05, 50),
                dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 3),
            ]
        )
        * 1e6
    )
    separately = sum(compute_epsilon_micro(z, q, t, DELTA) for z, q, t in history)
    assert max(compute_epsilon_micro(z, q, t, DELTA) for z, q, t in history) < got < separately
    # RDP composition is additive: two halves compose to the whole (up to float rounding)
    whole = compute_epsilon_micro(1.1, 0.01, 600, DELTA)
    halves = compute_composed_epsilon_micro([(1.1, 0.01, 300), (1.1, 0.01, 300)], DELTA)
    assert abs(whole - halves) <= 1
    assert compute_composed_epsilon_micro([], DELTA) == 0


def test_budget_check() -> None:
    history = [(1.1, 0.01, 1000)]
    spent = compute_composed_epsilon_micro([*history, (1.1, 0.01, 1000)], DELTA)
    assert is_within_budget(history, (1.1, 0.01, 1000), DELTA, spent)
    assert not is_within_budget(history, (1.1, 0.01, 1000), DELTA, spent - 1)


@pytest.mark.parametrize(
    ("z", "q", "t", "delta"),
    [
        (0.0, 0.01, 10, DELTA),
        (-1.0, 0.01, 10, DELTA),
        (math.nan, 0.01, 10, DELTA),
        (1.0, 0.0, 10, DELTA),
        (1.0, 1.5, 10, DELTA),
        (1.0, math.inf, 10, DELTA),
        (1.0, 0.01, 0, DELTA),
        (1.0, 0.01, 1.5, DELTA),
        (1.0, 0.01, True, DELTA),
        (1.0, 0.01, 10, 0.0),
        (1.0, 0.01, 10, 1.0),
        (1.0, 0.01, 10, math.nan),
    ],
)
def test_invalid_arguments_rejected(z: float, q: float, t: int, delta: float) -> None:
    with pytest.raises(PrivacyInputError):
        compute_epsilon_micro(z, q, t, delta)
    with pytest.raises(PrivacyInputError):
        compute_composed_epsilon_micro([(z, q, t)], delta)


def test_clip_and_noise() -> None:
    rng = np.random.default_rng(0)
    u = rng.normal(size=10_000) * 3
    clipped = clip_and_noise(u, 2.0, 0.0, rng)
    assert np.linalg.norm(clipped) == pytest.approx(2.0, rel=1e-12)
    small = u / np.linalg.norm(u) * 0.5
    assert np.array_equal(clip_and_noise(small, 2.0, 0.0, rng), small)
    noisy = clip_and_noise(u, 2.0, 1.5, np.random.default_rng(1))
    assert np.std(noisy - clipped) == pytest.approx(3.0, rel=0.03)
    assert np.array_equal(noisy, clip_and_noise(u, 2.0, 1.5, np.random.default_rng(1)))
    bad: list[tuple[np.ndarray, float, float]] = [
        (u, 0.0, 1.0),
        (u, 1.0, -1.0),
        (np.array([np.nan]), 1.0, 1.0),
    ]
    for vec, clip, z in bad:
        with pytest.raises(PrivacyInputError):
            clip_and_noise(vec, clip, z, rng)


def test_composition_is_memoised_and_the_memo_changes_no_value() -> None:
    """Hospitals with the same DP settings share a grouped history: computed once."""
    from fl import privacy

    history = [(1.1, 0.05, 40), (1.1, 0.05, 60)]
    privacy.clear_epsilon_cache()
    fresh = privacy.compute_composed_epsilon_micro(history, 1e-5)
    before = privacy._compute_settings_epsilon_micro.cache_info()
    # the same grouped history in another order and split: a hit, the same value
    again = privacy.compute_composed_epsilon_micro([(1.1, 0.05, 100)], 1e-5)
    after = privacy._compute_settings_epsilon_micro.cache_info()
    assert again == fresh and after.hits == before.hits + 1 and after.misses == before.misses
    privacy.clear_epsilon_cache()
    assert privacy.compute_composed_epsilon_micro(history[::-1], 1e-5) == fresh
