from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.crypto import (
    ALL_DOMAINS,
    DOMAIN_CONSENSUS,
    DOMAIN_TX,
    EMPTY_MERKLE_ROOT,
    compute_merkle_root,
    compute_signing_bytes,
    sign,
    verify_signature,
)
from node.keys import KeyPair

KEY = KeyPair.from_seed(bytes(range(32)))


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written recursively as in the RFC."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    left, right = _reference_root(leaves[:k]), _reference_root(leaves[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


@given(st.lists(st.binary(max_size=8), max_size=40))
@settings(max_examples=150)
def test_merkle_root_matches_rfc6962(leaves: list[bytes]) -> None:
    assert compute_merkle_root(leaves) == _reference_root(leaves)


def test_merkle_edge_cases() -> None:
    assert compute_merkle_root([]) == EMPTY_MERKLE_ROOT == hashlib.sha256(b"").digest()
    a, b, c = b"a", b"b", b"c"
    # No last-leaf duplication: [a, b, c] and [a, b, c, c] differ.
    assert compute_merkle_root([a, b, c]) != compute_merkle_root([a, b, c, c])
    # A leaf can't masquerade as an inner node.
    inner = hashlib.sha256(b"\x00a").digest() + hashlib.sha256(b"\x00b").digest()
    assert compute_merkle_root([inner]) != compute_merkle_root([a, b])
    assert compute_merkle_root([a, b]) != compute_merkle_root([b, a])


def test_domains_are_distinct() -> None:
    assert len(set(ALL_DOMAINS)) == len(ALL_DOMAINS)


def test_signing_bytes_are_length_prefixed() -> None:
    # Shifting a byte between domain and chain id must change the signed bytes.
    assert compute_signing_bytes(b"ab", "c", b"") != compute_signing_bytes(b"a", "bc", b"")
    assert compute_signing_bytes(b"a", "b", b"c") != compute_signing_bytes(b"a", "bc", b"")
    with pytest.raises(ValueError):
        compute_signing_bytes(b"", "chain", b"x")
    with pytest.raises(ValueError):
        compute_signing_bytes(DOMAIN_TX, "", b"x")


@given(payload=st.binary(min_size=1, max_size=64), position=st.integers(0, 63))
@settings(max_examples=40)
def test_signature_binds_payload_chain_and_domain(payload: bytes, position: int) -> None:
    signature = sign(KEY, DOMAIN_TX, "chain-a", payload)
    assert verify_signature(KEY.public_key, DOMAIN_TX, "chain-a", payload, signature)
    flipped = bytearray(payload)
    flipped[position % len(payload)] ^= 0x01
    assert not verify_signature(KEY.public_key, DOMAIN_TX, "chain-a", bytes(flipped), signature)
    assert not verify_signature(KEY.public_key, DOMAIN_TX, "chain-b", payload, signature)
    assert not verify_signature(KEY.public_key, DOMAIN_CONSENSUS, "chain-a", payload, signature)
    bad_signature = bytearray(signature)
    bad_signature[position] ^= 0x80
    assert not verify_signature(KEY.public_key, DOMAIN_TX, "chain-a", payload, bytes(bad_signature))
    other = KeyPair.from_seed(bytes(32))
    assert not verify_signature(other.public_key, DOMAIN_TX, "chain-a", payload, signature)


def test_verify_signature_rejects_malformed_inputs() -> None:
    signature = sign(KEY, DOMAIN_TX, "c", b"x")
    assert not verify_signature(KEY.public_key[:31], DOMAIN_TX, "c", b"x", signature)
    assert not verify_signature(KEY.public_key, DOMAIN_TX, "c", b"x", signature[:63])
    assert not verify_signature(KEY.public_key, b"", "c", b"x", signature)
    assert not verify_signature(KEY.public_key, DOMAIN_TX, "\ud800", b"x", signature)
