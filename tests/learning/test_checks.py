"""Deterministic delta checks, privacy budget, governance timing, invalid blocks, genesis errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import node.learning as learning
from fl.quantize import QuantizedVector, quantize
from node.genesis import GenesisError, get_genesis_document, parse_genesis
from node.ledger import BlockInvalid, apply_block, build_block
from tests.learning.helpers import (
    CHAIN_ID,
    HOSPITALS,
    SCALE_EXP,
    VALIDATORS,
    Chain,
    get_private_data,
    make_delta_tx,
    make_genesis,
    train_delta,
)


@pytest.fixture(scope="module")
def shards() -> list:
    return get_private_data()


def _reasons(chain: Chain, txs: list[bytes]) -> list[str]:
    return [reason for _, reason in chain.step(txs).dropped]


def test_deterministic_checks_reject_bad_deltas_with_their_reason(shards: list) -> None:
    chain = Chain(make_genesis())
    delta, commitment = train_delta(chain, shards[0], 1)
    q = quantize(delta, SCALE_EXP)
    bad_min = q.values.copy()
    bad_min[0] = -32768
    assert _reasons(
        chain, [make_delta_tx(chain, HOSPITALS[0], delta, commitment, round_number=1)]
    ) == ["wrong_round"]
    assert _reasons(
        chain, [make_delta_tx(chain, HOSPITALS[0], delta, commitment, base_hash=b"\x01" * 32)]
    ) == ["wrong_base"]
    assert _reasons(chain, [make_delta_tx(chain, VALIDATORS[0], delta, commitment)]) == [
        "not_trainer"
    ]
    assert _reasons(
        chain,
        [make_delta_tx(chain, HOSPITALS[0], QuantizedVector(bad_min, SCALE_EXP, 0), commitment)],
    ) == ["fixed_point_range"]
    assert _reasons(chain, [make_delta_tx(chain, HOSPITALS[0], delta[:5], commitment)]) == ["shape"]
    huge = delta / np.linalg.norm(delta) * 9.0  # over the 8.0 bound
    assert _reasons(chain, [make_delta_tx(chain, HOSPITALS[0], huge, commitment)]) == ["norm_bound"]
    low_noise = {"clip_norm": 4.0, "noise_multiplier": 0.2, "sampling_rate": 0.1, "steps": 10}
    assert _reasons(
        chain, [make_delta_tx(chain, HOSPITALS[0], delta, commitment, dp=low_noise)]
    ) == ["privacy_params"]
    chain2 = Chain(make_genesis())
    good = make_delta_tx(chain2, HOSPITALS[0], delta, commitment)
    again = make_delta_tx(chain2, HOSPITALS[0], delta * 0.5, commitment)
    assert _reasons(chain2, [good, again]) == ["replay"]
    round_record = chain2.current_round()
    assert round_record.delta_senders == (HOSPITALS[0].public_key,)


def test_an_institution_over_its_privacy_budget_is_rejected_with_that_reason(shards: list) -> None:
    chain = Chain(make_genesis(round_length_blocks=1))
    delta, commitment = train_delta(chain, shards[0], 1)
    assert _reasons(chain, [make_delta_tx(chain, HOSPITALS[0], delta, commitment)]) == []
    spent = learning.get_epsilon_spent(chain.state, 0, HOSPITALS[0].public_key)
    assert 0 < spent < 10_000_000
    assert chain.current_round().round == 1  # round length 1: closed in the same block
    delta, commitment = train_delta(chain, shards[0], 2)
    greedy = {"clip_norm": 4.0, "noise_multiplier": 1.0, "sampling_rate": 0.5, "steps": 100}
    assert _reasons(chain, [make_delta_tx(chain, HOSPITALS[0], delta, commitment, dp=greedy)]) == [
        "privacy_budget"
    ]
    assert learning.get_epsilon_spent(chain.state, 0, HOSPITALS[0].public_key) == spent


def test_an_invalid_block_leaves_the_pre_state_untouched(shards: list) -> None:
    chain = Chain(make_genesis())
    delta, commitment = train_delta(chain, shards[0], 1)
    good = make_delta_tx(chain, HOSPITALS[0], delta, commitment)
    built = build_block(chain.state, [good], chain.context, 1, 0, 5000)
    before_entries = dict(chain.state.entries)
    before_root = chain.state.state_root
    bad = make_delta_tx(chain, HOSPITALS[0], delta * 0.5, commitment)  # replay in the same block
    forged = dataclasses.replace(built.block, txs=(good, bad))
    from node.codec import compute_tx_root

    forged = dataclasses.replace(
        forged, header=dataclasses.replace(forged.header, tx_root=compute_tx_root(forged.txs))
    )
    with pytest.raises(BlockInvalid) as info:
        apply_block(chain.state, forged, chain.context)
    assert info.value.reason == "replay"
    assert dict(chain.state.entries) == before_entries
    assert chain.state.state_root == before_root
    # A lying state root is refused too, and the good block still applies afterwards.
    lying = dataclasses.replace(
        built.block, header=dataclasses.replace(built.block.header, state_root=b"\x02" * 32)
    )
    with pytest.raises(BlockInvalid):
        apply_block(chain.state, lying, chain.context)
    assert apply_block(chain.state, built.block, chain.context).state.state_root == (
        built.applied.state.state_root
    )


def _vote_txs(chain: Chain, proposal_id: int, voters: range) -> list[bytes]:
    return [
        learning.make_vote_tx(
            VALIDATORS[i], CHAIN_ID, proposal_id, True, nonce=chain.next_nonce(VALIDATORS[i])
        )
        for i in voters
    ]


def test_a_rule_change_takes_effect_at_the_round_after_it_passes(shards: list) -> None:
    chain = Chain(make_genesis(round_length_blocks=3))
    proposal = learning.GovernanceProposal(
        action="set_rule", task_id=0, rule="geometric_median", rule_params_json='{"iterations":8}'
    )
    propose = learning.make_proposal_tx(
        HOSPITALS[0], CHAIN_ID, proposal, nonce=chain.next_nonce(HOSPITALS[0])
    )
    assert _reasons(chain, [propose]) == []
    # 2 of 4 validators is not 2/3: still open.
    assert _reasons(chain, _vote_txs(chain, 0, range(2))) == []
    assert learning.get_proposal(chain.state, 0).status == "open"  # type: ignore[union-attr]
    d0, c0 = train_delta(chain, shards[0], 1)
    d1, c1 = train_delta(chain, shards[1], 2)
    txs = [make_delta_tx(chain, HOSPITALS[0], d0, c0), make_delta_tx(chain, HOSPITALS[1], d1, c1)]
    assert _reasons(chain, txs + _vote_txs(chain, 0, range(2, 3))) == []  # height 3: round 0 closes
    assert learning.get_proposal(chain.state, 0).status == "passed"  # type: ignore[union-attr]
    summary0 = learning.get_round_summary(chain.state, 0, 0)
    assert summary0 is not None and summary0.rule == "median"  # passed during round 0: not yet
    task = learning.get_task(chain.state, 0)
    assert task is not None and task.config.rule == "geometric_median" and task.pending == ()
    d0, c0 = train_delta(chain, shards[0], 3)
    d1, c1 = train_delta(chain, shards[1], 4)
    txs = [make_delta_tx(chain, HOSPITALS[0], d0, c0), make_delta_tx(chain, HOSPITALS[1], d1, c1)]
    assert _reasons(chain, txs) == []
    chain.step()
    chain.step()
    summary1 = learning.get_round_summary(chain.state, 0, 1)
    assert summary1 is not None and summary1.rule == "geometric_median"
    assert summary1.minted == 1_000_000
    # A vote after the decision, and a vote by a trainer, are refused.
    late = _vote_txs(chain, 0, range(3, 4))
    assert _reasons(chain, late) == ["governance"]
    trainer_vote = learning.make_vote_tx(
        HOSPITALS[1], CHAIN_ID, 0, True, nonce=chain.next_nonce(HOSPITALS[1])
    )
    assert _reasons(chain, [trainer_vote]) == ["not_validator"]


def test_governance_adds_an_institution_that_can_then_train(shards: list) -> None:
    from node.keys import KeyPair

    newcomer = KeyPair.from_seed(b"\x77" * 32)
    chain = Chain(make_genesis(round_length_blocks=50))
    proposal = learning.GovernanceProposal(
        action="add_institution",
        institution_key=newcomer.public_key,
        institution_name="hospital9",
        institution_role="trainer",
    )
    delta, commitment = train_delta(chain, shards[2], 1)
    assert _reasons(chain, [make_delta_tx(chain, newcomer, delta, commitment)]) == ["not_member"]
    propose = learning.make_proposal_tx(
        VALIDATORS[0], CHAIN_ID, proposal, nonce=chain.next_nonce(VALIDATORS[0])
    )
    assert _reasons(chain, [propose, *_vote_txs(chain, 0, range(3))]) == []
    members = {m.public_key: m for m in learning.get_members(chain.state)}
    assert members[newcomer.public_key].member_id == 8
    assert _reasons(chain, [make_delta_tx(chain, newcomer, delta, commitment)]) == []


def test_genesis_fl_errors_name_the_field() -> None:
    document = get_genesis_document(make_genesis())
    document["fl"]["tasks"][0]["rule"] = "fltrust"
    with pytest.raises(GenesisError, match=r"fl\.tasks\[0\]\.rule"):
        parse_genesis(document)
    document = get_genesis_document(make_genesis())
    document["fl"]["tasks"][0]["privacy"]["delta"] = 2.0
    with pytest.raises(GenesisError, match=r"fl\.tasks\[0\]\.privacy\.delta"):
        parse_genesis(document)
    document = get_genesis_document(make_genesis())
    del document["fl"]["tasks"][0]["validation_set"]["hash"]
    with pytest.raises(GenesisError, match=r"validation_set\.hash: missing"):
        parse_genesis(document)


def test_a_validation_set_hash_mismatch_stops_the_node() -> None:
    document = get_genesis_document(make_genesis())
    document["fl"]["tasks"][0]["validation_set"]["hash"] = "00" * 32
    genesis = parse_genesis(document)
    with pytest.raises(learning.LearningSetupError, match="validation set"):
        learning.verify_learning_setup(genesis)


def test_reputation_initial_value_matches_fl() -> None:
    from fl.contribution import REPUTATION_INITIAL_PPM

    assert learning.REPUTATION_INITIAL_PPM == REPUTATION_INITIAL_PPM
