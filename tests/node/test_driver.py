"""In-process tests of the driver pieces: wire frames, authenticator, block checker, action
order (WAL before sends), restore without double votes, bad frames, halting, the service."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from node_harness import ACCOUNT_KEYS, CHAIN_ID, VALIDATOR_KEYS, Cluster, make_genesis, transfer

from consensus.events import Broadcast, Deliver, Send
from consensus.messages import (
    MESSAGE_TYPES,
    PHASE_COMMIT,
    PHASE_PRE_PREPARE,
    PHASE_PREPARE,
    Checkpoint,
    CommitCertificate,
    FetchedBlock,
    NewView,
    PreparedCertificate,
    PrePrepare,
    Status,
    ViewChange,
    Vote,
)
from node import mempool as mempool_module
from node.app import BlockChecker, NodeAuthenticator
from node.chain import ChainStore
from node.codec import (
    DEFAULT_LIMITS,
    DecodeError,
    decode_block,
    decode_consensus_message,
    encode_block,
    encode_block_header,
    encode_consensus_message,
    get_block_hash,
    get_tx_hash,
)
from node.genesis import get_genesis_hash
from node.ledger import (
    ChainContext,
    SignatureCache,
    State,
    apply_block,
    build_block,
    get_genesis_state,
)
from node.mempool import SOURCE_PEER, encode_tx_batch
from node.node import (
    Driver,
    get_partial_block_txs_min,
    get_relay_interval_s,
    get_status_interval_ticks,
    to_codec_certificate,
    to_consensus_certificate,
)
from node.service import REJECT_BAD_NONCE, REJECT_INVALID_TX, REJECT_MEMPOOL_FULL
from node.store import MemoryStore
from node.wire import (
    FETCH_BLOCKS_MAX,
    FRAME_CONSENSUS,
    BlockRequest,
    decode_block_request,
    decode_block_response,
    encode_block_request,
    encode_block_response,
    get_frame_kind,
)

# --- wire -----------------------------------------------------------------------------


def test_block_request_round_trip_and_strictness() -> None:
    request = BlockRequest(3, 10)
    frame = encode_block_request(request)
    assert decode_block_request(frame) == request
    for bad in (frame + b"\x00", frame[:-1], b"\x11" + frame[1:], frame[:1] + b"\x02" + frame[2:]):
        with pytest.raises(DecodeError):
            decode_block_request(bad)
    reversed_range = frame[:2] + (10).to_bytes(8, "little") + (3).to_bytes(8, "little")
    with pytest.raises(DecodeError, match="not a range"):
        decode_block_request(reversed_range)
    with pytest.raises(ValueError):
        BlockRequest(1, FETCH_BLOCKS_MAX + 1)


def test_block_response_round_trip_and_strictness() -> None:
    vote = Vote(PHASE_COMMIT, 0, 1, b"\x01" * 32, 0, b"\x02" * 64)
    blocks = [FetchedBlock(s, b"payload%d" % s, CommitCertificate((vote,))) for s in (1, 2)]
    frame = encode_block_response(blocks)
    assert decode_block_response(frame) == blocks
    with pytest.raises(DecodeError):
        decode_block_response(frame + b"\x00")
    with pytest.raises(DecodeError, match="strictly increase"):
        decode_block_response(encode_block_response(blocks[::-1]))
    with pytest.raises(DecodeError):
        decode_block_response(frame[:2] + (FETCH_BLOCKS_MAX + 1).to_bytes(4, "little"))


def test_certificate_conversion_is_lossless() -> None:
    votes = tuple(Vote(PHASE_COMMIT, 2, 7, b"\x05" * 32, i, bytes([i]) * 64) for i in (0, 2, 3))
    cert = CommitCertificate(votes)
    codec_cert = to_codec_certificate(cert)
    assert (codec_cert.height, codec_cert.view, codec_cert.block_hash) == (7, 2, b"\x05" * 32)
    assert to_consensus_certificate(codec_cert) == cert


# --- authenticator and block checker ----------------------------------------------------


def test_authenticator_binds_signer_and_chain() -> None:
    keys = [k.public_key for k in VALIDATOR_KEYS]
    auth = NodeAuthenticator(VALIDATOR_KEYS[1], CHAIN_ID, keys)
    body = Status(3, 9, 1, b"")
    signature = auth.sign(body)
    assert auth.verify(1, body, signature)
    assert not auth.verify(2, body, signature)  # another validator's key
    assert not auth.verify(7, body, signature)  # not a validator
    assert not auth.verify(1, dataclasses.replace(body, view=4), signature)
    other_chain = NodeAuthenticator(VALIDATOR_KEYS[1], "other-chain", keys)
    assert not other_chain.verify(1, body, signature)


def _make_checker() -> tuple[BlockChecker, bytes, bytes]:
    genesis = make_genesis()
    state = get_genesis_state(genesis)
    context = ChainContext.from_genesis(genesis)
    checker = BlockChecker(context, SignatureCache(), state, 1024 * 1024)
    built = build_block(state, [transfer(0, 0)], context, 0, 0, 5_000)
    return checker, get_genesis_hash(genesis), encode_block(built.block)


def test_block_checker_accepts_a_valid_block_and_names_each_fault() -> None:
    checker, genesis_hash, payload = _make_checker()
    block = decode_block(payload)
    assert checker.validate_block(1, genesis_hash, payload) == get_block_hash(block.header)
    assert checker.get_applied(get_block_hash(block.header)) is not None
    assert checker.validate_block(2, genesis_hash, payload).startswith("height")
    assert checker.validate_block(1, b"\x07" * 32, payload).startswith("parent_hash")
    assert checker.validate_block(1, genesis_hash, b"junk").startswith("decode")
    assert checker.validate_block(1, genesis_hash, payload + b"\x00").startswith("decode")
    wrong_root = dataclasses.replace(
        block, header=dataclasses.replace(block.header, state_root=b"\x00" * 32)
    )
    assert checker.validate_block(1, genesis_hash, encode_block(wrong_root)).startswith(
        "state_root"
    )
    other_chain = dataclasses.replace(
        block, header=dataclasses.replace(block.header, chain_id="other")
    )
    assert checker.validate_block(1, genesis_hash, encode_block(other_chain)).startswith("decode")


def test_block_checker_checks_a_header_alone_as_a_view_change_carries_it() -> None:
    """A VIEW-CHANGE proves a block by its header: the digest a valid header gives is the
    block's, and a header for another slot, parent or chain, or not a header, is refused."""
    checker, genesis_hash, payload = _make_checker()
    block = decode_block(payload)
    header = checker.get_block_header(payload)
    assert header == encode_block_header(block.header) and len(header) < len(payload)
    assert checker.validate_header(1, genesis_hash, header) == get_block_hash(block.header)
    assert checker.validate_block(1, genesis_hash, payload) == get_block_hash(block.header)
    assert checker.validate_header(2, genesis_hash, header).startswith("height")
    assert checker.validate_header(1, b"\x07" * 32, header).startswith("parent_hash")
    assert checker.validate_header(1, genesis_hash, payload).startswith("decode")
    assert checker.validate_header(1, genesis_hash, header + b"\x00").startswith("decode")
    other_chain = dataclasses.replace(block.header, chain_id="other")
    assert checker.validate_header(1, genesis_hash, encode_block_header(other_chain)).startswith(
        "decode")
    far_proposer = dataclasses.replace(block.header, proposer_index=9)
    assert checker.validate_header(1, genesis_hash, encode_block_header(far_proposer)).startswith(
        "proposer_index")


def test_block_checker_checks_the_tx_root_on_every_path() -> None:
    """The root is checked once per payload, whichever path it takes: a payload with a
    valid block's header but other txs is refused when applied, when its header was
    already applied, and when there is no parent state to apply it on."""
    checker, genesis_hash, payload = _make_checker()
    block = decode_block(payload)
    digest = get_block_hash(block.header)
    swapped = encode_block(dataclasses.replace(block, txs=(transfer(0, 1),)))
    assert checker.validate_block(1, genesis_hash, swapped).startswith("tx_root")
    assert checker.get_applied(digest) is None
    assert checker.validate_block(1, genesis_hash, payload) == digest
    applied = checker.get_applied(digest)
    assert applied is not None and applied.block == block
    assert checker.validate_block(1, genesis_hash, swapped).startswith("tx_root")
    parent = b"\x09" * 32
    orphan = dataclasses.replace(block.header, parent_hash=parent)
    assert checker.validate_block(1, parent, encode_block(dataclasses.replace(
        block, header=orphan))) == get_block_hash(orphan)
    orphan_swapped = dataclasses.replace(block, header=orphan, txs=(transfer(0, 1),))
    assert checker.validate_block(1, parent, encode_block(orphan_swapped)).startswith("tx_root")


def test_block_checker_without_parent_state_still_checks_signatures() -> None:
    checker, genesis_hash, payload = _make_checker()
    block = decode_block(payload)
    parent = b"\x09" * 32  # a parent whose post-state this node never saw
    forged_tx = bytearray(block.txs[0])
    forged_tx[-1] ^= 1  # breaks the signature
    header = dataclasses.replace(block.header, parent_hash=parent)
    good = dataclasses.replace(block, header=header)
    assert checker.validate_block(1, parent, encode_block(good)) == get_block_hash(header)
    bad_txs = (bytes(forged_tx),)
    from node.codec import compute_tx_root

    bad = dataclasses.replace(
        block, header=dataclasses.replace(header, tx_root=compute_tx_root(bad_txs)), txs=bad_txs
    )
    assert checker.validate_block(1, parent, encode_block(bad)).startswith("signature")


# --- the driver in a cluster -----------------------------------------------------------


def test_cluster_commits_transactions_and_agrees() -> None:
    cluster = Cluster()
    for nonce in range(5):
        assert cluster.drivers[nonce % 4].submit_tx(transfer(0, nonce)).status == "accepted"
    cluster.run_until(lambda: all(d.txs_committed_total == 5 for d in cluster.drivers))
    cluster.run_until(lambda: min(cluster.get_heights()) >= 6)
    top = min(cluster.get_heights())
    for height in range(1, top + 1):
        hashes = {d.chain.get_block_bytes(height) for d in cluster.drivers}
        assert len(hashes) == 1
    assert all(d.get_account(ACCOUNT_KEYS[0].public_key).nonce == 5 for d in cluster.drivers)


def test_delivery_commits_the_block_checked_at_pre_prepare_without_decoding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import node.node as node_module

    decoded: list[bytes] = []
    decode = node_module.decode_block
    monkeypatch.setattr(node_module, "decode_block",
                        lambda data, *args, **kwargs: decoded.append(data) or decode(
                            data, *args, **kwargs))
    cluster = Cluster()
    for nonce in range(3):
        assert cluster.drivers[nonce % 4].submit_tx(transfer(0, nonce)).status == "accepted"
    cluster.run_until(lambda: all(d.txs_committed_total == 3 for d in cluster.drivers))
    assert decoded == []
    top = min(cluster.get_heights())
    assert len({d.chain.get_block_bytes(top) for d in cluster.drivers}) == 1
    assert all(d.get_account(ACCOUNT_KEYS[0].public_key).nonce == 3 for d in cluster.drivers)


def _decode_votes(frames: list[tuple[str, object]]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for kind, item in frames:
        if kind == "send":
            assert isinstance(item, bytes)
            if item[:1] == b"\x06":
                out.append(("send", decode_consensus_message(item, MESSAGE_TYPES)))
        else:
            assert isinstance(item, list)
            out += [("wal", decode_consensus_message(r, MESSAGE_TYPES)) for r in item]
    return out


def test_persist_is_durable_before_the_sends_that_depend_on_it() -> None:
    cluster = Cluster()
    log: list[tuple[str, object]] = []
    for driver, network in zip(cluster.drivers, cluster.networks, strict=True):
        network.log = log
        append = driver.chain.append_wal

        def traced(records: list[bytes], append=append) -> list[int]:  # type: ignore[no-untyped-def]
            log.append(("wal", list(records)))
            return append(records)

        driver.chain.append_wal = traced  # type: ignore[method-assign]
    cluster.run_until(lambda: min(cluster.get_heights()) >= 4)
    events = _decode_votes(log)
    persisted: set[object] = set()
    checked = 0
    for kind, message in events:
        if kind == "wal":
            persisted.add(message)
            if isinstance(message, PreparedCertificate):
                vote = message.pre_prepare.vote
                persisted.add(("prepared", vote.view, vote.seq))
            continue
        if isinstance(message, PrePrepare):
            assert message in persisted, "PRE-PREPARE sent before it was persisted"
            checked += 1
        elif isinstance(message, Vote) and message.phase == PHASE_PREPARE:
            assert message in persisted, "PREPARE sent before it was persisted"
            checked += 1
        elif isinstance(message, Vote) and message.phase == PHASE_COMMIT:
            assert ("prepared", message.view, message.seq) in persisted, "COMMIT before prepared"
            checked += 1
    assert checked > 20


def _conflicting_pre_prepare(cluster: Cluster, parent_state: State, digest: bytes) -> PrePrepare:
    """A second, different block on ``parent_state`` signed by the primary (an equivocation)."""
    primary = cluster.drivers[0]
    built = build_block(parent_state, [], primary.context, 0, 0, int(cluster.now * 1000) + 77)
    other = get_block_hash(built.block.header)
    assert other != digest
    body = Vote(PHASE_PRE_PREPARE, 0, parent_state.height + 1, other, 0, b"")
    vote = dataclasses.replace(body, signature=primary.auth.sign(body))
    return PrePrepare(vote, parent_state.last_block_hash, encode_block(built.block))


def test_restore_from_the_wal_gives_no_double_vote() -> None:
    cluster = Cluster()
    cluster.run_until(lambda: min(cluster.get_heights()) >= 2)
    cluster.deliver_all()
    # Replica 1 hears only the primary and nobody hears it: it prepares the next block
    # and cannot deliver it.
    cluster.filter = lambda sender, to, frame: sender != 1 and (to != 1 or sender == 0)
    seq = cluster.drivers[1].state.height + 1
    cluster.run_until(lambda: any(
        isinstance(m, Vote) and m.phase == PHASE_PREPARE and m.seq == seq
        for _, f in cluster.networks[1].sent if f[:1] == b"\x06"
        for m in [decode_consensus_message(f, MESSAGE_TYPES)]
    ))
    prepared = [
        m for _, f in cluster.networks[1].sent if f[:1] == b"\x06"
        for m in [decode_consensus_message(f, MESSAGE_TYPES)]
        if isinstance(m, Vote) and m.phase == PHASE_PREPARE and m.seq == seq
    ][0]
    cluster.down.add(1)  # crash
    parent_state = cluster.drivers[1].state
    assert parent_state.height == seq - 1
    conflict = _conflicting_pre_prepare(cluster, parent_state, prepared.digest)
    frame = encode_consensus_message(conflict)

    def prepares_for(network_sent: list[tuple[int, bytes]], digest: bytes) -> int:
        return sum(
            1 for _, f in network_sent if f[:1] == b"\x06"
            for m in [decode_consensus_message(f, MESSAGE_TYPES)]
            if isinstance(m, Vote) and m.phase == PHASE_PREPARE and m.digest == digest
        )

    restored = cluster.restart(1)
    restored.network = cluster.networks[1]
    cluster.networks[1].sent.clear()
    restored.on_consensus_frame(0, frame)
    assert prepares_for(cluster.networks[1].sent, conflict.vote.digest) == 0
    # Control: a replica that lost its WAL would vote for the conflicting block.
    amnesiac_store = MemoryStore()
    chain = ChainStore(amnesiac_store, cluster.genesis)
    for height in range(1, seq):
        raw = cluster.drivers[0].chain.get_block_bytes(height)
        cert = cluster.drivers[0].chain.get_certificate(height)
        assert raw is not None and cert is not None
        block = decode_block(raw)

        applied = apply_block(chain.load_state(), block, ChainContext.from_genesis(cluster.genesis))
        chain.commit_block(raw, applied, cert)
    cluster.stores[1] = amnesiac_store
    amnesiac = cluster.restart(1)
    cluster.networks[1].sent.clear()
    amnesiac.on_consensus_frame(0, frame)
    assert prepares_for(cluster.networks[1].sent, conflict.vote.digest) == 3  # to each peer


def test_killed_replica_catches_up_by_fetching_blocks() -> None:
    cluster = Cluster()
    cluster.run_until(lambda: min(cluster.get_heights()) >= 2)
    cluster.down.add(3)
    cluster.run_until(lambda: cluster.drivers[0].state.height >= 12)
    restored = cluster.restart(3)
    cluster.run_until(lambda: restored.state.height >= cluster.drivers[0].state.height >= 14)
    for height in range(1, restored.state.height + 1):
        assert restored.chain.get_block_bytes(height) == cluster.drivers[0].chain.get_block_bytes(
            height
        )


def test_a_replica_with_another_genesis_stays_at_height_0_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = Cluster()
    balances = tuple((key, amount + 1) for key, amount in cluster.genesis.balances)
    other = dataclasses.replace(cluster.genesis, balances=balances)
    cluster.drivers[3] = Driver(cluster.config, other, VALIDATOR_KEYS[3], MemoryStore(),
                                cluster.networks[3], clock=lambda: cluster.now,
                                wall_ms=lambda: int(cluster.now * 1000))
    with caplog.at_level(logging.WARNING, logger="node.node"):
        cluster.run_until(lambda: cluster.drivers[0].state.height >= 6
                          and cluster.drivers[3].discards.get("fetched block rejected", 0) >= 2)
    assert [d.state.height >= 6 for d in cluster.drivers[:3]] == [True] * 3
    assert cluster.drivers[3].state.height == 0
    warnings = [r.getMessage() for r in caplog.records if "does not build on" in r.getMessage()]
    assert warnings == [
        "block 1 fetched from a peer does not build on this node's genesis (hash "
        f"{get_genesis_hash(other).hex()}): if every peer's does not (the metric "
        'bcfl_messages_dropped_total{reason="consensus_fetched_block_rejected"} keeps growing), '
        "this node's genesis.json is not the chain's; compare the hash `bcfl genesis validate` "
        "prints with the other members'"
    ]
    assert cluster.drivers[3].get_dropped()["consensus_fetched_block_rejected"] >= 2  # as named
    # The other three, on the same genesis, never see it.
    assert not any(d.genesis_mismatch_warned for d in cluster.drivers[:3])


def test_primary_crash_leads_to_a_view_change_and_more_commits() -> None:
    cluster = Cluster()
    cluster.run_until(lambda: min(cluster.get_heights()) >= 2)
    cluster.down.add(0)
    start = max(cluster.get_heights())
    cluster.run_until(lambda: min(cluster.get_heights()) >= start + 3)
    assert all(d.replica.view >= 1 for d in cluster.live())
    assert all(d.view_changes_total >= 1 for d in cluster.live())


def test_a_view_change_completes_with_blocks_near_the_frame_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/node.md's former worst gap, scaled down: frames capped at 60 KB (the
    transport's 16 MiB, scaled to blocks of ~10 KB). When VIEW-CHANGE carried the payloads
    prepared above the stable checkpoint (and NEW-VIEW a quorum of copies), its frames
    were 91 KB, dropped, and the chain halted at the primary's crash. Digest-only, they
    carry headers, and the chain goes on in the next view."""
    limit = 60_000
    cluster = Cluster()
    for driver in cluster.drivers:
        driver.frame_size_max_bytes = limit
    cluster.filter = lambda sender, to, frame: len(frame) <= limit  # what the transport does
    nonces = [0] * 4
    for _ in range(200):
        for account in (1, 2, 3):
            for _ in range(10):
                cluster.drivers[account].submit_tx(transfer(account, nonces[account]))
                nonces[account] += 1
        cluster.step()
    height = max(cluster.get_heights())
    assert min(cluster.get_heights()) == height > 50
    payloads = {d.replica.slots[s].pre_prepare.payload  # type: ignore[union-attr]
                for d in cluster.live() for s in d.replica.slots
                if d.replica.slots[s].pre_prepare is not None and s > height}
    cluster.down.add(0)
    sent_before = [len(network.sent) for network in cluster.networks]
    with caplog.at_level(logging.ERROR, logger="node.node"):
        for _ in range(600):
            cluster.step()
    assert min(cluster.get_heights()[1:]) > height + 5
    assert all(d.replica.active and d.replica.view >= 1 for d in cluster.live())
    assert not [r for r in caplog.records if "frame limit" in r.getMessage()]
    view_frames = [frame for network, before in zip(cluster.networks, sent_before, strict=True)
                   for _, frame in network.sent[before:]
                   if get_frame_kind(frame) == FRAME_CONSENSUS
                   and isinstance(decode_consensus_message(frame, MESSAGE_TYPES),
                                  ViewChange | NewView)]
    assert view_frames and max(map(len, view_frames)) < limit // 2
    assert payloads, "blocks were in flight when the primary crashed"
    assert not any(payload in frame for frame in view_frames for payload in payloads)

    # A node decodes its own write-ahead records with a bound of their own: it restarts
    # from them even when one is over the limit a peer's message is held to.
    small = dataclasses.replace(DEFAULT_LIMITS, message_size_max_bytes=5_000)
    largest = max((raw for _, raw in cluster.drivers[1].chain.load_wal_entries()), key=len)
    assert len(largest) > small.message_size_max_bytes
    with pytest.raises(DecodeError):  # what a peer's copy of it gets
        decode_consensus_message(largest, MESSAGE_TYPES, small)
    restarted = Driver(cluster.config, cluster.genesis, VALIDATOR_KEYS[1], cluster.stores[1],
                       cluster.networks[1], clock=lambda: cluster.now, limits=small)
    assert restarted.state.height == cluster.drivers[1].state.height
    assert restarted.replica.view == cluster.drivers[1].replica.view


def test_a_message_over_the_frame_limit_is_said_once_per_view(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No peer receives a frame over the transport's limit (dropped, counted): the sender
    says so in its log, once per message kind and view, with the size and the limit."""
    cluster = Cluster()
    driver = cluster.drivers[1]
    driver.frame_size_max_bytes = 200
    proof = tuple(Checkpoint(8, b"\x01" * 32, i, b"\x02" * 64) for i in range(3))
    view_changes = [ViewChange(view, 8, b"\x01" * 32, proof, (), 1, b"\x03" * 64)
                    for view in (1, 1, 2)]
    with caplog.at_level(logging.ERROR, logger="node.node"):
        for vc in view_changes:
            driver.execute([Broadcast(vc), Send(2, vc)])
    said = [r.getMessage() for r in caplog.records if "frame limit" in r.getMessage()]
    assert [m.split(" is ")[0] for m in said] == ["VIEW-CHANGE for view 1",
                                                  "VIEW-CHANGE for view 2"]
    size = len(encode_consensus_message(view_changes[0]))
    assert f"is {size} bytes, over the 200-byte frame limit: no peer receives it" in said[0]


def run_txs_then_a_primary_crash(cluster: Cluster) -> list[list[int]]:
    """Frames sent by each driver up to each step."""
    for nonce in range(30):
        assert cluster.drivers[1].submit_tx(transfer(1, nonce)).status == "accepted"
    trace = []
    for step in range(360):
        if step == 120:
            cluster.down.add(0)
        cluster.step()
        trace.append([len(network.sent) for network in cluster.networks])
    return trace


def test_a_driver_woken_only_when_a_tick_is_due_sends_what_one_ticked_every_tick_sends() -> None:
    ticked, woken = Cluster(), Cluster(ticks="catch_up")
    # The same frames at the same steps, byte for byte and in order: votes, STATUS,
    # blocks, view changes.
    assert run_txs_then_a_primary_crash(ticked) == run_txs_then_a_primary_crash(woken)
    for a, b in zip(ticked.networks, woken.networks, strict=True):
        assert a.sent == b.sent
    assert woken.get_heights() == ticked.get_heights()
    assert min(woken.get_heights()) >= 3 and all(d.replica.view >= 1 for d in woken.live())
    assert sum(d.ticks for d in woken.live()) > 0
    # ... for far fewer wake-ups than 360 ticks at each of 4 drivers.
    assert woken.wakes < 360 * 4 // 3


def test_catching_up_after_a_stall_fires_the_first_due_tick_once_and_drops_the_rest() -> None:
    cluster = Cluster(ticks="catch_up")
    cluster.run_until(lambda: min(cluster.get_heights()) >= 1)
    cluster.deliver_all()
    backup = cluster.drivers[2]
    due = backup.get_ticks_until_due()
    ticks_before, sent_before = backup.ticks, len(cluster.networks[2].sent)
    cluster.now += 50 * backup.replica_config.status_interval_ticks * backup.tick_s  # a stall
    backup.catch_up_ticks()
    assert backup.ticks == ticks_before + due
    statuses = [f for _, f in cluster.networks[2].sent[sent_before:]
                if isinstance(decode_consensus_message(f, MESSAGE_TYPES), Status)]
    assert len(statuses) == 3  # one broadcast to 3 peers, not one per missed interval
    backup.catch_up_ticks()  # the dropped ticks do not come back
    assert backup.ticks == ticks_before + due
    assert backup.get_next_tick_time() > cluster.now


def test_garbage_frames_are_counted_and_dropped() -> None:
    cluster = Cluster()
    cluster.run_until(lambda: min(cluster.get_heights()) >= 1)
    driver = cluster.drivers[1]
    height = driver.state.height
    for frame in (b"", b"\xff\x01", b"\x06\x01\x01junk", b"\x10\x01", b"\x11\x01\xff\xff\xff\xff"):
        driver.on_consensus_frame(2, frame)
    driver.on_tx_batch_frame(2, b"\x07\x01\x05\x00\x00\x00")
    driver.on_tx_batch_frame(2, b"\x06junk")
    dropped = driver.get_dropped()
    assert dropped["unknown_frame_kind"] == 3
    assert dropped["decode_consensus"] == 1
    assert dropped["decode_block_request"] == 1
    assert dropped["decode_block_response"] == 1
    assert dropped["decode_tx_batch"] == 1
    # A peer's tx batch with a bad tx is admitted tx by tx: the junk is refused, not fatal.
    driver.on_tx_batch_frame(2, encode_tx_batch([b"not a tx", transfer(1, 0)]))
    assert len(driver.mempool) == 1
    assert driver.state.height == height
    cluster.run_until(lambda: min(cluster.get_heights()) >= height + 2)


def test_a_committed_block_that_fails_to_apply_halts_commits_without_crashing() -> None:
    cluster = Cluster()
    driver = cluster.drivers[1]
    state = driver.state
    built = build_block(state, [], driver.context, 0, 0, 5_000)
    bad = dataclasses.replace(
        built.block, header=dataclasses.replace(built.block.header, state_root=b"\x01" * 32)
    )
    digest = get_block_hash(bad.header)
    cert = CommitCertificate(tuple(Vote(PHASE_COMMIT, 0, 1, digest, i, b"\x00" * 64)
                                   for i in range(3)))
    driver.execute([Deliver(1, digest, encode_block(bad), cert)])
    assert driver.halted is not None and "state_root" in driver.halted
    assert driver.state.height == 0 and driver.chain.get_latest_height() == 0
    assert driver.get_metrics().extra_gauges["bcfl_halted"] == 1.0
    driver.tick()  # ignored from now on, never raises


def test_submit_maps_mempool_reasons_to_service_codes() -> None:
    cluster = Cluster()
    driver = cluster.drivers[0]
    rejected = driver.submit_tx(b"\x02\x01garbage")
    assert (rejected.status, rejected.code) == ("rejected", REJECT_INVALID_TX)
    assert driver.submit_tx(transfer(0, 5_000)).code == REJECT_BAD_NONCE
    gauges = driver.get_metrics().extra_gauges  # the pool's own counters, exported
    assert gauges["bcfl_mempool_rejected_decode_total"] == 1.0
    assert gauges["bcfl_mempool_rejected_nonce_too_far_ahead_total"] == 1.0
    tx = transfer(0, 0)
    assert driver.submit_tx(tx).status == "accepted"
    assert driver.submit_tx(tx).status == "duplicate"
    assert driver.get_tx(driver.submit_tx(tx).tx_hash).status == "pending"  # type: ignore[union-attr]
    assert driver.get_account(ACCOUNT_KEYS[0].public_key).nonce == 1  # counts pending txs
    cluster.run_until(lambda: driver.txs_committed_total == 1)
    assert driver.submit_tx(tx).status == "duplicate"
    info = driver.get_block(None)
    assert info is not None and info.certificate is not None
    assert driver.get_status().height == driver.state.height
    # The commit time is this node's own clock at commit (a latency probe), not the header's.
    assert info.committed_time_ms is not None
    assert info.header.time_ms <= info.committed_time_ms <= driver.wall_ms()


def test_a_client_tx_without_room_is_refused_before_any_per_tx_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = Cluster()
    cluster.config = dataclasses.replace(
        cluster.config, mempool=dataclasses.replace(cluster.config.mempool, txs_max=12)
    )
    driver = cluster.restart(0)

    def must_not_run(*args: object) -> None:
        raise AssertionError("looked up, decoded or verified for nothing")

    # Only a tx whose nonce is already used can be a committed one: no store lookup.
    monkeypatch.setattr(driver.chain, "get_tx_location", must_not_run)
    # Relay to the primary: this node's clients get 1 of 3 shares of the local half of 12.
    pending = [transfer(0, nonce) for nonce in range(2)]
    assert [driver.submit_tx(tx).status for tx in pending] == ["accepted", "accepted"]
    monkeypatch.setattr(mempool_module, "decode_tx", must_not_run)
    refused = driver.submit_tx(transfer(0, 2))
    assert (refused.status, refused.code) == ("rejected", REJECT_MEMPOOL_FULL)
    assert refused.tx_hash == get_tx_hash(transfer(0, 2)) and "full" in refused.message
    # A pending tx sent again is still a duplicate, not a refusal.
    assert driver.submit_tx(pending[0]).status == "duplicate"
    gauges = driver.get_metrics().extra_gauges
    assert gauges["bcfl_mempool_rejected_full_total"] == 1.0
    assert gauges["bcfl_mempool_duplicates_total"] == 1.0
    # A peer's relay still finds room (the other half of the pool is theirs).
    monkeypatch.undo()
    assert driver.mempool.admit(transfer(1, 0), driver.state, 0, SOURCE_PEER).ok


def test_genesis_balances_survive_a_restart() -> None:
    # Regression: ChainStore wrote only block diffs, so after a restart every account no
    # block had touched yet lost its genesis balance and load_state refused the store.
    cluster = Cluster()
    cluster.run_until(lambda: min(cluster.get_heights()) >= 2)
    store = cluster.stores[2]
    reloaded = ChainStore(store, cluster.genesis).load_state()
    assert reloaded.state_root == cluster.drivers[2].state.state_root
    assert ACCOUNT_KEYS[3].public_key != b""
    restored = cluster.restart(2)
    assert restored.get_account(ACCOUNT_KEYS[3].public_key).balance == 10**9


def test_status_interval_keeps_status_traffic_flat_in_n_and_under_half_a_timeout() -> None:
    for timeout_ticks in (8, 24, 60, 600):
        base = get_status_interval_ticks(4, timeout_ticks)
        assert base == max(1, min(10, timeout_ticks // 4))  # n = 4: as it always was
        for n in (7, 10, 16, 31):
            interval = get_status_interval_ticks(n, timeout_ticks)
            assert 1 <= interval <= max(1, timeout_ticks // 2)
            if 10 * n // 4 <= timeout_ticks // 2:  # not capped: received/s stays flat
                assert (n - 1) / interval <= 1.5 * 3 / base


def test_relay_interval_keeps_relay_frames_received_per_second_flat_in_n() -> None:
    assert get_relay_interval_s(4) == pytest.approx(0.02)
    frames_per_s = {n: (n - 1) / get_relay_interval_s(n) for n in (4, 7, 10, 16, 31)}
    assert all(rate == pytest.approx(frames_per_s[4]) for rate in frames_per_s.values())
    assert get_relay_interval_s(1) == get_relay_interval_s(2) == pytest.approx(0.02)


def test_partial_block_txs_min_grows_with_n_within_the_block_bound() -> None:
    assert [get_partial_block_txs_min(n, 5_000) for n in (4, 7, 10, 16)] == [400, 700, 1000, 1600]
    assert get_partial_block_txs_min(16, 100) == 50  # never more than half a full block
    assert get_partial_block_txs_min(4, 1) == 1


def test_primary_pipelines_a_second_block_only_once_it_is_worth_its_votes() -> None:
    cluster = Cluster()
    primary = cluster.drivers[0]
    least = primary.partial_block_txs_min
    assert least == 50  # n = 4, blocks of at most 100 txs in the harness
    cluster.filter = lambda sender, to, frame: sender != 0  # the first block stays in flight
    assert primary.submit_tx(transfer(0, 0)).status == "accepted"
    cluster.run_until(lambda: primary.proposals_total == 1)
    for nonce in range(1, least):
        assert primary.submit_tx(transfer(0, nonce)).status == "accepted"
    for _ in range(6):  # build intervals pass; fewer than ``least`` new txs: no proposal
        cluster.step()
    assert primary.proposals_total == 1
    assert primary.submit_tx(transfer(0, least)).status == "accepted"
    cluster.run_until(lambda: primary.proposals_total == 2, steps_max=6)
    assert primary.proposed_txs == {1: 1, 2: least}
    cluster.filter = lambda sender, to, frame: True
    cluster.run_until(lambda: all(d.txs_committed_total == least + 1 for d in cluster.drivers))
    # Held that long, the others changed view: the old view's proposals are forgotten.
    assert primary.replica.view >= 1 and primary.proposed_txs == {}
    assert primary._count_unproposed_txs() == len(primary.mempool) == 0
