"""``bcfl bench node``: the validator's node layer in one process, with no network.

How it works. For each N it builds a genesis with ``--accounts`` funded accounts and N
:class:`~node.node.Driver` s, each over its own LevelDB store in a temporary directory
(``--store memory`` for the in-memory one), joined by a FIFO router in place of libp2p
and driven by a simulated clock. Each step hands one API-sized batch of pre-signed
200-byte transfers to the next driver round-robin (``Driver.submit_tx``, what the API
calls), delivers every queued frame, advances the clock one tick and lets every driver
relay its local txs and tick. So each driver admits, relays, proposes, checks and
commits blocks exactly as a real validator does; only HTTP, libp2p and trio are missing.

It reports the process's CPU time from the first submission to the last commit per
committed tx: the node layer's cost at N validators. The Ed25519 verifications in it
(each validator verifies each tx once) are timed separately in the same process and
reported as a share, so the rest is what the node layer adds. The collector is set as
``bcfl start`` sets it (``node.runtime.configure_gc``). The work is the same on
every run (fixed keys, fixed order), so on a noisy machine a change to the node layer
shows here with a few interleaved repetitions where ``bcfl bench consensus`` cannot
separate it from the machine's drift. It checks that every driver committed every tx
and that all drivers hold the same top block; otherwise it exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from node.bench.common import get_machine_info, write_report
from node.bench.consensus import VALIDATORS_ALLOWED, make_padded_transfer
from node.codec import decode_tx, verify_tx
from node.config import Config
from node.genesis import Genesis, Member, ValidatorInfo
from node.keys import KeyPair
from node.node import Driver
from node.runtime import configure_gc
from node.store import KVStore, LevelDBStore, MemoryStore
from node.transport import TrafficClass

CHAIN_ID = "bcfl-bench-node"
BALANCE = 10**15
VERIFY_SAMPLES = 2_000
# The loops' bounds: a step per tx plus this tail, far more than any run needs; frames
# delivered in one step (each delivery may send more: a bound catches a message storm).
STEPS_MAX_EXTRA = 20_000
FRAMES_PER_STEP_MAX = 1_000_000


class Router:
    """In-order delivery of every frame a driver sends (no loss, no delay but a step)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.queue: deque[tuple[int, int, bytes, TrafficClass]] = deque()
        self.frames = 0
        self.bytes = 0

    def network(self, index: int) -> _Network:
        return _Network(self, index)

    def deliver_all(self, drivers: list[Driver]) -> None:
        for _ in range(FRAMES_PER_STEP_MAX):
            if not self.queue:
                return
            sender, to, frame, traffic = self.queue.popleft()
            if traffic == TrafficClass.CONSENSUS:
                drivers[to].on_consensus_frame(sender, frame)
            else:
                drivers[to].on_tx_batch_frame(sender, frame)
        raise RuntimeError(f"more than {FRAMES_PER_STEP_MAX} frames in one step")


@dataclasses.dataclass
class _Network:
    router: Router
    index: int

    def send(self, to_index: int, frame: bytes,
             traffic: TrafficClass = TrafficClass.CONSENSUS) -> bool:
        self.router.queue.append((self.index, to_index, frame, traffic))
        self.router.frames += 1
        self.router.bytes += len(frame)
        return True

    def broadcast(self, frame: bytes, traffic: TrafficClass = TrafficClass.CONSENSUS) -> int:
        for peer in range(self.router.n):
            if peer != self.index:
                self.send(peer, frame, traffic)
        return self.router.n - 1

    def get_connected_peers(self) -> list[int]:
        return [i for i in range(self.router.n) if i != self.index]

    def get_metrics(self) -> dict[str, Any]:
        return {"drops": {"outbound_queue_full": 0}, "refused_connections": 0}


def make_genesis(validator_keys: list[KeyPair], account_keys: list[KeyPair]) -> Genesis:
    return Genesis(
        chain_id=CHAIN_ID,
        genesis_time_ms=1_000,
        validators=tuple(
            ValidatorInfo(f"v{i}", key.public_key, "127.0.0.1", 30_000 + i, "127.0.0.1",
                          31_000 + i)
            for i, key in enumerate(validator_keys)
        ),
        members=(Member("m0", account_keys[0].public_key, "both"),),
        balances=tuple(sorted((key.public_key, BALANCE) for key in account_keys)),
    )


def make_txs(account_keys: list[KeyPair], count: int) -> list[bytes]:
    """``count`` transfers, account after account, so each account's nonces go in order."""
    accounts = len(account_keys)
    return [
        make_padded_transfer(account_keys[i % accounts], CHAIN_ID,
                             account_keys[(i + 1) % accounts].public_key, i // accounts)
        for i in range(count)
    ]


def measure_verify_us(txs: list[bytes]) -> float:
    """CPU µs per tx signature check in this process (what each validator does once)."""
    sample = [(decode_tx(raw), raw) for raw in txs[:VERIFY_SAMPLES]]
    start = time.process_time()
    for tx, raw in sample:
        assert verify_tx(CHAIN_ID, tx, raw)
    return (time.process_time() - start) / len(sample) * 1e6


def run_one(n: int, txs: list[bytes], genesis: Genesis, validator_keys: list[KeyPair],
            store_kind: str, batch_txs: int, directory: Path) -> dict[str, Any]:
    config = Config()
    tick_s = config.consensus.tick_ms / 1000
    now = [100.0]
    stores: list[KVStore] = [
        LevelDBStore(directory / f"n{n}-v{i}") if store_kind == "leveldb" else MemoryStore()
        for i in range(n)
    ]
    router = Router(n)
    networks = [router.network(i) for i in range(n)]
    drivers = [
        Driver(config, genesis, validator_keys[i], stores[i], networks[i],
               clock=lambda: now[0], wall_ms=lambda: int(now[0] * 1000))
        for i in range(n)
    ]
    steps_max = len(txs) + STEPS_MAX_EXTRA
    submitted = retried = steps = 0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    try:
        while any(d.txs_committed_total < len(txs) for d in drivers):
            if steps >= steps_max:
                raise RuntimeError(f"N={n}: not every tx committed in {steps_max} steps")
            target = drivers[steps % n]
            for raw in txs[submitted:submitted + batch_txs]:
                if target.submit_tx(raw).status != "accepted":
                    retried += 1  # the pool is full: the rest of this batch waits too
                    break
                submitted += 1
            router.deliver_all(drivers)
            now[0] += tick_s
            for index, driver in enumerate(drivers):
                relay = driver.take_relay_frame()
                if relay is not None:
                    for peer in relay[1]:
                        networks[index].send(peer, relay[0], TrafficClass.TRANSACTIONS)
                driver.tick()
            steps += 1
        cpu_s = time.process_time() - cpu_start
        wall_s = time.perf_counter() - wall_start
        top = min(d.state.height for d in drivers)
        agree = len({d.chain.get_block_bytes(top) for d in drivers}) == 1
        committed = [d.txs_committed_total for d in drivers]
    finally:
        for store in stores:
            store.close()
    return {
        "validators": n,
        "store": store_kind,
        "txs": len(txs),
        "committed_per_validator": committed,
        "top_blocks_agree": agree,
        "blocks": top,
        "steps": steps,
        "retried_submissions": retried,
        "frames": router.frames,
        "bytes_per_tx": round(router.bytes / len(txs), 1),
        "cpu_s": round(cpu_s, 3),
        "wall_s": round(wall_s, 3),
        "cpu_us_per_tx": round(cpu_s / len(txs) * 1e6, 1),
        "cpu_us_per_tx_per_validator": round(cpu_s / len(txs) / n * 1e6, 1),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bcfl bench node", description=__doc__.splitlines()[0])
    parser.add_argument("--validators", "-n", default="4",
                        help="comma-separated committee sizes from 4,7,10,16")
    parser.add_argument("--txs", type=int, default=20_000, help="transfers per size")
    parser.add_argument("--accounts", type=int, default=1_000, help="funded sender accounts")
    parser.add_argument("--batch", type=int, default=250, help="txs handed over per step")
    parser.add_argument("--store", choices=("leveldb", "memory"), default="leveldb")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.validators.split(",") if s]
    except ValueError:
        parser.error("--validators takes comma-separated numbers")
    if not args.sizes or any(n not in VALIDATORS_ALLOWED for n in args.sizes):
        parser.error(f"--validators must be from {VALIDATORS_ALLOWED}")
    if args.txs < 1 or args.accounts < 2 or args.batch < 1:
        parser.error("--txs and --batch must be >= 1, --accounts >= 2")
    if args.txs > args.accounts * 60:
        parser.error("at most 60 txs per account (the mempool's nonce window is 64)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    configure_gc()  # as ``bcfl start`` does: the node's collector settings
    account_keys = [KeyPair.from_seed(i.to_bytes(4, "big") * 8) for i in range(args.accounts)]
    txs = make_txs(account_keys, args.txs)
    verify_us = measure_verify_us(txs)
    report: dict[str, Any] = {
        "benchmark": "node",
        "machine": get_machine_info(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tx_size_bytes": len(txs[0]),
        "verify_us": round(verify_us, 2),
        "runs": [],
        "failures": [],
    }
    directory = Path(tempfile.mkdtemp(prefix="bcfl-bench-node-"))
    try:
        for n in args.sizes:
            validator_keys = [KeyPair.from_seed(bytes([200 + i]) * 32) for i in range(n)]
            genesis = make_genesis(validator_keys, account_keys)
            run = run_one(n, txs, genesis, validator_keys, args.store, args.batch, directory)
            run["verify_us_per_tx"] = round(n * verify_us, 1)
            run["verify_share"] = round(n * verify_us / run["cpu_us_per_tx"], 3)
            run["other_us_per_tx_per_validator"] = round(
                (run["cpu_us_per_tx"] - n * verify_us) / n, 1)
            report["runs"].append(run)
            print(f"N={n:>2} {run['cpu_us_per_tx']:>8.1f} µs CPU per tx "
                  f"({run['cpu_us_per_tx_per_validator']} per validator, of which "
                  f"{run['other_us_per_tx_per_validator']} not signature checks; "
                  f"verify share {run['verify_share']:.0%}), {run['blocks']} blocks, "
                  f"{run['cpu_s']} s CPU", file=sys.stderr)
            if not run["top_blocks_agree"] or min(run["committed_per_validator"]) != len(txs):
                report["failures"].append(f"N={n}: not every driver committed every tx "
                                          "or the drivers' top blocks differ")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(write_report(report, args.output))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
