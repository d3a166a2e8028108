"""Events a replica consumes and actions it returns (plain frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from consensus.messages import (
    CommitCertificate,
    Evidence,
    FetchedBlock,
    NewView,
    PeerMessage,
    PreparedCertificate,
    PrePrepare,
    StableCheckpoint,
    ViewChange,
    Vote,
)

# ---- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Receive:
    """A decoded message that arrived from validator ``sender`` (authenticated transport)."""

    sender: int
    message: PeerMessage


@dataclass(frozen=True)
class Tick:
    """One unit of logical time."""


@dataclass(frozen=True)
class Proposal:
    """A block payload the node built for the slot offered by ``get_proposal_slot``."""

    view: int
    seq: int
    parent_digest: bytes
    payload: bytes


@dataclass(frozen=True)
class BlocksFetched:
    """Blocks (with commit certificates) the node fetched from a peer for catch-up."""

    blocks: tuple[FetchedBlock, ...]


@dataclass(frozen=True)
class SuspectPrimary:
    """The node's request timer fired: a request this replica holds, valid on the chain,
    has waited too long for the current primary to propose it (PBFT's request timer;
    the core does not see requests, the node does). A backup moves to the next view;
    it takes f+1 such replicas (the rest join them) to replace a primary, so one faulty
    replica cannot."""

    reason: str = ""


Event = Receive | Tick | Proposal | BlocksFetched | SuspectPrimary

# ---- actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    to: int
    message: PeerMessage


@dataclass(frozen=True)
class Broadcast:
    """Send to every other validator."""

    message: PeerMessage


# What a replica persists: its own votes and proposals, prepared certificates, view-changes,
# new-views and stable checkpoints. Restore needs only these and the delivered chain tip.
PersistRecord = Vote | PrePrepare | PreparedCertificate | ViewChange | NewView | StableCheckpoint


@dataclass(frozen=True)
class Persist:
    """Durably store ``record`` (fsync) before executing any later action."""

    record: PersistRecord


@dataclass(frozen=True)
class Deliver:
    """Block ``seq`` is final: store it with its certificate. Strictly increasing, no gaps."""

    seq: int
    digest: bytes
    payload: bytes
    certificate: CommitCertificate


@dataclass(frozen=True)
class FetchBlocks:
    """Ask peers for committed blocks ``from_seq..to_seq`` (inclusive) with certificates."""

    from_seq: int
    to_seq: int
    peers: tuple[int, ...]


@dataclass(frozen=True)
class ReportEvidence:
    """Proof that a validator equivocated; the node may put it on chain."""

    evidence: Evidence


@dataclass(frozen=True)
class Discard:
    """A message was dropped by the edge classifier (for metrics and traces)."""

    sender: int
    reason: str


Action = Send | Broadcast | Persist | Deliver | FetchBlocks | ReportEvidence | Discard
