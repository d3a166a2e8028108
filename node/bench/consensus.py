"""``bcfl bench consensus``: committed tx/s and latency of a real localnet under load.

How it works. For each N in ``--validators`` it writes a testnet with ``--accounts``
funded accounts into a fresh directory, starts N ``bcfl start`` processes (as
``bcfl localnet up`` does) and, for each offered rate, runs one step:

- ``--loaders`` load-generator processes (multiprocessing, spawn) each own a slice of
  the accounts. Before the clock starts each pre-signs its transfers (200 bytes
  encoded, padded with a memo; nonces in sequence per account from the committed
  state), so signing never limits the offered load. Each account's txs go to one
  validator's API, as a client sticks to its own node (``--routing pinned``, the
  default); ``--routing spread`` sends each batch to the next API whatever its
  accounts, so an account's consecutive nonces arrive at different validators and
  reach the primary out of order through their relays (until the sixth session the
  only routing: see docs/benchmarks.md). Then, open loop, every 5 ms each sends the
  txs that are due at ``rate / loaders`` per second as batches (``POST
  /v1/txs/batch``), one API per interval in turn (pinned: that API's txs due since
  its last turn, at most N intervals of waiting), without waiting for answers (at
  most ``IN_FLIGHT_MAX`` requests in flight per loader; a loader that falls behind
  offers less, and that shows as ``offered_tx_per_s``). The
  submission time of a tx is taken just before its batch is sent. A tx refused as
  ``overloaded``/``mempool_full`` is not retried; its account's later txs are then
  skipped (``skipped_behind_rejected``), since they could only wait for that nonce.
  ``--closed-loop`` instead sends every pre-signed tx as fast as the API takes them
  (``CLOSED_LOOP_REQUESTS`` requests in flight per loader, overloaded txs retried
  after 50 ms, doubling to 0.8 s while they are refused, as a client should back off:
  at a fixed 50 ms, refused submissions outnumbered accepted ones two to one and their
  cost came out of the same 2 cores): the committed rate is then the chain's maximum.
- The main process polls node 0 for each next block (``GET /v1/blocks/{h}``, 5 ms
  between misses). A tx's latency is from its submission to node 0's commit of the
  block holding it, by the ``committed_time_ms`` node 0 recorded (its wall clock, the
  same machine's as the loaders'), so a poller that falls behind a busy API delays
  nothing it measures. Polling, not the ``/v1/events`` websocket, because that
  stream's 256-event client queue drops tx events under load.
- The first ``--warmup`` seconds are excluded; figures cover the next ``--duration``
  seconds and carry their sample counts. Around that window it reads each node's
  ``/metrics`` (view changes, transport bytes sent), ``/proc/<pid>/stat`` of every
  validator and loader (CPU), and ``/proc/stat`` (the whole machine's busy and stolen
  CPU: the loaders and the poller share the validators' cores).
- Accounting: after the loaders finish it waits (``--drain-timeout``) until every
  accepted tx is in a block. ``accepted == committed + stranded + missing``; rejected
  txs are reported with their codes. A tx accepted after an earlier tx of its account
  was rejected (say ``overloaded`` in open loop) cannot apply until that nonce comes:
  it is ``stranded`` (it leaves the pools at the mempool TTL), reported, not a failure.
  Any other uncommitted accepted tx is ``missing``: a failure (exit code 1).
- ``--repeat K`` runs all of it K times, interleaved (every N once, then again), each on
  a fresh localnet; runs carry their ``repetition``. ``summary`` gives each step's median
  and range and, for the closed loop, each N against the smallest N: the ratio of the
  medians and the ratio within each repetition. On this 2-core machine single runs
  spread by +-10% within an hour, so one pair cannot settle a few percent. The plots
  take each step's median run.

Before the first localnet starts and after the last one stops it measures this
machine's ceiling: Ed25519 verifications per second on all cores (one process per
core); their mean gives the most tx/s N validators sharing the machine could commit if
each verified each tx once and did nothing else, and both are reported with their
spread (a shared machine's speed drifts within an hour); a spread over 10% is a warning.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from node.bench.common import get_machine_info, get_summary, write_report
from node.client import AsyncClient, ClientError, get_tx_hash_hex, make_transfer
from node.keys import KeyPair, load_key_file

TX_SIZE_BYTES = 200
BATCH_TXS_DEFAULT = 250
IN_FLIGHT_MAX = 32
CLOSED_LOOP_REQUESTS = 8
# Enough pre-signed txs that the closed loop is still sending when the window ends at
# well past this machine's best (40,000 ran out at 4,000 tx/s within 10 + 2 s).
CLOSED_LOOP_TXS_PER_S = 6_000
LOAD_ENDED_EARLY_WARNING_S = 0.5  # either mode: see load_ended_s_before_window_end
# Two ceiling checks of one quiet hour differ by a few percent; the twelfth session saw
# 31,800 -> 25,200 across one sweep (docs/benchmarks.md).
CEILING_SPREAD_WARNING = 0.10
SEND_INTERVAL_S = 0.005
POLL_INTERVAL_S = 0.005
RETRY_DELAY_S = 0.05  # doubling per refusal of the same batch, up to RETRY_DELAY_MAX_S
RETRY_DELAY_MAX_S = 0.8
RETRY_CODES = frozenset({"overloaded", "mempool_full", "sender_queue_full"})
ROUTING_PINNED = "pinned"  # each account's txs to one API: a client sticks to its node
ROUTING_SPREAD = "spread"  # each batch to the next API, whatever accounts it holds
ROUTINGS = (ROUTING_PINNED, ROUTING_SPREAD)
NONCE_WINDOW = 64  # the mempool's nonce_gap_max: txs per account ahead of the chain
START_DELAY_S = 0.5
REPEAT_MAX = 20
VALIDATORS_ALLOWED = (4, 7, 10, 16)
BASE_PORT_DEFAULT = 21_000
DEFAULT_OUTPUT = Path("bench-results/consensus")
TABLE_COLUMNS = (  # (header, width, value of a run)
    ("N", 3, lambda r: r["validators"]),
    ("mode", 11, lambda r: r["mode"]),
    ("offered/s", 9, lambda r: r["offered_tx_per_s"]),
    ("commit/s", 9, lambda r: r["committed_tx_per_s"]),
    ("ceiling%", 8, lambda r: None if r["fraction_of_ceiling"] is None
     else round(100 * r["fraction_of_ceiling"], 1)),
    ("p50 s", 7, lambda r: r["latency_s"]["p50"]),
    ("p95 s", 7, lambda r: r["latency_s"]["p95"]),
    ("p99 s", 7, lambda r: r["latency_s"]["p99"]),
    ("max s", 7, lambda r: r["latency_s"]["max"]),
    ("samples", 7, lambda r: r["latency_s"]["samples"]),
    ("blocks/s", 8, lambda r: r["blocks_per_s"]),
    ("txs/blk", 7, lambda r: r["block_txs_mean"]),
    ("vc", 3, lambda r: r["view_changes"]),
    ("cpu/val", 7, lambda r: round(sum(r["cpu_cores_per_validator"])
                                   / len(r["cpu_cores_per_validator"]), 3)),
    ("us/tx", 7, lambda r: r["validator_cpu_us_per_committed_tx"]),
    ("ldr cpu", 7, lambda r: r["cpu_cores_loaders"]),
    ("busy", 5, lambda r: r["cpu_cores_machine_busy"]),
    ("B/tx", 7, lambda r: r["bytes_sent_per_committed_tx"]),
    ("missing", 7, lambda r: r["accounting"]["missing"]),
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the machine's ceiling -----------------------------------------------------------


def _verify_for(seconds: float) -> int:
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    signed = key.sign(b"\x00" * TX_SIZE_BYTES)
    verify = key.verify_key.verify
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(200):
            verify(signed)
        count += 200
    return count


def measure_verify_ceiling(seconds: float) -> dict[str, Any]:
    """Ed25519 verifications/s with one process per usable core, all at once."""
    cores = get_machine_info()["cores"] or 1
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_verify_for, [0.05] * cores)  # start every worker before timing
        start = time.perf_counter()
        counts = pool.map(_verify_for, [seconds] * cores)
        elapsed = time.perf_counter() - start
    total = sum(counts)
    return {
        "processes": cores,
        "duration_s": round(elapsed, 3),
        "verifications": total,
        "verifications_per_s": round(total / seconds, 1),
        "per_core_per_s": round(total / seconds / cores, 1),
    }


def combine_ceilings(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One ceiling from the measurements before and after the runs: their mean, and
    both, since a shared machine's speed drifts (28,400 and 35,400 verifications/s in
    one hour) and a fraction of the ceiling carries that spread."""
    rates = [before["verifications_per_s"], after["verifications_per_s"]]
    mean = sum(rates) / 2
    return {
        "processes": before["processes"],
        "duration_s": round(before["duration_s"] + after["duration_s"], 3),
        "verifications": before["verifications"] + after["verifications"],
        "verifications_per_s": round(mean, 1),
        "per_core_per_s": round(mean / before["processes"], 1),
        "measured_per_s": rates,  # before the first run, after the last
        "spread": round((max(rates) - min(rates)) / mean, 4) if mean else 0.0,
    }


def get_ceiling_warning(ceiling: dict[str, Any]) -> str | None:
    """A warning when the machine's speed moved under the runs (the two ceiling checks
    differ by more than CEILING_SPREAD_WARNING of their mean), else None."""
    if ceiling["spread"] <= CEILING_SPREAD_WARNING:
        return None
    before, after = ceiling["measured_per_s"]
    return (f"the machine's Ed25519 rate moved {ceiling['spread']:.0%} during the runs "
            f"({before:,.0f} verifications/s before, {after:,.0f} after): runs made at "
            "different times compare poorly; repeat them (--repeat) or run again")


# --- transactions ---------------------------------------------------------------------


def make_padded_transfer(key: KeyPair, chain_id: str, recipient: bytes, nonce: int) -> bytes:
    """A signed transfer whose encoding is exactly TX_SIZE_BYTES (memo padding)."""
    bare = make_transfer(key, chain_id, recipient, 1, nonce)
    pad = TX_SIZE_BYTES - len(bare)
    assert pad >= 0, "a bare transfer must fit the benchmark's tx size"
    tx = make_transfer(key, chain_id, recipient, 1, nonce, memo=b"b" * pad)
    assert len(tx) == TX_SIZE_BYTES
    return tx


@dataclass
class LoaderSpec:
    index: int
    urls: list[str]
    chain_id: str
    key_paths: list[str]
    start_nonces: list[int]
    txs_per_account: int
    rate_per_s: float  # 0: closed loop
    duration_s: float  # how long to offer load (warm-up + measured window)
    batch_txs: int
    result_path: str
    routing: str = ROUTING_PINNED


@dataclass
class LoaderResult:
    submitted: dict[str, float] = field(default_factory=dict)  # hash -> last submit time
    statuses: dict[str, str] = field(default_factory=dict)  # hash -> accepted/duplicate/code
    unsent: int = 0
    retries: int = 0
    skipped: int = 0  # open loop: not offered, behind a refused tx of the same account
    # Each account's tx hashes in nonce order: a rejection strands the later ones.
    account_hashes: list[list[str]] = field(default_factory=list)


def presign(spec: LoaderSpec) -> list[bytes]:
    """The loader's txs, interleaved across accounts so each account's nonces go in order."""
    keys = [load_key_file(Path(p)) for p in spec.key_paths]
    recipient = b"\x01" * 32
    per_account = [
        [make_padded_transfer(key, spec.chain_id, recipient, nonce + k)
         for k in range(spec.txs_per_account)]
        for key, nonce in zip(keys, spec.start_nonces, strict=True)
    ]
    return [txs[k] for k in range(spec.txs_per_account) for txs in per_account]


def get_api_of_tx(tx_index: int, accounts: int, apis: int) -> int:
    """Pinned routing: the API (index into the loader's urls) of ``presign``'s tx
    ``tx_index``, which belongs to account ``tx_index % accounts``."""
    return (tx_index % accounts) % apis


def plan_closed_loop_batches(count: int, accounts: int, apis: int, batch_txs: int,
                             routing: str) -> list[tuple[int | None, list[int]]]:
    """The closed loop's batches in sending order as (API index or None, tx indexes).

    Spread: consecutive txs, the API left to the sender's turn. Pinned: each API's
    txs in presign order (so each account's nonces stay in order), cut into batches,
    and the APIs' batches interleaved so every API is busy from the start."""
    assert routing in ROUTINGS and count >= 0 and accounts > 0 and apis > 0 and batch_txs > 0
    if routing == ROUTING_SPREAD:
        return [(None, list(range(start, min(start + batch_txs, count))))
                for start in range(0, count, batch_txs)]
    per_api: list[list[int]] = [[] for _ in range(apis)]
    for k in range(count):
        per_api[get_api_of_tx(k, accounts, apis)].append(k)
    chunks = [[txs[s:s + batch_txs] for s in range(0, len(txs), batch_txs)] for txs in per_api]
    return [(api, api_chunks[i])
            for i in range(max(len(c) for c in chunks))
            for api, api_chunks in enumerate(chunks) if i < len(api_chunks)]


async def _post(session: aiohttp.ClientSession, url: str, batch: list[bytes],
                hashes: list[str], result: LoaderResult) -> list[int]:
    """Send one batch; record each tx's outcome; the indexes to retry (overloaded)."""
    body = b'{"txs":["' + b'","'.join(tx.hex().encode() for tx in batch) + b'"]}'
    try:
        async with session.post(url + "/v1/txs/batch", data=body,
                                headers={"Content-Type": "application/json"}) as response:
            document = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        for tx_hash in hashes:
            result.statuses[tx_hash] = f"unreachable: {type(exc).__name__}"
        return []
    if status != 200:
        code = str(document.get("error", {}).get("code", f"http_{status}"))
        if code in RETRY_CODES:
            return list(range(len(batch)))
        for tx_hash in hashes:
            result.statuses[tx_hash] = code
        return []
    retry = []
    for i, (tx_hash, item) in enumerate(zip(hashes, document["results"], strict=True)):
        outcome = item["status"] if item["status"] != "rejected" else item["code"]
        if outcome in RETRY_CODES:
            retry.append(i)
        else:
            result.statuses[tx_hash] = outcome
    return retry


async def run_open_loop(spec: LoaderSpec, txs: list[bytes], hashes: list[str], t0: float,
                        result: LoaderResult) -> None:
    in_flight = asyncio.Semaphore(IN_FLIGHT_MAX)
    tasks: set[asyncio.Task[Any]] = set()
    accounts, apis = len(spec.key_paths), len(spec.urls)
    pinned = spec.routing == ROUTING_PINNED
    # Due txs not yet sent: one queue per API when pinned, else one for all.
    queues: list[list[int]] = [[] for _ in range(apis if pinned else 1)]
    scheduled = 0
    turn = 0
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT_MAX)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        blocked: set[int] = set()  # accounts with a tx refused: their later txs would strand

        async def send(batch: list[int], url: str) -> None:
            try:
                retry = await _post(session, url, [txs[k] for k in batch],
                                    [hashes[k] for k in batch], result)
                for i in retry:  # open loop: an overloaded tx is a rejection, not a retry
                    result.statuses[hashes[batch[i]]] = "overloaded"
                    blocked.add(batch[i] % accounts)
            finally:
                in_flight.release()

        await asyncio.sleep(max(0.0, t0 - time.time()))
        while scheduled < len(txs) or any(queues):
            now = time.time()
            if now - t0 > spec.duration_s:
                break
            due = min(len(txs), int((now - t0) * spec.rate_per_s))
            for k in range(scheduled, due):
                queues[get_api_of_tx(k, accounts, apis) if pinned else 0].append(k)
            scheduled = max(scheduled, due)
            api = turn % apis  # one API per interval, in turn
            turn += 1
            queue = queues[api if pinned else 0]
            while queue and not in_flight.locked():
                count = min(spec.batch_txs, len(queue))
                # A real client would resend the refused nonce first; this one, open
                # loop, stops offering that account's txs (they count as skipped).
                batch = [k for k in queue[:count] if k % accounts not in blocked]
                del queue[:count]
                result.skipped += count - len(batch)
                if not batch:
                    continue
                await in_flight.acquire()
                stamp = time.time()
                result.submitted.update((hashes[k], stamp) for k in batch)
                task = asyncio.create_task(send(batch, spec.urls[api]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(SEND_INTERVAL_S)
        if tasks:
            await asyncio.gather(*tasks)
    result.unsent = len(txs) - scheduled + sum(len(q) for q in queues)


async def run_closed_loop(spec: LoaderSpec, txs: list[bytes], hashes: list[str], t0: float,
                          result: LoaderResult) -> None:
    queue: asyncio.Queue[tuple[int | None, list[int]]] = asyncio.Queue()
    for item in plan_closed_loop_batches(len(txs), len(spec.key_paths), len(spec.urls),
                                         spec.batch_txs, spec.routing):
        queue.put_nowait(item)
    connector = aiohttp.TCPConnector(limit=CLOSED_LOOP_REQUESTS)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker(k: int) -> None:
            turn = k
            while time.time() - t0 < spec.duration_s:
                try:
                    api, indexes = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                batch = [txs[i] for i in indexes]
                batch_hashes = [hashes[i] for i in indexes]
                url = spec.urls[turn % len(spec.urls) if api is None else api]
                turn += 1
                delay_s = RETRY_DELAY_S
                for _attempt in range(100):  # bounded: an overloaded node sheds, we retry
                    stamp = time.time()  # a resubmission is the tx's submission time
                    result.submitted.update((h, stamp) for h in batch_hashes)
                    retry = await _post(session, url, batch, batch_hashes, result)
                    if not retry:
                        break
                    result.retries += len(retry)
                    batch = [batch[i] for i in retry]
                    batch_hashes = [batch_hashes[i] for i in retry]
                    await asyncio.sleep(delay_s)
                    delay_s = min(2 * delay_s, RETRY_DELAY_MAX_S)
                else:
                    for tx_hash in batch_hashes:
                        result.statuses[tx_hash] = "overloaded"

        await asyncio.sleep(max(0.0, t0 - time.time()))
        await asyncio.gather(*(worker(k) for k in range(CLOSED_LOOP_REQUESTS)))
    result.unsent = len(txs) - len(result.submitted)


def run_loader(spec: LoaderSpec, ready: Any, start: Any) -> None:
    """Loader process entry: pre-sign, report ready, wait for t0, submit, write results."""
    txs = presign(spec)
    hashes = [get_tx_hash_hex(tx) for tx in txs]
    ready.put(spec.index)
    t0: float = start.get()
    accounts = len(spec.key_paths)
    result = LoaderResult(account_hashes=[hashes[a::accounts] for a in range(accounts)])
    runner = run_closed_loop if spec.rate_per_s <= 0 else run_open_loop
    asyncio.run(runner(spec, txs, hashes, t0, result))
    import json

    Path(spec.result_path).write_text(json.dumps({
        "submitted": result.submitted, "statuses": result.statuses,
        "unsent": result.unsent, "retries": result.retries, "skipped": result.skipped,
        "account_hashes": result.account_hashes,
    }))


# --- the localnet ---------------------------------------------------------------------


def start_profiled_node(home: Path, profile_path: Path) -> None:
    """Start a node under pyinstrument (it writes its profile when the node exits cleanly)."""
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    with (home / "node.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pyinstrument", "-o", str(profile_path), "-m", "node",
             "start", "--home", str(home)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env)
    (home / "node.pid").write_text(f"{process.pid}\n")


@contextlib.contextmanager
def open_localnet(n: int, accounts: int, directory: Path, base_port: int,
                  profile_path: Path | None = None) -> Iterator[list[Path]]:
    from node.commands import localnet, testnet
    from node.commands.demo import find_free_base_port

    base = find_free_base_port(base_port, 2 * n)
    with contextlib.redirect_stdout(sys.stderr):
        code = testnet.main(["--validators", str(n), "--output", str(directory),
                             "--base-port", str(base), "--accounts", str(accounts)])
        if code != 0:
            raise RuntimeError(f"bcfl testnet failed ({code})")
        if profile_path is not None:  # localnet up leaves a running node alone
            start_profiled_node(directory / "node0", profile_path)
        code = localnet.main(["up", "--dir", str(directory), "--timeout", "120"])
        if code != 0:
            raise RuntimeError(f"bcfl localnet up failed ({code})")
    homes = localnet.get_homes(directory)
    try:
        yield homes
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            localnet.main(["down", "--dir", str(directory)])


def get_api_urls(homes: list[Path]) -> list[str]:
    from node.commands._common import get_home_api_url

    return [get_home_api_url(home) for home in homes]


def get_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def get_machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat.

    Busy is every process's user and system time, this bench's loaders and poller and
    anything else running included; steal is time the hypervisor gave to others."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def parse_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


@dataclass
class Snapshot:
    time: float
    cpu_s: list[float]  # per validator
    metrics: list[dict[str, float]]
    loaders_cpu_s: float = 0.0  # all load generators together
    machine_busy_s: float = 0.0  # see get_machine_cpu_seconds
    machine_steal_s: float = 0.0


async def take_snapshot(clients: list[AsyncClient], pids: list[int],
                        loader_pids: list[int]) -> Snapshot:
    now = time.time()
    cpu = [get_cpu_seconds(pid) for pid in pids]
    loaders = sum(get_cpu_seconds(pid) for pid in loader_pids)  # joined only after "after"
    busy, steal = get_machine_cpu_seconds()
    texts = await asyncio.gather(*(c.get_metrics() for c in clients))
    return Snapshot(now, cpu, [parse_metrics(t) for t in texts], loaders, busy, steal)


@dataclass
class ObservedBlock:
    height: int
    committed_at: float  # node 0's wall clock at commit (s), or when seen if not recorded
    tx_hashes: list[str]


async def follow_blocks(client: AsyncClient, from_height: int, blocks: list[ObservedBlock],
                        stop: asyncio.Event) -> None:
    height = from_height
    while not stop.is_set():
        try:
            block = await client._request("GET", f"/v1/blocks/{height}?encoded=false")
        except ClientError as exc:
            # 404: not committed yet; anything else (a slow node answering 503, a
            # dropped connection) is retried too: the drain deadline bounds the wait.
            if exc.status != 404:
                print(f"  block {height}: {exc}; retrying", file=sys.stderr)
            await asyncio.sleep(POLL_INTERVAL_S)
            continue
        recorded = block.get("committed_time_ms")
        committed_at = time.time() if recorded is None else recorded / 1000
        blocks.append(ObservedBlock(height, committed_at, block["tx_hashes"]))
        height += 1


# --- one step ------------------------------------------------------------------------


@dataclass
class StepConfig:
    rate_per_s: float  # 0: closed loop
    warmup_s: float
    duration_s: float
    drain_timeout_s: float
    loaders: int
    batch_txs: int
    closed_loop_txs: int
    routing: str = ROUTING_PINNED


async def get_start_nonces(client: AsyncClient, keys: list[KeyPair]) -> list[int]:
    accounts = await asyncio.gather(*(client.get_account(k.public_key) for k in keys))
    return [int(a["nonce"]) for a in accounts]


def plan_txs_per_account(step: StepConfig, accounts: int) -> int:
    total = (step.closed_loop_txs if step.rate_per_s <= 0
             else int(step.rate_per_s * (step.warmup_s + step.duration_s)) + 1)
    per_account = -(-total // accounts)
    return per_account


def run_step(homes: list[Path], key_paths: list[Path], step: StepConfig,
             workdir: Path) -> dict[str, Any]:
    return asyncio.run(_run_step(homes, key_paths, step, workdir))


async def _run_step(homes: list[Path], key_paths: list[Path], step: StepConfig,
                    workdir: Path) -> dict[str, Any]:
    import json

    from node.commands.localnet import read_pid

    urls = get_api_urls(homes)
    pids = [read_pid(home) or 0 for home in homes]
    clients = [AsyncClient(url, timeout_s=30) for url in urls]
    try:
        keys = [load_key_file(p) for p in key_paths]
        status = await clients[0].get_status()
        chain_id, start_height = status["chain_id"], int(status["height"])
        nonces = await get_start_nonces(clients[0], keys)
        per_account = plan_txs_per_account(step, len(keys))
        if step.rate_per_s > 0 and per_account > NONCE_WINDOW:
            # Beyond the nonce window the mempool would reject txs whose predecessors
            # are not yet committed: more accounts, not fewer, keep the load honest.
            print(f"  note: {per_account} txs per account > nonce window {NONCE_WINDOW}; "
                  "use more --accounts if nonce rejections appear", file=sys.stderr)
        context = multiprocessing.get_context("spawn")
        ready, start = context.Queue(), context.Queue()
        specs, processes = [], []
        for i in range(step.loaders):
            mine = list(range(i, len(keys), step.loaders))
            spec = LoaderSpec(
                index=i, urls=urls[i % len(urls):] + urls[:i % len(urls)], chain_id=chain_id,
                key_paths=[str(key_paths[k]) for k in mine],
                start_nonces=[nonces[k] for k in mine], txs_per_account=per_account,
                rate_per_s=step.rate_per_s / step.loaders,
                duration_s=step.warmup_s + step.duration_s, batch_txs=step.batch_txs,
                result_path=str(workdir / f"loader-{i}.json"), routing=step.routing,
            )
            specs.append(spec)
            process = context.Process(target=run_loader, args=(spec, ready, start))
            process.start()
            processes.append(process)
        for _ in processes:
            await asyncio.to_thread(ready.get, True, 600)
        blocks: list[ObservedBlock] = []
        stop = asyncio.Event()
        follower = asyncio.create_task(follow_blocks(clients[0], start_height + 1, blocks, stop))
        t0 = time.time() + START_DELAY_S
        for _ in processes:
            start.put(t0)
        await asyncio.sleep(t0 + step.warmup_s - time.time())
        loader_pids = [p.pid for p in processes if p.pid is not None]
        before = await take_snapshot(clients, pids, loader_pids)
        await asyncio.sleep(step.duration_s)
        after = await take_snapshot(clients, pids, loader_pids)
        for process in processes:
            await asyncio.to_thread(process.join)
        results = [json.loads(Path(s.result_path).read_text()) for s in specs]
        submitted = {h: t for r in results for h, t in r["submitted"].items()}
        statuses = {h: s for r in results for h, s in r["statuses"].items()}
        accepted = {h for h, s in statuses.items() if s == "accepted"}
        deadline = time.time() + step.drain_timeout_s
        committed_at: dict[str, float] = {}
        seen = 0
        while time.time() < deadline:
            for block in blocks[seen:]:
                for tx_hash in block.tx_hashes:
                    committed_at.setdefault(tx_hash, block.committed_at)
            seen = len(blocks)
            if accepted <= committed_at.keys():
                break
            uncommitted = accepted - committed_at.keys()
            if get_stranded(results, statuses, uncommitted) == len(uncommitted):
                break  # what is left waits for a nonce that will not come
            await asyncio.sleep(0.5)
        stop.set()
        await follower
        for block in blocks:
            for tx_hash in block.tx_hashes:
                committed_at.setdefault(tx_hash, block.committed_at)
        return summarise(step, before, after, blocks, submitted, statuses, accepted,
                         committed_at, results)
    finally:
        for client in clients:
            await client.close()


def get_stranded(results: list[dict[str, Any]], statuses: dict[str, str],
                 uncommitted: set[str]) -> int:
    """Uncommitted accepted txs behind an earlier tx of their account that was not accepted."""
    stranded = 0
    for result in results:
        for hashes in result["account_hashes"]:
            blocked = False
            for tx_hash in hashes:
                status = statuses.get(tx_hash)
                if status is None:
                    break  # never submitted: nor were the later ones
                if status not in ("accepted", "duplicate"):
                    blocked = True
                elif blocked and tx_hash in uncommitted:
                    stranded += 1
    return stranded


def get_load_ended_s(step: StepConfig, window: tuple[float, float],
                     submitted: dict[str, float], results: list[dict[str, Any]]) -> float:
    """How long before the window's end the loaders sent their last tx.

    A closed loop that still held pre-signed txs did not run out: its requests were
    waiting out the backoff (up to RETRY_DELAY_MAX_S) after refusals from a full node,
    which offered the node all it would take. That counts as 0."""
    if step.rate_per_s <= 0 and any(int(r["unsent"]) > 0 for r in results):
        return 0.0
    return round(max(0.0, window[1] - max(submitted.values(), default=window[0])), 3)


def summarise(step: StepConfig, before: Snapshot, after: Snapshot, blocks: list[ObservedBlock],
              submitted: dict[str, float], statuses: dict[str, str], accepted: set[str],
              committed_at: dict[str, float], results: list[dict[str, Any]]) -> dict[str, Any]:
    window = (before.time, after.time)
    elapsed = after.time - before.time
    in_window = [b for b in blocks if window[0] <= b.committed_at < window[1]]
    committed_in_window = sum(len(b.tx_hashes) for b in in_window)
    # Only txs this step's submission put in the pool: a "duplicate" (a tx of an earlier
    # step still pending when this one began, same account and nonce, same bytes) may
    # have committed before it was sent again, which gave negative latencies at N = 16.
    latencies = [committed_at[h] - t for h, t in submitted.items()
                 if window[0] <= t < window[1] and h in committed_at
                 and statuses.get(h) == "accepted"]
    offered = sum(1 for t in submitted.values() if window[0] <= t < window[1])
    rejected: dict[str, int] = {}
    for status in statuses.values():
        if status not in ("accepted", "duplicate"):
            rejected[status] = rejected.get(status, 0) + 1
    committed = accepted & committed_at.keys()
    stranded = get_stranded(results, statuses, accepted - committed)
    missing = len(accepted) - len(committed) - stranded
    unanswered = len(submitted.keys() - statuses.keys())

    def delta(name: str) -> list[float]:
        return [a.get(name, 0.0) - b.get(name, 0.0)
                for a, b in zip(after.metrics, before.metrics, strict=True)]

    bytes_sent = sum(delta("bcfl_transport_bytes_sent_total"))
    drop_names = {name for m in after.metrics for name in m
                  if name.startswith("bcfl_messages_dropped_total")}
    drops = {name.split("reason=", 1)[-1].strip('"}'): int(sum(delta(name)))
             for name in sorted(drop_names)}
    cpu = [round((a - b) / elapsed, 3) for a, b in zip(after.cpu_s, before.cpu_s, strict=True)]
    latency = get_summary(latencies)
    return {
        "mode": "closed_loop" if step.rate_per_s <= 0 else "open_loop",
        "target_rate_tx_per_s": step.rate_per_s,
        "window_s": round(elapsed, 3),
        "warmup_s": step.warmup_s,
        "offered_tx_per_s": round(offered / elapsed, 1),
        "offered_txs": offered,
        "committed_tx_per_s": round(committed_in_window / elapsed, 1),
        # > 0: the loaders sent their last tx this long before the window closed (a
        # closed loop ran out: use more --closed-loop-txs; an open loop past capacity
        # skipped accounts behind refused txs), so the committed rate is a lower bound.
        "load_ended_s_before_window_end": get_load_ended_s(step, window, submitted, results),
        "committed_txs_in_window": committed_in_window,
        "blocks_per_s": round(len(in_window) / elapsed, 2),
        "blocks_in_window": len(in_window),
        "block_txs_mean": round(committed_in_window / len(in_window), 1) if in_window else 0,
        "latency_s": {k: (round(v, 4) if isinstance(v, float) else v)
                      for k, v in latency.items()},
        "latency_definition": "submit (batch sent) -> node 0 committed the block (its clock)",
        "view_changes": int(max(delta("bcfl_view_changes_total"), default=0)),
        # Re-relays of local txs still pending after the retry backoff, and txs a node
        # was offered again (relays, resends): work and bytes that commit nothing new.
        "relay_retries_in_window": int(sum(delta("bcfl_mempool_relay_retries_total"))),
        "duplicates_in_window": int(sum(delta("bcfl_mempool_duplicates_total"))),
        # The validators' cycle collector (node/runtime.py configure_gc), all nodes.
        "gc_collections_in_window": [
            int(sum(delta(f'python_gc_collections_total{{generation="{generation}"}}')))
            for generation in range(3)],
        "messages_dropped_in_window": {k: v for k, v in drops.items() if v},
        "cpu_cores_per_validator": cpu,
        # The same cores ran the load generators and the block poller: what they took
        # was not the validators', and the machine's total shows any other tenant.
        "cpu_cores_loaders": round((after.loaders_cpu_s - before.loaders_cpu_s) / elapsed, 3),
        "cpu_cores_machine_busy": round(
            (after.machine_busy_s - before.machine_busy_s) / elapsed, 3),
        "cpu_cores_machine_steal": round(
            (after.machine_steal_s - before.machine_steal_s) / elapsed, 3),
        # Load-independent cost: all validators' CPU in the window per committed tx.
        "validator_cpu_us_per_committed_tx": round(
            sum(a - b for a, b in zip(after.cpu_s, before.cpu_s, strict=True))
            / committed_in_window * 1e6, 1) if committed_in_window else None,
        "bytes_sent_per_committed_tx": round(bytes_sent / committed_in_window, 1)
        if committed_in_window else None,
        "accounting": {
            "presigned_unsent": sum(int(r["unsent"]) for r in results),
            "skipped_behind_rejected": sum(int(r.get("skipped", 0)) for r in results),
            "submitted": len(submitted),
            "accepted": len(accepted),
            "duplicate": sum(1 for s in statuses.values() if s == "duplicate"),
            "rejected": rejected,
            "unanswered": unanswered,
            "committed": len(committed),
            "stranded_behind_rejected": stranded,
            "missing": missing,
            "retried_overloaded": sum(int(r["retries"]) for r in results),
        },
    }


# --- repetitions ---------------------------------------------------------------------


def get_step_key(run: dict[str, Any]) -> tuple[int, str, float]:
    return (run["validators"], run["mode"], run["target_rate_tx_per_s"])


def group_runs_by_step(runs: list[dict[str, Any]]) -> dict[tuple[int, str, float],
                                                            list[dict[str, Any]]]:
    """The runs of each step (N, mode, target rate), in the order they ran."""
    groups: dict[tuple[int, str, float], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(get_step_key(run), []).append(run)
    return dict(sorted(groups.items()))


def select_median_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per step: the one with the median committed rate (the lower of the middle
    two for an even count), so a plot's latency comes from a run that happened."""
    chosen = []
    for group in group_runs_by_step(runs).values():
        ordered = sorted(group, key=lambda r: (r["committed_tx_per_s"], r["repetition"]))
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def compute_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each step's committed rate over its repetitions (median and range), and each N's
    closed loop against the smallest N's: the ratio of medians, and per repetition the
    ratio of the two runs made close together (``--repeat`` interleaves the N), whose
    spread says how far one pair can be trusted."""
    groups = group_runs_by_step(runs)
    steps = []
    for (n, mode, rate), group in groups.items():
        committed = [r["committed_tx_per_s"] for r in group]
        p99s = [r["latency_s"]["p99"] for r in group if r["latency_s"]["p99"] is not None]
        steps.append({
            "validators": n, "mode": mode, "target_rate_tx_per_s": rate, "runs": len(group),
            "committed_tx_per_s": {"median": round(statistics.median(committed), 1),
                                   "min": min(committed), "max": max(committed)},
            "p99_s_median": round(statistics.median(p99s), 4) if p99s else None,
        })
    closed = {n: group for (n, mode, _), group in groups.items() if mode == "closed_loop"}
    scaling = []
    if closed:
        base_n = min(closed)
        base_median = statistics.median(r["committed_tx_per_s"] for r in closed[base_n])
        base_by_repetition = {r["repetition"]: r["committed_tx_per_s"] for r in closed[base_n]}
        for n, group in closed.items():
            median = statistics.median(r["committed_tx_per_s"] for r in group)
            paired = [round(r["committed_tx_per_s"] / base_by_repetition[r["repetition"]], 4)
                      for r in group if base_by_repetition.get(r["repetition"])]
            scaling.append({
                "validators": n, "relative_to_validators": base_n,
                "median_tx_per_s": round(median, 1),
                "ratio_of_medians": round(median / base_median, 4) if base_median else None,
                "paired_ratios": paired,
            })
    return {"steps": steps, "closed_loop_scaling": scaling}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text lines: a line per step, then the closed-loop scaling."""
    lines = []
    for step in summary["steps"]:
        c = step["committed_tx_per_s"]
        lines.append(f"N={step['validators']:>2} {step['mode']:<11} "
                     f"{step['target_rate_tx_per_s']:>7.0f}: median {c['median']:.1f} tx/s "
                     f"({c['min']:.1f}-{c['max']:.1f}, {step['runs']} runs), "
                     f"p99 median {step['p99_s_median']} s")
    for row in summary["closed_loop_scaling"]:
        if row["validators"] == row["relative_to_validators"]:
            continue  # the smallest N against itself: in the JSON, not worth a line
        paired = ", ".join(f"{r:.1%}" for r in row["paired_ratios"])
        ratio = row["ratio_of_medians"]
        lines.append(f"closed loop N={row['validators']} / N={row['relative_to_validators']}: "
                     f"{'-' if ratio is None else f'{ratio:.1%}'} of medians"
                     + (f"; paired by repetition: {paired}" if paired else ""))
    return "\n".join(lines)


# --- plots ---------------------------------------------------------------------------


def write_plots(report: dict[str, Any], output: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_n: dict[int, list[dict[str, Any]]] = {}
    for run in select_median_runs(report["runs"]):  # one per step when repeated
        by_n.setdefault(run["validators"], []).append(run)
    open_runs = {n: sorted((r for r in runs if r["mode"] == "open_loop"),
                           key=lambda r: r["offered_tx_per_s"]) for n, runs in by_n.items()}

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n, runs in open_runs.items():
        if runs:
            ax.plot([r["offered_tx_per_s"] for r in runs], [r["committed_tx_per_s"] for r in runs],
                    "o-", label=f"N={n}")
    ax.set_xlabel("offered tx/s")
    ax.set_ylabel("committed tx/s")
    ax.set_title("throughput vs offered load")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output / "consensus_throughput.png", dpi=80)
    plt.close(fig)
    written.append("consensus_throughput.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n, runs in open_runs.items():
        runs = [r for r in runs if r["latency_s"]["samples"]]
        if not runs:
            continue
        xs = [r["offered_tx_per_s"] for r in runs]
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax.plot(xs, [r["latency_s"][q] for r in runs], style, label=f"N={n} {q}")
    ax.set_xlabel("offered tx/s")
    ax.set_ylabel("latency (s)")
    ax.set_title("latency percentiles vs load")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output / "consensus_latency.png", dpi=80)
    plt.close(fig)
    written.append("consensus_latency.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ns = sorted(by_n)
    best = [max(r["committed_tx_per_s"] for r in by_n[n]) for n in ns]
    ax.plot(ns, best, "o-", label="best committed tx/s")
    ax.plot(ns, [report["ceiling"]["verifications_per_s"] / n for n in ns], "k--",
            label="verify-once ceiling")
    ax.set_xlabel("validators N")
    ax.set_ylabel("tx/s")
    ax.set_yscale("log")
    ax.set_title("throughput vs N")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output / "consensus_scaling.png", dpi=80)
    plt.close(fig)
    written.append("consensus_scaling.png")
    return written


# --- main ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bcfl bench consensus",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--validators", "-n", default="4",
                        help="comma-separated committee sizes from 4,7,10,16")
    parser.add_argument("--rate", default="1000",
                        help="comma-separated offered rates in tx/s (open loop)")
    parser.add_argument("--closed-loop", action="store_true",
                        help="also run a closed-loop step per N (as fast as accepted)")
    parser.add_argument("--closed-loop-txs", type=int, default=None,
                        help="pre-signed txs for the closed-loop step (default: "
                             f"{CLOSED_LOOP_TXS_PER_S:,} per second of warm-up and duration)")
    parser.add_argument("--repeat", type=int, default=1,
                        help=f"run every N's steps this many times (1..{REPEAT_MAX}), "
                             "interleaved across N, each on a fresh localnet; the summary "
                             "gives each step's median and range")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="excluded seconds first")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds to wait after the load for accepted txs to commit")
    parser.add_argument("--accounts", type=int, default=1000, help="funded sender accounts")
    parser.add_argument("--loaders", type=int, default=1, help="load-generator processes")
    parser.add_argument("--routing", choices=ROUTINGS, default=ROUTING_PINNED,
                        help="pinned: each account's txs to one API (a client sticks to its "
                             "node); spread: each batch to the next API, so an account's "
                             "nonces arrive at different validators")
    parser.add_argument("--batch", type=int, default=BATCH_TXS_DEFAULT,
                        help="txs per POST /v1/txs/batch (1..1000)")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0,
                        help="seconds for the Ed25519 ceiling (0 skips it)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"directory for consensus.json and plots (default {DEFAULT_OUTPUT})")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--profile-node0", type=Path, metavar="FILE",
                        help="run validator 0 under pyinstrument; text profile to FILE.n<N>.txt")
    parser.add_argument("--keep", action="store_true", help="keep the localnet directories")
    parser.add_argument("--base-port", type=int, default=BASE_PORT_DEFAULT,
                        help="first port to try for the localnet (the first free block of 2N "
                             f"from here; default {BASE_PORT_DEFAULT}, below Linux's "
                             "ephemeral range so outgoing connections cannot take them)")
    args = parser.parse_args(argv)
    if args.closed_loop_txs is None:
        args.closed_loop_txs = int(CLOSED_LOOP_TXS_PER_S * (args.warmup + args.duration))
    try:
        args.sizes = [int(s) for s in args.validators.split(",") if s]
        args.rates = [float(r) for r in args.rate.split(",") if r]
    except ValueError:
        parser.error("--validators and --rate take comma-separated numbers")
    if not args.sizes or any(n not in VALIDATORS_ALLOWED for n in args.sizes):
        parser.error(f"--validators must be from {VALIDATORS_ALLOWED}")
    if any(r <= 0 for r in args.rates) or (not args.rates and not args.closed_loop):
        parser.error("--rate values must be positive")
    if not 1 <= args.batch <= 1000 or args.loaders < 1 or args.accounts < args.loaders:
        parser.error("--batch must be 1..1000, --loaders >= 1, --accounts >= --loaders")
    if not 1 <= args.repeat <= REPEAT_MAX:
        parser.error(f"--repeat must be 1..{REPEAT_MAX}")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    return args


def print_run(run: dict[str, Any]) -> None:
    lat = run["latency_s"]
    acc = run["accounting"]
    print(f"N={run['validators']:>2} {run['mode']:<11} offered {run['offered_tx_per_s']:>8.1f} "
          f"committed {run['committed_tx_per_s']:>8.1f} tx/s  p50 {lat['p50']} p99 {lat['p99']} "
          f"max {lat['max']} (n={lat['samples']})  blocks/s {run['blocks_per_s']} "
          f"vc {run['view_changes']} cpu {run['cpu_cores_per_validator']} "
          f"({run['validator_cpu_us_per_committed_tx']} us/tx)  "
          f"accepted {acc['accepted']} committed {acc['committed']} "
          f"stranded {acc['stranded_behind_rejected']} missing {acc['missing']} "
          f"rejected {acc['rejected']}", file=sys.stderr)


def format_table(report: dict[str, Any]) -> str:
    """The runs as an aligned text table (the JSON has every figure with its window)."""
    header = " ".join(f"{name:>{width}}" for name, width, _ in TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for run in report["runs"]:
        lines.append(" ".join(f"{'-' if (v := get(run)) is None else v!s:>{width}}"
                              for _, width, get in TABLE_COLUMNS))
    ceiling = report["ceiling"]
    measured = " / ".join(f"{r:.0f}" for r in ceiling.get("measured_per_s", []))
    lines.append(f"ceiling: {ceiling['verifications_per_s']:.0f} Ed25519 verifications/s on "
                 f"{ceiling.get('processes', '?')} processes"
                 + (f" (mean of {measured} before / after the runs)" if measured else "")
                 + "; per-N ceiling = that / N")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "benchmark": "consensus",
        "machine": get_machine_info(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tx_size_bytes": TX_SIZE_BYTES,
        "ceiling": {"verifications_per_s": 0.0},
        "runs": [],
        "failures": [],
        "warnings": [],
    }
    ceiling_before = (measure_verify_ceiling(args.ceiling_seconds)
                      if args.ceiling_seconds > 0 else None)
    if ceiling_before is not None:
        print(f"ceiling before the runs: {ceiling_before}", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="bcfl-bench-"))
    try:
        # Interleaved (every N once, then again): a machine that slows down for a while
        # slows every N alike, and each repetition pairs the N it ran close together.
        for repetition, n in ((r, n) for r in range(args.repeat) for n in args.sizes):
            suffix = "" if args.repeat == 1 else f"-{repetition}"
            label = f"N={n}" if args.repeat == 1 else f"N={n} (repetition {repetition})"
            directory = root / f"n{n}{suffix}"
            profile = (None if args.profile_node0 is None
                       else args.profile_node0.with_suffix(f".n{n}{suffix}.txt"))
            with open_localnet(n, args.accounts, directory, args.base_port, profile) as homes:
                key_paths = sorted((directory / "accounts").glob("client-*.json"))
                closed = StepConfig(0.0, args.warmup, args.duration, args.drain_timeout,
                                    args.loaders, args.batch, args.closed_loop_txs,
                                    args.routing)
                steps = [replace(closed, rate_per_s=rate) for rate in args.rates]
                if args.closed_loop:
                    steps.append(closed)
                for step in steps:
                    workdir = root / f"n{n}{suffix}-r{int(step.rate_per_s)}"
                    workdir.mkdir()
                    run = {"validators": n, "repetition": repetition,
                           **run_step(homes, key_paths, step, workdir)}
                    report["runs"].append(run)
                    print_run(run)
                    if run["load_ended_s_before_window_end"] > LOAD_ENDED_EARLY_WARNING_S:
                        report["warnings"].append(
                            f"{label} {run['mode']}: the load ended "
                            f"{run['load_ended_s_before_window_end']} s before the window "
                            "did (a closed loop out of pre-signed txs, or an open loop "
                            "skipping accounts behind refused txs); the committed rate "
                            "is a lower bound")
                    acc = run["accounting"]
                    if acc["missing"] or acc["unanswered"]:
                        report["failures"].append(
                            f"{label} rate={step.rate_per_s}: {acc['missing']} accepted txs "
                            f"never committed, {acc['unanswered']} unanswered")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"localnet directories kept in {root}", file=sys.stderr)
    if ceiling_before is not None:
        report["ceiling"] = combine_ceilings(
            ceiling_before, measure_verify_ceiling(args.ceiling_seconds))
        ceiling_warning = get_ceiling_warning(report["ceiling"])
        if ceiling_warning is not None:
            report["warnings"].append(ceiling_warning)
    for run in report["runs"]:
        ceiling = report["ceiling"]["verifications_per_s"] / run["validators"]
        run["ceiling_tx_per_s"] = round(ceiling, 1)
        run["fraction_of_ceiling"] = (round(run["committed_tx_per_s"] / ceiling, 4)
                                      if ceiling else None)
    report["summary"] = compute_summary(report["runs"])
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        if not args.no_plots and report["runs"]:
            report["plots"] = write_plots(report, args.output)
    text = write_report(report, None if args.output is None else args.output / "consensus.json")
    print(format_table(report), file=sys.stderr)
    if args.repeat > 1:
        print(format_summary(report["summary"]), file=sys.stderr)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.output is not None:
        print(f"wrote {args.output / 'consensus.json'}"
              + (f" and {len(report.get('plots', []))} plots" if report.get("plots") else ""),
              file=sys.stderr)
    print(text)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
