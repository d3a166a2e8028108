"""Equivocation evidence on chain: the ``EvidenceReport`` tx, its processor and its records.

A validator that sees two conflicting signed votes from one validator (the PBFT core's
``ReportEvidence``) submits an :class:`EvidenceReport` tx, signed with its own validator
key, that carries the consensus :class:`~consensus.messages.Evidence` in its canonical
encoding (``encode_consensus_message``). Zero cost: a validator account with balance 0
and nonce 0 may send it (the ledger bumps the nonce; the account then exists).

:func:`process_evidence_report` decodes the evidence strictly and checks it with
``consensus.certificates.verify_evidence`` against the validator keys that genesis put
in state (``s/x/validators``), so every validator reaches the same verdict from the
state alone. A valid report is recorded once per (offender, view, seq) at
``s/x/r/ offender(4) view(8) seq(8)`` and bumps the offender's counter at
``s/x/c/ offender(4)``; a second report of the same key is refused as
``duplicate_evidence`` (the block builder drops it), anything that does not verify as
``invalid_evidence``. At most :data:`EVIDENCE_PER_OFFENDER_MAX` records per offender.

Nothing is slashed yet: the records are the input a later slashing rule would read.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, ClassVar

from consensus.certificates import verify_evidence
from consensus.messages import (
    PHASE_COMMIT,
    PHASE_PRE_PREPARE,
    PHASE_PREPARE,
    Evidence,
    SignedBody,
)
from node import schema
from node.codec import (
    DEFAULT_LIMITS,
    DecodeError,
    EncodeError,
    Hash32,
    MaxSize,
    Reader,
    Transaction,
    Uint,
    decode_consensus_message,
    encode_consensus_message,
    get_plan,
    register_tx_body,
    sign_tx,
)
from node.crypto import DOMAIN_CONSENSUS, verify_signature
from node.genesis import Genesis
from node.keys import KeyPair
from node.ledger import (
    State,
    StateWriter,
    TxContext,
    TxInvalid,
    register_genesis_hook,
    register_tx_processor,
)

AREA_EVIDENCE = b"x"
EVIDENCE_SIZE_MAX_BYTES = 512  # two votes encode to ~250 bytes
EVIDENCE_PER_OFFENDER_MAX = 4096
VALIDATORS_MAX = 1024
RECORD_VERSION = 1

REASON_INVALID_EVIDENCE = "invalid_evidence"
REASON_DUPLICATE_EVIDENCE = "duplicate_evidence"
REASON_EVIDENCE_LIMIT = "evidence_limit"

PHASE_NAMES = {
    PHASE_PRE_PREPARE: "pre_prepare",
    PHASE_PREPARE: "prepare",
    PHASE_COMMIT: "commit",
}

_KEY = struct.Struct(">IQQ")  # offender, view, seq: byte order is numeric order
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
EVIDENCE_RECORDS_PREFIX = schema.get_state_key(AREA_EVIDENCE, b"r/")


@register_tx_body
@dataclass(frozen=True)
class EvidenceReport:
    """A validator's report of equivocation: ``encode_consensus_message(Evidence)``."""

    TX_KIND: ClassVar[int] = 0x20

    evidence: Annotated[bytes, MaxSize(EVIDENCE_SIZE_MAX_BYTES)]


@dataclass(frozen=True)
class EvidenceRecord:
    """What the chain keeps of one equivocation (the votes' digests, not their signatures)."""

    offender: Annotated[int, Uint(32)]
    phase: Annotated[int, Uint(8)]
    view: int
    seq: int
    first_digest: Hash32
    second_digest: Hash32
    height: int  # the block that recorded it
    reporter: Hash32  # the reporting validator's public key

    @property
    def kind(self) -> str:
        return f"equivocation_{PHASE_NAMES.get(self.phase, 'unknown')}"


# --- keys and records ---------------------------------------------------------------


def get_validators_key() -> bytes:
    return schema.get_state_key(AREA_EVIDENCE, b"validators")


def get_evidence_key(offender: int, view: int, seq: int) -> bytes:
    return EVIDENCE_RECORDS_PREFIX + _KEY.pack(offender, view, seq)


def get_offender_count_key(offender: int) -> bytes:
    return schema.get_state_key(AREA_EVIDENCE, b"c/" + _BE32.pack(offender))


def encode_evidence_record(record: EvidenceRecord) -> bytes:
    out = bytearray((RECORD_VERSION,))
    get_plan(EvidenceRecord).encode(record, out)
    return bytes(out)


def decode_evidence_record(data: bytes) -> EvidenceRecord:
    r = Reader(data)
    version = r.read_u8("EvidenceRecord.version")
    if version != RECORD_VERSION:
        raise DecodeError(f"EvidenceRecord.version: unknown {version}")
    record: EvidenceRecord = get_plan(EvidenceRecord).decode(r, DEFAULT_LIMITS)
    r.expect_end("EvidenceRecord")
    return record


def encode_validator_keys(keys: tuple[bytes, ...]) -> bytes:
    assert 0 < len(keys) <= VALIDATORS_MAX and all(len(k) == 32 for k in keys)
    return b"".join(keys)


def decode_validator_keys(data: bytes) -> tuple[bytes, ...]:
    if not data or len(data) % 32 or len(data) // 32 > VALIDATORS_MAX:
        raise DecodeError(f"evidence validators: {len(data)} bytes is not 1..1024 keys")
    return tuple(data[i : i + 32] for i in range(0, len(data), 32))


def get_genesis_evidence_entries(genesis: Genesis) -> Mapping[bytes, bytes]:
    """The validator keys evidence is checked against (consensus index -> key)."""
    keys = tuple(v.public_key for v in genesis.validators)
    return {get_validators_key(): encode_validator_keys(keys)}


# --- verification --------------------------------------------------------------------


class EvidenceAuthenticator:
    """Verify-only ``Authenticator``: same signing bytes as ``node.app.NodeAuthenticator``."""

    def __init__(self, chain_id: str, public_keys: tuple[bytes, ...]) -> None:
        self.chain_id = chain_id
        self.public_keys = public_keys

    def sign(self, body: SignedBody) -> bytes:
        raise NotImplementedError("evidence checks only verify")

    def verify(self, signer: int, body: SignedBody, signature: bytes) -> bool:
        if not 0 <= signer < len(self.public_keys):
            return False
        try:
            payload = encode_consensus_message(body)
        except EncodeError:
            return False
        return verify_signature(
            self.public_keys[signer], DOMAIN_CONSENSUS, self.chain_id, payload, signature
        )


def decode_evidence(data: bytes) -> Evidence:
    """Strict: the canonical encoding of one ``Evidence`` and nothing else (DecodeError)."""
    evidence = decode_consensus_message(data, (Evidence,), DEFAULT_LIMITS)
    assert isinstance(evidence, Evidence)
    if encode_consensus_message(evidence) != data:
        raise DecodeError("evidence: not in canonical encoding")
    return evidence


def process_evidence_report(writer: StateWriter, tx: Transaction, context: TxContext) -> None:
    body = tx.body
    assert isinstance(body, EvidenceReport)
    try:
        evidence = decode_evidence(body.evidence)
    except DecodeError as exc:
        raise TxInvalid(REASON_INVALID_EVIDENCE, f"evidence does not decode: {exc}") from None
    keys_value = writer.get(get_validators_key())
    if keys_value is None:
        raise TxInvalid(REASON_INVALID_EVIDENCE, "this chain has no validator keys in state")
    keys = decode_validator_keys(keys_value)
    auth = EvidenceAuthenticator(context.chain_id, keys)
    if not verify_evidence(auth, len(keys), evidence):
        raise TxInvalid(
            REASON_INVALID_EVIDENCE, "the two votes are not a signed equivocation by one validator"
        )
    first, second = evidence.first, evidence.second
    key = get_evidence_key(first.signer, first.view, first.seq)
    if writer.get(key) is not None:
        raise TxInvalid(
            REASON_DUPLICATE_EVIDENCE,
            f"evidence against validator {first.signer} at view {first.view} seq {first.seq} "
            "is already on chain",
        )
    count_key = get_offender_count_key(first.signer)
    count_value = writer.get(count_key)
    count = 0 if count_value is None else _BE64.unpack(count_value)[0]
    if count >= EVIDENCE_PER_OFFENDER_MAX:
        raise TxInvalid(
            REASON_EVIDENCE_LIMIT,
            f"validator {first.signer} already has {count} evidence records (the maximum)",
        )
    # Order the digests so the two reports of one equivocation (votes swapped) record alike.
    low, high = sorted((first.digest, second.digest))
    record = EvidenceRecord(
        first.signer, first.phase, first.view, first.seq, low, high, context.height, tx.sender
    )
    writer.put(key, encode_evidence_record(record))
    writer.put(count_key, _BE64.pack(count + 1))


register_tx_processor(EvidenceReport, process_evidence_report)
register_genesis_hook("evidence", get_genesis_evidence_entries)


# --- readers and builders ----------------------------------------------------------------


def get_evidence_records(state: State, limit: int) -> list[EvidenceRecord]:
    """Up to ``limit`` records, newest first (height, then offender, view, seq descending)."""
    assert limit > 0
    records = [
        decode_evidence_record(value)
        for key, value in state.entries.items()
        if key.startswith(EVIDENCE_RECORDS_PREFIX)
    ]
    records.sort(key=lambda r: (r.height, r.offender, r.view, r.seq), reverse=True)
    return records[:limit]


def get_offender_count(state: State, offender: int) -> int:
    value = state.entries.get(get_offender_count_key(offender))
    return 0 if value is None else int(_BE64.unpack(value)[0])


def is_evidence_recorded(state: State, evidence: Evidence) -> bool:
    first = evidence.first
    return get_evidence_key(first.signer, first.view, first.seq) in state.entries


def get_evidence_id(evidence: Evidence) -> tuple[int, int, int]:
    """(offender, view, seq): one record per id on chain."""
    return evidence.first.signer, evidence.first.view, evidence.first.seq


def make_evidence_tx(key: KeyPair, chain_id: str, nonce: int, evidence: Evidence) -> Transaction:
    body = EvidenceReport(encode_consensus_message(evidence))
    return sign_tx(key, chain_id, Transaction(key.public_key, nonce, body))


__all__ = [
    "AREA_EVIDENCE",
    "EVIDENCE_RECORDS_PREFIX",
    "EvidenceAuthenticator",
    "EvidenceRecord",
    "EvidenceReport",
    "REASON_DUPLICATE_EVIDENCE",
    "REASON_EVIDENCE_LIMIT",
    "REASON_INVALID_EVIDENCE",
    "decode_evidence",
    "get_evidence_id",
    "get_evidence_records",
    "get_offender_count",
    "is_evidence_recorded",
    "make_evidence_tx",
    "process_evidence_report",
]
