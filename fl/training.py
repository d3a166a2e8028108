"""Local training: mini-batch SGD with (heavy-ball) momentum, deterministic from a seed.

``train_local`` shuffles with ``np.random.default_rng(config.seed)`` each epoch,
so the same data, start point and config give the same parameters on the same
machine.  ``compute_update`` returns ``trained - start``: the delta a hospital
quantises and submits.  ``derive_seed`` gives every (round, client) its own seed
from the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fl.models import FloatArray, ModelSpec, compute_loss_and_grad

EPOCHS_MAX = 1000
BATCH_SIZE_MAX = 1 << 20


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= EPOCHS_MAX:
            raise ValueError(f"epochs must be in [1, {EPOCHS_MAX}]")
        if not 1 <= self.batch_size <= BATCH_SIZE_MAX:
            raise ValueError(f"batch_size must be in [1, {BATCH_SIZE_MAX}]")
        if not (0 < self.learning_rate < 100 and np.isfinite(self.learning_rate)):
            raise ValueError("learning_rate must be finite and in (0, 100)")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")


def derive_seed(base_seed: int, *path: int) -> int:
    """A 63-bit seed for one (round, client, ...) from the run's seed."""
    return int(
        np.random.SeedSequence([base_seed, *path]).generate_state(2, dtype=np.uint64)[0] >> 1
    )


def train_local(
    spec: ModelSpec,
    params: FloatArray,
    x: FloatArray,
    y: npt.NDArray[np.generic],
    config: TrainConfig,
) -> FloatArray:
    """SGD with momentum from ``params`` over ``config.epochs`` shuffled passes of the data."""
    m = x.shape[0]
    if m == 0:
        return params.copy()
    rng = np.random.default_rng(config.seed)
    w = params.astype(np.float64, copy=True)
    velocity = np.zeros_like(w)
    for _ in range(config.epochs):
        order = rng.permutation(m)
        for start in range(0, m, config.batch_size):
            batch = order[start : start + config.batch_size]
            _, grad = compute_loss_and_grad(spec, w, x[batch], y[batch])
            velocity = config.momentum * velocity + grad
            w -= config.learning_rate * velocity
    if not np.all(np.isfinite(w)):
        raise FloatingPointError(
            "training diverged (non-finite parameters); lower the learning rate"
        )
    return w


def compute_update(
    spec: ModelSpec,
    params: FloatArray,
    x: FloatArray,
    y: npt.NDArray[np.generic],
    config: TrainConfig,
) -> FloatArray:
    """The model delta ``train_local(...) - params`` a client submits."""
    return train_local(spec, params, x, y, config) - params
