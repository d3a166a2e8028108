"""Robustness evaluation: federated training on real data with f of n Byzantine hospitals.

``run_federated`` trains one global model for ``rounds`` rounds: every honest
hospital runs local SGD from the global model and quantises its delta; the
Byzantine hospitals submit what their attack says; the rule (optionally after
pre-aggregators, written ``"nnm+median"``) aggregates and the global model
moves by the aggregate.  ``run_robustness`` does that for every (attack, rule)
pair and returns a JSON-ready dict.  Pure: no clock, no disk; all randomness
from the config's seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from fl import attacks
from fl.aggregation import RULES, AggregationInputError, ParamValue, aggregate
from fl.data import (
    Dataset,
    Standardizer,
    load_breast_cancer_data,
    partition_label_skew,
    split_train_test,
)
from fl.models import FloatArray, ModelSpec, compute_accuracy, init_params
from fl.quantize import QuantizedVector, quantize, stack_updates
from fl.training import TrainConfig, derive_seed, train_local

ATTACKS = (
    "none",
    "sign_flip",
    "label_flip",
    "gaussian",
    "alie",
    "ipm",
    "mimic",
    "min_max",
    "model_replacement",
    "free_rider_zero",
    "free_rider_stale",
    "free_rider_copy",
)
DEFAULT_RULES = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
    "fltrust",
    "nnm+median",
    "clip+mean",
)
ROUNDS_MAX = 1000


@dataclass(frozen=True)
class RobustnessConfig:
    n_clients: int = 15
    n_byzantine: int = 3
    alpha: float = 1.0
    rounds: int = 30
    local: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=1, learning_rate=0.1, batch_size=16, momentum=0.9
        )
    )
    l2: float = 1e-3
    scale_exp: int = 12
    test_fraction: float = 0.2
    root_size: int = 20  # FLTrust's trusted root data set, taken from the training split
    sign_flip_scale: float = 10.0
    gaussian_sigma: float = 1.0
    ipm_eps: float = 0.5
    cclip_tau: float = 1.0
    clip_norm: float = 1.0
    seed: int = 0
    rules: tuple[str, ...] = DEFAULT_RULES
    attacks: tuple[str, ...] = ATTACKS

    def __post_init__(self) -> None:
        if not 0 <= self.n_byzantine < self.n_clients:
            raise ValueError("need 0 <= n_byzantine < n_clients")
        if not 1 <= self.rounds <= ROUNDS_MAX:
            raise ValueError(f"rounds must be in [1, {ROUNDS_MAX}]")
        for a in self.attacks:
            if a not in ATTACKS:
                raise ValueError(f"unknown attack {a!r}; one of {ATTACKS}")
        for r in self.rules:
            parse_rule(r)


@dataclass(frozen=True)
class Federation:
    """The data side of an evaluation: hospitals' shards, test split, root set, model."""

    spec: ModelSpec
    shards: tuple[Dataset, ...]
    test: Dataset
    root: Dataset
    byzantine: tuple[int, ...]


def parse_rule(name: str) -> tuple[str, tuple[str, ...]]:
    """``"nnm+clip+median"`` -> (``"median"``, (``"nnm"``, ``"clip"``))."""
    parts = name.split("+")
    rule, pre = parts[-1], tuple(parts[:-1])
    if rule not in RULES or any(p not in ("nnm", "clip") for p in pre):
        raise ValueError(f"unknown rule {name!r}")
    return rule, pre


def build_federation(config: RobustnessConfig, data: Dataset | None = None) -> Federation:
    """Breast cancer data (default), standardised on the training split, label-skewed shards."""
    rng = np.random.default_rng(derive_seed(config.seed, 1))
    ds = data if data is not None else load_breast_cancer_data()
    train, test = split_train_test(ds, config.test_fraction, rng)
    scaler = Standardizer.fit(train.x)
    train = Dataset(
        scaler.apply(train.x), train.y, train.feature_names, train.task, train.n_classes
    )
    test = Dataset(scaler.apply(test.x), test.y, test.feature_names, test.task, test.n_classes)
    order = rng.permutation(train.x.shape[0])
    root = train.subset(np.sort(order[: config.root_size]))
    rest = train.subset(np.sort(order[config.root_size :]))
    parts = partition_label_skew(rest.y.astype(np.int64), config.n_clients, config.alpha, rng, 4)
    byzantine = tuple(
        sorted(int(i) for i in rng.permutation(config.n_clients)[: config.n_byzantine])
    )
    kind = "logistic" if ds.n_classes == 2 else "softmax"
    spec = ModelSpec(kind, ds.x.shape[1], ds.n_classes, l2=config.l2)
    return Federation(spec, tuple(rest.subset(p) for p in parts), test, root, byzantine)


def _rule_params(rule: str, config: RobustnessConfig) -> dict[str, ParamValue]:
    f = config.n_byzantine
    if rule in ("trimmed_mean", "krum", "multi_krum", "bulyan"):
        return {"f": f}
    if rule == "centered_clipping":
        return {"tau": config.cclip_tau}
    return {}


def _pre_params(pre: str, config: RobustnessConfig) -> dict[str, ParamValue]:
    return {"f": config.n_byzantine} if pre == "nnm" else {"clip_norm": config.clip_norm}


def _local_config(config: RobustnessConfig, round_no: int, client: int) -> TrainConfig:
    c = config.local
    return TrainConfig(
        c.epochs,
        c.learning_rate,
        c.batch_size,
        c.momentum,
        derive_seed(config.seed, 2, round_no, client),
    )


def _byzantine_update(
    attack: str,
    fed: Federation,
    config: RobustnessConfig,
    params: FloatArray,
    honest: FloatArray,
    client: int,
    round_no: int,
    last_global: FloatArray | None,
    rng: np.random.Generator,
) -> FloatArray:
    shard = fed.shards[client]
    local = _local_config(config, round_no, client)
    n, f = config.n_clients, config.n_byzantine
    if attack == "sign_flip":
        own = train_local(fed.spec, params, shard.x, shard.y, local) - params
        return attacks.compute_sign_flip(own, config.sign_flip_scale)
    if attack == "label_flip":
        y = attacks.flip_labels(shard.y.astype(np.int64), fed.spec.n_classes)
        return train_local(fed.spec, params, shard.x, y, local) - params
    if attack == "gaussian":
        return attacks.compute_gaussian(params.size, config.gaussian_sigma, rng)
    if attack == "alie":
        return attacks.compute_alie(honest, n, f)
    if attack == "ipm":
        return attacks.compute_ipm(honest, config.ipm_eps)
    if attack == "mimic":
        return attacks.compute_mimic(honest, 0)
    if attack == "min_max":
        return attacks.compute_min_max(honest)
    if attack == "model_replacement":
        x = attacks.add_trigger(shard.x)
        y = np.full(shard.y.shape[0], 1, dtype=np.int64)
        xs = np.concatenate([shard.x, x])
        ys = np.concatenate([shard.y.astype(np.int64), y])
        delta = train_local(fed.spec, params, xs, ys, local) - params
        return attacks.compute_model_replacement(delta, n / max(1, f))
    if attack.startswith("free_rider_"):
        return attacks.compute_free_rider(
            attack.removeprefix("free_rider_"), params.size, last_global, rng
        )
    raise ValueError(f"unknown attack {attack!r}")


def compute_backdoor_success(spec: ModelSpec, params: FloatArray, test: Dataset) -> float:
    """Fraction of malignant (label 0) test cases the trigger turns into the target label 1."""
    mask = test.y == 0
    if not mask.any():
        return 0.0
    x = attacks.add_trigger(test.x[mask])
    return compute_accuracy(spec, params, x, np.ones(int(mask.sum()), dtype=np.int64))


def _server_reference(
    fed: Federation, config: RobustnessConfig, params: FloatArray, round_no: int
) -> FloatArray:
    local = _local_config(config, round_no, 10_000)
    return train_local(fed.spec, params, fed.root.x, fed.root.y, local) - params


def run_federated(
    fed: Federation, config: RobustnessConfig, rule_name: str, attack: str
) -> dict[str, float | int | str]:
    """Train ``config.rounds`` rounds under ``attack`` aggregated by ``rule_name``."""
    rule, pre = parse_rule(rule_name)
    rng = np.random.default_rng(derive_seed(config.seed, 3))
    params = init_params(fed.spec, rng)
    byz = set(fed.byzantine) if attack != "none" else set()
    ids = list(range(config.n_clients))
    weights = [int(s.x.shape[0]) for s in fed.shards]
    last_global: FloatArray | None = None
    saturated = 0
    for round_no in range(config.rounds):
        deltas: dict[int, FloatArray] = {}
        for c in ids:
            if c not in byz:
                shard = fed.shards[c]
                deltas[c] = (
                    train_local(
                        fed.spec, params, shard.x, shard.y, _local_config(config, round_no, c)
                    )
                    - params
                )
        honest = np.stack([deltas[c] for c in ids if c not in byz])
        for c in sorted(byz):
            deltas[c] = _byzantine_update(
                attack, fed, config, params, honest, c, round_no, last_global, rng
            )
        vectors = [quantize(deltas[c], config.scale_exp) for c in ids]
        saturated += sum(v.saturated_count for v in vectors)
        reference: QuantizedVector | None = None
        if rule == "fltrust":
            reference = quantize(_server_reference(fed, config, params, round_no), config.scale_exp)
        result = aggregate(
            rule,
            stack_updates(vectors),
            ids,
            weights,
            _rule_params(rule, config),
            reference,
            [(p, _pre_params(p, config)) for p in pre],
        )
        params = params + result.aggregate
        last_global = result.aggregate
    out: dict[str, float | int | str] = {
        "accuracy": compute_accuracy(fed.spec, params, fed.test.x, fed.test.y),
        "saturated_entries": saturated,
    }
    if attack == "model_replacement":
        out["backdoor_success"] = compute_backdoor_success(fed.spec, params, fed.test)
    return out


def run_centralised(fed: Federation, config: RobustnessConfig, epochs: int = 0) -> float:
    """The same model trained by SGD on the pooled hospital data: the accuracy to match."""
    x = np.concatenate([s.x for s in fed.shards])
    y = np.concatenate([s.y for s in fed.shards])
    c = config.local
    local = TrainConfig(
        epochs or config.rounds * c.epochs,
        c.learning_rate,
        c.batch_size,
        c.momentum,
        derive_seed(config.seed, 4),
    )
    params = train_local(fed.spec, init_params(fed.spec, np.random.default_rng(0)), x, y, local)
    return compute_accuracy(fed.spec, params, fed.test.x, fed.test.y)


def run_robustness(
    config: RobustnessConfig,
    rules: Sequence[str] | None = None,
    attack_list: Sequence[str] | None = None,
) -> dict[str, object]:
    """Accuracy of every rule under every attack; ``error`` where a rule rejects the setting."""
    fed = build_federation(config)
    table: dict[str, dict[str, Mapping[str, float | int | str]]] = {}
    for attack in attack_list or config.attacks:
        table[attack] = {}
        for rule in rules or config.rules:
            try:
                table[attack][rule] = run_federated(fed, config, rule, attack)
            except AggregationInputError as exc:
                table[attack][rule] = {"error": str(exc)}
    cfg = asdict(config)
    return {
        "config": cfg,
        "byzantine_clients": list(fed.byzantine),
        "shard_sizes": [int(s.x.shape[0]) for s in fed.shards],
        "centralised_accuracy": run_centralised(fed, config),
        "results": table,
    }
