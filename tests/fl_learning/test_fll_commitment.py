"""Training commitments: honest transcripts verify, tampering is caught."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fl.commitment import (
    CommitmentInputError,
    compute_batch_log_hash,
    compute_checkpoint_hash,
    train_with_commitment,
    verify_segment,
)
from fl.models import ModelSpec
from fl.training import TrainConfig, train_local

SPEC = ModelSpec("logistic", 5, l2=1e-3)
CONFIG = TrainConfig(epochs=2, learning_rate=0.1, batch_size=8, momentum=0.9)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 5))
    y = (x[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(np.int64)
    return x, y


def test_honest_transcript_verifies_and_matches_train_local() -> None:
    x, y = _data()
    p0 = np.zeros(6)
    final, com, tr = train_with_commitment(
        SPEC, p0, x, y, CONFIG, seed=9, checkpoint_interval_steps=3
    )
    assert np.array_equal(final, train_local(SPEC, p0, x, y, replace(CONFIG, seed=9)))
    steps = 2 * 8  # 60 rows / 8 per batch = 8 steps per epoch
    assert len(tr.batches) == steps and len(com.checkpoint_hashes) == -(-steps // 3) + 1
    assert np.array_equal(tr.checkpoint_params[-1], final)
    for seg in range(len(com.checkpoint_hashes) - 1):
        assert verify_segment(SPEC, tr, x, y, CONFIG, seg, tolerance=0.0)
    with pytest.raises(CommitmentInputError):
        verify_segment(SPEC, tr, x, y, CONFIG, len(com.checkpoint_hashes) - 1, 0.0)


def test_tampering_is_detected() -> None:
    x, y = _data()
    _, com, tr = train_with_commitment(
        SPEC, np.zeros(6), x, y, CONFIG, seed=9, checkpoint_interval_steps=4
    )
    # a changed checkpoint no longer matches its committed hash
    bad_params = list(tr.checkpoint_params)
    bad_params[2] = bad_params[2] + 1e-3
    assert not verify_segment(
        SPEC, replace(tr, checkpoint_params=tuple(bad_params)), x, y, CONFIG, 1, 1e-9
    )
    # a forger who re-commits the changed checkpoint still fails re-execution
    forged_hashes = list(com.checkpoint_hashes)
    forged_hashes[2] = compute_checkpoint_hash(bad_params[2], tr.checkpoint_velocities[2])
    forged = replace(
        tr,
        checkpoint_params=tuple(bad_params),
        commitment=replace(com, checkpoint_hashes=tuple(forged_hashes)),
    )
    assert not verify_segment(SPEC, forged, x, y, CONFIG, 1, 1e-9)
    assert verify_segment(SPEC, forged, x, y, CONFIG, 0, 1e-9)  # untouched segment still fine
    # a changed batch log fails against the committed hash, and on re-execution if re-hashed
    batches = list(tr.batches)
    batches[5] = batches[5][::-1].copy() + 0
    batches[5][0] = (batches[5][0] + 1) % 60
    assert not verify_segment(SPEC, replace(tr, batches=tuple(batches)), x, y, CONFIG, 1, 1e-9)
    rehashed = replace(
        tr,
        batches=tuple(batches),
        commitment=replace(com, batch_log_hash=compute_batch_log_hash(tuple(batches))),
    )
    assert not verify_segment(SPEC, rehashed, x, y, CONFIG, 1, 1e-9)
    # different local data
    x2 = x.copy()
    x2[0, 0] += 1
    assert not verify_segment(SPEC, tr, x2, y, CONFIG, 0, 1e-9)


def test_invalid_arguments_rejected() -> None:
    x, y = _data()
    with pytest.raises(CommitmentInputError):
        train_with_commitment(SPEC, np.zeros(6), x, y, CONFIG, seed=1, checkpoint_interval_steps=0)
    with pytest.raises(CommitmentInputError):
        train_with_commitment(
            SPEC, np.zeros(6), x[:0], y[:0], CONFIG, seed=1, checkpoint_interval_steps=2
        )
    _, _, tr = train_with_commitment(
        SPEC, np.zeros(6), x, y, CONFIG, seed=1, checkpoint_interval_steps=2
    )
    with pytest.raises(CommitmentInputError):
        verify_segment(SPEC, tr, x, y, CONFIG, 0, float("nan"))
