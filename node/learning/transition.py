"""The learning part of the state transition: tx processors, round close, governance.

Tx processors run the deterministic proof-of-learning checks (layer (a)) and
raise :class:`TxInvalid` with a ``REASON_*`` code; the builder drops such a tx,
a validator refuses a block carrying one. Round close runs as an end-of-block
hook after the block's txs (:func:`process_learning_block`): at the deadline
height, or as soon as every validator has attested a round with deltas. It
scores every delta on the shared validation set (layer (b): RONI + agreement
with the robust aggregate), applies the median of peer attestations (layer
(c)), aggregates the accepted deltas with the task's rule, stores the new model
version with its lineage, pays the pool (Shapley x reputation; minted == pool)
and opens the next round, where pending governance changes take effect.

Everything here is integer arithmetic or calls fl functions that are bit-exact
(Numba kernels, fixed order); no BLAS, no clock, no randomness but the parent
block hash as a seed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from fl import contribution, privacy, scoring
from fl.aggregation import RULES, AggregationResult, aggregate
from fl.models import compute_param_count
from fl.quantize import Q_MAX_INT16, QuantizedUpdates, QuantizedVector
from node.codec import Transaction, get_tx_hash
from node.genesis import FL_RULES, MEMBERS_MAX, ROLES, TaskConfig
from node.learning import records as rec
from node.learning.setup import (
    REPUTATION_INITIAL_PPM,
    compute_model_hash,
    decode_params,
    encode_params,
    get_model_spec,
    load_validation_set,
)
from node.ledger import U64_LIMIT, Account, StateWriter, TxContext, TxInvalid

REASON_NOT_MEMBER = "not_member"
REASON_NOT_TRAINER = "not_trainer"
REASON_NOT_VALIDATOR = "not_validator"
REASON_UNKNOWN_TASK = "unknown_task"
REASON_WRONG_ROUND = "wrong_round"
REASON_WRONG_BASE = "wrong_base"
REASON_SHAPE = "shape"
REASON_SCALE = "scale"
REASON_FIXED_POINT_RANGE = "fixed_point_range"
REASON_ZERO_DELTA = "zero_delta"
REASON_NORM_BOUND = "norm_bound"
REASON_REPLAY = "replay"
REASON_COPY = "copy"
REASON_ROUND_FULL = "round_full"
REASON_SAMPLE_COUNT = "sample_count"
REASON_PRIVACY_PARAMS = "privacy_params"
REASON_PRIVACY_BUDGET = "privacy_budget"
REASON_ATTESTATION = "attestation"
REASON_GOVERNANCE = "governance"
# Round-close outcomes (not tx reasons: the delta was in a block; it earns nothing).
OUTCOME_RONI = "roni"
OUTCOME_AGREEMENT = "agreement"
OUTCOME_ATTESTATIONS = "attestations"

MODEL_PARAMS_KEPT_VERSIONS = 8
PROPOSAL_TTL_BLOCKS = 1000
FALLBACK_RULE = "median"  # when too few accepted deltas for the task rule's n vs f condition


# --- state access --------------------------------------------------------------


def read_registry(writer: StateWriter) -> rec.Registry:
    value = writer.get(rec.get_registry_key())
    if value is None:
        return rec.Registry((), 0)
    return rec.decode_small_record(rec.Registry, value)


def read_task(writer: StateWriter, task_id: int) -> rec.TaskRecord:
    value = writer.get(rec.get_task_key(task_id))
    if value is None:
        raise TxInvalid(REASON_UNKNOWN_TASK, f"no learning task {task_id}")
    return rec.decode_small_record(rec.TaskRecord, value)


def read_round(writer: StateWriter, task_id: int) -> rec.RoundRecord:
    value = writer.get(rec.get_round_key(task_id))
    assert value is not None, f"task {task_id} has no open round"
    return rec.decode_record(rec.RoundRecord, value)


def read_reputation(writer: StateWriter, public_key: bytes) -> int:
    value = writer.get(rec.get_reputation_key(public_key))
    return REPUTATION_INITIAL_PPM if value is None else rec.decode_u64(value)


def read_privacy(writer: StateWriter, task_id: int, public_key: bytes) -> rec.PrivacyAccount:
    value = writer.get(rec.get_privacy_key(task_id, public_key))
    return (
        rec.PrivacyAccount(0, ()) if value is None else rec.decode_record(rec.PrivacyAccount, value)
    )


def _require_member(writer: StateWriter, sender: bytes) -> rec.Institution:
    member = read_registry(writer).get(sender)
    if member is None:
        raise TxInvalid(REASON_NOT_MEMBER, f"{sender.hex()[:16]} is not a member institution")
    return member


def _require_open_round(writer: StateWriter, task_id: int, round_number: int) -> rec.RoundRecord:
    read_task(writer, task_id)
    current = read_round(writer, task_id)
    if round_number != current.round:
        raise TxInvalid(
            REASON_WRONG_ROUND, f"task {task_id} is in round {current.round}, not {round_number}"
        )
    return current


# --- ModelDelta (layer (a)) -----------------------------------------------------------


def _check_delta_values(body: rec.ModelDelta, config: TaskConfig, param_count: int) -> None:
    delta = body.delta
    if delta.dtype != np.int16 or delta.shape != (param_count,):
        raise TxInvalid(
            REASON_SHAPE, f"delta is {delta.dtype} {delta.shape}, task needs int16 ({param_count},)"
        )
    if body.scale_exp != config.scale_exp:
        raise TxInvalid(REASON_SCALE, f"scale_exp {body.scale_exp}, task uses {config.scale_exp}")
    if int(delta.min()) < -Q_MAX_INT16:
        raise TxInvalid(REASON_FIXED_POINT_RANGE, "value -32768 is outside the symmetric range")


def _compute_dp_epsilon(
    body: rec.ModelDelta, config: TaskConfig, account: rec.PrivacyAccount
) -> tuple[int, rec.DpUse]:
    if body.clip_norm_micro == 0 or body.clip_norm_micro > config.clip_norm_micro:
        raise TxInvalid(
            REASON_PRIVACY_PARAMS,
            f"clip norm {body.clip_norm_micro} micro not in (0, {config.clip_norm_micro}]",
        )
    noise_min = max(1, config.noise_multiplier_min_micro)
    if body.noise_multiplier_micro < noise_min:
        raise TxInvalid(
            REASON_PRIVACY_PARAMS,
            f"noise multiplier {body.noise_multiplier_micro} micro < {noise_min}",
        )
    if not 0 < body.sampling_rate_ppm <= rec.PPM or body.steps < 1:
        raise TxInvalid(REASON_PRIVACY_PARAMS, "sampling rate must be in (0, 1] and steps >= 1")
    if len(account.history) >= rec.PRIVACY_HISTORY_MAX:
        raise TxInvalid(REASON_PRIVACY_BUDGET, "privacy history is full")
    use = rec.DpUse(body.noise_multiplier_micro, body.sampling_rate_ppm, body.steps)
    history = [
        (u.noise_multiplier_micro / rec.PPM, u.sampling_rate_ppm / rec.PPM, u.steps)
        for u in (*account.history, use)
    ]
    try:
        spent = privacy.compute_composed_epsilon_micro(history, config.dp_delta_e12 / 10**12)
    except (ValueError, OverflowError) as exc:
        raise TxInvalid(REASON_PRIVACY_PARAMS, f"privacy accountant refused: {exc}") from None
    if spent > config.epsilon_budget_micro:
        raise TxInvalid(
            REASON_PRIVACY_BUDGET,
            f"epsilon would reach {spent} micro, budget {config.epsilon_budget_micro} micro",
        )
    return spent, use


def process_model_delta(writer: StateWriter, tx: Transaction, context: TxContext) -> None:
    body = tx.body
    assert isinstance(body, rec.ModelDelta)
    member = _require_member(writer, tx.sender)
    if not member.is_trainer:
        raise TxInvalid(REASON_NOT_TRAINER, f"{member.name} has role {member.role}")
    config = read_task(writer, body.task_id).config
    current = _require_open_round(writer, body.task_id, body.round)
    if body.base_model_hash != current.base_model_hash:
        raise TxInvalid(REASON_WRONG_BASE, "base model hash is not the round's base model")
    if tx.sender in current.delta_senders:
        raise TxInvalid(REASON_REPLAY, f"{member.name} already sent a delta in this round")
    if len(current.delta_tx_hashes) >= config.deltas_per_round_max:
        raise TxInvalid(REASON_ROUND_FULL, f"round has {config.deltas_per_round_max} deltas")
    if not 1 <= body.sample_count <= config.sample_count_max:
        raise TxInvalid(REASON_SAMPLE_COUNT, f"sample count not in [1, {config.sample_count_max}]")
    _check_delta_values(body, config, get_model_spec_param_count(config))
    vector = QuantizedVector(body.delta, body.scale_exp, 0)
    if scoring.is_zero_update(vector):
        raise TxInvalid(REASON_ZERO_DELTA, "the delta is all zeros")
    norm_ppm = scoring.compute_update_norm_ppm(vector)
    if norm_ppm > config.norm_max_ppm:
        raise TxInvalid(REASON_NORM_BOUND, f"norm {norm_ppm} ppm > bound {config.norm_max_ppm}")
    digest = scoring.get_update_digest(vector)
    digest_key = rec.get_digest_key(body.task_id, digest)
    if writer.get(digest_key) is not None:
        raise TxInvalid(REASON_COPY, "an identical delta was already sent to this task")
    account = read_privacy(writer, body.task_id, tx.sender)
    spent, use = _compute_dp_epsilon(body, config, account)
    tx_hash = get_tx_hash(tx)
    writer.put(
        rec.get_privacy_key(body.task_id, tx.sender),
        rec.encode_record(rec.PrivacyAccount(spent, (*account.history, use))),
    )
    writer.put(digest_key, rec.encode_record(rec.DigestRecord(body.round, tx_hash)))
    writer.put(
        rec.get_pending_delta_key(body.task_id, tx_hash),
        rec.encode_record(
            rec.PendingDelta(
                tx_hash,
                tx.sender,
                member.member_id,
                body.sample_count,
                body.delta,
                digest,
                body.commitment,
            )
        ),
    )
    writer.put(
        rec.get_round_key(body.task_id),
        rec.encode_record(
            replace(
                current,
                delta_tx_hashes=(*current.delta_tx_hashes, tx_hash),
                delta_senders=(*current.delta_senders, tx.sender),
            )
        ),
    )


def get_model_spec_param_count(config: TaskConfig) -> int:
    return compute_param_count(get_model_spec(config))


# --- Attestation (layer (c)) -------------------------------------------------------


def process_attestation(writer: StateWriter, tx: Transaction, context: TxContext) -> None:
    body = tx.body
    assert isinstance(body, rec.Attestation)
    member = _require_member(writer, tx.sender)
    if not member.is_validator:
        raise TxInvalid(REASON_NOT_VALIDATOR, f"{member.name} has role {member.role}")
    current = _require_open_round(writer, body.task_id, body.round)
    if tx.sender in current.attesters:
        raise TxInvalid(REASON_REPLAY, f"{member.name} already attested this round")
    known = set(current.delta_tx_hashes)
    seen: set[bytes] = set()
    for score in body.scores:
        if score.delta_tx_hash not in known:
            raise TxInvalid(REASON_ATTESTATION, "scores a delta that is not in this round")
        if score.delta_tx_hash in seen:
            raise TxInvalid(REASON_ATTESTATION, "scores one delta twice")
        if not -rec.PPM <= score.agreement_ppm <= rec.PPM:
            raise TxInvalid(REASON_ATTESTATION, "agreement_ppm outside [-1e6, 1e6]")
        if not -(1 << 62) <= score.improvement_ppm < 1 << 62:
            raise TxInvalid(REASON_ATTESTATION, "improvement_ppm out of range")
        seen.add(score.delta_tx_hash)
    writer.put(rec.get_attestation_key(body.task_id, tx.sender), rec.encode_record(body))
    writer.put(
        rec.get_round_key(body.task_id),
        rec.encode_record(replace(current, attesters=(*current.attesters, tx.sender))),
    )


# --- round close ------------------------------------------------------------------


def _get_rule_params(rule: str, params_json: str) -> dict[str, int | float]:
    params: dict[str, int | float] = json.loads(params_json) if params_json else {}
    return params


def _aggregate_robust(
    config: TaskConfig, updates: QuantizedUpdates, ids: Sequence[int], weights: Sequence[int]
) -> tuple[AggregationResult, str, str]:
    """The task rule, or FALLBACK_RULE when there are too few deltas for its n vs f condition."""
    rule, params_json = config.rule, config.rule_params_json
    spec = RULES[rule]
    params = _get_rule_params(rule, params_json)
    if len(ids) < spec.min_clients({**spec.defaults, **params}):
        rule, params_json, params = FALLBACK_RULE, "{}", {}
    result = aggregate(rule, updates, list(ids), np.asarray(weights, dtype=np.int64), params)
    return result, rule, params_json


def _median_low(values: Sequence[int]) -> int:
    """The lower median: with f < n/2 liars it stays within the honest values' range."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _collect_attestations(
    writer: StateWriter, task_id: int, current: rec.RoundRecord
) -> dict[bytes, list[int]]:
    by_delta: dict[bytes, list[int]] = {h: [] for h in current.delta_tx_hashes}
    for validator in current.attesters:
        value = writer.get(rec.get_attestation_key(task_id, validator))
        assert value is not None
        attestation = rec.decode_record(rec.Attestation, value)
        for score in attestation.scores:
            by_delta[score.delta_tx_hash].append(score.improvement_ppm)
        writer.put(rec.get_attestation_key(task_id, validator), None)
    return by_delta


def _credit(writer: StateWriter, account: bytes, amount: int) -> None:
    if amount == 0:
        return
    current = writer.get_account(account)
    balance = current.balance + amount
    # A u64 balance cannot overflow with pools < 2**48 per round for 2**16 years of blocks.
    assert balance < U64_LIMIT, "reward would overflow a u64 balance"
    writer.put_account(account, Account(balance, current.nonce))


def _pay_validators(
    writer: StateWriter, current: rec.RoundRecord, amount: int, context: TxContext
) -> tuple[rec.Reward, ...]:
    """Equal split among the round's attesters and the closing block's proposer."""
    meta = read_learning_meta(writer)
    recipients = list(current.attesters)
    if context.proposer_index < len(meta.validator_keys):
        recipients.append(meta.validator_keys[context.proposer_index])
    split = contribution.split_reward(amount, {i: 1 for i in range(len(recipients))})
    totals: dict[bytes, int] = {}
    for index, account in enumerate(recipients):
        totals[account] = totals.get(account, 0) + split.get(index, 0)
    for account in sorted(totals):
        _credit(writer, account, totals[account])
    return tuple(rec.Reward(a, totals[a]) for a in sorted(totals) if totals[a] > 0)


def read_learning_meta(writer: StateWriter) -> rec.LearningMeta:
    value = writer.get(rec.get_learning_meta_key())
    assert value is not None, "learning meta is missing"
    return rec.decode_small_record(rec.LearningMeta, value)


def _store_model(
    writer: StateWriter,
    config: TaskConfig,
    current: rec.RoundRecord,
    params: np.ndarray,
    rule: str,
    lineage: tuple[rec.LineageEntry, ...],
    height: int,
) -> tuple[int, bytes]:
    task_id = config.task_id
    version = current.base_version + 1
    model_hash = compute_model_hash(params)
    writer.put(
        rec.get_model_key(task_id, version),
        rec.encode_record(
            rec.ModelVersion(
                task_id,
                version,
                current.round,
                height,
                model_hash,
                current.base_model_hash,
                rule,
                lineage,
            )
        ),
    )
    writer.put(rec.get_model_latest_key(task_id), rec.encode_u64(version))
    writer.put(rec.get_params_key(task_id, version), encode_params(params))
    if version >= MODEL_PARAMS_KEPT_VERSIONS:
        writer.put(rec.get_params_key(task_id, version - MODEL_PARAMS_KEPT_VERSIONS), None)
    return version, model_hash


def _load_pending(
    writer: StateWriter, task_id: int, current: rec.RoundRecord
) -> list[rec.PendingDelta]:
    pending = []
    for tx_hash in current.delta_tx_hashes:
        key = rec.get_pending_delta_key(task_id, tx_hash)
        value = writer.get(key)
        assert value is not None, "a pending delta is missing"
        pending.append(rec.decode_record(rec.PendingDelta, value))
        writer.put(key, None)
    return sorted(pending, key=lambda p: p.member_id)


def _decide(
    config: TaskConfig,
    scores: Sequence[scoring.DeltaScore],
    attested: Mapping[bytes, list[int]],
    pending: Sequence[rec.PendingDelta],
) -> list[str]:
    """Per delta: "" (accepted) or the outcome reason, from layers (b) and (c)."""
    reasons = []
    floor = -config.roni_tolerance_ppm
    for delta, score in zip(pending, scores, strict=True):
        votes = attested[delta.tx_hash]
        if score.improvement_ppm < floor:
            reasons.append(OUTCOME_RONI)
        elif score.agreement_ppm < config.agreement_min_ppm:
            reasons.append(OUTCOME_AGREEMENT)
        elif votes and _median_low(votes) < floor:
            reasons.append(OUTCOME_ATTESTATIONS)
        else:
            reasons.append("")
    return reasons


def close_round(
    writer: StateWriter,
    config: TaskConfig,
    current: rec.RoundRecord,
    context: TxContext,
    seed: int,
) -> rec.RoundSummary:
    """Decide the round, update model, rewards and reputation; return (and store) its summary."""
    task_id = config.task_id
    attested = _collect_attestations(writer, task_id, current)
    pending = _load_pending(writer, task_id, current)
    rule, rule_params_json = config.rule, config.rule_params_json
    model_version, model_hash = current.base_version, current.base_model_hash
    outcomes: list[rec.DeltaOutcome] = []
    validator_rewards: tuple[rec.Reward, ...] = ()
    minted = 0
    if pending:
        spec = get_model_spec(config)
        base_value = writer.get(rec.get_params_key(task_id, current.base_version))
        assert base_value is not None, "the base model's params are missing"
        base = decode_params(base_value)
        x_val, y_val = load_validation_set(config)
        ids = [p.member_id for p in pending]
        weights = [min(p.sample_count, config.sample_count_max) for p in pending]
        updates = QuantizedUpdates(np.stack([p.delta for p in pending]), config.scale_exp)
        robust, _, _ = _aggregate_robust(config, updates, ids, weights)
        scores = scoring.score_deltas(spec, base, updates, ids, robust.aggregate, x_val, y_val)
        reasons = _decide(config, scores, attested, pending)
        accepted = [i for i, reason in enumerate(reasons) if reason == ""]
        shapley: dict[int, int] = {}
        rewards: dict[int, int] = {}
        if accepted:
            acc_ids = [ids[i] for i in accepted]
            acc_weights = [weights[i] for i in accepted]
            acc_updates = QuantizedUpdates(
                np.ascontiguousarray(updates.values[accepted]), config.scale_exp
            )
            result, rule, rule_params_json = _aggregate_robust(
                config, acc_updates, acc_ids, acc_weights
            )
            new_params = base + result.aggregate
            lineage = tuple(
                rec.LineageEntry(pending[i].tx_hash, pending[i].sender, weights[i])
                for i in accepted
            )
            model_version, model_hash = _store_model(
                writer, config, current, new_params, rule, lineage, context.height
            )
            utility = contribution.RoundUtility(
                spec, base, acc_updates, acc_ids, acc_weights, x_val, y_val
            )
            shapley = contribution.compute_shapley_ppm(utility, acc_ids, seed)
            validator_pool = config.reward_pool * config.validator_share_ppm // rec.PPM
            trainer_pool = config.reward_pool - validator_pool
            shares = {
                ids[i]: max(0, shapley.get(ids[i], 0))
                * read_reputation(writer, pending[i].sender)
                // rec.PPM
                for i in accepted
            }
            if not any(shares.values()):
                shares = {ids[i]: 1 for i in accepted}  # no measurable gain: equal split
            rewards = contribution.split_reward(trainer_pool, shares)
            for i in accepted:
                _credit(writer, pending[i].sender, rewards.get(ids[i], 0))
            validator_rewards = _pay_validators(writer, current, validator_pool, context)
            minted = sum(rewards.values()) + sum(r.amount for r in validator_rewards)
            assert minted == config.reward_pool, f"minted {minted} != pool {config.reward_pool}"
        for i, delta in enumerate(pending):
            votes = attested[delta.tx_hash]
            outcomes.append(
                rec.DeltaOutcome(
                    delta.tx_hash,
                    delta.sender,
                    delta.member_id,
                    reasons[i] == "",
                    reasons[i],
                    rec.to_biased(scores[i].improvement_ppm),
                    rec.to_biased(scores[i].agreement_ppm),
                    rec.to_biased(_median_low(votes) if votes else 0),
                    len(votes),
                    rec.to_biased(shapley.get(delta.member_id, 0)),
                    weights[i],
                    rewards.get(delta.member_id, 0),
                    delta.digest,
                    delta.commitment,
                )
            )
            reputation = read_reputation(writer, delta.sender)
            updated = contribution.update_reputation_ppm(reputation, reasons[i] == "")
            writer.put(rec.get_reputation_key(delta.sender), rec.encode_u64(updated))
    summary = rec.RoundSummary(
        task_id,
        current.round,
        context.height,
        rule,
        rule_params_json,
        model_version,
        model_hash,
        tuple(outcomes),
        validator_rewards,
        minted,
    )
    writer.put(rec.get_round_summary_key(task_id, current.round), rec.encode_record(summary))
    return summary


def open_next_round(
    writer: StateWriter, task: rec.TaskRecord, closed: rec.RoundSummary, height: int
) -> None:
    """Round r+1 on the model round r left; governance changes due by r+1 take effect now."""
    next_round = closed.round + 1
    config = task.config
    remaining = []
    for change in task.pending:
        if change.effective_round <= next_round:
            config = change.config
        else:
            remaining.append(change)
    writer.put(
        rec.get_task_key(config.task_id),
        rec.encode_record(rec.TaskRecord(config, tuple(remaining))),
    )
    writer.put(
        rec.get_round_key(config.task_id),
        rec.encode_record(
            rec.RoundRecord(
                config.task_id,
                next_round,
                height,
                height + config.round_length_blocks,
                closed.model_version,
                closed.model_hash,
                (),
                (),
                (),
            )
        ),
    )


def _is_round_due(writer: StateWriter, current: rec.RoundRecord, height: int) -> bool:
    if height >= current.deadline_height:
        return True
    validators = read_registry(writer).get_validator_count()
    return bool(current.delta_tx_hashes) and validators > 0 and len(current.attesters) >= validators


def process_learning_block(writer: StateWriter, context: TxContext, parent_hash: bytes) -> None:
    """End-of-block hook: close every task's round that is due, then open the next."""
    meta_value = writer.get(rec.get_learning_meta_key())
    if meta_value is None:
        return  # no learning tasks on this chain
    meta = rec.decode_small_record(rec.LearningMeta, meta_value)
    seed = int.from_bytes(parent_hash[:8], "little") >> 1
    for task_id in range(meta.task_count):
        current = read_round(writer, task_id)
        if not _is_round_due(writer, current, context.height):
            continue
        task = read_task(writer, task_id)
        summary = close_round(writer, task.config, current, context, seed)
        open_next_round(writer, task, summary, context.height)


# --- governance -----------------------------------------------------------------------


def _read_governance_meta(writer: StateWriter) -> rec.GovernanceMeta:
    value = writer.get(rec.get_governance_meta_key())
    if value is None:
        raise TxInvalid(REASON_GOVERNANCE, "this chain has no learning governance")
    return rec.decode_record(rec.GovernanceMeta, value)


def _read_proposal(writer: StateWriter, proposal_id: int) -> rec.Proposal:
    value = writer.get(rec.get_proposal_key(proposal_id))
    if value is None:
        raise TxInvalid(REASON_GOVERNANCE, f"no proposal {proposal_id}")
    return rec.decode_record(rec.Proposal, value)


def _check_proposal(writer: StateWriter, body: rec.GovernanceProposal) -> None:
    registry = read_registry(writer)
    if body.action not in rec.ACTIONS:
        raise TxInvalid(REASON_GOVERNANCE, f"unknown action {body.action!r}")
    if body.action == rec.ACTION_ADD_INSTITUTION:
        if body.institution_role not in ROLES or not body.institution_name:
            raise TxInvalid(REASON_GOVERNANCE, "add_institution needs a name and a role")
        if registry.get(body.institution_key) is not None:
            raise TxInvalid(REASON_GOVERNANCE, "institution is already a member")
        if len(registry.members) >= MEMBERS_MAX:
            raise TxInvalid(REASON_GOVERNANCE, "registry is full")
    elif body.action == rec.ACTION_REMOVE_INSTITUTION:
        if registry.get(body.institution_key) is None:
            raise TxInvalid(REASON_GOVERNANCE, "institution is not a member")
    else:
        config = read_task(writer, body.task_id).config
        if body.action == rec.ACTION_SET_RULE:
            _check_rule(body.rule, body.rule_params_json)
        elif body.action == rec.ACTION_SET_REWARD_POOL and body.amount >= 1 << 48:
            raise TxInvalid(REASON_GOVERNANCE, "reward pool must be below 2**48")
        assert config.task_id == body.task_id


def _check_rule(rule: str, params_json: str) -> None:
    if rule not in FL_RULES:
        raise TxInvalid(REASON_GOVERNANCE, f"rule must be one of {', '.join(FL_RULES)}")
    try:
        params = json.loads(params_json) if params_json else {}
    except ValueError:
        raise TxInvalid(REASON_GOVERNANCE, "rule params are not JSON") from None
    if not isinstance(params, dict) or set(params) - set(RULES[rule].defaults):
        raise TxInvalid(
            REASON_GOVERNANCE, f"rule params must be a subset of {sorted(RULES[rule].defaults)}"
        )
    for value in params.values():
        if type(value) not in (int, float) or not 0 <= value < 2**53:
            raise TxInvalid(REASON_GOVERNANCE, "rule params must be numbers in [0, 2**53)")
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    if canonical != (params_json or "{}"):
        raise TxInvalid(REASON_GOVERNANCE, f"rule params must be canonical JSON: {canonical}")


def process_governance_proposal(writer: StateWriter, tx: Transaction, context: TxContext) -> None:
    body = tx.body
    assert isinstance(body, rec.GovernanceProposal)
    _require_member(writer, tx.sender)
    meta = _read_governance_meta(writer)
    _check_proposal(writer, body)
    still_open = tuple(
        pid for pid in meta.open_ids if _read_proposal(writer, pid).expires_height > context.height
    )
    if len(still_open) >= rec.PROPOSALS_OPEN_MAX:
        raise TxInvalid(REASON_GOVERNANCE, f"{rec.PROPOSALS_OPEN_MAX} proposals already open")
    proposal = rec.Proposal(
        meta.next_proposal_id,
        tx.sender,
        context.height,
        context.height + PROPOSAL_TTL_BLOCKS,
        body,
        (),
        (),
        "open",
    )
    writer.put(rec.get_proposal_key(proposal.proposal_id), rec.encode_record(proposal))
    writer.put(
        rec.get_governance_meta_key(),
        rec.encode_record(
            rec.GovernanceMeta(meta.next_proposal_id + 1, (*still_open, proposal.proposal_id))
        ),
    )


def process_governance_vote(writer: StateWriter, tx: Transaction, context: TxContext) -> None:
    body = tx.body
    assert isinstance(body, rec.GovernanceVote)
    member = _require_member(writer, tx.sender)
    if not member.is_validator:
        raise TxInvalid(REASON_NOT_VALIDATOR, f"{member.name} has role {member.role}")
    proposal = _read_proposal(writer, body.proposal_id)
    if proposal.status != "open" or proposal.expires_height <= context.height:
        raise TxInvalid(REASON_GOVERNANCE, f"proposal {body.proposal_id} is not open")
    if tx.sender in proposal.yes or tx.sender in proposal.no:
        raise TxInvalid(REASON_REPLAY, f"{member.name} already voted on {body.proposal_id}")
    yes = (*proposal.yes, tx.sender) if body.approve else proposal.yes
    no = proposal.no if body.approve else (*proposal.no, tx.sender)
    validators = read_registry(writer).get_validator_count()
    status = "open"
    # Only votes of current validators count (one may have been removed since voting).
    registry = read_registry(writer)
    yes_count = sum(1 for key in yes if (m := registry.get(key)) is not None and m.is_validator)
    no_count = sum(1 for key in no if (m := registry.get(key)) is not None and m.is_validator)
    if 3 * yes_count >= 2 * validators:
        status = "passed"
    elif 3 * no_count > validators:
        status = "rejected"  # 2/3 can no longer be reached
    writer.put(
        rec.get_proposal_key(proposal.proposal_id),
        rec.encode_record(replace(proposal, yes=yes, no=no, status=status)),
    )
    if status != "open":
        meta = _read_governance_meta(writer)
        open_ids = tuple(pid for pid in meta.open_ids if pid != proposal.proposal_id)
        writer.put(
            rec.get_governance_meta_key(), rec.encode_record(replace(meta, open_ids=open_ids))
        )
    if status == "passed":
        _execute_proposal(writer, proposal.body)


def _execute_proposal(writer: StateWriter, body: rec.GovernanceProposal) -> None:
    """Membership changes now; task changes from the round after the current one."""
    registry = read_registry(writer)
    if body.action == rec.ACTION_ADD_INSTITUTION:
        if registry.get(body.institution_key) is not None:
            return  # added by another proposal meanwhile
        member = rec.Institution(
            body.institution_key,
            body.institution_name,
            body.institution_role,
            registry.next_member_id,
        )
        registry = rec.Registry((*registry.members, member), registry.next_member_id + 1)
        writer.put(rec.get_registry_key(), rec.encode_record(registry))
        return
    if body.action == rec.ACTION_REMOVE_INSTITUTION:
        members = tuple(m for m in registry.members if m.public_key != body.institution_key)
        writer.put(rec.get_registry_key(), rec.encode_record(replace(registry, members=members)))
        return
    task = read_task(writer, body.task_id)
    latest = task.pending[-1].config if task.pending else task.config
    if body.action == rec.ACTION_SET_RULE:
        changed = replace(latest, rule=body.rule, rule_params_json=body.rule_params_json or "{}")
    elif body.action == rec.ACTION_SET_REWARD_POOL:
        changed = replace(latest, reward_pool=body.amount)
    else:
        changed = replace(latest, epsilon_budget_micro=body.amount)
    effective = read_round(writer, body.task_id).round + 1
    pending = tuple(c for c in task.pending if c.effective_round != effective)
    if len(pending) >= rec.PENDING_CHANGES_MAX:
        raise TxInvalid(REASON_GOVERNANCE, "too many pending task changes")
    writer.put(
        rec.get_task_key(body.task_id),
        rec.encode_record(
            rec.TaskRecord(task.config, (*pending, rec.PendingChange(effective, changed)))
        ),
    )
