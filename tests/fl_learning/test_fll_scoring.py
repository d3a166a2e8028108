"""Proof-of-learning scores: agreement with the float64 NumPy reference, golden values across
thread counts and processes, harmful deltas scored negative, exact norms and digests."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl.models import ModelSpec, compute_accuracy, compute_param_count, evaluate_loss
from fl.quantize import QuantizedUpdates, QuantizedVector, quantize
from fl.scoring import (
    LOSS_PPM_MAX,
    ScoringInputError,
    compute_accuracy_ppm,
    compute_update_norm_ppm,
    compute_validation_loss_ppm,
    get_update_digest,
    is_zero_update,
    score_deltas,
)

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parent / "fll_cases.py"
GOLDEN = {
    "loss_base_ppm": 449315,
    "acc_base_ppm": 920354,
    "scores": [
        [0, 257528, 778681],
        [1, 265368, 929987],
        [2, 252209, 960610],
        [3, 237698, 961399],
        [4, 250593, 985371],
        [5, 256843, 941483],
        [6, 243753, 972103],
        [7, 274058, 933694],
        [8, 238147, 924993],
        [9, 236978, 963018],
        [10, 251958, 950939],
        [11, 245633, 975044],
    ],
    "shapley8": [
        [0, 26565],
        [1, 20705],
        [2, 25176],
        [3, 30834],
        [4, 25675],
        [5, 23374],
        [6, 28449],
        [7, 17563],
    ],
    # MLP through fl.coalition_kernels (equal to the direct FedAvg evaluation on this case)
    "shapley_mlp": [[0, 7183], [1, 3537], [2, -45836], [3, 39219], [4, -1430], [5, -1619]],
}


def _load_cases():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fll_cases", CASES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fll_cases", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cases = _load_cases()

SPECS = [
    ModelSpec("logistic", 6, l2=1e-3),
    ModelSpec("linear", 6),
    ModelSpec("softmax", 6, n_classes=4, l2=0.01),
    ModelSpec("mlp", 6, n_classes=3, hidden=5),
    ModelSpec("mlp", 6, n_classes=1, hidden=4, l2=1e-4),
]


def _labels(spec: ModelSpec, m: int, rng: np.random.Generator) -> np.ndarray:
    if spec.is_regression:
        return rng.normal(size=m)
    classes = 2 if spec.kind == "logistic" else spec.n_classes
    return rng.integers(0, classes, size=m)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.n_classes}")
def test_loss_and_accuracy_match_numpy_reference(spec: ModelSpec) -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.normal(size=(57, spec.n_features))
        y = _labels(spec, 57, rng)
        p = rng.normal(size=compute_param_count(spec))
        ref = evaluate_loss(spec, p, x, y) * 1e6
        # both round the same real number; only float summation order differs
        assert abs(compute_validation_loss_ppm(spec, p, x, y) - ref) <= 0.5 + 1e-9 * abs(ref)
        if not spec.is_regression:
            acc = compute_accuracy(spec, p, x, y)
            assert compute_accuracy_ppm(spec, p, x, y) == round(acc * 1e6)


def test_scores_match_reference_and_sign() -> None:
    r = cases.build_round()
    scores = score_deltas(r.spec, r.base, r.deltas, r.ids, r.aggregate, r.x_val, r.y_val)
    before = evaluate_loss(r.spec, r.base, r.x_val, r.y_val)
    for s, row in zip(scores, r.deltas.values, strict=True):
        delta = np.ldexp(row.astype(np.float64), -r.deltas.scale_exp)
        after = evaluate_loss(r.spec, r.base + delta, r.x_val, r.y_val)
        cos = delta @ r.aggregate / (np.linalg.norm(delta) * np.linalg.norm(r.aggregate))
        assert abs(s.loss_before_ppm - before * 1e6) <= 0.5 + 1e-9
        assert abs(s.loss_after_ppm - after * 1e6) <= 0.5 + 1e-9
        assert s.improvement_ppm == s.loss_before_ppm - s.loss_after_ppm
        assert abs(s.agreement_ppm - cos * 1e6) <= 0.5 + 1e-6
        assert s.improvement_ppm > 0 and s.agreement_ppm > 0  # honest clients help


def test_sign_flipped_delta_scores_negative() -> None:
    r = cases.build_round(flip=(3, 8))
    scores = {
        s.client_id: s
        for s in score_deltas(r.spec, r.base, r.deltas, r.ids, r.aggregate, r.x_val, r.y_val)
    }
    for cid, s in scores.items():
        if cid in (3, 8):
            assert s.improvement_ppm < 0 and s.agreement_ppm < 0
        else:
            assert s.improvement_ppm > 0 and s.agreement_ppm > 0


def test_golden_in_process() -> None:
    assert cases.compute_golden() == GOLDEN


@pytest.mark.parametrize("threads", ["1", "2"])
def test_golden_in_fresh_subprocess(threads: str) -> None:
    env = dict(os.environ, NUMBA_NUM_THREADS=threads, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(CASES)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(out.stdout) == GOLDEN


def test_wild_delta_saturates_instead_of_crashing() -> None:
    spec = ModelSpec("linear", 3)
    x = np.ones((4, 3))
    y = np.zeros(4)
    p = np.full(4, 1e300)
    assert compute_validation_loss_ppm(spec, p, x, y) == LOSS_PPM_MAX


def test_invalid_inputs_rejected() -> None:
    spec = ModelSpec("logistic", 3)
    x = np.zeros((4, 3))
    y = np.array([0, 1, 0, 1])
    p = np.zeros(4)
    with pytest.raises(ScoringInputError):
        compute_validation_loss_ppm(spec, p, np.full((4, 3), np.nan), y)
    with pytest.raises(ScoringInputError):
        compute_validation_loss_ppm(spec, p, x, np.array([0, 1, 2, 1]))
    with pytest.raises(ScoringInputError):
        compute_validation_loss_ppm(spec, np.zeros(5), x, y)
    with pytest.raises(ScoringInputError):
        compute_validation_loss_ppm(spec, np.array([0.0, np.inf, 0, 0]), x, y)
    with pytest.raises(ScoringInputError):
        compute_validation_loss_ppm(spec, p, np.zeros((0, 3)), y[:0])
    q = QuantizedUpdates(np.zeros((2, 4), dtype=np.int16), 10)
    with pytest.raises(ScoringInputError):
        score_deltas(spec, p, q, [1, 1], np.zeros(4), x, y)
    with pytest.raises(ScoringInputError):
        score_deltas(spec, p, q, [1, 2], np.zeros(3), x, y)
    with pytest.raises(ScoringInputError):
        score_deltas(spec, p, q, [1, 2], np.array([0, 0, np.nan, 0]), x, y)


def test_zero_delta_has_zero_improvement_and_agreement() -> None:
    r = cases.build_round()
    q = QuantizedUpdates(np.zeros((1, r.base.size), dtype=np.int16), 12)
    (s,) = score_deltas(r.spec, r.base, q, [5], r.aggregate, r.x_val, r.y_val)
    assert s.improvement_ppm == 0 and s.agreement_ppm == 0


def test_update_norm_is_exact() -> None:
    rng = np.random.default_rng(0)
    for s in (-3, 0, 5, 12, 30):
        v = rng.integers(-32767, 32768, size=1000).astype(np.int16)
        qv = QuantizedVector(v, s, 0)
        ref = np.sqrt(float(np.sum(v.astype(np.int64) ** 2))) * 2.0**-s * 1e6
        assert abs(compute_update_norm_ppm(qv) - ref) <= 0.5 + 1e-12 * ref
    # 3-4-5 triangle at scale 2**-1: norm 2.5 exactly
    assert compute_update_norm_ppm(QuantizedVector(np.array([3, 4], np.int16), 1, 0)) == 2_500_000


def test_digest_detects_copies_and_zero_updates() -> None:
    a = quantize(np.array([0.5, -0.25, 0.125]), 12)
    b = quantize(np.array([0.5, -0.25, 0.125]), 12)
    c = quantize(np.array([0.5, -0.25, 0.126]), 12)
    d = QuantizedVector(a.values, 11, 0)
    assert get_update_digest(a) == get_update_digest(b)
    assert len({get_update_digest(a), get_update_digest(c), get_update_digest(d)}) == 3
    assert not is_zero_update(a)
    assert is_zero_update(quantize(np.zeros(3), 12))


def _mlp_loss_one_row_at_a_time(
    x: np.ndarray, y: np.ndarray, p: np.ndarray, f: int, h: int, c: int
) -> float:
    """The sum order the chain defines, written as the plain per-row loop (pure Python)."""
    total = 0.0
    for i in range(x.shape[0]):
        hid = []
        for j in range(h):
            acc = 0.0
            for k in range(f):
                acc += float(x[i, k]) * float(p[k * h + j])
            acc += float(p[f * h + j])
            hid.append(acc if acc > 0.0 else 0.0)
        out = []
        for l_out in range(c):
            acc = 0.0
            for j in range(h):
                acc += hid[j] * float(p[f * h + h + j * c + l_out])
            out.append(acc + float(p[f * h + h + h * c + l_out]))
        if c == 1:
            r = out[0] - float(y[i])
            total += 0.5 * (r * r)
        else:
            mx = max(out)
            s = 0.0
            for v in out:
                s += math.exp(v - mx)
            total += math.log(s) + mx - out[int(y[i])]
    return total / x.shape[0]


@pytest.mark.parametrize(("h", "c", "m"), [(300, 3, 7), (257, 1, 5), (3, 2, 9)])
def test_blocked_mlp_kernel_keeps_the_sequential_bits(h: int, c: int, m: int) -> None:
    """Chunks of hidden units and blocks of 4 rows (the fast kernel) change no bit."""
    from fl import eval_kernels

    rng = np.random.default_rng(h)
    f = 6
    spec = ModelSpec("mlp", f, n_classes=c, hidden=h)
    x = rng.normal(size=(m, f))
    y = rng.normal(size=m) if c == 1 else rng.integers(0, c, size=m).astype(np.float64)
    p = rng.normal(size=compute_param_count(spec)) * 0.3
    got = eval_kernels.compute_mean_loss(
        eval_kernels.KIND_MLP, x, y, p, f, h, c, spec.is_regression, 0.0
    )
    assert got == _mlp_loss_one_row_at_a_time(x, y, p, f, h, c)
