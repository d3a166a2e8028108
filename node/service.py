"""What the HTTP API needs from the node: the ``NodeService`` protocol and its result types.

The node runs on trio (guest mode) and the aiohttp API on asyncio, on one
thread. The runtime's bridge implements :class:`NodeService` on the asyncio
side by sending requests over bounded channels to the trio side; the API only
ever sees this protocol, so it can be tested against an in-memory fake.

Back-pressure is explicit: when a bridge channel is full the bridge raises
:class:`Overloaded` at once (the API answers 503), it never waits unboundedly.
A full mempool is a rejection with code :data:`REJECT_MEMPOOL_FULL`, which the
API also answers with 503 (the client should retry later, the tx was fine).

Events fan out through :class:`EventSubscription`: one bounded buffer per
subscriber. Publishing never blocks; when a subscriber's buffer is full the
event is dropped and counted, and the subscriber's next read returns a
:class:`DroppedNotice` with the count before any further event. A slow
websocket client therefore costs at most ``queue_size_max`` events of memory.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from node.codec import BlockHeader, CommitCertificate

EVENT_QUEUE_SIZE_MAX = 1024

# Rejection codes a service may return in SubmitResult.code. A service may use
# other codes too; the API passes any code through as a 400, except the
# overload codes, which it answers with 503.
REJECT_INVALID_TX = "invalid_tx"
REJECT_BAD_SIGNATURE = "bad_signature"
REJECT_BAD_NONCE = "bad_nonce"
REJECT_INSUFFICIENT_BALANCE = "insufficient_balance"
REJECT_UNKNOWN_ACCOUNT = "unknown_account"
REJECT_MEMPOOL_FULL = "mempool_full"
REJECT_SENDER_QUEUE_FULL = "sender_queue_full"
OVERLOAD_CODES = frozenset({REJECT_MEMPOOL_FULL, REJECT_SENDER_QUEUE_FULL})


class Overloaded(Exception):
    """The node cannot take the request now (a bridge channel is full); retry later."""


# --- results -------------------------------------------------------------------

SubmitStatus = Literal["accepted", "duplicate", "rejected"]


@dataclass(frozen=True)
class SubmitResult:
    """What became of a submitted transaction. ``code``/``message`` are set iff rejected."""

    tx_hash: bytes
    status: SubmitStatus
    code: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        assert len(self.tx_hash) == 32, "tx hashes are SHA-256 digests"
        assert (self.status == "rejected") == bool(self.code), "a code iff rejected"


@dataclass(frozen=True)
class TxStatus:
    """A known transaction: pending in the mempool, or committed at ``height``/``index``."""

    tx_hash: bytes
    status: Literal["pending", "committed"]
    height: int | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        committed = self.status == "committed"
        assert committed == (self.height is not None) == (self.index is not None)


@dataclass(frozen=True)
class BlockInfo:
    """A committed block: its header, hash, tx hashes, canonical bytes and certificate.

    ``certificate`` is None only where the node has the block but not (yet) its
    commit certificate (e.g. the genesis block, or a block fetched mid catch-up).
    """

    header: BlockHeader
    block_hash: bytes
    tx_hashes: tuple[bytes, ...]
    block_bytes: bytes
    certificate: CommitCertificate | None
    # This node's wall clock when it committed the block (None: not recorded, e.g. genesis).
    committed_time_ms: int | None = None


@dataclass(frozen=True)
class ValidatorStatus:
    index: int
    name: str
    public_key: bytes
    connected: bool  # a live transport stream to it (True for the node itself)


@dataclass(frozen=True)
class NodeStatus:
    chain_id: str
    moniker: str
    public_key: bytes
    peer_id: str
    validator_index: int | None  # None: this node is not in the validator set
    height: int  # latest committed height (0 before the first block)
    latest_block_hash: bytes | None  # None before the first block
    view: int
    primary_index: int
    peers_connected: int
    validators: tuple[ValidatorStatus, ...]
    catching_up: bool
    mempool_txs: int = 0


@dataclass(frozen=True)
class AccountInfo:
    """An account's state. Unknown accounts read as balance 0, nonce 0."""

    account_id: bytes
    balance: int
    nonce: int  # the nonce the account's next transaction must carry
    reputation: float | None = None  # set by the learning part
    epsilon_spent: float | None = None  # differential-privacy budget used so far


@dataclass(frozen=True)
class BlockEvent:
    height: int
    block_hash: bytes
    tx_count: int
    type: Literal["block"] = "block"


@dataclass(frozen=True)
class TxEvent:
    tx_hash: bytes
    height: int
    index: int
    type: Literal["tx"] = "tx"


@dataclass(frozen=True)
class DroppedNotice:
    """``count`` events were dropped for this subscriber since its last notice."""

    count: int
    type: Literal["dropped"] = "dropped"


NodeEvent = BlockEvent | TxEvent


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative counts per upper bound (seconds), then +Inf."""

    bounds_seconds: tuple[float, ...]
    cumulative_counts: tuple[int, ...]  # one per bound
    count: int  # the +Inf bucket: all observations
    sum_seconds: float

    def __post_init__(self) -> None:
        assert len(self.bounds_seconds) == len(self.cumulative_counts)
        assert list(self.bounds_seconds) == sorted(set(self.bounds_seconds))
        counts = [*self.cumulative_counts, self.count]
        assert all(a <= b for a, b in zip(counts, counts[1:], strict=False))


def get_empty_histogram(bounds_seconds: tuple[float, ...]) -> Histogram:
    return Histogram(bounds_seconds, tuple(0 for _ in bounds_seconds), 0, 0.0)


LATENCY_BOUNDS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Metrics:
    """A snapshot the API renders as Prometheus text (``node.api.render_metrics``)."""

    height: int = 0
    view: int = 0
    view_changes_total: int = 0
    blocks_committed_total: int = 0
    txs_committed_total: int = 0
    mempool_txs: int = 0
    mempool_size_bytes: int = 0
    peers_connected: int = 0
    # proposal to commit, as seen by this node
    consensus_latency: Histogram = field(
        default_factory=lambda: get_empty_histogram(LATENCY_BOUNDS_SECONDS)
    )
    # e.g. {"oversize": 3, "bad_signature": 1, "queue_full": 7}
    messages_dropped_total: Mapping[str, int] = field(default_factory=dict)
    # further gauges/counters by metric name (learning metrics, for instance)
    extra_gauges: Mapping[str, float] = field(default_factory=dict)


# --- event fan-out -------------------------------------------------------------


class EventSubscription:
    """One subscriber's bounded event buffer; ``publish`` never blocks.

    Call ``publish`` and ``get`` from the asyncio loop's thread (trio guest-mode
    code runs on it too). ``get`` returns a :class:`DroppedNotice` where events
    were dropped, so the consumer learns of each gap in order.
    """

    def __init__(
        self, queue_size_max: int = EVENT_QUEUE_SIZE_MAX, on_close: Callable[[], None] | None = None
    ) -> None:
        assert queue_size_max > 0
        self.queue_size_max = queue_size_max
        # Events and drop notices in order; each notice is followed by an event,
        # so the deque holds at most 2 * queue_size_max items.
        self._items: collections.deque[NodeEvent | DroppedNotice] = collections.deque()
        self._event_count = 0
        self._dropped_pending = 0
        self.dropped_total = 0
        self._ready = asyncio.Event()
        self._on_close = on_close
        self.closed = False

    def publish(self, event: NodeEvent) -> bool:
        """Buffer ``event``; False (and counted) if the buffer is full or closed."""
        if self.closed:
            return False
        if self._event_count >= self.queue_size_max:
            self._dropped_pending += 1
            self.dropped_total += 1
            self._ready.set()
            return False
        if self._dropped_pending:
            # The notice sits exactly where the gap is: after the older events
            # still buffered, before this newer one.
            self._items.append(DroppedNotice(self._dropped_pending))
            self._dropped_pending = 0
        self._items.append(event)
        self._event_count += 1
        self._ready.set()
        return True

    def get_nowait(self) -> NodeEvent | DroppedNotice | None:
        if self._items:
            item = self._items.popleft()
            if not isinstance(item, DroppedNotice):
                self._event_count -= 1
            return item
        if self._dropped_pending:
            notice = DroppedNotice(self._dropped_pending)
            self._dropped_pending = 0
            return notice
        self._ready.clear()
        return None

    async def get(self) -> NodeEvent | DroppedNotice:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            if self.closed:
                raise EOFError("subscription closed")
            await self._ready.wait()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._items.clear()
        self._event_count = 0
        self._ready.set()
        if self._on_close is not None:
            self._on_close()

    def __len__(self) -> int:
        return self._event_count


class EventHub:
    """Fans events out to subscribers; a bridge or fake owns one and publishes into it."""

    def __init__(self, subscribers_max: int = 256) -> None:
        self.subscribers_max = subscribers_max
        self._subscribers: set[EventSubscription] = set()

    def subscribe(self, queue_size_max: int = EVENT_QUEUE_SIZE_MAX) -> EventSubscription:
        if len(self._subscribers) >= self.subscribers_max:
            raise Overloaded(f"{self.subscribers_max} event subscribers already")
        subscription = EventSubscription(queue_size_max)
        subscription._on_close = lambda: self._subscribers.discard(subscription)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, event: NodeEvent) -> None:
        for subscription in list(self._subscribers):
            subscription.publish(event)

    def __len__(self) -> int:
        return len(self._subscribers)


# --- the protocol --------------------------------------------------------------


class NodeService(Protocol):
    """The node as the API sees it. Every method may raise :class:`Overloaded`."""

    async def submit_tx(self, tx_bytes: bytes) -> SubmitResult:
        """Offer a canonical encoded signed tx (the API has decoded it once already)."""
        ...

    async def submit_txs(self, txs: Sequence[bytes]) -> list[SubmitResult]:
        """``submit_tx`` for each, in order, in one call (one wake-up of the node, not one
        per tx); the caller bounds ``len(txs)``."""
        ...

    async def get_tx(self, tx_hash: bytes) -> TxStatus | None:
        """None if the tx is neither pending nor committed."""
        ...

    async def get_block(self, height: int | None) -> BlockInfo | None:
        """The block at ``height`` (None: the latest); None if there is none."""
        ...

    async def get_status(self) -> NodeStatus: ...

    async def get_account(self, account_id: bytes) -> AccountInfo: ...

    def subscribe_events(self, queue_size_max: int) -> EventSubscription:
        """A new bounded subscription (raise Overloaded if too many); close it when done."""
        ...

    async def get_metrics(self) -> Metrics: ...
