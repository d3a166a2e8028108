"""Runs one manifest on real ``bcfl start`` processes and checks it through the API.

Steps: write a testnet (``bcfl testnet``; in namespace mode each validator's p2p and API
addresses are rewritten to its namespace address), start every validator (Byzantine ones
with ``--byzantine MODE`` and ``BCFL_TEST_BYZANTINE=1``, broken ones with
``BCFL_TEST_SKIP_PERSIST=1``), wait for block 1, then run a steady trickle of transfers
(one outstanding transfer per client account, re-offered to another node until it is
reported committed) while a timeline thread applies and undoes the perturbations. A
restarted node's startup (imports, loading its store: about a second on an idle machine,
several under CPU contention) is not part of the scenario: the timeline holds until the
node answers its API and shifts every later fault by the wait, so a fault timed relative
to a restart (the broken build's deafness, which must outlast its re-proposal) means the
same on a loaded machine.

Checks, black box, after the run (each failure is a violation in the report):
- agreement: every honest validator reports the same block hash at every common height;
- durability: every transfer once reported committed is committed on every honest node;
- recovery: after the last fault heals, every honest node commits past the highest height
  seen at the heal within ``recovery_max_s`` (the time taken is reported), and a transfer
  of the load commits within it too (a censoring primary makes blocks, not progress);
- no crash: every process is alive unless the scenario killed it, and no log has a
  traceback; no honest node halted;
- evidence: a Byzantine equivocator (``equivocate``/``double_vote``) that did equivocate
  (its own log has its first rewrite; an ``equivocate`` validator that is never primary
  has nothing to equivocate about) shows up in an honest node's ``GET /v1/evidence``
  (evidence on chain) within ``EVIDENCE_WAIT_S``; failing that, in some honest node's log
  (``evidence of equivocation by validator i``), the fallback. ``evidence_source`` in the
  result says which fired per offender. No honest validator is ever named in evidence,
  on chain or in a log.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.byzantine import (
    ENV_BYZANTINE,
    ENV_FAULT_FILE,
    ENV_SKIP_PERSIST,
    FIRST_REWRITE_LOG,
    MODES,
)
from node.client import Client, ClientError, get_tx_hash_hex, make_transfer
from node.commands import testnet
from node.commands._common import get_config_path
from node.config import BlockConfig, ConsensusConfig, load_config, save_config
from node.e2e.hosts import Hosts
from node.e2e.manifest import (
    KIND_DEAFEN,
    KIND_ISOLATE,
    KIND_KILL,
    KIND_LOSSY,
    KIND_PAUSE,
    KIND_SLOW,
    KIND_SPLIT,
    KIND_WIPE,
    Manifest,
    Perturbation,
)
from node.genesis import load_genesis, save_genesis
from node.keys import KeyPair, load_key_file

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
POLL_S = 0.2
RESUBMIT_AFTER_S = 4.0
STOP_GRACE_S = 5.0
ACCOUNTS = 8
API_TIMEOUT_S = 3.0
CONVERGE_TIMEOUT_S = 30.0
EVIDENCE_WAIT_S = 15.0
RESTART_WAIT_MAX_S = 30.0
EVIDENCE_RE = re.compile(r"evidence of equivocation by validator (\d+)")
FIRST_REWRITE_RE = re.compile(re.escape(FIRST_REWRITE_LOG).replace("%s", r"\w+"))
REQUEST_TIMEOUT_RE = re.compile(r"validator (\d+), primary of view \d+, has not proposed it")
EQUIVOCATING_MODES = ("equivocate", "double_vote")
# Fast timers so a scenario fits in seconds: 50 ms ticks, a view change after 1.5 s.
CONSENSUS = ConsensusConfig(tick_ms=50, propose_timeout_ticks=10, view_change_timeout_ticks=30,
                            window=16, checkpoint_interval=8)
BLOCK = BlockConfig(txs_max=500, build_interval_ms=50)


@dataclass
class Result:
    name: str
    mode: str
    passed: bool = False
    violations: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    byzantine: dict[int, str] = field(default_factory=dict)
    heights: list[int] = field(default_factory=list)
    txs_submitted: int = 0
    txs_committed: int = 0
    recovery_s: float | None = None
    evidence_against: dict[int, int] = field(default_factory=dict)
    evidence_on_chain: dict[int, int] = field(default_factory=dict)
    evidence_source: dict[int, str] = field(default_factory=dict)  # offender -> chain/log
    # primary -> request timers fired against it at honest nodes (log lines)
    request_timeouts_against: dict[int, int] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["byzantine"] = {str(k): v for k, v in self.byzantine.items()}
        data["evidence_against"] = {str(k): v for k, v in self.evidence_against.items()}
        data["evidence_on_chain"] = {str(k): v for k, v in self.evidence_on_chain.items()}
        data["evidence_source"] = {str(k): v for k, v in self.evidence_source.items()}
        data["request_timeouts_against"] = {
            str(k): v for k, v in self.request_timeouts_against.items()}
        return data


class Cluster:
    """The validator processes of one scenario."""

    def __init__(self, manifest: Manifest, hosts: Hosts, workdir: Path, base_port: int) -> None:
        self.manifest = manifest
        self.hosts = hosts
        self.dir = workdir / "net"
        self.n = manifest.validators
        code = testnet.main(["--validators", str(self.n), "--output", str(self.dir),
                             "--base-port", str(base_port), "--accounts", str(ACCOUNTS),
                             "--skip-port-check", "--chain-id", "bcfl-e2e"])
        if code != 0:
            raise RuntimeError("bcfl testnet failed")
        self.homes = [self.dir / f"node{i}" for i in range(self.n)]
        self._place()
        genesis = load_genesis(self.dir / "genesis.json")
        self.chain_id = genesis.chain_id
        self.clients = [Client(hosts.get_api_url(i, v.api_port), timeout_s=API_TIMEOUT_S)
                        for i, v in enumerate(genesis.validators)]
        self.accounts: list[KeyPair] = [
            load_key_file(self.dir / "accounts" / f"client-{k}.json") for k in range(ACCOUNTS)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * self.n
        self.stopped: set[int] = set()  # killed or paused by the scenario right now

    def _place(self) -> None:
        """Fast consensus timers; in namespace mode, each node on its namespace address."""
        genesis = load_genesis(self.dir / "genesis.json")
        validators = tuple(
            dataclasses.replace(v, p2p_host=self.hosts.get_host(i), api_host=self.hosts.get_host(i))
            for i, v in enumerate(genesis.validators))
        genesis = dataclasses.replace(genesis, validators=validators)
        save_genesis(self.dir / "genesis.json", genesis)
        for i, home in enumerate(self.homes):
            path = get_config_path(home)
            config = load_config(path)
            host = self.hosts.get_host(i)
            config = dataclasses.replace(
                config, consensus=dataclasses.replace(CONSENSUS, **self.manifest.consensus),
                block=BLOCK,
                p2p=dataclasses.replace(config.p2p, listen_host=host),
                api=dataclasses.replace(config.api, listen_host=host))
            save_config(path, config)
            save_genesis(config.get_genesis_path(home), genesis)

    def start(self, i: int) -> None:
        argv = [sys.executable, "-m", "node", "start", "--home", str(self.homes[i])]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env[ENV_FAULT_FILE] = str(self.hosts.fault_files[i])
        mode = self.manifest.byzantine.get(i)
        if mode is not None:
            argv += ["--byzantine", mode]
            env[ENV_BYZANTINE] = "1"
        if i in self.manifest.skip_persist:
            env[ENV_SKIP_PERSIST] = "1"
        log = (self.homes[i] / "node.log").open("ab")
        self.processes[i] = subprocess.Popen(
            self.hosts.wrap(i, argv), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()

    def signal(self, i: int, sig: signal.Signals) -> None:
        process = self.processes[i]
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            if sig == signal.SIGKILL:
                process.wait(timeout=10)

    def is_alive(self, i: int) -> bool:
        process = self.processes[i]
        return process is not None and process.poll() is None

    def wipe(self, i: int) -> None:
        data = self.homes[i] / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()

    def stop_all(self) -> None:
        for i in range(self.n):
            self.signal(i, signal.SIGCONT)
            self.signal(i, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for i, process in enumerate(self.processes):
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(i, signal.SIGKILL)

    def height(self, i: int) -> int:
        return int(self.clients[i].get_status()["height"])

    def get_log(self, i: int) -> str:
        return (self.homes[i] / "node.log").read_text(errors="replace")


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except ClientError:
            pass
        time.sleep(POLL_S)
    return False


class Load:
    """One outstanding transfer per account; records which were reported committed."""

    def __init__(self, cluster: Cluster, rate_tx_per_s: float, targets: list[int]) -> None:
        self.cluster = cluster
        self.interval_s = 1.0 / rate_tx_per_s if rate_tx_per_s > 0 else 0.0
        self.targets = targets
        self.nonces = [0] * len(cluster.accounts)
        self.outstanding: dict[int, tuple[bytes, str, float, int]] = {}  # acct -> tx
        self.submitted: set[str] = set()
        self.committed: dict[str, int] = {}  # tx hash -> height first reported
        self.commits_seen = 0  # grows in the load's thread; read by _check_tx_liveness
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.turn = 0

    def start(self) -> None:
        if self.interval_s:
            self.thread.start()

    def _target(self) -> int:
        live = [i for i in self.targets if i not in self.cluster.stopped] or self.targets
        self.turn += 1
        return live[self.turn % len(live)]

    def _run(self) -> None:
        while not self.stop.is_set():
            for account in range(len(self.cluster.accounts)):
                if self.stop.is_set():
                    return
                self._step(account)
                time.sleep(self.interval_s)

    def _step(self, account: int) -> None:
        now = time.monotonic()
        pending = self.outstanding.get(account)
        if pending is not None:
            tx, tx_hash, sent_at, node = pending
            try:
                status = self.cluster.clients[node].get_tx(tx_hash)
            except ClientError:
                status = {}
            if status.get("status") == "committed":
                self.committed[tx_hash] = int(status["height"])
                self.commits_seen += 1
                del self.outstanding[account]
                self.nonces[account] += 1
            elif now - sent_at > RESUBMIT_AFTER_S:
                self._submit(account, tx, tx_hash)
            return
        key = self.cluster.accounts[account]
        recipient = self.cluster.accounts[(account + 1) % len(self.cluster.accounts)].public_key
        tx = make_transfer(key, self.cluster.chain_id, recipient, 1, self.nonces[account])
        tx_hash = get_tx_hash_hex(tx)
        self._submit(account, tx, tx_hash)

    def _submit(self, account: int, tx: bytes, tx_hash: str) -> None:
        node = self._target()
        try:
            self.cluster.clients[node].submit_tx(tx)
        except ClientError:
            pass  # re-offered to another node after RESUBMIT_AFTER_S
        self.submitted.add(tx_hash)
        self.outstanding[account] = (tx, tx_hash, time.monotonic(), node)

    def finish(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)


class Timeline:
    """Applies each perturbation at its time and undoes it after its duration."""

    def __init__(self, cluster: Cluster, hosts: Hosts, t0: float) -> None:
        self.cluster = cluster
        self.hosts = hosts
        self.t0 = t0
        self.log: list[str] = []
        self.errors: list[str] = []

    def run(self, perturbations: tuple[Perturbation, ...]) -> None:
        events: list[tuple[float, int, Perturbation, bool]] = []
        for k, p in enumerate(perturbations):
            events.append((p.at_s, k, p, True))
            events.append((p.at_s + p.duration_s, k, p, False))
        shift_s = 0.0  # time held for restarted nodes: later faults move by it
        for at_s, _, p, apply in sorted(events, key=lambda e: (e[0], not e[3])):
            delay = self.t0 + shift_s + at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                (self._apply if apply else self._undo)(p)
            except Exception as exc:  # a broken fault must fail the scenario, not hang it
                self.errors.append(f"{p.describe()}: {exc!r}")
            self.log.append(f"{time.monotonic() - self.t0:6.2f}s {'apply' if apply else 'heal '} "
                            f"{p.describe()}")
            if not apply and p.kind in (KIND_KILL, KIND_WIPE):
                held_s = self._wait_for_restart(p.nodes)
                shift_s += held_s
                self.log.append(f"{time.monotonic() - self.t0:6.2f}s held {held_s:.2f}s "
                                f"until {list(p.nodes)} answered")

    def _wait_for_restart(self, nodes: tuple[int, ...]) -> float:
        """Wait (bounded) until every restarted node answers its API; the seconds waited."""
        started = time.monotonic()

        def answer() -> bool:
            for i in nodes:
                if self.cluster.is_alive(i):
                    self.cluster.height(i)  # raises ClientError until the API is up
            return True

        if not wait_until(answer, RESTART_WAIT_MAX_S):
            self.errors.append(f"restarted {list(nodes)} did not answer within "
                               f"{RESTART_WAIT_MAX_S:.0f} s")
        return time.monotonic() - started

    def _apply(self, p: Perturbation) -> None:
        c, nodes = self.cluster, list(p.nodes)
        if p.kind in (KIND_KILL, KIND_WIPE):
            for i in nodes:
                c.stopped.add(i)
                c.signal(i, signal.SIGKILL)
                if p.kind == KIND_WIPE:
                    c.wipe(i)
        elif p.kind == KIND_PAUSE:
            for i in nodes:
                c.stopped.add(i)
                c.signal(i, signal.SIGSTOP)
        elif p.kind in (KIND_ISOLATE, KIND_SPLIT):
            side = nodes[:1] if p.kind == KIND_ISOLATE else nodes
            rest = [i for i in range(c.n) if i not in side]
            self.hosts.partition([side, rest])
        elif p.kind == KIND_SLOW:
            for i in nodes:
                self.hosts.set_slow(i, p.rate_kbit, p.delay_s)
        elif p.kind == KIND_LOSSY:
            for i in nodes:
                self.hosts.set_lossy(i, p.delay_s, p.loss)
        elif p.kind == KIND_DEAFEN:
            for i in nodes:
                self.hosts.set_deaf(i, True)

    def _undo(self, p: Perturbation) -> None:
        c, nodes = self.cluster, list(p.nodes)
        if p.kind in (KIND_KILL, KIND_WIPE):
            for i in nodes:
                c.start(i)
                c.stopped.discard(i)
        elif p.kind == KIND_PAUSE:
            for i in nodes:
                c.signal(i, signal.SIGCONT)
                c.stopped.discard(i)
        elif p.kind in (KIND_ISOLATE, KIND_SPLIT):
            self.hosts.heal()
        elif p.kind == KIND_SLOW:
            for i in nodes:
                self.hosts.clear_slow(i)
        elif p.kind == KIND_LOSSY:
            for i in nodes:
                self.hosts.clear_lossy(i)
        elif p.kind == KIND_DEAFEN:
            for i in nodes:
                self.hosts.set_deaf(i, False)


def run_scenario(manifest: Manifest, hosts: Hosts, workdir: Path, base_port: int,
                 echo: Callable[[str], None] = print) -> Result:
    """Run ``manifest`` on ``hosts``; the caller owns (and closes) the hosts."""
    started = time.monotonic()
    result = Result(manifest.name, hosts.mode, byzantine=dict(manifest.byzantine))
    assert all(mode in MODES for mode in manifest.byzantine.values())
    cluster = Cluster(manifest, hosts, workdir, base_port)
    honest = manifest.get_honest()
    load = Load(cluster, manifest.load_tx_per_s, honest)
    try:
        for i in range(cluster.n):
            cluster.start(i)
        def is_up() -> bool:
            if not all(cluster.is_alive(i) for i in range(cluster.n)):
                return True  # a node exited at startup: stop waiting
            return all(cluster.height(i) >= 1 for i in honest)

        if not wait_until(is_up, START_TIMEOUT_S) or not all(
            cluster.is_alive(i) for i in range(cluster.n)
        ):
            result.violations.append(f"the chain did not commit block 1 in {START_TIMEOUT_S} s")
            return _finish(result, cluster, started)
        t0 = time.monotonic()
        load.start()
        timeline = Timeline(cluster, hosts, t0)
        timeline.run(manifest.perturbations)
        result.faults = timeline.log
        result.violations += timeline.errors
        for line in timeline.log:
            echo(f"  {line}")
        _check_recovery(result, cluster, honest, manifest)
        _check_tx_liveness(result, load, manifest)
        remaining = t0 + manifest.duration_s - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        load.finish()
        _check_converged(result, cluster, honest)
        _check_agreement(result, cluster, honest)
        _check_durability(result, cluster, honest, load)
        _check_chain_evidence(result, cluster, honest, manifest)
    finally:
        load.finish()
        cluster.stop_all()
    _check_logs(result, cluster, manifest)
    return _finish(result, cluster, started)


def _finish(result: Result, cluster: Cluster, started: float) -> Result:
    cluster.stop_all()
    result.passed = not result.violations
    result.wall_s = round(time.monotonic() - started, 2)
    return result


def _get_heights(cluster: Cluster, nodes: list[int]) -> dict[int, int]:
    heights = {}
    for i in nodes:
        try:
            heights[i] = cluster.height(i)
        except ClientError:
            heights[i] = -1
    return heights


def _check_recovery(result: Result, cluster: Cluster, honest: list[int],
                    manifest: Manifest) -> None:
    healed_at = time.monotonic()
    target = max(_get_heights(cluster, honest).values()) + 1
    if wait_until(lambda: all(cluster.height(i) >= target for i in honest),
                  manifest.recovery_max_s):
        result.recovery_s = round(time.monotonic() - healed_at, 2)
    else:
        result.violations.append(
            f"liveness: honest nodes did not all reach height {target} within "
            f"{manifest.recovery_max_s:.0f} s of the last heal "
            f"(heights {_get_heights(cluster, honest)})")


def _check_tx_liveness(result: Result, load: Load, manifest: Manifest) -> None:
    """Heights alone miss a primary that keeps the chain moving with blocks that leave
    every tx out (bcfl start --byzantine censor): a transfer must commit too."""
    if not load.interval_s:
        return
    seen = load.commits_seen
    if not wait_until(lambda: load.commits_seen > seen, manifest.recovery_max_s):
        result.violations.append(
            f"liveness: no transfer committed within {manifest.recovery_max_s:.0f} s of the "
            f"last heal ({len(load.outstanding)} outstanding)")


def _check_converged(result: Result, cluster: Cluster, honest: list[int]) -> None:
    """Let every honest node reach the highest honest height, so checks compare equals."""
    target = max(_get_heights(cluster, honest).values())
    wait_until(lambda: all(cluster.height(i) >= target for i in honest), CONVERGE_TIMEOUT_S)
    result.heights = list(_get_heights(cluster, list(range(cluster.n))).values())


def _check_agreement(result: Result, cluster: Cluster, honest: list[int]) -> None:
    heights = _get_heights(cluster, honest)
    top = max(heights.values())
    for height in range(1, top + 1):
        hashes: dict[str, list[int]] = {}
        for i in honest:
            if heights[i] >= height:
                block_hash = str(cluster.clients[i].get_block(height)["hash"])
                hashes.setdefault(block_hash, []).append(i)
        if len(hashes) > 1:
            result.violations.append(f"safety: honest nodes disagree at height {height}: "
                                     f"{ {h[:16]: nodes for h, nodes in hashes.items()} }")
            return


def _check_durability(result: Result, cluster: Cluster, honest: list[int], load: Load) -> None:
    result.txs_submitted = len(load.submitted)
    result.txs_committed = len(load.committed)
    missing = 0
    for tx_hash, height in sorted(load.committed.items()):
        for i in honest:
            try:
                status = cluster.clients[i].get_tx(tx_hash)
            except ClientError as exc:
                status = {"status": exc.code}
            if status.get("status") != "committed" or status.get("height") != height:
                missing += 1
                if missing <= 3:
                    result.violations.append(
                        f"durability: tx {tx_hash[:16]} reported committed at height {height} "
                        f"is {status.get('status')} at height {status.get('height')} on node{i}")
    if missing > 3:
        result.violations.append(f"durability: {missing} missing (tx, node) pairs in all")


def _read_chain_evidence(cluster: Cluster, honest: list[int]) -> dict[int, int]:
    """Offender -> records on chain, as the first honest node that answers lists them."""
    for i in honest:
        try:
            listing = cluster.clients[i].get_evidence()
        except ClientError:
            continue
        counts: dict[int, int] = {}
        for record in listing.get("evidence", []):
            offender = int(record["offender_index"])
            counts[offender] = counts.get(offender, 0) + 1
        return counts
    return {}


def _check_chain_evidence(
    result: Result, cluster: Cluster, honest: list[int], manifest: Manifest
) -> None:
    """Wait (bounded) until every equivocator is on chain; the log check is the fallback."""
    wanted = _get_equivocators(cluster, manifest)
    deadline = time.monotonic() + (EVIDENCE_WAIT_S if wanted else 0.0)
    counts = _read_chain_evidence(cluster, honest)
    while not wanted <= set(counts) and time.monotonic() < deadline:
        time.sleep(POLL_S * 5)
        counts = _read_chain_evidence(cluster, honest)
    result.evidence_on_chain = counts
    for offender in counts:
        if offender not in manifest.byzantine:
            result.violations.append(f"evidence on chain against honest validator {offender}")


def _get_equivocators(cluster: Cluster, manifest: Manifest,
                      logs: dict[int, str] | None = None) -> set[int]:
    """Validators in an equivocating mode that did equivocate: their own log (``logs``,
    or read now) says so. An ``equivocate`` validator that is never primary has nothing
    to equivocate about."""
    return {i for i, mode in manifest.byzantine.items() if mode in EQUIVOCATING_MODES
            and FIRST_REWRITE_RE.search(cluster.get_log(i) if logs is None else logs[i])}


def _check_logs(result: Result, cluster: Cluster, manifest: Manifest) -> None:
    evidence: dict[int, int] = {}
    logs: dict[int, str] = {}
    for i in range(cluster.n):
        if not cluster.is_alive(i) and cluster.processes[i] is not None:
            code = cluster.processes[i].returncode  # type: ignore[union-attr]
            if code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                result.violations.append(f"crash: node{i} exited with code {code}")
        log = logs[i] = cluster.get_log(i)
        if "Traceback" in log:
            result.violations.append(f"crash: node{i}'s log has a traceback")
        if i in manifest.byzantine:
            continue
        if "HALT:" in log:
            result.violations.append(f"node{i} halted (a committed block failed to apply)")
        for match in EVIDENCE_RE.finditer(log):
            signer = int(match.group(1))
            evidence[signer] = evidence.get(signer, 0) + 1
        for match in REQUEST_TIMEOUT_RE.finditer(log):
            primary = int(match.group(1))
            timeouts = result.request_timeouts_against
            timeouts[primary] = timeouts.get(primary, 0) + 1
    result.evidence_against = evidence
    for signer in evidence:
        if signer not in manifest.byzantine:
            result.violations.append(f"evidence against honest validator {signer} "
                                     f"({evidence[signer]} reports)")
    equivocators = _get_equivocators(cluster, manifest, logs)
    for signer, mode in manifest.byzantine.items():
        if mode not in EQUIVOCATING_MODES:
            continue
        if signer not in equivocators:
            result.evidence_source[signer] = "none: it never equivocated"
        elif result.evidence_on_chain.get(signer):
            result.evidence_source[signer] = "chain"
        elif evidence.get(signer):
            result.evidence_source[signer] = "log"
        else:
            result.violations.append(f"no honest node reported evidence against the "
                                     f"{mode} validator {signer} (not on chain, not in a log)")
