"""One PBFT replica as a pure state machine: ``handle(event) -> list[Action]``.

Normal case: the primary sends PRE-PREPARE (signed vote + block); a backup sends PREPARE
for seq only once the block's parent is the block it has prepared (or delivered) at
seq-1, so honest chains can never fork; pipelining comes from many pre-prepares in
flight inside the watermark window. A replica is *prepared* at seq when it accepted the
pre-prepare, holds quorum-1 matching prepares and its parent rule holds; it then persists
the prepared certificate and broadcasts COMMIT. A block is delivered with a quorum of
matching COMMITs (the commit certificate) once every lower seq is delivered.

Every K blocks replicas sign a checkpoint of the chain (the block digest at that seq,
which commits to the whole hash chain); a quorum makes it stable, the low watermark
moves and the log below is dropped. A replica without progress for a timeout (doubling
per failed attempt, capped), or told by its node that a valid request waited too long
(``SuspectPrimary``: a primary that makes progress but censors), sends VIEW-CHANGE
with its stable checkpoint and prepared certificates; the new primary's NEW-VIEW
carries a quorum of them and re-proposes the chain ``compute_new_view_plan`` selects.
View change is digest-only: VIEW-CHANGE proves each prepared block by its votes and header,
so its size does not grow with the blocks. A replica lacking a re-proposed payload asks
holders for it by digest, one at a time (``PayloadRequest``); the new primary sends its
NEW-VIEW only once it holds every payload, preferring view-changes whose senders served
theirs, so an honest primary's backups can always fetch from it.
Catch-up: replicas exchange STATUS heartbeats; a replica that stalls behind f+1 peers
(or sees a quorum checkpoint it lacks) asks the node to fetch blocks, and accepts each
only with a valid commit certificate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from consensus.certificates import (
    NewViewPlan,
    compute_new_view_plan,
    compute_prepared_proof,
    verify_commit_certificate,
    verify_new_view,
    verify_view_change,
)
from consensus.classifier import DISCARD, PROCESS, STASH, EdgeState, classify
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
from consensus.interfaces import Authenticator, BlockValidator
from consensus.messages import (
    PHASE_COMMIT,
    PHASE_PRE_PREPARE,
    PHASE_PREPARE,
    Checkpoint,
    CommitCertificate,
    Evidence,
    FetchedBlock,
    NewView,
    PayloadReply,
    PayloadRequest,
    PeerMessage,
    PreparedCertificate,
    PreparedProof,
    PrePrepare,
    StableCheckpoint,
    Status,
    ViewChange,
    Vote,
)


@dataclass(frozen=True)
class ProposalSlot:
    """Where the primary may propose next: the node builds a block for it."""

    view: int
    seq: int
    parent_digest: bytes


@dataclass
class Slot:
    """The log entry for one sequence number in the current view."""

    pre_prepare: PrePrepare | None = None
    prepares: dict[int, Vote] = field(default_factory=dict)
    commits: dict[int, Vote] = field(default_factory=dict)
    own_prepare: Vote | None = None
    prepared: bool = False


@dataclass
class _AwaitedPayload:
    """A re-proposed block whose payload this replica lacks: asked of one holder at a time,
    the next one after ``fetch_timeout_ticks``."""

    digest: bytes
    parent_digest: bytes
    holders: tuple[int, ...]  # peers that vouched for the block, in the order to ask them
    vote: Vote | None  # the installed view's pre-prepare; None: a primary before NEW-VIEW
    attempt: int = -1
    asked: set[int] = field(default_factory=set)
    deadline_tick: int = 0


@dataclass
class _Fetch:
    from_seq: int
    to_seq: int
    deadline_tick: int


class Replica:
    """A PBFT replica. Construct fresh, or ``restore`` from persisted records after a crash."""

    def __init__(self, config: ReplicaConfig, auth: Authenticator, validator: BlockValidator):
        self.config = config
        self.auth = auth
        self.validator = validator
        self.me = config.index
        self.now_tick = 0
        self.view = 0
        self.active = True
        self.installed_view = 0
        self.new_view_message: NewView | None = None
        self.low_seq = 0
        self.low_digest = config.genesis_digest
        self.stable_proof: tuple[Checkpoint, ...] = ()
        self.view_base_seq = 0
        self.view_base_digest = config.genesis_digest
        self.last_delivered_seq = 0
        self.last_delivered_digest = config.genesis_digest
        self.last_delivery_tick = 0
        self.delivered_digests: dict[int, bytes] = {0: config.genesis_digest}
        self.slots: dict[int, Slot] = {}
        # The latest pre-prepare accepted at each seq in an earlier view: evidence against an
        # equivocating old primary, and a payload a NEW-VIEW may re-propose.
        self.previous_pre_prepares: dict[int, PrePrepare] = {}
        self.awaited: dict[int, _AwaitedPayload] = {}
        self.fetched_payloads: dict[tuple[int, bytes], bytes] = {}
        self.payloads_served: dict[tuple[int, int], int] = {}
        self.unserved: set[int] = set()  # view-change senders that did not serve a payload
        self.prepared_certs: dict[int, PreparedCertificate] = {}
        self.next_proposal_seq = 1
        self.checkpoints: dict[int, dict[int, Checkpoint]] = {}
        self.statuses: dict[int, Status] = {}
        self.view_changes: dict[int, ViewChange] = {}
        self.own_view_change: ViewChange | None = None
        self.backoff = 0
        self.progress_deadline_tick = config.view_change_timeout_ticks
        self.view_change_deadline_tick: int | None = None
        self.retransmit_tick = 0
        self.new_view_sent_tick: dict[int, int] = {}
        self.fetch: _Fetch | None = None
        self.evidence_keys: set[tuple[int, int, int, int]] = set()
        self.evidence: list[Evidence] = []
        self.stash: dict[int, deque[PeerMessage]] = {}
        self.stash_count = 0
        self._out: list[Action] = []

    # ---- public API ---------------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        config: ReplicaConfig,
        auth: Authenticator,
        validator: BlockValidator,
        records: Sequence[PersistRecord],
        last_delivered: tuple[int, bytes] | None = None,
    ) -> Replica:
        """Rebuild a replica from what it persisted and the tip of its delivered chain.

        Own votes are reloaded into the log so the replica never votes differently in a
        view it voted in before the crash.
        """
        replica = cls(config, auth, validator)
        replica._restore(records, last_delivered)
        return replica

    def handle(self, event: Event) -> list[Action]:
        self._out = []
        if isinstance(event, Tick):
            self._on_tick()
        elif isinstance(event, Receive):
            self._on_receive(event.sender, event.message, allow_stash=True)
        elif isinstance(event, Proposal):
            self._on_proposal(event)
        elif isinstance(event, BlocksFetched):
            self._on_blocks_fetched(event.blocks)
        elif isinstance(event, SuspectPrimary):
            self._on_suspect_primary()
        else:
            raise TypeError(f"unknown event {type(event).__name__}")
        self._check_invariants()
        out, self._out = self._out, []
        return out

    def get_proposal_slot(self) -> ProposalSlot | None:
        if not self.active or self.config.get_primary(self.view) != self.me:
            return None
        seq = max(self.next_proposal_seq, self.last_delivered_seq + 1, self.view_base_seq + 1)
        if seq > self.high_seq or seq - self.last_delivered_seq > self.config.window_size // 2:
            return None
        parent = self._get_chain_digest(seq - 1)
        if parent is None:
            return None
        return ProposalSlot(self.view, seq, parent)

    @property
    def high_seq(self) -> int:
        return self.low_seq + self.config.window_size

    @property
    def is_primary(self) -> bool:
        return self.config.get_primary(self.view) == self.me

    @property
    def is_fetching(self) -> bool:
        """Catching up: blocks the others committed are on their way here."""
        return self.fetch is not None

    def get_memory_usage(self) -> dict[str, int]:
        return {
            "slots": len(self.slots),
            "prepared_certs": len(self.prepared_certs),
            "previous_pre_prepares": len(self.previous_pre_prepares),
            "delivered_digests": len(self.delivered_digests),
            "checkpoints": sum(len(v) for v in self.checkpoints.values()),
            "statuses": len(self.statuses),
            "view_changes": len(self.view_changes),
            "evidence": len(self.evidence),
            "stash": self.stash_count,
            "awaited_payloads": len(self.awaited),
            "fetched_payloads": len(self.fetched_payloads),
            "payloads_served": len(self.payloads_served),
        }

    def get_memory_bounds(self) -> dict[str, int]:
        c = self.config
        return {
            "slots": c.window_size,
            "prepared_certs": c.window_size,
            "previous_pre_prepares": c.window_size,
            "delivered_digests": c.window_size + 2,
            "checkpoints": c.n * c.checkpoints_per_sender_max,
            "statuses": c.n,
            "view_changes": c.n,
            "evidence": c.evidence_max,
            "stash": c.stash_total_max,
            "awaited_payloads": c.window_size,
            "fetched_payloads": c.window_size,
            "payloads_served": c.n * c.window_size,
        }

    # ---- dispatch -----------------------------------------------------------------------

    def _edge_state(self) -> EdgeState:
        return EdgeState(self.view, self.active, self.low_seq, self.high_seq, self._is_duplicate)

    def _is_duplicate(self, vote: Vote) -> bool:
        slot = self.slots.get(vote.seq)
        if slot is None:
            return False
        if vote.phase == PHASE_PRE_PREPARE:
            return slot.pre_prepare is not None and slot.pre_prepare.vote == vote
        table = slot.prepares if vote.phase == PHASE_PREPARE else slot.commits
        return table.get(vote.signer) == vote

    def _on_receive(self, sender: int, message: PeerMessage, allow_stash: bool) -> None:
        verdict = classify(self.config, self.auth, self._edge_state(), sender, message)
        if verdict.kind == DISCARD:
            self._out.append(Discard(sender, verdict.reason))
        elif verdict.kind == STASH:
            if allow_stash:
                self._stash_message(sender, message)
        else:
            assert verdict.kind == PROCESS
            self._process(message)

    def _process(self, message: PeerMessage) -> None:
        if isinstance(message, PrePrepare):
            self._on_pre_prepare(message)
        elif isinstance(message, Vote):
            self._on_vote(message)
        elif isinstance(message, Checkpoint):
            self._on_checkpoint(message)
        elif isinstance(message, ViewChange):
            self._on_view_change(message)
        elif isinstance(message, NewView):
            self._on_new_view(message)
        elif isinstance(message, PayloadRequest):
            self._on_payload_request(message)
        elif isinstance(message, PayloadReply):
            self._on_payload_reply(message)
        else:
            assert isinstance(message, Status)
            self._on_status(message)

    def _stash_message(self, sender: int, message: PeerMessage) -> None:
        queue = self.stash.setdefault(sender, deque())
        if len(queue) >= self.config.stash_per_sender_max:
            queue.popleft()  # a sender that floods only evicts its own messages
            self.stash_count -= 1
        if self.stash_count >= self.config.stash_total_max:
            self._out.append(Discard(sender, "stash full"))
            return
        queue.append(message)
        self.stash_count += 1

    def _replay_stash(self) -> None:
        stashed, self.stash, self.stash_count = self.stash, {}, 0
        for sender in sorted(stashed):
            for message in stashed[sender]:
                verdict = classify(self.config, self.auth, self._edge_state(), sender, message)
                if verdict.kind == STASH:
                    self._stash_message(sender, message)
                elif verdict.kind == PROCESS:
                    self._process(message)

    # ---- signing helpers ----------------------------------------------------------------

    def _sign_vote(self, phase: int, view: int, seq: int, digest: bytes) -> Vote:
        body = Vote(phase, view, seq, digest, self.me, b"")
        return Vote(phase, view, seq, digest, self.me, self.auth.sign(body))

    # ---- normal case --------------------------------------------------------------------

    def _on_proposal(self, proposal: Proposal) -> None:
        slot = self.get_proposal_slot()
        if slot is None or (slot.view, slot.seq, slot.parent_digest) != (
            proposal.view,
            proposal.seq,
            proposal.parent_digest,
        ):
            self._out.append(Discard(self.me, "stale proposal slot"))
            return
        digest = self.validator.validate_block(slot.seq, slot.parent_digest, proposal.payload)
        if isinstance(digest, str):
            self._out.append(Discard(self.me, f"invalid proposal: {digest}"))
            return
        vote = self._sign_vote(PHASE_PRE_PREPARE, self.view, slot.seq, digest)
        pre_prepare = PrePrepare(vote, slot.parent_digest, proposal.payload)
        self._out.append(Persist(pre_prepare))
        self._out.append(Broadcast(pre_prepare))
        self.slots.setdefault(slot.seq, Slot()).pre_prepare = pre_prepare
        self.next_proposal_seq = slot.seq + 1
        self._advance(slot.seq)

    def _on_pre_prepare(self, message: PrePrepare) -> None:
        vote = message.vote
        awaited = self.awaited.get(vote.seq)
        if awaited is not None and awaited.vote is not None:
            self._on_awaited_pre_prepare(message, awaited)
            return
        slot = self.slots.setdefault(vote.seq, Slot())
        if slot.pre_prepare is not None:
            self._check_equivocation(slot.pre_prepare.vote, vote)
            return
        digest = self.validator.validate_block(vote.seq, message.parent_digest, message.payload)
        if digest != vote.digest:
            self._out.append(Discard(vote.signer, "invalid block"))
            return
        slot.pre_prepare = message
        self._advance(vote.seq)

    def _on_awaited_pre_prepare(self, message: PrePrepare, awaited: _AwaitedPayload) -> None:
        """The NEW-VIEW already fixed this slot's vote: the primary may still send the block
        itself, and anything else it signs for the slot is equivocation."""
        vote = message.vote
        assert awaited.vote is not None
        if vote.digest != awaited.vote.digest:
            self._check_equivocation(awaited.vote, vote)
            return
        if message.parent_digest != awaited.parent_digest or not self._is_awaited_payload(
            vote.seq, awaited, message.payload
        ):
            self._out.append(Discard(vote.signer, "invalid block"))
            return
        self._fill_awaited(vote.seq, message.payload)

    def _on_vote(self, vote: Vote) -> None:
        if vote.phase == PHASE_PREPARE and vote.signer == self.config.get_primary(vote.view):
            self._out.append(Discard(vote.signer, "prepare from the primary"))
            return
        slot = self.slots.setdefault(vote.seq, Slot())
        table = slot.prepares if vote.phase == PHASE_PREPARE else slot.commits
        previous = table.get(vote.signer)
        if previous is not None:
            self._check_equivocation(previous, vote)
            return
        table[vote.signer] = vote
        self._advance(vote.seq)

    def _check_equivocation(self, first: Vote, second: Vote) -> None:
        if first.digest == second.digest:
            return
        key = (first.signer, first.phase, first.view, first.seq)
        if key in self.evidence_keys or len(self.evidence) >= self.config.evidence_max:
            return
        evidence = Evidence(first, second)
        self.evidence_keys.add(key)
        self.evidence.append(evidence)
        self._out.append(ReportEvidence(evidence))

    def _get_chain_digest(self, seq: int) -> bytes | None:
        """The digest this replica stands behind at ``seq``: delivered, the view's base
        checkpoint, or its own prepared (primary: proposed) block in this view."""
        if seq <= self.last_delivered_seq:
            return self.delivered_digests.get(seq)
        if seq == self.view_base_seq:
            return self.view_base_digest
        slot = self.slots.get(seq)
        if slot is None or slot.pre_prepare is None:
            return None
        if slot.prepared or slot.pre_prepare.vote.signer == self.me:
            return slot.pre_prepare.vote.digest
        return None

    def _is_parent_ok(self, seq: int, parent: bytes) -> bool:
        prev = seq - 1
        if prev <= self.last_delivered_seq:
            return self.delivered_digests.get(prev) == parent
        if prev == self.view_base_seq:
            return self.view_base_digest == parent
        slot = self.slots.get(prev)
        return (
            slot is not None
            and slot.prepared
            and slot.pre_prepare is not None
            and slot.pre_prepare.vote.digest == parent
        )

    def _advance(self, seq: int) -> None:
        """Send prepares and commits that became possible at ``seq`` and above, then deliver."""
        for s in range(seq, self.high_seq + 1):
            slot = self.slots.get(s)
            if slot is None or not self._advance_slot(s, slot):
                break
        self._try_deliver()

    def _advance_slot(self, seq: int, slot: Slot) -> bool:
        """Returns True when the slot is prepared (so seq+1 may now progress)."""
        pp = slot.pre_prepare
        if pp is None:
            return False
        if slot.prepared:
            return True
        digest = pp.vote.digest
        is_own_proposal = pp.vote.signer == self.me
        parent_ok = self._is_parent_ok(seq, pp.parent_digest)
        if seq <= self.last_delivered_seq and self.delivered_digests.get(seq, digest) != digest:
            return False
        if not is_own_proposal and slot.own_prepare is None and parent_ok:
            prepare = self._sign_vote(PHASE_PREPARE, self.view, seq, digest)
            self._out.append(Persist(prepare))
            self._out.append(Broadcast(prepare))
            slot.own_prepare = prepare
            slot.prepares[self.me] = prepare
        if not parent_ok or not (is_own_proposal or slot.own_prepare is not None):
            return False
        if slot.own_prepare is not None and slot.own_prepare.digest != digest:
            return False  # restored vote for another block: never vote differently
        matching = sorted(
            (v for v in slot.prepares.values() if v.digest == digest), key=lambda v: v.signer
        )
        if len(matching) < self.config.quorum - 1:
            return False
        slot.prepared = True
        cert = PreparedCertificate(pp, tuple(matching[: self.config.quorum - 1]))
        self.prepared_certs[seq] = cert
        commit = self._sign_vote(PHASE_COMMIT, self.view, seq, digest)
        self._out.append(Persist(cert))
        self._out.append(Broadcast(commit))
        slot.commits[self.me] = commit
        return True

    def _try_deliver(self) -> None:
        while True:
            seq = self.last_delivered_seq + 1
            slot = self.slots.get(seq)
            if slot is None or slot.pre_prepare is None:
                return
            pp = slot.pre_prepare
            digest = pp.vote.digest
            if pp.parent_digest != self.last_delivered_digest:
                return
            commits = sorted(
                (v for v in slot.commits.values() if v.digest == digest), key=lambda v: v.signer
            )
            if len(commits) < self.config.quorum:
                return
            certificate = CommitCertificate(tuple(commits[: self.config.quorum]))
            self._deliver(seq, digest, pp.payload, certificate)

    def _deliver(self, seq: int, digest: bytes, payload: bytes, cert: CommitCertificate) -> None:
        assert seq == self.last_delivered_seq + 1
        self._out.append(Deliver(seq, digest, payload, cert))
        self.last_delivered_seq = seq
        self.last_delivered_digest = digest
        if seq <= self.high_seq:
            self.delivered_digests[seq] = digest
        self.last_delivery_tick = self.now_tick
        if self.active:
            self.backoff = 0
            self.progress_deadline_tick = self.now_tick + self._get_timeout_ticks()
        self.next_proposal_seq = max(self.next_proposal_seq, seq + 1)
        if seq % self.config.checkpoint_interval == 0:
            body = Checkpoint(seq, digest, self.me, b"")
            checkpoint = Checkpoint(seq, digest, self.me, self.auth.sign(body))
            self._out.append(Broadcast(checkpoint))
            self._record_checkpoint(checkpoint)
        if self.fetch is not None and self.last_delivered_seq >= self.fetch.to_seq:
            self.fetch = None

    # ---- checkpoints and garbage collection ---------------------------------------------

    def _on_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._record_checkpoint(checkpoint)

    def _record_checkpoint(self, checkpoint: Checkpoint) -> None:
        table = self.checkpoints.setdefault(checkpoint.signer, {})
        if checkpoint.seq in table:
            return
        table[checkpoint.seq] = checkpoint
        while len(table) > self.config.checkpoints_per_sender_max:
            del table[min(table)]  # keep each sender's most recent checkpoints
        self._check_stable()

    def _check_stable(self) -> None:
        votes: dict[tuple[int, bytes], list[Checkpoint]] = {}
        for table in self.checkpoints.values():
            for checkpoint in table.values():
                if checkpoint.seq > self.low_seq:
                    votes.setdefault((checkpoint.seq, checkpoint.digest), []).append(checkpoint)
        certified = [key for key, proof in votes.items() if len(proof) >= self.config.quorum]
        if not certified:
            return
        seq, digest = max(certified)
        proof = tuple(sorted(votes[(seq, digest)], key=lambda c: c.signer)[: self.config.quorum])
        if seq <= self.last_delivered_seq:
            mine = self.last_delivered_digest if seq == self.last_delivered_seq else None
            if self.delivered_digests.get(seq, mine) == digest:
                self._make_stable(seq, digest, proof)
            return
        peers = tuple(c.signer for c in proof if c.signer != self.me)
        self._request_fetch(seq, peers)

    def _make_stable(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        assert seq > self.low_seq
        self.low_seq, self.low_digest, self.stable_proof = seq, digest, proof
        self._out.append(Persist(StableCheckpoint(seq, digest, proof)))
        self.slots = {s: v for s, v in self.slots.items() if s > seq}
        self.prepared_certs = {s: c for s, c in self.prepared_certs.items() if s > seq}
        self.previous_pre_prepares = {
            s: v for s, v in self.previous_pre_prepares.items() if s > seq
        }
        self.awaited = {s: a for s, a in self.awaited.items() if s > seq}
        self.fetched_payloads = {k: v for k, v in self.fetched_payloads.items() if k[0] > seq}
        self.payloads_served = {k: t for k, t in self.payloads_served.items() if k[1] > seq}
        self.delivered_digests = {
            s: d for s, d in self.delivered_digests.items() if seq <= s <= self.high_seq
        }
        self.delivered_digests[seq] = digest
        if self.last_delivered_seq <= self.high_seq:
            self.delivered_digests[self.last_delivered_seq] = self.last_delivered_digest
        for table in self.checkpoints.values():
            for s in [s for s in table if s <= seq]:
                del table[s]
        self._replay_stash()
        self._advance(seq + 1)

    # ---- catch-up -----------------------------------------------------------------------

    def _on_status(self, status: Status) -> None:
        if status.signer == self.me:
            return
        self.statuses[status.signer] = status
        self._maybe_fetch_from_statuses()

    def _maybe_fetch_from_statuses(self) -> None:
        if self.now_tick - self.last_delivery_tick < self.config.status_interval_ticks:
            return  # still making progress: the normal case will bring the next blocks
        reports = sorted(
            ((s.last_delivered_seq, s.signer) for s in self.statuses.values()), reverse=True
        )
        if len(reports) < self.config.weak_quorum:
            return
        target = reports[self.config.f][0]  # f+1 replicas claim it: one of them is honest
        if target <= self.last_delivered_seq:
            return
        peers = tuple(signer for seq, signer in reports if seq >= target)
        self._request_fetch(target, peers)

    def _request_fetch(self, to_seq: int, peers: tuple[int, ...]) -> None:
        if self.fetch is not None and self.now_tick < self.fetch.deadline_tick:
            return
        from_seq = self.last_delivered_seq + 1
        to_seq = min(to_seq, from_seq + self.config.fetch_blocks_max - 1)
        if to_seq < from_seq or not peers:
            return
        # Rotate the peer order so a silent peer is not asked first every time.
        shift = self.now_tick % len(peers)
        peers = peers[shift:] + peers[:shift]
        self.fetch = _Fetch(from_seq, to_seq, self.now_tick + self.config.fetch_timeout_ticks)
        self._out.append(FetchBlocks(from_seq, to_seq, peers))

    def _on_blocks_fetched(self, blocks: tuple[FetchedBlock, ...]) -> None:
        for block in sorted(blocks[: self.config.fetch_blocks_max], key=lambda b: b.seq):
            if block.seq <= self.last_delivered_seq:
                continue
            if block.seq != self.last_delivered_seq + 1:
                break
            digest = self.validator.validate_block(
                block.seq, self.last_delivered_digest, block.payload
            )
            if isinstance(digest, str):
                self._out.append(Discard(self.me, f"fetched block rejected: {digest}"))
                break
            if not verify_commit_certificate(
                self.auth, self.config.n, self.config.quorum, block.seq, digest, block.certificate
            ):
                self._out.append(Discard(self.me, "fetched block without a valid certificate"))
                break
            self._deliver(block.seq, digest, block.payload, block.certificate)
        self._check_stable()
        if self.active:
            self._advance(self.last_delivered_seq + 1)

    # ---- payloads by digest -------------------------------------------------------------

    def _find_payload(self, seq: int, digest: bytes) -> bytes | None:
        """The payload of block ``digest`` at ``seq``, if this replica holds it."""
        slot = self.slots.get(seq)
        cert = self.prepared_certs.get(seq)
        for pp in (
            slot.pre_prepare if slot is not None else None,
            cert.pre_prepare if cert is not None else None,
            self.previous_pre_prepares.get(seq),
        ):
            if pp is not None and pp.vote.digest == digest:
                return pp.payload
        return self.fetched_payloads.get((seq, digest))

    @staticmethod
    def _get_payload_holders(
        seq: int, digest: bytes, view_changes: Sequence[ViewChange], first: int | None
    ) -> tuple[int, ...]:
        """Who should hold block ``digest``: ``first`` (an installed view's primary), then
        the view-change senders that proved it prepared, then its voters (each accepted
        it), each in index order."""
        senders: set[int] = set()
        voters: set[int] = set()
        for vc in view_changes:
            for proof in vc.prepared:
                if (proof.pre_prepare.seq, proof.pre_prepare.digest) == (seq, digest):
                    senders.add(vc.signer)
                    voters.add(proof.pre_prepare.signer)
                    voters.update(p.signer for p in proof.prepares)
        ordered = [first] if first is not None else []
        ordered += sorted(senders) + sorted(voters)
        return tuple(dict.fromkeys(ordered))

    def _await_payload(
        self,
        seq: int,
        proof: PreparedProof,
        holders: tuple[int, ...],
        vote: Vote | None,
        ask_now: bool,
    ) -> None:
        holders = tuple(h for h in holders if h != self.me)
        if not holders:
            return  # nobody to ask: the view-change timer moves on
        awaited = _AwaitedPayload(proof.pre_prepare.digest, proof.parent_digest, holders, vote)
        self.awaited[seq] = awaited
        if ask_now:
            self._ask_for_payload(seq, awaited)

    def _ask_for_payload(self, seq: int, awaited: _AwaitedPayload) -> None:
        awaited.attempt += 1
        holder = awaited.holders[awaited.attempt % len(awaited.holders)]
        awaited.asked.add(holder)
        awaited.deadline_tick = self.now_tick + self.config.fetch_timeout_ticks
        body = PayloadRequest(seq, awaited.digest, self.me, b"")
        self._out.append(Send(holder, replace(body, signature=self.auth.sign(body))))

    def _retry_awaited_payloads(self) -> None:
        exhausted = False
        for seq in sorted(self.awaited):
            awaited = self.awaited[seq]
            if self.now_tick < awaited.deadline_tick:
                continue
            if awaited.vote is None and awaited.attempt + 1 >= len(awaited.holders):
                # Every holder was asked: a NEW-VIEW built from view-changes whose senders
                # serve their payloads can still complete, so prefer those.
                exhausted = exhausted or not awaited.asked <= self.unserved
                self.unserved.update(awaited.asked)
            self._ask_for_payload(seq, awaited)
        if exhausted:
            self._check_view_change_quorum()

    def _is_awaited_payload(self, seq: int, awaited: _AwaitedPayload, payload: bytes) -> bool:
        digest = self.validator.validate_block(seq, awaited.parent_digest, payload)
        return digest == awaited.digest

    def _fill_awaited(self, seq: int, payload: bytes) -> None:
        awaited = self.awaited.pop(seq)
        if awaited.vote is None:
            self.fetched_payloads[(seq, awaited.digest)] = payload
            self._check_view_change_quorum()
            return
        slot = self.slots.setdefault(seq, Slot())
        slot.pre_prepare = PrePrepare(awaited.vote, awaited.parent_digest, payload)
        self._advance(seq)

    def _get_serve_interval_ticks(self) -> int:
        return max(1, self.config.fetch_timeout_ticks // 2)

    def _on_payload_request(self, request: PayloadRequest) -> None:
        if request.signer == self.me:
            return
        payload = self._find_payload(request.seq, request.digest)
        if payload is None:
            self._out.append(Discard(request.signer, "payload request for a block not held"))
            return
        key = (request.signer, request.seq)
        last = self.payloads_served.get(key)
        if last is not None and self.now_tick - last < self._get_serve_interval_ticks():
            self._out.append(Discard(request.signer, "payload request repeated too soon"))
            return
        self.payloads_served[key] = self.now_tick
        body = PayloadReply(request.seq, request.digest, payload, self.me, b"")
        self._out.append(Send(request.signer, replace(body, signature=self.auth.sign(body))))

    def _on_payload_reply(self, reply: PayloadReply) -> None:
        awaited = self.awaited.get(reply.seq)
        if awaited is None or reply.signer not in awaited.asked or reply.digest != awaited.digest:
            self._out.append(Discard(reply.signer, "payload not asked for"))
            return
        if not self._is_awaited_payload(reply.seq, awaited, reply.payload):
            awaited.asked.discard(reply.signer)
            self._out.append(Discard(reply.signer, "payload does not match its digest"))
            return
        self._fill_awaited(reply.seq, reply.payload)

    # ---- view change --------------------------------------------------------------------

    def _get_timeout_ticks(self) -> int:
        return self.config.view_change_timeout_ticks << min(
            self.backoff, self.config.timeout_backoff_max
        )

    def _start_view_change(self, new_view: int) -> None:
        assert new_view > self.view
        self.view = new_view
        self.backoff = min(self.backoff + 1, self.config.timeout_backoff_max)
        self._remember_pre_prepares()
        self.active = False
        self.slots = {}
        self._forget_payload_fetches()
        proofs = tuple(
            compute_prepared_proof(self.validator, self.prepared_certs[s])
            for s in sorted(self.prepared_certs)
        )
        body = ViewChange(
            new_view, self.low_seq, self.low_digest, self.stable_proof, proofs, self.me, b""
        )
        vc = replace(body, signature=self.auth.sign(body))
        self.own_view_change = vc
        self.view_changes[self.me] = vc
        self.view_change_deadline_tick = None
        self.retransmit_tick = self.now_tick + self.config.view_change_timeout_ticks
        self._out.append(Persist(vc))
        self._out.append(Broadcast(vc))
        self._check_view_change_quorum()

    def _remember_pre_prepares(self) -> None:
        """Keep the view's accepted pre-prepares past its end: certificates in view-changes
        may reveal that the primary signed a different block for the same seq to someone
        else, and a NEW-VIEW may re-propose one of these blocks."""
        if self.active:
            for seq, slot in self.slots.items():
                if slot.pre_prepare is not None:
                    self.previous_pre_prepares[seq] = slot.pre_prepare

    def _forget_payload_fetches(self) -> None:
        self.awaited = {}
        self.fetched_payloads = {}
        self.unserved = set()

    def _on_suspect_primary(self) -> None:
        # A primary never suspects itself, and a replica already changing view has
        # nothing to add: its own timer escalates (view_change_deadline_tick).
        if self.active and not self.is_primary:
            self._start_view_change(self.view + 1)

    def _on_view_change(self, vc: ViewChange) -> None:
        if vc.signer == self.me:
            return
        if self.active and vc.new_view <= self.view:
            self._resend_new_view(vc.signer)
            return
        previous = self.view_changes.get(vc.signer)
        if previous is not None and previous.new_view >= vc.new_view:
            return
        if not verify_view_change(self.auth, self.config, self.validator, vc):
            self._out.append(Discard(vc.signer, "invalid view-change"))
            return
        self.view_changes[vc.signer] = vc
        self._check_certificates_for_equivocation(vc)
        # f+1 replicas want a higher view: at least one honest one timed out, so join them.
        higher = sorted(
            (
                v.new_view
                for s, v in self.view_changes.items()
                if s != self.me and v.new_view > self.view
            ),
            reverse=True,
        )
        if len(higher) >= self.config.weak_quorum:
            target = higher[self.config.f]
            if target > self.view:
                self._start_view_change(target)
                return
        self._check_view_change_quorum()

    def _check_certificates_for_equivocation(self, vc: ViewChange) -> None:
        for proof in vc.prepared:
            vote = proof.pre_prepare
            mine = self.previous_pre_prepares.get(vote.seq)
            if mine is not None and mine.vote.view == vote.view:
                self._check_equivocation(mine.vote, vote)

    def _resend_new_view(self, to: int) -> None:
        if self.new_view_message is None:
            return
        last = self.new_view_sent_tick.get(to)
        if last is not None and self.now_tick - last < self.config.view_change_timeout_ticks:
            return
        self.new_view_sent_tick[to] = self.now_tick
        self._out.append(Send(to, self.new_view_message))

    def _check_view_change_quorum(self) -> None:
        if self.active:
            return
        # The timer runs once a quorum wants this view or a later one: a replica that timed
        # out into view v+1 no longer counts for v, so waiting for a quorum at exactly v
        # could leave the rest short of one forever, each side waiting on the other.
        wanting = sum(1 for vc in self.view_changes.values() if vc.new_view >= self.view)
        if wanting >= self.config.quorum and self.view_change_deadline_tick is None:
            self.view_change_deadline_tick = self.now_tick + self._get_timeout_ticks()
        voters = [vc for vc in self.view_changes.values() if vc.new_view == self.view]
        if len(voters) < self.config.quorum:
            return
        if self.config.get_primary(self.view) != self.me or self.own_view_change is None:
            return
        others = sorted(
            (vc for vc in voters if vc.signer != self.me),
            key=lambda vc: (vc.signer in self.unserved, vc.signer),
        )
        chosen = (self.own_view_change, *others[: self.config.quorum - 1])
        plan = compute_new_view_plan(chosen)
        if not self._hold_plan_payloads(plan, chosen):
            return
        votes = tuple(
            self._sign_vote(PHASE_PRE_PREPARE, self.view, p.pre_prepare.seq, p.pre_prepare.digest)
            for p in plan.blocks
        )
        body = NewView(self.view, chosen, votes, self.me, b"")
        nv = NewView(self.view, chosen, votes, self.me, self.auth.sign(body))
        self._out.append(Persist(nv))
        self._out.append(Broadcast(nv))
        self._install_view(nv, plan)

    def _hold_plan_payloads(self, plan: NewViewPlan, chosen: Sequence[ViewChange]) -> bool:
        """True once this (new primary) replica holds every payload the plan re-proposes in
        its window; until then, ask for the missing ones and forget those no longer needed."""
        needed: set[int] = set()
        for proof in plan.blocks:
            seq, digest = proof.pre_prepare.seq, proof.pre_prepare.digest
            in_window = self.low_seq < seq <= self.high_seq
            if not in_window or self._find_payload(seq, digest) is not None:
                continue
            needed.add(seq)
            awaited = self.awaited.get(seq)
            if awaited is None or awaited.digest != digest:
                holders = self._get_payload_holders(seq, digest, chosen, None)
                self._await_payload(seq, proof, holders, None, ask_now=True)
        for seq in [s for s in self.awaited if s not in needed]:
            del self.awaited[seq]
        return not needed

    def _load_re_proposal(
        self, nv: NewView, vote: Vote, proof: PreparedProof, payload: bytes | None, ask_now: bool
    ) -> None:
        """A slot for a block the NEW-VIEW re-proposes: filled, or collecting votes while its
        payload is asked for (the primary, which is asked first, holds every one)."""
        if payload is not None:
            self.slots[vote.seq] = Slot(pre_prepare=PrePrepare(vote, proof.parent_digest, payload))
            return
        self.slots[vote.seq] = Slot()
        holders = self._get_payload_holders(vote.seq, vote.digest, nv.view_changes, nv.signer)
        self._await_payload(vote.seq, proof, holders, vote, ask_now)

    def _on_new_view(self, nv: NewView) -> None:
        if nv.view < self.view or (self.active and nv.view == self.view):
            return
        plan = verify_new_view(self.auth, self.config, self.validator, nv)
        if plan is None:
            self._out.append(Discard(nv.signer, "invalid new-view"))
            return
        self._install_view(nv, plan)

    def _install_view(self, nv: NewView, plan: NewViewPlan) -> None:
        self._remember_pre_prepares()  # a NEW-VIEW may reach a replica still in its old view
        payloads = [self._find_payload(vote.seq, vote.digest) for vote in nv.pre_prepares]
        self.view = nv.view
        self.active = True
        self.installed_view = nv.view
        self.new_view_message = nv
        self.view_change_deadline_tick = None
        self.own_view_change = None
        self.view_changes = {s: vc for s, vc in self.view_changes.items() if vc.new_view > nv.view}
        self.progress_deadline_tick = self.now_tick + self._get_timeout_ticks()
        self.view_base_seq, self.view_base_digest = plan.base_seq, plan.base_digest
        self.slots = {}
        self._forget_payload_fetches()
        last_seq = plan.base_seq
        for vote, proof, found in zip(nv.pre_prepares, plan.blocks, payloads, strict=True):
            last_seq = vote.seq
            if not self.low_seq < vote.seq <= self.high_seq:
                continue
            self._load_re_proposal(nv, vote, proof, found, ask_now=True)
        if plan.base_seq > self.low_seq:
            if plan.base_seq <= self.last_delivered_seq:
                if self.delivered_digests.get(plan.base_seq) == plan.base_digest:
                    self._make_stable(plan.base_seq, plan.base_digest, plan.base_proof)
            else:
                self._request_fetch(plan.base_seq, tuple(vc.signer for vc in nv.view_changes))
        self.next_proposal_seq = max(last_seq, self.last_delivered_seq, self.low_seq) + 1
        self._replay_stash()
        self._advance(min(self.slots) if self.slots else self.last_delivered_seq + 1)

    # ---- time ---------------------------------------------------------------------------

    def get_ticks_until_due(self) -> int:
        """How many Ticks until one does something (at least 1): the next STATUS broadcast,
        the progress or view-change deadline, a VIEW-CHANGE retransmission or the next ask
        for an awaited payload. The ticks
        before it only advance ``now_tick``, so a driver may sleep until then and deliver
        them together (node.Driver.catch_up_ticks)."""
        interval = self.config.status_interval_ticks
        ticks = (self.me - self.now_tick - 1) % interval + 1  # mirrors _on_tick's test
        if self.active:
            deadlines = [self.progress_deadline_tick]
        else:
            deadlines = [] if self.view_change_deadline_tick is None else [
                self.view_change_deadline_tick]
            if self.own_view_change is not None:
                deadlines.append(self.retransmit_tick)
        deadlines += [awaited.deadline_tick for awaited in self.awaited.values()]
        for deadline in deadlines:
            ticks = min(ticks, max(1, deadline - self.now_tick))
        assert 1 <= ticks <= interval
        return ticks

    def _on_tick(self) -> None:
        self.now_tick += 1
        if (
            self.now_tick % self.config.status_interval_ticks
            == self.me % self.config.status_interval_ticks
        ):
            body = Status(self.view, self.last_delivered_seq, self.me, b"")
            self._out.append(
                Broadcast(Status(self.view, self.last_delivered_seq, self.me, self.auth.sign(body)))
            )
            self._maybe_fetch_from_statuses()
        self._retry_awaited_payloads()
        if self.active:
            if self.now_tick >= self.progress_deadline_tick:
                self._start_view_change(self.view + 1)
            return
        deadline = self.view_change_deadline_tick
        if deadline is not None and self.now_tick >= deadline:
            self._start_view_change(self.view + 1)
        elif self.now_tick >= self.retransmit_tick and self.own_view_change is not None:
            # Without a quorum for this view we wait rather than escalate, so a partitioned
            # replica cannot run many views ahead; retransmitting covers lost messages.
            self.retransmit_tick = self.now_tick + self.config.view_change_timeout_ticks
            self._out.append(Broadcast(self.own_view_change))

    # ---- restore ------------------------------------------------------------------------

    def _restore(
        self, records: Sequence[PersistRecord], last_delivered: tuple[int, bytes] | None
    ) -> None:
        stable: StableCheckpoint | None = None
        top_view = 0
        for record in records:
            if isinstance(record, StableCheckpoint):
                if stable is None or record.seq > stable.seq:
                    stable = record
            top_view = max(top_view, _get_record_view(record))
        if stable is not None:
            self.low_seq, self.low_digest, self.stable_proof = (
                stable.seq,
                stable.digest,
                stable.proof,
            )
            self.delivered_digests = {stable.seq: stable.digest}
        if last_delivered is not None:
            seq, digest = last_delivered
            self.last_delivered_seq, self.last_delivered_digest = seq, digest
            if seq <= self.high_seq:
                self.delivered_digests[seq] = digest
            self.next_proposal_seq = seq + 1
        self.view = top_view
        self.installed_view = top_view
        self.view_base_seq, self.view_base_digest = self.low_seq, self.low_digest
        own_payloads: dict[tuple[int, bytes], bytes] = {}
        for record in records:
            if isinstance(record, PreparedCertificate):
                seq = record.pre_prepare.vote.seq
                current = self.prepared_certs.get(seq)
                if seq > self.low_seq and (
                    current is None or current.pre_prepare.vote.view <= record.pre_prepare.vote.view
                ):
                    self.prepared_certs[seq] = record
            elif isinstance(record, PrePrepare):
                own_payloads[(record.vote.seq, record.vote.digest)] = record.payload
        in_view_change = False
        for record in records:
            if _get_record_view(record) != top_view:
                continue
            if isinstance(record, ViewChange):
                in_view_change = True
                self.own_view_change = record
                self.view_changes[self.me] = record
            elif isinstance(record, NewView):
                in_view_change = False
                self.new_view_message = record
                self._restore_new_view(record, own_payloads)
            elif isinstance(record, PrePrepare):
                in_view_change = False
                if record.vote.seq > self.low_seq:
                    self.slots.setdefault(record.vote.seq, Slot()).pre_prepare = record
                    self.next_proposal_seq = max(self.next_proposal_seq, record.vote.seq + 1)
            elif isinstance(record, Vote):
                in_view_change = False
                if record.seq > self.low_seq and record.phase == PHASE_PREPARE:
                    slot = self.slots.setdefault(record.seq, Slot())
                    slot.own_prepare = record
                    slot.prepares[self.me] = record
        self.active = not in_view_change
        self.retransmit_tick = 0
        self.progress_deadline_tick = self.config.view_change_timeout_ticks
        self.slots = {s: v for s, v in self.slots.items() if self.low_seq < s <= self.high_seq}
        self.awaited = {s: a for s, a in self.awaited.items() if s in self.slots}

    def _restore_new_view(
        self, nv: NewView, own_payloads: dict[tuple[int, bytes], bytes]
    ) -> None:
        """Reload the pre-prepares this replica signed in its NEW-VIEW, so that after a crash
        it never proposes a different block for a seq it already re-proposed. A payload it
        had fetched (not persisted) is fetched again, from the first tick on."""
        plan = compute_new_view_plan(nv.view_changes)
        self.view_base_seq, self.view_base_digest = plan.base_seq, plan.base_digest
        for vote, proof in zip(nv.pre_prepares, plan.blocks, strict=True):
            self.next_proposal_seq = max(self.next_proposal_seq, vote.seq + 1)
            found = self._find_payload(vote.seq, vote.digest)
            if found is None:
                found = own_payloads.get((vote.seq, vote.digest))
            self._load_re_proposal(nv, vote, proof, found, ask_now=False)

    # ---- invariants ---------------------------------------------------------------------

    def _check_invariants(self) -> None:
        assert self.last_delivered_seq >= 0 and self.low_seq >= 0
        assert all(self.low_seq < s <= self.high_seq for s in self.slots)
        assert len(self.slots) <= self.config.window_size
        assert self.stash_count <= self.config.stash_total_max
        assert len(self.evidence) <= self.config.evidence_max
        assert len(self.view_changes) <= self.config.n
        assert all(s in self.slots and self.slots[s].pre_prepare is None for s in self.awaited
                   if self.awaited[s].vote is not None)
        assert len(self.awaited) <= self.config.window_size


def _get_record_view(record: PersistRecord) -> int:
    if isinstance(record, Vote):
        return record.view
    if isinstance(record, PrePrepare):
        return record.vote.view
    if isinstance(record, PreparedCertificate):
        return record.pre_prepare.vote.view
    if isinstance(record, ViewChange):
        return record.new_view
    if isinstance(record, NewView):
        return record.view
    return 0
