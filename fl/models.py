"""Models as flat float64 parameter vectors with loss and gradient, in plain NumPy.

A ``ModelSpec`` names the model; ``params`` is always one 1-D float64 vector
(what clients train, quantise and send).  Kinds:

* ``logistic``: binary logistic regression, ``d = n_features + 1``;
* ``softmax``: multinomial logistic regression, ``d = (n_features + 1) * n_classes``;
* ``linear``: least-squares linear regression, ``d = n_features + 1``;
* ``mlp``: one hidden ReLU layer of width ``hidden``; softmax output when
  ``n_classes >= 2``, one linear output (regression) when ``n_classes == 1``.
  ``d = (n_features + 1) * hidden + (hidden + 1) * n_classes``, so the width
  sets the size from about 100 to about 1,000,000 parameters.

Losses are means over the batch plus ``l2 / 2 * |params|^2``.  Training is
local to one machine, so NumPy matmul is fine here; only aggregation must be
bit-exact across validators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
MODEL_KINDS = ("logistic", "softmax", "linear", "mlp")
PARAMS_MAX = 4_000_000


class ModelSpecError(ValueError):
    """An invalid model description or a parameter vector of the wrong size."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    n_features: int
    n_classes: int = 2
    hidden: int = 0
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ModelSpecError(f"unknown model kind {self.kind!r}; one of {MODEL_KINDS}")
        if self.n_features < 1:
            raise ModelSpecError("n_features must be >= 1")
        if self.kind == "softmax" and self.n_classes < 2:
            raise ModelSpecError("softmax needs n_classes >= 2")
        if self.kind == "mlp" and (self.hidden < 1 or self.n_classes < 1):
            raise ModelSpecError("mlp needs hidden >= 1 and n_classes >= 1")
        if not (self.l2 >= 0 and np.isfinite(self.l2)):
            raise ModelSpecError("l2 must be finite and >= 0")
        if compute_param_count(self) > PARAMS_MAX:
            raise ModelSpecError(f"model has more than {PARAMS_MAX} parameters")

    @property
    def is_regression(self) -> bool:
        return self.kind == "linear" or (self.kind == "mlp" and self.n_classes == 1)


def compute_param_count(spec: ModelSpec) -> int:
    f = spec.n_features
    if spec.kind in ("logistic", "linear"):
        return f + 1
    if spec.kind == "softmax":
        return (f + 1) * spec.n_classes
    return (f + 1) * spec.hidden + (spec.hidden + 1) * spec.n_classes


def compute_mlp_width(n_features: int, n_classes: int, target_params: int) -> int:
    """The hidden width whose MLP has about ``target_params`` parameters (at least 1)."""
    per_unit = n_features + 1 + n_classes
    return max(1, round((target_params - n_classes) / per_unit))


def init_params(spec: ModelSpec, rng: np.random.Generator) -> FloatArray:
    """Zeros for the linear models; He-scaled normal weights and zero biases for the MLP."""
    if spec.kind != "mlp":
        return np.zeros(compute_param_count(spec))
    f, h, c = spec.n_features, spec.hidden, spec.n_classes
    w1 = rng.normal(0.0, np.sqrt(2.0 / f), size=(f, h))
    w2 = rng.normal(0.0, np.sqrt(1.0 / h), size=(h, c))
    return np.concatenate([w1.ravel(), np.zeros(h), w2.ravel(), np.zeros(c)])


def _check(spec: ModelSpec, params: FloatArray, x: FloatArray) -> None:
    if params.shape != (compute_param_count(spec),):
        raise ModelSpecError(
            f"params shape {params.shape}, model needs ({compute_param_count(spec)},)"
        )
    if x.ndim != 2 or x.shape[1] != spec.n_features:
        raise ModelSpecError(f"features shape {x.shape}, model needs (m, {spec.n_features})")


def _unpack_mlp(
    spec: ModelSpec, p: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    f, h, c = spec.n_features, spec.hidden, spec.n_classes
    a = f * h
    w1 = p[:a].reshape(f, h)
    b1 = p[a : a + h]
    w2 = p[a + h : a + h + h * c].reshape(h, c)
    b2 = p[a + h + h * c :]
    return w1, b1, w2, b2


def _softmax_loss_grad(logits: FloatArray, y: npt.NDArray[np.int64]) -> tuple[float, FloatArray]:
    m = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(log_z - shifted[np.arange(m), y]))
    probs = np.exp(shifted - log_z[:, None])
    probs[np.arange(m), y] -= 1.0
    return loss, probs / m


def compute_outputs(spec: ModelSpec, params: FloatArray, x: FloatArray) -> FloatArray:
    """Raw outputs: logits (classification, ``m x c`` or ``m`` for logistic) or predictions."""
    _check(spec, params, x)
    f = spec.n_features
    if spec.kind in ("logistic", "linear"):
        return np.asarray(x @ params[:f] + params[f])
    if spec.kind == "softmax":
        c = spec.n_classes
        return np.asarray(x @ params[: f * c].reshape(f, c) + params[f * c :])
    w1, b1, w2, b2 = _unpack_mlp(spec, params)
    out = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
    return np.asarray(out[:, 0] if spec.n_classes == 1 else out)


def compute_loss_and_grad(
    spec: ModelSpec, params: FloatArray, x: FloatArray, y: npt.NDArray[np.generic]
) -> tuple[float, FloatArray]:
    """Mean loss over the batch (+ L2) and its gradient with respect to ``params``."""
    _check(spec, params, x)
    m = x.shape[0]
    assert m > 0 and y.shape[0] == m
    f = spec.n_features
    grad = np.empty_like(params)
    if spec.kind == "logistic":
        z = x @ params[:f] + params[f]
        yf = y.astype(np.float64)
        loss = float(np.mean(np.logaddexp(0.0, z) - yf * z))
        r = (np.exp(-np.logaddexp(0.0, -z)) - yf) / m  # stable sigmoid
        grad[:f] = x.T @ r
        grad[f] = r.sum()
    elif spec.kind == "linear":
        r = x @ params[:f] + params[f] - y.astype(np.float64)
        loss = float(0.5 * np.mean(r * r))
        grad[:f] = x.T @ r / m
        grad[f] = r.sum() / m
    elif spec.kind == "softmax":
        c = spec.n_classes
        logits = x @ params[: f * c].reshape(f, c) + params[f * c :]
        loss, g = _softmax_loss_grad(logits, y.astype(np.int64))
        grad[: f * c] = (x.T @ g).ravel()
        grad[f * c :] = g.sum(axis=0)
    else:
        w1, b1, w2, b2 = _unpack_mlp(spec, params)
        pre = x @ w1 + b1
        hid = np.maximum(pre, 0.0)
        out = hid @ w2 + b2
        if spec.n_classes == 1:
            r = out[:, 0] - y.astype(np.float64)
            loss = float(0.5 * np.mean(r * r))
            g_out = (r / m)[:, None]
        else:
            loss, g_out = _softmax_loss_grad(out, y.astype(np.int64))
        g_hid = (g_out @ w2.T) * (pre > 0)
        h, c = spec.hidden, spec.n_classes
        a = f * h
        grad[:a] = (x.T @ g_hid).ravel()
        grad[a : a + h] = g_hid.sum(axis=0)
        grad[a + h : a + h + h * c] = (hid.T @ g_out).ravel()
        grad[a + h + h * c :] = g_out.sum(axis=0)
    if spec.l2 > 0:
        loss += 0.5 * spec.l2 * float(params @ params)
        grad += spec.l2 * params
    return loss, grad


def evaluate_loss(
    spec: ModelSpec, params: FloatArray, x: FloatArray, y: npt.NDArray[np.generic]
) -> float:
    return compute_loss_and_grad(spec, params, x, y)[0]


def predict(spec: ModelSpec, params: FloatArray, x: FloatArray) -> npt.NDArray[np.generic]:
    """Class labels (classification) or predicted values (regression)."""
    out = compute_outputs(spec, params, x)
    if spec.is_regression:
        return out
    if spec.kind == "logistic":
        return (out > 0).astype(np.int64)
    return np.asarray(np.argmax(out, axis=1), dtype=np.int64)


def compute_accuracy(
    spec: ModelSpec, params: FloatArray, x: FloatArray, y: npt.NDArray[np.generic]
) -> float:
    if spec.is_regression:
        raise ModelSpecError("accuracy is for classification models")
    return float(np.mean(predict(spec, params, x) == y))


def compute_r2(
    spec: ModelSpec, params: FloatArray, x: FloatArray, y: npt.NDArray[np.generic]
) -> float:
    """Coefficient of determination for regression models."""
    pred = predict(spec, params, x).astype(np.float64)
    yf = y.astype(np.float64)
    ss_res = float(((yf - pred) ** 2).sum())
    ss_tot = float(((yf - yf.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
