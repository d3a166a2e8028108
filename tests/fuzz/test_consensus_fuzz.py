"""Fuzzing the PBFT message handlers: 3 honest replicas and one Byzantine peer (index 3).

Hypothesis drives a schedule over a 4-replica cluster (the simulator's fast deterministic
authenticator and block validator). Each step either delivers an honest in-flight message
(reordered, sometimes duplicated or dropped), ticks every replica (the primary proposes
when it may), answers a fetch (honestly or with forged blocks), or makes the Byzantine
replica send a well-typed adversarial message: votes, pre-prepares, checkpoints, statuses,
view-changes and new-views with views/seqs near the honest ones and far away (up to
2**64-1), wrong digests, forged signatures, foreign signers, self-signed conflicting
contents, replays of honest traffic, fully random dataclass values, and mutated codec bytes
decoded by ``decode_consensus_message``.

Checked after every step: ``handle`` never raises (the core's own ``_check_invariants``
included), memory within ``get_memory_bounds()``, deliveries gapless with valid commit
certificates and chained to the parent, no two honest replicas deliver different digests
at one seq, evidence is valid and never names an honest replica. At the end, with the
Byzantine replica silent and the network reliable, the honest replicas must make progress.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from consensus.certificates import (
    compute_prepared_proof,
    verify_commit_certificate,
    verify_evidence,
)
from consensus.events import (
    Action,
    BlocksFetched,
    Broadcast,
    Deliver,
    Event,
    FetchBlocks,
    Proposal,
    Receive,
    ReportEvidence,
    Send,
    Tick,
)
from consensus.messages import (
    MESSAGE_TYPES,
    PEER_MESSAGE_TYPES,
    PHASE_COMMIT,
    PHASE_PRE_PREPARE,
    PHASE_PREPARE,
    Checkpoint,
    FetchedBlock,
    NewView,
    PayloadReply,
    PayloadRequest,
    PeerMessage,
    PreparedCertificate,
    PreparedProof,
    PrePrepare,
    Status,
    ViewChange,
    Vote,
)
from consensus.messages import CommitCertificate as ConsensusCommitCertificate
from consensus.replica import Replica
from consensus.sim import SIM_PAYLOAD_PREFIX, SimAuthenticator, SimBlockValidator, make_config
from node.codec import DecodeError, decode_consensus_message, encode_consensus_message
from tests.fuzz._support import boundary_uints, dataclass_strategy, fuzz_settings
from tests.fuzz.test_decoders_fuzz import mutate

N = 4
BYZ = 3
HONEST = (0, 1, 2)
U64_MAX = 2**64 - 1
IN_FLIGHT_MAX = 400
FETCHED_MAX = 8

random_peer_messages = st.one_of(*[dataclass_strategy(cls) for cls in PEER_MESSAGE_TYPES])
random_any_messages = st.one_of(*[dataclass_strategy(cls) for cls in MESSAGE_TYPES])


class Cluster:
    """Four replicas, a reorderable in-flight list, and the checks run after every step."""

    def __init__(self) -> None:
        self.validator = SimBlockValidator()
        self.verifier = SimAuthenticator(0, N)
        self.byz_auth = SimAuthenticator(BYZ, N)
        self.replicas = [
            Replica(make_config(N, i), SimAuthenticator(i, N), self.validator) for i in range(N)
        ]
        self.in_flight: list[tuple[int, int, PeerMessage]] = []
        self.seen: list[tuple[int, PeerMessage]] = []  # honest traffic, for replays
        self.chains: list[list[Deliver]] = [[] for _ in range(N)]
        self.fetches: list[tuple[int, FetchBlocks]] = []
        self.agreed: dict[int, bytes] = {}
        self.digests: list[bytes] = [make_config(N, 0).genesis_digest]
        self.now = 0
        self.proposals = 0
        self.silent: set[int] = set()

    # ---- running ------------------------------------------------------------------------

    def feed(self, i: int, event: Event) -> None:
        self.execute(i, self.replicas[i].handle(event))
        self.check_memory(i)

    def execute(self, i: int, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send | Broadcast):
                targets = [action.to] if isinstance(action, Send) else range(N)
                for dst in targets:
                    if dst in self.silent or i in self.silent:
                        continue
                    if dst != i and len(self.in_flight) < IN_FLIGHT_MAX:
                        self.in_flight.append((i, dst, action.message))
                if len(self.seen) < 200:
                    self.seen.append((i, action.message))
            elif isinstance(action, Deliver):
                self.on_deliver(i, action)
            elif isinstance(action, FetchBlocks):
                assert 1 <= action.from_seq <= action.to_seq, action
                assert i not in action.peers and action.peers, action
                self.fetches.append((i, action))
            elif isinstance(action, ReportEvidence):
                assert verify_evidence(self.verifier, N, action.evidence), "invalid evidence"
                assert action.evidence.first.signer == BYZ, f"evidence against honest by {i}"

    def on_deliver(self, i: int, d: Deliver) -> None:
        chain = self.chains[i]
        expected = chain[-1].seq + 1 if chain else 1
        assert d.seq == expected, f"replica {i} delivered {d.seq}, expected {expected}"
        quorum = self.replicas[i].config.quorum
        assert verify_commit_certificate(
            self.verifier, N, quorum, d.seq, d.digest, d.certificate
        ), f"replica {i} delivered {d.seq} without a valid certificate"
        parent = chain[-1].digest if chain else self.replicas[i].config.genesis_digest
        assert self.validator.validate_block(d.seq, parent, d.payload) == d.digest
        if i in HONEST:
            agreed = self.agreed.setdefault(d.seq, d.digest)
            assert agreed == d.digest, f"agreement: replica {i} at seq {d.seq}"
        chain.append(d)
        if len(self.digests) < 64:
            self.digests.append(d.digest)

    def check_memory(self, i: int) -> None:
        replica = self.replicas[i]
        usage, bounds = replica.get_memory_usage(), replica.get_memory_bounds()
        for name, value in usage.items():
            assert value <= bounds[name], f"replica {i} {name}={value} > {bounds[name]}"

    def tick(self) -> None:
        self.now += 1
        for i in range(N):
            if i in self.silent:
                continue
            self.feed(i, Tick())
            slot = self.replicas[i].get_proposal_slot()
            if slot is not None:
                self.proposals += 1
                payload = SIM_PAYLOAD_PREFIX + b"v%d-s%d-r%d" % (slot.view, slot.seq, i)
                self.feed(i, Proposal(slot.view, slot.seq, slot.parent_digest, payload))

    def deliver(self, index: int, keep: bool) -> None:
        if not self.in_flight:
            return
        src, dst, message = self.in_flight[index % len(self.in_flight)]
        if not keep:  # keep=True duplicates it
            del self.in_flight[index % len(self.in_flight)]
        self.feed(dst, Receive(src, message))

    def deliver_all(self) -> None:
        for _ in range(IN_FLIGHT_MAX * 4):
            if not self.in_flight:
                return
            src, dst, message = self.in_flight.pop(0)
            self.feed(dst, Receive(src, message))

    def answer_fetch(self, forged: FetchedBlock | None) -> None:
        if not self.fetches:
            return
        i, fetch = self.fetches.pop(0)
        if forged is not None:
            self.feed(i, BlocksFetched((forged,)))
            return
        for peer in fetch.peers:
            blocks = tuple(
                FetchedBlock(d.seq, d.payload, d.certificate)
                for d in self.chains[peer][fetch.from_seq - 1 : fetch.to_seq][:FETCHED_MAX]
            )
            if blocks:
                self.feed(i, BlocksFetched(blocks))
                return

    # ---- what the Byzantine replica knows -----------------------------------------------

    def views(self) -> list[int]:
        return [r.view for r in self.replicas]

    def seqs(self) -> list[int]:
        return [r.last_delivered_seq for r in self.replicas] + [r.high_seq for r in self.replicas]

    def sign(self, body: Any) -> Any:
        return dataclasses.replace(body, signature=self.byz_auth.sign(body))


@st.composite
def near_or_far(draw: st.DrawFn, anchors: list[int]) -> int:
    """A view or seq next to one the honest replicas use, or anywhere up to 2**64-1."""
    if draw(st.integers(0, 4)) == 0:
        return draw(boundary_uints(64))
    value = draw(st.sampled_from(anchors)) + draw(st.integers(-2, 20))
    return min(max(value, 0), U64_MAX)


@st.composite
def byzantine_message(draw: st.DrawFn, cluster: Cluster) -> tuple[int, PeerMessage]:
    """(sender, message): an adversarial message the Byzantine peer can put on the wire."""
    views, seqs = cluster.views(), cluster.seqs()
    view = draw(near_or_far(views))
    seq = draw(near_or_far(seqs))
    digest = draw(st.sampled_from(cluster.digests) | st.binary(min_size=0, max_size=40))
    kind = draw(
        st.sampled_from(
            [
                "vote",
                "pre_prepare",
                "checkpoint",
                "status",
                "view_change",
                "new_view",
                "payload_request",
                "payload_reply",
                "replay",
                "random",
                "codec",
            ]
        )
    )
    message: PeerMessage
    if kind == "vote":
        phase = draw(st.sampled_from([PHASE_PRE_PREPARE, PHASE_PREPARE, PHASE_COMMIT, 0, 4]))
        message = cluster.sign(Vote(phase, view, seq, digest, BYZ, b""))
    elif kind == "pre_prepare":
        parent = draw(st.sampled_from(cluster.digests) | st.binary(max_size=33))
        payload = draw(
            st.sampled_from([SIM_PAYLOAD_PREFIX]).map(lambda p: p) | st.binary(max_size=8)
        ) + draw(st.binary(max_size=12))
        valid = cluster.validator.validate_block(seq, parent, payload)
        if isinstance(valid, bytes) and draw(st.booleans()):
            digest = valid  # a well-formed conflicting block
        message = PrePrepare(
            cluster.sign(Vote(PHASE_PRE_PREPARE, view, seq, digest, BYZ, b"")), parent, payload
        )
    elif kind == "checkpoint":
        message = cluster.sign(Checkpoint(seq, digest, BYZ, b""))
    elif kind == "status":
        message = cluster.sign(Status(view, seq, BYZ, b""))
    elif kind == "view_change":
        proof = (
            tuple(m for _, m in cluster.seen if isinstance(m, Checkpoint))[
                -draw(st.integers(0, 4)) :
            ]
            if draw(st.booleans())
            else ()
        )
        prepared = draw(st.lists(prepared_certificate(cluster, view, seq), max_size=2))
        message = cluster.sign(ViewChange(view, seq, digest, proof, tuple(prepared), BYZ, b""))
    elif kind == "new_view":
        vcs = tuple(m for _, m in cluster.seen if isinstance(m, ViewChange))[-3:]
        own = cluster.sign(ViewChange(view, 0, cluster.digests[0], (), (), BYZ, b""))
        votes = tuple(
            cluster.sign(Vote(PHASE_PRE_PREPARE, view, s, digest, BYZ, b""))
            for s in range(seq, seq + draw(st.integers(0, 3)))
            if s <= U64_MAX
        )
        message = cluster.sign(NewView(view, (*vcs, own), votes, BYZ, b""))
    elif kind == "payload_request":
        message = cluster.sign(PayloadRequest(seq, digest, BYZ, b""))
    elif kind == "payload_reply":
        # An honest block's payload under its own digest or another, or junk.
        pre_prepares = [m for _, m in cluster.seen if isinstance(m, PrePrepare)]
        if pre_prepares and draw(st.booleans()):
            pp = draw(st.sampled_from(pre_prepares))
            seq, payload = pp.vote.seq, pp.payload
            digest = pp.vote.digest if draw(st.booleans()) else digest
        else:
            payload = SIM_PAYLOAD_PREFIX + draw(st.binary(max_size=8))
        message = cluster.sign(PayloadReply(seq, digest, payload, BYZ, b""))
    elif kind == "replay" and cluster.seen:
        sender, message = draw(st.sampled_from(cluster.seen))
        # Replayed by the Byzantine peer (signer != sender) or duplicated by the network.
        return (BYZ if draw(st.booleans()) else sender), message
    elif kind == "codec" and cluster.seen:
        _, original = draw(st.sampled_from(cluster.seen))
        data = encode_consensus_message(original)
        other = encode_consensus_message(draw(st.sampled_from(cluster.seen))[1])
        mutated = draw(mutate(data, other, []))
        try:
            decoded = decode_consensus_message(mutated, MESSAGE_TYPES)
        except DecodeError:
            decoded = original
        return BYZ, decoded
    else:
        message = draw(random_peer_messages)
    # Sometimes forge: a foreign signer, or a corrupted signature.
    forge = draw(st.integers(0, 5))
    if forge == 0:
        message = _replace_signed(message, signer=draw(st.sampled_from(HONEST)))
    elif forge == 1:
        message = _replace_signed(message, signature=draw(st.binary(max_size=20)))
    return BYZ, message


def _replace_signed(message: PeerMessage, **changes: Any) -> PeerMessage:
    if isinstance(message, PrePrepare):
        return dataclasses.replace(message, vote=dataclasses.replace(message.vote, **changes))
    return dataclasses.replace(message, **changes)


@st.composite
def prepared_certificate(draw: st.DrawFn, cluster: Cluster, view: int, seq: int) -> PreparedProof:
    """A VIEW-CHANGE's proof of a prepared block: a real honest pre-prepare with (some of)
    its prepares, or a fabricated one; sometimes with a parent or header that is not the
    block's."""
    pre_prepares = [m for _, m in cluster.seen if isinstance(m, PrePrepare)]
    use_real: bool = draw(st.booleans())
    if pre_prepares and use_real:
        pp = draw(st.sampled_from(pre_prepares))
        prepares = tuple(
            m
            for _, m in cluster.seen
            if isinstance(m, Vote)
            and m.phase == PHASE_PREPARE
            and (m.view, m.seq, m.digest) == (pp.vote.view, pp.vote.seq, pp.vote.digest)
        )[: draw(st.integers(0, 3))]
    else:
        payload = SIM_PAYLOAD_PREFIX + draw(st.binary(max_size=6))
        parent = draw(st.sampled_from(cluster.digests))
        digest = cluster.validator.validate_block(seq, parent, payload)
        assert isinstance(digest, bytes)
        pp = PrePrepare(
            cluster.sign(Vote(PHASE_PRE_PREPARE, view, seq, digest, BYZ, b"")), parent, payload
        )
        prepares = tuple(
            cluster.sign(Vote(PHASE_PREPARE, view, seq, digest, BYZ, b""))
            for _ in range(draw(st.integers(0, 2)))
        )
    proof = compute_prepared_proof(cluster.validator, PreparedCertificate(pp, prepares))
    lie = draw(st.integers(0, 3))
    if lie == 0:
        proof = dataclasses.replace(proof, parent_digest=draw(st.sampled_from(cluster.digests)))
    elif lie == 1:
        proof = dataclasses.replace(proof, header=draw(st.binary(max_size=40)))
    return proof


@st.composite
def forged_fetched_block(draw: st.DrawFn, cluster: Cluster) -> FetchedBlock:
    seq = draw(near_or_far(cluster.seqs()))
    payload = SIM_PAYLOAD_PREFIX + draw(st.binary(max_size=6))
    commits = tuple(
        cluster.sign(
            Vote(
                PHASE_COMMIT,
                draw(near_or_far(cluster.views())),
                seq,
                draw(st.sampled_from(cluster.digests)),
                BYZ,
                b"",
            )
        )
        for _ in range(draw(st.integers(0, 3)))
    )
    return FetchedBlock(seq, payload, ConsensusCommitCertificate(commits))


def run_schedule(data: st.DataObject, steps: int) -> Cluster:
    cluster = Cluster()
    for _ in range(steps):
        op = data.draw(
            st.sampled_from(
                ["deliver"] * 6 + ["tick"] * 2 + ["byz"] * 4 + ["fetch", "flush", "drop"]
            ),
            label="op",
        )
        if op == "deliver":
            cluster.deliver(data.draw(st.integers(0, 50)), keep=data.draw(st.integers(0, 9)) == 0)
        elif op == "tick":
            cluster.tick()
        elif op == "flush":
            cluster.deliver_all()
        elif op == "drop":  # lose everything one replica sent: view changes follow
            src = data.draw(st.integers(0, N - 1), label="drop_src")
            cluster.in_flight = [m for m in cluster.in_flight if m[0] != src]
            for _ in range(data.draw(st.integers(0, 25), label="drop_ticks")):
                cluster.tick()
                cluster.in_flight = [m for m in cluster.in_flight if m[0] != src]
        elif op == "fetch":
            forged = data.draw(st.none() | forged_fetched_block(cluster), label="fetched")
            cluster.answer_fetch(forged)
        else:
            sender, message = data.draw(byzantine_message(cluster), label="byzantine")
            dst = data.draw(st.sampled_from(HONEST), label="dst")
            cluster.feed(dst, Receive(sender, message))
    return cluster


@fuzz_settings(40)
@given(data=st.data())
def test_byzantine_peer_cannot_break_safety_or_bounds(data: st.DataObject) -> None:
    cluster = run_schedule(data, steps=data.draw(st.integers(20, 300), label="steps"))
    # Byzantine replica falls silent, the network becomes reliable: honest progress resumes.
    start = min(len(cluster.chains[i]) for i in HONEST)
    target = max(len(cluster.chains[i]) for i in HONEST) + 2
    cluster.silent.add(BYZ)
    cluster.in_flight = [m for m in cluster.in_flight if BYZ not in m[:2]]
    cluster.fetches = [f for f in cluster.fetches if f[0] != BYZ]
    for _ in range(600):
        cluster.deliver_all()
        while cluster.fetches:
            cluster.answer_fetch(None)
        cluster.tick()
        if all(len(cluster.chains[i]) >= target for i in HONEST):
            break
    heights = [len(cluster.chains[i]) for i in HONEST]
    assert all(h >= target for h in heights), f"no progress: {heights} from {start}, want {target}"


@fuzz_settings(60)
@given(
    raw=st.binary(max_size=200) | random_any_messages.map(encode_consensus_message),
    dst=st.sampled_from(HONEST),
    warm=st.integers(0, 30),
)
def test_codec_bytes_into_replica(raw: bytes, dst: int, warm: int) -> None:
    """Bytes from a peer go through the node codec, then ``Receive`` into a replica."""
    cluster = Cluster()
    for _ in range(warm):  # some honest progress first, so the state is not just genesis
        cluster.tick()
        cluster.deliver_all()
    try:
        message = decode_consensus_message(raw, MESSAGE_TYPES)
    except DecodeError:
        return
    before = cluster.replicas[dst].last_delivered_seq
    cluster.feed(dst, Receive(BYZ, message))
    cluster.tick()
    cluster.deliver_all()
    assert cluster.replicas[dst].last_delivered_seq >= before
