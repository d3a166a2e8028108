"""The chain state and its pure, all-or-nothing state transition (consensus-specs style).

State
    A :class:`State` is an immutable value: the height and hash and time of the
    last block, and ``entries``, a read-only map from *state keys* to encoded
    values. A state key is exactly the store key of the entry
    (``node.schema.get_state_key(area, id)``, e.g. ``s/a/<public key>`` for an
    account), so a block's diff is written to the store as it is and
    :meth:`ChainStore.load_state` rebuilds the state by one prefix scan. New
    areas (learning tasks, rounds, models, reputation, privacy budget) are new
    area bytes: they need no change here, only a tx processor that writes them.

State root
    :func:`compute_state_root` is the RFC 6962 Merkle root over one leaf per
    entry, sorted by key: ``u32 len(key) || key || value``. The length prefix
    makes a leaf's split into key and value unambiguous. Leaf hashes are
    carried from parent to child state, so a block rehashes only the entries it
    changed plus the inner nodes (a few ms for 10k accounts). Accounts whose
    balance and nonce are both zero are never stored: absent and zero are one
    state, so they have one root.

Transactions
    :func:`process_tx` checks the nonce (equal to the sender's account nonce,
    then bumped), then dispatches on the body type through
    :data:`TX_PROCESSORS`; another module adds a body type with
    :func:`register_tx_processor` (and :func:`register_tx_cost` for what the
    mempool should reserve against the sender's balance). A processor reads and
    writes through a :class:`StateWriter` overlay and raises :class:`TxInvalid`
    to refuse; the overlay's journal undoes a refused tx's writes.

Blocks
    :func:`apply_block` (validators) and :func:`build_block` (the proposer)
    share :class:`BlockBuilder`'s tx step (``add_or_raise``): the validator
    raises :class:`BlockInvalid` on the first bad tx; the builder drops it and
    goes on. So a block the builder makes always validates, and the two can
    never disagree on a post-state root. ``header.state_root`` commits to the state
    AFTER the block.

Hooks
    :func:`register_block_hook` adds an end-of-block step that both
    :func:`apply_block` and :func:`build_block` run after the txs (round close in
    ``node.learning``); :func:`register_genesis_hook` adds entries to the
    height-0 state. Both are deterministic; a block is still all or nothing.

Signatures are checked once per validator: a :class:`SignatureCache` of tx
hashes already verified (at mempool admission, or in an earlier proposal) is
consulted first. The hash covers the signature and the signed bytes; the chain
id is the node's own, so one cache serves one chain.
"""

from __future__ import annotations

import dataclasses
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import NamedTuple

from node import schema
from node.codec import (
    DEFAULT_LIMITS,
    U64_LIMIT,
    Block,
    BlockHeader,
    DecodeError,
    Limits,
    Transaction,
    Transfer,
    compute_tx_root,
    decode_tx,
    get_block_hash,
    get_tx_hash,
    verify_tx,
)
from node.crypto import EMPTY_MERKLE_ROOT, compute_merkle_leaf_hash, compute_merkle_node_hash
from node.genesis import Genesis, get_genesis_hash

SIGNATURE_CACHE_SIZE_MAX = 200_000

# BlockInvalid / TxInvalid reason codes: stable strings the node logs and counts.
REASON_CHAIN_ID = "chain_id"
REASON_HEIGHT = "height"
REASON_PARENT_HASH = "parent_hash"
REASON_TX_ROOT = "tx_root"
REASON_PROPOSER = "proposer_index"
REASON_TIME = "time"
REASON_TOO_LARGE = "too_large"
REASON_DECODE = "decode"
REASON_DUPLICATE_TX = "duplicate_tx"
REASON_SIGNATURE = "signature"
REASON_NONCE = "nonce"
REASON_BALANCE = "balance"
REASON_OVERFLOW = "overflow"
REASON_UNSUPPORTED = "unsupported"
REASON_STATE_ROOT = "state_root"


class BlockInvalid(Exception):
    """A block does not apply to the state; ``reason`` is one of the ``REASON_*`` codes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class TxInvalid(Exception):
    """A transaction does not apply to the state it meets (its writes are undone)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# --- accounts ------------------------------------------------------------------

_ACCOUNT = struct.Struct("<QQ")
_U32 = struct.Struct("<I")


class Account(NamedTuple):
    """An account's balance and next nonce, both u64.

    A tuple, not a frozen dataclass: a transfer builds three, at every validator, and a
    frozen dataclass's checked constructor cost ~2% of a validator's CPU. The u64
    range is asserted where an account is encoded (every write to the state is), and
    the processors refuse overflow before they build one (TxInvalid).
    """

    balance: int = 0
    nonce: int = 0


ZERO_ACCOUNT = Account()


# Accounts decoded by their 16 encoded bytes. A transfer reads three accounts and
# admission one, each read a decode (~4 per tx per validator, ~3% of its time under
# load), and nearly every value read was encoded by this process moments before. The
# mapping is a pure function and Account is immutable, so entries never go stale;
# the cache is only bounded (emptied when full, an O(1) amortized rule).
_DECODED_ACCOUNTS: dict[bytes, Account] = {}
DECODED_ACCOUNTS_MAX = 16_384


def _remember_account(value: bytes, account: Account) -> None:
    if len(_DECODED_ACCOUNTS) >= DECODED_ACCOUNTS_MAX:
        _DECODED_ACCOUNTS.clear()
    _DECODED_ACCOUNTS[value] = account


def encode_account(account: Account) -> bytes:
    """``u64 balance || u64 nonce``, little-endian: 16 bytes."""
    assert 0 <= account.balance < U64_LIMIT, "balance out of u64"
    assert 0 <= account.nonce < U64_LIMIT, "nonce out of u64"
    value = _ACCOUNT.pack(account.balance, account.nonce)
    _remember_account(value, account)
    return value


def decode_account(value: bytes) -> Account:
    account = _DECODED_ACCOUNTS.get(value)
    if account is not None:
        return account
    if len(value) != _ACCOUNT.size:
        raise DecodeError(f"account: expected {_ACCOUNT.size} bytes, got {len(value)}")
    balance, nonce = _ACCOUNT.unpack(value)
    account = Account(balance, nonce)
    _remember_account(value, account)
    return account


# --- state ---------------------------------------------------------------------


def compute_state_leaf(key: bytes, value: bytes) -> bytes:
    return _U32.pack(len(key)) + key + value


def compute_root_of_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """``compute_merkle_root`` for leaves already hashed (same RFC 6962 tree)."""
    if not leaf_hashes:
        return EMPTY_MERKLE_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        pairs = len(level) // 2
        next_level = [
            compute_merkle_node_hash(level[2 * i], level[2 * i + 1]) for i in range(pairs)
        ]
        if len(level) % 2 == 1:
            next_level.append(level[-1])
        level = next_level
    return level[0]


class MerkleLevels:
    """Every level of the RFC 6962-shaped tree over leaf hashes in key order (the tree
    ``compute_root_of_leaf_hashes`` walks), kept so that a block that only changes the
    values of existing keys costs k·log n hashes instead of rehashing all n leaves (at
    1,000 accounts the full rebuild was ~7% of a validator's CPU under load). Never
    mutated once built; ``with_changed_leaves`` copies the level lists."""

    def __init__(self, keys: Sequence[bytes], position: Mapping[bytes, int],
                 levels: list[list[bytes]]) -> None:
        self.keys = keys
        self.position = position
        self.levels = levels

    @classmethod
    def build(cls, leaf_hashes: Mapping[bytes, bytes]) -> MerkleLevels:
        keys = sorted(leaf_hashes)
        level = [leaf_hashes[key] for key in keys]
        levels = [level]
        while len(level) > 1:
            pairs = len(level) // 2
            parent = [compute_merkle_node_hash(level[2 * i], level[2 * i + 1])
                      for i in range(pairs)]
            if len(level) % 2 == 1:
                parent.append(level[-1])  # an odd last node moves up unchanged
            levels.append(parent)
            level = parent
        return cls(keys, {key: i for i, key in enumerate(keys)}, levels)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.levels[0] else EMPTY_MERKLE_ROOT

    def with_changed_leaves(self, changed: Mapping[bytes, bytes]) -> MerkleLevels:
        """The tree with the leaf hashes of existing keys replaced (KeyError otherwise)."""
        levels = [list(level) for level in self.levels]
        dirty = set()
        for key, leaf_hash in changed.items():
            index = self.position[key]
            levels[0][index] = leaf_hash
            dirty.add(index)
        for depth in range(len(levels) - 1):
            level, parent = levels[depth], levels[depth + 1]
            dirty = {index // 2 for index in dirty}
            for index in dirty:
                left = 2 * index
                parent[index] = (
                    compute_merkle_node_hash(level[left], level[left + 1])
                    if left + 1 < len(level) else level[left]
                )
        return MerkleLevels(self.keys, self.position, levels)


@dataclass(frozen=True, eq=False)
class State:
    """The chain state after block ``height`` (0: genesis). Never mutated; build a new one.

    ``entries`` maps state keys (see the module docstring) to encoded values.
    Use :func:`make_state` or :func:`apply_diff`; they keep ``_leaf_hashes`` in step.
    """

    height: int
    last_block_hash: bytes
    last_block_time_ms: int
    entries: Mapping[bytes, bytes]
    _leaf_hashes: Mapping[bytes, bytes] = field(repr=False)
    _tree: MerkleLevels | None = field(default=None, repr=False)  # if already known

    @cached_property
    def merkle_levels(self) -> MerkleLevels:
        return self._tree if self._tree is not None else MerkleLevels.build(self._leaf_hashes)

    @cached_property
    def state_root(self) -> bytes:
        return self.merkle_levels.root


def make_state(
    height: int, last_block_hash: bytes, last_block_time_ms: int, entries: Mapping[bytes, bytes]
) -> State:
    """A state from scratch (genesis, or a load from the store): hashes every leaf."""
    for key in entries:
        assert key.startswith(schema.STATE_PREFIX), f"{key!r} is not a state key"
    copied = dict(entries)
    leaf_hashes = {k: compute_merkle_leaf_hash(compute_state_leaf(k, v)) for k, v in copied.items()}
    return State(
        height,
        last_block_hash,
        last_block_time_ms,
        MappingProxyType(copied),
        MappingProxyType(leaf_hashes),
    )


Diff = Mapping[bytes, bytes | None]  # state key -> new encoded value, or None: deleted


def apply_diff(state: State, diff: Diff, header: BlockHeader, block_hash: bytes) -> State:
    """The state after ``header``'s block, whose txs changed ``diff`` (rehashes only those)."""
    entries = dict(state.entries)
    leaf_hashes = dict(state._leaf_hashes)
    changed: dict[bytes, bytes] = {}
    same_keys = True
    for key, value in diff.items():
        if value is None:
            same_keys = same_keys and key not in entries
            entries.pop(key, None)
            leaf_hashes.pop(key, None)
        else:
            same_keys = same_keys and key in entries
            entries[key] = value
            leaf_hashes[key] = changed[key] = compute_merkle_leaf_hash(
                compute_state_leaf(key, value)
            )
    # Only values changed: update the parent's tree along k paths; else rebuild lazily.
    tree = state.merkle_levels.with_changed_leaves(changed) if same_keys else None
    return State(
        header.height,
        block_hash,
        header.time_ms,
        MappingProxyType(entries),
        MappingProxyType(leaf_hashes),
        tree,
    )


def compute_state_root(state: State) -> bytes:
    return state.state_root


def get_account(state: State, public_key: bytes) -> Account:
    value = state.entries.get(schema.get_account_key(public_key))
    return ZERO_ACCOUNT if value is None else decode_account(value)


def get_total_supply(state: State) -> int:
    total = 0
    for key, value in state.entries.items():
        if key.startswith(schema.ACCOUNT_PREFIX):
            total += decode_account(value).balance
    return total


def get_genesis_state(genesis: Genesis) -> State:
    """Height 0: the genesis balances; the "last block" is the genesis document itself."""
    entries = {
        schema.get_account_key(public_key): encode_account(Account(amount, 0))
        for public_key, amount in genesis.balances
        if amount > 0
    }
    for name, hook in GENESIS_HOOKS:
        for key, value in hook(genesis).items():
            assert key not in entries, f"genesis hook {name!r} rewrites {key!r}"
            entries[key] = value
    return make_state(0, get_genesis_hash(genesis), genesis.genesis_time_ms, entries)


# --- the overlay processors write through ---------------------------------------

_ABSENT = object()


class StateWriter:
    """Reads fall through to the base state; writes stay here, journaled so a tx can be undone."""

    def __init__(self, base: Mapping[bytes, bytes]) -> None:
        self._base = base
        self._writes: dict[bytes, bytes | None] = {}
        self._journal: list[tuple[bytes, object]] = []

    def get(self, key: bytes) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        return self._base.get(key)

    def put(self, key: bytes, value: bytes | None) -> None:
        """Set (or, with None, delete) the entry at ``key``."""
        assert key.startswith(schema.STATE_PREFIX), f"{key!r} is not a state key"
        self._journal.append((key, self._writes.get(key, _ABSENT)))
        self._writes[key] = value

    def get_account(self, public_key: bytes) -> Account:
        value = self.get(schema.get_account_key(public_key))
        return ZERO_ACCOUNT if value is None else decode_account(value)

    def put_account(self, public_key: bytes, account: Account) -> None:
        key = schema.get_account_key(public_key)
        self.put(key, None if account == ZERO_ACCOUNT else encode_account(account))

    def get_mark(self) -> int:
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every write made since :meth:`get_mark` returned ``mark``."""
        assert 0 <= mark <= len(self._journal)
        while len(self._journal) > mark:
            key, previous = self._journal.pop()
            if previous is _ABSENT:
                del self._writes[key]
            else:
                self._writes[key] = previous  # type: ignore[assignment]

    def get_diff(self) -> dict[bytes, bytes | None]:
        """Net changes against the base (writes that restore the base value are left out)."""
        diff: dict[bytes, bytes | None] = {}
        for key, value in self._writes.items():
            if self._base.get(key) != value:
                diff[key] = value
        return diff


# --- transaction processing ----------------------------------------------------


@dataclass(frozen=True)
class TxContext:
    """What a processor may know besides the state: the block it is in."""

    chain_id: str
    height: int
    time_ms: int
    proposer_index: int


TxProcessor = Callable[[StateWriter, Transaction, TxContext], None]
# A tx already decoded from the bytes whose hash is given, or None (the mempool's).
TxLookup = Callable[[bytes], "Transaction | None"]
TxCost = Callable[[Transaction], int]

TX_PROCESSORS: dict[type, TxProcessor] = {}
TX_COSTS: dict[type, TxCost] = {}

# End-of-block hooks: run after a block's txs, in registration order, by the
# validator and the builder alike (so they agree on the post-state). A hook gets
# the block's writer, its TxContext and the parent block's hash (the block's own
# hash commits to the post-state, so it cannot seed what the hooks compute). A
# hook must be deterministic and must not raise for any reachable state: there
# is no tx to blame, so an exception is a bug and the block is not applied.
BlockHook = Callable[[StateWriter, TxContext, bytes], None]
BLOCK_HOOKS: list[tuple[str, BlockHook]] = []

# Genesis hooks add entries to the height-0 state (e.g. the learning tasks).
GenesisHook = Callable[[Genesis], Mapping[bytes, bytes]]
GENESIS_HOOKS: list[tuple[str, GenesisHook]] = []


def register_tx_processor(
    body_type: type, processor: TxProcessor, cost: TxCost | None = None
) -> None:
    """Make ``body_type`` (already registered with ``codec.register_tx_body``) processable.

    ``cost`` is the most the tx can debit from its sender (the mempool reserves it).
    """
    if body_type in TX_PROCESSORS:
        raise ValueError(f"a processor for {body_type.__name__} is already registered")
    TX_PROCESSORS[body_type] = processor
    if cost is not None:
        TX_COSTS[body_type] = cost


def register_block_hook(name: str, hook: BlockHook) -> None:
    """Run ``hook`` at the end of every block (after its txs), in registration order."""
    if any(existing == name for existing, _ in BLOCK_HOOKS):
        raise ValueError(f"a block hook named {name!r} is already registered")
    BLOCK_HOOKS.append((name, hook))


def register_genesis_hook(name: str, hook: GenesisHook) -> None:
    """Add ``hook(genesis)``'s entries to the genesis state (keys must not collide)."""
    if any(existing == name for existing, _ in GENESIS_HOOKS):
        raise ValueError(f"a genesis hook named {name!r} is already registered")
    GENESIS_HOOKS.append((name, hook))


def process_block_hooks(writer: StateWriter, context: TxContext, parent_hash: bytes) -> None:
    for _, hook in BLOCK_HOOKS:
        hook(writer, context, parent_hash)


def get_tx_cost(tx: Transaction) -> int:
    cost = TX_COSTS.get(type(tx.body))
    return 0 if cost is None else cost(tx)


def process_transfer(writer: StateWriter, tx: Transaction, context: TxContext) -> None:
    body = tx.body
    assert isinstance(body, Transfer)
    sender = writer.get_account(tx.sender)
    if body.amount > sender.balance:
        raise TxInvalid(
            REASON_BALANCE,
            f"sender {tx.sender.hex()[:16]} has {sender.balance}, transfer needs {body.amount}",
        )
    writer.put_account(tx.sender, Account(sender.balance - body.amount, sender.nonce))
    # Read the recipient after the debit: a transfer to oneself must net to zero.
    recipient = writer.get_account(body.recipient)
    credited = recipient.balance + body.amount
    if credited >= U64_LIMIT:
        raise TxInvalid(REASON_OVERFLOW, f"recipient balance would reach {credited} (>= 2**64)")
    writer.put_account(body.recipient, Account(credited, recipient.nonce))


def _get_transfer_cost(tx: Transaction) -> int:
    assert isinstance(tx.body, Transfer)
    return tx.body.amount


register_tx_processor(Transfer, process_transfer, _get_transfer_cost)


def process_tx(writer: StateWriter, tx: Transaction, context: TxContext) -> None:
    """Check and bump the sender's nonce, then run the body's processor (all or nothing)."""
    processor = TX_PROCESSORS.get(type(tx.body))
    if processor is None:
        raise TxInvalid(REASON_UNSUPPORTED, f"no processor for {type(tx.body).__name__} txs")
    mark = writer.get_mark()
    try:
        account = writer.get_account(tx.sender)
        if tx.nonce != account.nonce:
            raise TxInvalid(
                REASON_NONCE, f"nonce {tx.nonce}, sender's account expects {account.nonce}"
            )
        if account.nonce + 1 >= U64_LIMIT:
            raise TxInvalid(REASON_OVERFLOW, "sender nonce would overflow u64")
        writer.put_account(tx.sender, Account(account.balance, account.nonce + 1))
        processor(writer, tx, context)
    except TxInvalid:
        writer.rollback(mark)
        raise


class SignatureCache:
    """Bounded set of tx hashes whose signatures verified (FIFO eviction)."""

    def __init__(self, size_max: int = SIGNATURE_CACHE_SIZE_MAX) -> None:
        assert size_max > 0
        self.size_max = size_max
        self._hashes: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, tx_hash: bytes) -> None:
        if tx_hash in self._hashes:
            return
        self._hashes[tx_hash] = None
        while len(self._hashes) > self.size_max:
            self._hashes.popitem(last=False)


def verify_tx_signature(
    chain_id: str,
    tx: Transaction,
    tx_hash: bytes,
    cache: SignatureCache | None,
    tx_bytes: bytes | None = None,
) -> bool:
    """True iff the signature is valid; consults and fills ``cache`` so each tx is verified once.

    ``tx_bytes``: the bytes ``tx`` was decoded from (their hash is ``tx_hash``), if known."""
    if cache is not None and tx_hash in cache:
        return True
    if not verify_tx(chain_id, tx, tx_bytes):
        return False
    if cache is not None:
        cache.add(tx_hash)
    return True


# --- blocks --------------------------------------------------------------------


@dataclass(frozen=True)
class ChainContext:
    """What block checks need besides the state: fixed for the life of the chain."""

    chain_id: str
    validator_count: int
    limits: Limits = DEFAULT_LIMITS

    @classmethod
    def from_genesis(cls, genesis: Genesis, limits: Limits = DEFAULT_LIMITS) -> ChainContext:
        return cls(genesis.chain_id, genesis.n, limits)


@dataclass(frozen=True)
class AppliedBlock:
    """The outcome of a block: the post-state, the entries it changed, its txs' hashes,
    and the block itself (checked: its tx root included), so delivery need not decode it."""

    state: State
    diff: Mapping[bytes, bytes | None]
    block_hash: bytes
    tx_hashes: tuple[bytes, ...]
    block: Block


@dataclass(frozen=True)
class BuiltBlock:
    """A block the proposer made, the outcome of applying it, and the txs it left out."""

    block: Block
    applied: AppliedBlock
    dropped: tuple[tuple[bytes, str], ...]  # (tx bytes, reason)


def _check_tx(
    tx_bytes: bytes,
    seen: set[bytes],
    context: ChainContext,
    cache: SignatureCache | None,
    decoded: TxLookup | None = None,
) -> tuple[Transaction, bytes]:
    """Decode, dedup and verify one tx (everything that does not depend on the state).

    ``decoded`` may hand back the tx already decoded from the same bytes (its hash
    names them): a validator's mempool holds most of a block's txs decoded."""
    if type(tx_bytes) is not bytes:
        raise TxInvalid(REASON_DECODE, f"expected bytes, got {type(tx_bytes).__name__}")
    tx_hash = get_tx_hash(tx_bytes)
    known = decoded(tx_hash) if decoded is not None else None
    if known is not None:
        tx = known
    else:
        try:
            tx = decode_tx(tx_bytes, context.limits)
        except DecodeError as exc:
            raise TxInvalid(REASON_DECODE, str(exc)) from None
    _check_decoded_tx(tx, tx_hash, tx_bytes, seen, context, cache)
    return tx, tx_hash


def _check_decoded_tx(
    tx: Transaction,
    tx_hash: bytes,
    tx_bytes: bytes,
    seen: set[bytes],
    context: ChainContext,
    cache: SignatureCache | None,
) -> None:
    if tx_hash in seen:
        raise TxInvalid(REASON_DUPLICATE_TX, f"tx {tx_hash.hex()[:16]} appears twice")
    if not verify_tx_signature(context.chain_id, tx, tx_hash, cache, tx_bytes):
        raise TxInvalid(REASON_SIGNATURE, f"tx {tx_hash.hex()[:16]}: signature does not verify")


def verify_block_header(state: State, header: BlockHeader, context: ChainContext) -> None:
    """The checks on the header alone against the pre-state (raises BlockInvalid)."""
    if header.chain_id != context.chain_id:
        raise BlockInvalid(
            REASON_CHAIN_ID, f"block is for chain {header.chain_id!r}, not {context.chain_id!r}"
        )
    if header.height != state.height + 1:
        raise BlockInvalid(REASON_HEIGHT, f"height {header.height}, expected {state.height + 1}")
    if header.parent_hash != state.last_block_hash:
        raise BlockInvalid(
            REASON_PARENT_HASH,
            f"parent {header.parent_hash.hex()[:16]}, last block is "
            f"{state.last_block_hash.hex()[:16]}",
        )
    if not 0 <= header.proposer_index < context.validator_count:
        raise BlockInvalid(
            REASON_PROPOSER,
            f"proposer index {header.proposer_index} not below {context.validator_count}",
        )
    if header.time_ms < state.last_block_time_ms:
        raise BlockInvalid(
            REASON_TIME,
            f"time {header.time_ms} ms is before the parent's {state.last_block_time_ms}",
        )


def apply_block(
    state: State,
    block: Block,
    context: ChainContext,
    cache: SignatureCache | None = None,
    decoded: TxLookup | None = None,
) -> AppliedBlock:
    """Check ``block`` against ``state`` and return the post-state; BlockInvalid on any fault.

    Pure: ``state`` is never changed (it cannot be). ``cache`` lets signatures
    already verified be skipped, and receives the ones verified here; ``decoded``
    gives txs already decoded, by hash (see ``_check_tx``).
    """
    header = block.header
    verify_block_header(state, header, context)
    if len(block.txs) > context.limits.block_txs_max:
        raise BlockInvalid(
            REASON_TOO_LARGE, f"{len(block.txs)} txs, maximum {context.limits.block_txs_max}"
        )
    if compute_tx_root(block.txs) != header.tx_root:
        raise BlockInvalid(REASON_TX_ROOT, "tx_root does not match the block's transactions")
    # The builder's own tx step, on the header's context (its time is not before the
    # parent's, checked above), so a built block and its check cannot disagree.
    builder = BlockBuilder(state, context, cache, header.proposer_index, header.time_ms, decoded)
    for index, tx_bytes in enumerate(block.txs):
        try:
            builder.add_or_raise(tx_bytes)
        except TxInvalid as exc:
            raise BlockInvalid(exc.reason, f"txs[{index}]: {exc.message}") from None
    diff = builder.close()
    hashes = builder.hashes
    block_hash = get_block_hash(header)
    new_state = apply_diff(state, diff, header, block_hash)
    if new_state.state_root != header.state_root:
        raise BlockInvalid(
            REASON_STATE_ROOT,
            f"header state_root {header.state_root.hex()[:16]}, computed "
            f"{new_state.state_root.hex()[:16]}",
        )
    return AppliedBlock(new_state, MappingProxyType(diff), block_hash, tuple(hashes), block)


def build_block(
    state: State,
    txs: Iterable[bytes],
    context: ChainContext,
    proposer_index: int,
    view: int,
    time_ms: int,
    cache: SignatureCache | None = None,
) -> BuiltBlock:
    """The proposer's block on ``state``: the txs that apply in order, both roots filled in.

    ``time_ms`` is raised to the parent's time if the proposer's clock is behind.
    """
    builder = BlockBuilder(state, context, cache, proposer_index, time_ms)
    for tx_bytes in txs:
        builder.add_tx_bytes(tx_bytes)
    return builder.finish(view)


class BlockBuilder:
    """A proposer's block, one tx at a time, each applied on the block's own context
    (height, time, proposer) as it is added; ``finish`` adds the block hooks and roots.

    The mempool's reap adds its txs (already decoded, signature cached) here and the
    block is finished from the same writer: the txs are applied once, not once to choose
    them and again to build (that second pass was ~10% of a primary's CPU under load).
    ``apply_block`` runs its txs through ``add_or_raise`` too, so the proposer and the
    validators share one tx step and cannot disagree on a block.
    """

    def __init__(
        self,
        state: State,
        context: ChainContext,
        cache: SignatureCache | None = None,
        proposer_index: int = 0,
        time_ms: int = 0,
        decoded: TxLookup | None = None,
    ) -> None:
        self._state = state
        self._writer = StateWriter(state.entries)
        self._context = context
        self._cache = cache
        self._decoded = decoded
        self._tx_context = TxContext(
            context.chain_id, state.height + 1, max(time_ms, state.last_block_time_ms),
            proposer_index,
        )
        self._kept: list[bytes] = []
        self.hashes: list[bytes] = []
        self._seen: set[bytes] = set()
        self._dropped: list[tuple[bytes, str]] = []
        self._size_bytes = 0
        self._finished = False

    def __len__(self) -> int:
        return len(self._kept)

    def try_add(self, tx: Transaction, tx_hash: bytes, tx_bytes: bytes) -> str | None:
        """Apply ``tx`` (decoded from ``tx_bytes``, whose hash is ``tx_hash``) if it
        applies: None, or the reason it does not (then nothing changed)."""
        assert not self._finished, "a finished builder takes no more txs"
        try:
            self._check_room(tx_bytes)
            _check_decoded_tx(tx, tx_hash, tx_bytes, self._seen, self._context, self._cache)
            process_tx(self._writer, tx, self._tx_context)
        except TxInvalid as exc:
            return exc.reason
        self._keep(tx_bytes, tx_hash)
        return None

    def add_tx_bytes(self, tx_bytes: bytes) -> str | None:
        """Decode, check and apply one tx; a tx that fails is left out and recorded."""
        try:
            self.add_or_raise(tx_bytes)
        except TxInvalid as exc:
            self._dropped.append((tx_bytes, exc.reason))
            return exc.reason
        return None

    def add_or_raise(self, tx_bytes: bytes) -> None:
        """The one tx step: the block's limits, decode, dedup, signature, then the state
        transition; TxInvalid if the tx cannot go in (the writer's journal has undone
        its writes, so nothing changed)."""
        assert not self._finished, "a finished builder takes no more txs"
        self._check_room(tx_bytes)
        tx, tx_hash = _check_tx(tx_bytes, self._seen, self._context, self._cache, self._decoded)
        process_tx(self._writer, tx, self._tx_context)
        self._keep(tx_bytes, tx_hash)

    def _check_room(self, tx_bytes: bytes) -> None:
        """Room for one more tx; 1 KiB of the size limit is headroom for the header and
        the length prefixes."""
        limits = self._context.limits
        if len(self._kept) >= limits.block_txs_max:
            raise TxInvalid(REASON_TOO_LARGE, f"over {limits.block_txs_max} txs")
        if self._size_bytes + 4 + len(tx_bytes) + 1024 > limits.block_size_max_bytes:
            raise TxInvalid(REASON_TOO_LARGE, "block would exceed its size limit")

    def _keep(self, tx_bytes: bytes, tx_hash: bytes) -> None:
        self._kept.append(tx_bytes)
        self.hashes.append(tx_hash)
        self._seen.add(tx_hash)
        self._size_bytes += 4 + len(tx_bytes)

    def close(self) -> Diff:
        """End the block: apply the block hooks and return every entry it changed."""
        assert not self._finished, "a builder closes once"
        self._finished = True
        process_block_hooks(self._writer, self._tx_context, self._state.last_block_hash)
        return self._writer.get_diff()

    def finish(self, view: int) -> BuiltBlock:
        """The block of the txs added so far, with the block hooks applied and both roots."""
        diff = self.close()
        state, tx_context = self._state, self._tx_context
        partial = BlockHeader(
            chain_id=self._context.chain_id,
            height=tx_context.height,
            view=view,
            parent_hash=state.last_block_hash,
            tx_root=compute_tx_root(self._kept),
            state_root=b"\x00" * 32,
            proposer_index=tx_context.proposer_index,
            time_ms=tx_context.time_ms,
        )
        verify_block_header(state, partial, self._context)
        new_state = apply_diff(state, diff, partial, b"\x00" * 32)
        header = dataclasses.replace(partial, state_root=new_state.state_root)
        block_hash = get_block_hash(header)
        final_state = State(
            tx_context.height, block_hash, tx_context.time_ms, new_state.entries,
            new_state._leaf_hashes,
            new_state.merkle_levels,
        )
        block = Block(header, tuple(self._kept))
        applied = AppliedBlock(
            final_state, MappingProxyType(diff), block_hash, tuple(self.hashes), block
        )
        return BuiltBlock(block, applied, tuple(self._dropped))


__all__ = [
    "Account",
    "AppliedBlock",
    "BLOCK_HOOKS",
    "BlockBuilder",
    "BlockHook",
    "GENESIS_HOOKS",
    "GenesisHook",
    "BlockInvalid",
    "BuiltBlock",
    "ChainContext",
    "State",
    "StateWriter",
    "SignatureCache",
    "TX_PROCESSORS",
    "TxContext",
    "TxInvalid",
    "TxLookup",
    "apply_block",
    "apply_diff",
    "build_block",
    "compute_state_root",
    "decode_account",
    "encode_account",
    "get_account",
    "get_genesis_state",
    "get_total_supply",
    "get_tx_cost",
    "make_state",
    "process_transfer",
    "process_block_hooks",
    "process_tx",
    "register_block_hook",
    "register_genesis_hook",
    "register_tx_processor",
    "verify_block_header",
    "verify_tx_signature",
]
