"""Byzantine client behaviour, for evaluation and for the Byzantine hospitals of the testnet.

Model-poisoning attacks return the float update the attackers submit (before
quantisation, like an honest client); they may look at the honest updates of
the round (omniscient attacker, the standard worst case).  Data-poisoning
attacks change what the attacker trains on.  Every random choice takes a
``np.random.Generator``.

* ``compute_sign_flip``: ``-scale * own``;
* ``flip_labels``: label ``c -> k - 1 - c``;
* ``compute_gaussian``: ``N(0, sigma^2)`` noise;
* ``compute_alie``: "a little is enough" (Baruch et al. 2019), ``mean - z * std``
  with ``z = Phi^-1((n - s) / n)``, ``s = floor(n / 2 + 1) - f``;
* ``compute_ipm``: inner product manipulation (Xie et al. 2020), ``-eps * mean``;
* ``compute_mimic``: copy one honest client (Karimireddy et al. 2022);
* ``compute_min_max``: Shejwalkar & Houmansadr NDSS 2021, ``mean + gamma * p``
  with ``p = -std`` and the largest ``gamma`` whose maximum distance to any
  honest update stays within the largest honest pairwise distance;
* ``add_trigger`` + ``compute_model_replacement``: backdoor by scaled model
  replacement (Bagdasaryan et al. 2020): train on triggered data relabelled to
  the target, boost the delta by ``boost``;
* free riders: ``zero``, ``stale`` (last round's global delta) and ``copy``
  (last round's global delta plus small noise, Fraboni et al. 2021).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
MIN_MAX_STEPS = 30


def compute_sign_flip(own: FloatArray, scale: float = 1.0) -> FloatArray:
    return np.asarray(-scale * own)


def flip_labels(y: npt.NDArray[np.int64], n_classes: int) -> npt.NDArray[np.int64]:
    return np.asarray(n_classes - 1 - y, dtype=np.int64)


def compute_gaussian(dim: int, sigma: float, rng: np.random.Generator) -> FloatArray:
    return rng.normal(0.0, sigma, size=dim)


def compute_alie_z(n: int, f: int) -> float:
    s = n // 2 + 1 - f
    assert 0 < f < n
    return NormalDist().inv_cdf((n - s) / n)


def compute_alie(honest: FloatArray, n: int, f: int) -> FloatArray:
    return np.asarray(honest.mean(axis=0) - compute_alie_z(n, f) * honest.std(axis=0))


def compute_ipm(honest: FloatArray, eps: float = 0.5) -> FloatArray:
    return np.asarray(-eps * honest.mean(axis=0))


def compute_mimic(honest: FloatArray, target: int = 0) -> FloatArray:
    return honest[target].copy()


def compute_min_max(honest: FloatArray, gamma_init: float = 10.0) -> FloatArray:
    """Largest ``gamma`` (fixed-step bisection) with max_i |m - h_i| <= max_ij |h_i - h_j|."""
    mean = honest.mean(axis=0)
    direction = -honest.std(axis=0)
    sq = (honest * honest).sum(axis=1)
    pair = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * honest @ honest.T, 0.0))
    threshold = float(pair.max())

    def fits(gamma: float) -> bool:
        m = mean + gamma * direction
        return float(np.linalg.norm(honest - m, axis=1).max()) <= threshold

    gamma, step, best = gamma_init, gamma_init / 2.0, 0.0
    for _ in range(MIN_MAX_STEPS):
        if fits(gamma):
            best = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2.0
    return np.asarray(mean + best * direction)


def add_trigger(
    x: FloatArray, features: tuple[int, ...] = (0, 1, 2), value: float = 4.0
) -> FloatArray:
    """The backdoor trigger: set a few (standardised) features to an unusual value."""
    out = x.copy()
    out[:, list(features)] = value
    return out


def compute_model_replacement(backdoor_delta: FloatArray, boost: float) -> FloatArray:
    return np.asarray(boost * backdoor_delta)


def compute_free_rider(
    kind: str,
    dim: int,
    last_global_delta: FloatArray | None,
    rng: np.random.Generator,
    noise: float = 1e-3,
) -> FloatArray:
    """``zero``: nothing; ``stale``: last round's global delta; ``copy``: that plus noise."""
    previous = np.zeros(dim) if last_global_delta is None else last_global_delta
    if kind == "zero":
        return np.zeros(dim)
    if kind == "stale":
        return previous.copy()
    if kind == "copy":
        return np.asarray(previous + rng.normal(0.0, noise, size=dim))
    raise ValueError(f"unknown free-rider kind {kind!r}")
