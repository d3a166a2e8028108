"""Every key in the store, built here and nowhere else.

Each area has a distinct prefix ``<letter>/``; no prefix is a prefix of
another, so iterating one area never touches the next. Heights and sequence
numbers are 8-byte big-endian so that byte order is numeric order.

| key                                   | value                                       |
|---------------------------------------|---------------------------------------------|
| ``b/`` height(8)                      | encoded block                               |
| ``c/`` height(8)                      | encoded commit certificate                  |
| ``h/`` block hash(32)                 | height(8)                                   |
| ``t/`` tx hash(32)                    | height(8) index(4)  (:func:`encode_tx_location`) |
| ``s/`` state area(1) ``/`` id         | chain state entry (e.g. ``s/a/`` + account public key) |
| ``s/i/registry``                      | learning: member institutions (node/learning) |
| ``s/k/meta``, ``s/k/`` task(4)        | learning: task count + validator keys; task config |
| ``s/o/`` task(4)                      | learning: the task's open round             |
| ``s/u/`` task(4) round(8)             | learning: closed round summary (outcomes, rewards) |
| ``s/d/`` task(4) tx hash(32)          | learning: a pending delta (deleted at round close) |
| ``s/n/`` task(4) validator key(32)    | learning: an attestation (deleted at round close) |
| ``s/g/`` task(4) digest(32)           | learning: digest of every delta ever sent (copies) |
| ``s/v/`` task(4) version(8) / latest  | learning: model version (hash, lineage)     |
| ``s/p/`` task(4) version(8)           | learning: model params (float64; last few kept) |
| ``s/r/`` public key(32)               | learning: reputation (ppm, u64 BE)          |
| ``s/e/`` task(4) public key(32)       | learning: privacy spent (micro-epsilon + history) |
| ``s/q/meta``, ``s/q/`` id(8)          | learning: governance counter; proposals     |
| ``s/x/validators``                    | evidence: validator keys by index (node/evidence) |
| ``s/x/r/`` offender(4) view(8) seq(8) | evidence: one equivocation record           |
| ``s/x/c/`` offender(4)                | evidence: records against the offender (u64 BE) |
| ``l/`` height(8)                      | local wall clock at commit, ms (never hashed) |
| ``m/latest_height``                   | height(8)                                   |
| ``m/latest_state_root``               | 32-byte state root                          |
| ``m/genesis_hash``                    | 32-byte genesis hash (refuse a different genesis) |
| ``m/wal_next_seq``                    | seq(8): the next write-ahead number (never reused) |
| ``w/`` seq(8)                         | consensus write-ahead record (own votes)    |
"""

from __future__ import annotations

import struct

BLOCK_PREFIX = b"b/"
CERTIFICATE_PREFIX = b"c/"
BLOCK_HASH_PREFIX = b"h/"
TX_PREFIX = b"t/"
STATE_PREFIX = b"s/"
ACCOUNT_PREFIX = STATE_PREFIX + b"a/"
META_PREFIX = b"m/"
COMMIT_TIME_PREFIX = b"l/"

# Learning state areas (node/learning): one byte each, under STATE_PREFIX.
AREA_FL_INSTITUTIONS = b"i"
AREA_FL_TASKS = b"k"
AREA_FL_ROUNDS = b"o"
AREA_FL_SUMMARIES = b"u"
AREA_FL_DELTAS = b"d"
AREA_FL_ATTESTATIONS = b"n"
AREA_FL_DIGESTS = b"g"
AREA_FL_MODELS = b"v"
AREA_FL_PARAMS = b"p"
AREA_FL_REPUTATION = b"r"
AREA_FL_PRIVACY = b"e"
AREA_FL_GOVERNANCE = b"q"
LEARNING_AREAS = (
    AREA_FL_INSTITUTIONS, AREA_FL_TASKS, AREA_FL_ROUNDS, AREA_FL_SUMMARIES, AREA_FL_DELTAS,
    AREA_FL_ATTESTATIONS, AREA_FL_DIGESTS, AREA_FL_MODELS, AREA_FL_PARAMS, AREA_FL_REPUTATION,
    AREA_FL_PRIVACY, AREA_FL_GOVERNANCE,
)
assert len(set(LEARNING_AREAS)) == len(LEARNING_AREAS) and b"a" not in LEARNING_AREAS
WAL_PREFIX = b"w/"

LATEST_HEIGHT_KEY = META_PREFIX + b"latest_height"
LATEST_STATE_ROOT_KEY = META_PREFIX + b"latest_state_root"
GENESIS_HASH_KEY = META_PREFIX + b"genesis_hash"
WAL_NEXT_SEQ_KEY = META_PREFIX + b"wal_next_seq"

ALL_PREFIXES = (
    BLOCK_PREFIX,
    CERTIFICATE_PREFIX,
    BLOCK_HASH_PREFIX,
    TX_PREFIX,
    STATE_PREFIX,
    META_PREFIX,
    COMMIT_TIME_PREFIX,
    WAL_PREFIX,
)
assert len({p[:1] for p in ALL_PREFIXES}) == len(ALL_PREFIXES), "prefixes must not overlap"

HASH_SIZE_BYTES = 32
_BE64 = struct.Struct(">Q")
_TX_LOCATION = struct.Struct(">QI")


class SchemaError(ValueError):
    """A key or stored value does not have the layout this schema defines."""


def encode_height(height: int) -> bytes:
    if not 0 <= height < 1 << 64:
        raise SchemaError(f"height {height} is not a u64")
    return _BE64.pack(height)


def decode_height(value: bytes) -> int:
    if len(value) != _BE64.size:
        raise SchemaError(f"stored height must be 8 bytes, got {len(value)}")
    height: int = _BE64.unpack(value)[0]
    return height


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE_BYTES:
        raise SchemaError(f"{what} must be {HASH_SIZE_BYTES} bytes, got {len(value)}")


def get_block_key(height: int) -> bytes:
    return BLOCK_PREFIX + encode_height(height)


def get_certificate_key(height: int) -> bytes:
    return CERTIFICATE_PREFIX + encode_height(height)


def get_commit_time_key(height: int) -> bytes:
    return COMMIT_TIME_PREFIX + encode_height(height)


def get_block_hash_key(block_hash: bytes) -> bytes:
    _check_hash("block hash", block_hash)
    return BLOCK_HASH_PREFIX + block_hash


def get_tx_key(tx_hash: bytes) -> bytes:
    _check_hash("tx hash", tx_hash)
    return TX_PREFIX + tx_hash


def encode_tx_location(height: int, index: int) -> bytes:
    if not 0 <= index < 1 << 32:
        raise SchemaError(f"tx index {index} is not a u32")
    encode_height(height)
    return _TX_LOCATION.pack(height, index)


def decode_tx_location(value: bytes) -> tuple[int, int]:
    if len(value) != _TX_LOCATION.size:
        raise SchemaError(f"stored tx location must be {_TX_LOCATION.size} bytes")
    height, index = _TX_LOCATION.unpack(value)
    return height, index


def get_state_key(area: bytes, entry_id: bytes) -> bytes:
    """A chain state entry: ``area`` is one byte naming the kind of entry."""
    if len(area) != 1 or area == b"/":
        raise SchemaError(f"state area must be one byte other than '/', got {area!r}")
    return STATE_PREFIX + area + b"/" + entry_id


def get_account_key(public_key: bytes) -> bytes:
    if len(public_key) != 32:
        raise SchemaError(f"account id must be a 32-byte public key, got {len(public_key)}")
    return ACCOUNT_PREFIX + public_key


def get_account_public_key(key: bytes) -> bytes | None:
    """The public key of an account entry's key (``get_account_key``'s inverse), or None
    for a key of another kind."""
    if not key.startswith(ACCOUNT_PREFIX) or len(key) != len(ACCOUNT_PREFIX) + 32:
        return None
    return key[len(ACCOUNT_PREFIX):]


def get_wal_key(seq: int) -> bytes:
    """The write-ahead record number ``seq`` (monotonically increasing, from 0)."""
    return WAL_PREFIX + encode_height(seq)


def get_wal_seq(key: bytes) -> int:
    if not key.startswith(WAL_PREFIX):
        raise SchemaError(f"{key!r} is not a write-ahead key")
    return decode_height(key[len(WAL_PREFIX) :])


def get_height_of_block_key(key: bytes) -> int:
    if not key.startswith(BLOCK_PREFIX):
        raise SchemaError(f"{key!r} is not a block key")
    return decode_height(key[len(BLOCK_PREFIX) :])
