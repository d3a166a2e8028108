"""Ledger and mempool throughput: ``PYTHONPATH=. python tests/ledger/bench_ledger.py``.

Prints one JSON object. Not a test (the name does not start with ``test_``):
timings stay out of assertions. Belongs in ``node/bench/ledger.py`` once wired.
"""

from __future__ import annotations

import json
import sys
import time

from node.codec import Transaction, Transfer, encode_tx, sign_tx
from node.genesis import Genesis
from node.keys import KeyPair
from node.ledger import (
    ChainContext,
    SignatureCache,
    apply_block,
    build_block,
    get_genesis_state,
    make_state,
)
from node.mempool import SOURCE_PEER, Mempool, MempoolConfig
from tests.ledger.helpers import VALIDATORS

CHAIN_ID = "bench-chain"


def main(argv: list[str]) -> int:
    accounts = int(argv[0]) if argv else 10_000
    txs_count = int(argv[1]) if len(argv) > 1 else 2_000
    senders = [KeyPair.from_seed(i.to_bytes(32, "little")) for i in range(1, 201)]
    others = [i.to_bytes(32, "big") for i in range(accounts - len(senders))]
    balances = sorted([(k.public_key, 10**9) for k in senders] + [(o, 1) for o in others])
    genesis = Genesis(CHAIN_ID, 0, VALIDATORS, balances=tuple(balances))
    context = ChainContext.from_genesis(genesis)
    t0 = time.perf_counter()
    state = get_genesis_state(genesis)
    root = state.state_root
    genesis_s = time.perf_counter() - t0
    assert root
    txs = []
    for i in range(txs_count):
        key = senders[i % len(senders)]
        tx = Transaction(key.public_key, i // len(senders), Transfer(others[i % len(others)], 1))
        txs.append(encode_tx(sign_tx(key, CHAIN_ID, tx)))

    pool = Mempool(CHAIN_ID, config=MempoolConfig(nonce_gap_max=txs_count))
    t0 = time.perf_counter()
    for tx in txs:
        assert pool.admit(tx, state, 0, SOURCE_PEER).ok
    admit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reaped = pool.reap(txs_count, 10**9, state)
    reap_s = time.perf_counter() - t0
    assert len(reaped) == txs_count
    t0 = time.perf_counter()
    built = build_block(state, reaped, context, 0, 0, 1, pool.signature_cache)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    apply_block(state, built.block, context, pool.signature_cache)
    apply_cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    apply_block(state, built.block, context, SignatureCache())
    apply_verify_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rebuilt_root = make_state(0, b"\x00" * 32, 0, state.entries).state_root
    root_full_s = time.perf_counter() - t0
    assert rebuilt_root == root
    result = {
        "accounts": accounts,
        "txs": txs_count,
        "genesis_state_and_root_s": round(genesis_s, 4),
        "state_root_from_scratch_s": round(root_full_s, 4),
        "admit_tx_per_s": round(txs_count / admit_s),
        "reap_tx_per_s": round(txs_count / reap_s),
        "build_block_tx_per_s": round(txs_count / build_s),
        "apply_block_sigs_cached_tx_per_s": round(txs_count / apply_cached_s),
        "apply_block_verifying_tx_per_s": round(txs_count / apply_verify_s),
        "apply_block_sigs_cached_ms": round(apply_cached_s * 1000, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
