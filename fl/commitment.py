"""Training commitments for audits (proof-of-learning layer (d); Jia et al., IEEE S&P 2021).

While training, the trainer records a checkpoint every ``k`` SGD steps
(including the start and the end), the mini-batch indices of every step, and
the hash of its local data.  Only hashes go on chain (``TrainingCommitment``);
the full ``TrainingTranscript`` stays with the trainer.  An auditor who later
challenges segment ``i`` receives the transcript and the data, checks them
against the committed hashes, re-executes steps ``[i k, (i + 1) k)`` from
checkpoint ``i`` with the logged batches and compares the result with
checkpoint ``i + 1`` within a tolerance (training uses BLAS, so it is not
bit-exact across machines).

A checkpoint is the parameters AND the momentum buffer: with heavy-ball
momentum a segment cannot be re-executed from the weights alone.

What this is not: a proof of learning by itself.  Later work (Zhang et al.,
"Adversarial examples for proof-of-learning", IEEE S&P 2022; Fang et al.,
"Proof-of-learning is currently more broken than you think", EuroS&P 2023)
shows that a transcript can be spoofed for less than the cost of training,
and the tolerance leaves room for that.  The commitment binds the trainer to
one transcript and data set before the audit, so a challenged segment that
does not re-execute is evidence of cheating; it deters, it does not prove.

``train_with_commitment(..., seed=s)`` gives exactly the parameters of
``train_local(..., replace(config, seed=s))`` (the same random draws).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fl.models import FloatArray, ModelSpec, compute_loss_and_grad
from fl.training import TrainConfig

CHECKPOINT_TAG = b"bcfl/fl/checkpoint/v1\x00"
BATCH_LOG_TAG = b"bcfl/fl/batch-log/v1\x00"
DATA_TAG = b"bcfl/fl/local-data/v1\x00"
HASH_BYTES = 32
STEPS_MAX = 1_000_000
CHECKPOINTS_MAX = 10_000


class CommitmentInputError(ValueError):
    """Invalid training, transcript or audit arguments."""


@dataclass(frozen=True)
class TrainingCommitment:
    checkpoint_interval_steps: int  # k
    checkpoint_hashes: tuple[bytes, ...]  # every k steps, including start and end
    batch_log_hash: bytes  # over the batch index log
    data_hash: bytes  # of the local training data

    def __post_init__(self) -> None:
        if not 1 <= self.checkpoint_interval_steps <= STEPS_MAX:
            raise CommitmentInputError(f"checkpoint interval not in [1, {STEPS_MAX}]")
        if not 2 <= len(self.checkpoint_hashes) <= CHECKPOINTS_MAX:
            raise CommitmentInputError(f"need 2 to {CHECKPOINTS_MAX} checkpoint hashes")
        for h in (*self.checkpoint_hashes, self.batch_log_hash, self.data_hash):
            if not isinstance(h, bytes) or len(h) != HASH_BYTES:
                raise CommitmentInputError("every hash must be 32 bytes")


@dataclass(frozen=True)
class TrainingTranscript:
    """What the trainer keeps for audits: checkpoints (params, momentum) and batch indices."""

    commitment: TrainingCommitment
    checkpoint_params: tuple[FloatArray, ...]
    checkpoint_velocities: tuple[FloatArray, ...]
    batches: tuple[npt.NDArray[np.int64], ...]  # one index array per step


def compute_checkpoint_hash(params: FloatArray, velocity: FloatArray) -> bytes:
    """sha256(tag, d, params as float64 LE, momentum as float64 LE)."""
    assert params.shape == velocity.shape and params.ndim == 1
    h = hashlib.sha256(CHECKPOINT_TAG)
    h.update(int(params.shape[0]).to_bytes(8, "little"))
    h.update(np.ascontiguousarray(params, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(velocity, dtype="<f8").tobytes())
    return h.digest()


def compute_batch_log_hash(batches: tuple[npt.NDArray[np.int64], ...]) -> bytes:
    """sha256(tag, step count, then per step: its length and indices as int64 LE)."""
    h = hashlib.sha256(BATCH_LOG_TAG)
    h.update(len(batches).to_bytes(8, "little"))
    for batch in batches:
        h.update(int(batch.shape[0]).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(batch, dtype="<i8").tobytes())
    return h.digest()


def compute_data_hash(x: FloatArray, y: npt.NDArray[np.generic]) -> bytes:
    """sha256(tag, shape, features float64 LE row-major, labels float64 LE)."""
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise CommitmentInputError("data must be x (m, f) and y (m,)")
    h = hashlib.sha256(DATA_TAG)
    h.update(int(x.shape[0]).to_bytes(8, "little"))
    h.update(int(x.shape[1]).to_bytes(8, "little"))
    h.update(np.ascontiguousarray(x, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(y, dtype="<f8").tobytes())
    return h.digest()


def _step(
    spec: ModelSpec,
    w: FloatArray,
    velocity: FloatArray,
    x: FloatArray,
    y: npt.NDArray[np.generic],
    batch: npt.NDArray[np.int64],
    config: TrainConfig,
) -> tuple[FloatArray, FloatArray]:
    # the same arithmetic as fl.training.train_local, so both give identical bits
    _, grad = compute_loss_and_grad(spec, w, x[batch], y[batch])
    velocity = config.momentum * velocity + grad
    w = w - config.learning_rate * velocity
    return w, velocity


def train_with_commitment(
    spec: ModelSpec,
    params: FloatArray,
    x: FloatArray,
    y: npt.NDArray[np.generic],
    config: TrainConfig,
    seed: int,
    checkpoint_interval_steps: int,
) -> tuple[FloatArray, TrainingCommitment, TrainingTranscript]:
    """Train as ``train_local`` (batch order from ``seed``) and record the commitment."""
    m = x.shape[0]
    if m == 0:
        raise CommitmentInputError("no training data")
    if y.shape != (m,):
        raise CommitmentInputError("labels must have one entry per row")
    if not 1 <= checkpoint_interval_steps <= STEPS_MAX:
        raise CommitmentInputError(f"checkpoint interval not in [1, {STEPS_MAX}]")
    if seed < 0:
        raise CommitmentInputError("seed must be >= 0")
    steps_total = config.epochs * -(-m // config.batch_size)
    if steps_total > STEPS_MAX:
        raise CommitmentInputError(f"{steps_total} steps exceeds {STEPS_MAX}")
    if -(-steps_total // checkpoint_interval_steps) + 1 > CHECKPOINTS_MAX:
        raise CommitmentInputError("too many checkpoints: raise the interval")
    rng = np.random.default_rng(seed)
    w = params.astype(np.float64, copy=True)
    velocity = np.zeros_like(w)
    ck_params = [w.copy()]
    ck_vel = [velocity.copy()]
    batches: list[npt.NDArray[np.int64]] = []
    for _ in range(config.epochs):
        order = rng.permutation(m)
        for start in range(0, m, config.batch_size):
            batch = order[start : start + config.batch_size].astype(np.int64)
            w, velocity = _step(spec, w, velocity, x, y, batch, config)
            batches.append(batch)
            if len(batches) % checkpoint_interval_steps == 0 or len(batches) == steps_total:
                ck_params.append(w.copy())
                ck_vel.append(velocity.copy())
    assert len(batches) == steps_total
    if not np.all(np.isfinite(w)):
        raise FloatingPointError("training diverged (non-finite parameters)")
    batch_log = tuple(batches)
    commitment = TrainingCommitment(
        checkpoint_interval_steps=checkpoint_interval_steps,
        checkpoint_hashes=tuple(
            compute_checkpoint_hash(p, v) for p, v in zip(ck_params, ck_vel, strict=True)
        ),
        batch_log_hash=compute_batch_log_hash(batch_log),
        data_hash=compute_data_hash(x, y),
    )
    transcript = TrainingTranscript(commitment, tuple(ck_params), tuple(ck_vel), batch_log)
    return w, commitment, transcript


def verify_transcript_hashes(
    transcript: TrainingTranscript, x: FloatArray, y: npt.NDArray[np.generic]
) -> bool:
    """Do the transcript's checkpoints, batch log and the data match its commitment?"""
    c = transcript.commitment
    if not (
        len(transcript.checkpoint_params)
        == len(transcript.checkpoint_velocities)
        == len(c.checkpoint_hashes)
    ):
        return False
    k = c.checkpoint_interval_steps
    if len(c.checkpoint_hashes) != -(-len(transcript.batches) // k) + 1:
        return False
    if compute_batch_log_hash(transcript.batches) != c.batch_log_hash:
        return False
    if compute_data_hash(x, y) != c.data_hash:
        return False
    for p, v, h in zip(
        transcript.checkpoint_params,
        transcript.checkpoint_velocities,
        c.checkpoint_hashes,
        strict=True,
    ):
        if p.shape != v.shape or p.ndim != 1 or compute_checkpoint_hash(p, v) != h:
            return False
    return True


def verify_segment(
    spec: ModelSpec,
    transcript: TrainingTranscript,
    x: FloatArray,
    y: npt.NDArray[np.generic],
    config: TrainConfig,
    segment: int,
    tolerance: float,
) -> bool:
    """Re-execute segment ``segment`` and compare it with the next checkpoint.

    True iff every hash in the transcript matches its commitment and the
    re-executed parameters and momentum are within ``tolerance`` (max abs) of
    checkpoint ``segment + 1``.
    """
    segments = len(transcript.commitment.checkpoint_hashes) - 1
    if not 0 <= segment < segments:
        raise CommitmentInputError(f"segment {segment} not in [0, {segments})")
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise CommitmentInputError("tolerance must be finite and >= 0")
    if not verify_transcript_hashes(transcript, x, y):
        return False
    k = transcript.commitment.checkpoint_interval_steps
    m = x.shape[0]
    w = transcript.checkpoint_params[segment].astype(np.float64, copy=True)
    velocity = transcript.checkpoint_velocities[segment].astype(np.float64, copy=True)
    for batch in transcript.batches[segment * k : (segment + 1) * k]:
        if batch.ndim != 1 or batch.size == 0 or batch.min() < 0 or batch.max() >= m:
            return False
        w, velocity = _step(spec, w, velocity, x, y, batch, config)
    target_w = transcript.checkpoint_params[segment + 1]
    target_v = transcript.checkpoint_velocities[segment + 1]
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(velocity))):
        return False
    return bool(
        np.max(np.abs(w - target_w)) <= tolerance
        and np.max(np.abs(velocity - target_v)) <= tolerance
    )
