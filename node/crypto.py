"""SHA-256 hashing, Merkle roots, and domain-tagged Ed25519 signatures.

Merkle roots follow RFC 6962 (Certificate Transparency), section 2.1:

- the root of the empty list is ``sha256(b"")``;
- a leaf hashes as ``sha256(0x00 || leaf)``;
- an inner node hashes as ``sha256(0x01 || left || right)``;
- a list of n > 1 leaves splits at k, the largest power of two below n:
  ``root(leaves) = node(root(leaves[:k]), root(leaves[k:]))``.

Odd counts are therefore never padded by duplicating the last leaf, which is
what makes Bitcoin's tree ambiguous (CVE-2012-2459): here, ``[a, b, c]`` and
``[a, b, c, c]`` have different roots. The bottom-up loop below pairs
neighbours and carries an unpaired last node up a level unchanged, which builds
exactly the RFC 6962 tree; a test checks it against the recursive definition.
The 0x00/0x01 prefixes stop a leaf from being passed off as an inner node.

Everything signed goes through :func:`compute_signing_bytes`: a length-prefixed
domain tag, a length-prefixed chain id, then the payload. A signature made for
one purpose (say, a consensus vote) or one chain therefore never verifies as
another purpose or on another chain.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from node.keys import PUBLIC_KEY_SIZE_BYTES, SIGNATURE_SIZE_BYTES, KeyPair, verify_raw

HASH_SIZE_BYTES = 32

# One domain per purpose. A new purpose gets a new tag, never a reused one.
DOMAIN_TX = b"bcfl/tx/v1"
DOMAIN_CONSENSUS = b"bcfl/consensus/v1"
DOMAIN_BLOCK = b"bcfl/block/v1"
DOMAIN_CHECKPOINT = b"bcfl/checkpoint/v1"
DOMAIN_EVIDENCE = b"bcfl/evidence/v1"
DOMAIN_ATTESTATION = b"bcfl/attestation/v1"
DOMAIN_HANDSHAKE = b"bcfl/handshake/v1"

ALL_DOMAINS: tuple[bytes, ...] = (
    DOMAIN_TX,
    DOMAIN_CONSENSUS,
    DOMAIN_BLOCK,
    DOMAIN_CHECKPOINT,
    DOMAIN_EVIDENCE,
    DOMAIN_ATTESTATION,
    DOMAIN_HANDSHAKE,
)
assert len(set(ALL_DOMAINS)) == len(ALL_DOMAINS), "domain tags must be distinct"

DOMAIN_SIZE_MAX_BYTES = 255
CHAIN_ID_SIZE_MAX_BYTES = 255

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
EMPTY_MERKLE_ROOT = hashlib.sha256(b"").digest()

_U32 = struct.Struct("<I")


def sha256(data: bytes) -> bytes:
    """The 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def compute_merkle_leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def compute_merkle_node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def compute_merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 Merkle root of ``leaves`` (see the module docstring)."""
    if not leaves:
        return EMPTY_MERKLE_ROOT
    level = [compute_merkle_leaf_hash(leaf) for leaf in leaves]
    # Each pass halves the level (rounding up): at most ~64 passes for any list.
    while len(level) > 1:
        pairs = len(level) // 2
        next_level = [
            compute_merkle_node_hash(level[2 * i], level[2 * i + 1]) for i in range(pairs)
        ]
        if len(level) % 2 == 1:
            next_level.append(level[-1])
        level = next_level
    return level[0]


def compute_signing_bytes(domain: bytes, chain_id: str, payload: bytes) -> bytes:
    """``u32 len || domain || u32 len || chain_id (UTF-8) || payload``: what gets signed."""
    chain = chain_id.encode("utf-8")
    if not 0 < len(domain) <= DOMAIN_SIZE_MAX_BYTES:
        raise ValueError(f"domain tag must be 1..{DOMAIN_SIZE_MAX_BYTES} bytes, got {len(domain)}")
    if not 0 < len(chain) <= CHAIN_ID_SIZE_MAX_BYTES:
        raise ValueError(f"chain id must be 1..{CHAIN_ID_SIZE_MAX_BYTES} bytes, got {len(chain)}")
    return b"".join((_U32.pack(len(domain)), domain, _U32.pack(len(chain)), chain, payload))


def sign(key: KeyPair, domain: bytes, chain_id: str, payload: bytes) -> bytes:
    """``key``'s 64-byte Ed25519 signature of ``payload`` for ``domain`` on ``chain_id``."""
    signature = key.sign_raw(compute_signing_bytes(domain, chain_id, payload))
    assert len(signature) == SIGNATURE_SIZE_BYTES
    return signature


def verify_signature(
    public_key: bytes, domain: bytes, chain_id: str, payload: bytes, signature: bytes
) -> bool:
    """True iff ``signature`` is ``public_key``'s signature made by :func:`sign` with these."""
    if len(public_key) != PUBLIC_KEY_SIZE_BYTES or len(signature) != SIGNATURE_SIZE_BYTES:
        return False
    try:
        message = compute_signing_bytes(domain, chain_id, payload)
    except (ValueError, UnicodeEncodeError):
        return False
    return verify_raw(public_key, message, signature)
