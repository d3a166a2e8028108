from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import ledger, schema
from node.codec import compute_tx_root
from node.crypto import compute_merkle_root
from node.ledger import (
    Account,
    BlockInvalid,
    SignatureCache,
    State,
    apply_block,
    build_block,
    compute_root_of_leaf_hashes,
    compute_state_leaf,
    get_account,
    get_genesis_state,
    get_total_supply,
    make_state,
)

from .helpers import KEYS, make_block, make_context, make_genesis, make_transfer

GENESIS = make_genesis({0: 1000, 1: 500, 2: 2**64 - 5})
CONTEXT = make_context(GENESIS)


def snapshot(state: State) -> tuple[int, bytes, int, dict[bytes, bytes], bytes]:
    return (
        state.height,
        state.last_block_hash,
        state.last_block_time_ms,
        dict(state.entries),
        state.state_root,
    )


def apply_built(state: State, txs: list[bytes]) -> ledger.AppliedBlock:
    built = build_block(
        state, txs, CONTEXT, proposer_index=1, view=0, time_ms=state.last_block_time_ms + 5
    )
    assert not built.dropped
    return apply_block(state, built.block, CONTEXT)


def test_transfers_move_balances_and_bump_nonces() -> None:
    state = get_genesis_state(GENESIS)
    txs = [make_transfer(0, 0, 1, 300), make_transfer(0, 1, 3, 200), make_transfer(1, 0, 0, 50)]
    applied = apply_built(state, txs)
    after = applied.state
    assert get_account(after, KEYS[0].public_key) == Account(1000 - 500 + 50, 2)
    assert get_account(after, KEYS[1].public_key) == Account(500 + 300 - 50, 1)
    assert get_account(after, KEYS[3].public_key) == Account(200, 0)
    assert after.height == 1 and after.last_block_hash == applied.block_hash
    assert get_total_supply(after) == get_total_supply(state)
    # The diff is exactly the three touched accounts, and it rebuilds the state from scratch.
    assert set(applied.diff) == {schema.get_account_key(KEYS[i].public_key) for i in (0, 1, 3)}
    rebuilt = make_state(1, applied.block_hash, after.last_block_time_ms, after.entries)
    assert rebuilt.state_root == after.state_root


def test_state_root_matches_the_plain_merkle_root_of_sorted_leaves() -> None:
    state = apply_built(get_genesis_state(GENESIS), [make_transfer(0, 0, 4, 1)]).state
    leaves = [compute_state_leaf(k, state.entries[k]) for k in sorted(state.entries)]
    assert state.state_root == compute_merkle_root(leaves)
    assert compute_root_of_leaf_hashes([]) == compute_merkle_root([])


def test_self_transfer_and_zero_accounts_are_canonical() -> None:
    state = get_genesis_state(GENESIS)
    after = apply_built(state, [make_transfer(0, 0, 0, 1000), make_transfer(5, 0, 6, 0)]).state
    assert get_account(after, KEYS[0].public_key) == Account(1000, 1)
    assert get_account(after, KEYS[5].public_key) == Account(0, 1)
    # A zero-amount credit to a fresh account stores nothing for it.
    assert schema.get_account_key(KEYS[6].public_key) not in after.entries


def _invalid_cases(state: State) -> list[tuple[str, ledger.Block]]:
    good = [make_transfer(0, 0, 1, 10)]
    valid = build_block(state, good, CONTEXT, 0, 0, state.last_block_time_ms + 1).block
    header = valid.header
    corrupted_sig = bytearray(good[0])
    corrupted_sig[-1] ^= 1
    return [
        ("signature", make_block(state, [bytes(corrupted_sig)])),
        ("signature", make_block(state, [make_transfer(0, 0, 1, 10, chain_id="other-chain")])),
        ("nonce", make_block(state, [make_transfer(0, 1, 1, 10)])),
        ("nonce", make_block(state, [make_transfer(0, 0, 1, 10), make_transfer(0, 2, 1, 10)])),
        ("balance", make_block(state, [make_transfer(1, 1, 0, 500)])),
        ("overflow", make_block(state, [make_transfer(0, 0, 2, 10)])),
        ("duplicate_tx", make_block(state, good * 2)),
        ("decode", make_block(state, [b"\x02\x01garbage"])),
        (
            "height",
            dataclasses.replace(valid, header=dataclasses.replace(header, height=state.height + 2)),
        ),
        (
            "parent_hash",
            dataclasses.replace(
                valid, header=dataclasses.replace(header, parent_hash=b"\x01" * 32)
            ),
        ),
        (
            "tx_root",
            dataclasses.replace(
                valid, header=dataclasses.replace(header, tx_root=compute_tx_root([]))
            ),
        ),
        (
            "state_root",
            dataclasses.replace(valid, header=dataclasses.replace(header, state_root=b"\x07" * 32)),
        ),
        (
            "chain_id",
            dataclasses.replace(valid, header=dataclasses.replace(header, chain_id="other-chain")),
        ),
        (
            "proposer_index",
            dataclasses.replace(valid, header=dataclasses.replace(header, proposer_index=4)),
        ),
        (
            "time",
            dataclasses.replace(
                valid, header=dataclasses.replace(header, time_ms=state.last_block_time_ms - 1)
            ),
        ),
    ]


@pytest.mark.parametrize("case", range(15))
def test_each_invalid_block_raises_its_reason_and_leaves_the_state_untouched(case: int) -> None:
    genesis_state = get_genesis_state(GENESIS)
    # Run on a non-genesis state too, so parent hash and time come from a real block.
    state = apply_built(genesis_state, [make_transfer(1, 0, 3, 1)]).state
    state = dataclasses.replace(state)  # a plain copy; leaves the cached root behind
    cases = _invalid_cases(state)
    assert len(cases) == 15
    reason, block = cases[case]
    before = snapshot(state)
    with pytest.raises(BlockInvalid) as info:
        apply_block(state, block, CONTEXT)
    assert info.value.reason == reason, str(info.value)
    assert snapshot(state) == before


def test_state_entries_cannot_be_mutated() -> None:
    state = get_genesis_state(GENESIS)
    with pytest.raises(TypeError):
        state.entries[b"s/a/x"] = b""  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.height = 5  # type: ignore[misc]


def test_signature_cache_skips_reverification(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ledger.verify_tx

    def counting(chain_id: str, tx: ledger.Transaction, encoded: bytes | None = None) -> bool:
        calls.append(tx)
        return real(chain_id, tx, encoded)

    monkeypatch.setattr(ledger, "verify_tx", counting)
    state = get_genesis_state(GENESIS)
    cache = SignatureCache(100)
    txs = [make_transfer(0, 0, 1, 1), make_transfer(1, 0, 0, 1)]
    built = build_block(state, txs, CONTEXT, 0, 0, 2000, cache)
    assert len(calls) == 2
    apply_block(state, built.block, CONTEXT, cache)
    assert len(calls) == 2  # the validator path found both in the cache
    apply_block(state, built.block, CONTEXT)
    assert len(calls) == 4  # and without the cache it verifies again


def test_signature_cache_is_bounded_fifo() -> None:
    cache = SignatureCache(2)
    for item in (b"a", b"b", b"c"):
        cache.add(item)
    assert len(cache) == 2 and b"a" not in cache and b"c" in cache


# --- properties ----------------------------------------------------------------

ACCOUNTS = 5
PROPERTY_GENESIS = make_genesis({i: 1000 * (i + 1) for i in range(ACCOUNTS)} | {5: 2**64 - 100})
PROPERTY_CONTEXT = make_context(PROPERTY_GENESIS)

transfer_specs = st.lists(
    st.tuples(
        st.integers(0, ACCOUNTS - 1),  # sender
        st.integers(0, 5),  # recipient (5 sits near the u64 ceiling)
        st.integers(0, 3000),  # amount: sometimes more than the balance
        st.integers(-1, 1),  # nonce skew: -1 / +1 make it invalid
        st.sampled_from(["ok", "ok", "ok", "bad_sig", "garbage", "dup"]),
    ),
    max_size=14,
)


def _make_txs(state: State, specs: list[tuple[int, int, int, int, str]]) -> list[bytes]:
    nonces = {i: get_account(state, KEYS[i].public_key).nonce for i in range(ACCOUNTS)}
    txs: list[bytes] = []
    for sender, recipient, amount, skew, kind in specs:
        if kind == "garbage":
            txs.append(b"\x02\x01" + bytes([sender]) * 7)
            continue
        if kind == "dup" and txs:
            txs.append(txs[-1])
            continue
        tx = make_transfer(sender, max(nonces[sender] + skew, 0), recipient, amount)
        if kind == "bad_sig":
            tx = tx[:-1] + bytes([tx[-1] ^ 0x55])
        else:
            nonces[sender] += 1
        txs.append(tx)
    return txs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(transfer_specs, min_size=1, max_size=3))
def test_builder_and_validator_agree_and_supply_is_conserved(
    blocks: list[list[tuple[int, int, int, int, str]]],
) -> None:
    state = get_genesis_state(PROPERTY_GENESIS)
    supply = get_total_supply(state)
    for specs in blocks:
        txs = _make_txs(state, specs)
        built = build_block(state, txs, PROPERTY_CONTEXT, 2, 0, state.last_block_time_ms + 7)
        assert len(built.block.txs) + len(built.dropped) == len(txs)
        applied = apply_block(state, built.block, PROPERTY_CONTEXT)
        assert applied.state.state_root == built.applied.state.state_root
        assert applied.block_hash == built.applied.block_hash
        assert dict(applied.diff) == dict(built.applied.diff)
        state = applied.state
        assert get_total_supply(state) == supply
        for key, value in state.entries.items():
            if not key.startswith(schema.ACCOUNT_PREFIX):
                continue  # a genesis hook's entry (e.g. node.evidence's validator keys)
            account = ledger.decode_account(value)
            assert account != ledger.ZERO_ACCOUNT, key


def test_block_builder_keeps_the_block_limits_and_refuses_a_repeat_without_changes() -> None:
    genesis = make_genesis({0: 1_000, 1: 1_000})
    context = dataclasses.replace(
        make_context(genesis), limits=dataclasses.replace(ledger.DEFAULT_LIMITS, block_txs_max=2)
    )
    state = ledger.get_genesis_state(genesis)
    txs = [make_transfer(0, 0, 1, 5), make_transfer(0, 1, 1, 5), make_transfer(1, 0, 0, 5)]
    decoded = [(ledger.decode_tx(tx), ledger.get_tx_hash(tx), tx) for tx in txs]
    builder = ledger.BlockBuilder(state, context, None, 1, 5_000)
    assert builder.try_add(*decoded[0]) is None
    assert builder.try_add(*decoded[0]) == ledger.REASON_DUPLICATE_TX
    assert builder.try_add(*decoded[1]) is None
    assert builder.try_add(*decoded[2]) == ledger.REASON_TOO_LARGE
    built = builder.finish(0)
    assert built.block.txs == tuple(txs[:2])
    assert built.block.header.proposer_index == 1 and built.block.header.time_ms == 5_000
    # The other side: the validator's loop accepts it and reaches the same post-state.
    applied = ledger.apply_block(state, built.block, context)
    assert applied.state.state_root == built.applied.state.state_root
    assert ledger.get_account(applied.state, KEYS[0].public_key).nonce == 2
    with pytest.raises(AssertionError):
        builder.try_add(*decoded[2])


def test_apply_block_reuses_txs_already_decoded_and_reaches_the_same_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    genesis = make_genesis({0: 1_000, 1: 1_000})
    context = make_context(genesis)
    state = ledger.get_genesis_state(genesis)
    txs = [make_transfer(0, 0, 1, 5), make_transfer(1, 0, 0, 7), make_transfer(0, 1, 1, 9)]
    block = ledger.build_block(state, txs, context, 0, 0, 5_000).block
    plain = ledger.apply_block(state, block, context)
    pool = {ledger.get_tx_hash(tx): ledger.decode_tx(tx) for tx in txs[:2]}  # not the third
    decodes: list[bytes] = []
    real_decode = ledger.decode_tx

    def counting_decode(tx_bytes: bytes, limits: ledger.Limits) -> ledger.Transaction:
        decodes.append(tx_bytes)
        return real_decode(tx_bytes, limits)

    monkeypatch.setattr(ledger, "decode_tx", counting_decode)
    reused = ledger.apply_block(state, block, context, None, pool.get)
    assert decodes == [txs[2]]  # only the tx the lookup did not have
    assert reused.state.state_root == plain.state.state_root
    assert reused.tx_hashes == plain.tx_hashes


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=0, max_size=30, unique=True),
    st.lists(
        st.dictionaries(st.integers(0, 60), st.one_of(st.none(), st.binary(max_size=3)),
                        max_size=8),
        min_size=1, max_size=6,
    ),
)
def test_incremental_state_root_matches_a_full_rebuild_over_any_diffs(
    initial: list[int], diffs: list[dict[int, bytes | None]]
) -> None:
    """Value-only diffs update the kept tree along their paths; inserts and deletes
    rebuild it. Either way the root is the full tree's over the sorted leaves."""

    def key(i: int) -> bytes:
        return schema.STATE_PREFIX + b"t/" + i.to_bytes(2, "big")

    state = ledger.make_state(0, b"\x00" * 32, 0, {key(i): b"v%d" % i for i in initial})
    assert state.state_root == compute_root_of_leaf_hashes(
        [state._leaf_hashes[k] for k in sorted(state._leaf_hashes)]
    )
    block = make_block(ledger.get_genesis_state(make_genesis({0: 1})), [])
    for diff in diffs:
        state = ledger.apply_diff(state, {key(i): v for i, v in diff.items()}, block.header,
                                  b"\x01" * 32)
        rebuilt = ledger.make_state(0, b"\x00" * 32, 0, state.entries)
        assert state.state_root == rebuilt.state_root
        assert state.state_root == compute_root_of_leaf_hashes(
            [rebuilt._leaf_hashes[k] for k in sorted(rebuilt._leaf_hashes)]
        )


def test_value_only_diffs_reuse_the_parents_tree_and_key_changes_rebuild_it() -> None:
    def key(i: int) -> bytes:
        return schema.STATE_PREFIX + b"t/" + bytes([i])

    state = ledger.make_state(0, b"\x00" * 32, 0, {key(i): b"x" for i in range(7)})
    header = make_block(ledger.get_genesis_state(make_genesis({0: 1})), []).header
    values_only = ledger.apply_diff(state, {key(2): b"y", key(6): b"z"}, header, b"\x01" * 32)
    assert values_only._tree is not None  # updated along two paths
    assert values_only.merkle_levels.keys is state.merkle_levels.keys
    inserted = ledger.apply_diff(values_only, {key(9): b"w"}, header, b"\x02" * 32)
    deleted = ledger.apply_diff(values_only, {key(0): None}, header, b"\x03" * 32)
    assert inserted._tree is None and deleted._tree is None
    for result in (values_only, inserted, deleted):
        assert result.state_root == ledger.make_state(0, b"", 0, result.entries).state_root
    assert len({values_only.state_root, inserted.state_root, deleted.state_root,
                state.state_root}) == 4


@settings(max_examples=50, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
                      min_size=1, max_size=40))
def test_decoded_accounts_cache_agrees_with_a_fresh_decode(pairs: list[tuple[int, int]]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger, "DECODED_ACCOUNTS_MAX", 8)  # the bound is hit
        for balance, nonce in pairs:
            account = ledger.Account(balance, nonce)
            value = ledger.encode_account(account)
            assert value == balance.to_bytes(8, "little") + nonce.to_bytes(8, "little")
            assert ledger.decode_account(value) == account
            # A copy with another identity decodes the same, cached or not.
            assert ledger.decode_account(bytes(bytearray(value))) == account
            assert len(ledger._DECODED_ACCOUNTS) <= 8
    for size in (0, 15, 17):
        with pytest.raises(ledger.DecodeError):
            ledger.decode_account(b"\x00" * size)
