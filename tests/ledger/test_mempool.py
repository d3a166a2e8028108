from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import ledger
from node.codec import DecodeError, Limits, get_tx_hash
from node.ledger import State, apply_block, build_block, get_genesis_state
from node.mempool import (
    SOURCE_LOCAL,
    SOURCE_PEER,
    Mempool,
    MempoolConfig,
    decode_tx_batch,
    encode_tx_batch,
)

from .helpers import CHAIN_ID, KEYS, make_context, make_genesis, make_transfer

GENESIS = make_genesis({0: 1000, 1: 1000, 2: 1000, 3: 50})
CONTEXT = make_context(GENESIS)
STATE = get_genesis_state(GENESIS)


def make_pool(**config: int) -> Mempool:
    return Mempool(CHAIN_ID, config=MempoolConfig(**config))


def test_admits_and_reports_duplicates_without_error() -> None:
    pool = make_pool()
    tx = make_transfer(0, 0, 1, 10)
    first = pool.admit(tx, STATE, 0, SOURCE_LOCAL)
    assert first.ok and first.tx_hash == get_tx_hash(tx) and not first.duplicate
    again = pool.admit(tx, STATE, 1, SOURCE_PEER)
    assert again.ok and again.duplicate and again.tx_hash == first.tx_hash
    assert len(pool) == 1 and pool.get_metrics()["mempool_duplicates"] == 1


@pytest.mark.parametrize(
    ("make_tx", "reason"),
    [
        (lambda: b"\x02\x01junk", "decode"),
        (lambda: make_transfer(0, 0, 1, 10)[:-1] + b"\x00", "bad_signature"),
        (lambda: make_transfer(0, 0, 1, 10, chain_id="other-chain"), "bad_signature"),
        (lambda: make_transfer(0, 0, 1, 1001), "insufficient_balance"),
        (lambda: make_transfer(0, 65, 1, 1), "nonce_too_far_ahead"),
    ],
)
def test_each_rejection_reason(make_tx: object, reason: str) -> None:
    pool = make_pool(nonce_gap_max=64)
    result = pool.admit(make_tx(), STATE, 0, SOURCE_LOCAL)  # type: ignore[operator]
    assert not result.ok and result.reason == reason and result.message
    assert result.tx_hash is None and len(pool) == 0
    assert pool.get_metrics()[f"mempool_rejected_{reason}"] == 1


def test_oversize_nonce_too_low_duplicate_nonce_and_reserved_balance() -> None:
    pool = Mempool(CHAIN_ID, limits=Limits(tx_size_max_bytes=100))
    assert pool.admit(b"\x02" * 101, STATE, 0, SOURCE_LOCAL).reason == "oversize"
    pool = make_pool()
    after = build_block(STATE, [make_transfer(0, 0, 1, 1)], CONTEXT, 0, 0, 2000).applied.state
    assert pool.admit(make_transfer(0, 0, 1, 2), after, 0, SOURCE_LOCAL).reason == "nonce_too_low"
    assert pool.admit(make_transfer(0, 1, 1, 600), after, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(0, 1, 1, 7), after, 0, SOURCE_LOCAL).reason == "duplicate_nonce"
    # 999 left, 600 reserved by the pending tx: 400 more does not fit, 399 does.
    assert pool.admit(make_transfer(0, 2, 1, 400), after, 0, SOURCE_LOCAL).reason == (
        "insufficient_balance"
    )
    assert pool.admit(make_transfer(0, 2, 1, 399), after, 0, SOURCE_LOCAL).ok


def test_count_and_byte_bounds_give_full_with_headroom_kept_for_peers() -> None:
    # Local clients fill half (2 of 4); relayed txs may use the rest, since refusing one
    # would leave a nonce gap at this node while a refused client just retries.
    pool = make_pool(tx_count_max=4)
    for sender in range(2):
        assert pool.admit(make_transfer(sender, 0, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(2, 0, 1, 1), STATE, 0, SOURCE_LOCAL).reason == "full"
    assert pool.admit(make_transfer(2, 0, 1, 1), STATE, 0, SOURCE_PEER).ok
    assert pool.admit(make_transfer(3, 0, 1, 1), STATE, 0, SOURCE_PEER).ok
    assert pool.admit(make_transfer(0, 1, 1, 1), STATE, 0, SOURCE_PEER).reason == "full"
    assert len(pool) == 4
    tx = make_transfer(0, 0, 1, 1)
    pool = make_pool(size_max_bytes=len(tx) * 5 + 10)  # half: two local txs, not three
    assert pool.admit(tx, STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(1, 0, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(2, 0, 1, 1), STATE, 0, SOURCE_LOCAL).reason == "full"
    assert pool.admit(make_transfer(2, 0, 1, 1), STATE, 0, SOURCE_PEER).ok
    assert pool.size_bytes == 3 * len(tx)


def test_reap_follows_nonces_and_balances_and_is_fair_across_senders() -> None:
    pool = make_pool()
    # Sender 0 arrives first with 5 txs (out of nonce order); senders 1 and 2 one each later.
    for nonce in (3, 1, 0, 4, 2):
        assert pool.admit(make_transfer(0, nonce, 3, 10), STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(1, 0, 3, 10), STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(2, 0, 3, 10), STATE, 0, SOURCE_LOCAL).ok
    # A gapped tx never gets reaped.
    assert pool.admit(make_transfer(1, 5, 3, 10), STATE, 0, SOURCE_LOCAL).ok
    reaped = pool.reap(4, 10**6, STATE)
    assert reaped == [
        make_transfer(0, 0, 3, 10),
        make_transfer(1, 0, 3, 10),
        make_transfer(2, 0, 3, 10),
        make_transfer(0, 1, 3, 10),
    ]
    everything = pool.reap(100, 10**6, STATE)
    assert len(everything) == 7
    built = build_block(STATE, everything, CONTEXT, 0, 0, 2000)
    assert not built.dropped
    assert pool.reap(100, len(everything[0]) * 2, STATE) == everything[:2]


def test_reap_skips_what_the_state_no_longer_funds() -> None:
    pool = make_pool()
    assert pool.admit(make_transfer(3, 0, 0, 40), STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(3, 1, 0, 10), STATE, 0, SOURCE_LOCAL).ok
    # Sender 3 spends its balance in a block the pool did not see: both pending now fail.
    other = build_block(STATE, [make_transfer(3, 0, 1, 45)], CONTEXT, 0, 0, 2000).applied.state
    assert pool.reap(10, 10**6, other) == []


def test_update_after_commit_evicts_committed_and_stale() -> None:
    pool = make_pool()
    mine = make_transfer(0, 0, 1, 1)
    raced = make_transfer(1, 0, 2, 5)
    assert pool.admit(mine, STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(raced, STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(0, 1, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    # Another tx of sender 1 with nonce 0 won the slot: ``raced`` is stale now.
    winner = make_transfer(1, 0, 2, 6)
    applied = build_block(STATE, [mine, winner], CONTEXT, 0, 0, 2000).applied
    pool.update(applied.state, applied.tx_hashes, 1)
    assert len(pool) == 1 and pool.get_pending_nonces(KEYS[0].public_key) == [1]
    metrics = pool.get_metrics()
    assert metrics["mempool_evicted_committed"] == 1 and metrics["mempool_evicted_stale_nonce"] == 1


def test_ttl_evicts_old_entries_only() -> None:
    pool = make_pool(ttl_ms=1000)
    assert pool.admit(make_transfer(0, 0, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(1, 0, 1, 1), STATE, 600, SOURCE_LOCAL).ok
    assert pool.evict_expired(999) == 0
    assert pool.evict_expired(1000) == 1
    assert pool.get_pending_nonces(KEYS[0].public_key) == []
    assert len(pool) == 1
    pool.update(STATE, [], 1600)
    assert len(pool) == 0 and pool.size_bytes == 0


def test_relay_takes_local_txs_once_in_bounded_batches() -> None:
    pool = make_pool()
    local = [make_transfer(0, n, 1, 1) for n in range(3)]
    for tx in local:
        assert pool.admit(tx, STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(1, 0, 1, 1), STATE, 0, SOURCE_PEER).ok
    assert pool.take_relay_batch(2, 10**6, 0) == local[:2]
    assert pool.take_relay_batch(10, 10**6, 0) == local[2:]
    assert pool.take_relay_batch(10, 10**6, 0) == []
    # One tx goes out even if it alone is over the byte budget; then it stops.
    for n in range(3, 5):
        assert pool.admit(make_transfer(0, n, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    assert len(pool.take_relay_batch(10, 1, 0)) == 1


def test_tx_batch_round_trip_and_strict_decoding() -> None:
    txs = [make_transfer(0, n, 1, 1) for n in range(3)] + [b""]
    frame = encode_tx_batch(txs)
    assert decode_tx_batch(frame) == txs
    for bad in (frame[:-1], frame + b"\x00", frame[:1], b"", b"\x07\x02" + frame[2:]):
        with pytest.raises(DecodeError):
            decode_tx_batch(bad)
    with pytest.raises(DecodeError):
        decode_tx_batch(b"\x07\x01" + (20_000).to_bytes(4, "little"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 300), st.binary(max_size=8))
def test_tx_batch_decoding_raises_only_decode_error(junk: bytes, cut: int, tail: bytes) -> None:
    frame = encode_tx_batch([junk, junk[:cut]])
    for data in (junk, frame[:cut], frame + tail, b"\x07\x01" + junk):
        try:
            decode_tx_batch(data)
        except DecodeError:
            pass


def test_each_tx_is_verified_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = ledger.verify_tx

    def counting(chain_id: str, tx: ledger.Transaction, encoded: bytes | None = None) -> bool:
        calls.append(tx.sender)
        return real(chain_id, tx, encoded)

    monkeypatch.setattr(ledger, "verify_tx", counting)
    pool = make_pool()
    txs = [make_transfer(0, 0, 1, 1), make_transfer(1, 0, 2, 1)]
    for tx in txs:
        assert pool.admit(tx, STATE, 0, SOURCE_PEER).ok
    assert pool.admit(txs[0], STATE, 0, SOURCE_PEER).duplicate
    assert len(calls) == 2
    reaped = pool.reap(10, 10**6, STATE)
    built = build_block(STATE, reaped, CONTEXT, 0, 0, 2000, pool.signature_cache)
    apply_block(STATE, built.block, CONTEXT, pool.signature_cache)
    assert len(calls) == 2


def test_with_shares_each_nodes_clients_fill_their_share_counted_alone() -> None:
    # Relay to the primary: a backup's pool holds its own clients' txs, so they are
    # counted alone against half the bounds / shares (here 4 // 2 = 2 of 8).
    pool = make_pool(tx_count_max=8, local_fill_shares=2)
    for nonce in range(3):
        assert pool.admit(make_transfer(0, nonce, 1, 1), STATE, 0, SOURCE_PEER).ok
    assert pool.admit(make_transfer(1, 0, 1, 1), STATE, 0, SOURCE_LOCAL).ok  # peers' 3: no
    assert pool.admit(make_transfer(1, 1, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(1, 2, 1, 1), STATE, 0, SOURCE_LOCAL).reason == "full"
    assert pool.get_metrics()["mempool_local_txs"] == 2
    pool.update(STATE, [get_tx_hash(make_transfer(1, 0, 1, 1))])  # one leaves: room again
    assert pool.admit(make_transfer(1, 2, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    for nonce in range(3):  # the whole pool's bound holds for everyone
        assert pool.admit(make_transfer(2, nonce, 1, 1), STATE, 0, SOURCE_PEER).ok
    assert len(pool) == 8
    assert pool.admit(make_transfer(3, 0, 1, 1), STATE, 0, SOURCE_PEER).reason == "full"
    tx = make_transfer(0, 0, 1, 1)
    pool = make_pool(size_max_bytes=len(tx) * 8 + 10, local_fill_shares=2)  # bytes: 2 too
    for nonce in range(2):
        assert pool.admit(make_transfer(0, nonce, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    assert pool.admit(make_transfer(0, 2, 1, 1), STATE, 0, SOURCE_LOCAL).reason == "full"
    assert pool.admit(make_transfer(1, 0, 1, 1), STATE, 0, SOURCE_PEER).ok


def assert_gaps_match_the_state(pool: Mempool, state: State) -> None:
    """The pool's gap flags and counters, recomputed from the state's account nonces."""
    gapped = [0, 0]
    for sender, queue in pool._by_sender.items():
        end = ledger.get_account(state, sender).nonce
        while end in queue:
            end += 1
        for nonce, entry in queue.items():
            assert entry.gapped == (nonce > end), (sender.hex()[:8], nonce, end)
            gapped[0] += entry.gapped
            gapped[1] += entry.local and entry.gapped
    assert [pool._gapped[0], pool._gapped_local[0]] == gapped
    assert pool._gapped[1] == sum(len(e.tx_bytes) for e in pool._by_hash.values() if e.gapped)
    assert pool.get_metrics()["mempool_gapped_txs"] == gapped[0]


def test_past_the_mark_only_txs_that_can_apply_are_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three shares of half of 24: a node's clients fill a mark of 4; past it, txs that
    # can apply are still taken while those are under 4, up to 4 * 150% = 6 in all.
    pool = make_pool(tx_count_max=24, local_fill_shares=3, ttl_ms=1_000)
    for nonce in (3, 4, 5, 6):  # all wait for nonce 0 of sender 0
        assert pool.admit(make_transfer(0, nonce, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    assert pool.get_metrics()["mempool_gapped_txs"] == 4
    checks: list[bytes] = []
    verify = ledger.verify_tx
    monkeypatch.setattr(ledger, "verify_tx", lambda *args: checks.append(b"") or verify(*args))
    refused = pool.admit(make_transfer(1, 2, 1, 1), STATE, 0, SOURCE_LOCAL)
    assert refused.reason == "full" and "earlier nonces" in refused.message
    assert "nonce 0 of this sender" in refused.message and checks == []
    # A peer's gapped tx is not bound by it (refusing relays leaves gaps at this node).
    assert pool.admit(make_transfer(1, 2, 1, 1), STATE, 0, SOURCE_PEER).ok
    assert pool.get_metrics()["mempool_gapped_txs"] == 5
    # The gap's fillers find room past the mark (a mark counting them with the gapped
    # txs refused them, and nothing could ever apply), until the headroom is used.
    checks.clear()
    for nonce in (0, 1):
        assert pool.admit(make_transfer(0, nonce, 1, 1), STATE, 500, SOURCE_LOCAL).ok
    assert len(checks) == 2
    assert pool.admit(make_transfer(0, 2, 1, 1), STATE, 500, SOURCE_LOCAL).reason == "full"
    assert len(checks) == 2  # refused before its signature was checked
    assert pool.get_metrics()["mempool_local_txs"] == 6
    assert_gaps_match_the_state(pool, STATE)
    # The two applicable txs commit; the filler then joins the run to the waiting txs.
    after = build_block(STATE, [make_transfer(0, n, 1, 1) for n in (0, 1)], CONTEXT, 0, 0,
                        2000).applied
    pool.update(after.state, after.tx_hashes, 600, changed_keys=after.diff.keys())
    assert pool.admit(make_transfer(0, 2, 1, 1), after.state, 600, SOURCE_LOCAL).ok
    assert pool.get_metrics()["mempool_gapped_txs"] == 1  # sender 1's, from the peer
    assert_gaps_match_the_state(pool, after.state)
    # Applicable txs alone reach the mark: every client tx is refused then.
    assert pool.admit(make_transfer(2, 0, 1, 1), after.state, 600, SOURCE_LOCAL).reason == (
        "full")
    # The first admitted (nonces 3-6 and the peer's) expire: nonce 2 is left, applicable.
    assert pool.evict_expired(1_000) == 5
    assert pool.get_pending_nonces(KEYS[0].public_key) == [2]
    assert_gaps_match_the_state(pool, after.state)
    pool = make_pool(tx_count_max=24, local_fill_shares=3, ttl_ms=1_000)
    assert pool.admit(make_transfer(0, 0, 1, 1), STATE, 0, SOURCE_LOCAL).ok
    for nonce in (1, 2):
        assert pool.admit(make_transfer(0, nonce, 1, 1), STATE, 500, SOURCE_LOCAL).ok
    assert pool.evict_expired(1_000) == 1  # nonce 0 leaves: 1 and 2 wait for it again
    assert pool.get_metrics()["mempool_gapped_txs"] == 2
    assert_gaps_match_the_state(pool, STATE)
    # A state the pool was not told of (nonce 0 committed elsewhere): the next admission
    # recounts the sender from that state's nonce.
    after = build_block(STATE, [make_transfer(0, 0, 1, 1)], CONTEXT, 0, 0, 2000).applied.state
    assert pool.admit(make_transfer(0, 3, 1, 1), after, 1_000, SOURCE_LOCAL).ok
    assert pool.get_metrics()["mempool_gapped_txs"] == 0
    assert_gaps_match_the_state(pool, after)


def test_a_client_sending_batches_out_of_order_into_a_full_share_gets_all_committed() -> None:
    # Regression (seventh session): a client's batches of one account arrive out of order
    # at a full share; the later batch took the room its earlier nonces then needed, so
    # no tx could apply, blocks stayed empty and the pool only cleared at the TTL.
    pool = make_pool(tx_count_max=24, local_fill_shares=3)  # a mark of 4
    batches = [[4, 5, 6, 7], [8, 9, 10, 11], [0, 1, 2, 3]]  # as the client's workers send
    unsent = [nonce for batch in batches for nonce in batch]
    state: State = STATE
    committed: list[int] = []
    for step in range(12):  # bounded: each step is a client retry and a block
        unsent = [nonce for nonce in unsent
                  if not pool.admit(make_transfer(0, nonce, 1, 1), state, step, SOURCE_LOCAL).ok]
        assert_gaps_match_the_state(pool, state)
        built = build_block(state, pool.reap(100, 10**6, state), CONTEXT, 0, 0, 2000 + step)
        committed += [ledger.get_account(built.applied.state, KEYS[0].public_key).nonce
                      - ledger.get_account(state, KEYS[0].public_key).nonce]
        state = built.applied.state
        pool.update(state, built.applied.tx_hashes, step)
        assert_gaps_match_the_state(pool, state)
        if not unsent and len(pool) == 0:
            break
    assert ledger.get_account(state, KEYS[0].public_key).nonce == 12
    assert committed[0] > 0  # the first block already carried txs


def test_random_traffic_keeps_the_pool_consistent() -> None:
    rng = random.Random(7)
    sources = random.Random(8)  # its own stream: the traffic below stays what it was
    pool = make_pool(tx_count_max=40, nonce_gap_max=4, ttl_ms=50)
    # Two more pools hold other txs of the same senders, which ``pool``'s blocks make
    # stale: updated with the block's changed keys, one must evict exactly what the
    # other, updated with a pass over every pending sender, evicts.
    by_keys, by_pass = (make_pool(tx_count_max=40, nonce_gap_max=4, ttl_ms=10**6)
                        for _ in range(2))
    state: State = STATE
    for step in range(120):
        sender = rng.randrange(4)
        nonce = rng.randrange(6)
        tx = make_transfer(sender, nonce, rng.randrange(5), rng.randrange(60))
        source = SOURCE_LOCAL if sources.random() < 0.7 else SOURCE_PEER
        pool.admit(tx if rng.random() > 0.05 else os.urandom(20), state, step, source)
        other = make_transfer(sender, nonce + rng.randrange(2), 4, rng.randrange(60))
        for twin in (by_keys, by_pass):
            twin.admit(other, state, step, SOURCE_LOCAL)
        if step % 10 == 9:
            # A proposer reaps into the block's own builder and finishes from it (one
            # pass); building the reaped txs afresh must give the same block.
            builder = ledger.BlockBuilder(state, CONTEXT, None, step % 4, 2000 + step)
            reaped = pool.reap(8, 10**6, state, builder)
            one_pass = builder.finish(0)
            built = build_block(state, reaped, CONTEXT, step % 4, 0, 2000 + step)
            assert not built.dropped  # reap only hands out what applies
            assert one_pass.block == built.block
            assert one_pass.applied.block_hash == built.applied.block_hash
            assert dict(one_pass.applied.diff) == dict(built.applied.diff)
            applied = apply_block(state, built.block, CONTEXT)
            state = applied.state
            pool.update(state, applied.tx_hashes, step)
            by_keys.update(state, applied.tx_hashes, step, changed_keys=applied.diff.keys())
            by_pass.update(state, applied.tx_hashes, step)
            assert by_keys._by_hash.keys() == by_pass._by_hash.keys()
            for each in (by_keys, by_pass):
                assert_gaps_match_the_state(each, state)
        assert_gaps_match_the_state(pool, state)
        assert len(pool) <= 40
        assert pool.size_bytes == sum(len(e.tx_bytes) for e in pool._by_hash.values())
        assert pool.get_metrics()["mempool_local_txs"] == sum(
            e.local for e in pool._by_hash.values())
    assert by_keys.get_metrics()["mempool_evicted_stale_nonce"] > 10


def test_clients_are_refused_before_the_signature_check_while_the_chain_is_backlogged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = make_pool(backlog_latency_max_ms=1_000, backlog_floor_txs=3)
    first = [make_transfer(sender, 0, 0, 1) for sender in range(1, 4)]
    for tx in first:
        assert pool.admit(tx, STATE, 0, SOURCE_LOCAL).ok
    assert len(pool.take_relay_batch(10, 10**6, 0)) == 3
    # One of them commits 100 s after admission: the latency estimate jumps past 1 s.
    state = build_block(STATE, first[:1], CONTEXT, 0, 0, 2000).applied.state
    pool.update(state, [get_tx_hash(first[0])], 100_000, committed_at_ms=100_000)
    assert pool.commit_latency_ms > 1_000 and len(pool) == 2
    assert pool.admit(make_transfer(0, 0, 1, 1), state, 100_000, SOURCE_LOCAL).ok  # floor
    assert len(pool) == 3
    checks: list[bytes] = []
    monkeypatch.setattr(ledger, "verify_tx", lambda *args: checks.append(b"") or True)
    refused = pool.admit(make_transfer(0, 1, 1, 1), state, 100_000, SOURCE_LOCAL)
    assert refused.reason == "full" and "backlog" in refused.message and checks == []
    # A peer's relay is still taken (refusing it would leave a nonce gap here).
    assert pool.admit(make_transfer(0, 1, 1, 1), state, 100_000, SOURCE_PEER).ok
    assert pool.get_metrics()["mempool_rejected_full"] == 1


# --- the request timer (get_overdue) --------------------------------------------------

WAIT_MS = 1_000


def test_a_tx_that_can_apply_is_overdue_after_the_wait_and_not_before() -> None:
    pool = make_pool()
    tx = make_transfer(0, 0, 1, 10)
    assert pool.admit(tx, STATE, 500, SOURCE_PEER).ok
    assert pool.get_overdue(STATE, 500 + WAIT_MS - 1, WAIT_MS, 0) is None
    overdue = pool.get_overdue(STATE, 500 + WAIT_MS + 7, WAIT_MS, 0)
    assert overdue is not None
    assert (overdue.tx_hash, overdue.tx_bytes, overdue.waited_ms) == (
        get_tx_hash(tx), tx, WAIT_MS + 7)
    # Not before the view started a whole wait ago.
    assert pool.get_overdue(STATE, 500 + WAIT_MS + 7, WAIT_MS, 600) is None


def test_a_tx_behind_its_senders_own_txs_waits_from_the_commit_before_it() -> None:
    """A client 3 nonces ahead of the chain: its third tx is not overdue while the first
    two commit one block at a time; its timer starts when the second commits."""
    pool = make_pool()
    txs = [make_transfer(0, nonce, 1, 1) for nonce in range(3)]
    for tx in txs:
        assert pool.admit(tx, STATE, 0, SOURCE_PEER).ok
    state = STATE
    for step, tx in enumerate(txs[:2], start=1):
        applied = build_block(state, [tx], CONTEXT, 0, 0, 2000, pool.signature_cache).applied
        state = applied.state
        pool.update(state, applied.tx_hashes, committed_at_ms=step * 5_000)
    assert pool.get_overdue(state, 10_000 + WAIT_MS - 1, WAIT_MS, 0) is None
    overdue = pool.get_overdue(state, 10_000 + WAIT_MS, WAIT_MS, 0)
    assert overdue is not None and overdue.tx_hash == get_tx_hash(txs[2])


def test_gapped_txs_and_txs_behind_a_pending_one_are_never_overdue() -> None:
    pool = make_pool()
    gapped = make_transfer(1, 2, 0, 1)  # nonces 0 and 1 of sender 1 never came
    assert pool.admit(gapped, STATE, 0, SOURCE_PEER).ok
    assert pool.get_overdue(STATE, 60_000, WAIT_MS, 0) is None
    first, second = make_transfer(0, 0, 1, 1), make_transfer(0, 1, 1, 1)
    assert pool.admit(first, STATE, 10, SOURCE_PEER).ok
    assert pool.admit(second, STATE, 20, SOURCE_PEER).ok
    overdue = pool.get_overdue(STATE, 60_000, WAIT_MS, 0)
    assert overdue is not None and overdue.tx_hash == get_tx_hash(first)


def test_a_tx_that_no_longer_applies_is_not_overdue() -> None:
    """Sender 3 holds 50: its pending transfer of 45 applied when admitted, but another
    of its txs (one this pool did not hold) spent the balance."""
    pool = make_pool()
    assert pool.admit(make_transfer(3, 1, 1, 45), STATE, 0, SOURCE_PEER).ok
    other = build_block(STATE, [make_transfer(3, 0, 1, 45)], CONTEXT, 0, 0, 2000).applied
    pool.update(other.state, other.tx_hashes, committed_at_ms=0)
    assert pool.get_pending_nonces(KEYS[3].public_key) == [1]  # now next, not gapped
    assert pool.get_overdue(other.state, 60_000, WAIT_MS, 0) is None
    assert len(pool) == 1  # the TTL takes it, not the timer
