"""Unit tests of the edge classifier and the replica's handlers."""

from dataclasses import replace

from consensus_helpers import (
    GENESIS,
    make_block,
    make_certificate,
    make_pre_prepare,
    make_replica,
    sign_vote,
)

from consensus import classifier as c
from consensus.events import (
    BlocksFetched,
    Broadcast,
    Deliver,
    Discard,
    Persist,
    Proposal,
    Receive,
    ReportEvidence,
)
from consensus.messages import PHASE_COMMIT, PHASE_PREPARE, FetchedBlock, PrePrepare, Vote
from consensus.replica import Replica
from consensus.sim import SimAuthenticator, SimBlockValidator


def classify(replica: Replica, sender: int, message: object) -> c.Verdict:
    return c.classify(replica.config, replica.auth, replica._edge_state(), sender, message)  # type: ignore[arg-type]


def test_classifier_reasons() -> None:
    r = make_replica(1)
    pp = make_pre_prepare(0, 1, GENESIS)
    assert classify(r, 0, pp).kind == c.PROCESS
    assert classify(r, 9, pp) == c.Verdict(c.DISCARD, c.REASON_NOT_VALIDATOR)
    assert classify(r, 2, pp) == c.Verdict(c.DISCARD, c.REASON_NOT_SENDER)
    bad_sig = PrePrepare(replace(pp.vote, signature=b"x" * 16), pp.parent_digest, pp.payload)
    assert classify(r, 0, bad_sig) == c.Verdict(c.DISCARD, c.REASON_BAD_SIGNATURE)
    assert classify(r, 1, make_pre_prepare(1, 1, GENESIS)).kind == c.STASH  # future view
    assert classify(r, 0, make_pre_prepare(0, 20, GENESIS)).kind == c.STASH  # above the window
    assert classify(r, 0, make_pre_prepare(0, 200, GENESIS)).reason == c.REASON_OUTSIDE_WINDOW
    wrong_primary = make_pre_prepare(1, 1, GENESIS)
    assert (
        classify(
            r, 1, replace(wrong_primary, vote=sign_vote(2, 1, 0, 1, wrong_primary.vote.digest))
        ).kind
        == c.DISCARD
    )
    short = sign_vote(2, PHASE_PREPARE, 0, 1, b"short")
    assert classify(r, 2, short) == c.Verdict(c.DISCARD, c.REASON_MALFORMED)
    r.handle(Receive(0, pp))
    assert classify(r, 0, pp) == c.Verdict(c.DISCARD, c.REASON_DUPLICATE)
    r.view = 3
    assert classify(r, 0, pp) == c.Verdict(c.DISCARD, c.REASON_OLD_VIEW)


def test_stash_is_bounded_per_sender() -> None:
    r = make_replica(1)
    for seq in range(17, 17 + 200):
        r.handle(Receive(2, sign_vote(2, PHASE_PREPARE, 0, min(seq, 31), bytes([seq % 256]) * 32)))
    assert r.stash_count == r.config.stash_per_sender_max


def test_backup_prepares_only_on_its_chain_and_reports_equivocation() -> None:
    r = make_replica(1)
    pp2 = make_pre_prepare(0, 2, b"\x07" * 32)  # parent is not block 1: must not prepare
    actions = r.handle(Receive(0, pp2))
    assert not any(isinstance(a, Broadcast) for a in actions)
    pp1 = make_pre_prepare(0, 1, GENESIS)
    actions = r.handle(Receive(0, pp1))
    persists = [a for a in actions if isinstance(a, Persist)]
    sends = [a for a in actions if isinstance(a, Broadcast)]
    assert persists and sends and actions.index(persists[0]) < actions.index(sends[0])
    assert isinstance(sends[0].message, Vote) and sends[0].message.phase == PHASE_PREPARE
    other = make_pre_prepare(0, 1, GENESIS, tag=b"b")
    actions = r.handle(Receive(0, other))
    assert [a for a in actions if isinstance(a, ReportEvidence)][0].evidence.first == pp1.vote


def test_normal_case_delivers_with_certificate() -> None:
    r = make_replica(1)
    pp1 = make_pre_prepare(0, 1, GENESIS)
    r.handle(Receive(0, pp1))
    d = pp1.vote.digest
    for s in (2, 3):
        r.handle(Receive(s, sign_vote(s, PHASE_PREPARE, 0, 1, d)))
    delivered: list[Deliver] = []
    for s in (0, 2):
        delivered += [
            a
            for a in r.handle(Receive(s, sign_vote(s, PHASE_COMMIT, 0, 1, d)))
            if isinstance(a, Deliver)
        ]
    assert [(x.seq, x.digest) for x in delivered] == [(1, d)]
    assert len({v.signer for v in delivered[0].certificate.commits}) == 3


def test_fetched_block_needs_valid_certificate() -> None:
    r = make_replica(3)
    payload, digest = make_block(1, GENESIS)
    weak = FetchedBlock(1, payload, make_certificate(1, digest, [0, 1]))
    actions = r.handle(BlocksFetched((weak,)))
    assert not any(isinstance(a, Deliver) for a in actions)
    assert any(isinstance(a, Discard) for a in actions)
    good = FetchedBlock(1, payload, make_certificate(1, digest, [0, 1, 2]))
    actions = r.handle(BlocksFetched((good,)))
    assert [a.seq for a in actions if isinstance(a, Deliver)] == [1]


def test_primary_proposal_slot_and_stale_proposal() -> None:
    r = make_replica(0)
    slot = r.get_proposal_slot()
    assert slot is not None and (slot.view, slot.seq, slot.parent_digest) == (0, 1, GENESIS)
    stale = r.handle(Proposal(0, 2, GENESIS, b"blk|x"))
    assert all(isinstance(a, Discard) for a in stale)
    actions = r.handle(Proposal(0, 1, GENESIS, b"blk|x"))
    assert isinstance(actions[0], Persist) and isinstance(actions[1], Broadcast)
    assert make_replica(1).get_proposal_slot() is None


def test_restore_never_votes_differently() -> None:
    r = make_replica(1)
    records = [
        a.record
        for a in r.handle(Receive(0, make_pre_prepare(0, 1, GENESIS)))
        if isinstance(a, Persist)
    ]
    restored = Replica.restore(r.config, SimAuthenticator(1, 4), SimBlockValidator(), records)
    actions = restored.handle(Receive(0, make_pre_prepare(0, 1, GENESIS, tag=b"b")))
    assert not any(isinstance(a, Broadcast) for a in actions)
    assert restored.slots[1].own_prepare == records[0]
