from __future__ import annotations

from pathlib import Path

import pytest

from node import schema
from node.chain import ChainStore, ChainStoreError, GenesisMismatchError
from node.codec import CommitCertificate, CommitSignature, encode_block, get_tx_hash
from node.ledger import State, apply_block, build_block, get_genesis_state
from node.store import LevelDBStore, MemoryStore

from .helpers import make_context, make_genesis, make_transfer

GENESIS = make_genesis({0: 1000, 1: 1000})
CONTEXT = make_context(GENESIS)


def make_certificate(height: int, block_hash: bytes) -> CommitCertificate:
    signatures = tuple(CommitSignature(i, bytes([i]) * 64) for i in range(3))
    return CommitCertificate(height, 0, block_hash, signatures)


def commit_chain(chain: ChainStore, blocks_txs: list[list[bytes]]) -> list[State]:
    state = chain.load_state()
    states = [state]
    for txs in blocks_txs:
        built = build_block(state, txs, CONTEXT, 1, 0, state.last_block_time_ms + 10)
        applied = apply_block(state, built.block, CONTEXT)
        chain.commit_block(
            encode_block(built.block),
            applied,
            make_certificate(built.block.header.height, applied.block_hash),
        )
        state = applied.state
        states.append(state)
    return states


BLOCKS = [
    [make_transfer(0, 0, 1, 100), make_transfer(1, 0, 2, 1000)],  # sender 1 empties its account
    [make_transfer(0, 1, 1, 5)],
    [],
]


def test_commit_then_reopen_gives_the_same_chain(tmp_path: Path) -> None:
    store = LevelDBStore(tmp_path / "db")
    chain = ChainStore(store, GENESIS)
    assert chain.get_latest_height() == 0
    assert chain.load_state().state_root == get_genesis_state(GENESIS).state_root
    states = commit_chain(chain, BLOCKS)
    blocks = [chain.get_block(h) for h in range(1, 4)]
    store.close()

    reopened = ChainStore(LevelDBStore(tmp_path / "db"), GENESIS)
    assert reopened.get_latest_height() == 3
    state = reopened.load_state()
    assert state.state_root == states[-1].state_root
    assert dict(state.entries) == dict(states[-1].entries)
    assert (state.height, state.last_block_hash, state.last_block_time_ms) == (
        3,
        states[-1].last_block_hash,
        states[-1].last_block_time_ms,
    )
    for height in range(1, 4):
        block = reopened.get_block(height)
        assert block is not None and block == blocks[height - 1]
        assert reopened.get_block_by_hash(states[height].last_block_hash) == block
        certificate = reopened.get_certificate(height)
        assert certificate == make_certificate(height, states[height].last_block_hash)
    for index, tx in enumerate(BLOCKS[0]):
        assert reopened.get_tx_location(get_tx_hash(tx)) == (1, index)
    assert reopened.get_tx_location(b"\x00" * 32) is None
    assert reopened.get_block(4) is None and reopened.get_certificate(4) is None
    # The emptied account (sender 1: balance 0, nonce 1) is still stored; nothing else stale.
    # (Genesis hooks, e.g. node.evidence's validator keys, may add entries that never change.)
    genesis_entries = get_genesis_state(GENESIS).entries
    assert all(key.startswith(schema.ACCOUNT_PREFIX)
               or state.entries[key] == genesis_entries.get(key) for key in state.entries)


def test_commit_refuses_a_height_out_of_order() -> None:
    chain = ChainStore(MemoryStore(), GENESIS)
    state = chain.load_state()
    built = build_block(state, [], CONTEXT, 0, 0, 5000)
    applied = built.applied
    certificate = make_certificate(1, applied.block_hash)
    args = (encode_block(built.block), applied, certificate)
    chain.commit_block(*args)
    with pytest.raises(ChainStoreError):
        chain.commit_block(*args)


def test_a_data_dir_from_another_genesis_is_refused(tmp_path: Path) -> None:
    store = LevelDBStore(tmp_path / "db")
    ChainStore(store, GENESIS)
    store.close()
    other = make_genesis({0: 1000, 1: 1001})
    store = LevelDBStore(tmp_path / "db")
    with pytest.raises(GenesisMismatchError, match="genesis"):
        ChainStore(store, other)
    ChainStore(store, GENESIS)  # the right one still opens


def test_a_corrupt_state_is_detected_on_load() -> None:
    store = MemoryStore()
    chain = ChainStore(store, GENESIS)
    commit_chain(chain, BLOCKS[:1])
    key = next(k for k, _ in store.iterate_prefix(schema.ACCOUNT_PREFIX))
    store.put(key, b"\x01" * 16)
    with pytest.raises(ChainStoreError, match="corrupt"):
        chain.load_state()


def test_wal_append_load_prune_and_numbers_are_never_reused(tmp_path: Path) -> None:
    store = LevelDBStore(tmp_path / "db")
    chain = ChainStore(store, GENESIS)
    assert chain.load_wal() == []
    assert chain.append_wal([b"a", b"b"]) == [0, 1]
    assert chain.append_wal([b"c"]) == [2]
    assert chain.load_wal() == [b"a", b"b", b"c"]
    assert chain.prune_wal(2) == 2
    assert chain.load_wal_entries() == [(2, b"c")]
    assert chain.prune_wal(10) == 1
    store.close()
    chain = ChainStore(LevelDBStore(tmp_path / "db"), GENESIS)
    assert chain.load_wal() == []
    assert chain.append_wal([b"d"]) == [3]
