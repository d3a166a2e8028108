"""Protocols the node implements for the core: signing/verification and block validation."""

from __future__ import annotations

from typing import Protocol

from consensus.messages import SignedBody


class Authenticator(Protocol):
    """Signs message bodies as this replica and verifies any validator's signature.

    ``body`` is a frozen message dataclass with its ``signature`` field empty; the node
    signs ``domain_tag || chain_id || canonical_encoding(body)`` with Ed25519.
    """

    def sign(self, body: SignedBody) -> bytes: ...

    def verify(self, signer: int, body: SignedBody, signature: bytes) -> bool: ...


class BlockValidator(Protocol):
    """Checks a block payload for slot ``seq`` whose parent is ``parent_digest``.

    Returns the block's 32-byte digest, or a ``str`` naming why it is rejected.
    """

    def validate_block(self, seq: int, parent_digest: bytes, payload: bytes) -> bytes | str: ...
