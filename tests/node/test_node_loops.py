"""Node's trio loops: consensus frames are not held behind a large tx batch or API batch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import trio

from node.node import ADMIT_CHUNK_TXS, Node
from node.transport import InboundQueue, TrafficClass

STEP_TIMEOUT_S = 10.0


class FakeTransport:
    def __init__(self) -> None:
        self.queues = {traffic: InboundQueue(64, 1 << 20) for traffic in TrafficClass}

    def inbound(self, traffic: TrafficClass) -> InboundQueue:
        return self.queues[traffic]


class RecordingDriver:
    """Records what the loops hand it, in order; a consensus frame arrives while the
    first chunk of txs is being admitted."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.log: list[str] = []
        self.on_local_tx: Any = None
        self.done = trio.Event()

    def decode_peer_tx_batch(self, frame: bytes) -> Sequence[bytes]:
        return [frame[i : i + 1] for i in range(len(frame))]

    def admit_peer_txs(self, txs: Iterable[bytes]) -> None:
        self._admit(list(txs))

    def submit_tx(self, tx_bytes: bytes) -> str:
        self._admit([tx_bytes])
        return "accepted"

    def _admit(self, txs: list[bytes]) -> None:
        first = not any(entry.startswith("txs") for entry in self.log)
        self.log.append(f"txs {len(txs)}")
        if first:  # a vote lands on the socket while the node is busy admitting
            assert self.transport.queues[TrafficClass.CONSENSUS].put_nowait((1, b"vote"))

    def on_consensus_frame(self, sender: int, frame: bytes) -> None:
        self.log.append(f"consensus {frame.decode()}")

    def catch_up_ticks(self) -> None:
        pass  # no ticks here: the loop under test is not running


def run_loop_until_admitted(total_txs: int, start: Any) -> list[str]:
    transport = FakeTransport()
    driver = RecordingDriver(transport)
    node = Node(driver, transport)  # type: ignore[arg-type]

    async def main() -> None:
        with trio.fail_after(STEP_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node._consensus_loop)
                nursery.start_soon(node._tx_loop)
                await start(node, transport)
                while sum(int(e.split()[1]) for e in driver.log if e.startswith("txs")) < total_txs:
                    await trio.sleep(0.001)
                nursery.cancel_scope.cancel()

    trio.run(main)
    return driver.log


def test_a_vote_arriving_during_a_relay_batch_is_handled_before_the_rest_of_it() -> None:
    total = 3 * ADMIT_CHUNK_TXS + 7

    async def start(node: Node, transport: FakeTransport) -> None:
        assert transport.queues[TrafficClass.TRANSACTIONS].put_nowait((2, b"t" * total))

    log = run_loop_until_admitted(total, start)
    assert log[0] == f"txs {ADMIT_CHUNK_TXS}"
    assert log[1] == "consensus vote"  # not after all the batch's signature checks
    assert log[2:] == [f"txs {ADMIT_CHUNK_TXS}"] * 2 + ["txs 7"]


def test_a_vote_arriving_during_an_api_batch_is_handled_before_the_rest_of_it() -> None:
    total = 2 * ADMIT_CHUNK_TXS
    answers: list[list[str]] = []

    async def start(node: Node, transport: FakeTransport) -> None:
        answers.append(await node._submit_txs([bytes([i % 256]) for i in range(total)]))

    log = run_loop_until_admitted(total, start)
    assert answers == [["accepted"] * total]
    first_vote = log.index("consensus vote")
    assert first_vote == ADMIT_CHUNK_TXS  # after the first chunk's txs, before the second's
    assert log.count("txs 1") == total
