"""An in-memory NodeService for the API tests: a toy chain the tests drive by hand.

Transfers are checked (signature, nonce, balance) and applied when the test
calls :meth:`FakeNodeService.commit_block`, which also publishes the block and
tx events. Flags make it misbehave on demand: ``overloaded`` raises
``Overloaded`` from every call, ``fail`` raises an unexpected error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from node.codec import (
    Block,
    BlockHeader,
    CommitCertificate,
    CommitSignature,
    DecodeError,
    Transfer,
    compute_tx_root,
    decode_tx,
    encode_block,
    get_block_hash,
    get_tx_hash,
    verify_tx,
)
from node.crypto import DOMAIN_BLOCK, sign
from node.keys import KeyPair
from node.service import (
    REJECT_BAD_NONCE,
    REJECT_BAD_SIGNATURE,
    REJECT_INSUFFICIENT_BALANCE,
    REJECT_INVALID_TX,
    REJECT_MEMPOOL_FULL,
    AccountInfo,
    BlockEvent,
    BlockInfo,
    EventHub,
    EventSubscription,
    Histogram,
    Metrics,
    NodeStatus,
    Overloaded,
    SubmitResult,
    TxEvent,
    TxStatus,
    ValidatorStatus,
)

ZERO_HASH = bytes(32)


@dataclass
class Account:
    balance: int = 0
    nonce: int = 0


class FakeNodeService:
    def __init__(
        self,
        chain_id: str = "test-chain",
        validators: int = 4,
        balances: dict[bytes, int] | None = None,
        mempool_txs_max: int = 100,
        auto_commit: bool = False,
    ) -> None:
        self.chain_id = chain_id
        self.validator_keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(validators)]
        self.accounts = {key: Account(amount) for key, amount in (balances or {}).items()}
        self.mempool_txs_max = mempool_txs_max
        self.pending: dict[bytes, bytes] = {}  # hash -> encoded tx, in arrival order
        self.committed: dict[bytes, tuple[int, int]] = {}
        self.blocks: list[BlockInfo] = []
        self.hub = EventHub(subscribers_max=8)
        self.overloaded = False
        self.submit_calls = 0
        self.fail = False
        self.hang = False
        self.view = 0
        self.auto_commit = auto_commit  # commit each accepted tx in a block of its own

    def _check(self) -> None:
        if self.overloaded:
            raise Overloaded("bridge channel full")
        if self.fail:
            raise RuntimeError("secret internal detail")

    async def _maybe_hang(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)

    def get_account_state(self, key: bytes) -> Account:
        return self.accounts.get(key, Account())

    def _get_pending_nonce(self, sender: bytes) -> int:
        nonce = self.get_account_state(sender).nonce
        for raw in self.pending.values():
            if decode_tx(raw).sender == sender:
                nonce += 1
        return nonce

    async def submit_txs(self, txs: Sequence[bytes]) -> list[SubmitResult]:
        self.submit_calls += 1
        self._check()  # one bridge request for the whole chunk: overloaded as one
        return [await self.submit_tx(tx_bytes) for tx_bytes in txs]

    async def submit_tx(self, tx_bytes: bytes) -> SubmitResult:
        self._check()
        await self._maybe_hang()
        tx_hash = get_tx_hash(tx_bytes)
        if tx_hash in self.pending or tx_hash in self.committed:
            return SubmitResult(tx_hash, "duplicate")
        try:
            tx = decode_tx(tx_bytes)
        except DecodeError as exc:
            return SubmitResult(tx_hash, "rejected", REJECT_INVALID_TX, str(exc))
        if not verify_tx(self.chain_id, tx):
            return SubmitResult(tx_hash, "rejected", REJECT_BAD_SIGNATURE,
                                "signature does not verify for this chain")
        expected = self._get_pending_nonce(tx.sender)
        if tx.nonce != expected:
            return SubmitResult(tx_hash, "rejected", REJECT_BAD_NONCE,
                                f"nonce {tx.nonce}, expected {expected}")
        if isinstance(tx.body, Transfer) and tx.body.amount > self.get_account_state(
            tx.sender
        ).balance:
            return SubmitResult(tx_hash, "rejected", REJECT_INSUFFICIENT_BALANCE,
                                "balance too low")
        if len(self.pending) >= self.mempool_txs_max:
            return SubmitResult(tx_hash, "rejected", REJECT_MEMPOOL_FULL, "mempool is full")
        self.pending[tx_hash] = tx_bytes
        if self.auto_commit:
            self.commit_block()
        return SubmitResult(tx_hash, "accepted")

    def commit_block(self) -> BlockInfo:
        """Commit every pending tx in a new block, apply it and publish its events."""
        height = len(self.blocks) + 1
        txs = tuple(self.pending.values())
        parent = self.blocks[-1].block_hash if self.blocks else ZERO_HASH
        header = BlockHeader(self.chain_id, height, self.view, parent, compute_tx_root(txs),
                             ZERO_HASH, self.view % len(self.validator_keys), 1_000 * height)
        block = Block(header, txs)
        block_hash = get_block_hash(header)
        signatures = tuple(
            CommitSignature(index, sign(key, DOMAIN_BLOCK, self.chain_id, block_hash))
            for index, key in enumerate(self.validator_keys[:3])
        )
        info = BlockInfo(
            header=header,
            block_hash=block_hash,
            tx_hashes=tuple(self.pending),
            block_bytes=encode_block(block),
            certificate=CommitCertificate(height, self.view, block_hash, signatures),
        )
        for index, raw in enumerate(txs):
            tx = decode_tx(raw)
            sender = self.accounts.setdefault(tx.sender, Account())
            sender.nonce += 1
            if isinstance(tx.body, Transfer):
                sender.balance -= tx.body.amount
                self.accounts.setdefault(tx.body.recipient, Account()).balance += tx.body.amount
            self.committed[get_tx_hash(raw)] = (height, index)
        self.pending.clear()
        self.blocks.append(info)
        self.hub.publish(BlockEvent(height, block_hash, len(txs)))
        for tx_hash, (tx_height, index) in list(self.committed.items()):
            if tx_height == height:
                self.hub.publish(TxEvent(tx_hash, height, index))
        return info

    async def get_tx(self, tx_hash: bytes) -> TxStatus | None:
        self._check()
        if tx_hash in self.pending:
            return TxStatus(tx_hash, "pending")
        if tx_hash in self.committed:
            height, index = self.committed[tx_hash]
            return TxStatus(tx_hash, "committed", height, index)
        return None

    async def get_block(self, height: int | None) -> BlockInfo | None:
        self._check()
        if height is None:
            return self.blocks[-1] if self.blocks else None
        if 1 <= height <= len(self.blocks):
            return self.blocks[height - 1]
        return None

    async def get_status(self) -> NodeStatus:
        self._check()
        await self._maybe_hang()
        me = self.validator_keys[0]
        return NodeStatus(
            chain_id=self.chain_id,
            moniker="node0",
            public_key=me.public_key,
            peer_id="12D3KooWfake",
            validator_index=0,
            height=len(self.blocks),
            latest_block_hash=self.blocks[-1].block_hash if self.blocks else None,
            view=self.view,
            primary_index=self.view % len(self.validator_keys),
            peers_connected=len(self.validator_keys) - 1,
            validators=tuple(
                ValidatorStatus(i, f"node{i}", key.public_key, True)
                for i, key in enumerate(self.validator_keys)
            ),
            catching_up=False,
            mempool_txs=len(self.pending),
        )

    async def get_account(self, account_id: bytes) -> AccountInfo:
        self._check()
        account = self.get_account_state(account_id)
        return AccountInfo(account_id, account.balance, account.nonce)

    def subscribe_events(self, queue_size_max: int) -> EventSubscription:
        self._check()
        return self.hub.subscribe(queue_size_max)

    async def get_metrics(self) -> Metrics:
        self._check()
        return Metrics(
            height=len(self.blocks),
            view=self.view,
            view_changes_total=self.view,
            blocks_committed_total=len(self.blocks),
            txs_committed_total=len(self.committed),
            mempool_txs=len(self.pending),
            mempool_size_bytes=sum(len(raw) for raw in self.pending.values()),
            peers_connected=len(self.validator_keys) - 1,
            consensus_latency=Histogram((0.1, 0.5, 1.0), (2, 5, 6), 7, 3.25),
            messages_dropped_total={"oversize": 2, "bad_signature": 1, 'we"ird\n': 1},
            extra_gauges={"bcfl_fl_round": 3, "bad name!": 1},
        )
