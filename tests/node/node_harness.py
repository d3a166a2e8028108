"""An in-process cluster of drivers over MemoryStores, a fake clock and a FIFO router.

Frames are queued per send and delivered in order by :meth:`Cluster.deliver_all`;
:meth:`Cluster.step` delivers everything, then advances the shared clock one tick and
ticks every live driver. Tests drop or hold frames through ``Cluster.filter``. With
``ticks="catch_up"`` a driver is woken as node.Node does it: only at its
get_next_tick_time, and caught up before every frame.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Any

from node.client import make_transfer
from node.config import RELAY_PRIMARY, BlockConfig, Config, ConsensusConfig, MempoolConfig
from node.genesis import Genesis, Member, ValidatorInfo
from node.keys import KeyPair
from node.node import TICK_EPSILON, Driver
from node.store import MemoryStore
from node.transport import TrafficClass

CHAIN_ID = "node-test"
VALIDATOR_KEYS = [KeyPair.from_seed(bytes([50 + i]) * 32) for i in range(4)]
ACCOUNT_KEYS = [KeyPair.from_seed(bytes([90 + i]) * 32) for i in range(4)]
TICK_MS = 50
STEPS_MAX = 2_000


def make_genesis(n: int = 4) -> Genesis:
    return Genesis(
        chain_id=CHAIN_ID,
        genesis_time_ms=1_000,
        validators=tuple(
            ValidatorInfo(f"v{i}", VALIDATOR_KEYS[i].public_key, "127.0.0.1", 1000 + i,
                          "127.0.0.1", 2000 + i)
            for i in range(n)
        ),
        members=(Member("m0", ACCOUNT_KEYS[0].public_key, "both"),),
        balances=tuple(sorted((k.public_key, 10**9) for k in ACCOUNT_KEYS)),
    )


def make_config(relay: str = RELAY_PRIMARY) -> Config:
    return dataclasses.replace(
        Config(),
        consensus=ConsensusConfig(tick_ms=TICK_MS, propose_timeout_ticks=4,
                                  view_change_timeout_ticks=24, window=16,
                                  checkpoint_interval=4),
        block=BlockConfig(txs_max=100, build_interval_ms=TICK_MS),
        mempool=MempoolConfig(relay=relay),
    )


def transfer(sender: int, nonce: int, amount: int = 1) -> bytes:
    return make_transfer(ACCOUNT_KEYS[sender], CHAIN_ID, ACCOUNT_KEYS[(sender + 1) % 4].public_key,
                         amount, nonce)


class FakeNetwork:
    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.sent: list[tuple[int, bytes]] = []
        self.log: list[tuple[str, Any]] | None = None  # set by a test to trace sends

    def send(self, to_index: int, frame: bytes,
             traffic: TrafficClass = TrafficClass.CONSENSUS) -> bool:
        self.sent.append((to_index, frame))
        if self.log is not None:
            self.log.append(("send", frame))
        self.cluster.queue.append((self.index, to_index, frame, traffic))
        return True

    def broadcast(self, frame: bytes, traffic: TrafficClass = TrafficClass.CONSENSUS) -> int:
        peers = [i for i in range(len(self.cluster.drivers)) if i != self.index]
        for peer in peers:
            self.send(peer, frame, traffic)
        return len(peers)

    def get_connected_peers(self) -> list[int]:
        return [i for i in range(len(self.cluster.drivers)) if i != self.index]

    def get_metrics(self) -> dict[str, Any]:
        return {"drops": {"outbound_queue_full": 0}, "refused_connections": 0}


class Cluster:
    def __init__(self, n: int = 4, relay: str = RELAY_PRIMARY, ticks: str = "every",
                 config: Config | None = None) -> None:
        assert ticks in ("every", "catch_up")
        self.ticks = ticks
        self.wakes = 0  # catch_up: the times a driver was woken for its ticks
        self.genesis = make_genesis(n)
        self.config = make_config(relay) if config is None else config
        self.now = 100.0
        self.queue: deque[tuple[int, int, bytes, TrafficClass]] = deque()
        self.stores = [MemoryStore() for _ in range(n)]
        self.networks = [FakeNetwork(self, i) for i in range(n)]
        self.down: set[int] = set()
        self.filter: Callable[[int, int, bytes], bool] = lambda sender, to, frame: True
        self.drivers = [self.make_driver(i) for i in range(n)]

    def make_driver(self, index: int) -> Driver:
        return Driver(self.config, self.genesis, VALIDATOR_KEYS[index], self.stores[index],
                      self.networks[index], clock=lambda: self.now,
                      wall_ms=lambda: int(self.now * 1000))

    def restart(self, index: int) -> Driver:
        self.drivers[index] = self.make_driver(index)
        self.down.discard(index)
        return self.drivers[index]

    def deliver_all(self, frames_max: int = 100_000) -> None:
        for _ in range(frames_max):
            if not self.queue:
                return
            sender, to, frame, traffic = self.queue.popleft()
            if to in self.down or sender in self.down or not self.filter(sender, to, frame):
                continue
            driver = self.drivers[to]
            if self.ticks == "catch_up":
                driver.catch_up_ticks()
            if traffic == TrafficClass.CONSENSUS:
                driver.on_consensus_frame(sender, frame)
            else:
                driver.on_tx_batch_frame(sender, frame)
        raise AssertionError("frames keep coming: a message storm")

    def step(self) -> None:
        self.deliver_all()
        self.now += TICK_MS / 1000
        for i, driver in enumerate(self.drivers):
            if i not in self.down:
                relay = driver.take_relay_frame()
                if relay is not None:
                    for peer in relay[1]:
                        self.networks[i].send(peer, relay[0], TrafficClass.TRANSACTIONS)
                if self.ticks == "every":
                    driver.tick()
                elif self.now >= driver.get_next_tick_time() - TICK_EPSILON * driver.tick_s:
                    self.wakes += 1
                    driver.catch_up_ticks()

    def run_until(self, predicate: Callable[[], bool], steps_max: int = STEPS_MAX) -> None:
        for _ in range(steps_max):
            if predicate():
                return
            self.step()
        raise AssertionError(f"condition not reached in {steps_max} steps")

    def live(self) -> list[Driver]:
        return [d for i, d in enumerate(self.drivers) if i not in self.down]

    def get_heights(self) -> list[int]:
        return [d.state.height for d in self.live()]
