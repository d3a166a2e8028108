"""What the node plugs into the consensus core and the API: signing, block checks, the service.

- :class:`NodeAuthenticator` signs ``DOMAIN_CONSENSUS || chain_id || encode(body)`` with the
  validator key (Ed25519) and verifies any validator's signature the same way.
- :class:`BlockChecker` is the core's ``BlockValidator``. A payload must decode strictly for
  this chain, sit at ``height == seq`` on ``parent_digest``, name a proposer in range and
  carry valid signatures (through the shared :class:`~node.ledger.SignatureCache`, so each
  tx is verified once per node). When the parent's post-state is known (the committed tip,
  or a block this node already checked or built), the block is also applied in full, so an
  honest replica never prepares a block that fails at delivery; the outcome is kept by
  digest (bounded) and reused at delivery instead of applying the block twice.
- :class:`BridgeService` is the API's ``NodeService``: each call goes over the runtime's
  bounded bridge to the trio side; a full bridge or a stopping node answers ``Overloaded``
  (HTTP 503).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import node.evidence  # noqa: F401  registers the evidence tx and its genesis entry
import node.learning  # noqa: F401  registers the learning txs and hooks before any state is built
from consensus.messages import SignedBody
from node import runtime
from node.codec import (
    DEFAULT_LIMITS,
    Block,
    BlockHeader,
    DecodeError,
    Limits,
    decode_block,
    decode_block_header,
    decode_block_header_of,
    decode_tx,
    encode_block_header,
    encode_consensus_message,
    get_block_hash,
    get_tx_hash,
    verify_block_tx_root,
)
from node.crypto import DOMAIN_CONSENSUS, sign, verify_signature
from node.keys import KeyPair
from node.ledger import (
    REASON_PARENT_HASH,
    REASON_TX_ROOT,
    AppliedBlock,
    BlockInvalid,
    ChainContext,
    SignatureCache,
    State,
    TxLookup,
    apply_block,
    verify_tx_signature,
)
from node.service import (
    AccountInfo,
    BlockInfo,
    EventHub,
    EventSubscription,
    Metrics,
    NodeStatus,
    Overloaded,
    SubmitResult,
    TxStatus,
)

APPLIED_BLOCKS_MAX = 128


class NodeAuthenticator:
    """Ed25519 over the canonical encoding, domain-tagged with the chain id."""

    def __init__(self, key: KeyPair, chain_id: str, public_keys: Sequence[bytes]) -> None:
        self.key = key
        self.chain_id = chain_id
        self.public_keys = tuple(public_keys)
        self.verified = 0
        self.rejected = 0

    def sign(self, body: SignedBody) -> bytes:
        return sign(self.key, DOMAIN_CONSENSUS, self.chain_id, encode_consensus_message(body))

    def verify(self, signer: int, body: SignedBody, signature: bytes) -> bool:
        if not 0 <= signer < len(self.public_keys):
            self.rejected += 1
            return False
        try:
            payload = encode_consensus_message(body)
        except ValueError:  # EncodeError: a peer's value with no canonical encoding
            self.rejected += 1
            return False
        ok = verify_signature(
            self.public_keys[signer], DOMAIN_CONSENSUS, self.chain_id, payload, signature
        )
        if ok:
            self.verified += 1
        else:
            self.rejected += 1
        return ok


class BlockChecker:
    """The core's BlockValidator, plus the post-states of blocks it checked (by digest)."""

    def __init__(
        self,
        context: ChainContext,
        signature_cache: SignatureCache,
        tip: State,
        block_size_max_bytes: int,
        applied_max: int = APPLIED_BLOCKS_MAX,
        decoded: TxLookup | None = None,
    ) -> None:
        assert applied_max > 0
        self.context = context
        self.signature_cache = signature_cache
        self.decoded = decoded  # txs the mempool already decoded, by hash
        self.tip = tip
        self.block_size_max_bytes = block_size_max_bytes
        self.applied_max = applied_max
        self._applied: OrderedDict[bytes, AppliedBlock] = OrderedDict()
        self.rejections: dict[str, int] = {}
        self.stateless_checks = 0

    # --- BlockValidator ------------------------------------------------------------

    def validate_block(self, seq: int, parent_digest: bytes, payload: bytes) -> bytes | str:
        return self._count_rejection(self._check(seq, parent_digest, payload))

    def _count_rejection(self, result: bytes | str) -> bytes | str:
        if isinstance(result, str):
            key = result.split(":", 1)[0]
            self.rejections[key] = self.rejections.get(key, 0) + 1
        return result

    def validate_header(self, seq: int, parent_digest: bytes, header: bytes) -> bytes | str:
        """A header alone, as a VIEW-CHANGE carries it: well formed, on this chain, for
        slot ``seq`` over ``parent_digest``. Its transactions were checked by the replicas
        whose votes come with it."""
        try:
            decoded = decode_block_header(header, self.context.limits, self.context.chain_id)
        except DecodeError as exc:
            result: bytes | str = f"decode: {exc}"
        else:
            result = self._check_header(seq, parent_digest, decoded) or get_block_hash(decoded)
        return self._count_rejection(result)

    def get_block_header(self, payload: bytes) -> bytes:
        return encode_block_header(decode_block_header_of(payload, self.context.limits))

    def _check_header(self, seq: int, parent_digest: bytes, header: BlockHeader) -> str | None:
        if header.height != seq:
            return f"height: block height {header.height} in slot {seq}"
        if header.parent_hash != parent_digest:
            return f"{REASON_PARENT_HASH}: the block's parent is not the slot's parent"
        if not 0 <= header.proposer_index < self.context.validator_count:
            return f"proposer_index: {header.proposer_index} out of range"
        return None

    def _check(self, seq: int, parent_digest: bytes, payload: bytes) -> bytes | str:
        if len(payload) > self.block_size_max_bytes:
            return f"too_large: {len(payload)} bytes over {self.block_size_max_bytes}"
        try:
            # The tx root is checked below, once: by apply_block or before any other use.
            block = decode_block(
                payload, self.context.limits, self.context.chain_id, False, check_tx_root=False
            )
        except DecodeError as exc:
            return f"decode: {exc}"
        header = block.header
        problem = self._check_header(seq, parent_digest, header)
        if problem is not None:
            return problem
        digest = get_block_hash(header)
        parent_state = self.get_state(parent_digest)
        if parent_state is not None and digest not in self._applied:
            try:  # checks the tx root too
                applied = apply_block(
                    parent_state, block, self.context, self.signature_cache, self.decoded
                )
            except BlockInvalid as exc:
                return f"{exc.reason}: {exc}"
            self.remember(applied)
            return digest
        # The header of a block already applied, or no post-state to apply it on: the
        # txs must still be the ones the header's root commits to.
        if not verify_block_tx_root(block):
            return f"{REASON_TX_ROOT}: tx_root does not match the block's transactions"
        if digest in self._applied:
            return digest
        self.stateless_checks += 1
        return self._check_txs_stateless(block) or digest

    def _check_txs_stateless(self, block: Block) -> str | None:
        seen: set[bytes] = set()
        for index, tx_bytes in enumerate(block.txs):
            tx_hash = get_tx_hash(tx_bytes)
            if tx_hash in seen:
                return f"duplicate_tx: txs[{index}]"
            seen.add(tx_hash)
            try:
                tx = decode_tx(tx_bytes, self.context.limits)
            except DecodeError as exc:
                return f"decode: txs[{index}]: {exc}"
            if not verify_tx_signature(
                self.context.chain_id, tx, tx_hash, self.signature_cache, tx_bytes
            ):
                return f"signature: txs[{index}]"
        return None

    # --- post-states ---------------------------------------------------------------

    def get_state(self, digest: bytes) -> State | None:
        """The state after block ``digest``, if known (the tip or a checked/built block)."""
        if digest == self.tip.last_block_hash:
            return self.tip
        applied = self._applied.get(digest)
        return None if applied is None else applied.state

    def get_applied(self, digest: bytes) -> AppliedBlock | None:
        return self._applied.get(digest)

    def remember(self, applied: AppliedBlock) -> None:
        self._applied[applied.block_hash] = applied
        self._applied.move_to_end(applied.block_hash)
        while len(self._applied) > self.applied_max:
            self._applied.popitem(last=False)

    def set_tip(self, state: State) -> None:
        """A block was committed: forget post-states at or below its height."""
        self.tip = state
        stale = [d for d, a in self._applied.items() if a.state.height <= state.height]
        for digest in stale:
            del self._applied[digest]

    def __len__(self) -> int:
        return len(self._applied)


class BridgeService:
    """``NodeService`` over the runtime bridge (asyncio side); events come from ``hub``."""

    def __init__(self, bridge: runtime.Bridge, hub: EventHub) -> None:
        self.bridge = bridge
        self.hub = hub

    async def _call(self, kind: str, payload: Any = None) -> Any:
        try:
            return await self.bridge.call(kind, payload)
        except runtime.Overloaded as exc:
            raise Overloaded(str(exc)) from None
        except runtime.NodeStopped as exc:
            raise Overloaded(f"node is stopping: {exc}") from None

    async def submit_tx(self, tx_bytes: bytes) -> SubmitResult:
        result: SubmitResult = await self._call("submit_tx", tx_bytes)
        return result

    async def submit_txs(self, txs: Sequence[bytes]) -> list[SubmitResult]:
        results: list[SubmitResult] = await self._call("submit_txs", list(txs))
        return results

    async def get_tx(self, tx_hash: bytes) -> TxStatus | None:
        result: TxStatus | None = await self._call("get_tx", tx_hash)
        return result

    async def get_block(self, height: int | None) -> BlockInfo | None:
        result: BlockInfo | None = await self._call("get_block", height)
        return result

    async def get_status(self) -> NodeStatus:
        result: NodeStatus = await self._call("get_status")
        return result

    async def get_account(self, account_id: bytes) -> AccountInfo:
        result: AccountInfo = await self._call("get_account", account_id)
        return result

    def subscribe_events(self, queue_size_max: int) -> EventSubscription:
        return self.hub.subscribe(queue_size_max)

    async def get_metrics(self) -> Metrics:
        result: Metrics = await self._call("get_metrics")
        return result

    async def get_state(self) -> State:
        """The committed state (immutable), for the learning routes (node.learning_api)."""
        result: State = await self._call("get_state")
        return result


__all__ = ["BlockChecker", "BridgeService", "NodeAuthenticator", "DEFAULT_LIMITS", "Limits"]
