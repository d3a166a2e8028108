"""Shared builders for the ledger, mempool and chain store tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from node.codec import (
    Block,
    BlockHeader,
    Transaction,
    Transfer,
    compute_tx_root,
    encode_tx,
    sign_tx,
)
from node.genesis import Genesis, ValidatorInfo
from node.keys import KeyPair
from node.ledger import ChainContext, State

CHAIN_ID = "test-chain"
KEYS = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(8)]
VALIDATORS = tuple(
    ValidatorInfo(
        f"v{i}",
        KeyPair.from_seed(bytes([100 + i]) * 32).public_key,
        "127.0.0.1",
        26000 + i,
        "127.0.0.1",
        27000 + i,
    )
    for i in range(4)
)


def make_genesis(
    balances: dict[int, int], chain_id: str = CHAIN_ID, time_ms: int = 1000
) -> Genesis:
    """Genesis where ``KEYS[i]`` holds ``balances[i]``."""
    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=time_ms,
        validators=VALIDATORS,
        balances=tuple(sorted((KEYS[i].public_key, amount) for i, amount in balances.items())),
    )


def make_context(genesis: Genesis) -> ChainContext:
    return ChainContext.from_genesis(genesis)


def make_transfer(
    sender: int, nonce: int, recipient: int | bytes, amount: int, chain_id: str = CHAIN_ID
) -> bytes:
    to = KEYS[recipient].public_key if isinstance(recipient, int) else recipient
    unsigned = Transaction(KEYS[sender].public_key, nonce, Transfer(to, amount))
    return encode_tx(sign_tx(KEYS[sender], chain_id, unsigned))


def make_block(state: State, txs: list[bytes], **overrides: Any) -> Block:
    """A block on ``state`` with a correct tx root and a zero state root unless overridden."""
    header = BlockHeader(
        chain_id=CHAIN_ID,
        height=state.height + 1,
        view=0,
        parent_hash=state.last_block_hash,
        tx_root=compute_tx_root(txs),
        state_root=b"\x00" * 32,
        proposer_index=0,
        time_ms=state.last_block_time_ms + 1,
    )
    return Block(dataclasses.replace(header, **overrides), tuple(txs))
