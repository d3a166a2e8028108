"""Hypothesis strategies for the foundation's encoded types."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from node.codec import (
    MEMO_SIZE_MAX_BYTES,
    Block,
    BlockHeader,
    CommitCertificate,
    CommitSignature,
    Transaction,
    Transfer,
    compute_tx_root,
    encode_tx,
)

u64 = st.integers(0, 2**64 - 1)
u16 = st.integers(0, 2**16 - 1)
hash32 = st.binary(min_size=32, max_size=32)
chain_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=16)

transfers = st.builds(
    Transfer, recipient=hash32, amount=u64, memo=st.binary(max_size=MEMO_SIZE_MAX_BYTES)
)
signed_txs = st.builds(
    Transaction,
    sender=hash32,
    nonce=u64,
    body=transfers,
    signature=st.binary(min_size=64, max_size=64),
)
headers = st.builds(
    BlockHeader,
    chain_id=chain_ids,
    height=u64,
    view=u64,
    parent_hash=hash32,
    tx_root=hash32,
    state_root=hash32,
    proposer_index=u16,
    time_ms=u64,
)


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    header = draw(headers)
    txs = tuple(encode_tx(tx) for tx in draw(st.lists(signed_txs, max_size=4)))
    from dataclasses import replace

    return Block(replace(header, tx_root=compute_tx_root(txs)), txs)


@st.composite
def certificates(draw: st.DrawFn) -> CommitCertificate:
    indices = sorted(draw(st.sets(u16, min_size=1, max_size=6)))
    signatures = tuple(
        CommitSignature(i, draw(st.binary(min_size=64, max_size=64))) for i in indices
    )
    return CommitCertificate(draw(u64), draw(u64), draw(hash32), signatures)


_DTYPES = ["<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8", "<f4", "<f8", ">i4", ">f8"]

arrays = st.sampled_from(_DTYPES).flatmap(
    lambda dtype: hnp.arrays(
        np.dtype(dtype),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        elements=(
            st.floats(allow_nan=False, allow_infinity=False, width=np.dtype(dtype).itemsize * 8)
            if np.dtype(dtype).kind == "f"
            else None
        ),
    )
)
