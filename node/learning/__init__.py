"""Federated learning on chain: tasks, rounds, proof of learning, rewards, privacy, governance.

Importing this package registers the learning tx bodies with the codec, their
processors with the ledger, a genesis hook (tasks, members, round 0, model
version 0 from the genesis ``fl`` section) and an end-of-block hook that closes
rounds. Every node must import it before it builds its genesis state or applies
a block (``import node.learning``), or its state roots will differ.

The readers below take a :class:`node.ledger.State` (or its ``entries``) and
are what the HTTP API serves; the ``make_*_tx`` builders are what trainers and
validators call. See docs/learning.md for the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fl import scoring
from fl.quantize import QuantizedUpdates, QuantizedVector
from node.codec import Transaction, encode_tx, sign_tx
from node.keys import KeyPair
from node.learning import records as rec
from node.learning.records import (
    Attestation,
    AttestedScore,
    DeltaOutcome,
    GovernanceProposal,
    GovernanceVote,
    Institution,
    LineageEntry,
    ModelDelta,
    ModelVersion,
    PrivacyAccount,
    Proposal,
    RoundRecord,
    RoundSummary,
    TaskRecord,
    TrainingCommitmentRecord,
    make_attested_score,
)
from node.learning.setup import (
    LearningSetupError,
    build_validation_set,
    compute_model_hash,
    decode_params,
    get_genesis_learning_entries,
    get_model_spec,
    get_shared_dataset,
    get_validation_indices,
    load_validation_set,
    verify_learning_setup,
)
from node.learning.transition import (
    REPUTATION_INITIAL_PPM,
    process_attestation,
    process_governance_proposal,
    process_governance_vote,
    process_learning_block,
    process_model_delta,
)
from node.ledger import (
    State,
    register_block_hook,
    register_genesis_hook,
    register_tx_processor,
)

Entries = Mapping[bytes, bytes]

register_tx_processor(ModelDelta, process_model_delta)
register_tx_processor(Attestation, process_attestation)
register_tx_processor(GovernanceProposal, process_governance_proposal)
register_tx_processor(GovernanceVote, process_governance_vote)
register_genesis_hook("learning", get_genesis_learning_entries)
register_block_hook("learning", process_learning_block)


def _entries(state: State | Entries) -> Entries:
    return state.entries if isinstance(state, State) else state


# --- readers (what the API serves) ------------------------------------------------------


def get_members(state: State | Entries) -> tuple[Institution, ...]:
    value = _entries(state).get(rec.get_registry_key())
    return () if value is None else rec.decode_record(rec.Registry, value).members


def get_task_ids(state: State | Entries) -> tuple[int, ...]:
    value = _entries(state).get(rec.get_learning_meta_key())
    if value is None:
        return ()
    return tuple(range(rec.decode_record(rec.LearningMeta, value).task_count))


def get_task(state: State | Entries, task_id: int) -> TaskRecord | None:
    value = _entries(state).get(rec.get_task_key(task_id))
    return None if value is None else rec.decode_record(rec.TaskRecord, value)


def get_round(state: State | Entries, task_id: int) -> RoundRecord | None:
    """The task's open round (deltas and attesters so far)."""
    value = _entries(state).get(rec.get_round_key(task_id))
    return None if value is None else rec.decode_record(rec.RoundRecord, value)


def get_round_summary(
    state: State | Entries, task_id: int, round_number: int
) -> RoundSummary | None:
    """A closed round: each delta's outcome, scores, reward; the model it produced."""
    value = _entries(state).get(rec.get_round_summary_key(task_id, round_number))
    return None if value is None else rec.decode_record(rec.RoundSummary, value)


def get_model_version_latest(state: State | Entries, task_id: int) -> int | None:
    value = _entries(state).get(rec.get_model_latest_key(task_id))
    return None if value is None else rec.decode_u64(value)


def get_model(
    state: State | Entries, task_id: int, version: int | None = None
) -> ModelVersion | None:
    """A model version's record (hash, round, lineage); the latest when ``version`` is None."""
    if version is None:
        version = get_model_version_latest(state, task_id)
        if version is None:
            return None
    value = _entries(state).get(rec.get_model_key(task_id, version))
    return None if value is None else rec.decode_record(rec.ModelVersion, value)


def get_model_params(
    state: State | Entries, task_id: int, version: int | None = None
) -> npt.NDArray[np.float64] | None:
    """The float64 parameters (kept for the last few versions only; None when pruned)."""
    if version is None:
        version = get_model_version_latest(state, task_id)
        if version is None:
            return None
    value = _entries(state).get(rec.get_params_key(task_id, version))
    return None if value is None else decode_params(value)


def get_lineage(state: State | Entries, task_id: int, version: int) -> tuple[LineageEntry, ...]:
    model = get_model(state, task_id, version)
    return () if model is None else model.lineage


def get_reputation(state: State | Entries, public_key: bytes) -> int:
    value = _entries(state).get(rec.get_reputation_key(public_key))
    return REPUTATION_INITIAL_PPM if value is None else rec.decode_u64(value)


def get_privacy_account(state: State | Entries, task_id: int, public_key: bytes) -> PrivacyAccount:
    value = _entries(state).get(rec.get_privacy_key(task_id, public_key))
    return PrivacyAccount(0, ()) if value is None else rec.decode_record(PrivacyAccount, value)


def get_epsilon_spent(state: State | Entries, task_id: int, public_key: bytes) -> int:
    """Micro-epsilon the institution has spent on the task (composed over all its deltas)."""
    return get_privacy_account(state, task_id, public_key).spent_micro


def get_proposal(state: State | Entries, proposal_id: int) -> Proposal | None:
    value = _entries(state).get(rec.get_proposal_key(proposal_id))
    return None if value is None else rec.decode_record(Proposal, value)


# --- builders (trainers and validators) -----------------------------------------------


def _sign(key: KeyPair, chain_id: str, nonce: int, body: object) -> bytes:
    return encode_tx(sign_tx(key, chain_id, Transaction(key.public_key, nonce, body)))


def make_model_delta_tx(
    key: KeyPair,
    chain_id: str,
    task_id: int,
    round_number: int,
    base_hash: bytes,
    delta_q: QuantizedVector,
    *,
    nonce: int,
    sample_count: int,
    clip_norm: float,
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    commitment: TrainingCommitmentRecord,
) -> bytes:
    """A signed ModelDelta: ``delta_q`` at the task's scale, DP parameters as used in training."""
    body = ModelDelta(
        task_id=task_id,
        round=round_number,
        base_model_hash=base_hash,
        delta=np.ascontiguousarray(delta_q.values, dtype=np.int16),
        scale_exp=delta_q.scale_exp,
        sample_count=sample_count,
        clip_norm_micro=round(clip_norm * rec.PPM),
        noise_multiplier_micro=round(noise_multiplier * rec.PPM),
        sampling_rate_ppm=round(sampling_rate * rec.PPM),
        steps=steps,
        commitment=commitment,
    )
    return _sign(key, chain_id, nonce, body)


def make_commitment_record(commitment: object) -> TrainingCommitmentRecord:
    """The on-chain form of an ``fl.commitment.TrainingCommitment``."""
    return TrainingCommitmentRecord(
        checkpoint_interval_steps=int(getattr(commitment, "checkpoint_interval_steps")),  # noqa: B009
        checkpoint_hashes=tuple(getattr(commitment, "checkpoint_hashes")),  # noqa: B009
        batch_log_hash=bytes(getattr(commitment, "batch_log_hash")),  # noqa: B009
        data_hash=bytes(getattr(commitment, "data_hash")),  # noqa: B009
    )


def compute_attestation_scores(
    state: State | Entries,
    task_id: int,
    x_private: npt.NDArray[np.float64],
    y_private: npt.NDArray[np.generic],
) -> tuple[AttestedScore, ...]:
    """A validator's scores of the open round's deltas on its own private data.

    Agreement is measured against the plain mean of the round's deltas (the
    validator's view; the chain's own agreement score uses the robust rule).
    """
    task, current = get_task(state, task_id), get_round(state, task_id)
    if task is None or current is None or not current.delta_tx_hashes:
        return ()
    entries = _entries(state)
    pending = [
        rec.decode_record(rec.PendingDelta, entries[rec.get_pending_delta_key(task_id, h)])
        for h in current.delta_tx_hashes
    ]
    base = get_model_params(state, task_id, current.base_version)
    assert base is not None
    updates = QuantizedUpdates(np.stack([p.delta for p in pending]), task.config.scale_exp)
    ids = [p.member_id for p in pending]
    mean = np.ldexp(updates.values.astype(np.float64).mean(axis=0), -task.config.scale_exp)
    spec = get_model_spec(task.config)
    scores = scoring.score_deltas(spec, base, updates, ids, mean, x_private, y_private)
    return tuple(
        make_attested_score(p.tx_hash, s.improvement_ppm, s.agreement_ppm)
        for p, s in zip(pending, scores, strict=True)
    )


def make_attestation_tx(
    key: KeyPair,
    chain_id: str,
    task_id: int,
    round_number: int,
    scores: Sequence[AttestedScore],
    *,
    nonce: int,
) -> bytes:
    return _sign(key, chain_id, nonce, Attestation(task_id, round_number, tuple(scores)))


def make_proposal_tx(
    key: KeyPair, chain_id: str, proposal: GovernanceProposal, *, nonce: int
) -> bytes:
    return _sign(key, chain_id, nonce, proposal)


def make_vote_tx(
    key: KeyPair, chain_id: str, proposal_id: int, approve: bool, *, nonce: int
) -> bytes:
    return _sign(key, chain_id, nonce, GovernanceVote(proposal_id, approve))


__all__ = [
    "Attestation",
    "AttestedScore",
    "DeltaOutcome",
    "GovernanceProposal",
    "GovernanceVote",
    "Institution",
    "LearningSetupError",
    "LineageEntry",
    "ModelDelta",
    "ModelVersion",
    "PrivacyAccount",
    "Proposal",
    "RoundRecord",
    "RoundSummary",
    "TaskRecord",
    "TrainingCommitmentRecord",
    "build_validation_set",
    "compute_attestation_scores",
    "compute_model_hash",
    "get_epsilon_spent",
    "get_lineage",
    "get_members",
    "get_model",
    "get_model_params",
    "get_model_version_latest",
    "get_privacy_account",
    "get_proposal",
    "get_reputation",
    "get_round",
    "get_round_summary",
    "get_shared_dataset",
    "get_task",
    "get_task_ids",
    "get_validation_indices",
    "load_validation_set",
    "make_attestation_tx",
    "make_attested_score",
    "make_commitment_record",
    "make_model_delta_tx",
    "make_proposal_tx",
    "make_vote_tx",
    "verify_learning_setup",
]
