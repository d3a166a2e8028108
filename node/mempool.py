"""The mempool: admission, dedup, per-sender nonce queues, bounds, TTL, reap and batch relay.

Admission (:meth:`Mempool.admit`) runs the cheap checks first and the
signature (~50 µs, the node's throughput bottleneck) last, so junk costs
little: size, decode, duplicate hash, nonce window, duplicate (sender, nonce),
balance reserve, pool bounds, then the signature through the shared
:class:`~node.ledger.SignatureCache`, so a tx verified here is never verified
again when it comes back in a block. The mempool never reads the clock:
``now_ms`` is passed in.

Each sender has a queue of pending txs keyed by nonce. A tx is admitted when
its nonce is in ``[account nonce, account nonce + nonce_gap_max]`` and no
pending tx has that nonce (a replacement is refused as ``duplicate_nonce``:
simple, and a client cannot churn the pool). Its cost (what it may debit) plus
the costs of the sender's pending txs must fit the account balance.

:meth:`Mempool.reap` hands out txs for the next block: senders in order of
their oldest pending tx (ties by key), one tx per sender per round, each
trial-applied with the ledger's own :class:`~node.ledger.BlockBuilder`, so what
it returns applies in sequence. After a commit, :meth:`Mempool.update` drops
committed and stale txs; :meth:`Mempool.evict_expired` drops those older than
the TTL.

A sender's txs past the first nonce neither its account nor the pool has are
*gapped*: they cannot apply until that nonce comes. The pool tracks them (a
flag per entry, the run's end per sender) so that its room checks can tell
them apart: a client's txs fill up to LOCAL_FILL_PERCENT of the bounds, and
past that mark applicable txs (only) are still taken while the applicable
ones are under it, up to LOCAL_HEADROOM_PERCENT more. Counted together, a
mark full of gapped txs refused the txs that would fill their gaps, and
nothing could apply until the TTL (a client sending one account's batches
concurrently, one refused and a later one admitted, did that: the seventh
session's closed-loop stall); now a gap's filler finds room as long as the
applicable txs before it leave at each commit.

The request timer (:meth:`Mempool.get_overdue`, PBFT's, checked by the node): the
oldest pending tx that would apply next on the committed state and has been able to
for a given wait. A sender's lowest tx can apply from the later of its admission and
the commit that moved its account to its nonce (kept per sender), so a tx queued
behind its own sender's backlog, or behind a gap its client left, is not overdue.

Txs from a local client are queued for relay to the other validators;
:meth:`Mempool.take_relay_batch` takes a bounded batch, framed by
:func:`encode_tx_batch`. Txs that came from a peer are not relayed again.
A relay batch can be lost (transport queue full, stream reset), which would
leave a nonce gap at the other validators and stall that sender's later txs,
so a local tx still pending ``relay_retry_ms`` after it was relayed is relayed
again, backing off (doubling up to ``relay_retry_max_ms``) until it leaves the
pool (committed, stale or expired at the TTL); at most ``relay_retry_txs_max``
retries go in one batch. Retries are driven by a sender's lowest pending tx
(the others wait for it anyway), so an overloaded, slow chain does not resend
every pending tx on every backoff: when the lowest is due, it goes with the run of
local txs after it, which a lost batch or a peer's full pool may also have cost the
peers (resending the lowest alone let such a run in at one tx per backoff). Receivers
drop a copy they hold by its hash before decoding it, so a retry costs them a hash
and a lookup.
"""

from __future__ import annotations

import heapq
import struct
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from node import schema
from node.codec import (
    DEFAULT_LIMITS,
    VERSION_1,
    DecodeError,
    Limits,
    Reader,
    Transaction,
    Transfer,
    _as_input,
    _decoder,
    decode_tx,
    get_tx_hash,
)
from node.ledger import (
    TX_PROCESSORS,
    BlockBuilder,
    ChainContext,
    SignatureCache,
    State,
    StateWriter,
    TxContext,
    TxInvalid,
    get_account,
    get_tx_cost,
    verify_tx_signature,
)

KIND_TX_BATCH = 0x07  # next to the codec's top-level kinds (0x01..0x06)
TX_BATCH_COUNT_MAX = 10_000

SOURCE_LOCAL = "local"  # from this node's API: relayed to the other validators
SOURCE_PEER = "peer"  # from a validator's relay batch: not relayed again

REJECT_DECODE = "decode"
REJECT_OVERSIZE = "oversize"
REJECT_SIGNATURE = "bad_signature"
REJECT_NONCE_TOO_LOW = "nonce_too_low"
REJECT_NONCE_GAP = "nonce_too_far_ahead"
REJECT_DUPLICATE_NONCE = "duplicate_nonce"
REJECT_BALANCE = "insufficient_balance"
REJECT_UNSUPPORTED = "unsupported"
REJECT_FULL = "full"  # the API answers 503: try again later
RETRY_LATENCY_FACTOR = 2.0  # a relay retry waits at least this many commit latencies
LOCAL_FILL_PERCENT = 50  # of the pool's bounds a local client's txs may fill (see _is_full)
LOCAL_HEADROOM_PERCENT = 50  # past that mark, room for applicable txs only (see _is_full)

EVICT_COMMITTED = "committed"
EVICT_STALE = "stale_nonce"
EVICT_EXPIRED = "expired"

_U32 = struct.Struct("<I")
RETRY_SCAN_FACTOR = 4  # retry items looked at per retry a batch may carry
OVERDUE_SCAN_MAX = 1024  # oldest entries get_overdue looks at per call


@dataclass(frozen=True)
class MempoolConfig:
    tx_count_max: int = 20_000
    size_max_bytes: int = 64 * 1024 * 1024
    nonce_gap_max: int = 64  # also bounds one sender's pending txs to nonce_gap_max + 1
    ttl_ms: int = 120_000
    signature_cache_size_max: int = 200_000
    relay_retry_ms: int = 1_000  # a local tx still pending this long after its relay goes again
    relay_retry_max_ms: int = 16_000  # the backoff (doubling per attempt) stops growing here
    relay_retry_txs_max: int = 500  # retried txs per relay batch (new txs go first)
    # Clients are refused (503) while local txs take longer than this to commit and the
    # pool holds at least backlog_floor_txs: see Mempool._is_backlogged.
    backlog_latency_max_ms: int = 5_000
    backlog_floor_txs: int = 2_000
    # How many validators' clients share the local part of the bounds (see _is_full): 1
    # when every pool sees every tx (relay to all), n - 1 when txs go to the primary only.
    local_fill_shares: int = 1

    def __post_init__(self) -> None:
        assert self.tx_count_max > 0 and self.size_max_bytes > 0
        assert self.local_fill_shares >= 1
        assert self.nonce_gap_max >= 0 and self.ttl_ms > 0
        assert 0 < self.relay_retry_ms <= self.relay_retry_max_ms
        assert self.relay_retry_txs_max >= 0
        assert self.backlog_latency_max_ms > 0 and self.backlog_floor_txs > 0


@dataclass(frozen=True)
class OverdueTx:
    """A pending tx that could have gone in a block for ``waited_ms`` (get_overdue)."""

    tx_hash: bytes
    tx_bytes: bytes
    waited_ms: int


@dataclass(frozen=True)
class AdmitResult:
    """``tx_hash`` is set unless rejected; ``duplicate`` means the pool already had it."""

    tx_hash: bytes | None
    reason: str | None = None
    message: str = ""
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class _Entry:
    tx: Transaction
    tx_bytes: bytes
    tx_hash: bytes
    cost: int
    admitted_ms: int
    seq: int  # admission order: decides sender order in reap
    local: bool = False  # from this node's clients
    relay_attempts: int = 0  # local txs: how many times relayed so far
    retry_due_ms: int = -1  # local txs: when the live retry item is due (others are stale)
    relayed_ms: int = -1  # local txs: when last relayed
    gapped: bool = False  # an earlier nonce of its sender is not pending: it cannot apply yet


@dataclass
class MempoolMetrics:
    admitted: int = 0
    duplicates: int = 0
    relay_retries: int = 0
    relay_requeued: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    evicted: dict[str, int] = field(default_factory=dict)


class Mempool:
    def __init__(
        self,
        chain_id: str,
        limits: Limits = DEFAULT_LIMITS,
        config: MempoolConfig | None = None,
        validator_count: int = 4,
        signature_cache: SignatureCache | None = None,
    ) -> None:
        self.config = config or MempoolConfig()
        self.limits = limits
        self.context = ChainContext(chain_id, validator_count, limits)
        self.signature_cache = signature_cache or SignatureCache(
            self.config.signature_cache_size_max
        )
        self.metrics = MempoolMetrics()
        self._by_hash: OrderedDict[bytes, _Entry] = OrderedDict()  # admission order (TTL)
        self._by_sender: dict[bytes, dict[int, _Entry]] = {}
        self._reserved: dict[bytes, int] = {}  # sender -> sum of pending costs
        self._relay: deque[bytes] = deque()  # hashes of local txs not yet relayed
        # (due_ms, seq, hash) of relayed local txs: relay again when due if still pending.
        # One live item per pending local tx; items of txs gone meanwhile are skipped
        # when popped and purged when they outnumber the pool (see _schedule_retry).
        self._retry: list[tuple[int, int, bytes]] = []
        self._size_bytes = 0
        self._local_txs = 0  # local entries and their bytes (see _is_full)
        self._local_bytes = 0
        # Per sender: the account nonce the pool last saw and the end of the run of pending
        # nonces from it; entries past the run are gapped (see _set_ready_end).
        self._base_nonce: dict[bytes, int] = {}
        self._ready_end: dict[bytes, int] = {}
        self._gapped = [0, 0]  # gapped entries: txs, bytes
        self._gapped_local = [0, 0]  # of which local
        # Per sender with pending txs: when a commit last moved its account nonce (the
        # request timer's start for its lowest tx; absent: since that tx's admission).
        self._head_since_ms: dict[bytes, int] = {}
        self._seq = 0
        self.commit_latency_ms = 0.0  # see _observe_commit_latency

    # --- queries -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._by_hash

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    def get_pending_nonces(self, sender: bytes) -> list[int]:
        return sorted(self._by_sender.get(sender, {}))

    def get_metrics(self) -> dict[str, int]:
        out = {
            "mempool_size": len(self._by_hash),
            "mempool_bytes": self._size_bytes,
            "mempool_admitted": self.metrics.admitted,
            "mempool_duplicates": self.metrics.duplicates,
            "mempool_local_txs": self._local_txs,
            "mempool_gapped_txs": self._gapped[0],
            "mempool_relay_queue": len(self._relay),
            "mempool_relay_retry_queue": len(self._retry),
            "mempool_relay_retries": self.metrics.relay_retries,
            "mempool_relay_requeued": self.metrics.relay_requeued,
            "mempool_commit_latency_ms": int(self.commit_latency_ms),
        }
        for reason, count in sorted(self.metrics.rejected.items()):
            out[f"mempool_rejected_{reason}"] = count
        for reason, count in sorted(self.metrics.evicted.items()):
            out[f"mempool_evicted_{reason}"] = count
        return out

    # --- admission ---------------------------------------------------------------

    def _reject(self, reason: str, message: str) -> AdmitResult:
        self.metrics.rejected[reason] = self.metrics.rejected.get(reason, 0) + 1
        return AdmitResult(None, reason, message)

    def admit(self, tx_bytes: bytes, state: State, now_ms: int, source: str) -> AdmitResult:
        """Check a tx against ``state`` and the pending txs; keep it, or say why not."""
        assert source in (SOURCE_LOCAL, SOURCE_PEER)
        if type(tx_bytes) is not bytes:
            return self._reject(REJECT_DECODE, f"expected bytes, got {type(tx_bytes).__name__}")
        if len(tx_bytes) > self.limits.tx_size_max_bytes:
            return self._reject(
                REJECT_OVERSIZE,
                f"{len(tx_bytes)} bytes exceeds maximum {self.limits.tx_size_max_bytes}",
            )
        # Duplicate first, by the hash of the bytes: a re-relayed copy costs no decode.
        tx_hash = get_tx_hash(tx_bytes)
        if tx_hash in self._by_hash:
            self.metrics.duplicates += 1
            return AdmitResult(tx_hash, None, "already pending", duplicate=True)
        # Room next: it depends on nothing in the tx but its size. Under overload most
        # client submissions are refused and retried, and refused after the decode and
        # checks they cost a validator as much CPU as the txs it committed.
        refused = (self._check_local_room(len(tx_bytes)) if source == SOURCE_LOCAL
                   else self._check_room(len(tx_bytes), SOURCE_PEER))
        if refused is not None:
            return refused
        try:
            tx = decode_tx(tx_bytes, self.limits)
        except DecodeError as exc:
            return self._reject(REJECT_DECODE, str(exc))
        if type(tx.body) not in TX_PROCESSORS:
            return self._reject(
                REJECT_UNSUPPORTED, f"{type(tx.body).__name__} txs are not accepted"
            )
        account = get_account(state, tx.sender)
        if tx.nonce < account.nonce:
            return self._reject(
                REJECT_NONCE_TOO_LOW, f"nonce {tx.nonce} is below the account nonce {account.nonce}"
            )
        if tx.nonce > account.nonce + self.config.nonce_gap_max:
            return self._reject(
                REJECT_NONCE_GAP,
                f"nonce {tx.nonce} is more than {self.config.nonce_gap_max} ahead of the "
                f"account nonce {account.nonce}",
            )
        queue = self._by_sender.get(tx.sender)
        if queue is not None and tx.nonce in queue:
            return self._reject(
                REJECT_DUPLICATE_NONCE,
                f"a different tx with nonce {tx.nonce} from this sender is already pending",
            )
        if source == SOURCE_LOCAL:  # peers' relays are never refused for a gap
            ready_end = self._get_ready_end(tx.sender, account.nonce)
            if tx.nonce > ready_end and self._is_gap_full(len(tx_bytes)):
                return self._reject(
                    REJECT_FULL,
                    f"mempool full: {self._gapped[0]} txs already wait for earlier nonces and "
                    f"nonce {ready_end} of this sender is not pending: send it first, or retry "
                    "later",
                )
        cost = get_tx_cost(tx)
        reserved = self._reserved.get(tx.sender, 0)
        if cost + reserved > account.balance:
            return self._reject(
                REJECT_BALANCE,
                f"balance {account.balance}, pending txs reserve {reserved}, this tx needs {cost}",
            )
        if not verify_tx_signature(
            self.context.chain_id, tx, tx_hash, self.signature_cache, tx_bytes
        ):
            return self._reject(
                REJECT_SIGNATURE,
                "signature does not verify (wrong key, or signed for another chain)",
            )
        if source == SOURCE_LOCAL and type(tx.body) is not Transfer:  # transfers: checked above
            body_error = self._check_body(tx, state)
            if body_error is not None:
                return self._reject(body_error.reason, body_error.message)
        self._insert(_Entry(tx, tx_bytes, tx_hash, cost, now_ms, self._seq,
                            local=source == SOURCE_LOCAL), account.nonce)
        self._seq += 1
        if source == SOURCE_LOCAL:
            self._relay.append(tx_hash)
        self.metrics.admitted += 1
        return AdmitResult(tx_hash)

    def _check_local_room(self, size_bytes: int) -> AdmitResult | None:
        """A client's tx of ``size_bytes`` refused for room (the pool's local share is
        full, or the chain is backlogged), or None if there is room."""
        refused = self._check_room(size_bytes, SOURCE_LOCAL)
        if refused is None and self._is_backlogged():
            refused = self._reject(
                REJECT_FULL,
                f"backlog: txs take {self.commit_latency_ms / 1000:.1f} s to commit with "
                f"{len(self._by_hash)} pending; retry later",
            )
        return refused

    def _check_room(self, size_bytes: int, source: str) -> AdmitResult | None:
        if not self._is_full(size_bytes, source):
            return None
        return self._reject(
            REJECT_FULL,
            f"mempool full ({len(self._by_hash)} txs, {self._size_bytes} bytes); retry later",
        )

    def _is_full(self, size_bytes: int, source: str) -> bool:
        """Local clients get LOCAL_FILL_PERCENT of the bounds; the rest is headroom for txs
        relayed by peers (each origin admits up to the mark before it sees the others'
        in-flight txs), since refusing those leaves nonce gaps that stall their senders
        until the origin's relay retry, while a refused client simply retries (503).

        With ``local_fill_shares`` > 1 (txs relayed to the primary only) a backup's pool
        holds its own clients' txs alone, so a mark on the whole pool let every backup fill
        its half and the primary's pool overflow many times over: relays refused, gaps,
        retries backing off to 16 s (sixth session). Each node's clients then get their
        share of the mark, counted alone, so all of them together fit in the primary's."""
        count_max = self.config.tx_count_max
        bytes_max = self.config.size_max_bytes
        if len(self._by_hash) >= count_max or self._size_bytes + size_bytes > bytes_max:
            return True
        if source != SOURCE_LOCAL:
            return False
        # Applicable txs are counted apart from gapped ones: were all counted together, a
        # mark full of gapped txs would refuse the very txs that fill their gaps, and
        # nothing in the pool could apply until the TTL (the seventh session's stall).
        # Past the mark only applicable txs are taken (_is_gap_full), up to the headroom.
        (txs, used_bytes), (ready_txs, ready_bytes) = self._get_local_use()
        txs_max, bytes_max = self._get_local_marks()
        room = 100 + LOCAL_HEADROOM_PERCENT
        return (ready_txs >= txs_max or ready_bytes + size_bytes > bytes_max
                or txs >= txs_max * room // 100
                or used_bytes + size_bytes > bytes_max * room // 100)

    def _is_gap_full(self, size_bytes: int) -> bool:
        """Whether a client's tx that would wait for an earlier nonce finds no room: the
        local mark counts every local tx for it, as it did for every tx before gaps were
        tracked. A client spreading an account's nonces over validators (each backup's
        pool sees only its own, gapped, while the primary holds them all) keeps the room
        it had; only the txs that fill gaps get more (_is_full)."""
        (txs, used_bytes), _ = self._get_local_use()
        txs_max, bytes_max = self._get_local_marks()
        return txs >= txs_max or used_bytes + size_bytes > bytes_max

    def _get_local_use(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(txs, bytes) of what the local mark counts, all of it and the applicable part."""
        if self.config.local_fill_shares == 1:
            # Every pool sees every tx, so the whole pool is what clients filled.
            txs, used_bytes, gapped = len(self._by_hash), self._size_bytes, self._gapped
        else:
            txs, used_bytes, gapped = self._local_txs, self._local_bytes, self._gapped_local
        return (txs, used_bytes), (txs - gapped[0], used_bytes - gapped[1])

    def _get_local_marks(self) -> tuple[int, int]:
        """One node's clients' mark: LOCAL_FILL_PERCENT of the pool's count and byte
        bounds, over the local shares."""
        shares, fill = self.config.local_fill_shares, LOCAL_FILL_PERCENT
        return (max(1, self.config.tx_count_max * fill // 100 // shares),
                max(1, self.config.size_max_bytes * fill // 100 // shares))

    def _is_backlogged(self) -> bool:
        """Refuse clients before the signature check once the chain is seconds behind.

        Far past capacity, every validator checked the signature of every offered tx
        before the pool's count bound refused any, and that work starved the commits: at
        n = 16 on 2 cores, 2,000-3,000 offered tx/s committed half of what 1,000 did. The
        floor keeps this from locking clients out: the latency estimate only moves when
        local txs commit, so below the floor they are admitted and it recovers."""
        return (self.commit_latency_ms > self.config.backlog_latency_max_ms
                and len(self._by_hash) >= self.config.backlog_floor_txs)

    def _check_body(self, tx: Transaction, state: State) -> TxInvalid | None:
        """Trial-run the body's processor on the committed state (writes discarded).

        Only for a local client's txs, so it hears at once why a tx could never
        apply (a learning tx's ``privacy_budget``, ``copy``, ``wrong_round``...).
        Relayed txs skip it: this node's state may lag the sender's, and the
        block builder drops what does not apply anyway. The nonce is not checked
        here (pending txs may come before it); the reason is the processor's own.
        """
        processor = TX_PROCESSORS[type(tx.body)]
        context = TxContext(
            self.context.chain_id, state.height + 1, state.last_block_time_ms, 0
        )
        try:
            processor(StateWriter(state.entries), tx, context)
        except TxInvalid as exc:
            return exc
        return None

    # --- gaps ----------------------------------------------------------------------
    # A sender's pending txs that can apply are the run of nonces from its account nonce;
    # the rest are gapped. The pool keeps the run's end per sender and a flag per entry,
    # moved by admissions (which can only extend a run), by commits (update: the account
    # nonce passes the run's start) and by removals inside a run (expiry, evict_if), so
    # the room checks read two counters instead of walking the pool.

    def _get_ready_end(self, sender: bytes, account_nonce: int) -> int:
        """The first nonce of ``sender`` that neither the account nor the pool has."""
        if sender not in self._by_sender:
            return account_nonce
        if self._base_nonce[sender] != account_nonce:  # a state the pool was not told of
            self._set_ready_end(sender, account_nonce)
        return self._ready_end[sender]

    def _set_ready_end(self, sender: bytes, account_nonce: int) -> None:
        """Recompute ``sender``'s run and every one of its entries' flags."""
        queue = self._by_sender[sender]
        end = account_nonce
        while end in queue:  # bounded: one step per pending tx
            end += 1
        for nonce, entry in queue.items():
            self._mark_gapped(entry, nonce > end)
        self._base_nonce[sender] = account_nonce
        self._ready_end[sender] = end

    def _extend_ready_end(self, entry: _Entry) -> None:
        """After ``entry`` joined its sender's queue: it is gapped, or it extends the run
        and may join the run to gapped entries after it."""
        sender, nonce = entry.tx.sender, entry.tx.nonce
        end = self._ready_end[sender]
        assert nonce >= end, "a nonce inside the run is already pending"
        if nonce > end:
            self._mark_gapped(entry, True)
            return
        queue = self._by_sender[sender]
        end += 1
        while end in queue:  # bounded: one step per pending tx
            self._mark_gapped(queue[end], False)
            end += 1
        self._ready_end[sender] = end

    def _mark_gapped(self, entry: _Entry, gapped: bool) -> None:
        if entry.gapped == gapped:
            return
        entry.gapped = gapped
        step = 1 if gapped else -1
        size = step * len(entry.tx_bytes)
        counters = (self._gapped, self._gapped_local) if entry.local else (self._gapped,)
        for counter in counters:
            counter[0] += step
            counter[1] += size
            assert counter[0] >= 0 and counter[1] >= 0

    # --- insertion and removal -----------------------------------------------------

    def _insert(self, entry: _Entry, account_nonce: int) -> None:
        sender = entry.tx.sender
        self._by_hash[entry.tx_hash] = entry
        self._by_sender.setdefault(sender, {})[entry.tx.nonce] = entry
        self._reserved[sender] = self._reserved.get(sender, 0) + entry.cost
        self._size_bytes += len(entry.tx_bytes)
        if entry.local:
            self._local_txs += 1
            self._local_bytes += len(entry.tx_bytes)
        if self._base_nonce.get(sender) == account_nonce:
            self._extend_ready_end(entry)
        else:  # a new sender, or a state the pool was not told of
            self._set_ready_end(sender, account_nonce)

    def _remove(self, entry: _Entry, reason: str) -> bool:
        """Drop ``entry``; True if it was applicable and its sender has txs left, whose
        flags may then be wrong: the caller recomputes them (_settle_runs), or, when the
        account nonce passed ``entry`` (committed, stale), moves the run (_advance_run)."""
        sender = entry.tx.sender
        cut = not entry.gapped
        self._mark_gapped(entry, False)
        del self._by_hash[entry.tx_hash]
        queue = self._by_sender[sender]
        del queue[entry.tx.nonce]
        if not queue:
            del self._by_sender[sender]
            del self._base_nonce[sender], self._ready_end[sender]
            self._head_since_ms.pop(sender, None)
            cut = False
        reserved = self._reserved[sender] - entry.cost
        assert reserved >= 0
        if reserved == 0 and sender not in self._by_sender:
            del self._reserved[sender]
        else:
            self._reserved[sender] = reserved
        self._size_bytes -= len(entry.tx_bytes)
        assert self._size_bytes >= 0
        if entry.local:
            self._local_txs -= 1
            self._local_bytes -= len(entry.tx_bytes)
            assert self._local_txs >= 0 and self._local_bytes >= 0
        self.metrics.evicted[reason] = self.metrics.evicted.get(reason, 0) + 1
        return cut

    def _settle_runs(self, senders: Collection[bytes]) -> None:
        """Recompute the runs of senders whose run a removal cut (their account nonce
        unchanged), so the txs after the cut count as gapped."""
        for sender in senders:
            if sender in self._by_sender:
                self._set_ready_end(sender, self._base_nonce[sender])

    # --- eviction ----------------------------------------------------------------

    def update(
        self, state: State, committed_tx_hashes: Sequence[bytes], now_ms: int | None = None,
        committed_at_ms: int | None = None, changed_keys: Collection[bytes] | None = None,
    ) -> None:
        """After a commit: drop committed txs, txs whose nonce the chain passed, and (given
        ``now_ms``) expired txs. Given ``committed_at_ms``, local txs' admission-to-commit
        times feed the relay retry's latency estimate (see _schedule_retry).

        ``changed_keys``: the state keys the commit changed, if known. A sender's nonce
        only rises with a change to its account entry, so only those senders are looked
        at, not every sender in the pool (a pass over every pending tx per block)."""
        for tx_hash in committed_tx_hashes:
            entry = self._by_hash.get(tx_hash)
            if entry is not None:
                if committed_at_ms is not None and entry.relay_attempts > 0:
                    self._observe_commit_latency(committed_at_ms - entry.admitted_ms)
                self._remove(entry, EVICT_COMMITTED)  # its sender's account is a changed key
        senders = (list(self._by_sender) if changed_keys is None
                   else [schema.get_account_public_key(key) for key in changed_keys])
        moved_ms = committed_at_ms if committed_at_ms is not None else now_ms
        for sender in senders:
            if sender is None or sender not in self._by_sender:
                continue
            account_nonce = get_account(state, sender).nonce
            if moved_ms is not None and account_nonce != self._base_nonce[sender]:
                self._head_since_ms[sender] = moved_ms
            stale = [e for nonce, e in self._by_sender[sender].items() if nonce < account_nonce]
            for entry in stale:
                self._remove(entry, EVICT_STALE)
            if sender in self._by_sender:
                self._advance_run(sender, account_nonce)
        if now_ms is not None:
            self.evict_expired(now_ms)

    def _advance_run(self, sender: bytes, account_nonce: int) -> None:
        """After a commit moved ``sender``'s account nonce (its txs below it removed)."""
        if account_nonce <= self._ready_end[sender]:
            # Only nonces below the new start left the run: its end, and every flag, hold.
            self._base_nonce[sender] = account_nonce
        else:  # txs this pool did not hold filled the gap: the run starts afresh
            self._set_ready_end(sender, account_nonce)

    def evict_if(self, predicate: Callable[[Transaction], bool], reason: str) -> list[Transaction]:
        """Drop every pending tx ``predicate`` marks as never applicable; returns them.

        One pass over the pool: callers use it rarely (e.g. after a block recorded evidence).
        """
        doomed = [entry for entry in self._by_hash.values() if predicate(entry.tx)]
        cut = [entry.tx.sender for entry in doomed if self._remove(entry, reason)]
        self._settle_runs(dict.fromkeys(cut))
        return [entry.tx for entry in doomed]

    def evict_expired(self, now_ms: int) -> int:
        """Drop txs admitted ``ttl_ms`` or more ago; returns how many."""
        expired = 0
        cut: dict[bytes, None] = {}
        # _by_hash is in admission order and now_ms only grows, so stop at the first fresh one.
        while self._by_hash:
            entry = next(iter(self._by_hash.values()))
            if now_ms - entry.admitted_ms < self.config.ttl_ms:
                break
            if self._remove(entry, EVICT_EXPIRED):
                cut[entry.tx.sender] = None
            expired += 1
        self._settle_runs(cut)
        return expired

    # --- reap --------------------------------------------------------------------

    def get_decoded(self, tx_hash: bytes) -> Transaction | None:
        """The pool's decoded copy of the tx with this hash, if it holds it: a block
        check reuses it instead of decoding the block's bytes again."""
        entry = self._by_hash.get(tx_hash)
        return None if entry is None else entry.tx

    def reap(
        self, max_txs: int, max_bytes: int, state: State, builder: BlockBuilder | None = None
    ) -> list[bytes]:
        """Txs for the next block on ``state``: valid in sequence, fair across senders, bounded.

        Each is applied on ``builder`` as it is chosen (a proposer passes the block's own
        builder and finishes the block from it); without one, on a throwaway builder."""
        if builder is None:
            builder = BlockBuilder(state, self.context, self.signature_cache)
        assert len(builder) == 0, "reap fills an empty builder"
        queues: list[list[_Entry]] = []
        for sender, by_nonce in self._by_sender.items():
            start = get_account(state, sender).nonce
            run: list[_Entry] = []
            # Only the consecutive run from the account nonce can apply.
            while start + len(run) in by_nonce and len(run) < len(by_nonce):
                run.append(by_nonce[start + len(run)])
            if run:
                queues.append(run)
        queues.sort(key=lambda run: (run[0].seq, run[0].tx.sender))
        out: list[bytes] = []
        size_bytes = 0
        position = [0] * len(queues)
        active = list(range(len(queues)))
        while active and len(out) < max_txs:
            still_active = []
            for q in active:
                if len(out) >= max_txs:
                    break
                entry = queues[q][position[q]]
                if size_bytes + len(entry.tx_bytes) > max_bytes:
                    continue  # too big for what is left; this sender's later txs wait too
                if builder.try_add(entry.tx, entry.tx_hash, entry.tx_bytes) is not None:
                    continue  # fails here (e.g. balance); its successors cannot apply either
                out.append(entry.tx_bytes)
                size_bytes += len(entry.tx_bytes)
                position[q] += 1
                if position[q] < len(queues[q]):
                    still_active.append(q)
            active = still_active
        return out

    def get_overdue(
        self, state: State, now_ms: int, wait_ms: int, since_ms: int
    ) -> OverdueTx | None:
        """The oldest pending tx that would apply next on ``state`` (its nonce is its
        account's, and it applies on a block builder of ``state``) and could have since
        ``wait_ms`` ago: since its admission, since the commit that moved its sender's
        nonce to it, and since ``since_ms`` (the node passes when the view started).

        Looks at the OVERDUE_SCAN_MAX oldest entries at most, and none at all while the
        oldest is younger than the wait (the common case: O(1))."""
        cutoff_ms = now_ms - wait_ms
        if since_ms > cutoff_ms:
            return None
        builder: BlockBuilder | None = None  # made for the first candidate only
        for scanned, entry in enumerate(self._by_hash.values()):  # admission order
            if entry.admitted_ms > cutoff_ms or scanned >= OVERDUE_SCAN_MAX:
                return None
            sender = entry.tx.sender
            ready_ms = max(entry.admitted_ms, self._head_since_ms.get(sender, 0))
            if entry.gapped or ready_ms > cutoff_ms:
                continue
            if get_account(state, sender).nonce != entry.tx.nonce:
                continue  # behind its sender's own lowest pending tx
            if builder is None:
                builder = BlockBuilder(state, self.context, self.signature_cache)
            if builder.try_add(entry.tx, entry.tx_hash, entry.tx_bytes) is not None:
                continue  # cannot apply (e.g. the balance moved): the TTL will take it
            return OverdueTx(entry.tx_hash, entry.tx_bytes, now_ms - ready_ms)
        return None

    # --- relay -------------------------------------------------------------------

    def get_relay_wait_ms(self, now_ms: int) -> int | None:
        """How long until relay work may be due: 0 now, None if none is scheduled (an idle
        node then sleeps instead of polling; new local txs wake it)."""
        if self._relay:
            return 0
        if not self._retry:
            return None
        return max(0, self._retry[0][0] - now_ms)

    def take_relay_batch(
        self, max_txs: int, max_bytes: int, now_ms: int, *, to_peers: bool = True
    ) -> list[bytes]:
        """Local txs to relay, bounded by count and bytes: those never relayed, oldest
        first, then (at most ``relay_retry_txs_max``) those whose retry is due.

        Every tx returned counts as relayed at ``now_ms`` and is due again after its
        backoff, so a batch the transport refuses or loses is retried like any other.
        ``to_peers`` is False at a primary that relays to the primary only: it takes its
        batch to keep the schedule (and requeue it at a view change) but sends it to no
        one, so its retries are not counted in ``relay_retries``.
        """
        out: list[bytes] = []
        size_bytes = 0
        while self._relay and len(out) < max_txs:
            entry = self._by_hash.get(self._relay[0])
            if entry is None:  # committed or evicted meanwhile: nothing to relay
                self._relay.popleft()
                continue
            if out and size_bytes + len(entry.tx_bytes) > max_bytes:
                return out
            self._relay.popleft()
            out.append(entry.tx_bytes)
            size_bytes += len(entry.tx_bytes)
            self._schedule_retry(entry, now_ms)
        retried = 0
        scanned = 0
        # Bounded: each pass pops one item, at most RETRY_SCAN_FACTOR per retry allowed.
        while (
            self._retry
            and len(out) < max_txs
            and retried < self.config.relay_retry_txs_max
            and scanned < RETRY_SCAN_FACTOR * max(self.config.relay_retry_txs_max, 1)
        ):
            scanned += 1
            due_ms, seq, tx_hash = self._retry[0]
            if due_ms > now_ms:
                break
            entry = self._by_hash.get(tx_hash)
            if entry is None or entry.seq != seq or entry.retry_due_ms != due_ms:
                heapq.heappop(self._retry)  # gone (committed, stale, expired) or rescheduled
                continue
            queue = self._by_sender[entry.tx.sender]
            if entry.tx.nonce != min(queue):
                # Behind its sender's lowest pending tx, it cannot apply before that one
                # does: resending it now would only multiply traffic under load. Look
                # again later; it goes with the lowest one (below).
                heapq.heappop(self._retry)
                self._push_retry(entry, now_ms + self.config.relay_retry_ms)
                continue
            assert entry.relay_attempts > 0 and entry.relayed_ms >= 0  # only relayed txs
            wait_ms = self._get_latency_wait_ms()
            if now_ms - entry.relayed_ms < wait_ms:
                # The chain slowed down after this retry was scheduled: the backoff took
                # the commit latency of that moment, and a backlog that is still growing
                # outruns it (a fresh closed loop at N = 16 resent ~11,600 txs per 10 s
                # window that the primary held). Measure from the latency of now.
                heapq.heappop(self._retry)
                self._push_retry(entry, entry.relayed_ms + wait_ms)
                continue
            if out and size_bytes + len(entry.tx_bytes) > max_bytes:
                break
            heapq.heappop(self._retry)
            # The lowest tx is still pending after its backoff: a peer may miss it, and
            # also the successors that went in the same lost batch (or that a peer whose
            # pool was full refused with it). Resending the lowest alone would let them in
            # one per backoff, so the run from it goes too, within this batch's bounds,
            # as far as its txs are due themselves. A successor relayed later was not in
            # that batch: it waits at the peers behind the gap or was relayed on its own,
            # and under a backlog (a client ahead of the chain by many nonces) resending
            # whole runs multiplied relay traffic (bench consensus --routing pinned, N = 4:
            # 27,080 retried txs and 86,267 duplicates in a 10 s window).
            nonce = entry.tx.nonce
            while (entry is not None and entry.relay_attempts > 0  # local, relayed before
                   and entry.retry_due_ms <= now_ms
                   and len(out) < max_txs
                   and retried < self.config.relay_retry_txs_max
                   and (not out or size_bytes + len(entry.tx_bytes) <= max_bytes)):
                out.append(entry.tx_bytes)
                size_bytes += len(entry.tx_bytes)
                retried += 1
                self._schedule_retry(entry, now_ms)
                nonce += 1
                entry = queue.get(nonce)
        if to_peers:
            self.metrics.relay_retries += retried
        return out

    def requeue_relayed(self) -> int:
        """Queue every pending local tx that was relayed before to be relayed again, in
        admission order, and return how many: a node that relays to the primary only sent
        them to the old view's primary, and the new one proposes now. Bounded by the pool."""
        queued = set(self._relay)  # two view changes before the queue drains: once each
        count = 0
        for entry in self._by_hash.values():
            if entry.relay_attempts > 0 and entry.tx_hash not in queued:  # local, relayed
                self._relay.append(entry.tx_hash)
                count += 1
        assert len(self._relay) <= len(queued) + len(self._by_hash)
        self.metrics.relay_requeued += count
        return count

    def _observe_commit_latency(self, latency_ms: int) -> None:
        """An exponentially weighted mean (1/16 per sample) of local txs' commit times."""
        sample = max(0, latency_ms)
        self.commit_latency_ms += (sample - self.commit_latency_ms) / 16

    def _schedule_retry(self, entry: _Entry, now_ms: int) -> None:
        """The next relay of ``entry``: after its doubling backoff, and never before about
        twice what a local tx takes to commit now (checked again when due: take_relay_batch
        holds a lowest tx back while the latency of then says so). A retry is for a LOST
        batch; a chain that is merely slow (seconds per commit under overload, more so at
        large n) would otherwise have every pending sender's txs resent to every peer each
        backoff step, and at n = 10 that traffic was 30 times the txs' own (bench
        consensus B/tx)."""
        entry.relay_attempts += 1
        entry.relayed_ms = now_ms
        backoff_ms = max(
            min(self.config.relay_retry_ms << min(entry.relay_attempts - 1, 32),
                self.config.relay_retry_max_ms),
            self._get_latency_wait_ms(),
        )
        self._push_retry(entry, now_ms + backoff_ms)

    def _get_latency_wait_ms(self) -> int:
        """The least a relayed local tx waits before a retry: RETRY_LATENCY_FACTOR commit
        latencies of now (a slow chain is not a lost batch)."""
        return int(RETRY_LATENCY_FACTOR * self.commit_latency_ms)

    def _push_retry(self, entry: _Entry, due_ms: int) -> None:
        """Make ``due_ms`` the entry's one live retry item; earlier items become stale."""
        if len(self._retry) >= 2 * len(self._by_hash) + 1024:
            # Mostly stale items (txs that left the pool, or rescheduled): keep the live ones.
            self._retry = [item for item in self._retry if self._is_retry_live(item)]
            heapq.heapify(self._retry)
        entry.retry_due_ms = due_ms
        heapq.heappush(self._retry, (due_ms, entry.seq, entry.tx_hash))
        assert len(self._retry) <= 2 * len(self._by_hash) + 1025

    def _is_retry_live(self, item: tuple[int, int, bytes]) -> bool:
        entry = self._by_hash.get(item[2])
        return entry is not None and entry.seq == item[1] and entry.retry_due_ms == item[0]


def encode_tx_batch(txs: Sequence[bytes]) -> bytes:
    """``KIND_TX_BATCH, VERSION_1, u32 count, (u32 len, tx bytes)*``."""
    if len(txs) > TX_BATCH_COUNT_MAX:
        raise ValueError(f"tx batch of {len(txs)} exceeds maximum {TX_BATCH_COUNT_MAX}")
    parts = [bytes((KIND_TX_BATCH, VERSION_1)), _U32.pack(len(txs))]
    for tx in txs:
        if type(tx) is not bytes:
            raise ValueError("tx batch entries must be bytes")
        parts.append(_U32.pack(len(tx)))
        parts.append(tx)
    return b"".join(parts)


@_decoder
def decode_tx_batch(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """The txs of a batch frame (not decoded themselves: admission does that)."""
    r = Reader(_as_input(data, limits.message_size_max_bytes, "tx_batch"))
    r.read_header(KIND_TX_BATCH, "tx_batch")
    count = r.read_u32("tx_batch.count")
    if count > TX_BATCH_COUNT_MAX:
        raise DecodeError(f"tx_batch.count: {count} exceeds maximum {TX_BATCH_COUNT_MAX}")
    txs = [r.read_var_bytes(limits.tx_size_max_bytes, "tx_batch.txs[]") for _ in range(count)]
    r.expect_end("tx_batch")
    return txs


__all__ = [
    "AdmitResult",
    "Mempool",
    "MempoolConfig",
    "SOURCE_LOCAL",
    "SOURCE_PEER",
    "decode_tx_batch",
    "encode_tx_batch",
]
