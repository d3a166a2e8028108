"""What every node derives from genesis alone: model specs, initial weights, the validation set.

The shared validation set is a fixed seeded slice of a bundled public dataset
(for the demo: Wisconsin breast cancer), standardised with a standardiser fitted
on the whole public dataset, so every node rebuilds it bit for bit; genesis
holds its hash, and :func:`load_validation_set` refuses (LearningSetupError) a
set whose hash differs: a node whose numpy gives other bits must stop rather
than diverge. Initial weights come from ``numpy.random.default_rng(init_seed)``
(zeros for the linear models), and the model hash is SHA-256 over a domain tag
and the little-endian float64 parameters.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from fl.data import Standardizer, load_breast_cancer_data
from fl.models import ModelSpec, compute_param_count, init_params
from node.codec import decode_array, encode_array
from node.crypto import sha256
from node.genesis import Genesis, TaskConfig, get_learning_tasks
from node.learning import records as rec

FloatArray = npt.NDArray[np.float64]
MODEL_HASH_DOMAIN = b"bcfl/model/v1"
VALIDATION_HASH_DOMAIN = b"bcfl/validation-set/v1"
REPUTATION_INITIAL_PPM = 500_000  # fl.contribution.REPUTATION_INITIAL_PPM (checked in tests)


class LearningSetupError(RuntimeError):
    """This node cannot derive what genesis promises (e.g. the validation set hash differs)."""


def get_model_spec(config: TaskConfig) -> ModelSpec:
    return ModelSpec(
        kind=config.model_kind,
        n_features=config.n_features,
        n_classes=config.n_classes,
        hidden=config.hidden,
        l2=config.l2_micro / rec.PPM,
    )


def compute_model_hash(params: FloatArray) -> bytes:
    assert params.dtype == np.float64 and params.ndim == 1
    return sha256(MODEL_HASH_DOMAIN + params.astype("<f8").tobytes())


def get_initial_params(config: TaskConfig) -> FloatArray:
    spec = get_model_spec(config)
    params = init_params(spec, np.random.default_rng(config.init_seed))
    assert params.shape == (compute_param_count(spec),)
    return np.ascontiguousarray(params, dtype=np.float64)


@lru_cache(maxsize=4)
def get_shared_dataset(name: str) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """The whole public dataset, standardised on itself (read-only arrays)."""
    if name != "breast_cancer":
        raise LearningSetupError(f"unknown shared dataset {name!r}")
    data = load_breast_cancer_data()
    x = np.ascontiguousarray(Standardizer.fit(data.x).apply(data.x), dtype=np.float64)
    y = np.ascontiguousarray(data.y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def get_validation_indices(name: str, seed: int, size: int) -> npt.NDArray[np.int64]:
    x, _ = get_shared_dataset(name)
    if not 1 <= size <= x.shape[0]:
        raise LearningSetupError(f"validation size {size} not in [1, {x.shape[0]}]")
    return np.sort(np.random.default_rng(seed).permutation(x.shape[0])[:size]).astype(np.int64)


def compute_validation_set_hash(x: FloatArray, y: npt.NDArray[np.int64]) -> bytes:
    header = struct.pack("<II", x.shape[0], x.shape[1])
    return sha256(
        VALIDATION_HASH_DOMAIN + header + x.astype("<f8").tobytes() + y.astype("<i8").tobytes()
    )


@lru_cache(maxsize=16)
def build_validation_set(
    name: str, seed: int, size: int
) -> tuple[FloatArray, npt.NDArray[np.int64], bytes]:
    """``(x, y, hash)`` of the seeded slice (genesis writers put the hash in genesis)."""
    x_all, y_all = get_shared_dataset(name)
    idx = get_validation_indices(name, seed, size)
    x = np.ascontiguousarray(x_all[idx])
    y = np.ascontiguousarray(y_all[idx])
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y, compute_validation_set_hash(x, y)


def load_validation_set(config: TaskConfig) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    x, y, digest = build_validation_set(
        config.validation_dataset, config.validation_seed, config.validation_size
    )
    if digest != config.validation_hash:
        raise LearningSetupError(
            f"task {config.name}: the validation set this node rebuilds hashes to "
            f"{digest.hex()[:16]}, genesis says {config.validation_hash.hex()[:16]}"
        )
    if x.shape[1] != config.n_features:
        raise LearningSetupError(
            f"task {config.name}: validation set has {x.shape[1]} features, "
            f"model {config.n_features}"
        )
    return x, y


def verify_learning_setup(genesis: Genesis) -> None:
    """Call at startup: every task's validation set and model spec must be derivable here."""
    for config in get_learning_tasks(genesis):
        get_model_spec(config)
        load_validation_set(config)


def get_genesis_learning_entries(genesis: Genesis) -> Mapping[bytes, bytes]:
    """Height-0 learning state: members, tasks, round 0 of each task, model version 0."""
    tasks = get_learning_tasks(genesis)
    if not tasks:
        return {}
    verify_learning_setup(genesis)
    members = tuple(
        rec.Institution(m.public_key, m.name, m.role, index)
        for index, m in enumerate(genesis.members)
    )
    entries: dict[bytes, bytes] = {
        rec.get_registry_key(): rec.encode_record(rec.Registry(members, len(members))),
        rec.get_learning_meta_key(): rec.encode_record(
            rec.LearningMeta(len(tasks), tuple(v.public_key for v in genesis.validators))
        ),
        rec.get_governance_meta_key(): rec.encode_record(rec.GovernanceMeta(0, ())),
    }
    for config in tasks:
        params = get_initial_params(config)
        model_hash = compute_model_hash(params)
        entries[rec.get_task_key(config.task_id)] = rec.encode_record(rec.TaskRecord(config, ()))
        entries[rec.get_round_key(config.task_id)] = rec.encode_record(
            rec.RoundRecord(
                config.task_id, 0, 0, config.round_length_blocks, 0, model_hash, (), (), ()
            )
        )
        entries[rec.get_model_key(config.task_id, 0)] = rec.encode_record(
            rec.ModelVersion(config.task_id, 0, 0, 0, model_hash, rec.NO_KEY, config.rule, ())
        )
        entries[rec.get_model_latest_key(config.task_id)] = rec.encode_u64(0)
        entries[rec.get_params_key(config.task_id, 0)] = encode_params(params)
    return entries


def encode_params(params: FloatArray) -> bytes:
    return encode_array(np.ascontiguousarray(params, dtype=np.float64))


def decode_params(value: bytes) -> FloatArray:
    array = decode_array(value)
    assert array.dtype == np.float64 and array.ndim == 1
    return np.asarray(array, dtype=np.float64)
