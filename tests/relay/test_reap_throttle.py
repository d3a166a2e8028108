"""The primary reaps its mempool only when it may actually propose what it reaps."""

from __future__ import annotations

from typing import Any

from node_harness import TICK_MS, Cluster, transfer

from node.node import Driver


def count_reaps(driver: Driver) -> list[int]:
    calls = [0]
    reap = driver.mempool.reap

    def counted(*args: Any, **kwargs: Any) -> list[bytes]:
        calls[0] += 1
        return reap(*args, **kwargs)

    driver.mempool.reap = counted  # type: ignore[method-assign]
    return calls


def run_until_just_proposed(cluster: Cluster, primary: Driver) -> None:
    before = primary.proposals_total
    cluster.run_until(lambda: primary.proposals_total > before, steps_max=50)
    cluster.deliver_all()


def churn_without_time_passing(cluster: Cluster, primary: Driver, ticks: int) -> None:
    """Consensus frames and ticks reach the primary; the clock stands still."""
    for _ in range(ticks):
        primary.tick()
        cluster.deliver_all()


def test_no_reap_below_a_block_before_the_build_interval() -> None:
    cluster = Cluster()
    primary = cluster.drivers[0]
    assert primary.replica.get_proposal_slot() is not None
    run_until_just_proposed(cluster, primary)
    calls = count_reaps(primary)
    for nonce in range(5):  # far below block.txs_max = 100
        assert primary.submit_tx(transfer(0, nonce)).status == "accepted"
    churn_without_time_passing(cluster, primary, 3)
    assert calls[0] == 0
    height = primary.state.height
    cluster.run_until(lambda: primary.state.height > height and not len(primary.mempool))
    assert calls[0] >= 1  # once the interval passed, the txs went into a block


def test_a_full_pool_that_reaps_a_partial_block_is_not_reaped_again_until_due() -> None:
    cluster = Cluster()
    primary = cluster.drivers[0]
    run_until_just_proposed(cluster, primary)
    calls = count_reaps(primary)
    # 128 txs >= block.txs_max = 100, but all behind a nonce gap: none can apply yet.
    for sender in (0, 1):
        for nonce in range(1, 65):
            assert primary.submit_tx(transfer(sender, nonce)).status == "accepted"
    assert len(primary.mempool) >= primary.block_txs_max
    churn_without_time_passing(cluster, primary, 3)
    assert calls[0] == 1  # the first event looked; the next ones knew it gives no block
    # The gap fills: within the build interval those txs go into blocks.
    for sender in (0, 1):
        assert primary.submit_tx(transfer(sender, 0)).status == "accepted"
    height = primary.state.height
    steps = 10 * (primary.config.block.build_interval_ms // TICK_MS + 1)
    cluster.run_until(lambda: not len(primary.mempool), steps_max=steps)
    assert primary.state.height > height
