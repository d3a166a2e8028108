"""A seeded, deterministic simulator: n replicas over a simulated network and clock.

From one seed it draws message loss, delay, duplication and reordering, partitions that
heal, crashes and restarts (a restarted replica keeps only its persisted records and its
delivered chain), request timers firing at some replicas (``SuspectPrimary``, whether
or not the primary is at fault) and Byzantine replicas (equivocating primary, double
voter, silent, malformed messages, replayer, one that withholds payloads asked for by
digest); scenarios may also script drops of one message kind on one link. After every
step it checks agreement, certificate validity, gapless prefix chains, bounded memory and
evidence against honest replicas; after faults heal it checks liveness. Randomness comes
only from ``SeededRng(seed)``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from consensus.certificates import verify_commit_certificate, verify_evidence
from consensus.config import ReplicaConfig
from consensus.events import (
    Action,
    BlocksFetched,
    Broadcast,
    Deliver,
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
    PHASE_COMMIT,
    PHASE_PREPARE,
    Checkpoint,
    FetchedBlock,
    PayloadReply,
    PayloadRequest,
    PeerMessage,
    PrePrepare,
    SignedBody,
    ViewChange,
    Vote,
)
from consensus.replica import Replica
from consensus.rng import SeededRng

BYZANTINE_KINDS = ("equivocate", "double_vote", "silent", "malformed", "replay", "withhold")
SIM_PAYLOAD_PREFIX = b"blk|"
SIM_HEADER_PREFIX = b"hdr|"


class SimAuthenticator:
    """Keyed BLAKE2b per replica: fast, deterministic, and a replica can sign only as itself."""

    def __init__(self, index: int, n: int):
        self.index = index
        self._keys = [hashlib.sha256(b"bcfl-sim-key|%d" % i).digest() for i in range(n)]

    def _mac(self, signer: int, body: SignedBody) -> bytes:
        return hashlib.blake2b(repr(body).encode(), key=self._keys[signer], digest_size=16).digest()

    def sign(self, body: SignedBody) -> bytes:
        return self._mac(self.index, body)

    def verify(self, signer: int, body: SignedBody, signature: bytes) -> bool:
        return 0 <= signer < len(self._keys) and self._mac(signer, body) == signature


class SimBlockValidator:
    """Payload ``blk|...``; header ``hdr|`` + SHA-256(payload); digest = SHA-256(seq ||
    parent || header). The header differs from the payload so that a core which used one
    for the other fails here."""

    def validate_block(self, seq: int, parent_digest: bytes, payload: bytes) -> bytes | str:
        if not payload.startswith(SIM_PAYLOAD_PREFIX) or len(payload) > 256:
            return "payload is not a simulator block"
        return self.validate_header(seq, parent_digest, self.get_block_header(payload))

    def validate_header(self, seq: int, parent_digest: bytes, header: bytes) -> bytes | str:
        if not header.startswith(SIM_HEADER_PREFIX) or len(header) != len(SIM_HEADER_PREFIX) + 32:
            return "header is not a simulator header"
        if len(parent_digest) != 32:
            return "bad parent digest"
        return hashlib.sha256(seq.to_bytes(8, "little") + parent_digest + header).digest()

    def get_block_header(self, payload: bytes) -> bytes:
        return SIM_HEADER_PREFIX + hashlib.sha256(payload).digest()


@dataclass(frozen=True)
class Scenario:
    """Everything one run does, drawn from its seed (or built by hand for scenario tests)."""

    seed: int
    n: int
    byzantine: tuple[tuple[int, str], ...] = ()
    crash_prone: tuple[int, ...] = ()
    loss_rate: float = 0.0
    duplicate_rate: float = 0.0
    delay_max_ticks: int = 3
    chaos_ticks: int = 200
    liveness_ticks: int = 1200
    check_liveness: bool = True
    unsafe_quorum_size: int | None = None
    propose_interval_ticks: int = 2
    # Scripted faults: (tick, "crash"|"restart", replica) and (start, end, group) partitions.
    crash_events: tuple[tuple[int, str, int], ...] = ()
    partition_events: tuple[tuple[int, int, tuple[int, ...]], ...] = ()
    # (tick, replicas): their nodes' request timers fire (SuspectPrimary) at that tick.
    suspicion_events: tuple[tuple[int, tuple[int, ...]], ...] = ()
    # (start, end, src, dst, message class name): that link loses those messages meanwhile.
    drop_events: tuple[tuple[int, int, int, int, str], ...] = ()


def draw_suspicions(seed: int, n: int, chaos_ticks: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Request timers firing, from a stream of their own so that adding them left every
    earlier seed's other draws as they were. In some runs f+1 or more replicas suspect at
    once (the view changes), in others fewer (the view holds and the few catch up)."""
    rng = SeededRng(seed * 6007 + 29)
    events = []
    for _ in range(rng.choice((0, 0, 1, 2))):
        group = tuple(sorted(rng.sample(range(n), rng.randint(1, n))))
        events.append((rng.randint(5, chaos_ticks), group))
    return tuple(sorted(events))


def draw_scenario(seed: int, n: int | None = None) -> Scenario:
    rng = SeededRng(seed * 7919 + 17)
    if n is None:
        n = rng.choice((4, 4, 4, 7, 7, 10))
    f = (n - 1) // 3
    indices = list(range(n))
    rng.shuffle(indices)
    faulty = indices[: rng.randint(0, f)]
    byzantine = tuple(
        sorted((i, rng.choice(BYZANTINE_KINDS)) for i in faulty if rng.random() < 0.6)
    )
    byz_set = {i for i, _ in byzantine}
    crash_prone = tuple(sorted(i for i in faulty if i not in byz_set))
    chaos = rng.randint(100, 250)
    crash_events: list[tuple[int, str, int]] = []
    for i in crash_prone:
        t = rng.randint(5, chaos - 30)
        crash_events.append((t, "crash", i))
        crash_events.append((rng.randint(t + 5, chaos), "restart", i))
    # Safety-only runs crash (and restart) more than f replicas: no liveness is owed, but
    # agreement must hold and restarted replicas must never double-vote.
    safety_only = rng.random() < 0.15
    if safety_only:
        for i in rng.sample(range(n), rng.randint(f + 1, n)):
            t = rng.randint(5, chaos - 30)
            crash_events += [(t, "crash", i), (rng.randint(t + 5, chaos), "restart", i)]
    partition_events: list[tuple[int, int, tuple[int, ...]]] = []
    if rng.random() < 0.4:
        start = rng.randint(1, chaos // 2)
        group = tuple(sorted(rng.sample(range(n), rng.randint(1, n // 2))))
        partition_events.append((start, rng.randint(start + 10, chaos), group))
    return Scenario(
        seed=seed,
        n=n,
        byzantine=byzantine,
        crash_prone=crash_prone,
        loss_rate=rng.choice((0.0, 0.01, 0.05, 0.15)),
        duplicate_rate=rng.choice((0.0, 0.02, 0.1)),
        delay_max_ticks=rng.choice((1, 2, 4, 8)),
        chaos_ticks=chaos,
        crash_events=tuple(sorted(crash_events)),
        check_liveness=not safety_only,
        partition_events=tuple(partition_events),
        suspicion_events=draw_suspicions(seed, n, chaos),
    )


def make_config(n: int, index: int, unsafe_quorum_size: int | None = None) -> ReplicaConfig:
    return ReplicaConfig(
        n=n,
        index=index,
        window_size=16,
        checkpoint_interval=4,
        view_change_timeout_ticks=20,
        timeout_backoff_max=3,
        status_interval_ticks=8,
        fetch_timeout_ticks=20,
        fetch_blocks_max=32,
        stash_per_sender_max=48,
        stash_total_max=48 * n,
        unsafe_quorum_size=unsafe_quorum_size,
    )


@dataclass
class SimResult:
    scenario: Scenario
    violations: list[str]
    trace: list[str]
    heights: dict[int, int]
    ticks: int
    messages: int
    views: dict[int, int] = field(default_factory=dict)
    evidence_against: tuple[int, ...] = ()
    fetches: int = 0
    payload_requests: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def format_failure(self, trace_lines_max: int = 400) -> str:
        lines = [f"seed {self.scenario.seed} FAILED: {self.scenario}"]
        lines += [f"  violation: {v}" for v in self.violations]
        lines += self.trace[-trace_lines_max:]
        return "\n".join(lines)


@dataclass
class _Node:
    """The simulator's stand-in for a node process: replica + persisted state."""

    replica: Replica
    records: list[PersistRecord] = field(default_factory=list)
    chain: list[Deliver] = field(default_factory=list)
    alive: bool = True
    byzantine: str = ""
    seen: list[PeerMessage] = field(default_factory=list)
    last_proposal_tick: int = -1000


class Simulation:
    def __init__(self, scenario: Scenario, trace_max: int = 20000):
        self.sc = scenario
        self.rng = SeededRng(scenario.seed)
        self.n = scenario.n
        self.validator = SimBlockValidator()
        self.verifier = SimAuthenticator(0, self.n)
        byz = dict(scenario.byzantine)
        self.nodes = [_Node(self._new_replica(i), byzantine=byz.get(i, "")) for i in range(self.n)]
        self.now = 0
        self.queue: list[tuple[int, int, int, Event]] = []
        self.counter = 0
        self.messages = 0
        self.violations: list[str] = []
        self.trace: list[str] = []
        self.trace_max = trace_max
        self.agreed: dict[int, bytes] = {}
        self.honest = [i for i in range(self.n) if i not in byz]
        self.evidence_against: set[int] = set()
        self.fetches = 0
        self.payload_requests = 0

    def _new_replica(self, i: int) -> Replica:
        cfg = make_config(self.n, i, self.sc.unsafe_quorum_size)
        return Replica(cfg, SimAuthenticator(i, self.n), self.validator)

    def _log(self, line: str) -> None:
        if len(self.trace) < self.trace_max:
            self.trace.append(f"t={self.now:5d} {line}")

    def _violation(self, text: str) -> None:
        self._log(f"VIOLATION {text}")
        self.violations.append(text)

    # ---- network ------------------------------------------------------------------------

    def _connected(self, a: int, b: int) -> bool:
        for start, end, group in self.sc.partition_events:
            if start <= self.now < end and ((a in group) != (b in group)):
                return False
        return True

    def _in_chaos(self) -> bool:
        return self.now < self.sc.chaos_ticks

    def _schedule(self, dst: int, event: Event, delay: int) -> None:
        self.counter += 1
        heapq.heappush(self.queue, (self.now + delay, self.counter, dst, event))

    def _is_dropped(self, src: int, dst: int, message: PeerMessage) -> bool:
        name = type(message).__name__
        return any(
            start <= self.now < end and (src, dst, name) == (s, d, kind)
            for start, end, s, d, kind in self.sc.drop_events
        )

    def _send(self, src: int, dst: int, message: PeerMessage) -> None:
        if dst == src or not self._connected(src, dst) or self._is_dropped(src, dst, message):
            return
        if isinstance(message, PayloadRequest):
            self.payload_requests += 1
            self._log(f"r{src} asks r{dst} for the payload at seq={message.seq}")
        self.messages += 1
        chaos = self._in_chaos()
        if chaos and self.rng.random() < self.sc.loss_rate:
            return
        delay_max = self.sc.delay_max_ticks if chaos else 2
        self._schedule(dst, Receive(src, message), self.rng.randint(1, delay_max))
        if chaos and self.rng.random() < self.sc.duplicate_rate:
            self._schedule(dst, Receive(src, message), self.rng.randint(1, delay_max))

    # ---- actions ------------------------------------------------------------------------

    def _execute(self, i: int, actions: list[Action]) -> None:
        node = self.nodes[i]
        for action in actions:
            if isinstance(action, Send | Broadcast):
                targets = [action.to] if isinstance(action, Send) else range(self.n)
                for dst in targets:
                    for message in self._mangle(i, dst, action.message):
                        self._send(i, dst, message)
            elif isinstance(action, Persist):
                node.records.append(action.record)
            elif isinstance(action, Deliver):
                self._on_deliver(i, action)
            elif isinstance(action, FetchBlocks):
                self._on_fetch(i, action)
            elif isinstance(action, ReportEvidence):
                ev = action.evidence
                if not verify_evidence(self.verifier, self.n, ev):
                    self._violation(f"replica {i} reported invalid evidence")
                elif ev.first.signer in self.honest:
                    self._violation(f"evidence against honest replica {ev.first.signer} by {i}")
                else:
                    self.evidence_against.add(ev.first.signer)
                    self._log(f"r{i} evidence against r{ev.first.signer} phase={ev.first.phase}")

    def _on_deliver(self, i: int, d: Deliver) -> None:
        node = self.nodes[i]
        expected = node.chain[-1].seq + 1 if node.chain else 1
        self._log(f"r{i} deliver seq={d.seq} digest={d.digest.hex()[:8]}")
        if d.seq != expected:
            self._violation(f"replica {i} delivered seq {d.seq}, expected {expected}")
        if not verify_commit_certificate(
            self.verifier,
            self.n,
            self.nodes[i].replica.config.quorum,
            d.seq,
            d.digest,
            d.certificate,
        ):
            self._violation(f"replica {i} delivered seq {d.seq} without a valid certificate")
        parent = node.chain[-1].digest if node.chain else node.replica.config.genesis_digest
        if self.validator.validate_block(d.seq, parent, d.payload) != d.digest:
            self._violation(f"replica {i} delivered seq {d.seq} not chained to its parent")
        if i in self.honest:
            agreed = self.agreed.setdefault(d.seq, d.digest)
            if agreed != d.digest:
                self._violation(f"agreement: replica {i} delivered a different block at {d.seq}")
        node.chain.append(d)

    def _on_fetch(self, i: int, fetch: FetchBlocks) -> None:
        self.fetches += 1
        self._log(f"r{i} fetch {fetch.from_seq}..{fetch.to_seq} from {fetch.peers}")
        for peer in fetch.peers:
            node = self.nodes[peer]
            if not node.alive or not self._connected(i, peer) or node.byzantine == "silent":
                continue
            blocks = tuple(
                FetchedBlock(d.seq, d.payload, d.certificate)
                for d in node.chain[fetch.from_seq - 1 : fetch.to_seq]
            )
            if blocks:
                self._schedule(i, BlocksFetched(blocks), self.rng.randint(1, 3))
                return

    # ---- Byzantine behaviour ------------------------------------------------------------

    def _mangle(self, i: int, dst: int, message: PeerMessage) -> Iterator[PeerMessage]:
        kind = self.nodes[i].byzantine
        if not kind:
            yield message
            return
        auth = self.nodes[i].replica.auth
        if kind == "silent" or (kind == "withhold" and isinstance(message, PayloadReply)):
            return
        # The equivocating primary splits the backups so neither block can reach a quorum.
        if kind == "equivocate" and isinstance(message, PrePrepare) and dst >= self.n // 2:
            vote = message.vote
            payload = SIM_PAYLOAD_PREFIX + b"evil-%d-%d" % (vote.view, vote.seq)
            digest = self.validator.validate_block(vote.seq, message.parent_digest, payload)
            assert isinstance(digest, bytes)
            body = replace(vote, digest=digest, signature=b"")
            yield PrePrepare(
                replace(body, signature=auth.sign(body)), message.parent_digest, payload
            )
            return
        if kind == "double_vote" and isinstance(message, Vote) and dst % 2 == 0:
            yield message  # both votes reach the same replica: it must report evidence
            body = replace(message, digest=hashlib.sha256(message.digest).digest(), signature=b"")
            yield replace(body, signature=auth.sign(body))
            return
        yield message

    def _byzantine_noise(self, i: int) -> None:
        node = self.nodes[i]
        if node.byzantine not in ("malformed", "replay") or self.rng.random() > 0.3:
            return
        dst = self.rng.randrange(self.n)
        if node.byzantine == "replay":
            if node.seen:
                self._send(i, dst, self.rng.choice(node.seen))
            return
        auth = node.replica.auth
        view, seq = node.replica.view, node.replica.last_delivered_seq + 1
        choice = self.rng.randrange(8)
        junk: PeerMessage
        if choice == 0:
            junk = Vote(PHASE_PREPARE, view, seq, b"short", i, b"sig")
        elif choice == 1:
            junk = Vote(PHASE_COMMIT, view, seq, b"\x01" * 32, i, self.rng.randbytes(16))
        elif choice == 2:
            junk = Vote(PHASE_PREPARE, view, seq, b"\x02" * 32, (i + 1) % self.n, b"x" * 16)
        elif choice == 3:
            body = Vote(1, view, seq, b"\x03" * 32, i, b"")
            junk = PrePrepare(replace(body, signature=auth.sign(body)), b"\x00" * 32, b"garbage")
        elif choice == 4:
            vc = ViewChange(view + 1, 5, b"\x04" * 32, (), (), i, b"")
            junk = replace(vc, signature=auth.sign(vc))
        elif choice == 5:
            checkpoint = Checkpoint(seq * 4, b"\x05" * 32, i, b"")
            junk = replace(checkpoint, signature=auth.sign(checkpoint))
        elif choice == 6:  # unasked, and not the block the digest names
            reply = PayloadReply(seq, b"\x06" * 32, SIM_PAYLOAD_PREFIX + b"junk", i, b"")
            junk = replace(reply, signature=auth.sign(reply))
        else:
            request = PayloadRequest(seq, b"\x07" * 31, i, b"")
            junk = replace(request, signature=auth.sign(request))
        self._send(i, dst, junk)

    # ---- main loop ----------------------------------------------------------------------

    def _feed(self, i: int, event: Event) -> None:
        node = self.nodes[i]
        if not node.alive:
            return
        if isinstance(event, Receive) and node.byzantine == "replay" and len(node.seen) < 64:
            node.seen.append(event.message)
        before = (node.replica.view, node.replica.active)
        due = node.replica.get_ticks_until_due() if isinstance(event, Tick) else 0
        actions = node.replica.handle(event)
        # A driver sleeps through the ticks before the due one (node.Driver.catch_up_ticks):
        # those must do nothing, and the due one must act.
        assert due != 1 or actions, f"r{i}: the tick due now did nothing"
        assert due <= 1 or not actions, f"r{i}: a tick {due - 1} before the due one acted"
        self._execute(i, actions)
        after = (node.replica.view, node.replica.active)
        if after != before:
            state = "normal" if after[1] else "view-change"
            self._log(f"r{i} view {before[0]} -> {after[0]} ({state})")

    def _apply_faults(self) -> None:
        for t, what, i in self.sc.crash_events:
            if t != self.now:
                continue
            node = self.nodes[i]
            if what == "crash" and node.alive:
                node.alive = False
                self._log(f"r{i} CRASH")
            elif what == "restart" and not node.alive:
                tip = (node.chain[-1].seq, node.chain[-1].digest) if node.chain else None
                cfg = make_config(self.n, i, self.sc.unsafe_quorum_size)
                node.replica = Replica.restore(
                    cfg, SimAuthenticator(i, self.n), self.validator, node.records, tip
                )
                node.alive = True
                self._log(f"r{i} RESTART view={node.replica.view} tip={tip and tip[0]}")
        for t, group in self.sc.suspicion_events:
            if t == self.now:
                self._log(f"SUSPECT {group}")
                for i in group:
                    self._feed(i, SuspectPrimary("sim"))
        for start, end, group in self.sc.partition_events:
            if start == self.now:
                self._log(f"PARTITION {group}")
            if end == self.now:
                self._log(f"HEAL {group}")

    def _step(self) -> None:
        self.now += 1
        self._apply_faults()
        while self.queue and self.queue[0][0] <= self.now:
            _, _, dst, event = heapq.heappop(self.queue)
            self._feed(dst, event)
        for i in range(self.n):
            self._feed(i, Tick())
            self._byzantine_noise(i)
        for i in range(self.n):
            node = self.nodes[i]
            if (
                not node.alive
                or self.now - node.last_proposal_tick < self.sc.propose_interval_ticks
            ):
                continue
            slot = node.replica.get_proposal_slot()
            if slot is None:
                continue
            node.last_proposal_tick = self.now
            payload = SIM_PAYLOAD_PREFIX + b"v%d-s%d-r%d" % (slot.view, slot.seq, i)
            self._log(f"r{i} propose view={slot.view} seq={slot.seq}")
            self._feed(i, Proposal(slot.view, slot.seq, slot.parent_digest, payload))
        self._check_memory()

    def _check_memory(self) -> None:
        for i, node in enumerate(self.nodes):
            usage, bounds = node.replica.get_memory_usage(), node.replica.get_memory_bounds()
            for name, value in usage.items():
                if value > bounds[name]:
                    self._violation(f"memory: replica {i} {name}={value} > {bounds[name]}")

    def _heights(self) -> dict[int, int]:
        return {
            i: (self.nodes[i].chain[-1].seq if self.nodes[i].chain else 0) for i in range(self.n)
        }

    def run(self) -> SimResult:
        try:
            while self.now < self.sc.chaos_ticks and not self.violations:
                self._step()
            heights = self._heights()
            target = max(heights[i] for i in self.honest) + 2
            # Liveness is owed to honest replicas that are up (a crashed one that never
            # restarts is simply gone).
            live = [i for i in self.honest if self.nodes[i].alive]
            self._log(f"HEALED: heights={heights}; liveness target {target}")
            deadline = self.now + self.sc.liveness_ticks
            while self.now < deadline and not self.violations:
                self._step()
                if all(self._heights()[i] >= target for i in live):
                    break
            if self.sc.check_liveness and not self.violations:
                stuck = [i for i in live if self._heights()[i] < target]
                if stuck:
                    self._violation(f"liveness: replicas {stuck} below height {target}")
        except AssertionError as exc:  # an invariant inside the core is itself a failure
            self._violation(f"assertion in core: {exc!r}")
        return SimResult(
            self.sc,
            self.violations,
            self.trace,
            self._heights(),
            self.now,
            self.messages,
            {i: node.replica.view for i, node in enumerate(self.nodes)},
            tuple(sorted(self.evidence_against)),
            self.fetches,
            self.payload_requests,
        )


def run_seed(seed: int, n: int | None = None, unsafe_quorum_size: int | None = None) -> SimResult:
    scenario = draw_scenario(seed, n)
    if unsafe_quorum_size is not None:
        scenario = replace(scenario, unsafe_quorum_size=unsafe_quorum_size, check_liveness=False)
    return Simulation(scenario).run()
