"""``bcfl bench ledger``: state transition and mempool throughput, in process.

Builds a genesis with many accounts, signs transfers from a few hundred
senders, then times admission (signature checks), reaping, building a block,
and applying it with signatures cached (what a validator does: each signature
is checked once, at admission) and uncached. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from node.codec import Transaction, Transfer, encode_tx, sign_tx
from node.genesis import Genesis, ValidatorInfo
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

CHAIN_ID = "bench-chain"
SENDERS_COUNT = 200
VALIDATORS = tuple(
    ValidatorInfo(f"v{i}", KeyPair.from_seed(bytes([100 + i]) * 32).public_key,
                  "127.0.0.1", 26000 + i, "127.0.0.1", 27000 + i)
    for i in range(4)
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bcfl bench ledger", description=__doc__)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--txs", type=int, default=2_000)
    args = parser.parse_args(argv)
    accounts, txs_count = args.accounts, args.txs
    if accounts <= SENDERS_COUNT or txs_count < 1:
        parser.error(f"--accounts must exceed {SENDERS_COUNT} and --txs be positive")
    senders = [KeyPair.from_seed(i.to_bytes(32, "little")) for i in range(1, SENDERS_COUNT + 1)]
    others = [i.to_bytes(32, "big") for i in range(accounts - len(senders))]
    balances = sorted([(k.public_key, 10**9) for k in senders] + [(o, 1) for o in others])
    genesis = Genesis(CHAIN_ID, 0, VALIDATORS, balances=tuple(balances))
    context = ChainContext.from_genesis(genesis)
    t0 = time.perf_counter()
    state = get_genesis_state(genesis)
    root = state.state_root
    genesis_s = time.perf_counter() - t0
    assert root
    txs: list[bytes] = []
    for i in range(txs_count):
        key = senders[i % len(senders)]
        transfer = Transfer(others[i % len(others)], 1)
        unsigned = Transaction(key.public_key, i // len(senders), transfer)
        txs.append(encode_tx(sign_tx(key, CHAIN_ID, unsigned)))

    pool = Mempool(CHAIN_ID, config=MempoolConfig(nonce_gap_max=txs_count))
    t0 = time.perf_counter()
    for tx_bytes in txs:
        assert pool.admit(tx_bytes, state, 0, SOURCE_PEER).ok
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
