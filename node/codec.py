"""The one canonical, strict binary encoding of everything bcfl signs, hashes or sends.

Rules (see docs/architecture.md):

- integers are fixed-width little-endian (u8/u16/u32/u64); variable-length byte
  strings, UTF-8 strings and lists carry a u32 length prefix and a maximum;
  fixed-size byte strings (keys, hashes, signatures) carry no prefix;
- bools are exactly 0x00 or 0x01; optional values are a presence byte (0/1)
  then the value;
- every top-level value starts with a kind byte and a version byte;
- numpy arrays are a dtype code (u8), ndim (u8), each dimension (u32), then
  the little-endian element bytes; NaN and Inf are refused both ways;
- a decoder consumes its input exactly: trailing bytes are an error.

Every value therefore has exactly one encoding, and ``decode(encode(x)) == x``.

Structured values (transaction bodies, block headers, commit certificates,
consensus messages) are frozen dataclasses encoded generically from their
fields, in declaration order. A field's type picks its encoding; ``Annotated``
markers narrow it: ``Size(n)`` (fixed-size bytes, no prefix), ``MaxSize(n)``
(bytes/str maximum), ``MaxCount(n)`` (tuple maximum) and ``Uint(bits)`` (an
int narrower than u64). The per-class "plans" are compiled once and cached.

Decoders raise only :class:`DecodeError`, whatever the input bytes: explicit
checks come first, and a boundary wrapper turns anything that slips through
(struct.error, UnicodeDecodeError, ValueError from a ``__post_init__``...) into
a DecodeError too. Encoders raise :class:`EncodeError` for values that have no
encoding (negative ints, NaN, oversize fields): that is a local programming
error, never a peer's fault.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin

import numpy as np

from node.crypto import (
    DOMAIN_TX,
    HASH_SIZE_BYTES,
    compute_merkle_root,
    sha256,
    sign,
    verify_signature,
)
from node.keys import PUBLIC_KEY_SIZE_BYTES, SIGNATURE_SIZE_BYTES, KeyPair

MIB = 1024 * 1024

# Top-level kind bytes. Distinct across every top-level type, so a transport
# can dispatch on the first byte and one type's bytes never decode as another.
KIND_ARRAY = 0x01
KIND_TX = 0x02
KIND_BLOCK_HEADER = 0x03
KIND_BLOCK = 0x04
KIND_COMMIT_CERTIFICATE = 0x05
KIND_CONSENSUS_MESSAGE = 0x06
VERSION_1 = 0x01

MEMO_SIZE_MAX_BYTES = 64
CHAIN_ID_SIZE_MAX_BYTES = 64
ARRAY_NDIM_MAX = 8
NESTING_DEPTH_MAX = 8
U64_LIMIT = 1 << 64


class DecodeError(Exception):
    """Input bytes are not the canonical encoding of a valid value (the message says why)."""


class EncodeError(ValueError):
    """A value has no canonical encoding (wrong type, out of range, NaN, oversize)."""


@dataclass(frozen=True)
class Limits:
    """Maxima every decoder enforces; a peer's bytes never make us allocate past these."""

    tx_size_max_bytes: int = 4 * MIB
    block_size_max_bytes: int = 16 * MIB
    block_txs_max: int = 20_000
    message_size_max_bytes: int = 17 * MIB
    array_elements_max: int = 4_000_000
    list_count_max: int = 20_000
    bytes_size_max_bytes: int = 16 * MIB
    string_size_max_bytes: int = 1024
    commit_signatures_max: int = 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or not 0 < value < U64_LIMIT:
                raise ValueError(f"Limits.{field.name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = Limits()

# --- Annotated markers ---------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """A bytes field of exactly ``n`` bytes, encoded without a length prefix."""

    n: int


@dataclass(frozen=True)
class MaxSize:
    """A bytes or str field of at most ``n`` bytes (overrides the Limits default)."""

    n: int


@dataclass(frozen=True)
class MaxCount:
    """A tuple field of at most ``n`` elements (overrides the Limits default)."""

    n: int


@dataclass(frozen=True)
class Uint:
    """An int field encoded as an unsigned integer of ``bits`` (8, 16, 32 or 64)."""

    bits: int


# --- primitives ----------------------------------------------------------------

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_UINT_STRUCTS = {8: _U8, 16: _U16, 32: _U32, 64: _U64}
_DIMS_STRUCTS = tuple(struct.Struct(f"<{n}I") for n in range(ARRAY_NDIM_MAX + 1))


class Reader:
    """A cursor over immutable bytes; every read checks bounds and names its field."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def _need(self, n: int, field: str) -> int:
        pos = self.pos
        if n > self.end - pos:
            raise DecodeError(
                f"{field}: truncated: need {n} bytes at offset {pos}, {self.end - pos} left"
            )
        self.pos = pos + n
        return pos

    def read_uint(self, s: struct.Struct, field: str) -> int:
        pos = self._need(s.size, field)
        value: int = s.unpack_from(self.data, pos)[0]
        return value

    def read_u8(self, field: str) -> int:
        return self.data[self._need(1, field)]

    def read_u32(self, field: str) -> int:
        return self.read_uint(_U32, field)

    def read_u64(self, field: str) -> int:
        return self.read_uint(_U64, field)

    def read_bool(self, field: str) -> bool:
        byte = self.data[self._need(1, field)]
        if byte > 1:
            raise DecodeError(f"{field}: expected bool 0 or 1, got {byte}")
        return byte == 1

    def read_fixed(self, n: int, field: str) -> bytes:
        pos = self._need(n, field)
        return self.data[pos : pos + n]

    def read_var_bytes(self, size_max: int, field: str) -> bytes:
        n = self.read_uint(_U32, field)
        if n > size_max:
            raise DecodeError(f"{field}: length {n} exceeds maximum {size_max}")
        return self.read_fixed(n, field)

    def read_str(self, size_max: int, field: str) -> str:
        raw = self.read_var_bytes(size_max, field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{field}: invalid UTF-8: {exc.reason}") from None

    def read_header(self, kind: int, what: str) -> None:
        got_kind = self.read_u8(f"{what}.kind")
        if got_kind != kind:
            raise DecodeError(f"{what}.kind: expected {kind:#04x}, got {got_kind:#04x}")
        version = self.read_u8(f"{what}.version")
        if version != VERSION_1:
            raise DecodeError(f"{what}.version: expected {VERSION_1}, got unknown {version}")

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise DecodeError(f"{what}: {self.end - self.pos} trailing bytes at offset {self.pos}")


def _as_input(data: object, size_max: int, what: str) -> bytes:
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, bytearray | memoryview):
        raw = bytes(data)
    else:
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(raw) > size_max:
        raise DecodeError(f"{what}: {len(raw)} bytes exceeds maximum {size_max}")
    return raw


F = TypeVar("F", bound=Callable[..., Any])

_ESCAPEES = (
    struct.error,
    UnicodeDecodeError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
    AssertionError,
    MemoryError,
)


def _decoder(func: F) -> F:
    """Turn any exception that escapes an explicit check into a DecodeError."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DecodeError:
            raise
        except _ESCAPEES as exc:
            raise DecodeError(f"{func.__name__}: malformed input: {exc!r}") from None

    return typing.cast(F, wrapper)


# --- numpy arrays --------------------------------------------------------------

_DTYPE_CODES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<i8"),
    5: np.dtype("<u1"),
    6: np.dtype("<u2"),
    7: np.dtype("<u4"),
    8: np.dtype("<u8"),
    9: np.dtype("<f4"),
    10: np.dtype("<f8"),
}
_CODE_OF_DTYPE: dict[tuple[str, int], int] = {
    (dtype.kind, dtype.itemsize): code for code, dtype in _DTYPE_CODES.items()
}


def _encode_array_body(value: object, out: bytearray, field: str) -> None:
    if not isinstance(value, np.ndarray):
        raise EncodeError(f"{field}: expected numpy.ndarray, got {type(value).__name__}")
    code = _CODE_OF_DTYPE.get((value.dtype.kind, value.dtype.itemsize))
    if code is None:
        raise EncodeError(f"{field}: unsupported dtype {value.dtype}")
    if value.ndim > ARRAY_NDIM_MAX:
        raise EncodeError(f"{field}: ndim {value.ndim} exceeds maximum {ARRAY_NDIM_MAX}")
    if any(dim >= 1 << 32 for dim in value.shape):
        raise EncodeError(f"{field}: dimension over u32 in shape {value.shape}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise EncodeError(f"{field}: float array contains NaN or Inf")
    out += _U8.pack(code)
    out += _U8.pack(value.ndim)
    out += _DIMS_STRUCTS[value.ndim].pack(*value.shape)
    # tobytes() is C order whatever the layout; astype fixes the byte order.
    out += value.astype(_DTYPE_CODES[code], copy=False).tobytes()


def _decode_array_body(r: Reader, limits: Limits, field: str) -> np.ndarray[Any, Any]:
    code = r.read_u8(f"{field}.dtype")
    dtype = _DTYPE_CODES.get(code)
    if dtype is None:
        raise DecodeError(f"{field}.dtype: unknown dtype code {code}")
    ndim = r.read_u8(f"{field}.ndim")
    if ndim > ARRAY_NDIM_MAX:
        raise DecodeError(f"{field}.ndim: {ndim} exceeds maximum {ARRAY_NDIM_MAX}")
    dims_struct = _DIMS_STRUCTS[ndim]
    dims: tuple[int, ...] = dims_struct.unpack_from(r.data, r._need(dims_struct.size, field))
    count = math.prod(dims)
    if count > limits.array_elements_max:
        raise DecodeError(
            f"{field}: {count} elements exceeds maximum {limits.array_elements_max}"
        )
    raw = r.read_fixed(count * dtype.itemsize, f"{field}.data")
    # ``raw`` is a fresh bytes object, so the array owns its (read-only) memory.
    array = np.frombuffer(raw, dtype=dtype).reshape(dims)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise DecodeError(f"{field}: float array contains NaN or Inf")
    return array


def encode_array(value: np.ndarray[Any, Any]) -> bytes:
    out = bytearray((KIND_ARRAY, VERSION_1))
    _encode_array_body(value, out, "array")
    return bytes(out)


@_decoder
def decode_array(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray[Any, Any]:
    r = Reader(_as_input(data, limits.message_size_max_bytes, "array"))
    r.read_header(KIND_ARRAY, "array")
    array = _decode_array_body(r, limits, "array")
    r.expect_end("array")
    return array


# --- generic dataclass plans ---------------------------------------------------

Encoder = Callable[[Any, bytearray], None]
Decoder = Callable[[Reader, Limits], Any]


@dataclass(frozen=True)
class _FieldCodec:
    encode: Encoder
    decode: Decoder
    height: int  # how many dataclass levels this type nests below itself


class _Plan:
    """How one frozen dataclass encodes: its fields' codecs, in declaration order."""

    __slots__ = ("cls", "names", "encoders", "decoders", "height")

    def __init__(self, cls: type, names: tuple[str, ...], codecs: Sequence[_FieldCodec]) -> None:
        self.cls = cls
        self.names = names
        self.encoders = tuple(c.encode for c in codecs)
        self.decoders = tuple(c.decode for c in codecs)
        self.height = 1 + max(c.height for c in codecs)

    def encode(self, obj: object, out: bytearray) -> None:
        if type(obj) is not self.cls:
            raise EncodeError(f"expected {self.cls.__name__}, got {type(obj).__name__}")
        for name, encode in zip(self.names, self.encoders, strict=True):
            encode(getattr(obj, name), out)

    def decode(self, r: Reader, limits: Limits) -> Any:
        return self.cls(*[decode(r, limits) for decode in self.decoders])


_PLANS: dict[type, _Plan] = {}
_NONE_TYPE = type(None)


def get_plan(cls: type) -> _Plan:
    """The cached encoding plan of a frozen dataclass (TypeError if it has no encoding)."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _compile_plan(cls, frozenset())
        _PLANS[cls] = plan
    return plan


def _compile_plan(cls: type, active: frozenset[type]) -> _Plan:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be a frozen dataclass")
    if cls in active:
        raise TypeError(f"{cls.__name__} is recursive; encoded types must be finite")
    fields = dataclasses.fields(cls)
    if not fields:
        # A zero-byte element would let a tiny input claim huge nested counts.
        raise TypeError(f"{cls.__name__} has no fields")
    hints = typing.get_type_hints(cls, include_extras=True)
    codecs = []
    for field in fields:
        if not field.init:
            raise TypeError(f"{cls.__name__}.{field.name}: init=False fields are not encodable")
        codecs.append(
            _compile_type(hints[field.name], f"{cls.__name__}.{field.name}", active | {cls})
        )
    plan = _Plan(cls, tuple(f.name for f in fields), codecs)
    if plan.height > NESTING_DEPTH_MAX:
        raise TypeError(f"{cls.__name__} nests {plan.height} levels, over {NESTING_DEPTH_MAX}")
    return plan


def _get_nested_plan(cls: type, active: frozenset[type]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _compile_plan(cls, active)
        _PLANS[cls] = plan
    return plan


def _marker(markers: Sequence[object], kind: type) -> Any:
    found = [m for m in markers if isinstance(m, kind)]
    if len(found) > 1:
        raise TypeError(f"more than one {kind.__name__} marker")
    return found[0] if found else None


def _compile_type(tp: Any, name: str, active: frozenset[type]) -> _FieldCodec:
    markers: Sequence[object] = ()
    if get_origin(tp) is Annotated:
        tp, *markers = get_args(tp)
    origin = get_origin(tp)
    if tp is bool:
        return _compile_bool(name)
    if tp is int:
        uint = _marker(markers, Uint)
        return _compile_uint(64 if uint is None else uint.bits, name)
    if tp is bytes:
        return _compile_bytes(_marker(markers, Size), _marker(markers, MaxSize), name)
    if tp is str:
        return _compile_str(_marker(markers, MaxSize), name)
    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{name}: only tuple[T, ...] is encodable, got {tp!r}")
        return _compile_tuple(
            _compile_type(args[0], f"{name}[]", active), _marker(markers, MaxCount), name
        )
    if origin is Union or origin is types.UnionType:
        return _compile_union(get_args(tp), name, active)
    if tp is np.ndarray or origin is np.ndarray:
        return _FieldCodec(
            lambda v, out: _encode_array_body(v, out, name),
            lambda r, limits: _decode_array_body(r, limits, name),
            0,
        )
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        plan = _get_nested_plan(tp, active)
        return _FieldCodec(plan.encode, plan.decode, plan.height)
    raise TypeError(f"{name}: unsupported field type {tp!r}")


def _compile_bool(name: str) -> _FieldCodec:
    def encode(value: object, out: bytearray) -> None:
        if type(value) is not bool:
            raise EncodeError(f"{name}: expected bool, got {type(value).__name__}")
        out.append(1 if value else 0)

    def decode(r: Reader, limits: Limits) -> bool:
        return r.read_bool(name)

    return _FieldCodec(encode, decode, 0)


def _compile_uint(bits: int, name: str) -> _FieldCodec:
    s = _UINT_STRUCTS.get(bits)
    if s is None:
        raise TypeError(f"{name}: Uint bits must be 8, 16, 32 or 64, got {bits}")
    limit = 1 << bits
    pack = s.pack

    def encode(value: object, out: bytearray) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise EncodeError(f"{name}: expected int, got {type(value).__name__}")
        if not 0 <= value < limit:
            raise EncodeError(f"{name}: {value} is outside u{bits} range")
        out += pack(value)

    def decode(r: Reader, limits: Limits) -> int:
        return r.read_uint(s, name)

    return _FieldCodec(encode, decode, 0)


def _compile_bytes(size: Size | None, size_max: MaxSize | None, name: str) -> _FieldCodec:
    if size is not None:
        n = size.n

        def encode_fixed(value: object, out: bytearray) -> None:
            if type(value) is not bytes:
                raise EncodeError(f"{name}: expected bytes, got {type(value).__name__}")
            if len(value) != n:
                raise EncodeError(f"{name}: expected {n} bytes, got {len(value)}")
            out += value

        def decode_fixed(r: Reader, limits: Limits) -> bytes:
            return r.read_fixed(n, name)

        return _FieldCodec(encode_fixed, decode_fixed, 0)

    fixed_max = None if size_max is None else size_max.n

    def encode(value: object, out: bytearray) -> None:
        if type(value) is not bytes:
            raise EncodeError(f"{name}: expected bytes, got {type(value).__name__}")
        if fixed_max is not None and len(value) > fixed_max:
            raise EncodeError(f"{name}: {len(value)} bytes exceeds maximum {fixed_max}")
        out += _U32.pack(len(value))
        out += value

    def decode(r: Reader, limits: Limits) -> bytes:
        return r.read_var_bytes(
            limits.bytes_size_max_bytes if fixed_max is None else fixed_max, name
        )

    return _FieldCodec(encode, decode, 0)


def _compile_str(size_max: MaxSize | None, name: str) -> _FieldCodec:
    fixed_max = None if size_max is None else size_max.n

    def encode(value: object, out: bytearray) -> None:
        if type(value) is not str:
            raise EncodeError(f"{name}: expected str, got {type(value).__name__}")
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodeError(f"{name}: not encodable as UTF-8: {exc.reason}") from None
        if fixed_max is not None and len(raw) > fixed_max:
            raise EncodeError(f"{name}: {len(raw)} bytes exceeds maximum {fixed_max}")
        out += _U32.pack(len(raw))
        out += raw

    def decode(r: Reader, limits: Limits) -> str:
        return r.read_str(limits.string_size_max_bytes if fixed_max is None else fixed_max, name)

    return _FieldCodec(encode, decode, 0)


def _compile_tuple(element: _FieldCodec, count_max: MaxCount | None, name: str) -> _FieldCodec:
    fixed_max = None if count_max is None else count_max.n
    encode_element, decode_element = element.encode, element.decode

    def encode(value: object, out: bytearray) -> None:
        if type(value) is not tuple:
            raise EncodeError(f"{name}: expected tuple, got {type(value).__name__}")
        if fixed_max is not None and len(value) > fixed_max:
            raise EncodeError(f"{name}: {len(value)} elements exceeds maximum {fixed_max}")
        out += _U32.pack(len(value))
        for item in value:
            encode_element(item, out)

    def decode(r: Reader, limits: Limits) -> tuple[Any, ...]:
        count = r.read_u32(name)
        count_limit = limits.list_count_max if fixed_max is None else fixed_max
        if count > count_limit:
            raise DecodeError(f"{name}: {count} elements exceeds maximum {count_limit}")
        return tuple([decode_element(r, limits) for _ in range(count)])

    return _FieldCodec(encode, decode, element.height)


def _compile_union(args: tuple[Any, ...], name: str, active: frozenset[type]) -> _FieldCodec:
    optional = _NONE_TYPE in args
    alternatives = [a for a in args if a is not _NONE_TYPE]
    if len(alternatives) == 1:
        inner = _compile_type(alternatives[0], name, active)
    else:
        inner = _compile_tagged_union(alternatives, name, active)
    if not optional:
        return inner
    encode_inner, decode_inner = inner.encode, inner.decode

    def encode(value: object, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            encode_inner(value, out)

    def decode(r: Reader, limits: Limits) -> Any:
        return decode_inner(r, limits) if r.read_bool(f"{name}?") else None

    return _FieldCodec(encode, decode, inner.height)


def _compile_tagged_union(
    alternatives: Sequence[Any], name: str, active: frozenset[type]
) -> _FieldCodec:
    """``A | B | ...`` of dataclasses with distinct ``KIND``s: a KIND byte, then the value."""
    plans: dict[int, _Plan] = {}
    for alternative in alternatives:
        kind = getattr(alternative, "KIND", None)
        if not (isinstance(alternative, type) and dataclasses.is_dataclass(alternative)):
            raise TypeError(f"{name}: union members must be dataclasses, got {alternative!r}")
        if type(kind) is not int or not 0 <= kind < 256 or kind in plans:
            raise TypeError(f"{name}: union members need distinct u8 KINDs")
        plans[kind] = _get_nested_plan(alternative, active)
    by_type = {plan.cls: (kind, plan) for kind, plan in plans.items()}

    def encode(value: object, out: bytearray) -> None:
        entry = by_type.get(type(value))
        if entry is None:
            raise EncodeError(f"{name}: {type(value).__name__} is not a member of the union")
        out.append(entry[0])
        entry[1].encode(value, out)

    def decode(r: Reader, limits: Limits) -> Any:
        kind = r.read_u8(f"{name}.kind")
        plan = plans.get(kind)
        if plan is None:
            raise DecodeError(f"{name}.kind: unknown kind {kind}")
        return plan.decode(r, limits)

    return _FieldCodec(encode, decode, max(p.height for p in plans.values()))


# --- transactions --------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """Move ``amount`` from the sender's account to ``recipient``'s."""

    TX_KIND: ClassVar[int] = 1

    recipient: Annotated[bytes, Size(PUBLIC_KEY_SIZE_BYTES)]
    amount: int
    memo: Annotated[bytes, MaxSize(MEMO_SIZE_MAX_BYTES)] = b""


@dataclass(frozen=True)
class Transaction:
    """A signed envelope: the account id is the sender's Ed25519 public key.

    ``signature`` is empty until :func:`sign_tx`; it covers
    ``compute_signing_bytes(DOMAIN_TX, chain_id, encode_unsigned_tx(tx))``.
    """

    sender: bytes
    nonce: int
    body: Any
    signature: bytes = b""


@dataclass(frozen=True)
class TxBodyCodec:
    tx_kind: int
    body_type: type
    encode: Encoder
    decode: Decoder


_TX_BODY_CODECS_BY_KIND: dict[int, TxBodyCodec] = {}
_TX_BODY_CODECS_BY_TYPE: dict[type, TxBodyCodec] = {}

T = TypeVar("T", bound=type)


def register_tx_body(
    body_type: T, encode: Encoder | None = None, decode: Decoder | None = None
) -> T:
    """Make a frozen dataclass with a ``TX_KIND: ClassVar[int]`` a transaction body.

    By default the body is encoded generically from its fields; pass ``encode``
    and ``decode`` for a hand-written encoding. Usable as a class decorator.
    """
    tx_kind = getattr(body_type, "TX_KIND", None)
    if type(tx_kind) is not int or not 0 <= tx_kind < 256:
        raise TypeError(f"{body_type.__name__}.TX_KIND must be a u8 int")
    if tx_kind in _TX_BODY_CODECS_BY_KIND or body_type in _TX_BODY_CODECS_BY_TYPE:
        raise ValueError(f"transaction kind {tx_kind} ({body_type.__name__}) already registered")
    if encode is None or decode is None:
        plan = get_plan(body_type)
        encode, decode = plan.encode, plan.decode
    entry = TxBodyCodec(tx_kind, body_type, encode, decode)
    _TX_BODY_CODECS_BY_KIND[tx_kind] = entry
    _TX_BODY_CODECS_BY_TYPE[body_type] = entry
    return body_type


register_tx_body(Transfer)


def _encode_unsigned_into(tx: Transaction, out: bytearray) -> None:
    entry = _TX_BODY_CODECS_BY_TYPE.get(type(tx.body))
    if entry is None:
        raise EncodeError(f"Transaction.body: unregistered body type {type(tx.body).__name__}")
    if type(tx.sender) is not bytes or len(tx.sender) != PUBLIC_KEY_SIZE_BYTES:
        raise EncodeError(f"Transaction.sender: expected {PUBLIC_KEY_SIZE_BYTES} bytes")
    if type(tx.nonce) is not int or not 0 <= tx.nonce < U64_LIMIT:
        raise EncodeError(f"Transaction.nonce: {tx.nonce!r} is not a u64")
    out.append(entry.tx_kind)
    out += tx.sender
    out += _U64.pack(tx.nonce)
    entry.encode(tx.body, out)


def encode_unsigned_tx(tx: Transaction) -> bytes:
    """The transaction's encoding without its signature: what the sender signs."""
    out = bytearray((KIND_TX, VERSION_1))
    _encode_unsigned_into(tx, out)
    return bytes(out)


def encode_tx(tx: Transaction) -> bytes:
    """``encode_unsigned_tx(tx) || signature`` (64 bytes); the tx must be signed."""
    if type(tx.signature) is not bytes or len(tx.signature) != SIGNATURE_SIZE_BYTES:
        raise EncodeError(f"Transaction.signature: expected {SIGNATURE_SIZE_BYTES} bytes")
    out = bytearray((KIND_TX, VERSION_1))
    _encode_unsigned_into(tx, out)
    out += tx.signature
    return bytes(out)


# A transfer's fixed-layout prefix: header, kind, sender, nonce, recipient, amount,
# memo length. The bench's 200-byte transfers are most of what a busy node decodes.
_TRANSFER_TX_PREFIX = struct.Struct(f"<BBB{PUBLIC_KEY_SIZE_BYTES}sQ{PUBLIC_KEY_SIZE_BYTES}sQI")


def _decode_transfer_tx_fast(raw: bytes) -> Transaction | None:
    """A well-formed transfer in one unpack, or None for anything else.

    Only a shortcut: None sends the bytes through the generic decoder, which
    gives every malformed input its usual error. A test checks both paths agree.
    """
    prefix_size = _TRANSFER_TX_PREFIX.size
    if len(raw) < prefix_size + SIGNATURE_SIZE_BYTES:
        return None
    kind, version, tx_kind, sender, nonce, recipient, amount, memo_size = (
        _TRANSFER_TX_PREFIX.unpack_from(raw)
    )
    if (kind != KIND_TX or version != VERSION_1 or tx_kind != Transfer.TX_KIND
            or memo_size > MEMO_SIZE_MAX_BYTES
            or len(raw) != prefix_size + memo_size + SIGNATURE_SIZE_BYTES):
        return None
    memo_end = prefix_size + memo_size
    return Transaction(sender, nonce, Transfer(recipient, amount, raw[prefix_size:memo_end]),
                       raw[memo_end:])


@_decoder
def decode_tx(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Transaction:
    raw = _as_input(data, limits.tx_size_max_bytes, "tx")
    fast = _decode_transfer_tx_fast(raw)
    if fast is not None:
        return fast
    r = Reader(raw)
    r.read_header(KIND_TX, "tx")
    tx_kind = r.read_u8("tx.tx_kind")
    entry = _TX_BODY_CODECS_BY_KIND.get(tx_kind)
    if entry is None:
        raise DecodeError(f"tx.tx_kind: unknown transaction kind {tx_kind}")
    sender = r.read_fixed(PUBLIC_KEY_SIZE_BYTES, "tx.sender")
    nonce = r.read_u64("tx.nonce")
    body = entry.decode(r, limits)
    signature = r.read_fixed(SIGNATURE_SIZE_BYTES, "tx.signature")
    r.expect_end("tx")
    return Transaction(sender, nonce, body, signature)


def get_tx_hash(tx: Transaction | bytes) -> bytes:
    """SHA-256 of the full signed encoding (pass the bytes when you have them)."""
    return sha256(tx if isinstance(tx, bytes) else encode_tx(tx))


def sign_tx(key: KeyPair, chain_id: str, unsigned: Transaction) -> Transaction:
    if unsigned.sender != key.public_key:
        raise ValueError("sign_tx: the transaction's sender is not this key's public key")
    signature = sign(key, DOMAIN_TX, chain_id, encode_unsigned_tx(unsigned))
    return dataclasses.replace(unsigned, signature=signature)


def verify_tx(chain_id: str, tx: Transaction, encoded: bytes | None = None) -> bool:
    """True iff ``tx``'s signature is its sender's over its unsigned encoding.

    ``encoded``: the bytes ``tx`` was decoded from, if the caller has them. Every
    value has one encoding, so all but their last 64 bytes are the unsigned
    encoding: no re-encode (a few µs per tx at every validator).
    """
    if encoded is not None:
        if not encoded.endswith(tx.signature):
            return False
        unsigned = encoded[:-SIGNATURE_SIZE_BYTES]
    else:
        try:
            unsigned = encode_unsigned_tx(tx)
        except EncodeError:
            return False
    return verify_signature(tx.sender, DOMAIN_TX, chain_id, unsigned, tx.signature)


# --- blocks and commit certificates --------------------------------------------

Hash32 = Annotated[bytes, Size(HASH_SIZE_BYTES)]


@dataclass(frozen=True)
class BlockHeader:
    """A block's header; its hash (:func:`get_block_hash`) names the block.

    ``proposer_index`` is the proposer's u16 index into the genesis validator
    list (2 bytes instead of a 32-byte key; the validator set is fixed).
    ``time_ms`` is the proposer's wall clock in Unix milliseconds; the codec
    never reads a clock.
    """

    chain_id: Annotated[str, MaxSize(CHAIN_ID_SIZE_MAX_BYTES)]
    height: int
    view: int
    parent_hash: Hash32
    tx_root: Hash32
    state_root: Hash32
    proposer_index: Annotated[int, Uint(16)]
    time_ms: int


@dataclass(frozen=True)
class Block:
    """A header and its transactions, each kept as its canonical encoding."""

    header: BlockHeader
    txs: tuple[bytes, ...]


@dataclass(frozen=True)
class CommitSignature:
    validator_index: Annotated[int, Uint(16)]
    signature: Annotated[bytes, Size(SIGNATURE_SIZE_BYTES)]


@dataclass(frozen=True)
class CommitCertificate:
    """Commit signatures for a block, in strictly increasing validator index order."""

    height: int
    view: int
    block_hash: Hash32
    signatures: tuple[CommitSignature, ...]


_HEADER_PLAN = get_plan(BlockHeader)
_CERTIFICATE_PLAN = get_plan(CommitCertificate)


def encode_block_header(header: BlockHeader) -> bytes:
    out = bytearray((KIND_BLOCK_HEADER, VERSION_1))
    _HEADER_PLAN.encode(header, out)
    return bytes(out)


def _check_chain_id(header: BlockHeader, chain_id: str | None) -> None:
    if chain_id is not None and header.chain_id != chain_id:
        raise DecodeError(
            f"block_header.chain_id: expected {chain_id!r}, got {header.chain_id!r}"
        )


@_decoder
def decode_block_header(
    data: bytes, limits: Limits = DEFAULT_LIMITS, chain_id: str | None = None
) -> BlockHeader:
    r = Reader(_as_input(data, limits.message_size_max_bytes, "block_header"))
    r.read_header(KIND_BLOCK_HEADER, "block_header")
    header: BlockHeader = _HEADER_PLAN.decode(r, limits)
    r.expect_end("block_header")
    _check_chain_id(header, chain_id)
    return header


@_decoder
def decode_block_header_of(data: bytes, limits: Limits = DEFAULT_LIMITS) -> BlockHeader:
    """The header at the start of an encoded block, without reading its transactions
    (a VIEW-CHANGE proves a block by its header: the block digest is the header's hash)."""
    r = Reader(_as_input(data, limits.block_size_max_bytes, "block"))
    r.read_header(KIND_BLOCK, "block")
    header: BlockHeader = _HEADER_PLAN.decode(r, limits)
    return header


def get_block_hash(header: BlockHeader) -> bytes:
    return sha256(encode_block_header(header))


def compute_tx_root(txs: Sequence[bytes]) -> bytes:
    """The Merkle root whose leaves are the transactions' canonical encodings."""
    return compute_merkle_root(txs)


def verify_block_tx_root(block: Block) -> bool:
    return block.header.tx_root == compute_tx_root(block.txs)


def encode_block(block: Block) -> bytes:
    out = bytearray((KIND_BLOCK, VERSION_1))
    _HEADER_PLAN.encode(block.header, out)
    if type(block.txs) is not tuple:
        raise EncodeError("Block.txs: expected a tuple of encoded transactions")
    out += _U32.pack(len(block.txs))
    for tx in block.txs:
        if type(tx) is not bytes:
            raise EncodeError("Block.txs[]: expected bytes")
        out += _U32.pack(len(tx))
        out += tx
    return bytes(out)


@_decoder
def decode_block(
    data: bytes,
    limits: Limits = DEFAULT_LIMITS,
    chain_id: str | None = None,
    check_txs: bool = True,
    check_tx_root: bool = True,
) -> Block:
    """Decode a block and check its tx root (and chain id when given).

    With ``check_txs`` every transaction is also decoded (and discarded) to
    check it is well formed; pass False when the caller decodes them anyway.
    ``check_tx_root=False`` leaves the root to a caller that checks it anyway
    (``apply_block`` does): hashing every tx twice was ~2% of a validator's time.
    """
    r = Reader(_as_input(data, limits.block_size_max_bytes, "block"))
    r.read_header(KIND_BLOCK, "block")
    header: BlockHeader = _HEADER_PLAN.decode(r, limits)
    _check_chain_id(header, chain_id)
    count = r.read_u32("block.txs")
    if count > limits.block_txs_max:
        raise DecodeError(f"block.txs: {count} transactions exceeds maximum {limits.block_txs_max}")
    txs = tuple([r.read_var_bytes(limits.tx_size_max_bytes, "block.txs[]") for _ in range(count)])
    r.expect_end("block")
    block = Block(header, txs)
    if check_tx_root and not verify_block_tx_root(block):
        raise DecodeError("block.header.tx_root: does not match the transactions")
    if check_txs:
        for index, tx in enumerate(txs):
            try:
                decode_tx(tx, limits)
            except DecodeError as exc:
                raise DecodeError(f"block.txs[{index}]: {exc}") from None
    return block


def encode_commit_certificate(certificate: CommitCertificate) -> bytes:
    _check_certificate_structure(certificate, DEFAULT_LIMITS, EncodeError)
    out = bytearray((KIND_COMMIT_CERTIFICATE, VERSION_1))
    _CERTIFICATE_PLAN.encode(certificate, out)
    return bytes(out)


def _check_certificate_structure(
    certificate: CommitCertificate, limits: Limits, error: type[Exception]
) -> None:
    signatures = certificate.signatures
    if not 0 < len(signatures) <= limits.commit_signatures_max:
        raise error(
            f"commit_certificate.signatures: count {len(signatures)} not in "
            f"1..{limits.commit_signatures_max}"
        )
    for previous, current in zip(signatures, signatures[1:], strict=False):
        if current.validator_index <= previous.validator_index:
            raise error(
                "commit_certificate.signatures: validator indices must strictly increase, "
                f"got {previous.validator_index} then {current.validator_index}"
            )


@_decoder
def decode_commit_certificate(data: bytes, limits: Limits = DEFAULT_LIMITS) -> CommitCertificate:
    r = Reader(_as_input(data, limits.message_size_max_bytes, "commit_certificate"))
    r.read_header(KIND_COMMIT_CERTIFICATE, "commit_certificate")
    certificate: CommitCertificate = _CERTIFICATE_PLAN.decode(r, limits)
    r.expect_end("commit_certificate")
    _check_certificate_structure(certificate, limits, DecodeError)
    return certificate


# --- consensus messages --------------------------------------------------------

_REGISTRIES: dict[tuple[type, ...], dict[int, _Plan]] = {}


def _get_registry(registry: Sequence[type]) -> dict[int, _Plan]:
    key = tuple(registry)
    plans = _REGISTRIES.get(key)
    if plans is None:
        plans = {}
        for cls in key:
            kind = getattr(cls, "KIND", None)
            if type(kind) is not int or not 0 <= kind < 256:
                raise TypeError(f"{cls.__name__}.KIND must be a u8 int")
            if kind in plans:
                raise TypeError(f"{cls.__name__}.KIND {kind} is used twice in the registry")
            plans[kind] = get_plan(cls)
        _REGISTRIES[key] = plans
    return plans


def encode_consensus_message(obj: object) -> bytes:
    """``KIND_CONSENSUS_MESSAGE, version, obj.KIND`` then the fields of ``obj``."""
    cls = type(obj)
    kind = getattr(cls, "KIND", None)
    if type(kind) is not int or not 0 <= kind < 256:
        raise EncodeError(f"{cls.__name__}.KIND must be a u8 int")
    out = bytearray((KIND_CONSENSUS_MESSAGE, VERSION_1, kind))
    get_plan(cls).encode(obj, out)
    return bytes(out)


@_decoder
def decode_consensus_message(
    data: bytes, registry: Sequence[type], limits: Limits = DEFAULT_LIMITS
) -> Any:
    plans = _get_registry(registry)
    r = Reader(_as_input(data, limits.message_size_max_bytes, "consensus_message"))
    r.read_header(KIND_CONSENSUS_MESSAGE, "consensus_message")
    kind = r.read_u8("consensus_message.message_kind")
    plan = plans.get(kind)
    if plan is None:
        raise DecodeError(f"consensus_message.message_kind: unknown kind {kind}")
    message = plan.decode(r, limits)
    r.expect_end("consensus_message")
    return message
