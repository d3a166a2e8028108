"""The demo round used by the learning tests: breast cancer, logistic (d = 31), 12 hospitals
(and a small MLP round for the coalition kernel).

Run as a script it prints the round's scores, loss and Shapley values as JSON, so a
test can compare a fresh subprocess (other ``NUMBA_NUM_THREADS``) with the golden values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fl.aggregation import aggregate
from fl.contribution import RoundUtility, compute_shapley_ppm
from fl.data import Standardizer, load_breast_cancer_data, partition_iid, split_train_test
from fl.models import ModelSpec, compute_param_count, init_params
from fl.quantize import QuantizedUpdates, quantize_matrix
from fl.scoring import compute_accuracy_ppm, compute_validation_loss_ppm, score_deltas
from fl.training import TrainConfig, compute_update, train_local

SCALE_EXP = 12
N_CLIENTS = 12


@dataclass(frozen=True)
class Round:
    spec: ModelSpec
    base: npt.NDArray[np.float64]
    deltas: QuantizedUpdates
    ids: list[int]
    weights: list[int]
    aggregate: npt.NDArray[np.float64]
    x_val: npt.NDArray[np.float64]
    y_val: npt.NDArray[np.generic]


def build_round(n_clients: int = N_CLIENTS, flip: tuple[int, ...] = ()) -> Round:
    """One round from a base model pre-trained on a small public slice; ``flip`` sign-flips."""
    ds = load_breast_cancer_data()
    rng = np.random.default_rng(7)
    train, val = split_train_test(ds, 0.2, rng)
    std = Standardizer.fit(train.x)
    x, y = std.apply(train.x), train.y
    x_val = np.ascontiguousarray(std.apply(val.x))
    spec = ModelSpec("logistic", x.shape[1], l2=1e-3)
    cfg = TrainConfig(epochs=1, learning_rate=0.05, batch_size=16, momentum=0.9, seed=1)
    base = train_local(spec, np.zeros(x.shape[1] + 1), x[:20], y[:20], cfg)
    parts = partition_iid(x.shape[0], n_clients, rng)
    rows = []
    for i, idx in enumerate(parts):
        u = compute_update(spec, base, x[idx], y[idx], TrainConfig(seed=100 + i, batch_size=16))
        rows.append(-10.0 * u if i in flip else u)
    q, _ = quantize_matrix(np.array(rows), SCALE_EXP)
    ids = list(range(n_clients))
    weights = [int(len(p)) for p in parts]
    agg = aggregate("median", q, ids, weights).aggregate
    return Round(spec, base, q, ids, weights, agg, x_val, val.y)


def build_mlp_round(n_clients: int = 6, hidden: int = 300) -> Round:
    """A small MLP round (seeded random deltas around a seeded base): the coalition kernel's case.

    ``hidden`` > 256 so the kernel's hidden-unit chunks matter; the validation rows are
    more than one of its row blocks (128).
    """
    ds = load_breast_cancer_data()
    rng = np.random.default_rng(11)
    std = Standardizer.fit(ds.x)
    x_val = np.ascontiguousarray(std.apply(ds.x[:150]))
    spec = ModelSpec("mlp", ds.x.shape[1], n_classes=2, hidden=hidden, l2=1e-4)
    base = init_params(spec, rng)
    rows = rng.normal(scale=0.02, size=(n_clients, compute_param_count(spec)))
    q, _ = quantize_matrix(rows, SCALE_EXP)
    ids = list(range(n_clients))
    weights = [int(w) for w in rng.integers(20, 60, size=n_clients)]
    agg = aggregate("median", q, ids, weights).aggregate
    return Round(spec, base, q, ids, weights, agg, x_val, ds.y[:150])


def compute_golden() -> dict[str, object]:
    r = build_round()
    scores = score_deltas(r.spec, r.base, r.deltas, r.ids, r.aggregate, r.x_val, r.y_val)
    utility = RoundUtility(r.spec, r.base, r.deltas, r.ids, r.weights, r.x_val, r.y_val)
    shapley = compute_shapley_ppm(utility, r.ids[:8], seed=0)
    return {
        "loss_base_ppm": compute_validation_loss_ppm(r.spec, r.base, r.x_val, r.y_val),
        "acc_base_ppm": compute_accuracy_ppm(r.spec, r.base, r.x_val, r.y_val),
        "scores": [[s.client_id, s.loss_after_ppm, s.agreement_ppm] for s in scores],
        "shapley8": [[k, v] for k, v in sorted(shapley.items())],
        "shapley_mlp": [[k, v] for k, v in sorted(compute_mlp_shapley().items())],
    }


def compute_mlp_shapley() -> dict[int, int]:
    r = build_mlp_round()
    utility = RoundUtility(r.spec, r.base, r.deltas, r.ids, r.weights, r.x_val, r.y_val)
    return compute_shapley_ppm(utility, r.ids, seed=0)


if __name__ == "__main__":
    print(json.dumps(compute_golden()))
