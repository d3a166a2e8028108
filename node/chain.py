"""The chain store: committed blocks, certificates, tx index, state and a write-ahead area.

One committed block is one atomic, synced ``write_batch``: the block by
height, its hash -> height, each tx hash -> (height, index), the commit
certificate, the state diff and the meta keys (latest height and state root).
A crash therefore leaves either the whole block or none of it, and
:meth:`ChainStore.load_state` rebuilds the state from the ``s/`` entries and
checks its root against the stored one.

The first open records the genesis hash; opening a data dir with a different
genesis raises :class:`GenesisMismatchError` instead of mixing two chains.

The write-ahead area (``w/`` + seq) holds the consensus driver's records
(its own votes) that must survive a crash before it sends them.
"""

from __future__ import annotations

from collections.abc import Sequence

from node import schema
from node.codec import (
    DEFAULT_LIMITS,
    Block,
    CommitCertificate,
    Limits,
    decode_block,
    decode_commit_certificate,
    encode_commit_certificate,
    get_block_hash,
)
from node.genesis import Genesis, get_genesis_hash
from node.ledger import AppliedBlock, State, get_genesis_state, make_state
from node.store import KVStore

WAL_RECORDS_MAX = 100_000


class ChainStoreError(Exception):
    """The store's content is not a chain this node can continue."""


class GenesisMismatchError(ChainStoreError):
    """The data dir was created for a different genesis."""


class ChainStore:
    def __init__(self, store: KVStore, genesis: Genesis, limits: Limits = DEFAULT_LIMITS) -> None:
        self.store = store
        self.genesis = genesis
        self.limits = limits
        genesis_hash = get_genesis_hash(genesis)
        stored = store.get(schema.GENESIS_HASH_KEY)
        if stored is None:
            if store.get(schema.LATEST_HEIGHT_KEY) is not None:
                raise ChainStoreError(
                    "the store has blocks but no genesis hash: not a bcfl data dir?"
                )
            # The genesis balances are state entries like any other: without them a restart
            # would rebuild the state from the blocks' diffs alone and miss every account
            # that no block has touched yet.
            genesis_entries = get_genesis_state(genesis).entries
            store.write_batch(
                [(schema.GENESIS_HASH_KEY, genesis_hash), *genesis_entries.items()], sync=True
            )
        elif stored != genesis_hash:
            raise GenesisMismatchError(
                f"this data dir belongs to genesis {stored.hex()[:16]}, but the genesis file "
                f"hashes to {genesis_hash.hex()[:16]} (chain {genesis.chain_id!r}): use the "
                "matching genesis or a fresh home"
            )
        self._next_wal_seq = self._find_next_wal_seq()

    # --- blocks ------------------------------------------------------------------

    def get_latest_height(self) -> int:
        value = self.store.get(schema.LATEST_HEIGHT_KEY)
        return 0 if value is None else schema.decode_height(value)

    def commit_block(
        self,
        block_bytes: bytes,
        applied: AppliedBlock,
        certificate: CommitCertificate,
        commit_time_ms: int | None = None,
    ) -> None:
        """Write a block the ledger accepted (``applied``: the block, its post-state, the
        entries it changed and its txs' hashes), and all it changed, in one synced batch.

        ``commit_time_ms`` (this node's wall clock) is kept beside the block for latency
        measurements; it is local, so it is in no hash and no two nodes need agree on it."""
        block, diff, new_state = applied.block, applied.diff, applied.state
        header = block.header
        height = header.height
        latest = self.get_latest_height()
        if height != latest + 1:
            raise ChainStoreError(f"commit of height {height} on top of height {latest}")
        block_hash = get_block_hash(header)
        assert new_state.height == height and new_state.last_block_hash == block_hash
        assert new_state.state_root == header.state_root, "state does not match the header"
        assert certificate.height == height and certificate.block_hash == block_hash
        puts: list[tuple[bytes, bytes]] = [
            (schema.get_block_key(height), block_bytes),
            (schema.get_block_hash_key(block_hash), schema.encode_height(height)),
            (schema.get_certificate_key(height), encode_commit_certificate(certificate)),
            (schema.LATEST_HEIGHT_KEY, schema.encode_height(height)),
            (schema.LATEST_STATE_ROOT_KEY, header.state_root),
        ]
        if commit_time_ms is not None:
            puts.append((schema.get_commit_time_key(height), schema.encode_height(commit_time_ms)))
        assert len(applied.tx_hashes) == len(block.txs)
        for index, tx_hash in enumerate(applied.tx_hashes):  # hashed once, when applied
            puts.append((schema.get_tx_key(tx_hash), schema.encode_tx_location(height, index)))
        deletes: list[bytes] = []
        for key, value in diff.items():
            assert key.startswith(schema.STATE_PREFIX)
            if value is None:
                deletes.append(key)
            else:
                puts.append((key, value))
        self.store.write_batch(puts, deletes, sync=True)

    def get_block_bytes(self, height: int) -> bytes | None:
        return self.store.get(schema.get_block_key(height))

    def get_block(self, height: int) -> Block | None:
        raw = self.get_block_bytes(height)
        return None if raw is None else decode_block(raw, self.limits, check_txs=False)

    def get_block_by_hash(self, block_hash: bytes) -> Block | None:
        value = self.store.get(schema.get_block_hash_key(block_hash))
        return None if value is None else self.get_block(schema.decode_height(value))

    def get_commit_time_ms(self, height: int) -> int | None:
        raw = self.store.get(schema.get_commit_time_key(height))
        return None if raw is None else schema.decode_height(raw)

    def get_certificate(self, height: int) -> CommitCertificate | None:
        raw = self.store.get(schema.get_certificate_key(height))
        return None if raw is None else decode_commit_certificate(raw, self.limits)

    def get_tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        """``(height, index)`` of a committed tx, or None."""
        value = self.store.get(schema.get_tx_key(tx_hash))
        return None if value is None else schema.decode_tx_location(value)

    def load_state(self) -> State:
        """The state after the latest block (the genesis state on an empty store)."""
        height = self.get_latest_height()
        if height == 0:
            return get_genesis_state(self.genesis)
        block = self.get_block(height)
        if block is None:
            raise ChainStoreError(f"latest height is {height} but that block is missing")
        entries = dict(self.store.iterate_prefix(schema.STATE_PREFIX))
        state = make_state(height, get_block_hash(block.header), block.header.time_ms, entries)
        stored_root = self.store.get(schema.LATEST_STATE_ROOT_KEY)
        if stored_root != state.state_root or block.header.state_root != state.state_root:
            raise ChainStoreError(
                f"state at height {height} hashes to {state.state_root.hex()[:16]}, but the "
                "store recorded a different root: the data dir is corrupt"
            )
        return state

    # --- write-ahead area --------------------------------------------------------

    def _find_next_wal_seq(self) -> int:
        # Kept in meta so that numbers are never reused, even after pruning everything.
        value = self.store.get(schema.WAL_NEXT_SEQ_KEY)
        return 0 if value is None else schema.decode_height(value)

    def append_wal(self, records: Sequence[bytes]) -> list[int]:
        """Append records durably (one synced batch); returns their sequence numbers."""
        seqs = list(range(self._next_wal_seq, self._next_wal_seq + len(records)))
        next_seq = self._next_wal_seq + len(records)
        puts = [
            (schema.get_wal_key(seq), record) for seq, record in zip(seqs, records, strict=True)
        ]
        puts.append((schema.WAL_NEXT_SEQ_KEY, schema.encode_height(next_seq)))
        self.store.write_batch(puts, sync=True)
        self._next_wal_seq = next_seq
        return seqs

    def load_wal_entries(self) -> list[tuple[int, bytes]]:
        """``(seq, record)`` in append order (at most WAL_RECORDS_MAX: prune to stay under)."""
        entries = [
            (schema.get_wal_seq(key), value)
            for key, value in self.store.iterate_prefix(
                schema.WAL_PREFIX, limit=WAL_RECORDS_MAX + 1
            )
        ]
        if len(entries) > WAL_RECORDS_MAX:
            raise ChainStoreError(f"write-ahead area holds over {WAL_RECORDS_MAX} records")
        return entries

    def load_wal(self) -> list[bytes]:
        return [record for _, record in self.load_wal_entries()]

    def prune_wal(self, below_seq: int) -> int:
        """Delete the records numbered below ``below_seq``; returns how many."""
        keys = [
            key
            for key, _ in self.store.iterate_prefix(schema.WAL_PREFIX, limit=WAL_RECORDS_MAX + 1)
            if schema.get_wal_seq(key) < below_seq
        ]
        if keys:
            self.store.write_batch([], keys, sync=True)
        return len(keys)


__all__ = ["ChainStore", "ChainStoreError", "GenesisMismatchError"]
