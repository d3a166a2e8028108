"""Pure checks of signed votes and certificates, and the NEW-VIEW selection rule.

Everything here is a function of its arguments: the node uses ``verify_commit_certificate``
to check finality of stored blocks and catch-up responses without trusting a peer.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.config import DIGEST_SIZE_BYTES, ReplicaConfig
from consensus.interfaces import Authenticator, BlockValidator
from consensus.messages import (
    PHASE_COMMIT,
    PHASE_PRE_PREPARE,
    PHASE_PREPARE,
    PHASES,
    Checkpoint,
    CommitCertificate,
    Evidence,
    NewView,
    PreparedCertificate,
    PreparedProof,
    SignedBody,
    ViewChange,
    Vote,
    get_signing_body,
)


def verify_signature(auth: Authenticator, n: int, signed: SignedBody) -> bool:
    if not 0 <= signed.signer < n:
        return False
    return auth.verify(signed.signer, get_signing_body(signed), signed.signature)


def is_well_formed_vote(n: int, vote: Vote) -> bool:
    return (
        vote.phase in PHASES
        and len(vote.digest) == DIGEST_SIZE_BYTES
        and 0 <= vote.signer < n
        and vote.seq >= 1
    )


def verify_vote(auth: Authenticator, n: int, vote: Vote) -> bool:
    return is_well_formed_vote(n, vote) and verify_signature(auth, n, vote)


def verify_commit_certificate(
    auth: Authenticator,
    n: int,
    quorum: int,
    seq: int,
    digest: bytes,
    certificate: CommitCertificate,
) -> bool:
    """True iff ``certificate`` holds >= ``quorum`` valid COMMIT votes from distinct
    validators, all for the same view and for (seq, digest)."""
    commits = certificate.commits
    if not quorum <= len(commits) <= n:
        return False
    views = {c.view for c in commits}
    if len(views) != 1 or len({c.signer for c in commits}) != len(commits):
        return False
    for commit in commits:
        if commit.phase != PHASE_COMMIT or commit.seq != seq or commit.digest != digest:
            return False
        if not verify_vote(auth, n, commit):
            return False
    return True


def verify_checkpoint_proof(
    auth: Authenticator,
    config: ReplicaConfig,
    seq: int,
    digest: bytes,
    proof: tuple[Checkpoint, ...],
) -> bool:
    if seq == 0:
        return digest == config.genesis_digest and not proof
    if not config.quorum <= len(proof) <= config.n:
        return False
    if len({c.signer for c in proof}) != len(proof):
        return False
    return all(
        c.seq == seq and c.digest == digest and verify_signature(auth, config.n, c) for c in proof
    )


def compute_prepared_proof(
    validator: BlockValidator, cert: PreparedCertificate
) -> PreparedProof:
    """What a VIEW-CHANGE carries for a prepared certificate: the payload replaced by the
    header (the certificate's payload was validated when its pre-prepare was accepted)."""
    pp = cert.pre_prepare
    header = validator.get_block_header(pp.payload)
    return PreparedProof(pp.vote, pp.parent_digest, header, cert.prepares)


def verify_prepared_proof(
    auth: Authenticator,
    config: ReplicaConfig,
    validator: BlockValidator,
    proof: PreparedProof,
) -> bool:
    """True iff the pre-prepare and quorum-1 prepares are valid and match, and the header
    is the block's at that seq over ``parent_digest`` (it hashes to the voted digest), so a
    sender cannot claim another parent for a block that others prepared."""
    vote = proof.pre_prepare
    if vote.phase != PHASE_PRE_PREPARE or vote.signer != config.get_primary(vote.view):
        return False
    if not verify_vote(auth, config.n, vote):
        return False
    if not config.quorum - 1 <= len(proof.prepares) <= config.n - 1:
        return False
    if len({p.signer for p in proof.prepares}) != len(proof.prepares):
        return False
    for prepare in proof.prepares:
        if (
            prepare.phase != PHASE_PREPARE
            or prepare.signer == vote.signer
            or (prepare.view, prepare.seq, prepare.digest) != (vote.view, vote.seq, vote.digest)
            or not verify_vote(auth, config.n, prepare)
        ):
            return False
    if len(proof.parent_digest) != DIGEST_SIZE_BYTES:
        return False
    return validator.validate_header(vote.seq, proof.parent_digest, proof.header) == vote.digest


def verify_view_change(
    auth: Authenticator,
    config: ReplicaConfig,
    validator: BlockValidator,
    vc: ViewChange,
) -> bool:
    if not verify_signature(auth, config.n, vc):
        return False
    if not verify_checkpoint_proof(
        auth, config, vc.checkpoint_seq, vc.checkpoint_digest, vc.checkpoint_proof
    ):
        return False
    if len(vc.prepared) > config.window_size:
        return False
    seqs = [p.pre_prepare.seq for p in vc.prepared]
    if len(set(seqs)) != len(seqs):
        return False
    for proof in vc.prepared:
        vote = proof.pre_prepare
        if not vc.checkpoint_seq < vote.seq <= vc.checkpoint_seq + config.window_size:
            return False
        if vote.view >= vc.new_view:
            return False
        if not verify_prepared_proof(auth, config, validator, proof):
            return False
    return True


@dataclass(frozen=True)
class NewViewPlan:
    """What a NEW-VIEW re-proposes: a base checkpoint and a chain of blocks above it."""

    base_seq: int
    base_digest: bytes
    base_proof: tuple[Checkpoint, ...]
    blocks: tuple[PreparedProof, ...]  # consecutive seqs from base_seq + 1, chained


def compute_new_view_plan(view_changes: tuple[ViewChange, ...]) -> NewViewPlan:
    """Deterministic NEW-VIEW selection from (already verified) view-changes.

    Base: the highest proven stable checkpoint. For each seq above it, the prepared
    certificate with the highest view. Blocks are hash-chained, so a gap cannot be filled
    with a null block; the chain is cut at the first gap or parent mismatch. That is safe:
    every ancestor of a committed block is itself committed, so committed blocks form a
    contiguous chained prefix and are never cut.
    """
    assert view_changes
    best_vc = max(view_changes, key=lambda vc: (vc.checkpoint_seq, vc.signer))
    base_seq, base_digest = best_vc.checkpoint_seq, best_vc.checkpoint_digest
    chosen: dict[int, PreparedProof] = {}
    for vc in view_changes:
        for proof in vc.prepared:
            vote = proof.pre_prepare
            if vote.seq <= base_seq:
                continue
            current = chosen.get(vote.seq)
            if current is None or vote.view > current.pre_prepare.view:
                chosen[vote.seq] = proof
    blocks: list[PreparedProof] = []
    parent = base_digest
    seq = base_seq + 1
    while seq in chosen and chosen[seq].parent_digest == parent:
        blocks.append(chosen[seq])
        parent = chosen[seq].pre_prepare.digest
        seq += 1
    return NewViewPlan(base_seq, base_digest, best_vc.checkpoint_proof, tuple(blocks))


def verify_new_view(
    auth: Authenticator,
    config: ReplicaConfig,
    validator: BlockValidator,
    nv: NewView,
) -> NewViewPlan | None:
    """The plan a valid NEW-VIEW implies, or None if it is invalid in any way."""
    if nv.signer != config.get_primary(nv.view) or not verify_signature(auth, config.n, nv):
        return None
    vcs = nv.view_changes
    if not config.quorum <= len(vcs) <= config.n or len({vc.signer for vc in vcs}) != len(vcs):
        return None
    for vc in vcs:
        if vc.new_view != nv.view or not verify_view_change(auth, config, validator, vc):
            return None
    plan = compute_new_view_plan(vcs)
    if len(nv.pre_prepares) != len(plan.blocks):
        return None
    for vote, proof in zip(nv.pre_prepares, plan.blocks, strict=True):
        expected = proof.pre_prepare
        if (
            vote.phase != PHASE_PRE_PREPARE
            or vote.signer != nv.signer
            or (vote.view, vote.seq, vote.digest) != (nv.view, expected.seq, expected.digest)
            or not verify_vote(auth, config.n, vote)
        ):
            return None
    return plan


def verify_evidence(auth: Authenticator, n: int, evidence: Evidence) -> bool:
    """True iff the two votes are validly signed by one validator, same phase, view and seq,
    for different digests."""
    a, b = evidence.first, evidence.second
    return (
        a.signer == b.signer
        and (a.phase, a.view, a.seq) == (b.phase, b.view, b.seq)
        and a.digest != b.digest
        and verify_vote(auth, n, a)
        and verify_vote(auth, n, b)
    )
