"""Rounds driven through build_block/apply_block: acceptance, Byzantine and free riders, rewards."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import node.learning as learning
from fl.quantize import quantize
from node.codec import decode_tx
from node.ledger import apply_block, get_genesis_state, get_total_supply
from tests.learning.helpers import (
    CHAIN_ID,
    HOSPITALS,
    SCALE_EXP,
    VALIDATORS,
    Chain,
    get_private_data,
    get_validation_loss_ppm,
    make_delta_tx,
    make_genesis,
    train_delta,
)

POOL = 1_000_000


@dataclass
class Scenario:
    chain: Chain
    dropped: list[list[str]]  # reasons of the txs the builder dropped, per block
    losses: list[int]  # validation loss of the model after each round (index 0: genesis)


def _run_round(chain: Chain, shards: list, round_seed: int, dropped: list[list[str]]) -> None:
    """h0, h1 honest; h2 sends a scaled sign flip; h3 free-rides (copy, then zero)."""
    d0, c0 = train_delta(chain, shards[0], round_seed)
    d1, c1 = train_delta(chain, shards[1], round_seed + 1)
    txs = [
        make_delta_tx(chain, HOSPITALS[0], d0, c0),
        make_delta_tx(chain, HOSPITALS[1], d1, c1),
        make_delta_tx(chain, HOSPITALS[2], -2.0 * d0, c0),
    ]
    if chain.current_round().round == 0:
        txs.append(make_delta_tx(chain, HOSPITALS[3], d0, c0))  # an exact copy of h0's
    else:
        zero = quantize(np.zeros_like(d0), SCALE_EXP)
        txs.append(make_delta_tx(chain, HOSPITALS[3], zero, c0))
    built = chain.step(txs)
    dropped.append([reason for _, reason in built.dropped])
    # Validators attest on their own private shards; validator 3 lies (inverts every score).
    attestations = []
    for index, key in enumerate(VALIDATORS):
        scores = learning.compute_attestation_scores(chain.state, 0, *shards[4 + index])
        if index == 3:
            scores = tuple(
                learning.make_attested_score(s.delta_tx_hash, -s.improvement_ppm, 0) for s in scores
            )
        attestations.append(
            learning.make_attestation_tx(
                key,
                CHAIN_ID,
                0,
                chain.current_round().round,
                scores,
                nonce=chain.next_nonce(key),
            )
        )
    built = chain.step(attestations)  # every validator attested: the round closes here
    dropped.append([reason for _, reason in built.dropped])


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    chain = Chain(make_genesis())
    shards = get_private_data()
    dropped: list[list[str]] = []
    losses = [get_validation_loss_ppm(chain.state)]
    for round_number in range(2):
        assert chain.current_round().round == round_number
        _run_round(chain, shards, 10 * round_number, dropped)
        losses.append(get_validation_loss_ppm(chain.state))
    return Scenario(chain, dropped, losses)


def test_rounds_close_early_when_every_validator_attested(scenario: Scenario) -> None:
    chain = scenario.chain
    assert chain.current_round().round == 2
    assert chain.state.height == 4  # 2 blocks per round, deadline (3 blocks) never reached
    for round_number in range(2):
        summary = learning.get_round_summary(chain.state, 0, round_number)
        assert summary is not None and summary.closed_height == 2 * (round_number + 1)


def test_honest_deltas_are_accepted_and_the_model_improves(scenario: Scenario) -> None:
    for round_number in range(2):
        summary = learning.get_round_summary(scenario.chain.state, 0, round_number)
        assert summary is not None
        accepted = {o.institution for o in summary.outcomes if o.accepted}
        assert {HOSPITALS[0].public_key, HOSPITALS[1].public_key} <= accepted
    assert scenario.losses[1] < scenario.losses[0]
    assert scenario.losses[2] < scenario.losses[1]
    model = learning.get_model(scenario.chain.state, 0)
    assert model is not None and model.version == 2
    assert model.model_hash == learning.compute_model_hash(
        learning.get_model_params(scenario.chain.state, 0)  # type: ignore[arg-type]
    )


def test_sign_flip_is_rejected_and_earns_less_than_every_honest_hospital(
    scenario: Scenario,
) -> None:
    for round_number in range(2):
        summary = learning.get_round_summary(scenario.chain.state, 0, round_number)
        assert summary is not None
        by_key = {o.institution: o for o in summary.outcomes}
        flip = by_key[HOSPITALS[2].public_key]
        assert not flip.accepted and flip.reason in ("roni", "agreement")
        assert flip.improvement_ppm < 0
        for honest in HOSPITALS[:2]:
            assert by_key[honest.public_key].reward > flip.reward == 0
    state = scenario.chain.state
    assert learning.get_reputation(state, HOSPITALS[2].public_key) < learning.REPUTATION_INITIAL_PPM
    assert learning.get_reputation(state, HOSPITALS[0].public_key) > learning.REPUTATION_INITIAL_PPM


def test_free_riders_are_rejected_at_the_door_and_earn_nothing(scenario: Scenario) -> None:
    assert scenario.dropped[0] == ["copy"]
    assert scenario.dropped[2] == ["zero_delta"]
    state = scenario.chain.state
    from node.ledger import get_account

    assert get_account(state, HOSPITALS[3].public_key).balance == 0
    model = learning.get_model(state, 0)
    assert model is not None
    assert HOSPITALS[3].public_key not in {e.institution for e in model.lineage}


def test_minted_equals_the_pool_every_round(scenario: Scenario) -> None:
    state = scenario.chain.state
    total = 0
    for round_number in range(2):
        summary = learning.get_round_summary(state, 0, round_number)
        assert summary is not None
        trainer = sum(o.reward for o in summary.outcomes)
        validator = sum(r.amount for r in summary.validator_rewards)
        assert summary.minted == trainer + validator == POOL
        assert validator == POOL // 10
        total += summary.minted
    assert get_total_supply(state) == total


def test_a_lying_validator_cannot_move_the_decision(scenario: Scenario) -> None:
    summary = learning.get_round_summary(scenario.chain.state, 0, 0)
    assert summary is not None
    for outcome in summary.outcomes:
        assert outcome.attestation_count == 4
        if outcome.accepted:
            assert outcome.attested_improvement_ppm > 0  # lower median of 3 honest + 1 liar


def test_lineage_names_the_accepted_deltas(scenario: Scenario) -> None:
    state = scenario.chain.state
    model = learning.get_model(state, 0, 1)
    summary = learning.get_round_summary(state, 0, 0)
    assert model is not None and summary is not None
    accepted = tuple(o.tx_hash for o in summary.outcomes if o.accepted)
    assert tuple(e.tx_hash for e in model.lineage) == accepted
    assert model.parent_hash == learning.get_model(state, 0, 0).model_hash  # type: ignore[union-attr]
    # The pending deltas are gone; only digests, outcomes and commitments remain.
    from node import schema

    assert not any(k.startswith(b"s/" + schema.AREA_FL_DELTAS) for k in state.entries)
    assert all(len(o.commitment.checkpoint_hashes) >= 2 for o in summary.outcomes)


def test_an_independent_validator_replaying_the_blocks_gets_the_same_state(
    scenario: Scenario,
) -> None:
    chain = scenario.chain
    state = get_genesis_state(make_genesis())
    for built in chain.blocks:
        state = apply_block(state, built.block, chain.context).state
    assert state.state_root == chain.state.state_root
    assert learning.get_model(state, 0) == learning.get_model(chain.state, 0)


def test_epsilon_spent_is_on_chain(scenario: Scenario) -> None:
    state = scenario.chain.state
    spent = learning.get_epsilon_spent(state, 0, HOSPITALS[0].public_key)
    account = learning.get_privacy_account(state, 0, HOSPITALS[0].public_key)
    assert len(account.history) == 2 and 0 < spent <= 10_000_000
    # h3's deltas never entered a block: it spent nothing.
    assert learning.get_epsilon_spent(state, 0, HOSPITALS[3].public_key) == 0
    tx = decode_tx(scenario.chain.blocks[0].block.txs[0])
    assert isinstance(tx.body, learning.ModelDelta)
