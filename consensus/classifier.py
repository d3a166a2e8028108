"""The edge classifier: before any handler runs, sort each message into process, discard
(with a reason) or stash (future view or sequence number).

``classify`` is a pure function of a snapshot of the replica's position (``EdgeState``)
and the message; signature checks happen here, cheapest tests first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consensus.certificates import is_well_formed_vote, verify_signature
from consensus.config import DIGEST_SIZE_BYTES, ReplicaConfig
from consensus.interfaces import Authenticator
from consensus.messages import (
    PEER_MESSAGE_TYPES,
    PHASE_COMMIT,
    PHASE_PRE_PREPARE,
    PHASE_PREPARE,
    Checkpoint,
    NewView,
    PayloadReply,
    PayloadRequest,
    PeerMessage,
    PrePrepare,
    Status,
    ViewChange,
    Vote,
    get_signed_part,
)

PROCESS = "process"
DISCARD = "discard"
STASH = "stash"

REASON_NOT_VALIDATOR = "not a validator"
REASON_NOT_SENDER = "signer is not the sender"
REASON_MALFORMED = "malformed"
REASON_OLD_VIEW = "old view"
REASON_OUTSIDE_WINDOW = "outside the window"
REASON_BAD_SIGNATURE = "bad signature"
REASON_DUPLICATE = "duplicate"
REASON_NOT_PRIMARY = "pre-prepare not from the primary"
REASON_FUTURE = "future view or sequence number"


@dataclass(frozen=True)
class Verdict:
    kind: str
    reason: str = ""


@dataclass(frozen=True)
class EdgeState:
    """What the classifier needs to know about the replica."""

    view: int  # the installed view, or the target view during a view change
    active: bool  # False while a view change is in progress
    low_seq: int
    high_seq: int
    is_duplicate: Callable[[Vote], bool]


def classify(
    config: ReplicaConfig, auth: Authenticator, state: EdgeState, sender: int, message: PeerMessage
) -> Verdict:
    if not isinstance(message, PEER_MESSAGE_TYPES):
        return Verdict(DISCARD, REASON_MALFORMED)
    if not 0 <= sender < config.n:
        return Verdict(DISCARD, REASON_NOT_VALIDATOR)
    signed = get_signed_part(message)
    if not 0 <= signed.signer < config.n:
        return Verdict(DISCARD, REASON_NOT_VALIDATOR)
    if signed.signer != sender:
        return Verdict(DISCARD, REASON_NOT_SENDER)
    if isinstance(message, PrePrepare | Vote):
        verdict = classify_vote(config, state, message)
    elif isinstance(message, Checkpoint):
        verdict = classify_checkpoint(config, state, message)
    elif isinstance(message, ViewChange):
        verdict = Verdict(PROCESS) if message.new_view >= 1 else Verdict(DISCARD, REASON_MALFORMED)
    elif isinstance(message, NewView | Status):
        verdict = Verdict(PROCESS)
    elif isinstance(message, PayloadRequest | PayloadReply):
        verdict = classify_payload_message(state, message)
    else:
        verdict = Verdict(DISCARD, REASON_MALFORMED)
    if verdict.kind == DISCARD:
        return verdict
    if not verify_signature(auth, config.n, signed):
        return Verdict(DISCARD, REASON_BAD_SIGNATURE)
    return verdict


def classify_vote(config: ReplicaConfig, state: EdgeState, message: PrePrepare | Vote) -> Verdict:
    vote = message.vote if isinstance(message, PrePrepare) else message
    if not is_well_formed_vote(config.n, vote):
        return Verdict(DISCARD, REASON_MALFORMED)
    if isinstance(message, PrePrepare):
        if vote.phase != PHASE_PRE_PREPARE or len(message.parent_digest) != len(vote.digest):
            return Verdict(DISCARD, REASON_MALFORMED)
        if vote.signer != config.get_primary(vote.view):
            return Verdict(DISCARD, REASON_NOT_PRIMARY)
    elif vote.phase not in (PHASE_PREPARE, PHASE_COMMIT):
        return Verdict(DISCARD, REASON_MALFORMED)
    if vote.view < state.view:
        return Verdict(DISCARD, REASON_OLD_VIEW)
    if vote.seq <= state.low_seq:
        return Verdict(DISCARD, REASON_OUTSIDE_WINDOW)
    # Far-future messages are dropped rather than stashed: catch-up covers that distance.
    if vote.seq > state.high_seq + (state.high_seq - state.low_seq):
        return Verdict(DISCARD, REASON_OUTSIDE_WINDOW)
    if vote.view > state.view or not state.active or vote.seq > state.high_seq:
        return Verdict(STASH, REASON_FUTURE)
    if state.is_duplicate(vote):
        return Verdict(DISCARD, REASON_DUPLICATE)
    return Verdict(PROCESS)


def classify_payload_message(state: EdgeState, message: PayloadRequest | PayloadReply) -> Verdict:
    """Payloads move by digest in any view; only blocks above the stable checkpoint and
    inside the window are ever re-proposed, so only those are asked for or accepted."""
    if len(message.digest) != DIGEST_SIZE_BYTES:
        return Verdict(DISCARD, REASON_MALFORMED)
    if not state.low_seq < message.seq <= state.high_seq:
        return Verdict(DISCARD, REASON_OUTSIDE_WINDOW)
    return Verdict(PROCESS)


def classify_checkpoint(config: ReplicaConfig, state: EdgeState, message: Checkpoint) -> Verdict:
    if message.seq % config.checkpoint_interval != 0 or len(message.digest) != 32:
        return Verdict(DISCARD, REASON_MALFORMED)
    if message.seq <= state.low_seq:
        return Verdict(DISCARD, REASON_OUTSIDE_WINDOW)
    return Verdict(PROCESS)
