"""Hospital-side learning: local data, the delta a hospital submits, its attestations.

A hospital (a member institution with role ``trainer`` or ``both``) holds a
CSV of its patients. :func:`load_hospital_data` parses it (``fl.data.parse_csv``),
standardises it and keeps a private validation slice for attestations.
:func:`compute_hospital_delta` trains on the rest from the current global
model (``fl.commitment.train_with_commitment``, so the training commitment
comes with it) by DP-SGD: per-example gradients clipped to the task's clip
norm, Gaussian noise at (at least) the task's noise multiplier on every step;
the delta declares (noise multiplier, sampling rate = batch / rows, steps),
which the chain's accountant composes per institution. The commitment covers
this noisy trajectory, so an audit replay needs the noise seed as well.

Standardisation: ``local`` fits the standardiser on the hospital's own rows
(nothing leaves the hospital); ``public`` uses the standardiser of the task's
public shared dataset (what the chain's validation set uses; every party
derives it from genesis). Under strong label skew a local fit shifts each
hospital's features differently, so the demo uses ``public``.

Attacks (``--attack``, test and demo only): ``sign_flip`` submits the negated,
boosted honest update; ``free_rider`` trains nothing and resubmits another
institution's delta of the current round read from a committed block (the chain
refuses it as ``copy``).

Test data: :func:`write_hospital_csvs` splits the bundled breast cancer data
(minus the chain's validation rows) into a held-out test CSV and one
label-skewed CSV per hospital (Dirichlet partition).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import node.learning as learning
from fl import scoring
from fl.commitment import (
    TrainingCommitment,
    compute_batch_log_hash,
    compute_checkpoint_hash,
    compute_data_hash,
)
from fl.data import (
    DataError,
    Dataset,
    Standardizer,
    load_breast_cancer_data,
    parse_csv,
    partition_label_skew,
    split_train_test,
)
from fl.models import ModelSpec, compute_loss_and_grad
from fl.quantize import QuantizedUpdates, QuantizedVector, quantize
from fl.training import derive_seed
from node.client import Client, ClientError
from node.codec import decode_block, decode_tx
from node.keys import KeyPair
from node.learning_api import load_model_npy

FloatArray = npt.NDArray[np.float64]
LABEL_COLUMN = "label"
CSV_SIZE_MAX_BYTES = 64 * 1024 * 1024
ATTACKS = ("none", "sign_flip", "free_rider")
SIGN_FLIP_BOOST = 3.0
PRIVATE_VALIDATION_FRACTION = 0.2
CHECKPOINT_INTERVAL_STEPS = 4
DELTAS_READ_MAX = 256
ZERO_HASH = bytes(32)


@dataclass(frozen=True)
class HospitalData:
    x_train: FloatArray
    y_train: npt.NDArray[np.int64]
    x_val: FloatArray  # private: what this hospital attests on
    y_val: npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 2
    learning_rate: float = 0.1
    batch_size: int = 16
    momentum: float = 0.0
    noise_multiplier: float = 0.0  # raised to the task's minimum


def read_csv_dataset(path: Path) -> Dataset:
    if path.stat().st_size > CSV_SIZE_MAX_BYTES:
        raise DataError(f"{path}: over {CSV_SIZE_MAX_BYTES} bytes")
    return parse_csv(path.read_text(), LABEL_COLUMN)


def get_public_standardizer(dataset_name: str) -> Standardizer:
    if dataset_name != "breast_cancer":
        raise DataError(f"no public standardiser for dataset {dataset_name!r}")
    return Standardizer.fit(load_breast_cancer_data().x)


def load_hospital_data(
    path: Path, standardize: str, dataset_name: str, seed: int
) -> HospitalData:
    """Parse and standardise a hospital's CSV; hold out a private validation slice."""
    dataset = read_csv_dataset(path)
    if standardize == "local":
        standardizer = Standardizer.fit(dataset.x)
    elif standardize == "public":
        standardizer = get_public_standardizer(dataset_name)
    else:
        raise DataError(f"standardize must be local or public, got {standardize!r}")
    x = np.ascontiguousarray(standardizer.apply(dataset.x), dtype=np.float64)
    y = np.asarray(dataset.y, dtype=np.int64)
    classes_ok = len(np.unique(y)) >= 2 and min(np.bincount(y)) >= 2
    if classes_ok and x.shape[0] >= 10:
        train, val = split_train_test(Dataset(x, y, dataset.feature_names, "classification",
                                              dataset.n_classes, None),
                                      PRIVATE_VALIDATION_FRACTION, np.random.default_rng(seed))
        return HospitalData(train.x, np.asarray(train.y, dtype=np.int64), val.x,
                            np.asarray(val.y, dtype=np.int64))
    return HospitalData(x, y, x, y)  # too small to split: attest on the training rows


@dataclass(frozen=True)
class TaskPolicy:
    """What a trainer needs of a task, read from ``GET /v1/fl/tasks`` (or a TaskRecord)."""

    task_id: int
    spec: ModelSpec
    scale_exp: int
    clip_norm: float
    noise_multiplier_min: float
    norm_max: float
    sample_count_max: int
    validation_dataset: str

    @staticmethod
    def from_json(task: dict[str, Any]) -> TaskPolicy:
        model = task["model"]
        spec = ModelSpec(kind=str(model["kind"]), n_features=int(model["n_features"]),
                         n_classes=int(model["n_classes"]), hidden=int(model["hidden"]))
        privacy = task["privacy"]
        return TaskPolicy(int(task["id"]), spec, int(task["scale_exp"]),
                          float(privacy["clip_norm"]), float(privacy["noise_multiplier_min"]),
                          float(task["norm_max"]), int(task.get("sample_count_max", 1_000_000)),
                          str(task["validation_set"]["dataset"]))


@dataclass(frozen=True)
class HospitalDelta:
    delta: FloatArray
    commitment: learning.TrainingCommitmentRecord
    noise_multiplier: float
    sampling_rate: float
    steps: int
    sample_count: int


def train_dp_sgd(
    spec: ModelSpec,
    base: FloatArray,
    x: FloatArray,
    y: npt.NDArray[np.int64],
    settings: TrainSettings,
    clip_norm: float,
    noise_multiplier: float,
    seed: int,
) -> tuple[FloatArray, TrainingCommitment, float, int]:
    """DP-SGD: per-example gradients clipped to ``clip_norm``, Gaussian noise per step.

    Returns the trained parameters, the training commitment (checkpoints of this
    trajectory, the batch log, the data hash), the sampling rate and the steps.
    Batches are shuffled fixed-size slices (the usual approximation of the
    Poisson sampling the accountant assumes).
    """
    m = x.shape[0]
    assert m > 0 and y.shape == (m,)
    batch_size = min(settings.batch_size, m)
    order_rng = np.random.default_rng(derive_seed(seed, 0))
    noise_rng = np.random.default_rng(derive_seed(seed, 1))
    w = base.astype(np.float64, copy=True)
    velocity = np.zeros_like(w)
    checkpoints = [compute_checkpoint_hash(w, velocity)]
    batches: list[npt.NDArray[np.int64]] = []
    steps_total = settings.epochs * (m // batch_size)
    for _ in range(settings.epochs):
        order = order_rng.permutation(m)
        for start in range(0, m - batch_size + 1, batch_size):
            batch = order[start : start + batch_size].astype(np.int64)
            total = np.zeros_like(w)
            for row in batch:  # per-example clipping bounds each record's influence
                _, grad = compute_loss_and_grad(spec, w, x[row : row + 1], y[row : row + 1])
                norm = float(np.sqrt(np.sum(grad * grad)))
                total += grad * min(1.0, clip_norm / norm) if norm > 0 else grad
            noise = noise_rng.normal(0.0, noise_multiplier * clip_norm, size=w.shape)
            velocity = settings.momentum * velocity + (total + noise) / batch_size
            w = w - settings.learning_rate * velocity
            batches.append(batch)
            if len(batches) % CHECKPOINT_INTERVAL_STEPS == 0 or len(batches) == steps_total:
                checkpoints.append(compute_checkpoint_hash(w, velocity))
    assert len(batches) == steps_total
    if not np.all(np.isfinite(w)):
        raise FloatingPointError("training diverged (non-finite parameters)")
    commitment = TrainingCommitment(CHECKPOINT_INTERVAL_STEPS, tuple(checkpoints),
                                    compute_batch_log_hash(tuple(batches)),
                                    compute_data_hash(x, y))
    return w, commitment, batch_size / m, steps_total


def compute_hospital_delta(
    base: FloatArray,
    data: HospitalData,
    policy: TaskPolicy,
    settings: TrainSettings,
    seed: int,
    attack: str = "none",
) -> HospitalDelta:
    """DP-SGD from ``base`` at the task's clip norm and (at least) its noise multiplier."""
    clip_norm = policy.clip_norm
    noise_multiplier = max(settings.noise_multiplier, policy.noise_multiplier_min)
    trained, commitment, sampling_rate, steps = train_dp_sgd(
        policy.spec, base, data.x_train, data.y_train, settings, clip_norm, noise_multiplier, seed
    )
    update = trained - base
    if attack == "sign_flip":  # the Byzantine hospital pushes the model the wrong way
        update = -SIGN_FLIP_BOOST * update
    # Stay a hair inside the chain's norm bound so fixed-point rounding cannot cross it.
    norm_max = policy.norm_max * 0.999
    norm = float(np.sqrt(np.sum(update * update)))
    if norm > norm_max:
        update = update * (norm_max / norm)
    return HospitalDelta(update, learning.make_commitment_record(commitment), noise_multiplier,
                         sampling_rate, steps, int(data.x_train.shape[0]))


def make_hospital_delta_tx(
    key: KeyPair,
    chain_id: str,
    policy: TaskPolicy,
    round_number: int,
    base_hash: bytes,
    result: HospitalDelta,
    nonce: int,
) -> bytes:
    q = quantize(result.delta, policy.scale_exp)
    return learning.make_model_delta_tx(
        key, chain_id, policy.task_id, round_number, base_hash, q, nonce=nonce,
        sample_count=min(result.sample_count, policy.sample_count_max),
        clip_norm=policy.clip_norm,
        noise_multiplier=result.noise_multiplier, sampling_rate=result.sampling_rate,
        steps=result.steps,
        commitment=result.commitment,
    )


# --- test data -----------------------------------------------------------------------


HOSPITAL_ROWS_MIN = 20


def write_hospital_csvs(
    directory: Path,
    hospitals: int,
    validation_seed: int,
    validation_size: int,
    seed: int = 2,
    alpha: float = 0.6,
    test_fraction: float = 0.25,
) -> tuple[list[Path], Path]:
    """``hospital-<i>.csv`` (label skew) and ``test.csv`` from the rows outside validation."""
    data = load_breast_cancer_data()
    held = set(learning.get_validation_indices("breast_cancer", validation_seed,
                                               validation_size).tolist())
    rest = np.array([i for i in range(data.x.shape[0]) if i not in held], dtype=np.int64)
    rng = np.random.default_rng(seed)
    pool, test = split_train_test(data.subset(rest), test_fraction, rng)
    # 20 rows each where the pool allows it; a big consortium (the pool is ~330 rows)
    # gets fewer, or no skewed draw would ever give every hospital 20 (testnet -n 10 failed).
    min_size = min(HOSPITAL_ROWS_MIN, pool.y.size // (3 * hospitals))
    parts = partition_label_skew(np.asarray(pool.y, dtype=np.int64), hospitals, alpha, rng,
                                 min_size=max(1, min_size))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts):
        path = directory / f"hospital-{i}.csv"
        _write_csv(path, pool.subset(part))
        paths.append(path)
    test_path = directory / "test.csv"
    _write_csv(test_path, test)
    return paths, test_path


def _write_csv(path: Path, dataset: Dataset) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*dataset.feature_names, LABEL_COLUMN])
        for row, label in zip(dataset.x, dataset.y, strict=True):
            writer.writerow([repr(float(v)) for v in row] + [int(label)])


# --- the hospital as an API client ----------------------------------------------------


@dataclass(frozen=True)
class RoundDelta:
    tx_hash: bytes
    sender: bytes
    member_id: int
    values: npt.NDArray[np.int16]


def get_round_deltas(client: Client, round_json: dict[str, Any],
                     members: dict[bytes, int]) -> list[RoundDelta]:
    """The open round's committed deltas, read back from their blocks through the API."""
    out = []
    for entry in round_json["deltas"][:DELTAS_READ_MAX]:
        tx_hash = bytes.fromhex(entry["tx_hash"])
        status = client.get_tx(tx_hash)
        if status.get("status") != "committed":
            continue
        block = decode_block(bytes.fromhex(client.get_block(int(status["height"]))["encoded"]),
                             check_txs=False)
        tx = decode_tx(block.txs[int(status["index"])])
        body = tx.body
        assert isinstance(body, learning.ModelDelta)
        out.append(RoundDelta(tx_hash, tx.sender, members[tx.sender],
                              np.asarray(body.delta, dtype=np.int16)))
    return out


def compute_scores(
    policy: TaskPolicy,
    base: FloatArray,
    deltas: list[RoundDelta],
    x_val: FloatArray,
    y_val: npt.NDArray[np.int64],
) -> tuple[learning.AttestedScore, ...]:
    """``node.learning.compute_attestation_scores`` from API reads instead of the state."""
    if not deltas:
        return ()
    ordered = sorted(deltas, key=lambda d: d.member_id)
    updates = QuantizedUpdates(np.stack([d.values for d in ordered]), policy.scale_exp)
    mean = np.ldexp(updates.values.astype(np.float64).mean(axis=0), -policy.scale_exp)
    scores = scoring.score_deltas(policy.spec, base, updates, [d.member_id for d in ordered],
                                  mean, x_val, y_val)
    return tuple(learning.make_attested_score(d.tx_hash, s.improvement_ppm, s.agreement_ppm)
                 for d, s in zip(ordered, scores, strict=True))


class HospitalAgent:
    """One institution driving one validator's API: submit deltas, attest, read results."""

    def __init__(
        self,
        client: Client,
        key: KeyPair,
        data: HospitalData | None,
        *,
        task_id: int = 0,
        settings: TrainSettings = TrainSettings(),
        attack: str = "none",
        seed: int = 0,
    ) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}")
        self.client = client
        self.key = key
        self.data = data
        self.task_id = task_id
        self.settings = settings
        self.attack = attack
        self.seed = seed
        self.chain_id = str(client.get_status()["chain_id"])

    def get_view(self) -> tuple[TaskPolicy, dict[str, Any], dict[bytes, int]]:
        """The task's policy, its open round and the member ids, from this node's API."""
        view = self.client.get_fl_tasks()
        tasks = [t for t in view["tasks"] if t["id"] == self.task_id]
        if not tasks:
            raise ClientError(404, "not_found", f"the chain has no learning task {self.task_id}")
        members = {bytes.fromhex(m["public_key"]): int(m["member_id"]) for m in view["members"]}
        return TaskPolicy.from_json(tasks[0]), tasks[0]["round"], members

    def get_model(self) -> tuple[FloatArray, bytes]:
        data, headers = self.client.get_fl_model(self.task_id)
        lowered = {k.lower(): v for k, v in headers.items()}
        return load_model_npy(data), bytes.fromhex(lowered["x-bcfl-model-hash"])

    def _next_nonce(self) -> int:
        return int(self.client.get_account(self.key.public_key)["nonce"])

    def submit_delta(self) -> dict[str, Any]:
        """Train on the current global model and submit a delta for the open round.

        Raises ClientError with the chain's reason (``privacy_budget``, ``copy``...).
        """
        policy, round_json, members = self.get_view()
        round_number = int(round_json["round"])
        base_hash = bytes.fromhex(round_json["base_model_hash"])
        if self.attack == "free_rider":
            others = [d for d in get_round_deltas(self.client, round_json, members)
                      if d.sender != self.key.public_key]
            if not others:
                raise ClientError(None, "nothing_to_copy", "no committed delta to copy yet")
            copied = QuantizedVector(others[0].values, policy.scale_exp, 0)
            tx = learning.make_model_delta_tx(
                self.key, self.chain_id, policy.task_id, round_number, base_hash, copied,
                nonce=self._next_nonce(), sample_count=100, clip_norm=policy.clip_norm,
                noise_multiplier=policy.noise_multiplier_min, sampling_rate=0.1, steps=10,
                commitment=learning.TrainingCommitmentRecord(1, (ZERO_HASH, ZERO_HASH),
                                                             ZERO_HASH, ZERO_HASH))
            return self.client.submit_tx(tx)
        assert self.data is not None, "a trainer needs data"
        base, model_hash = self.get_model()
        if model_hash != base_hash:  # the round moved on between the two reads
            raise ClientError(None, "stale_view", "the model changed; read the round again")
        seed = derive_seed(self.seed, round_number)
        result = compute_hospital_delta(base, self.data, policy, self.settings, seed, self.attack)
        tx = make_hospital_delta_tx(self.key, self.chain_id, policy, round_number, base_hash,
                                    result, self._next_nonce())
        return self.client.submit_tx(tx)

    def attest(self) -> dict[str, Any] | None:
        """Score the open round's committed deltas on private data and submit an Attestation."""
        assert self.data is not None, "an attester needs private validation data"
        policy, round_json, members = self.get_view()
        if self.key.public_key.hex() in round_json["attesters"]:
            return None
        base, model_hash = self.get_model()
        if model_hash.hex() != round_json["base_model_hash"]:
            return None
        deltas = get_round_deltas(self.client, round_json, members)
        if not deltas:
            return None
        scores = compute_scores(policy, base, deltas, self.data.x_val, self.data.y_val)
        tx = learning.make_attestation_tx(self.key, self.chain_id, policy.task_id,
                                          int(round_json["round"]), scores,
                                          nonce=self._next_nonce())
        return self.client.submit_tx(tx)
