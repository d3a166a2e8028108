"""PBFT's request timer against a primary that keeps the chain moving but leaves a tx out.

The censoring primary here is validator 0 never hearing of the tx (the cluster's filter
drops every relay frame to it that carries the tx): to the backups that is the same as
a primary that holds the tx and leaves it out, a valid tx pending while blocks commit
without it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

from node_harness import Cluster, make_config, transfer

from node.codec import get_tx_hash
from node.wire import FRAME_TX_BATCH, get_frame_kind

REQUEST_TIMEOUT_TICKS = 40
STEPS_MAX = 6 * REQUEST_TIMEOUT_TICKS


def make_cluster(request_timeout_ticks: int) -> Cluster:
    config = make_config()
    consensus = dataclasses.replace(config.consensus, request_timeout_ticks=request_timeout_ticks)
    return Cluster(config=dataclasses.replace(config, consensus=consensus))


def censor_at_primary(cluster: Cluster, tx: bytes) -> None:
    cluster.filter = lambda sender, to, frame: not (
        to == 0 and get_frame_kind(frame) == FRAME_TX_BATCH and tx in frame)


def is_committed(cluster: Cluster, tx: bytes) -> bool:
    return all((status := driver.get_tx(get_tx_hash(tx))) is not None
               and status.status == "committed" for driver in cluster.live())


def run_with_traffic(cluster: Cluster, censored: bytes, steps: int,
                     nonces: Iterator[int] | None = None) -> int:
    """Step with sender 2 sending a tx to validator 3 every few steps (its nonces from
    ``nonces``), so blocks commit all along; returns the step the censored tx committed
    at everywhere, or -1."""
    nonces = itertools.count() if nonces is None else nonces
    for step in range(1, steps + 1):
        if step % 4 == 0:
            assert cluster.drivers[3].submit_tx(transfer(2, next(nonces))).status == "accepted"
        cluster.step()
        if is_committed(cluster, censored):
            return step
    return -1


def test_a_censored_tx_commits_after_f_plus_one_timers_replace_the_primary() -> None:
    cluster = make_cluster(REQUEST_TIMEOUT_TICKS)
    censored = transfer(1, 0)
    censor_at_primary(cluster, censored)
    assert cluster.drivers[1].submit_tx(censored).status == "accepted"
    heights: list[int] = []
    views: list[int] = []
    nonces = itertools.count()

    def step_and_watch(steps: int) -> int:
        committed = run_with_traffic(cluster, censored, steps, nonces)
        heights.append(cluster.drivers[2].state.height)
        views.append(cluster.drivers[2].replica.view)
        return committed

    step_and_watch(REQUEST_TIMEOUT_TICKS - 2)
    assert views == [0] and heights[0] >= 3  # the chain moves without the tx
    committed_step = step_and_watch(STEPS_MAX)
    assert committed_step > 0, "the censored tx never committed"
    assert all(driver.replica.view >= 1 for driver in cluster.live())
    assert len({driver.state.last_block_hash for driver in cluster.live()}) == 1
    # The origin's timer fired first and sent the tx to everyone; the other backups'
    # timers, started then, made f+1 and the view changed.
    assert cluster.drivers[1].request_timeouts_total >= 1
    assert sum(cluster.drivers[i].request_timeouts_total >= 1 for i in (2, 3)) >= 1
    assert cluster.drivers[0].request_timeouts_total == 0


def test_without_the_timer_a_censoring_primary_keeps_its_view_and_the_tx_waits() -> None:
    cluster = make_cluster(0)
    censored = transfer(1, 0)
    censor_at_primary(cluster, censored)
    assert cluster.drivers[1].submit_tx(censored).status == "accepted"
    assert run_with_traffic(cluster, censored, STEPS_MAX) == -1
    assert all(driver.replica.view == 0 for driver in cluster.live())
    assert cluster.drivers[2].state.height >= 20


def test_the_wait_stretches_to_three_commit_latencies_of_a_slow_chain() -> None:
    """An honest primary draining a backlog keeps every tx waiting long: a backup whose
    local txs took 10 s each to commit waits three such latencies (30 s) for a tx, not
    the 2 s timeout. The origin, with no other txs to update its estimate, fires at 30 s;
    validator 3, whose own txs commit fast, joins it 2 s after the broadcast."""
    cluster = make_cluster(REQUEST_TIMEOUT_TICKS)
    censored = transfer(1, 0)
    censor_at_primary(cluster, censored)
    for driver in cluster.drivers:
        driver.mempool.commit_latency_ms = 10_000.0
    assert cluster.drivers[1].submit_tx(censored).status == "accepted"
    submitted_s = cluster.now
    fired_s = committed_s = None
    nonces = itertools.count()
    for step in range(1, 1_000):
        if step % 4 == 0:
            assert cluster.drivers[3].submit_tx(transfer(2, next(nonces))).status == "accepted"
        cluster.step()
        if fired_s is None and cluster.drivers[1].request_timeouts_total:
            fired_s = cluster.now - submitted_s
        if is_committed(cluster, censored):
            committed_s = cluster.now - submitted_s
            break
    assert fired_s is not None and 29.9 <= fired_s <= 31.5
    assert committed_s is not None and committed_s > fired_s
    assert cluster.drivers[3].request_timeouts_total >= 1


def test_a_healthy_busy_chain_never_times_a_request_out() -> None:
    """Txs committing all along, and a client's tx waiting behind a nonce gap it left
    for longer than the timeout: neither is a primary's fault."""
    cluster = make_cluster(REQUEST_TIMEOUT_TICKS)
    gapped = transfer(1, 3)  # nonces 0..2 of sender 1 never come
    assert cluster.drivers[2].submit_tx(gapped).status == "accepted"
    assert run_with_traffic(cluster, gapped, 4 * REQUEST_TIMEOUT_TICKS) == -1
    assert all(driver.request_timeouts_total == 0 for driver in cluster.live())
    assert all(driver.replica.view == 0 for driver in cluster.live())
    assert cluster.drivers[2].state.height >= 20
