"""The validator: the consensus driver (synchronous, testable) and its trio loops.

:class:`Driver` owns the replica, the chain store, the committed state, the mempool
and the block checker. Every input is an event fed to ``replica.handle``; the actions
come back as a list and are executed IN ORDER, synchronously (no await in between, so
no other task can interleave):

- ``Persist``: encoded with the codec and appended to the store's write-ahead area in one
  synced batch; consecutive Persists share one batch, and the batch is flushed before the
  next non-Persist action, so a vote is durable before anything that depends on it leaves.
- ``Send``/``Broadcast``: encoded and queued on the transport's CONSENSUS class.
- ``Deliver``: the block's post-state comes from the checker (computed when the block was
  validated or built) or from ``apply_block``; the block, certificate and state diff are
  committed in one synced batch; the mempool drops what the block used; events go out.
- ``FetchBlocks``: a wire request to the first peer offered (the core rotates and retries).
- ``ReportEvidence``: kept (bounded), counted, and turned into one ``EvidenceReport``
  tx per (offender, view, seq) in the mempool (node/evidence.py). ``Discard``: counted by reason.

After each event, if the replica offers a proposal slot and a block is due (a full
block's worth of txs, or txs waiting for ``build_interval_ms``, or no progress for the
empty-block interval, which is a third of the view-change timeout so the core's
progress timer never fires on an idle but healthy chain), the primary builds the block on
the post-state of the slot's parent and feeds ``Proposal``. It reaps only when it may
propose what it reaps: a "full" mempool (it also counts txs in in-flight blocks and behind
nonce gaps) that gave a partial block is not reaped again until a block's worth of new txs
arrived, the slot moved, or the build interval ended. Post-states of in-flight
blocks live in the checker (bounded), which gives pipelining for free.

A committed block that fails ``apply_block`` can only come from a Byzantine primary whose
block f+1 honest replicas checked without its parent's state. Every honest node then
fails on the same block, and each HALTS commits there (logs it, reports ``halted`` in
metrics, keeps serving reads): deterministic, and it never forks the state. An operator
must intervene; see docs/node.md.

:class:`Node` runs the driver on trio: the inbound consensus loop (read first), the tx
batch loop (only when no consensus frame waits), the tick loop, the relay loop and the
API request loop, each bounded.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from consensus.config import ReplicaConfig
from consensus.events import (
    Action,
    BlocksFetched,
    Broadcast,
    Deliver,
    Discard,
    Event,
    FetchBlocks,
    Persist,
    PersistRecord,
    Proposal,
    Receive,
    ReportEvidence,
    Send,
    SuspectPrimary,
    Tick,
)
from consensus.messages import (
    MESSAGE_TYPES,
    PEER_MESSAGE_TYPES,
    PHASE_COMMIT,
    Evidence,
    FetchedBlock,
    NewView,
    PeerMessage,
    PreparedCertificate,
    PrePrepare,
    StableCheckpoint,
    ViewChange,
    Vote,
)
from consensus.messages import CommitCertificate as ConsensusCertificate
from consensus.replica import ProposalSlot, Replica
from node import schema
from node.app import BlockChecker, NodeAuthenticator
from node.chain import ChainStore, ChainStoreError
from node.codec import (
    DEFAULT_LIMITS,
    CommitCertificate,
    CommitSignature,
    DecodeError,
    Limits,
    Transaction,
    Transfer,
    decode_block,
    decode_consensus_message,
    encode_block,
    encode_consensus_message,
    encode_tx,
    get_block_hash,
    get_tx_hash,
    sign_tx,
)
from node.config import RELAY_ALL, Config
from node.evidence import (
    EVIDENCE_RECORDS_PREFIX,
    EvidenceReport,
    decode_evidence,
    get_evidence_id,
    get_evidence_key,
    is_evidence_recorded,
    make_evidence_tx,
)
from node.genesis import Genesis, get_genesis_hash
from node.keys import KeyPair
from node.learning_api import get_learning_account
from node.ledger import (
    REASON_PARENT_HASH,
    AppliedBlock,
    BlockBuilder,
    BlockInvalid,
    ChainContext,
    State,
    apply_block,
    get_account,
)
from node.mempool import (
    REJECT_NONCE_TOO_LOW,
    SOURCE_LOCAL,
    SOURCE_PEER,
    Mempool,
    MempoolConfig,
    decode_tx_batch,
    encode_tx_batch,
)
from node.service import (
    LATENCY_BOUNDS_SECONDS,
    REJECT_BAD_NONCE,
    REJECT_BAD_SIGNATURE,
    REJECT_INSUFFICIENT_BALANCE,
    REJECT_INVALID_TX,
    REJECT_MEMPOOL_FULL,
    AccountInfo,
    BlockEvent,
    BlockInfo,
    Histogram,
    Metrics,
    NodeEvent,
    NodeStatus,
    SubmitResult,
    TxEvent,
    TxStatus,
    ValidatorStatus,
)
from node.store import KVStore
from node.transport import FRAME_SIZE_MAX_BYTES, TrafficClass
from node.wire import (
    FETCH_BLOCKS_MAX,
    FRAME_BLOCK_REQUEST,
    FRAME_BLOCK_RESPONSE,
    FRAME_CONSENSUS,
    FRAME_TX_BATCH,
    BlockRequest,
    decode_block_request,
    decode_block_response,
    encode_block_request,
    encode_block_response,
    get_frame_kind,
)

logger = logging.getLogger(__name__)

# The core's Discard reason when a fetched block names another parent than this node's
# tip (BlockChecker's reason after the replica's prefix); at height 0 the tip is genesis.
FETCHED_BLOCK_OTHER_PARENT = f"fetched block rejected: {REASON_PARENT_HASH}"

# Frames carry whole blocks (PRE-PREPARE, catch-up), so a block leaves room in a frame.
BLOCK_SIZE_CAP_BYTES = FRAME_SIZE_MAX_BYTES // 4
RESPONSE_BUDGET_BYTES = FRAME_SIZE_MAX_BYTES - 64 * 1024
# Records this node wrote decode up to this. Today's largest is a block with its votes, or
# a NEW-VIEW of ~1.2 MB at n = 16; one written before view change became digest-only held a
# quorum of copies of every payload above the checkpoint (at n = 16, 11 copies of 16 blocks
# of 4 MiB: 704 MiB), and a node upgraded with one in its log must still start.
WAL_RECORD_SIZE_MAX_BYTES = 1024 * 1024 * 1024
# What the oversize warning calls the view-change messages.
OVERSIZE_MESSAGE_NAMES: dict[type, str] = {ViewChange: "VIEW-CHANGE", NewView: "NEW-VIEW"}
EVIDENCE_KEPT_MAX = 64
EVIDENCE_REPORTED_MAX = 1024
EVICT_EVIDENCE_RECORDED = "evidence_recorded"
DROP_REASONS_MAX = 64
PROPOSALS_PER_EVENT_MAX = 8
MEMPOOL_METRICS_EXPORTED_ELSEWHERE = frozenset({"mempool_size", "mempool_bytes"})
MEMPOOL_GAUGES = frozenset(
    {"mempool_relay_queue", "mempool_relay_retry_queue", "mempool_commit_latency_ms",
     "mempool_local_txs", "mempool_gapped_txs"}
)
# Proposed, not delivered; full blocks are not held back. Sweeps of n = 4..16 on 2 cores
# (docs/benchmarks.md): 2 kept n = 7 at 1,500-1,700 tx/s under overload, where 4 let it
# fall to 170-240 (smaller blocks, more instances); n = 4 at 2,000 tx/s keeps its
# throughput with 2 but pays latency (p99 2.3 s vs 0.6 s unbounded).
PARTIAL_BLOCKS_IN_FLIGHT_MAX = 2
PARTIAL_BLOCK_TXS_PER_VALIDATOR = 100
RELAY_BATCH_TXS_MAX = 2_000
RELAY_BATCH_BYTES_MAX = 1024 * 1024
RELAY_INTERVAL_S_N4 = 0.02  # see get_relay_interval_s
STATUS_INTERVAL_TICKS_N4 = 10
RELAY_IDLE_WAIT_MAX_S = 0.5  # an idle relay loop still looks this often (e.g. evidence txs)
CONSENSUS_FRAMES_PER_YIELD = 64
TX_BATCH_WAIT_YIELDS_MAX = 64
# Txs admitted between two looks at the consensus queue: ~50 signature checks, a few ms.
ADMIT_CHUNK_TXS = 50
MEMPOOL_EXPIRY_TICKS = 20
# The request timer waits at least this many of this node's local txs' commit latencies
# (Mempool.commit_latency_ms): an honest primary draining a full pool on a slow machine
# keeps every tx waiting long, while a censored one waits far longer than the rest.
REQUEST_TIMEOUT_LATENCY_FACTOR = 3
# A wake-up timed for a tick boundary may read the clock a little before it (float
# rounding, trio's clock against Driver.clock): within this fraction of a tick is on time.
TICK_EPSILON = 1e-3

MEMPOOL_REASON_CODES = {
    "decode": REJECT_INVALID_TX,
    "oversize": REJECT_INVALID_TX,
    "unsupported": REJECT_INVALID_TX,
    "bad_signature": REJECT_BAD_SIGNATURE,
    "nonce_too_low": REJECT_BAD_NONCE,
    "nonce_too_far_ahead": REJECT_BAD_NONCE,
    "duplicate_nonce": REJECT_BAD_NONCE,
    "insufficient_balance": REJECT_INSUFFICIENT_BALANCE,
    "full": REJECT_MEMPOOL_FULL,
}


class NodeSetupError(Exception):
    """The node cannot start with this key, genesis and data (a clear one-line reason)."""


class ActionRewriter(Protocol):
    """Test-only hook (``node/byzantine.py``): rewrites outgoing actions of a Byzantine node."""

    def rewrite(self, actions: list[Action], network: Any) -> list[Action]: ...

    @property
    def censors_txs(self) -> bool: ...


class Network(Protocol):
    """What the driver needs from the transport (a fake in unit tests)."""

    def send(self, to_index: int, frame: bytes, traffic: TrafficClass = ...) -> bool: ...

    def broadcast(self, frame: bytes, traffic: TrafficClass = ...) -> int: ...

    def get_connected_peers(self) -> list[int]: ...

    def get_metrics(self) -> dict[str, Any]: ...


@dataclass
class LatencyHistogram:
    bounds_seconds: tuple[float, ...] = LATENCY_BOUNDS_SECONDS
    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BOUNDS_SECONDS))
    count: int = 0
    sum_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum_seconds += seconds
        for i, bound in enumerate(self.bounds_seconds):
            if seconds <= bound:
                self.counts[i] += 1

    def snapshot(self) -> Histogram:
        return Histogram(self.bounds_seconds, tuple(self.counts), self.count, self.sum_seconds)


def to_codec_certificate(certificate: ConsensusCertificate) -> CommitCertificate:
    """The core's quorum of COMMIT votes as the codec stores it (same signatures)."""
    commits = certificate.commits
    assert commits, "a commit certificate has votes"
    first = commits[0]
    assert all((v.view, v.seq, v.digest) == (first.view, first.seq, first.digest) for v in commits)
    signatures = tuple(CommitSignature(v.signer, v.signature) for v in commits)
    return CommitCertificate(first.seq, first.view, first.digest, signatures)


def to_consensus_certificate(certificate: CommitCertificate) -> ConsensusCertificate:
    return ConsensusCertificate(
        tuple(
            Vote(
                PHASE_COMMIT,
                certificate.view,
                certificate.height,
                certificate.block_hash,
                s.validator_index,
                s.signature,
            )
            for s in certificate.signatures
        )
    )


def get_record_seq(record: PersistRecord) -> int | None:
    """The seq a record is about (None: view-change records, kept by view)."""
    if isinstance(record, Vote):
        return record.seq
    if isinstance(record, PrePrepare):
        return record.vote.seq
    if isinstance(record, PreparedCertificate):
        return record.pre_prepare.vote.seq
    return None


def get_node_index(genesis: Genesis, key: KeyPair) -> int:
    for index, validator in enumerate(genesis.validators):
        if validator.public_key == key.public_key:
            return index
    raise NodeSetupError(
        f"this node's key {key.public_key.hex()[:16]}... is not a validator in the genesis of "
        f"chain {genesis.chain_id!r}"
    )


def get_partial_block_txs_min(n: int, block_txs_max: int) -> int:
    """The fewest txs for a block proposed while one of ours is still in flight (with
    none in flight any block goes). Each instance costs every replica about 2n signed
    votes and frames, so blocks must grow with n to stay mostly txs: at n = 16 on 2
    cores, the primary proposing as soon as the pipeline had room ran 2.8 blocks/s of
    35 txs and committed less than blocks of ~390 did; with 25 per validator its closed
    loop ran blocks of ~450 txs (the minimum, 400) at 700-740 tx/s, with 100 blocks of
    ~1,500 at 970-1,020 tx/s, while n = 4 at 2,000 offered kept its latency
    (docs/benchmarks.md, sixth session). A block that waits for it waits only while
    another is in flight, so a lightly loaded chain still commits every block at once."""
    return max(1, min(PARTIAL_BLOCK_TXS_PER_VALIDATOR * n, block_txs_max // 2))


def get_relay_interval_s(n: int) -> float:
    """How long the relay loop lets local txs gather between batches: 20 ms for 4
    validators, longer in proportion to the n - 1 validators that relay, so the primary
    (with ``mempool.relay = "all"``, every node) receives about as many relay frames per
    second at any n.

    Every frame costs its receiver a Noise message, Yamux parsing and a trio wake-up
    (py-libp2p: ~0.3 ms of CPU each at n = 16 here). An open-loop client sends small
    requests to every node in turn, and at n = 16 with a 20 ms interval most batches
    carried a tx or two: about half of every node's frames were relay batches. The
    cost is latency: up to (n - 1) / 3 x 20 ms before the primary sees a tx, 100 ms
    at n = 16, against blocks that take 0.4 s or more there.
    """
    return RELAY_INTERVAL_S_N4 * max(1.0, (n - 1) / 3)


def get_status_interval_ticks(n: int, view_change_timeout_ticks: int) -> int:
    """How often a replica broadcasts STATUS (catch-up only): every 10 ticks for 4
    validators, longer in proportion to n so each replica receives about as many per
    second at any n (each costs a signature check: at n = 16 every 10 ticks was 30/s),
    and never longer than half a view-change timeout, so a lagging replica still
    hears of the chain's height well before it would suspect the primary."""
    interval = STATUS_INTERVAL_TICKS_N4 * max(4, n) // 4
    return max(1, min(interval, view_change_timeout_ticks // 4 if n <= 4
                      else view_change_timeout_ticks // 2))


def make_replica_config(config: Config, genesis: Genesis, index: int) -> ReplicaConfig:
    c = config.consensus
    try:
        return ReplicaConfig(
            n=len(genesis.validators),
            index=index,
            genesis_digest=get_genesis_hash(genesis),
            window_size=c.window,
            checkpoint_interval=c.checkpoint_interval,
            view_change_timeout_ticks=c.view_change_timeout_ticks,
            status_interval_ticks=get_status_interval_ticks(
                len(genesis.validators), c.view_change_timeout_ticks),
            fetch_timeout_ticks=max(2, c.view_change_timeout_ticks // 2),
            fetch_blocks_max=FETCH_BLOCKS_MAX,
        )
    except ValueError as exc:
        raise NodeSetupError(f"consensus config: {exc}") from None


class Driver:
    """Feeds events to the replica and executes its actions in order (see the module doc)."""

    def __init__(
        self,
        config: Config,
        genesis: Genesis,
        key: KeyPair,
        store: KVStore,
        network: Network,
        publish: Callable[[NodeEvent], None] = lambda event: None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.config = config
        self.genesis = genesis
        self.key = key
        self.network = network
        self.publish = publish
        self.clock = clock
        self.wall_ms = wall_ms
        self.limits = limits
        # This node's own write-ahead records are not a peer's bytes: one written before
        # view change became digest-only may exceed the frame-sized message limit, and a
        # node must still restart from what it wrote.
        self.wal_limits = dataclasses.replace(
            limits, message_size_max_bytes=max(limits.message_size_max_bytes,
                                               WAL_RECORD_SIZE_MAX_BYTES))
        self.index = get_node_index(genesis, key)
        self.chain = ChainStore(store, genesis, limits)
        self.state: State = self.chain.load_state()
        self.context = ChainContext.from_genesis(genesis, limits)
        self.mempool = Mempool(
            genesis.chain_id,
            limits,
            MempoolConfig(
                tx_count_max=config.mempool.txs_max,
                size_max_bytes=config.mempool.size_max_bytes,
                relay_retry_ms=config.mempool.relay_retry_ms,
                relay_retry_max_ms=max(16 * config.mempool.relay_retry_ms, 16_000),
                local_fill_shares=(1 if config.mempool.relay == RELAY_ALL
                                   else max(1, len(genesis.validators) - 1)),
            ),
            validator_count=len(genesis.validators),
        )
        self.relay_mode = config.mempool.relay
        self.block_txs_max = min(config.block.txs_max, limits.block_txs_max)
        self.block_size_max_bytes = min(
            config.block.size_max_bytes, limits.block_size_max_bytes, BLOCK_SIZE_CAP_BYTES
        )
        self.checker = BlockChecker(
            self.context, self.mempool.signature_cache, self.state, self.block_size_max_bytes,
            decoded=self.mempool.get_decoded,
        )
        self.auth = NodeAuthenticator(
            key, genesis.chain_id, [v.public_key for v in genesis.validators]
        )
        self.replica_config = make_replica_config(config, genesis, self.index)
        self.replica = Replica.restore(
            self.replica_config,
            self.auth,
            self.checker,
            self._load_wal_records(),
            (self.state.height, self.state.last_block_hash),
        )
        tick_s = config.consensus.tick_ms / 1000
        self.tick_s = tick_s
        view_change_s = config.consensus.view_change_timeout_ticks * tick_s
        self.build_interval_s = config.block.build_interval_ms / 1000
        self.partial_block_txs_min = get_partial_block_txs_min(
            len(genesis.validators), self.block_txs_max)
        self.proposed_txs: dict[int, int] = {}  # our proposals not yet delivered: seq -> txs
        self.empty_block_interval_s = min(
            config.consensus.propose_timeout_ticks * tick_s, view_change_s / 3
        )
        now = clock()
        self.last_proposal_time = now
        self.last_progress_time = now
        self.next_build_check = now
        # (slot, admitted count) after a "full" reap gave a partial block: see _defer_full_reap.
        self.full_reap_deferral: tuple[ProposalSlot, int] | None = None
        self.seen_times: dict[int, float] = {}
        self.latency = LatencyHistogram()
        self.evidence: deque[Evidence] = deque(maxlen=EVIDENCE_KEPT_MAX)
        self.evidence_total = 0
        # Evidence ids (offender, view, seq) this node sent a report for -> the report's tx
        # hash (None: not admitted); bounded FIFO (see _report_evidence).
        self.evidence_reported: OrderedDict[tuple[int, int, int], bytes | None] = OrderedDict()
        self.evidence_reports: dict[str, int] = {}
        self.discards: dict[str, int] = {}
        self.genesis_mismatch_warned = False
        # The transport drops a frame over this (tests lower it to show what follows).
        self.frame_size_max_bytes = FRAME_SIZE_MAX_BYTES
        self.oversize_warned: tuple[str, int] | None = None  # (message kind, view) said last
        self.drops: dict[str, int] = {}
        self.view_changes_total = 0
        self.request_timeout_ms = (config.consensus.request_timeout_ticks
                                   * config.consensus.tick_ms)
        self.request_timeouts_total = 0
        # The replica's (view, active) after the last event, and when it last changed:
        # view changes are counted from it, and the request timer gives each primary the
        # full timeout from when this replica entered its view or became active in it.
        self.last_view_state = (self.replica.view, self.replica.active)
        self.view_started_ms = wall_ms()
        self.blocks_committed_total = 0
        self.txs_committed_total = 0
        self.proposals_total = 0
        self.ticks = 0
        # catch_up_ticks: tick k falls at tick_origin + k * tick_s; ticks up to tick_index
        # are accounted for (delivered, or dropped as late).
        self.tick_origin = now
        self.tick_index = 0
        self.halted: str | None = None
        self._pending_persist: list[bytes] = []
        self._pending_stable: int | None = None
        self.on_local_tx: Callable[[], None] = lambda: None  # the relay loop's wake-up
        # Test-only switches (bcfl e2e); both off in every normal run.
        self.byzantine: ActionRewriter | None = None
        self.skip_persist = False

    # --- restore ---------------------------------------------------------------------

    def _load_wal_records(self) -> list[PersistRecord]:
        records: list[PersistRecord] = []
        for seq, raw in self.chain.load_wal_entries():
            try:
                record = decode_consensus_message(raw, MESSAGE_TYPES, self.wal_limits)
            except DecodeError as exc:
                raise ChainStoreError(f"write-ahead record {seq} is corrupt: {exc}") from None
            if not isinstance(
                record, Vote | PrePrepare | PreparedCertificate | ViewChange | NewView
            ) and not isinstance(record, StableCheckpoint):
                raise ChainStoreError(f"write-ahead record {seq} is a {type(record).__name__}")
            records.append(record)
        return records

    # --- events in ---------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if self.halted is not None:
            return
        if isinstance(event, Receive) and isinstance(event.message, PrePrepare):
            seq = event.message.vote.seq
            if seq > self.replica.last_delivered_seq and len(self.seen_times) < 4 * (
                self.replica_config.window_size
            ):
                self.seen_times.setdefault(seq, self.clock())
        actions = self.replica.handle(event)
        self.execute(actions)
        self._after_handle()

    def execute(self, actions: list[Action]) -> None:
        if self.byzantine is not None:
            actions = self.byzantine.rewrite(actions, self.network)
        for action in actions:
            if isinstance(action, Persist) and self.skip_persist:
                continue  # the deliberately broken build of the e2e suite
            if isinstance(action, Persist):
                self._pending_persist.append(encode_consensus_message(action.record))
                if isinstance(action.record, StableCheckpoint):
                    self._pending_stable = action.record.seq
                continue
            self._flush_persist()
            if isinstance(action, Send):
                frame = encode_consensus_message(action.message)
                self._check_frame_size(action.message, len(frame))
                self.network.send(action.to, frame)
            elif isinstance(action, Broadcast):
                frame = encode_consensus_message(action.message)
                self._check_frame_size(action.message, len(frame))
                self.network.broadcast(frame)
            elif isinstance(action, Deliver):
                self._deliver(action)
            elif isinstance(action, FetchBlocks):
                self._fetch(action)
            elif isinstance(action, ReportEvidence):
                self.evidence.append(action.evidence)
                self.evidence_total += 1
                signer = action.evidence.first.signer
                logger.warning("evidence of equivocation by validator %d", signer)
                self._report_evidence(action.evidence)
            elif isinstance(action, Discard):
                self._count(self.discards, action.reason.split(":", 1)[0])
                self._check_genesis_mismatch(action.reason)
            else:  # pragma: no cover - a new action type needs a branch
                raise AssertionError(f"unknown action {type(action).__name__}")
        self._flush_persist()

    def _check_frame_size(self, message: PeerMessage, size: int) -> None:
        """Say once per message kind and view that a message is over the frame limit: the
        transport drops it, counted only. None is expected (view change is digest-only and
        a block is bounded below the limit), so this names a bound that did not hold."""
        if size <= self.frame_size_max_bytes:
            return
        kind = OVERSIZE_MESSAGE_NAMES.get(type(message), type(message).__name__)
        if isinstance(message, ViewChange):
            view = message.new_view
        elif isinstance(message, NewView):
            view = message.view
        else:  # no other message carries payloads of more than one block
            view = self.replica.view
        if self.oversize_warned == (kind, view):
            return
        self.oversize_warned = (kind, view)
        logger.error(
            "%s for view %d is %d bytes, over the %d-byte frame limit: no peer receives it "
            "(stable checkpoint at seq %d); please report it with this line",
            kind, view, size, self.frame_size_max_bytes, self.replica.low_seq)

    def _check_genesis_mismatch(self, reason: str) -> None:
        """Say once why a node whose genesis differs from its peers' stays at height 0.

        Its genesis hash is block 1's parent, so it can neither vote with the others nor
        take their blocks, and without this the only trace is a discard counter."""
        if (self.genesis_mismatch_warned or self.replica.last_delivered_seq != 0
                or not reason.startswith(FETCHED_BLOCK_OTHER_PARENT)):
            return
        self.genesis_mismatch_warned = True
        logger.warning(
            "block 1 fetched from a peer does not build on this node's genesis (hash %s): "
            "if every peer's does not (the metric bcfl_messages_dropped_total{reason="
            "\"consensus_fetched_block_rejected\"} keeps growing), this node's genesis.json "
            "is not the chain's; compare the hash `bcfl genesis validate` prints with the "
            "other members'",
            self.replica.config.genesis_digest.hex())

    def _flush_persist(self) -> None:
        if not self._pending_persist:
            return
        records, self._pending_persist = self._pending_persist, []
        self.chain.append_wal(records)
        if self._pending_stable is not None:
            stable, self._pending_stable = self._pending_stable, None
            self._prune_wal(stable)

    def _prune_wal(self, stable_seq: int) -> None:
        """Drop records the core no longer needs: at or below the stable checkpoint, older
        stable checkpoints, and view changes of views below the current one."""
        doomed: list[bytes] = []
        view = self.replica.view
        for wal_seq, raw in self.chain.load_wal_entries():
            record = decode_consensus_message(raw, MESSAGE_TYPES, self.wal_limits)
            seq = get_record_seq(record)
            if (
                (seq is not None and seq <= stable_seq)
                or (isinstance(record, StableCheckpoint) and record.seq < stable_seq)
                or (isinstance(record, ViewChange) and record.new_view < view)
                or (isinstance(record, NewView) and record.view < view)
            ):
                doomed.append(schema.get_wal_key(wal_seq))
        if doomed:
            self.chain.store.write_batch([], doomed, sync=True)

    def _count(self, table: dict[str, int], reason: str) -> None:
        if reason not in table and len(table) >= DROP_REASONS_MAX:
            reason = "other"
        table[reason] = table.get(reason, 0) + 1

    def count_drop(self, reason: str) -> None:
        self._count(self.drops, reason)

    # --- delivery ----------------------------------------------------------------------

    def _deliver(self, action: Deliver) -> None:
        if self.halted is not None:
            return
        applied = self.checker.get_applied(action.digest)
        if applied is None or applied.state.height != self.state.height + 1:
            try:
                block = decode_block(action.payload, self.limits, self.genesis.chain_id, False)
                applied = apply_block(self.state, block, self.context, self.mempool.signature_cache)
            except (DecodeError, BlockInvalid) as exc:
                self._halt(action.seq, str(exc))
                return
        # A block checked at PRE-PREPARE is kept decoded: its header hashes to the
        # digest and its txs to the header's tx root, so the payload is that block.
        assert applied.block_hash == action.digest == get_block_hash(applied.block.header)
        self._commit(action.payload, applied, to_codec_certificate(action.certificate))

    def _commit(self, payload: bytes, applied: AppliedBlock, cert: CommitCertificate) -> None:
        self.chain.commit_block(payload, applied, cert, self.wall_ms())
        self.state = applied.state
        self.checker.set_tip(self.state)
        self.mempool.update(self.state, applied.tx_hashes, committed_at_ms=self.wall_ms(),
                            changed_keys=applied.diff.keys())
        self._settle_evidence_txs(applied.diff)
        now = self.clock()
        self.last_progress_time = now
        height = self.state.height
        seen = self.seen_times.pop(height, None)
        if seen is not None:
            self.latency.observe(max(0.0, now - seen))
        for seq in [s for s in self.seen_times if s <= height]:
            del self.seen_times[seq]
        self.blocks_committed_total += 1
        self.txs_committed_total += len(applied.tx_hashes)
        self.publish(BlockEvent(height, applied.block_hash, len(applied.tx_hashes)))
        for index, tx_hash in enumerate(applied.tx_hashes):
            self.publish(TxEvent(tx_hash, height, index))

    # --- evidence on chain (node/evidence.py) ---------------------------------------------

    def _report_evidence(self, evidence: Evidence) -> None:
        """Sign and admit one EvidenceReport tx per (offender, view, seq); relayed as local."""
        evidence_id = get_evidence_id(evidence)
        if evidence_id in self.evidence_reported or is_evidence_recorded(self.state, evidence):
            return
        nonce = self.get_account(self.key.public_key).nonce  # next nonce past pending ones
        tx_bytes = encode_tx(make_evidence_tx(self.key, self.genesis.chain_id, nonce, evidence))
        result = self.submit_tx(tx_bytes)
        self._count(self.evidence_reports, result.status)
        accepted = result.status == "accepted"
        self.evidence_reported[evidence_id] = result.tx_hash if accepted else None
        while len(self.evidence_reported) > EVIDENCE_REPORTED_MAX:
            self.evidence_reported.popitem(last=False)
        logger.info("evidence tx against validator %d at view %d seq %d: %s",
                    *evidence_id, result.status)

    def _settle_evidence_txs(self, diff: Mapping[bytes, bytes | None]) -> None:
        """After a block that recorded evidence: drop pending reports it made redundant.

        Such a tx can never apply (``duplicate_evidence``) and would hold back its
        sender's later txs, so every node evicts it; if this node's own report was one
        and its later txs are pending, a zero self-transfer takes the freed nonce so
        they stay a consecutive run.
        """
        if not any(key.startswith(EVIDENCE_RECORDS_PREFIX) for key in diff):
            return
        entries = self.state.entries

        def is_redundant(tx: Transaction) -> bool:
            if not isinstance(tx.body, EvidenceReport):
                return False
            try:
                evidence_id = get_evidence_id(decode_evidence(tx.body.evidence))
            except DecodeError:
                return True  # can never apply either
            return get_evidence_key(*evidence_id) in entries

        evicted = self.mempool.evict_if(is_redundant, EVICT_EVIDENCE_RECORDED)
        own = self.key.public_key
        for tx in evicted:
            if tx.sender != own:
                continue
            if any(n > tx.nonce for n in self.mempool.get_pending_nonces(own)):
                filler = Transaction(own, tx.nonce, Transfer(own, 0))
                self.submit_tx(encode_tx(sign_tx(self.key, self.genesis.chain_id, filler)))

    def _halt(self, seq: int, reason: str) -> None:
        self.halted = f"block {seq} was committed by consensus but fails to apply: {reason}"
        logger.error("HALT: %s; this node stops committing (see docs/node.md)", self.halted)

    # --- proposals ---------------------------------------------------------------------

    def _after_handle(self) -> None:
        view_state = (self.replica.view, self.replica.active)
        if view_state != self.last_view_state:
            previous_view = self.last_view_state[0]
            self.last_view_state = view_state
            self.view_started_ms = self.wall_ms()
            if self.replica.view != previous_view:
                self.view_changes_total += max(0, self.replica.view - previous_view)
                self.proposed_txs.clear()  # an old view's proposals are not in flight
                if self.relay_mode != RELAY_ALL and self.mempool.requeue_relayed():
                    self.on_local_tx()  # the new primary has none of our txs: relay now
        for _ in range(PROPOSALS_PER_EVENT_MAX):
            if self.halted is not None or not self._maybe_propose():
                return

    def _maybe_propose(self) -> bool:
        slot = self.replica.get_proposal_slot()
        if slot is None:
            return False
        now = self.clock()
        parent_state = self.checker.get_state(slot.parent_digest)
        if parent_state is None:
            return False  # a re-proposed block of a NEW-VIEW: wait until it is delivered
        empty_due = now - max(self.last_progress_time, self.last_proposal_time) >= (
            self.empty_block_interval_s
        )
        full = len(self.mempool) >= self.block_txs_max and not self._is_full_reap_deferred(slot)
        # Busy: let txs gather while earlier blocks commit. Proposing a small block per build
        # interval regardless made a CPU-starved chain (n = 10 on 2 cores) run ever more
        # consensus instances of ever fewer txs, each costing O(n) messages at every
        # replica; waiting makes the next block bigger instead. Only a full block is not
        # held back; the delivery that frees the pipeline is an event, so this runs again.
        in_flight = slot.seq - 1 - self.replica.last_delivered_seq
        busy = in_flight >= PARTIAL_BLOCKS_IN_FLIGHT_MAX
        if busy and not full:
            return False
        # Pipelined blocks only when worth their votes (get_partial_block_txs_min); no
        # empty heartbeat block either while one of ours is in flight.
        pipelined_small = in_flight > 0 and not full
        if pipelined_small and self._count_unproposed_txs() < self.partial_block_txs_min:
            return False
        if not (empty_due or full) and (
            now < self.next_build_check or not len(self.mempool)
        ):
            return False
        builder = BlockBuilder(
            parent_state, self.context, self.mempool.signature_cache, self.index, self.wall_ms()
        )
        if self.byzantine is not None and self.byzantine.censors_txs:
            txs: list[bytes] = []  # bcfl e2e's censoring primary: blocks, never a tx
        else:
            txs = self.mempool.reap(
                self.block_txs_max, self.block_size_max_bytes - 4096, parent_state, builder
            )
        if not txs and not empty_due:
            self.next_build_check = now + self.build_interval_s
            self._defer_full_reap(slot, 0)
            return False
        if not empty_due and len(txs) < self.block_txs_max and (
            now - self.last_proposal_time < self.build_interval_s
        ):
            self._defer_full_reap(slot, len(txs))
            return False
        if busy and len(txs) < self.block_txs_max:
            self._defer_full_reap(slot, len(txs))  # "full" counted in-flight txs
            return False
        if pipelined_small and len(txs) < self.partial_block_txs_min:
            self.next_build_check = now + self.build_interval_s  # e.g. txs behind nonce gaps
            return False
        self.full_reap_deferral = None
        built = builder.finish(slot.view)  # the reaped txs, applied once while reaping
        self.checker.remember(built.applied)
        self.last_proposal_time = now
        self.next_build_check = now + self.build_interval_s
        self.proposals_total += 1
        self.seen_times.setdefault(slot.seq, now)
        self.proposed_txs[slot.seq] = len(built.block.txs)
        payload = encode_block(built.block)
        actions = self.replica.handle(Proposal(slot.view, slot.seq, slot.parent_digest, payload))
        self.execute(actions)
        return self.replica.get_proposal_slot() != slot

    def _count_unproposed_txs(self) -> int:
        """Pool txs not in a block of ours still in flight (an upper bound on what a reap
        could take: txs behind nonce gaps count too)."""
        delivered = self.replica.last_delivered_seq
        for seq in [seq for seq in self.proposed_txs if seq <= delivered]:
            del self.proposed_txs[seq]
        return len(self.mempool) - sum(self.proposed_txs.values())

    def _defer_full_reap(self, slot: ProposalSlot, reaped: int) -> None:
        """A "full" mempool gave a partial block: it also counts txs in in-flight blocks
        and behind nonce gaps. Reap again for fullness only once enough new txs came in
        to fill the block, or the slot moved; the build interval still applies."""
        needed = self.block_txs_max - reaped
        assert needed > 0
        self.full_reap_deferral = (slot, self.mempool.metrics.admitted + needed)

    def _is_full_reap_deferred(self, slot: ProposalSlot) -> bool:
        if self.full_reap_deferral is None:
            return False
        deferred_slot, admitted_target = self.full_reap_deferral
        if deferred_slot != slot or self.mempool.metrics.admitted >= admitted_target:
            self.full_reap_deferral = None
            return False
        return True

    # --- ticks -------------------------------------------------------------------------

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % MEMPOOL_EXPIRY_TICKS == 0:
            self.mempool.evict_expired(self.wall_ms())
            self._check_request_timer()
        self.handle(Tick())

    def _check_request_timer(self) -> None:
        """PBFT's request timer, for a primary that keeps the chain moving but leaves out a
        tx (censors): the core's progress timer never fires then. A backup whose pool holds
        a tx that would apply next on the committed state and has waited
        ``request_timeout_ms`` (Mempool.get_overdue) sends it to every validator, so their
        timers start for it too (with relay to the primary only, they may never have seen
        it), and tells the core, which moves to the next view. One replica alone cannot
        replace a primary: f+1 must (the rest join them), and each gives a new primary the
        whole timeout from when its view started. Under a slow, honest backlog the wait
        stretches to REQUEST_TIMEOUT_LATENCY_FACTOR commit latencies."""
        if (self.request_timeout_ms == 0 or not self.replica.active or self.replica.is_primary
                or self.replica.is_fetching):
            return
        wait_ms = max(self.request_timeout_ms,
                      int(REQUEST_TIMEOUT_LATENCY_FACTOR * self.mempool.commit_latency_ms))
        overdue = self.mempool.get_overdue(
            self.state, self.wall_ms(), wait_ms, self.view_started_ms)
        if overdue is None:
            return
        self.request_timeouts_total += 1
        primary = self.replica_config.get_primary(self.replica.view)
        logger.warning(
            "tx %s could have gone in a block for %.1f s and validator %d, primary of view %d, "
            "has not proposed it: sending it to every validator and voting to change view",
            overdue.tx_hash.hex()[:16], overdue.waited_ms / 1000, primary, self.replica.view)
        self.network.broadcast(encode_tx_batch([overdue.tx_bytes]), TrafficClass.TRANSACTIONS)
        self.handle(SuspectPrimary(f"tx {overdue.tx_hash.hex()} waited {overdue.waited_ms} ms"))

    def get_ticks_until_due(self) -> int:
        """Ticks until one may do something here (at least 1): the replica's next timer,
        the mempool's expiry pass while it holds txs, and at the primary a build check on
        every tick while txs wait (admission does not propose; the tick does) or else the
        empty heartbeat block. The ticks before it change nothing but counters."""
        ticks = self.replica.get_ticks_until_due()
        if len(self.mempool):
            if self.replica.is_primary:
                return 1
            ticks = min(ticks, MEMPOOL_EXPIRY_TICKS - self.ticks % MEMPOOL_EXPIRY_TICKS)
        elif self.replica.is_primary:
            due_at = max(self.last_progress_time, self.last_proposal_time) + (
                self.empty_block_interval_s)
            due_index = math.ceil((due_at - self.tick_origin) / self.tick_s - TICK_EPSILON)
            ticks = min(ticks, max(1, due_index - self.tick_index))
        return ticks

    def get_next_tick_time(self) -> float:
        """The clock time at which catch_up_ticks next has something to do."""
        return self.tick_origin + (self.tick_index + self.get_ticks_until_due()) * self.tick_s

    def catch_up_ticks(self) -> None:
        """Deliver the ticks whose time (every tick_s on the clock) has come, so a node need
        not wake for each: node.Node sleeps until get_next_tick_time and calls this before
        every event too, so the replica's now_tick is current when a deadline is set.
        Ticks beyond the first due one are dropped, as a late periodic tick was: a node
        that could not run for a while does not fire several timers at once for it."""
        index = math.floor((self.clock() - self.tick_origin) / self.tick_s + TICK_EPSILON)
        if index <= self.tick_index:
            return
        deliver = min(index - self.tick_index, self.get_ticks_until_due())
        self.tick_index = index
        for _ in range(deliver):  # bounded: at most a STATUS interval (ticks_until_due)
            self.tick()

    # --- frames from peers -------------------------------------------------------------

    def on_consensus_frame(self, sender: int, frame: bytes) -> None:
        kind = get_frame_kind(frame)
        try:
            if kind == FRAME_CONSENSUS:
                message = decode_consensus_message(frame, PEER_MESSAGE_TYPES, self.limits)
                self.handle(Receive(sender, message))
            elif kind == FRAME_BLOCK_REQUEST:
                self._serve_blocks(sender, decode_block_request(frame))
            elif kind == FRAME_BLOCK_RESPONSE:
                blocks = decode_block_response(frame, self.limits)
                self.handle(BlocksFetched(tuple(blocks)))
            else:
                self.count_drop("unknown_frame_kind")
        except DecodeError as exc:
            self.count_drop(f"decode_{kind or 'unknown'}")
            logger.debug("dropped a bad frame from validator %d: %s", sender, exc)

    def on_tx_batch_frame(self, sender: int, frame: bytes) -> None:
        self.admit_peer_txs(self.decode_peer_tx_batch(frame))

    def decode_peer_tx_batch(self, frame: bytes) -> Sequence[bytes]:
        """A peer's relay frame as tx bytes (empty, and counted, if it is not one)."""
        if get_frame_kind(frame) != FRAME_TX_BATCH:
            self.count_drop("unknown_frame_kind")
            return ()
        try:
            return decode_tx_batch(frame, self.limits)
        except DecodeError:
            self.count_drop("decode_tx_batch")
            return ()

    def admit_peer_txs(self, txs: Iterable[bytes]) -> None:
        now_ms = self.wall_ms()
        for tx in txs:
            self.mempool.admit(tx, self.state, now_ms, SOURCE_PEER)

    def take_relay_frame(self) -> tuple[bytes, tuple[int, ...]] | None:
        """The next relay batch and the validators it goes to (get_relay_targets). The
        primary takes its batch too but sends it nowhere: it proposes from its own pool, and
        after a view change the batch is requeued for the new primary like everyone's."""
        targets = self.get_relay_targets()
        batch = self.mempool.take_relay_batch(
            RELAY_BATCH_TXS_MAX, RELAY_BATCH_BYTES_MAX, self.wall_ms(), to_peers=bool(targets)
        )
        if not batch or not targets:
            return None
        return encode_tx_batch(batch), targets

    def get_relay_targets(self) -> tuple[int, ...]:
        """Relay to the current view's primary only (``mempool.relay = "primary"``), or to
        every other validator ("all").

        Only the primary puts txs in blocks, and every validator checks each tx's signature
        once either way (at admission, or in the block check when it was not relayed the
        tx). Sending each batch to n - 1 peers cost every validator a frame per peer per
        relay interval and an admission per tx besides the block's: at n = 16 on 2 cores,
        relaying to the primary alone cut CPU per committed tx by 15% (docs/benchmarks.md).
        The price: a backup checks the signatures of a PRE-PREPARE's txs when it arrives,
        on the commit path, rather than ahead of it."""
        if self.relay_mode == RELAY_ALL:
            return tuple(i for i in range(self.replica_config.n) if i != self.index)
        primary = self.replica_config.get_primary(self.replica.view)
        return () if primary == self.index else (primary,)

    # --- catch-up ----------------------------------------------------------------------

    def _fetch(self, action: FetchBlocks) -> None:
        if not action.peers:
            return
        to_seq = min(action.to_seq, action.from_seq + FETCH_BLOCKS_MAX - 1)
        request = encode_block_request(BlockRequest(action.from_seq, to_seq))
        self.network.send(action.peers[0], request)

    def _serve_blocks(self, sender: int, request: BlockRequest) -> None:
        blocks: list[FetchedBlock] = []
        size = 0
        top = min(request.to_seq, self.state.height)
        for height in range(request.from_seq, top + 1):
            raw = self.chain.get_block_bytes(height)
            cert = self.chain.get_certificate(height)
            if raw is None or cert is None:
                break
            if blocks and size + len(raw) > RESPONSE_BUDGET_BYTES:
                break
            blocks.append(FetchedBlock(height, raw, to_consensus_certificate(cert)))
            size += len(raw) + 256 * len(cert.signatures)
        if blocks:
            self.network.send(sender, encode_block_response(blocks))

    # --- queries (API) -----------------------------------------------------------------

    def submit_tx(self, tx_bytes: bytes) -> SubmitResult:
        result = self.mempool.admit(tx_bytes, self.state, self.wall_ms(), SOURCE_LOCAL)
        # admit hashed an accepted or duplicate tx already; a refusal may not have
        tx_hash = result.tx_hash if result.tx_hash is not None else get_tx_hash(tx_bytes)
        if result.ok and not result.duplicate:
            self.on_local_tx()
        if result.duplicate:
            return SubmitResult(tx_hash, "duplicate")
        # A committed tx's nonce is below its sender's, so only then is the store asked
        # whether it is one (a lookup per accepted tx was 6.5 us for nothing).
        if (result.reason == REJECT_NONCE_TOO_LOW
                and self.chain.get_tx_location(tx_hash) is not None):
            return SubmitResult(tx_hash, "duplicate")
        if result.reason is not None:
            # A body's own reason (e.g. a learning tx's ``privacy_budget``) is its code.
            code = MEMPOOL_REASON_CODES.get(result.reason, result.reason)
            return SubmitResult(tx_hash, "rejected", code, f"{result.reason}: {result.message}")
        return SubmitResult(tx_hash, "accepted")

    def get_tx(self, tx_hash: bytes) -> TxStatus | None:
        location = self.chain.get_tx_location(tx_hash)
        if location is not None:
            return TxStatus(tx_hash, "committed", location[0], location[1])
        if tx_hash in self.mempool:
            return TxStatus(tx_hash, "pending")
        return None

    def get_block(self, height: int | None) -> BlockInfo | None:
        height = self.state.height if height is None else height
        if height < 1 or height > self.state.height:
            return None
        raw = self.chain.get_block_bytes(height)
        if raw is None:
            return None
        block = decode_block(raw, self.limits, check_txs=False)
        return BlockInfo(
            header=block.header,
            block_hash=get_block_hash(block.header),
            tx_hashes=tuple(get_tx_hash(tx) for tx in block.txs),
            block_bytes=raw,
            certificate=self.chain.get_certificate(height),
            committed_time_ms=self.chain.get_commit_time_ms(height),
        )

    def get_status(self) -> NodeStatus:
        connected = set(self.network.get_connected_peers())
        validators = tuple(
            ValidatorStatus(i, v.name, v.public_key, i == self.index or i in connected)
            for i, v in enumerate(self.genesis.validators)
        )
        return NodeStatus(
            chain_id=self.genesis.chain_id,
            moniker=self.config.moniker,
            public_key=self.key.public_key,
            peer_id=self.key.peer_id,
            validator_index=self.index,
            height=self.state.height,
            latest_block_hash=self.state.last_block_hash if self.state.height else None,
            view=self.replica.view,
            primary_index=self.replica_config.get_primary(self.replica.view),
            peers_connected=len(connected),
            validators=validators,
            catching_up=self.replica.fetch is not None,
            mempool_txs=len(self.mempool),
        )

    def get_account(self, account_id: bytes) -> AccountInfo:
        account = get_account(self.state, account_id)
        pending = set(self.mempool.get_pending_nonces(account_id))
        nonce = account.nonce
        while nonce in pending:  # bounded by the mempool's per-sender nonce window
            nonce += 1
        reputation, epsilon = get_learning_account(self.state, account_id)
        return AccountInfo(account_id, account.balance, nonce, reputation, epsilon)

    def get_dropped(self) -> dict[str, int]:
        out: dict[str, int] = {}
        transport = self.network.get_metrics()
        for reason, count in transport.get("drops", {}).items():
            out[f"transport_{reason}"] = int(count)
        out["refused_connection"] = int(transport.get("refused_connections", 0))
        out["refused_stream"] = int(transport.get("refused_streams", 0))
        for reason, count in self.drops.items():
            out[reason] = count
        for reason, count in self.discards.items():
            out[f"consensus_{reason.replace(' ', '_')}"] = count
        return out

    def get_metrics(self) -> Metrics:
        usage = self.replica.get_memory_usage()
        peers = list(self.network.get_metrics().get("peers", {}).values())
        return Metrics(
            height=self.state.height,
            view=self.replica.view,
            view_changes_total=self.view_changes_total,
            blocks_committed_total=self.blocks_committed_total,
            txs_committed_total=self.txs_committed_total,
            mempool_txs=len(self.mempool),
            mempool_size_bytes=self.mempool.size_bytes,
            peers_connected=len(self.network.get_connected_peers()),
            consensus_latency=self.latency.snapshot(),
            messages_dropped_total=self.get_dropped(),
            extra_gauges={
                "bcfl_evidence_total": float(self.evidence_total),
                "bcfl_evidence_txs_accepted_total": float(self.evidence_reports.get("accepted", 0)),
                "bcfl_halted": 1.0 if self.halted else 0.0,
                "bcfl_proposals_total": float(self.proposals_total),
                "bcfl_request_timeouts_total": float(self.request_timeouts_total),
                "bcfl_stash_messages": float(usage["stash"]),
                "bcfl_checked_blocks_cached": float(len(self.checker)),
                "bcfl_stateless_block_checks_total": float(self.checker.stateless_checks),
                # Wire cost per committed tx (benchmarks): payload bytes handed to streams.
                "bcfl_transport_bytes_sent_total": float(sum(p["bytes_sent"] for p in peers)),
                "bcfl_transport_frames_sent_total": float(sum(p["frames_sent"] for p in peers)),
                **self._get_mempool_counters(),
            },
        )

    def _get_mempool_counters(self) -> dict[str, float]:
        """The pool's own metrics (admission outcomes, evictions, relay queues): under load,
        why txs wait or vanish shows here first. Size and bytes have their own gauges."""
        out: dict[str, float] = {}
        for name, value in self.mempool.get_metrics().items():
            if name in MEMPOOL_METRICS_EXPORTED_ELSEWHERE:
                continue
            safe = "".join(c if c.isalnum() else "_" for c in name.lower())  # body reasons
            out[f"bcfl_{safe}{'' if name in MEMPOOL_GAUGES else '_total'}"] = float(value)
        return out


class Node:
    """The driver on trio with the transport and the API bridge."""

    def __init__(self, driver: Driver, transport: Any) -> None:
        self.driver = driver
        self.transport = transport
        self.tick_wake: tuple[trio.CancelScope, float] | None = None  # _tick_loop's sleep
        self.relay_wanted = trio.Event()
        driver.on_local_tx = self._wake_relay

    def _wake_relay(self) -> None:
        self.relay_wanted.set()

    async def run(self, bridge: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.transport.run)
            nursery.start_soon(self._consensus_loop)
            nursery.start_soon(self._tx_loop)
            nursery.start_soon(self._tick_loop)
            nursery.start_soon(self._relay_loop)
            if bridge is not None:
                nursery.start_soon(self._request_loop, bridge)
            task_status.started()

    async def _consensus_loop(self) -> None:
        inbound = self.transport.inbound(TrafficClass.CONSENSUS)
        handled = 0
        async for sender, frame in inbound:
            self.driver.catch_up_ticks()
            self.driver.on_consensus_frame(sender, frame)
            self._reschedule_ticks()
            handled += 1
            if handled % CONSENSUS_FRAMES_PER_YIELD == 0:
                await trio.sleep(0)

    async def _tx_loop(self) -> None:
        async for _sender, frame in self.transport.inbound(TrafficClass.TRANSACTIONS):
            txs = self.driver.decode_peer_tx_batch(frame)
            for start in range(0, len(txs), ADMIT_CHUNK_TXS):
                await self._let_consensus_go_first()
                self.driver.catch_up_ticks()
                self.driver.admit_peer_txs(txs[start : start + ADMIT_CHUNK_TXS])
                self._reschedule_ticks()

    async def _let_consensus_go_first(self) -> None:
        """Between chunks of tx admission, let consensus frames that have arrived be
        handled first (bounded). Admitting a whole relay batch (hundreds of signature
        checks) at once held a PRE-PREPARE or a vote behind it for that long, and a
        validator with 1/16 of a core took a second or more per phase at n = 16."""
        consensus = self.transport.inbound(TrafficClass.CONSENSUS)
        await trio.sleep(0)  # the stream readers move what has arrived into the queue
        for _ in range(TX_BATCH_WAIT_YIELDS_MAX):
            if consensus.is_consumer_idle():
                break
            await trio.sleep(0)

    async def _submit_txs(self, payload: Sequence[bytes]) -> list[SubmitResult]:
        results: list[SubmitResult] = []
        for start in range(0, len(payload), ADMIT_CHUNK_TXS):
            if start:
                await self._let_consensus_go_first()
            chunk = payload[start : start + ADMIT_CHUNK_TXS]
            self.driver.catch_up_ticks()
            results.extend(self.driver.submit_tx(tx_bytes) for tx_bytes in chunk)
            self._reschedule_ticks()
        return results

    async def _tick_loop(self) -> None:
        """Sleep until a tick is due (Driver.get_next_tick_time), not every tick: a wake-up
        of trio in guest mode costs a thread hand-off, and waking 20 times a second per
        validator for ticks that did nothing cost an idle 16-validator localnet 10-20% of
        its CPU. An event that brings the next due tick forward moves the wake-up
        (_reschedule_ticks)."""
        while True:
            wake_at = self.driver.get_next_tick_time()
            with trio.move_on_at(self._to_trio_time(wake_at)) as scope:
                self.tick_wake = (scope, wake_at)
                await trio.sleep_forever()
            self.tick_wake = None
            self.driver.catch_up_ticks()

    def _reschedule_ticks(self) -> None:
        if self.tick_wake is None:
            return
        scope, wake_at = self.tick_wake
        sooner = self.driver.get_next_tick_time()
        if sooner < wake_at:
            scope.deadline = self._to_trio_time(sooner)
            self.tick_wake = (scope, sooner)

    def _to_trio_time(self, clock_time: float) -> float:
        return trio.current_time() + (clock_time - self.driver.clock())

    async def _relay_loop(self) -> None:
        """Relay local txs every get_relay_interval_s while there are any; otherwise sleep until
        a retry is due or a client's tx arrives. (Polling every 20 ms kept an idle node
        waking 50 times a second, and each wake-up of trio in guest mode costs a thread
        hand-off: most of an idle 16-validator localnet's CPU.)"""
        interval_s = get_relay_interval_s(self.driver.replica_config.n)
        while True:
            await trio.sleep(interval_s)  # lets a burst of submissions share a batch
            relay = self.driver.take_relay_frame()
            if relay is not None:
                frame, targets = relay
                for peer in targets:
                    self.transport.send(peer, frame, TrafficClass.TRANSACTIONS)
                continue
            wait_ms = self.driver.mempool.get_relay_wait_ms(self.driver.wall_ms())
            wait_s = RELAY_IDLE_WAIT_MAX_S if wait_ms is None else min(
                wait_ms / 1000, RELAY_IDLE_WAIT_MAX_S)
            with trio.move_on_after(wait_s):
                await self.relay_wanted.wait()
            self.relay_wanted = trio.Event()

    async def _request_loop(self, bridge: Any) -> None:
        while True:
            request = await bridge.receive_request()
            self.driver.catch_up_ticks()
            try:
                if request.kind == "submit_txs":  # bounded by the API's batch limit
                    request.reply(await self._submit_txs(request.payload))
                    continue
                request.reply(self._answer(request.kind, request.payload))
                self._reschedule_ticks()
            except Exception as exc:  # one bad request must not stop the node
                logger.exception("API request %s failed", request.kind)
                request.fail(exc)

    def _answer(self, kind: str, payload: Any) -> Any:
        d = self.driver
        if kind == "submit_tx":
            return d.submit_tx(payload)
        if kind == "get_tx":
            return d.get_tx(payload)
        if kind == "get_block":
            return d.get_block(payload)
        if kind == "get_status":
            return d.get_status()
        if kind == "get_account":
            return d.get_account(payload)
        if kind == "get_metrics":
            return d.get_metrics()
        if kind == "get_state":  # the committed State: immutable, read on the asyncio side
            return d.state
        raise ValueError(f"unknown request kind {kind!r}")


__all__ = [
    "Driver",
    "Network",
    "Node",
    "NodeSetupError",
    "get_record_seq",
    "to_codec_certificate",
    "to_consensus_certificate",
]
