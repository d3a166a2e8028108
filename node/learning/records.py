"""The learning txs and state records: frozen dataclasses in the codec's canonical encoding.

Tx bodies are registered with :func:`node.codec.register_tx_body`. State
records are encoded as ``RECORD_VERSION || fields`` with the same generic
field plans, so a record has one encoding and its decoder is strict. The codec
has no signed integers; scores that may be negative travel with a bias of
``2**63`` (``*_biased`` fields, read through the ``*_ppm`` properties).

Every state key is built here (areas documented in ``node/schema.py``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, ClassVar, TypeVar

import numpy as np

from node import schema
from node.codec import (
    DEFAULT_LIMITS,
    DecodeError,
    Hash32,
    MaxCount,
    MaxSize,
    Reader,
    Uint,
    get_plan,
    register_tx_body,
)
from node.genesis import FL_DELTAS_PER_ROUND_MAX, MEMBERS_MAX, TaskConfig

SIGNED_BIAS = 1 << 63
PPM = 1_000_000
RECORD_VERSION = 1
CHECKPOINTS_MAX = 4096
PENDING_CHANGES_MAX = 16
PRIVACY_HISTORY_MAX = 4096
PROPOSALS_OPEN_MAX = 64
NAME_SIZE_MAX_BYTES = 64
REASON_SIZE_MAX_BYTES = 32
RULE_SIZE_MAX_BYTES = 32
RULE_PARAMS_SIZE_MAX_BYTES = 256

_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")


def to_biased(value: int) -> int:
    assert -SIGNED_BIAS <= value < SIGNED_BIAS, f"{value} does not fit a biased u64"
    return value + SIGNED_BIAS


def from_biased(value: int) -> int:
    return value - SIGNED_BIAS


# --- transaction bodies ------------------------------------------------------------


@dataclass(frozen=True)
class TrainingCommitmentRecord:
    """Proof-of-learning layer (d): what an auditor re-runs segments against (fl.commitment)."""

    checkpoint_interval_steps: int
    checkpoint_hashes: Annotated[tuple[Hash32, ...], MaxCount(CHECKPOINTS_MAX)]
    batch_log_hash: Hash32
    data_hash: Hash32


@register_tx_body
@dataclass(frozen=True, eq=False)
class ModelDelta:
    """A trainer's fixed-point delta ``delta * 2**-scale_exp`` on the round's base model.

    DP parameters are fixed point: ``clip_norm_micro`` and ``noise_multiplier_micro``
    are x 1e6, ``sampling_rate_ppm`` is parts per million.
    """

    TX_KIND: ClassVar[int] = 0x10

    task_id: Annotated[int, Uint(32)]
    round: int
    base_model_hash: Hash32
    delta: np.ndarray[Any, Any]
    scale_exp: Annotated[int, Uint(8)]
    sample_count: int
    clip_norm_micro: int
    noise_multiplier_micro: int
    sampling_rate_ppm: Annotated[int, Uint(32)]
    steps: int
    commitment: TrainingCommitmentRecord


@dataclass(frozen=True)
class AttestedScore:
    """A validator's scores of one delta on its private validation data."""

    delta_tx_hash: Hash32
    improvement_biased: int
    agreement_biased: int

    @property
    def improvement_ppm(self) -> int:
        return from_biased(self.improvement_biased)

    @property
    def agreement_ppm(self) -> int:
        return from_biased(self.agreement_biased)


def make_attested_score(
    delta_tx_hash: bytes, improvement_ppm: int, agreement_ppm: int
) -> AttestedScore:
    return AttestedScore(delta_tx_hash, to_biased(improvement_ppm), to_biased(agreement_ppm))


@register_tx_body
@dataclass(frozen=True)
class Attestation:
    """Proof-of-learning layer (c): one validator's scores of a round's deltas."""

    TX_KIND: ClassVar[int] = 0x11

    task_id: Annotated[int, Uint(32)]
    round: int
    scores: Annotated[tuple[AttestedScore, ...], MaxCount(FL_DELTAS_PER_ROUND_MAX)]


ACTION_ADD_INSTITUTION = "add_institution"
ACTION_REMOVE_INSTITUTION = "remove_institution"
ACTION_SET_RULE = "set_rule"
ACTION_SET_REWARD_POOL = "set_reward_pool"
ACTION_SET_EPSILON_BUDGET = "set_epsilon_budget"
ACTIONS = (
    ACTION_ADD_INSTITUTION,
    ACTION_REMOVE_INSTITUTION,
    ACTION_SET_RULE,
    ACTION_SET_REWARD_POOL,
    ACTION_SET_EPSILON_BUDGET,
)
NO_KEY = b"\x00" * 32


@register_tx_body
@dataclass(frozen=True)
class GovernanceProposal:
    """A proposal; fields an action does not use are left at their defaults."""

    TX_KIND: ClassVar[int] = 0x12

    action: Annotated[str, MaxSize(32)]
    task_id: Annotated[int, Uint(32)] = 0
    institution_key: Hash32 = NO_KEY
    institution_name: Annotated[str, MaxSize(NAME_SIZE_MAX_BYTES)] = ""
    institution_role: Annotated[str, MaxSize(16)] = ""
    rule: Annotated[str, MaxSize(RULE_SIZE_MAX_BYTES)] = ""
    rule_params_json: Annotated[str, MaxSize(RULE_PARAMS_SIZE_MAX_BYTES)] = ""
    amount: int = 0


@register_tx_body
@dataclass(frozen=True)
class GovernanceVote:
    TX_KIND: ClassVar[int] = 0x13

    proposal_id: int
    approve: bool


# --- state records -------------------------------------------------------------------


@dataclass(frozen=True)
class Institution:
    public_key: Hash32
    name: Annotated[str, MaxSize(NAME_SIZE_MAX_BYTES)]
    role: Annotated[str, MaxSize(16)]
    member_id: Annotated[int, Uint(32)]  # the client id in aggregation (ties broken by it)

    @property
    def is_trainer(self) -> bool:
        return self.role in ("trainer", "both")

    @property
    def is_validator(self) -> bool:
        return self.role in ("validator", "both")


@dataclass(frozen=True)
class Registry:
    members: Annotated[tuple[Institution, ...], MaxCount(MEMBERS_MAX)]
    next_member_id: int

    def get(self, public_key: bytes) -> Institution | None:
        for member in self.members:
            if member.public_key == public_key:
                return member
        return None

    def get_validator_count(self) -> int:
        return sum(1 for m in self.members if m.is_validator)


@dataclass(frozen=True)
class LearningMeta:
    task_count: Annotated[int, Uint(32)]
    validator_keys: Annotated[tuple[Hash32, ...], MaxCount(1024)]  # consensus index -> key


@dataclass(frozen=True)
class PendingChange:
    effective_round: int
    config: TaskConfig


@dataclass(frozen=True)
class TaskRecord:
    config: TaskConfig  # what the open round uses
    pending: Annotated[tuple[PendingChange, ...], MaxCount(PENDING_CHANGES_MAX)]


@dataclass(frozen=True)
class RoundRecord:
    """The open round of a task (exactly one per task)."""

    task_id: Annotated[int, Uint(32)]
    round: int
    opened_height: int
    deadline_height: int
    base_version: int
    base_model_hash: Hash32
    delta_tx_hashes: Annotated[tuple[Hash32, ...], MaxCount(FL_DELTAS_PER_ROUND_MAX)]
    delta_senders: Annotated[tuple[Hash32, ...], MaxCount(FL_DELTAS_PER_ROUND_MAX)]
    attesters: Annotated[tuple[Hash32, ...], MaxCount(MEMBERS_MAX)]


@dataclass(frozen=True, eq=False)
class PendingDelta:
    """A delta that passed the deterministic checks, kept until its round closes."""

    tx_hash: Hash32
    sender: Hash32
    member_id: Annotated[int, Uint(32)]
    sample_count: int
    delta: np.ndarray[Any, Any]
    digest: Hash32
    commitment: TrainingCommitmentRecord


@dataclass(frozen=True)
class DeltaOutcome:
    """What round close decided about one delta (kept forever: small, no delta values)."""

    tx_hash: Hash32
    institution: Hash32
    member_id: Annotated[int, Uint(32)]
    accepted: bool
    reason: Annotated[str, MaxSize(REASON_SIZE_MAX_BYTES)]  # "" when accepted
    improvement_biased: int
    agreement_biased: int
    attested_improvement_biased: int  # median over attestations; bias+0 when none
    attestation_count: Annotated[int, Uint(32)]
    shapley_biased: int
    weight: int
    reward: int
    digest: Hash32
    commitment: TrainingCommitmentRecord

    @property
    def improvement_ppm(self) -> int:
        return from_biased(self.improvement_biased)

    @property
    def agreement_ppm(self) -> int:
        return from_biased(self.agreement_biased)

    @property
    def attested_improvement_ppm(self) -> int:
        return from_biased(self.attested_improvement_biased)

    @property
    def shapley_ppm(self) -> int:
        return from_biased(self.shapley_biased)


@dataclass(frozen=True)
class Reward:
    account: Hash32
    amount: int


@dataclass(frozen=True)
class RoundSummary:
    task_id: Annotated[int, Uint(32)]
    round: int
    closed_height: int
    rule: Annotated[str, MaxSize(RULE_SIZE_MAX_BYTES)]  # the rule the aggregate used
    rule_params_json: Annotated[str, MaxSize(RULE_PARAMS_SIZE_MAX_BYTES)]
    model_version: int  # the version after this round (unchanged when nothing was accepted)
    model_hash: Hash32
    outcomes: Annotated[tuple[DeltaOutcome, ...], MaxCount(FL_DELTAS_PER_ROUND_MAX)]
    validator_rewards: Annotated[tuple[Reward, ...], MaxCount(MEMBERS_MAX + 1)]
    minted: int


@dataclass(frozen=True)
class LineageEntry:
    tx_hash: Hash32
    institution: Hash32
    weight: int


@dataclass(frozen=True)
class ModelVersion:
    task_id: Annotated[int, Uint(32)]
    version: int
    round: int  # the round whose close made it (version 0: genesis, round 0)
    height: int
    model_hash: Hash32
    parent_hash: Hash32  # the previous version's hash (zeros for version 0)
    rule: Annotated[str, MaxSize(RULE_SIZE_MAX_BYTES)]
    lineage: Annotated[tuple[LineageEntry, ...], MaxCount(FL_DELTAS_PER_ROUND_MAX)]


@dataclass(frozen=True)
class DpUse:
    noise_multiplier_micro: int
    sampling_rate_ppm: Annotated[int, Uint(32)]
    steps: int


@dataclass(frozen=True)
class PrivacyAccount:
    spent_micro: int
    history: Annotated[tuple[DpUse, ...], MaxCount(PRIVACY_HISTORY_MAX)]


@dataclass(frozen=True)
class DigestRecord:
    round: int
    tx_hash: Hash32


@dataclass(frozen=True)
class Proposal:
    proposal_id: int
    proposer: Hash32
    proposed_height: int
    expires_height: int
    body: GovernanceProposal
    yes: Annotated[tuple[Hash32, ...], MaxCount(MEMBERS_MAX)]
    no: Annotated[tuple[Hash32, ...], MaxCount(MEMBERS_MAX)]
    status: Annotated[str, MaxSize(16)]  # open, passed, rejected


@dataclass(frozen=True)
class GovernanceMeta:
    next_proposal_id: int
    open_ids: Annotated[tuple[int, ...], MaxCount(PROPOSALS_OPEN_MAX)]


# --- encoding ----------------------------------------------------------------------

R = TypeVar("R")


def encode_record(record: object) -> bytes:
    out = bytearray((RECORD_VERSION,))
    get_plan(type(record)).encode(record, out)
    return bytes(out)


def decode_record(cls: type[R], data: bytes) -> R:
    """Strict decode of a state record (DecodeError on any fault)."""
    try:
        r = Reader(data)
        version = r.read_u8(f"{cls.__name__}.version")
        if version != RECORD_VERSION:
            raise DecodeError(f"{cls.__name__}.version: unknown {version}")
        record: R = get_plan(cls).decode(r, DEFAULT_LIMITS)
        r.expect_end(cls.__name__)
    except DecodeError:
        raise
    except (ValueError, TypeError, IndexError, struct.error) as exc:
        raise DecodeError(f"{cls.__name__}: malformed record: {exc!r}") from None
    return record


@lru_cache(maxsize=4096)
def decode_small_record(cls: type[R], data: bytes) -> R:
    """:func:`decode_record` for small immutable records read on every tx (cached by bytes)."""
    return decode_record(cls, data)


def encode_u64(value: int) -> bytes:
    return _BE64.pack(value)


def decode_u64(value: bytes) -> int:
    if len(value) != 8:
        raise DecodeError(f"u64 entry: expected 8 bytes, got {len(value)}")
    result: int = _BE64.unpack(value)[0]
    return result


# --- keys ------------------------------------------------------------------------------


def _task(task_id: int) -> bytes:
    return _BE32.pack(task_id)


def get_registry_key() -> bytes:
    return schema.get_state_key(schema.AREA_FL_INSTITUTIONS, b"registry")


def get_learning_meta_key() -> bytes:
    return schema.get_state_key(schema.AREA_FL_TASKS, b"meta")


def get_task_key(task_id: int) -> bytes:
    return schema.get_state_key(schema.AREA_FL_TASKS, _task(task_id))


def get_round_key(task_id: int) -> bytes:
    return schema.get_state_key(schema.AREA_FL_ROUNDS, _task(task_id))


def get_round_summary_key(task_id: int, round_number: int) -> bytes:
    return schema.get_state_key(schema.AREA_FL_SUMMARIES, _task(task_id) + _BE64.pack(round_number))


def get_pending_delta_key(task_id: int, tx_hash: bytes) -> bytes:
    return schema.get_state_key(schema.AREA_FL_DELTAS, _task(task_id) + tx_hash)


def get_attestation_key(task_id: int, validator: bytes) -> bytes:
    return schema.get_state_key(schema.AREA_FL_ATTESTATIONS, _task(task_id) + validator)


def get_digest_key(task_id: int, digest: bytes) -> bytes:
    return schema.get_state_key(schema.AREA_FL_DIGESTS, _task(task_id) + digest)


def get_model_key(task_id: int, version: int) -> bytes:
    return schema.get_state_key(schema.AREA_FL_MODELS, _task(task_id) + _BE64.pack(version))


def get_model_latest_key(task_id: int) -> bytes:
    return schema.get_state_key(schema.AREA_FL_MODELS, _task(task_id) + b"latest")


def get_params_key(task_id: int, version: int) -> bytes:
    return schema.get_state_key(schema.AREA_FL_PARAMS, _task(task_id) + _BE64.pack(version))


def get_reputation_key(public_key: bytes) -> bytes:
    return schema.get_state_key(schema.AREA_FL_REPUTATION, public_key)


def get_privacy_key(task_id: int, public_key: bytes) -> bytes:
    return schema.get_state_key(schema.AREA_FL_PRIVACY, _task(task_id) + public_key)


def get_governance_meta_key() -> bytes:
    return schema.get_state_key(schema.AREA_FL_GOVERNANCE, b"meta")


def get_proposal_key(proposal_id: int) -> bytes:
    return schema.get_state_key(schema.AREA_FL_GOVERNANCE, _BE64.pack(proposal_id))
