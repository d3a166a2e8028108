from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import codec
from node.codec import (
    KIND_TX,
    VERSION_1,
    Block,
    BlockHeader,
    CommitCertificate,
    CommitSignature,
    DecodeError,
    EncodeError,
    Limits,
    MaxCount,
    MaxSize,
    Size,
    Transaction,
    Transfer,
    Uint,
    compute_tx_root,
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
    encode_unsigned_tx,
    get_block_hash,
    get_plan,
    get_tx_hash,
    register_tx_body,
    sign_tx,
    verify_block_tx_root,
    verify_tx,
)
from node.keys import KeyPair

from .strategies import arrays, blocks, certificates, headers, signed_txs, transfers

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- dataclasses standing in for consensus/messages.py --------------------------


@dataclass(frozen=True)
class Vote:
    validator_index: Annotated[int, Uint(16)]
    digest: Annotated[bytes, Size(32)]


@dataclass(frozen=True)
class Prepare:
    KIND: ClassVar[int] = 2
    view: int
    seq: int
    digest: Annotated[bytes, Size(32)]


@dataclass(frozen=True)
class PrePrepare:
    KIND: ClassVar[int] = 1
    view: int
    seq: int
    payload: bytes
    note: str
    final: bool


@dataclass(frozen=True)
class Signed:
    KIND: ClassVar[int] = 7
    sender: int
    body: Prepare | None
    any_body: PrePrepare | Prepare
    votes: Annotated[tuple[Vote, ...], MaxCount(8)]
    proof: tuple[tuple[bytes, ...], ...]
    signature: Annotated[bytes, Size(64)]


@dataclass(frozen=True)
class WithArray:
    KIND: ClassVar[int] = 9
    values: np.ndarray
    label: Annotated[str, MaxSize(8)] | None


REGISTRY = (Prepare, PrePrepare, Signed, WithArray)

b32 = st.binary(min_size=32, max_size=32)
u64 = st.integers(0, 2**64 - 1)
prepares = st.builds(Prepare, view=u64, seq=u64, digest=b32)
pre_prepares = st.builds(
    PrePrepare,
    view=u64,
    seq=u64,
    payload=st.binary(max_size=40),
    note=st.text(max_size=8),
    final=st.booleans(),
)
votes = st.builds(Vote, validator_index=st.integers(0, 2**16 - 1), digest=b32)
signeds = st.builds(
    Signed,
    sender=u64,
    body=st.none() | prepares,
    any_body=prepares | pre_prepares,
    votes=st.lists(votes, max_size=8).map(tuple),
    proof=st.lists(st.lists(st.binary(max_size=4), max_size=3).map(tuple), max_size=3).map(tuple),
    signature=st.binary(min_size=64, max_size=64),
)
messages = prepares | pre_prepares | signeds


def _decode_message(data: bytes) -> Any:
    return decode_consensus_message(data, REGISTRY)


# Every (strategy, encode, decode) triple; decode must invert encode exactly.
CASES: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    "tx": (signed_txs, encode_tx, decode_tx),
    "header": (headers, encode_block_header, decode_block_header),
    "block": (blocks(), encode_block, decode_block),
    "certificate": (certificates(), encode_commit_certificate, decode_commit_certificate),
    "message": (messages, encode_consensus_message, _decode_message),
    "array": (arrays, encode_array, decode_array),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype.newbyteorder("<") == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return bool(a == b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_roundtrip_and_unique(name: str) -> None:
    strategy, encode, decode = CASES[name]

    @FAST
    @given(strategy)
    def check(value: Any) -> None:
        data = encode(value)
        decoded = decode(data)
        assert _same(value, decoded)
        assert encode(decoded) == data  # one value, one encoding

    check()


def _assert_only_decode_error(decode: Callable[[bytes], Any], data: bytes) -> None:
    try:
        decode(data)
    except DecodeError as exc:
        assert str(exc)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mangled_input_raises_only_decode_error(name: str) -> None:
    strategy, encode, decode = CASES[name]

    @FAST
    @given(strategy, st.data())
    def check(value: Any, data: st.DataObject) -> None:
        encoded = encode(value)
        cut = data.draw(st.integers(0, len(encoded) - 1))
        with pytest.raises(DecodeError):
            decode(encoded[:cut])
        with pytest.raises(DecodeError, match="trailing"):
            decode(encoded + data.draw(st.binary(min_size=1, max_size=3)))
        bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
        flipped = bytearray(encoded)
        flipped[bit // 8] ^= 1 << (bit % 8)
        _assert_only_decode_error(decode, bytes(flipped))
        _assert_only_decode_error(decode, data.draw(st.binary(max_size=300)))
        prefix = encoded[: data.draw(st.integers(0, len(encoded)))]
        _assert_only_decode_error(decode, prefix + data.draw(st.binary(max_size=64)))

    check()


@pytest.mark.parametrize("name", sorted(CASES))
def test_unknown_kind_and_version_rejected(name: str) -> None:
    strategy, encode, decode = CASES[name]

    @settings(max_examples=5, deadline=None)
    @given(strategy)
    def check(value: Any) -> None:
        encoded = encode(value)
        with pytest.raises(DecodeError, match="kind"):
            decode(bytes([0xEE]) + encoded[1:])
        with pytest.raises(DecodeError, match="version"):
            decode(encoded[:1] + bytes([VERSION_1 + 1]) + encoded[2:])
        with pytest.raises(DecodeError):
            decode(b"")
        with pytest.raises(DecodeError, match="expected bytes"):
            decode("not bytes")

    check()


# --- transactions -------------------------------------------------------------


KEY = KeyPair.from_seed(b"\x01" * 32)


def _signed_transfer(memo: bytes = b"m" * 49, chain_id: str = "bcfl-test") -> Transaction:
    unsigned = Transaction(KEY.public_key, 7, Transfer(b"\x02" * 32, 1000, memo))
    return sign_tx(KEY, chain_id, unsigned)


def test_benchmark_transfer_is_200_bytes_and_verifies() -> None:
    tx = _signed_transfer()
    data = encode_tx(tx)
    assert len(data) == 200
    assert data[:2] == bytes((KIND_TX, VERSION_1))
    assert verify_tx("bcfl-test", tx)
    assert verify_tx("bcfl-test", decode_tx(data))
    assert get_tx_hash(tx) == get_tx_hash(data)


@given(transfers, st.integers(0, 2**64 - 1), st.data())
@settings(max_examples=25, deadline=None)
def test_tx_signature_binds_everything(body: Transfer, nonce: int, data: st.DataObject) -> None:
    tx = sign_tx(KEY, "chain-a", Transaction(KEY.public_key, nonce, body))
    assert verify_tx("chain-a", tx)
    assert not verify_tx("chain-b", tx)
    unsigned = encode_unsigned_tx(tx)
    position = data.draw(st.integers(3, len(unsigned) - 1))  # after kind/version/tx kind
    mutated = bytearray(encode_tx(tx))
    mutated[position] ^= 0x01
    try:
        changed = decode_tx(bytes(mutated))
    except DecodeError:
        return
    assert not verify_tx("chain-a", changed)


def _decode_tx_generic(data: bytes) -> Transaction:
    """decode_tx with the transfer shortcut switched off."""
    original = codec._decode_transfer_tx_fast
    codec._decode_transfer_tx_fast = lambda raw: None  # type: ignore[assignment]
    try:
        return decode_tx(data)
    finally:
        codec._decode_transfer_tx_fast = original  # type: ignore[assignment]


def _decode_or_error(decode: Callable[[bytes], Transaction], data: bytes) -> object:
    try:
        return decode(data)
    except DecodeError as exc:
        return f"DecodeError: {exc}"


@given(transfers, st.integers(0, 2**64 - 1), st.data())
@FAST
def test_transfer_shortcut_decodes_exactly_as_the_generic_decoder(
    body: Transfer, nonce: int, data: st.DataObject
) -> None:
    encoded = encode_tx(sign_tx(KEY, "chain-a", Transaction(KEY.public_key, nonce, body)))
    assert codec._decode_transfer_tx_fast(encoded) is not None  # the shortcut is taken
    assert decode_tx(encoded) == _decode_tx_generic(encoded)
    # Mangled copies: a flipped byte, a cut, or extra bytes; same answer or same error.
    position = data.draw(st.integers(0, len(encoded) - 1))
    flipped = bytearray(encoded)
    flipped[position] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(encoded) - 1))
    for mangled in (bytes(flipped), encoded[:cut], encoded + b"\x00"):
        assert _decode_or_error(decode_tx, mangled) == _decode_or_error(
            _decode_tx_generic, mangled
        )


@given(transfers, st.data())
@FAST
def test_verify_from_the_decoded_bytes_agrees_with_the_re_encoding(
    body: Transfer, data: st.DataObject
) -> None:
    encoded = encode_tx(sign_tx(KEY, "chain-a", Transaction(KEY.public_key, 5, body)))
    tx = decode_tx(encoded)
    assert verify_tx("chain-a", tx, encoded) and verify_tx("chain-a", tx)
    assert not verify_tx("chain-b", tx, encoded)
    position = data.draw(st.integers(0, len(encoded) - 1))
    mutated = bytearray(encoded)
    mutated[position] ^= 0x01
    try:
        changed = decode_tx(bytes(mutated))
    except DecodeError:
        return
    assert verify_tx("chain-a", changed, bytes(mutated)) is verify_tx("chain-a", changed)
    assert not verify_tx("chain-a", changed, bytes(mutated))


def test_sign_tx_refuses_a_foreign_sender() -> None:
    with pytest.raises(ValueError):
        sign_tx(KEY, "c", Transaction(b"\x09" * 32, 0, Transfer(b"\x02" * 32, 1)))


def test_tx_encoding_rejects_bad_values() -> None:
    with pytest.raises(EncodeError, match="signature"):
        encode_tx(Transaction(KEY.public_key, 0, Transfer(b"\x02" * 32, 1)))
    with pytest.raises(EncodeError, match="memo"):
        encode_unsigned_tx(Transaction(KEY.public_key, 0, Transfer(b"\x02" * 32, 1, b"x" * 65)))
    with pytest.raises(EncodeError, match="amount"):
        encode_unsigned_tx(Transaction(KEY.public_key, 0, Transfer(b"\x02" * 32, -1)))
    with pytest.raises(EncodeError, match="nonce"):
        encode_unsigned_tx(Transaction(KEY.public_key, 2**64, Transfer(b"\x02" * 32, 1)))
    with pytest.raises(EncodeError, match="recipient"):
        encode_unsigned_tx(Transaction(KEY.public_key, 0, Transfer(b"\x02" * 31, 1)))
    with pytest.raises(EncodeError, match="unregistered"):
        encode_unsigned_tx(Transaction(KEY.public_key, 0, Prepare(0, 0, b"\x00" * 32)))


def test_decode_tx_rejects_oversize_memo_and_unknown_tx_kind() -> None:
    data = bytearray(encode_tx(_signed_transfer(memo=b"")))
    memo_length_at = 3 + 32 + 8 + 32 + 8
    data[memo_length_at] = 65
    with pytest.raises(DecodeError, match="Transfer.memo: length 65 exceeds maximum 64"):
        decode_tx(bytes(data) + b"x" * 65)
    data = bytearray(encode_tx(_signed_transfer()))
    data[2] = 0xFE
    with pytest.raises(DecodeError, match="unknown transaction kind"):
        decode_tx(bytes(data))
    with pytest.raises(DecodeError, match="exceeds maximum 100"):
        decode_tx(encode_tx(_signed_transfer()), Limits(tx_size_max_bytes=100))


@dataclass(frozen=True)
class ModelDeltaLike:
    TX_KIND: ClassVar[int] = 200
    round: int
    delta: np.ndarray


def test_registering_a_new_tx_kind_is_one_call() -> None:
    register_tx_body(ModelDeltaLike)
    with pytest.raises(ValueError, match="already registered"):
        register_tx_body(ModelDeltaLike)
    body = ModelDeltaLike(3, np.arange(6, dtype=np.float32).reshape(2, 3))
    tx = sign_tx(KEY, "c", Transaction(KEY.public_key, 1, body))
    decoded = decode_tx(encode_tx(tx))
    assert verify_tx("c", decoded)
    assert decoded.body.round == 3
    assert np.array_equal(decoded.body.delta, body.delta)
    nan_body = ModelDeltaLike(3, np.array([np.nan], dtype=np.float32))
    with pytest.raises(EncodeError, match="NaN"):
        encode_unsigned_tx(Transaction(KEY.public_key, 1, nan_body))


# --- arrays ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_nan_and_inf_rejected(bad: float, dtype: str) -> None:
    array = np.array([1.0, bad, 2.0], dtype=dtype)
    with pytest.raises(EncodeError, match="NaN or Inf"):
        encode_array(array)
    good = encode_array(np.array([1.0, 0.0, 2.0], dtype=dtype))
    width = np.dtype(dtype).itemsize
    raw = bytearray(good)
    raw[-2 * width : -width] = np.array([bad], dtype=dtype).tobytes()
    with pytest.raises(DecodeError, match="NaN or Inf"):
        decode_array(bytes(raw))


def test_array_limits_and_shape_checks() -> None:
    data = encode_array(np.zeros((10, 10), dtype=np.int32))
    with pytest.raises(DecodeError, match="100 elements exceeds maximum 99"):
        decode_array(data, Limits(array_elements_max=99))
    with pytest.raises(DecodeError, match="truncated"):
        decode_array(data[:-4])  # dims promise more bytes than there are
    raw = bytearray(data)
    raw[2] = 99
    with pytest.raises(DecodeError, match="unknown dtype code 99"):
        decode_array(bytes(raw))
    raw = bytearray(data)
    raw[3] = 9
    with pytest.raises(DecodeError, match="ndim"):
        decode_array(bytes(raw))
    # A huge claimed dimension is refused before any allocation.
    huge = bytes((1, 1, 3, 2)) + (2**32 - 1).to_bytes(4, "little") * 2
    with pytest.raises(DecodeError, match="exceeds maximum"):
        decode_array(huge)
    with pytest.raises(EncodeError, match="dtype"):
        encode_array(np.zeros(2, dtype=np.complex64))


def test_decoded_array_owns_its_memory() -> None:
    source = bytearray(encode_array(np.arange(4, dtype=np.int64)))
    array = decode_array(source)  # type: ignore[arg-type]
    source[-8:] = b"\xff" * 8
    assert array.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        array[0] = 5


# --- blocks and certificates ------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(blocks())
def test_block_checks_tx_root_chain_id_and_tx_wellformedness(block: Block) -> None:
    data = encode_block(block)
    assert verify_block_tx_root(block)
    assert decode_block(data, chain_id=block.header.chain_id) == block
    with pytest.raises(DecodeError, match="chain_id"):
        decode_block(data, chain_id=block.header.chain_id + "x")
    wrong_root = Block(dataclasses.replace(block.header, tx_root=b"\x00" * 32), block.txs)
    with pytest.raises(DecodeError, match="tx_root"):
        decode_block(encode_block(wrong_root))
    bad = Block(dataclasses.replace(block.header, tx_root=compute_tx_root((b"zz",))), (b"zz",))
    with pytest.raises(DecodeError, match=r"block.txs\[0\]"):
        decode_block(encode_block(bad))
    assert decode_block(encode_block(bad), check_txs=False) == bad
    many = Block(
        dataclasses.replace(block.header, tx_root=compute_tx_root((b"a",) * 3)), (b"a",) * 3
    )
    with pytest.raises(DecodeError, match="3 transactions exceeds maximum 2"):
        decode_block(encode_block(many), Limits(block_txs_max=2), check_txs=False)


@settings(max_examples=20, deadline=None)
@given(headers)
def test_block_hash_changes_with_every_header_field(header: BlockHeader) -> None:
    base = get_block_hash(header)
    for field in dataclasses.fields(header):
        value = getattr(header, field.name)
        if isinstance(value, bytes):
            changed = bytes([value[0] ^ 1]) + value[1:]
        elif isinstance(value, str):
            changed = value + "x"
        else:
            changed = value + 1 if value < 2**16 - 1 else value - 1
        assert get_block_hash(dataclasses.replace(header, **{field.name: changed})) != base
    with pytest.raises(DecodeError, match="chain_id"):
        decode_block_header(encode_block_header(header), chain_id=header.chain_id + "!")


def test_certificate_structure_checks() -> None:
    sig = b"\x05" * 64
    good = CommitCertificate(1, 0, b"\x01" * 32, (CommitSignature(0, sig), CommitSignature(3, sig)))
    data = encode_commit_certificate(good)
    assert decode_commit_certificate(data) == good
    swapped = CommitCertificate(1, 0, b"\x01" * 32, good.signatures[::-1])
    with pytest.raises(EncodeError, match="strictly increase"):
        encode_commit_certificate(swapped)
    raw = bytearray(data)
    entry = 2 + 8 + 8 + 32 + 4
    raw[entry + 66 : entry + 68] = (0).to_bytes(2, "little")  # duplicate index 0
    with pytest.raises(DecodeError, match="strictly increase"):
        decode_commit_certificate(bytes(raw))
    with pytest.raises(EncodeError, match="count 0"):
        encode_commit_certificate(CommitCertificate(1, 0, b"\x01" * 32, ()))
    with pytest.raises(DecodeError, match="count 2 not in 1..1"):
        decode_commit_certificate(data, Limits(commit_signatures_max=1))


# --- generic consensus messages ----------------------------------------------------


def test_consensus_nested_envelope_roundtrip() -> None:
    message = Signed(
        sender=3,
        body=Prepare(1, 2, b"\x03" * 32),
        any_body=PrePrepare(1, 2, b"payload", "héllo", True),
        votes=(Vote(0, b"\x01" * 32), Vote(5, b"\x02" * 32)),
        proof=((b"a", b""), ()),
        signature=b"\x07" * 64,
    )
    data = encode_consensus_message(message)
    assert decode_consensus_message(data, REGISTRY) == message
    assert (
        decode_consensus_message(
            encode_consensus_message(WithArray(np.arange(3), None)), REGISTRY
        ).label
        is None
    )


def test_consensus_rejects_bad_values_and_bounds() -> None:
    with pytest.raises(EncodeError, match="Prepare.view"):
        encode_consensus_message(Prepare(-1, 0, b"\x00" * 32))
    with pytest.raises(EncodeError, match="Prepare.view"):
        encode_consensus_message(Prepare(True, 0, b"\x00" * 32))  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="label"):
        encode_consensus_message(WithArray(np.arange(3), "x" * 9))
    too_many = Signed(
        0, None, Prepare(0, 0, b"\x00" * 32), (Vote(0, b"\x00" * 32),) * 9, (), b"\x00" * 64
    )
    with pytest.raises(EncodeError, match="9 elements exceeds maximum 8"):
        encode_consensus_message(too_many)
    long_payload = encode_consensus_message(PrePrepare(0, 0, b"x" * 100, "", False))
    with pytest.raises(DecodeError, match="PrePrepare.payload: length 100 exceeds maximum 99"):
        decode_consensus_message(long_payload, REGISTRY, Limits(bytes_size_max_bytes=99))
    with pytest.raises(DecodeError, match="unknown kind 1"):
        decode_consensus_message(long_payload, (Prepare,))
    flag_at = len(long_payload) - 1
    with pytest.raises(DecodeError, match="expected bool 0 or 1, got 2"):
        decode_consensus_message(long_payload[:flag_at] + b"\x02", REGISTRY)


@dataclass(frozen=True)
class Loop:
    KIND: ClassVar[int] = 1
    next: Loop | None


@dataclass
class Mutable:
    KIND: ClassVar[int] = 1
    x: int


@dataclass(frozen=True)
class Floaty:
    KIND: ClassVar[int] = 1
    x: float


def test_unencodable_classes_are_refused_at_plan_time() -> None:
    for cls, match in [(Loop, "recursive"), (Mutable, "frozen"), (Floaty, "unsupported")]:
        with pytest.raises(TypeError, match=match):
            get_plan(cls)
