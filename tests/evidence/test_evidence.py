"""Equivocation evidence on chain: the EvidenceReport tx, its processor, the driver, the API."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import node.app  # noqa: F401  registers the evidence and learning txs before any state
from consensus.events import ReportEvidence
from consensus.messages import PHASE_COMMIT, PHASE_PREPARE, Evidence, Vote, get_signing_body
from node.api import SETTINGS_KEY, create_app, get_openapi_document
from node.app import NodeAuthenticator
from node.codec import (
    Transaction,
    Transfer,
    encode_consensus_message,
    encode_tx,
    get_tx_hash,
    sign_tx,
)
from node.config import Config
from node.evidence import (
    EVIDENCE_SIZE_MAX_BYTES,
    EvidenceReport,
    get_evidence_records,
    get_offender_count,
    make_evidence_tx,
)
from node.evidence_api import get_evidence_routes
from node.keys import KeyPair
from node.ledger import (
    BlockInvalid,
    ChainContext,
    State,
    apply_block,
    build_block,
    get_account,
    get_genesis_state,
)
from tests.api.fakes import FakeNodeService
from tests.node.node_harness import CHAIN_ID, VALIDATOR_KEYS, Cluster, make_genesis

GENESIS = make_genesis()
CONTEXT = ChainContext.from_genesis(GENESIS)
PUBLIC_KEYS = [k.public_key for k in VALIDATOR_KEYS]


def make_vote(signer: int, digest: bytes, view: int = 0, seq: int = 5,
              phase: int = PHASE_PREPARE, chain_id: str = CHAIN_ID) -> Vote:
    auth = NodeAuthenticator(VALIDATOR_KEYS[signer], chain_id, PUBLIC_KEYS)
    vote = Vote(phase, view, seq, digest, signer, b"")
    return dataclasses.replace(vote, signature=auth.sign(get_signing_body(vote)))


def make_equivocation(signer: int = 3, view: int = 0, seq: int = 5,
                      phase: int = PHASE_PREPARE) -> Evidence:
    return Evidence(make_vote(signer, b"\x01" * 32, view, seq, phase),
                    make_vote(signer, b"\x02" * 32, view, seq, phase))


def report(reporter: int, nonce: int, evidence: Evidence) -> bytes:
    return encode_tx(make_evidence_tx(VALIDATOR_KEYS[reporter], CHAIN_ID, nonce, evidence))


def report_raw(reporter: int, nonce: int, payload: bytes) -> bytes:
    key = VALIDATOR_KEYS[reporter]
    tx = Transaction(key.public_key, nonce, EvidenceReport(payload))
    return encode_tx(sign_tx(key, CHAIN_ID, tx))


def build(state: State, txs: list[bytes]) -> Any:
    return build_block(state, txs, CONTEXT, 0, 0, state.last_block_time_ms + 1)


def test_valid_evidence_is_recorded_and_every_validator_gets_the_same_root() -> None:
    genesis_state = get_genesis_state(GENESIS)
    evidence = make_equivocation(signer=3, view=2, seq=7, phase=PHASE_COMMIT)
    built = build(genesis_state, [report(1, 0, evidence)])
    assert built.dropped == ()
    state = built.applied.state
    [record] = get_evidence_records(state, 10)
    assert (record.offender, record.view, record.seq, record.kind) == (3, 2, 7,
                                                                     "equivocation_commit")
    assert record.height == 1 and record.reporter == PUBLIC_KEYS[1]
    assert get_offender_count(state, 3) == 1
    # The reporter's zero-balance account exists now, with its nonce bumped.
    assert get_account(state, PUBLIC_KEYS[1]).nonce == 1
    # Two other validators apply the proposer's block: same post-state root.
    roots = {apply_block(get_genesis_state(GENESIS), built.block, CONTEXT).state.state_root
             for _ in range(2)}
    assert roots == {built.block.header.state_root}


def _forged() -> Evidence:
    good = make_equivocation()
    bad_signature = bytes([good.second.signature[0] ^ 1]) + good.second.signature[1:]
    return Evidence(good.first, dataclasses.replace(good.second, signature=bad_signature))


@pytest.mark.parametrize("name, evidence", [
    ("forged signature", _forged()),
    ("different seq", Evidence(make_vote(3, b"\x01" * 32, seq=5),
                               make_vote(3, b"\x02" * 32, seq=6))),
    ("different phase", Evidence(make_vote(3, b"\x01" * 32, phase=PHASE_PREPARE),
                                 make_vote(3, b"\x02" * 32, phase=PHASE_COMMIT))),
    ("same digest", Evidence(make_vote(3, b"\x01" * 32), make_vote(3, b"\x01" * 32))),
    ("two signers", Evidence(make_vote(2, b"\x01" * 32), make_vote(3, b"\x02" * 32))),
    ("signed for another chain", Evidence(make_vote(3, b"\x01" * 32, chain_id="other"),
                                          make_vote(3, b"\x02" * 32, chain_id="other"))),
])
def test_invalid_evidence_is_refused(name: str, evidence: Evidence) -> None:
    genesis_state = get_genesis_state(GENESIS)
    tx = report(1, 0, evidence)
    built = build(genesis_state, [tx])
    assert [reason for _, reason in built.dropped] == ["invalid_evidence"], name
    assert get_evidence_records(built.applied.state, 10) == []
    # A validator refuses a block that carries it.
    forged_block = dataclasses.replace(built.block, txs=(tx,))
    with pytest.raises(BlockInvalid) as info:
        apply_block(genesis_state, forged_block, CONTEXT)
    assert info.value.reason in ("invalid_evidence", "tx_root")


def test_undecodable_or_trailing_evidence_bytes_are_refused() -> None:
    genesis_state = get_genesis_state(GENESIS)
    payload = encode_consensus_message(make_equivocation())
    assert len(payload) < EVIDENCE_SIZE_MAX_BYTES
    txs = [report_raw(1, 0, b"junk"), report_raw(1, 0, payload + b"\x00"),
           report_raw(1, 0, payload[:-1])]
    built = build(genesis_state, txs)
    assert [reason for _, reason in built.dropped] == ["invalid_evidence"] * 3


def test_duplicate_evidence_is_refused_in_the_same_and_a_later_block() -> None:
    genesis_state = get_genesis_state(GENESIS)
    evidence = make_equivocation()
    swapped = Evidence(evidence.second, evidence.first)
    built = build(genesis_state, [report(0, 0, evidence), report(1, 0, swapped)])
    assert [reason for _, reason in built.dropped] == ["duplicate_evidence"]
    state = built.applied.state
    later = build(state, [report(2, 0, evidence)])
    assert [reason for _, reason in later.dropped] == ["duplicate_evidence"]
    # Another (view, seq) by the same offender is a new record; the counter says two.
    other = build(state, [report(2, 0, make_equivocation(view=1))])
    assert other.dropped == ()
    assert get_offender_count(other.applied.state, 3) == 2
    assert len(get_evidence_records(other.applied.state, 10)) == 2


def _committed(cluster: Cluster, tx_hash: bytes) -> bool:
    statuses = [d.get_tx(tx_hash) for d in cluster.live()]
    return all(s is not None and s.status == "committed" for s in statuses)


def test_driver_turns_report_evidence_into_one_tx_that_reaches_the_chain() -> None:
    cluster = Cluster()
    driver = cluster.drivers[0]
    evidence = make_equivocation(signer=3)
    driver.execute([ReportEvidence(evidence)])
    driver.execute([ReportEvidence(evidence)])  # once per (offender, view, seq)
    assert len(driver.mempool) == 1
    [tx_hash] = [h for h in driver.evidence_reported.values() if h is not None]
    cluster.run_until(lambda: _committed(cluster, tx_hash))
    for d in cluster.drivers:
        [record] = get_evidence_records(d.state, 10)
        assert (record.offender, record.reporter) == (3, PUBLIC_KEYS[0])
    assert len({d.state.state_root for d in cluster.drivers}) == 1
    # Evidence already on chain is not reported again.
    cluster.drivers[1].execute([ReportEvidence(evidence)])
    assert len(cluster.drivers[1].mempool) == 0
    assert driver.get_metrics().extra_gauges["bcfl_evidence_txs_accepted_total"] == 1.0


def test_a_losing_report_does_not_stall_the_reporters_later_txs() -> None:
    cluster = Cluster()
    evidence = make_equivocation(signer=3)
    for index in (0, 1):
        cluster.drivers[index].execute([ReportEvidence(evidence)])
    # Validator 1 queues another tx behind its report (a zero self-transfer).
    loser = cluster.drivers[1]
    key: KeyPair = VALIDATOR_KEYS[1]
    nonce = loser.get_account(key.public_key).nonce
    assert nonce == 1
    later = encode_tx(sign_tx(key, CHAIN_ID, Transaction(key.public_key, nonce,
                                                         Transfer(key.public_key, 0))))
    assert loser.submit_tx(later).status == "accepted"
    cluster.run_until(lambda: _committed(cluster, get_tx_hash(later)))
    cluster.run_until(lambda: all(len(d.mempool) == 0 for d in cluster.drivers))
    [record] = get_evidence_records(cluster.drivers[2].state, 10)
    assert record.offender == 3
    assert len({d.state.state_root for d in cluster.drivers}) == 1


class StateService(FakeNodeService):
    def __init__(self, state: State) -> None:
        super().__init__(CHAIN_ID)
        self.state = state

    async def get_state(self) -> State:
        return self.state


def _get(service: FakeNodeService, paths: list[str]) -> list[tuple[int, Any]]:
    async def main() -> list[tuple[int, Any]]:
        app = create_app(service, Config(), extra_routes=get_evidence_routes())
        out = []
        async with TestClient(TestServer(app)) as client:
            for path in paths:
                response = await client.get(path)
                out.append((response.status, await response.json()))
        return out

    return asyncio.run(main())


def test_evidence_route_lists_records_newest_first() -> None:
    state = build(get_genesis_state(GENESIS), [report(0, 0, make_equivocation(view=1))]
                  ).applied.state
    state = build(state, [report(0, 1, make_equivocation(signer=2, view=4, seq=9))]).applied.state
    results = _get(StateService(state), ["/v1/evidence", "/v1/evidence?limit=1",
                                         "/v1/evidence?limit=0", "/v1/evidence?limit=x"])
    (status, body), (status_1, body_1), (status_0, _), (status_x, _) = results
    assert status == 200 and body["height"] == 2
    assert [(e["offender_index"], e["view"], e["seq"], e["height"]) for e in body["evidence"]] \
        == [(2, 4, 9, 2), (3, 1, 5, 1)]
    assert body["evidence"][0]["kind"] == "equivocation_prepare"
    assert status_1 == 200 and len(body_1["evidence"]) == 1
    assert (status_0, status_x) == (400, 400)
    # A service without chain state answers 404, not a crash.
    [(status_none, _)] = _get(FakeNodeService(CHAIN_ID), ["/v1/evidence"])
    assert status_none == 404
    app = create_app(FakeNodeService(CHAIN_ID), Config(), extra_routes=get_evidence_routes())
    document = get_openapi_document(app[SETTINGS_KEY].routes)
    assert "get" in document["paths"]["/v1/evidence"]
