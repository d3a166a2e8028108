"""Structure-aware fuzzing of every decoder the node exposes to peers, clients and files.

For each decoder: random valid values are encoded, then mutated (truncate, extend, flip a
bit, overwrite a byte, splice two encodings, rewrite a decoded field - length prefix, count,
kind, version, bool, integer - with an edge value, NaN/Inf into float arrays). Properties:

- only ``DecodeError`` escapes a decoder, whatever the bytes;
- ``decode(encode(x)) == x`` and ``encode(decode(b)) == b`` for valid encodings;
- canonical: when a mutated input still decodes, re-encoding the value gives exactly the
  mutated bytes back (no value has two encodings);
- a tight ``Limits`` is never exceeded by what a decoder returns.

The field map (offset and width of every read) comes from recording ``Reader._need`` while
decoding a valid encoding, so mutations hit real field boundaries, not random offsets only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from consensus.messages import MESSAGE_TYPES
from node.codec import (
    KIND_ARRAY,
    KIND_BLOCK,
    KIND_BLOCK_HEADER,
    KIND_COMMIT_CERTIFICATE,
    KIND_CONSENSUS_MESSAGE,
    KIND_TX,
    VERSION_1,
    DecodeError,
    Limits,
    Reader,
    decode_array,
    decode_block,
    decode_block_header,
    decode_commit_certificate,
    decode_consensus_message,
    decode_tx,
    encode_array,
    encode_block,
    encode_block_header,
    encode_commit_certificate,
    encode_consensus_message,
    encode_tx,
)
from node.config import Config, ConfigError, get_config_document, parse_config
from node.genesis import GenesisError, parse_genesis
from node.mempool import KIND_TX_BATCH, decode_tx_batch, encode_tx_batch
from tests.foundation.strategies import arrays, blocks, certificates, headers, signed_txs
from tests.fuzz._support import dataclass_strategy, fuzz_settings


@dataclasses.dataclass(frozen=True)
class Target:
    """One decoder under fuzz: how to make values, encode them, decode and compare."""

    name: str
    kind: int
    values: st.SearchStrategy[Any]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes, Limits], Any]
    equal: Callable[[Any, Any], bool]


def _arrays_equal(a: Any, b: Any) -> bool:
    return bool(a.shape == b.shape and a.dtype.kind == b.dtype.kind and np.array_equal(a, b))


def _eq(a: Any, b: Any) -> bool:
    return bool(a == b)


consensus_messages = st.one_of(*[dataclass_strategy(cls) for cls in MESSAGE_TYPES])

TARGETS = [
    Target("array", KIND_ARRAY, arrays, encode_array, decode_array, _arrays_equal),
    Target("tx", KIND_TX, signed_txs, encode_tx, decode_tx, _eq),
    Target(
        "block_header",
        KIND_BLOCK_HEADER,
        headers,
        encode_block_header,
        decode_block_header,
        _eq,
    ),
    Target("block", KIND_BLOCK, blocks(), encode_block, decode_block, _eq),
    Target(
        "commit_certificate",
        KIND_COMMIT_CERTIFICATE,
        certificates(),
        encode_commit_certificate,
        decode_commit_certificate,
        _eq,
    ),
    Target(
        "consensus_message",
        KIND_CONSENSUS_MESSAGE,
        consensus_messages,
        encode_consensus_message,
        lambda data, limits: decode_consensus_message(data, MESSAGE_TYPES, limits),
        _eq,
    ),
    Target(
        "tx_batch",
        KIND_TX_BATCH,
        st.lists(st.binary(max_size=40), max_size=5),
        encode_tx_batch,
        decode_tx_batch,
        _eq,
    ),
]
TARGET_IDS = [t.name for t in TARGETS]
DEFAULT = Limits()
TIGHT = Limits(
    tx_size_max_bytes=300,
    block_size_max_bytes=2000,
    block_txs_max=3,
    message_size_max_bytes=2000,
    array_elements_max=20,
    list_count_max=3,
    bytes_size_max_bytes=40,
    string_size_max_bytes=16,
    commit_signatures_max=4,
)


@contextlib.contextmanager
def record_fields() -> Iterator[list[tuple[int, int]]]:
    """Record (offset, width) of every read a decoder makes: the encoding's field map."""
    fields: list[tuple[int, int]] = []
    original = Reader._need

    def need(self: Reader, n: int, field: str) -> int:
        fields.append((self.pos, n))
        return original(self, n, field)

    Reader._need = need  # type: ignore[method-assign]
    try:
        yield fields
    finally:
        Reader._need = original  # type: ignore[method-assign]


def get_field_map(target: Target, data: bytes) -> list[tuple[int, int]]:
    with record_fields() as fields:
        target.decode(data, DEFAULT)
    # array dims are read as one block of 4*ndim bytes: split it into u32s.
    out: list[tuple[int, int]] = []
    for pos, n in fields:
        if n in (1, 2, 4, 8):
            out.append((pos, n))
        elif n % 4 == 0 and n <= 32:
            out += [(pos + i, 4) for i in range(0, n, 4)]
    return out


def _edge_values(width: int, current: int) -> list[int]:
    top = (1 << (8 * width)) - 1
    values = {0, 1, top, top - 1, top >> 1, (top >> 1) + 1, 0x10000, 0xFFFF}
    values |= {current + 1, current - 1, current * 2, current + 0x100}
    return sorted(v for v in values if 0 <= v <= top)


@st.composite
def mutate(draw: st.DrawFn, data: bytes, other: bytes, fields: list[tuple[int, int]]) -> bytes:
    """One structure-aware mutation of a valid encoding (``other``: a second one to splice)."""
    op = draw(
        st.sampled_from(
            ["field", "field", "field", "truncate", "extend", "flip", "byte", "splice", "header"]
        )
    )
    buf = bytearray(data)
    if op == "field" and fields:
        pos, width = draw(st.sampled_from(fields))
        current = int.from_bytes(buf[pos : pos + width], "little")
        value = draw(st.sampled_from(_edge_values(width, current)) | st.integers(0, 255))
        value &= (1 << (8 * width)) - 1
        buf[pos : pos + width] = value.to_bytes(width, "little")
    elif op == "truncate":
        del buf[draw(st.integers(0, max(0, len(buf) - 1))) :]
    elif op == "extend":
        buf += draw(st.binary(min_size=1, max_size=16))
    elif op == "flip" and buf:
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] ^= 1 << draw(st.integers(0, 7))
    elif op == "byte" and buf:
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    elif op == "splice":
        cut_a = draw(st.integers(0, len(data)))
        cut_b = draw(st.integers(0, len(other)))
        buf = bytearray(data[:cut_a] + other[cut_b:])
    elif op == "header" and len(buf) >= 2:
        buf[draw(st.integers(0, min(2, len(buf) - 1)))] = draw(st.integers(0, 255))
    return bytes(buf)


def check_decodes_canonically(target: Target, data: bytes, limits: Limits) -> Any | None:
    """Decode; only DecodeError may escape; a decoded value must re-encode to ``data``."""
    try:
        value = target.decode(data, limits)
    except DecodeError as exc:
        assert str(exc), "a DecodeError must say why"
        return None
    assert target.encode(value) == data, f"{target.name}: second encoding of one value"
    return value


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_roundtrip_and_canonical_reencoding(target: Target) -> None:
    @fuzz_settings(40)
    @given(value=target.values)
    def run(value: Any) -> None:
        data = target.encode(value)
        decoded = target.decode(data, DEFAULT)
        assert target.equal(decoded, value)
        assert target.encode(decoded) == data

    run()


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_mutated_encodings_fail_cleanly_or_stay_canonical(target: Target) -> None:
    @fuzz_settings(150)
    @given(data=st.data(), value=target.values, other=target.values)
    def run(data: st.DataObject, value: Any, other: Any) -> None:
        encoded, other_encoded = target.encode(value), target.encode(other)
        fields = get_field_map(target, encoded)
        mutated = encoded
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            mutated = data.draw(mutate(mutated, other_encoded, fields), label="mutated")
        decoded = check_decodes_canonically(target, mutated, DEFAULT)
        tight = check_decodes_canonically(target, mutated, TIGHT)
        if tight is not None:
            # Anything a tight limit admits, the default admits too, as the same value.
            assert decoded is not None and target.equal(decoded, tight)

    run()


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_random_bytes_behind_a_valid_header(target: Target) -> None:
    """Random bodies after the right kind and version bytes get past the first checks."""

    @fuzz_settings(150)
    @given(body=st.binary(max_size=300), raw=st.booleans())
    @example(body=b"\xff\xff\xff\xff" * 4, raw=False)
    @example(body=b"\x0a\x08" + b"\xff\xff\xff\xff" * 8, raw=False)
    def run(body: bytes, raw: bool) -> None:
        data = body if raw else bytes((target.kind, VERSION_1)) + body
        check_decodes_canonically(target, data, DEFAULT)
        check_decodes_canonically(target, data, TIGHT)

    run()


@fuzz_settings(60)
@given(data=st.data(), value=arrays.filter(lambda a: a.dtype.kind == "f" and a.size > 0))
def test_nan_and_inf_in_float_arrays_are_refused(data: st.DataObject, value: Any) -> None:
    encoded = bytearray(encode_array(value))
    itemsize = value.dtype.itemsize
    start = len(encoded) - value.size * itemsize
    index = data.draw(st.integers(0, value.size - 1))
    special = data.draw(st.sampled_from([math.nan, math.inf, -math.inf, -math.nan]))
    if itemsize == 4:
        raw = struct.pack("<f", special)
        # A signalling NaN and a NaN with payload bits are NaNs too.
        raw = data.draw(st.sampled_from([raw, b"\x01\x00\x80\x7f", b"\xff\xff\xff\xff"]))
    else:
        raw = struct.pack("<d", special)
        raw = data.draw(st.sampled_from([raw, b"\x01" + b"\x00" * 5 + b"\xf0\x7f"]))
    encoded[start + index * itemsize : start + (index + 1) * itemsize] = raw
    with pytest.raises(DecodeError, match="NaN or Inf"):
        decode_array(bytes(encoded))


@fuzz_settings(200)
@given(data=st.binary(max_size=200))
def test_every_decoder_on_random_bytes(data: bytes) -> None:
    for target in TARGETS:
        check_decodes_canonically(target, data, DEFAULT)


def test_decoders_refuse_non_bytes_input() -> None:
    for target in TARGETS:
        for junk in (None, 7, "text", [1, 2], {"a": 1}):
            with pytest.raises(DecodeError):
                target.decode(junk, DEFAULT)  # type: ignore[arg-type]


# --- documents: genesis and config ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _genesis_document() -> dict[str, Any]:
    return {
        "chain_id": "bcfl-fuzz",
        "genesis_time_ms": 1_700_000_000_000,
        "validators": [
            {
                "name": f"hospital{i}",
                "public_key": f"{i + 1:02x}" * 32,
                "p2p_host": "127.0.0.1",
                "p2p_port": 26656 + i,
                "api_host": "127.0.0.1",
                "api_port": 8080 + i,
            }
            for i in range(4)
        ],
        "members": [{"name": "clinic", "public_key": "aa" * 32, "role": "trainer"}],
        "balances": {"aa" * 32: 1000},
        "fl": {"rounds": 3},
    }


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of a JSON-like document (the root is ``()``)."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, child in doc.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(doc, list):
        for i, child in enumerate(doc):
            out += _paths(child, (*prefix, i))
    return out


@st.composite
def mutated_documents(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            doc = draw(json_values) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return doc


@fuzz_settings(150)
@given(document=mutated_documents(_genesis_document()) | json_values)
def test_parse_genesis_only_raises_genesis_error(document: Any) -> None:
    try:
        genesis = parse_genesis(document)
    except GenesisError as exc:
        assert str(exc)
        return
    assert genesis.n >= 3 * genesis.f + 1 and genesis.f >= 1


@fuzz_settings(150)
@given(document=mutated_documents(get_config_document(Config())) | json_values)
def test_parse_config_only_raises_config_error(document: Any) -> None:
    try:
        config = parse_config(document)
    except ConfigError as exc:
        assert str(exc)
        return
    # What parsed is a valid config: it survives its own round trip.
    assert parse_config(get_config_document(config)) == config
