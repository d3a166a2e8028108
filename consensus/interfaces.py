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
    """Checks blocks for the core; a block's digest is the hash of its header.

    ``validate_block`` checks a payload for slot ``seq`` whose parent is ``parent_digest``;
    ``validate_header`` checks only a header (what a VIEW-CHANGE carries) for the same.
    Both return the block's 32-byte digest, or a ``str`` naming why it is rejected.
    ``get_block_header`` returns the header of a payload ``validate_block`` accepted.
    """

    def validate_block(self, seq: int, parent_digest: bytes, payload: bytes) -> bytes | str: ...

    def validate_header(self, seq: int, parent_digest: bytes, header: bytes) -> bytes | str: ...

    def get_block_header(self, payload: bytes) -> bytes: ...
