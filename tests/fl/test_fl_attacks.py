"""Attacks do what their papers say."""

from __future__ import annotations

import numpy as np
import pytest

from fl import attacks


def test_alie_z_matches_paper_formula() -> None:
    # n = 50, f = 12: s = 26 - 12 = 14, z = Phi^-1(36/50) ~ 0.583
    assert attacks.compute_alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)


def test_alie_stays_within_a_std_of_mean() -> None:
    h = np.random.default_rng(0).normal(size=(12, 40))
    a = attacks.compute_alie(h, 15, 3)
    assert np.all(np.abs(a - h.mean(axis=0)) <= h.std(axis=0) + 1e-12)


def test_min_max_respects_its_distance_constraint_and_pushes_away() -> None:
    h = np.random.default_rng(1).normal(size=(10, 30))
    m = attacks.compute_min_max(h)
    pair = max(np.linalg.norm(a - b) for a in h for b in h)
    assert np.linalg.norm(h - m, axis=1).max() <= pair + 1e-9
    assert np.linalg.norm(m - h.mean(axis=0)) > 0.1


def test_simple_attacks() -> None:
    h = np.ones((4, 3))
    np.testing.assert_array_equal(attacks.compute_sign_flip(h[0], 2.0), [-2.0, -2.0, -2.0])
    np.testing.assert_array_equal(attacks.compute_ipm(h, 0.5), [-0.5] * 3)
    np.testing.assert_array_equal(attacks.flip_labels(np.array([0, 1, 2]), 3), [2, 1, 0])
    np.testing.assert_array_equal(attacks.compute_mimic(h, 1), h[1])
    assert attacks.add_trigger(np.zeros((2, 5)))[:, :3].min() == 4.0
    rng = np.random.default_rng(0)
    assert not attacks.compute_free_rider("zero", 3, np.ones(3), rng).any()
    np.testing.assert_array_equal(
        attacks.compute_free_rider("stale", 3, np.ones(3), rng), np.ones(3)
    )
    with pytest.raises(ValueError):
        attacks.compute_free_rider("other", 3, None, rng)
