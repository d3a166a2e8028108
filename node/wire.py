"""Frames between validators other than consensus messages: catch-up block requests/responses.

A frame's first byte says what it is, so the driver can dispatch without trying
decoders in turn: ``0x06`` is a consensus message (``node/codec.py``), ``0x07`` a
tx batch (``node/mempool.py``), and this module adds ``0x10`` (a request for
committed blocks ``from_seq..to_seq``) and ``0x11`` (the answer: committed blocks
with their consensus commit certificates, each a codec-encoded ``FetchedBlock``).

Both are strict like every decoder here: kind, version, counts and sizes are
checked, trailing bytes are refused, and only :class:`~node.codec.DecodeError`
escapes. A response is bounded in blocks (:data:`FETCH_BLOCKS_MAX`) and bytes
(the caller's frame budget), so serving a peer costs a bounded amount of work.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from consensus.messages import MESSAGE_TYPES, FetchedBlock
from node.codec import (
    DEFAULT_LIMITS,
    KIND_CONSENSUS_MESSAGE,
    VERSION_1,
    DecodeError,
    Limits,
    Reader,
    _as_input,
    _decoder,
    decode_consensus_message,
    encode_consensus_message,
)
from node.mempool import KIND_TX_BATCH

KIND_BLOCK_REQUEST = 0x10
KIND_BLOCK_RESPONSE = 0x11
FETCH_BLOCKS_MAX = 64  # per request and per response
REQUEST_SIZE_BYTES = 2 + 8 + 8

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

FRAME_CONSENSUS = "consensus"
FRAME_TX_BATCH = "tx_batch"
FRAME_BLOCK_REQUEST = "block_request"
FRAME_BLOCK_RESPONSE = "block_response"
_FRAME_KINDS = {
    KIND_CONSENSUS_MESSAGE: FRAME_CONSENSUS,
    KIND_TX_BATCH: FRAME_TX_BATCH,
    KIND_BLOCK_REQUEST: FRAME_BLOCK_REQUEST,
    KIND_BLOCK_RESPONSE: FRAME_BLOCK_RESPONSE,
}
assert len(_FRAME_KINDS) == 4, "frame kinds must be distinct"


@dataclass(frozen=True)
class BlockRequest:
    """Ask for committed blocks ``from_seq..to_seq`` inclusive (at most FETCH_BLOCKS_MAX)."""

    from_seq: int
    to_seq: int

    def __post_init__(self) -> None:
        if not 1 <= self.from_seq <= self.to_seq < 2**64:
            raise ValueError(f"block request {self.from_seq}..{self.to_seq} is not a range")
        if self.to_seq - self.from_seq + 1 > FETCH_BLOCKS_MAX:
            raise ValueError(f"block request of over {FETCH_BLOCKS_MAX} blocks")


def get_frame_kind(frame: bytes) -> str | None:
    """Which kind of frame this is by its first byte, or None if unknown (or empty)."""
    if not frame:
        return None
    return _FRAME_KINDS.get(frame[0])


def encode_block_request(request: BlockRequest) -> bytes:
    return bytes((KIND_BLOCK_REQUEST, VERSION_1)) + _U64.pack(request.from_seq) + _U64.pack(
        request.to_seq
    )


@_decoder
def decode_block_request(data: bytes) -> BlockRequest:
    r = Reader(_as_input(data, REQUEST_SIZE_BYTES, "block_request"))
    r.read_header(KIND_BLOCK_REQUEST, "block_request")
    from_seq = r.read_u64("block_request.from_seq")
    to_seq = r.read_u64("block_request.to_seq")
    r.expect_end("block_request")
    try:
        return BlockRequest(from_seq, to_seq)
    except ValueError as exc:
        raise DecodeError(f"block_request: {exc}") from None


def encode_block_response(blocks: Sequence[FetchedBlock]) -> bytes:
    """``KIND, VERSION, u32 count, (u32 len, encoded FetchedBlock)*``."""
    assert len(blocks) <= FETCH_BLOCKS_MAX
    parts = [bytes((KIND_BLOCK_RESPONSE, VERSION_1)), _U32.pack(len(blocks))]
    for block in blocks:
        encoded = encode_consensus_message(block)
        parts.append(_U32.pack(len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


@_decoder
def decode_block_response(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[FetchedBlock]:
    r = Reader(_as_input(data, limits.message_size_max_bytes, "block_response"))
    r.read_header(KIND_BLOCK_RESPONSE, "block_response")
    count = r.read_u32("block_response.count")
    if count > FETCH_BLOCKS_MAX:
        raise DecodeError(f"block_response.count: {count} exceeds maximum {FETCH_BLOCKS_MAX}")
    blocks: list[FetchedBlock] = []
    for _ in range(count):
        raw = r.read_var_bytes(limits.message_size_max_bytes, "block_response.blocks[]")
        block = decode_consensus_message(raw, MESSAGE_TYPES, limits)
        if not isinstance(block, FetchedBlock):
            raise DecodeError(f"block_response.blocks[]: a {type(block).__name__}, not a block")
        blocks.append(block)
    r.expect_end("block_response")
    seqs = [b.seq for b in blocks]
    if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
        raise DecodeError("block_response.blocks: seqs must strictly increase")
    return blocks


__all__ = [
    "BlockRequest",
    "FETCH_BLOCKS_MAX",
    "KIND_BLOCK_REQUEST",
    "KIND_BLOCK_RESPONSE",
    "decode_block_request",
    "decode_block_response",
    "encode_block_request",
    "encode_block_response",
    "get_frame_kind",
]
