"""Re-relay of local txs whose relay batch was lost: mempool-level and in a cluster."""

from __future__ import annotations

import pytest
from node_harness import Cluster, transfer

from node import mempool as mempool_module
from node.codec import get_tx_hash
from node.config import RELAY_ALL, RELAY_PRIMARY
from node.ledger import get_genesis_state
from node.mempool import (
    KIND_TX_BATCH,
    SOURCE_LOCAL,
    SOURCE_PEER,
    Mempool,
    MempoolConfig,
    decode_tx_batch,
)
from tests.ledger.helpers import CHAIN_ID as LEDGER_CHAIN_ID
from tests.ledger.helpers import KEYS
from tests.ledger.helpers import make_genesis as make_ledger_genesis
from tests.ledger.helpers import make_transfer as make_ledger_transfer


def make_pool(cluster: Cluster, **config: int) -> Mempool:
    return Mempool(cluster.genesis.chain_id, config=MempoolConfig(**config))


def test_a_pending_local_tx_is_relayed_again_with_backoff_until_it_commits() -> None:
    cluster = Cluster()
    state = get_genesis_state(cluster.genesis)
    pool = make_pool(cluster, relay_retry_ms=1_000, relay_retry_max_ms=4_000)
    tx = transfer(0, 0)
    assert pool.admit(tx, state, 0, SOURCE_LOCAL).ok
    assert pool.take_relay_batch(10, 10**6, 0) == [tx]  # first relay (lost, say)
    assert pool.take_relay_batch(10, 10**6, 999) == []
    assert pool.take_relay_batch(10, 10**6, 1_000) == [tx]  # due after relay_retry_ms
    assert pool.take_relay_batch(10, 10**6, 2_999) == []  # backoff doubled: 2 s
    assert pool.take_relay_batch(10, 10**6, 3_000) == [tx]
    assert pool.take_relay_batch(10, 10**6, 6_999) == []  # 4 s, the cap
    assert pool.take_relay_batch(10, 10**6, 7_000) == [tx]
    assert pool.take_relay_batch(10, 10**6, 11_000) == [tx]  # stays at the cap
    assert pool.get_metrics()["mempool_relay_retries"] == 4
    pool.update(state, [get_tx_hash(tx)])  # committed: never relayed again
    assert pool.take_relay_batch(10, 10**6, 100_000) == []
    assert pool.get_metrics()["mempool_relay_retry_queue"] == 0


def test_peer_txs_are_never_re_relayed() -> None:
    cluster = Cluster()
    state = get_genesis_state(cluster.genesis)
    pool = make_pool(cluster)
    assert pool.admit(transfer(1, 0), state, 0, SOURCE_PEER).ok
    assert pool.take_relay_batch(10, 10**6, 0) == []
    assert pool.take_relay_batch(10, 10**6, 60_000) == []


def test_retries_per_batch_are_bounded_and_new_txs_go_first() -> None:
    balances = {i: 1_000 for i in range(len(KEYS))}
    state = get_genesis_state(make_ledger_genesis(balances))
    pool = Mempool(LEDGER_CHAIN_ID, config=MempoolConfig(relay_retry_txs_max=3))
    old = [make_ledger_transfer(sender, 0, 0, 1) for sender in range(1, 8)]
    for tx in old:
        assert pool.admit(tx, state, 0, SOURCE_LOCAL).ok
    assert pool.take_relay_batch(100, 10**6, 0) == old
    new = make_ledger_transfer(0, 0, 1, 1)
    assert pool.admit(new, state, 1_000, SOURCE_LOCAL).ok
    assert pool.take_relay_batch(100, 10**6, 1_000) == [new, *old[:3]]
    assert pool.take_relay_batch(100, 10**6, 1_000) == old[3:6]
    assert pool.take_relay_batch(0, 10**6, 1_000) == []  # the count bound holds too
    assert pool.take_relay_batch(100, 10**6, 1_000) == old[6:]
    assert pool.take_relay_batch(100, 10**6, 1_000) == []


def test_a_senders_lowest_pending_tx_drives_the_retry_of_the_run_after_it() -> None:
    cluster = Cluster()
    state = get_genesis_state(cluster.genesis)
    pool = make_pool(cluster)
    txs = [transfer(0, n) for n in range(4)]
    for tx in txs[:3]:
        assert pool.admit(tx, state, 0, SOURCE_LOCAL).ok
    assert pool.take_relay_batch(10, 10**6, 0) == txs[:3]
    assert pool.admit(txs[3], state, 500, SOURCE_LOCAL).ok
    assert pool.take_relay_batch(10, 10**6, 500) == txs[3:]
    # The lowest is due at 1 s: it goes with the run relayed in its batch (a peer may have
    # lost or refused them all), each once, in nonce order. txs[3] was relayed later on its
    # own: it waits for its own backoff, and behind a pending lowest, for that one.
    assert pool.take_relay_batch(10, 10**6, 1_000) == txs[:3]
    assert pool.take_relay_batch(10, 10**6, 1_500) == []  # txs[3] is due but not the lowest
    assert pool.take_relay_batch(10, 10**6, 2_500) == []  # backoff doubled: due at 3 s
    pool.update(state, [get_tx_hash(txs[0])])  # it committed: txs[1] is the lowest now
    assert pool.take_relay_batch(10, 10**6, 3_000) == txs[1:3]
    assert pool.take_relay_batch(10, 10**6, 3_000) == []  # no stale item sends one twice
    pool.update(state, [get_tx_hash(tx) for tx in txs[1:3]])
    assert pool.take_relay_batch(10, 10**6, 3_500) == txs[3:]  # the lowest now, and due


def test_under_a_backlog_only_the_lowest_and_its_batch_mates_are_resent() -> None:
    # A client far ahead of a slow chain: one tx per relay batch, each still pending when
    # the lowest's backoff ends. Resending the whole run each time multiplied relay traffic.
    cluster = Cluster()
    state = get_genesis_state(cluster.genesis)
    pool = make_pool(cluster)
    txs = [transfer(0, n) for n in range(10)]
    for k, tx in enumerate(txs):
        assert pool.admit(tx, state, 100 * k, SOURCE_LOCAL).ok
        assert pool.take_relay_batch(10, 10**6, 100 * k) == [tx]
    assert pool.take_relay_batch(100, 10**6, 1_000) == txs[:1]  # not the 9 behind it
    retried = pool.get_metrics()["mempool_relay_retries"]
    assert retried == 1


def test_a_duplicate_is_answered_from_its_hash_without_decoding_or_verifying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = Cluster()
    state = get_genesis_state(cluster.genesis)
    pool = make_pool(cluster)
    tx = transfer(0, 0)
    assert pool.admit(tx, state, 0, SOURCE_PEER).ok

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a duplicate was decoded or verified again")

    monkeypatch.setattr(mempool_module, "decode_tx", must_not_run)
    monkeypatch.setattr(mempool_module, "verify_tx_signature", must_not_run)
    result = pool.admit(tx, state, 10, SOURCE_PEER)
    assert result.duplicate and result.tx_hash == get_tx_hash(tx)


@pytest.mark.parametrize("relay,frames_per_batch", [(RELAY_PRIMARY, 1), (RELAY_ALL, 3)])
def test_a_tx_whose_relay_batch_was_lost_reaches_the_primary_and_commits(
        relay: str, frames_per_batch: int) -> None:
    cluster = Cluster(relay=relay)
    origin = 2  # not the primary of view 0, so only a relay gets its txs into a block
    assert cluster.drivers[0].replica.get_proposal_slot() is not None
    relayed: list[list[bytes]] = []
    lost = 0

    def lose_the_first_batch(sender: int, to: int, frame: bytes) -> bool:
        nonlocal lost
        if sender != origin or frame[0] != KIND_TX_BATCH:
            return True
        relayed.append(decode_tx_batch(frame))
        if lost < frames_per_batch:  # the first batch: to the primary, or to every peer
            lost += 1
            return False
        return True

    cluster.filter = lose_the_first_batch
    txs = [transfer(0, n) for n in range(3)]
    for tx in txs:
        assert cluster.drivers[origin].submit_tx(tx).status == "accepted"
    hashes = [get_tx_hash(tx) for tx in txs]

    def is_committed_everywhere() -> bool:
        return all(
            (status := d.get_tx(h)) is not None and status.status == "committed"
            for d in cluster.drivers
            for h in hashes
        )

    # Relay retry after 1 s = 20 steps of 50 ms; well before any TTL or view change.
    cluster.run_until(is_committed_everywhere, steps_max=200)
    assert lost == frames_per_batch
    assert relayed[:frames_per_batch] == [txs] * frames_per_batch
    # the retry: the gap, then the run relayed with it, in order
    assert relayed[frames_per_batch] == txs
    retries = cluster.drivers[origin].mempool.get_metrics()["mempool_relay_retries"]
    assert retries >= 3
    batches = len(relayed)
    for _ in range(200):  # 10 s: committed txs are not relayed again
        cluster.step()
    assert len(relayed) == batches
    assert cluster.drivers[origin].mempool.get_metrics()["mempool_relay_retries"] == retries


def test_a_slow_chain_stretches_the_retry_to_twice_the_commit_latency() -> None:
    cluster = Cluster()
    state = get_genesis_state(cluster.genesis)
    pool = make_pool(cluster)
    committed = [transfer(0, n) for n in range(40)]
    waiting = transfer(1, 0)
    for tx in [*committed, waiting]:
        assert pool.admit(tx, state, 0, SOURCE_LOCAL).ok
    # Relayed while the chain looked fast: each tx's retry is due after 1 s.
    assert len(pool.take_relay_batch(100, 10**6, 0)) == 41
    for tx in committed:  # then each took 10 s from admission to commit
        pool.update(state, [get_tx_hash(tx)], committed_at_ms=10_000)
    latency_ms = pool.get_metrics()["mempool_commit_latency_ms"]
    assert 9_000 < latency_ms < 10_000  # the running mean approaches 10 s
    # Due at 1 s, but what counts is the latency of now: slow is not lost. (Scheduled
    # with the latency of the relay alone, a fresh closed loop at N = 16 resent ~11,600
    # txs per 10 s window that the primary held.)
    assert pool.take_relay_batch(10, 10**6, 1_000) == []
    assert pool.take_relay_batch(10, 10**6, 2 * latency_ms - 10) == []
    assert pool.take_relay_batch(10, 10**6, 2 * latency_ms + 10) == [waiting]
    assert pool.get_metrics()["mempool_relay_retries"] == 1
    # Rescheduled at that relay, with that latency: not at its 2 s backoff.
    assert pool.take_relay_batch(10, 10**6, 2 * latency_ms + 2_010) == []
    assert pool.take_relay_batch(10, 10**6, 4 * latency_ms + 20) == [waiting]


def record_tx_batches(cluster: Cluster) -> list[tuple[int, int, list[bytes]]]:
    """(from, to, txs) of every relay batch the cluster delivers or loses, in order."""
    batches: list[tuple[int, int, list[bytes]]] = []

    def record(sender: int, to: int, frame: bytes) -> bool:
        if frame[0] == KIND_TX_BATCH:
            batches.append((sender, to, decode_tx_batch(frame)))
        return True

    cluster.filter = record
    return batches


def test_a_backup_relays_to_the_primary_only_and_the_others_check_the_block() -> None:
    cluster = Cluster()  # relay = "primary", the default
    batches = record_tx_batches(cluster)
    tx = transfer(0, 0)
    assert cluster.drivers[2].submit_tx(tx).status == "accepted"
    tx_hash = get_tx_hash(tx)
    cluster.run_until(lambda: all(
        (status := d.get_tx(tx_hash)) is not None and status.status == "committed"
        for d in cluster.drivers))
    assert [(sender, to) for sender, to, _ in batches] == [(2, 0)]
    assert cluster.drivers[1].mempool.get_metrics()["mempool_admitted"] == 0
    assert cluster.drivers[3].mempool.get_metrics()["mempool_admitted"] == 0


def test_the_primary_relays_its_own_clients_txs_to_no_one() -> None:
    cluster = Cluster()
    batches = record_tx_batches(cluster)
    assert cluster.drivers[0].submit_tx(transfer(0, 0)).status == "accepted"
    for _ in range(40):
        cluster.step()
    assert batches == []


def test_only_retries_that_go_to_a_peer_are_counted() -> None:
    cluster = Cluster()
    cluster.down.update({2, 3})  # no quorum: nothing commits, every retry comes due
    assert cluster.drivers[0].submit_tx(transfer(0, 0)).status == "accepted"  # the primary
    assert cluster.drivers[1].submit_tx(transfer(1, 0)).status == "accepted"  # a backup
    for _ in range(100):  # 5 s: past the 1 s and 2 s backoffs
        cluster.step()
    retries = [cluster.drivers[i].mempool.get_metrics()["mempool_relay_retries"] for i in (0, 1)]
    assert retries[0] == 0  # the primary's batch went to no one
    assert retries[1] >= 1  # the backup resent its tx to the primary


def test_with_relay_all_every_backup_admits_the_tx_before_the_block() -> None:
    cluster = Cluster(relay=RELAY_ALL)
    batches = record_tx_batches(cluster)
    assert cluster.drivers[2].submit_tx(transfer(0, 0)).status == "accepted"
    cluster.step()  # relayed
    cluster.step()  # delivered
    assert sorted(to for _, to, _ in batches) == [0, 1, 3]
    assert all(cluster.drivers[i].mempool.get_metrics()["mempool_admitted"] == 1
               for i in (0, 1, 3))


def test_after_a_view_change_pending_txs_go_to_the_new_primary() -> None:
    cluster = Cluster()
    cluster.down.add(0)  # the primary of view 0 crashes: what 2 relays to it is lost
    batches = record_tx_batches(cluster)
    txs = [transfer(0, n) for n in range(3)]
    for tx in txs:
        assert cluster.drivers[2].submit_tx(tx).status == "accepted"
    hashes = [get_tx_hash(tx) for tx in txs]

    def is_committed() -> bool:
        return all((status := cluster.drivers[i].get_tx(h)) is not None
                   and status.status == "committed" for i in (1, 2, 3) for h in hashes)

    view_step = batch_step = -1
    for step in range(1, 401):
        cluster.step()
        if view_step < 0 and cluster.drivers[2].replica.view >= 1:
            view_step = step
        if batch_step < 0 and batches:
            batch_step = step
        if is_committed():
            break
    assert is_committed() and view_step > 0
    assert cluster.drivers[2].mempool.get_metrics()["mempool_relay_requeued"] >= 3
    # Requeued at the view change (a tick), relayed the next step and delivered the one
    # after, not at a later retry.
    assert batches[0] == (2, 1, txs) and batch_step - view_step <= 2
