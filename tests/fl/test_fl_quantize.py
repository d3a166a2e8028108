"""Fixed-point encoding: round half to even, saturation reported, exact decoding, strict input."""

from __future__ import annotations

import numpy as np
import pytest

from fl.quantize import (
    QuantizationError,
    QuantizedUpdates,
    compute_scale_exp,
    dequantize,
    quantize,
    quantize_matrix,
    stack_updates,
)


def test_round_half_to_even() -> None:
    q = quantize([0.5, 1.5, 2.5, -0.5, -1.5, 0.49], 0)
    np.testing.assert_array_equal(q.values, [0, 2, 2, 0, -2, 0])


def test_saturation_is_reported_and_symmetric() -> None:
    q = quantize([1e9, -1e9, 1.0], 4)
    np.testing.assert_array_equal(q.values, [32767, -32767, 16])
    assert q.saturated_count == 2


def test_roundtrip_error_is_at_most_half_a_step() -> None:
    x = np.random.default_rng(0).normal(0, 1, 1000)
    q = quantize(x, 12)
    assert np.max(np.abs(dequantize(q.values, 12) - x)) <= 2.0**-13


@pytest.mark.parametrize("bad", [[np.nan], [np.inf, 1.0], [], [[1.0]]])
def test_bad_floats_are_rejected(bad: list) -> None:
    with pytest.raises(QuantizationError):
        quantize(bad, 3)


def test_scale_exponent_fits_max_without_saturation() -> None:
    for m in (1e-6, 0.3, 1.0, 7.99, 8.0, 1234.5):
        s = compute_scale_exp(m)
        assert m * 2.0**s <= 32767 < m * 2.0 ** (s + 1)
        assert quantize([m, -m], s).saturated_count == 0


def test_updates_validation() -> None:
    with pytest.raises(QuantizationError, match="int16"):
        QuantizedUpdates(np.zeros((2, 3), dtype=np.int32), 0)  # type: ignore[arg-type]
    with pytest.raises(QuantizationError, match="symmetric"):
        QuantizedUpdates(np.full((2, 3), -32768, dtype=np.int16), 0)
    with pytest.raises(QuantizationError, match="scale exponent"):
        QuantizedUpdates(np.zeros((2, 3), dtype=np.int16), 1000)
    with pytest.raises(QuantizationError, match="different scale"):
        stack_updates([quantize([1.0], 1), quantize([1.0], 2)])
    with pytest.raises(QuantizationError, match="different shapes"):
        stack_updates([quantize([1.0], 1), quantize([1.0, 2.0], 1)])
    u, sat = quantize_matrix([[1.0, 2.0], [3.0, 4.0]], 2)
    assert u.values.shape == (2, 2) and sat == 0
