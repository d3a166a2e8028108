"""``bcfl bench round``: one learning round end to end against model size and hospital count.

How it works. In one process (no network, no consensus: the ledger and a LevelDB
``ChainStore`` in a temporary directory) it builds a genesis with one MLP task of
about ``d`` parameters (hidden width from ``fl.models.compute_mlp_width``), H trainer
hospitals and ``--validators`` validator members, then times each stage of a round:

- ``local_training_s``: each hospital trains on its private shard
  (``fl.commitment.train_with_commitment``, 1 epoch) and clips its delta; mean per hospital;
- ``submission_s``: quantize + encode + sign (``make_model_delta_tx``) and admission
  (``Mempool.admit``: strict decode, signature, ledger checks), summed over hospitals;
- ``delta_blocks``: the deltas packed in order into as many blocks as the block cap needs
  (``pack_txs``, the node's reap rule: tx bytes <= cap - 4096), each built by the proposer
  (``build_block``), re-applied by a validator (``apply_block``, with the DP accountant's
  memo cleared first: a validator that got the txs by relay never ran it) and committed;
  every delta must be in the round afterwards (``deltas_included``);
- ``validation_attestation_s``: each validator scores the deltas on its private data
  (``compute_attestation_scores``) and signs its attestation (max and total over validators);
- ``round_close_s``: the block of attestations, which closes the round inside
  ``build_block`` (proposer) and ``apply_block`` (validator): robust aggregation, chain
  scoring, Shapley rewards, new model version;
- ``commit_s``: that block's ``ChainStore.commit_block`` (one synced LevelDB batch).

``chain_time_after_last_delta_s`` = the last delta block's apply and commit + the slowest
validator's attestation (validators attest in parallel, each on its own machine) + the
close block's apply and commit (training and submission happen off chain): the issue's
target is < 5 s for H = 10, d = 1e6. ``critical_path_after_last_delta_s`` adds the
proposer's ``build_block`` of both blocks, which runs before the validators' apply.
``--block-cap-bytes`` defaults to the node's cap (``node.node.BLOCK_SIZE_CAP_BYTES``, a
quarter of the transport frame); a delta tx larger than the cap is reported, not measured.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from node.bench.common import get_machine_info, write_report

CHAIN_ID = "bench-round"
SCALE_EXP = 12
VALIDATION_SEED = 7
VALIDATION_SIZE = 120
DP = {"clip_norm": 4.0, "noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": 10}
BLOCK_OVERHEAD_BYTES = 4096  # the node reaps at most cap - 4096 bytes of txs per block


def get_learning_rate(hidden: int) -> float:
    """0.05 up to 300 hidden units, then smaller: one epoch at 0.05 makes a d = 1e6 MLP's
    validation loss 10x worse, so RONI would reject every delta and the close would skip
    Shapley; the bench wants the worst case for the close, every delta accepted."""
    return 0.05 * min(1.0, 300 / hidden) ** 0.75


def pack_txs(txs: list[bytes], max_bytes: int) -> list[list[bytes]] | None:
    """Consecutive groups, each with at most ``max_bytes`` of txs (None: one tx is larger)."""
    groups: list[list[bytes]] = []
    size = 0
    for tx in txs:
        if len(tx) > max_bytes:
            return None
        if not groups or size + len(tx) > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tx)
        size += len(tx)
    assert sum(len(g) for g in groups) == len(txs)
    return groups


def get_load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (the machine may be shared), None where unknown."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def make_genesis(hidden: int, hospitals: list[Any], validators: list[Any],
                 consensus: list[Any]) -> Any:
    import node.learning as learning
    from node.genesis import parse_genesis

    _, _, digest = learning.build_validation_set("breast_cancer", VALIDATION_SEED, VALIDATION_SIZE)
    task = {
        "name": "bench-mlp",
        "model": {"kind": "mlp", "n_features": 30, "n_classes": 2, "hidden": hidden},
        "rule": "median",
        "round_length_blocks": 100,
        "scale_exp": SCALE_EXP,
        "reward_pool": 1_000_000,
        "validator_share": 0.1,
        "thresholds": {"norm_max": 100.0, "roni_tolerance": 1.0, "agreement_min": 0.0},
        "privacy": {"clip_norm": 4.0, "noise_multiplier_min": 0.5, "epsilon_budget": 1000.0,
                    "delta": 1e-5},
        "validation_set": {"dataset": "breast_cancer", "seed": VALIDATION_SEED,
                           "size": VALIDATION_SIZE, "hash": digest.hex()},
    }
    document = {
        "chain_id": CHAIN_ID,
        "genesis_time_ms": 1000,
        "validators": [
            {"name": f"node{i}", "public_key": k.public_key.hex(), "p2p_host": "127.0.0.1",
             "p2p_port": 26000 + i, "api_host": "127.0.0.1", "api_port": 27000 + i}
            for i, k in enumerate(consensus)
        ],
        "members": [{"name": f"hospital{i}", "public_key": k.public_key.hex(), "role": "trainer"}
                    for i, k in enumerate(hospitals)]
        + [{"name": f"validator{i}", "public_key": k.public_key.hex(), "role": "validator"}
           for i, k in enumerate(validators)],
        "fl": {"tasks": [task]},
    }
    return parse_genesis(document)


def measure_round(d: int, hospitals_count: int, validators_count: int,
                  workdir: Path, block_cap_bytes: int | None = None) -> dict[str, Any]:
    import node.learning as learning
    from fl.commitment import train_with_commitment
    from fl.models import compute_mlp_width, compute_param_count
    from fl.privacy import clear_epsilon_cache, clip_and_noise
    from fl.quantize import quantize
    from fl.training import TrainConfig
    from node.chain import ChainStore
    from node.codec import CommitCertificate, CommitSignature, encode_block
    from node.keys import KeyPair
    from node.ledger import ChainContext, apply_block, build_block, get_genesis_state
    from node.mempool import Mempool, MempoolConfig
    from node.node import BLOCK_SIZE_CAP_BYTES
    from node.store import LevelDBStore

    if block_cap_bytes is None:
        block_cap_bytes = BLOCK_SIZE_CAP_BYTES
    hidden = compute_mlp_width(30, 2, d)
    hospitals = [KeyPair.generate() for _ in range(hospitals_count)]
    validators = [KeyPair.generate() for _ in range(validators_count)]
    consensus = [KeyPair.generate() for _ in range(4)]
    genesis = make_genesis(hidden, hospitals, validators, consensus)
    context = ChainContext.from_genesis(genesis)
    state = get_genesis_state(genesis)
    store = LevelDBStore(workdir / f"db-{d}-{hospitals_count}")
    chain = ChainStore(store, genesis)
    try:
        task = learning.get_task(state, 0)
        assert task is not None
        spec = learning.get_model_spec(task.config)
        params = compute_param_count(spec)
        base = learning.get_model_params(state, 0)
        assert base is not None
        current = learning.get_round(state, 0)
        assert current is not None
        x, y = learning.get_shared_dataset("breast_cancer")
        rng = np.random.default_rng(0)
        shards = np.array_split(rng.permutation(x.shape[0]), hospitals_count + validators_count)

        train_s: list[float] = []
        deltas = []
        for i, _key in enumerate(hospitals):
            t0 = time.perf_counter()
            config = TrainConfig(epochs=1, learning_rate=get_learning_rate(hidden),
                                 batch_size=32, momentum=0.0, seed=i)
            trained, training_commitment, _ = train_with_commitment(
                spec, base, x[shards[i]], y[shards[i]], config, i, 4)
            delta = clip_and_noise(trained - base, DP["clip_norm"], 0.0,
                                   np.random.default_rng(i))
            train_s.append(time.perf_counter() - t0)
            deltas.append((delta, learning.make_commitment_record(training_commitment)))

        mempool = Mempool(CHAIN_ID, context.limits, MempoolConfig(), validator_count=4)
        submission_s = 0.0
        delta_txs: list[bytes] = []
        for key, (delta, commitment) in zip(hospitals, deltas, strict=True):
            t0 = time.perf_counter()
            tx = learning.make_model_delta_tx(
                key, CHAIN_ID, 0, current.round, current.base_model_hash,
                quantize(delta, SCALE_EXP), nonce=0, sample_count=50,
                clip_norm=DP["clip_norm"], noise_multiplier=DP["noise_multiplier"],
                sampling_rate=DP["sampling_rate"], steps=int(DP["steps"]), commitment=commitment)
            result = mempool.admit(tx, state, 2000, "local")
            submission_s += time.perf_counter() - t0
            assert result.reason is None, f"delta refused: {result.reason} {result.message}"
            delta_txs.append(tx)

        def commit(built_block: Any, applied: Any) -> float:
            t0 = time.perf_counter()
            block_bytes = encode_block(built_block)
            # Placeholder signatures: the store checks structure, not votes (not timed here).
            signatures = tuple(CommitSignature(i, bytes(64)) for i in range(3))
            certificate = CommitCertificate(applied.state.height, 0, applied.block_hash,
                                            signatures)
            chain.commit_block(block_bytes, applied, certificate)
            return time.perf_counter() - t0

        groups = pack_txs(delta_txs, block_cap_bytes - BLOCK_OVERHEAD_BYTES)
        if groups is None:  # a finding, not a crash: no node could ever include this delta
            return {"d_target": d, "params": params, "hospitals": hospitals_count,
                    "delta_tx_bytes": max(len(tx) for tx in delta_txs),
                    "block_cap_bytes": block_cap_bytes,
                    "node_block_cap_bytes": BLOCK_SIZE_CAP_BYTES,
                    "error": f"a {max(len(tx) for tx in delta_txs):,}-byte delta tx does not fit "
                             f"a block of at most {block_cap_bytes:,} bytes"}
        delta_blocks: list[dict[str, Any]] = []
        for seq, group in enumerate(groups):
            t0 = time.perf_counter()
            built = build_block(state, group, context, 0, 0, 2000 + seq)
            build_s = time.perf_counter() - t0
            assert len(built.block.txs) == len(group), "the builder dropped a delta"
            # A validator that got these txs by relay never ran the accountant on them.
            clear_epsilon_cache()
            t0 = time.perf_counter()
            applied = apply_block(state, built.block, context)
            apply_s = time.perf_counter() - t0
            commit_s = commit(built.block, applied)
            state = applied.state
            delta_blocks.append({"txs": len(group), "bytes": len(encode_block(built.block)),
                                 "build_s": build_s, "apply_s": apply_s, "commit_s": commit_s})
        included = learning.get_round(state, 0)
        assert included is not None and included.round == current.round
        deltas_included = len(included.delta_tx_hashes)
        assert deltas_included == hospitals_count, "every delta must be in the round"

        attest_s: list[float] = []
        attest_txs: list[bytes] = []
        for k, key in enumerate(validators):
            shard = shards[hospitals_count + k]
            t0 = time.perf_counter()
            scores = learning.compute_attestation_scores(state, 0, x[shard], y[shard])
            attest_txs.append(learning.make_attestation_tx(key, CHAIN_ID, 0, current.round,
                                                           scores, nonce=0))
            attest_s.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        built2 = build_block(state, attest_txs, context, 1, 0, 3000)
        close_build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        applied2 = apply_block(state, built2.block, context)
        close_apply_s = time.perf_counter() - t0
        close_commit_s = commit(built2.block, applied2)
        closed = learning.get_round(applied2.state, 0)
        assert closed is not None and closed.round == current.round + 1, "round must close"
        summary = learning.get_round_summary(applied2.state, 0, current.round)
        assert summary is not None and len(summary.outcomes) == hospitals_count
        last = delta_blocks[-1]
        # Validators attest in parallel, each on its own machine: the slowest one counts.
        chain_s = (last["apply_s"] + last["commit_s"] + max(attest_s) + close_apply_s
                   + close_commit_s)
        return {
            "d_target": d,
            "params": params,
            "hidden": hidden,
            "hospitals": hospitals_count,
            "validators": validators_count,
            "delta_tx_bytes": max(len(tx) for tx in delta_txs),
            "block_cap_bytes": block_cap_bytes,
            "node_block_cap_bytes": BLOCK_SIZE_CAP_BYTES,
            "delta_fits_node_block": max(len(tx) for tx in delta_txs) + BLOCK_OVERHEAD_BYTES
            <= BLOCK_SIZE_CAP_BYTES,
            "deltas_included": deltas_included,
            "deltas_accepted": sum(1 for o in summary.outcomes if o.accepted),
            "delta_blocks": delta_blocks,
            "local_training_s": {"mean": float(np.mean(train_s)), "samples": len(train_s)},
            "submission_s": {"total": submission_s, "samples": hospitals_count},
            "validation_attestation_s": {"max": max(attest_s), "total": sum(attest_s),
                                         "samples": validators_count},
            "round_close_s": {"build": close_build_s, "apply": close_apply_s},
            "commit_s": close_commit_s,
            "chain_time_after_last_delta_s": chain_s,
            "critical_path_after_last_delta_s": chain_s + last["build_s"] + close_build_s,
            "load_average": get_load_average(),
        }
    finally:
        store.close()


def print_result(result: dict[str, Any]) -> None:
    h = result["hospitals"]
    if "error" in result:
        print(f"d={result['params']:>8} H={h:>2}: {result['error']}", file=sys.stderr)
        return
    train = result["local_training_s"]["mean"]
    last = result["delta_blocks"][-1]
    print(f"d={result['params']:>8} H={h:>2}: train {train:.3f} s/hospital, "
          f"submit {result['submission_s']['total']:.3f} s, "
          f"{len(result['delta_blocks'])} delta block(s), last apply "
          f"{last['apply_s']:.3f} s, attest (slowest) "
          f"{result['validation_attestation_s']['max']:.3f} s, close "
          f"{result['round_close_s']['apply']:.3f} s, commit {result['commit_s']:.3f}"
          f" s -> chain {result['chain_time_after_last_delta_s']:.2f} s "
          f"(with proposer builds {result['critical_path_after_last_delta_s']:.2f} s)"
          f", load {result['load_average']}", file=sys.stderr)


def main(argv: list[str]) -> int:
    from node.codec import DEFAULT_LIMITS
    from node.node import BLOCK_SIZE_CAP_BYTES

    parser = argparse.ArgumentParser(prog="bcfl bench round", description=__doc__.splitlines()[0])
    parser.add_argument("--d", default="10000,100000,1000000",
                        help="comma-separated target parameter counts (1e4..1e6)")
    parser.add_argument("--hospitals", default="10", help="comma-separated hospital counts")
    parser.add_argument("--validators", type=int, default=4, help="validator members")
    parser.add_argument("--block-cap-bytes", type=int, default=BLOCK_SIZE_CAP_BYTES,
                        help="largest block (default: the node's cap, %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds per (d, hospitals) case: the machine may be shared")
    parser.add_argument("--output", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    try:
        sizes = [int(float(v)) for v in args.d.split(",") if v]
        counts = [int(v) for v in args.hospitals.split(",") if v]
    except ValueError:
        parser.error("--d and --hospitals take comma-separated numbers")
    if any(not 100 <= d <= 2_000_000 for d in sizes) or any(not 1 <= h <= 64 for h in counts):
        parser.error("--d must be in 100..2e6 and --hospitals in 1..64")
    if not 1 <= args.validators <= 16:
        parser.error("--validators must be in 1..16")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be in 1..20")
    codec_max = DEFAULT_LIMITS.block_size_max_bytes
    if not 64 * 1024 <= args.block_cap_bytes <= codec_max:
        parser.error(f"--block-cap-bytes must be in 65536..{codec_max} (the codec's limit)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bcfl-round-") as tmp:
        # A small round first so Numba compiles (or loads its cache) outside the timings.
        measure_round(1000, 2, args.validators, Path(tmp) / "warmup")
        for d, h, repeat in itertools.product(sizes, counts, range(args.repeat)):
            workdir = Path(tmp) / f"run-{d}-{h}-{repeat}"
            result = {**measure_round(d, h, args.validators, workdir, args.block_cap_bytes),
                      "repeat": repeat}
            results.append(result)
            print_result(result)
    report = {
        "benchmark": "round",
        "machine": get_machine_info(),
        "setup": "in-process: ledger build_block/apply_block + LevelDB ChainStore, no network;"
                 " a warm-up round (d=1000) first so Numba compilation is excluded",
        "parameters": {"d": sizes, "hospitals": counts, "validators": args.validators,
                       "block_cap_bytes": args.block_cap_bytes, "repeat": args.repeat},
        "results": results,
    }
    print(write_report(report, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
