"""Models (gradients by finite differences, sizes), deterministic SGD, and federated training
on the breast cancer data reaching centralised accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from fl.models import (
    ModelSpec,
    ModelSpecError,
    compute_accuracy,
    compute_loss_and_grad,
    compute_mlp_width,
    compute_param_count,
    compute_r2,
    init_params,
)
from fl.robustness import RobustnessConfig, build_federation, run_centralised, run_federated
from fl.training import TrainConfig, compute_update, train_local

SPECS = [
    ModelSpec("logistic", 5, l2=0.01),
    ModelSpec("softmax", 5, 3, l2=0.01),
    ModelSpec("linear", 5),
    ModelSpec("mlp", 5, 3, hidden=4),
    ModelSpec("mlp", 5, 1, hidden=4),
]


def _data(spec: ModelSpec, m: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(m, spec.n_features))
    if spec.is_regression:
        return x, rng.normal(size=m)
    return x, rng.integers(0, max(2, spec.n_classes), size=m)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.n_classes}")
def test_gradient_matches_finite_differences(spec: ModelSpec) -> None:
    x, y = _data(spec)
    p = np.random.default_rng(2).normal(0, 0.3, compute_param_count(spec))
    _, grad = compute_loss_and_grad(spec, p, x, y)
    eps = 1e-6
    for k in range(0, p.size, max(1, p.size // 12)):
        e = np.zeros_like(p)
        e[k] = eps
        num = (
            compute_loss_and_grad(spec, p + e, x, y)[0]
            - compute_loss_and_grad(spec, p - e, x, y)[0]
        ) / (2 * eps)
        assert grad[k] == pytest.approx(num, rel=1e-4, abs=1e-7)


def test_mlp_width_sets_size_from_100_to_1e6() -> None:
    for target in (100, 10_000, 1_000_000):
        h = compute_mlp_width(30, 2, target)
        n = compute_param_count(ModelSpec("mlp", 30, 2, hidden=h))
        assert 0.9 * target <= n <= 1.1 * target


def test_bad_specs_rejected() -> None:
    with pytest.raises(ModelSpecError):
        ModelSpec("tree", 3)
    with pytest.raises(ModelSpecError):
        ModelSpec("mlp", 3, 2, hidden=0)
    with pytest.raises(ModelSpecError, match="params shape"):
        compute_loss_and_grad(ModelSpec("logistic", 3), np.zeros(3), np.zeros((2, 3)), np.zeros(2))


def test_training_is_deterministic_from_seed_and_learns() -> None:
    spec = ModelSpec("softmax", 5, 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = np.argmax(x[:, :3], axis=1)
    cfg = TrainConfig(epochs=5, learning_rate=0.1, batch_size=16, momentum=0.9, seed=3)
    a = train_local(spec, init_params(spec, rng), x, y, cfg)
    b = train_local(spec, init_params(spec, np.random.default_rng(5)), x, y, cfg)
    assert a.tobytes() == b.tobytes()  # zeros init for softmax, same seed
    assert compute_accuracy(spec, a, x, y) > 0.9
    c = train_local(spec, np.zeros_like(a), x, y, TrainConfig(5, 0.1, 16, 0.9, seed=4))
    assert c.tobytes() != a.tobytes()
    delta = compute_update(spec, np.zeros_like(a), x, y, cfg)
    np.testing.assert_array_equal(delta, a)


def test_linear_regression_on_diabetes_fits() -> None:
    from fl.data import Standardizer, load_diabetes_data

    ds = load_diabetes_data()
    x = Standardizer.fit(ds.x).apply(ds.x)
    y = (ds.y - ds.y.mean()) / ds.y.std()
    spec = ModelSpec("linear", x.shape[1])
    p = train_local(spec, np.zeros(11), x, y, TrainConfig(20, 0.01, 32, 0.9, 0))
    assert compute_r2(spec, p, x, y) > 0.45


def test_federated_breast_cancer_within_two_points_of_centralised() -> None:
    config = RobustnessConfig(rounds=30)
    fed = build_federation(config)
    central = run_centralised(fed, config)
    federated = run_federated(fed, config, "mean", "none")
    assert central > 0.93
    assert float(federated["accuracy"]) >= central - 0.02
