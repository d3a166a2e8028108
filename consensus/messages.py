"""Consensus messages: frozen dataclasses the node encodes generically from their fields.

Field types are restricted to what ``node/codec.py`` encodes: ``int`` (u64), ``bool``,
``bytes``, ``str``, ``tuple[T, ...]``, ``T | None`` and nested frozen dataclasses.
Every top-level class has a unique ``KIND`` and is listed in ``MESSAGE_TYPES``.

View change is digest-only (PBFT's own form): a VIEW-CHANGE proves each prepared block
with its votes and its small header (``PreparedProof``), never its payload, so its size
does not grow with block size. A replica that lacks a payload a NEW-VIEW re-proposes asks
holders for it by digest (``PayloadRequest``/``PayloadReply``); the digest authenticates
the answer.

Signing: a message's signed body is the message itself with ``signature`` emptied
(``get_signing_body``). PRE-PREPARE, PREPARE and COMMIT are all a signed ``Vote``
(phase, view, seq, digest), so PRE-PREPARE's payload is *not* under the signature:
the block digest binds the payload and its parent, and evidence of equivocation
stays small (two votes, no payloads).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

PHASE_PRE_PREPARE = 1
PHASE_PREPARE = 2
PHASE_COMMIT = 3
PHASES = (PHASE_PRE_PREPARE, PHASE_PREPARE, PHASE_COMMIT)


@dataclass(frozen=True)
class Vote:
    """A signed vote: PRE-PREPARE (primary), PREPARE or COMMIT for (view, seq, digest)."""

    KIND: ClassVar[int] = 1
    phase: int
    view: int
    seq: int
    digest: bytes
    signer: int
    signature: bytes


@dataclass(frozen=True)
class PrePrepare:
    """The primary's proposal: its signed vote plus the block (parent digest and payload)."""

    KIND: ClassVar[int] = 2
    vote: Vote
    parent_digest: bytes
    payload: bytes


@dataclass(frozen=True)
class Checkpoint:
    """Signed claim that the chain at ``seq`` has block digest ``digest``."""

    KIND: ClassVar[int] = 3
    seq: int
    digest: bytes
    signer: int
    signature: bytes


@dataclass(frozen=True)
class PreparedCertificate:
    """A pre-prepare and 2f matching prepares from distinct backups (same view, seq, digest)."""

    KIND: ClassVar[int] = 4
    pre_prepare: PrePrepare
    prepares: tuple[Vote, ...]


@dataclass(frozen=True)
class PreparedProof:
    """A prepared certificate as a VIEW-CHANGE carries it: the pre-prepare's signed vote,
    the block's parent digest and header (which the block digest is the hash of, so they
    are bound to the votes without the payload) and quorum-1 matching prepares."""

    KIND: ClassVar[int] = 12
    pre_prepare: Vote
    parent_digest: bytes
    header: bytes
    prepares: tuple[Vote, ...]


@dataclass(frozen=True)
class ViewChange:
    """VIEW-CHANGE to ``new_view``: the sender's stable checkpoint (with proof) and a proof
    of every prepared certificate it holds above it."""

    KIND: ClassVar[int] = 5
    new_view: int
    checkpoint_seq: int
    checkpoint_digest: bytes
    checkpoint_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedProof, ...]
    signer: int
    signature: bytes


@dataclass(frozen=True)
class NewView:
    """NEW-VIEW: a quorum of view-changes and the primary's signed pre-prepare votes for
    every block re-proposed from them (payloads: each replica's own, or fetched by digest)."""

    KIND: ClassVar[int] = 6
    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[Vote, ...]
    signer: int
    signature: bytes


@dataclass(frozen=True)
class Status:
    """Heartbeat: the sender's view and highest delivered seq; drives catch-up."""

    KIND: ClassVar[int] = 7
    view: int
    last_delivered_seq: int
    signer: int
    signature: bytes


@dataclass(frozen=True)
class Evidence:
    """Two conflicting signed votes from one validator for the same phase, view and seq."""

    KIND: ClassVar[int] = 8
    first: Vote
    second: Vote


@dataclass(frozen=True)
class CommitCertificate:
    """Quorum of COMMIT votes (same view, seq, digest; distinct signers, sorted)."""

    KIND: ClassVar[int] = 9
    commits: tuple[Vote, ...]


@dataclass(frozen=True)
class FetchedBlock:
    """A block fetched from a peer during catch-up, with the certificate that committed it."""

    KIND: ClassVar[int] = 10
    seq: int
    payload: bytes
    certificate: CommitCertificate


@dataclass(frozen=True)
class StableCheckpoint:
    """A checkpoint with the quorum of signed CHECKPOINT messages that made it stable."""

    KIND: ClassVar[int] = 11
    seq: int
    digest: bytes
    proof: tuple[Checkpoint, ...]


@dataclass(frozen=True)
class PayloadRequest:
    """Ask a peer for the payload of block ``digest`` at ``seq`` (not yet committed)."""

    KIND: ClassVar[int] = 13
    seq: int
    digest: bytes
    signer: int
    signature: bytes


@dataclass(frozen=True)
class PayloadReply:
    """A block payload asked for by digest; the requester checks it hashes to ``digest``."""

    KIND: ClassVar[int] = 14
    seq: int
    digest: bytes
    payload: bytes
    signer: int
    signature: bytes


# Messages replicas send one another (the classifier's domain).
PEER_MESSAGE_TYPES: tuple[type, ...] = (
    Vote,
    PrePrepare,
    Checkpoint,
    ViewChange,
    NewView,
    Status,
    PayloadRequest,
    PayloadReply,
)
MESSAGE_TYPES: tuple[type, ...] = (
    Vote,
    PrePrepare,
    Checkpoint,
    PreparedCertificate,
    PreparedProof,
    ViewChange,
    NewView,
    Status,
    PayloadRequest,
    PayloadReply,
    Evidence,
    CommitCertificate,
    FetchedBlock,
    StableCheckpoint,
)
assert len({t.KIND for t in MESSAGE_TYPES}) == len(MESSAGE_TYPES)  # type: ignore[attr-defined]

PeerMessage = (
    Vote | PrePrepare | Checkpoint | ViewChange | NewView | Status | PayloadRequest | PayloadReply
)
SignedBody = (
    Vote | Checkpoint | ViewChange | NewView | Status | PayloadRequest | PayloadReply
)


def get_signed_part(message: PeerMessage) -> SignedBody:
    """The object that carries ``signer`` and ``signature`` for a peer message."""
    if isinstance(message, PrePrepare):
        return message.vote
    return message


def get_signing_body(signed: SignedBody) -> SignedBody:
    """What the authenticator signs: the object with its signature emptied."""
    return dataclasses.replace(signed, signature=b"")
