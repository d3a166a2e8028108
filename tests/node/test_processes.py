"""Real validator processes on 127.0.0.1 (``bcfl localnet``): agreement, crashes, view change,
strangers, bad requests. Every wait is bounded; nothing here asserts on speed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from node.client import Client, ClientError, make_transfer
from node.commands.localnet import get_homes, read_pid, start_node
from node.genesis import load_genesis
from node.keys import KeyPair, load_key_file
from node.transport import Transport, ValidatorAddress
from tests.ports import find_free_port_block

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
N = 4


def bcfl(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except ClientError:
            pass  # a node that is (re)starting
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Net:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.homes = get_homes(directory)
        self.genesis = load_genesis(directory / "genesis.json")
        self.clients = [Client(f"http://127.0.0.1:{v.api_port}", timeout_s=5.0)
                        for v in self.genesis.validators]
        self.accounts = [load_key_file(p) for p in sorted((directory / "accounts").glob(
            "client-*.json"))]

    def height(self, i: int) -> int:
        return int(self.clients[i].get_status()["height"])

    def block_hash(self, i: int, height: int) -> str:
        return str(self.clients[i].get_block(height)["hash"])

    def assert_same_chain(self, nodes: list[int]) -> None:
        top = min(self.height(i) for i in nodes)
        assert top >= 1
        for height in range(1, top + 1):
            hashes = {self.block_hash(i, height) for i in nodes}
            assert len(hashes) == 1, f"nodes disagree at height {height}: {hashes}"

    def kill(self, i: int) -> None:
        pid = read_pid(self.homes[i])
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _is_gone(pid), f"node{i} to die", 10)


def _is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def localnet(tmp_path: Path) -> Iterator[Net]:
    directory = tmp_path / "net"
    base = find_free_port_block(2 * N)
    up = bcfl("localnet", "up", "--dir", str(directory), "--validators", str(N),
              "--base-port", str(base), "--timeout", str(WAIT_S))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "is up" in up.stdout and "node.log" in up.stdout
        yield Net(directory)
    finally:
        down = bcfl("localnet", "down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
        assert not list(directory.glob("node*/node.pid"))


def _submit_transfers(net: Net, count: int) -> list[str]:
    chain_id = net.genesis.chain_id
    hashes = []
    for k in range(count):
        key = net.accounts[k % len(net.accounts)]
        nonce = k // len(net.accounts)
        tx = make_transfer(key, chain_id, KeyPair.generate().public_key, 5, nonce)
        result = net.clients[k % N].submit_tx(tx)  # through the API of every node in turn
        assert result["status"] == "accepted"
        hashes.append(result["hash"])
    return hashes


def _run_stranger(genesis_validators: list[ValidatorAddress], port: int) -> dict[str, Any]:
    """A libp2p host with a key outside the genesis dials every validator and sends frames."""
    stranger = KeyPair.generate()
    validators = [*genesis_validators,
                  ValidatorAddress(len(genesis_validators), stranger.public_key, "127.0.0.1", port)]
    transport = Transport(stranger, "127.0.0.1", port, validators)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            for _ in range(20):
                transport.broadcast(b"\x06\x01\x07" + b"\x00" * 64)
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return transport.get_metrics()


def _get_metric(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_localnet_commits_agrees_and_refuses_strangers_and_bad_requests(localnet: Net) -> None:
    net = localnet
    status = bcfl("localnet", "status", "--dir", str(net.dir))
    assert status.returncode == 0 and status.stdout.count("height") == N, status.stdout
    tx_hashes = _submit_transfers(net, 24)
    wait_for(lambda: all(net.clients[i].get_tx(h)["status"] == "committed"
                         for i in range(N) for h in tx_hashes), "transfers committed everywhere")
    net.assert_same_chain(list(range(N)))

    # Bad input gets a 4xx with a reason; the node keeps running.
    client = net.clients[1]
    with pytest.raises(ClientError) as bad_tx:
        client.submit_tx(b"\x02\x01 definitely not a transaction")
    assert bad_tx.value.status == 400 and bad_tx.value.code
    stale = make_transfer(net.accounts[0], net.genesis.chain_id, b"\x01" * 32, 1, 0)
    with pytest.raises(ClientError) as stale_tx:
        client.submit_tx(stale)  # nonce 0 was used above
    assert stale_tx.value.status == 400 and stale_tx.value.code == "bad_nonce"
    with pytest.raises(ClientError) as bad_block:
        client._request("GET", "/v1/blocks/not-a-height")
    assert 400 <= int(bad_block.value.status or 0) < 500
    assert client.get_status()["height"] >= 1

    # A peer outside the genesis cannot get a frame into consensus.
    validators = [ValidatorAddress(i, v.public_key, v.p2p_host, v.p2p_port)
                  for i, v in enumerate(net.genesis.validators)]
    height_before = net.height(0)
    stranger_metrics = _run_stranger(validators, find_free_port_block(2))
    assert stranger_metrics["connected_peers"] == []
    metrics = net.clients[0].get_metrics()
    refused = _get_metric(metrics, 'bcfl_messages_dropped_total{reason="refused_connection"}')
    assert refused >= 1, metrics
    assert _get_metric(metrics, 'bcfl_messages_dropped_total{reason="decode_consensus"}') == 0
    wait_for(lambda: net.height(0) >= height_before + 2, "commits after the stranger")
    net.assert_same_chain(list(range(N)))


@pytest.mark.slow
def test_crashed_validator_catches_up_and_crashed_primary_is_replaced(localnet: Net) -> None:
    net = localnet
    wait_for(lambda: min(net.height(i) for i in range(N)) >= 2, "height 2")
    net.kill(3)
    others = [0, 1, 2]
    start = max(net.height(i) for i in others)
    _submit_transfers(net, 3)  # nodes 0..2 take them
    wait_for(lambda: min(net.height(i) for i in others) >= start + 3, "commits without node3")
    start_node(net.homes[3])
    target = max(net.height(i) for i in others)
    wait_for(lambda: net.height(3) >= target, "node3 to catch up")
    net.assert_same_chain(list(range(N)))

    primary = int(net.clients[0].get_status()["primary_index"])
    view = int(net.clients[0].get_status()["view"])
    net.kill(primary)
    alive = [i for i in range(N) if i != primary]
    start = max(net.height(i) for i in alive)
    wait_for(lambda: all(int(net.clients[i].get_status()["view"]) > view for i in alive),
             "a view change")
    wait_for(lambda: min(net.height(i) for i in alive) >= start + 3, "commits in the new view")
    net.assert_same_chain(alive)


@pytest.mark.slow
def test_start_refuses_a_second_node_on_a_running_home(localnet: Net) -> None:
    again = bcfl("start", "--home", str(localnet.homes[0]), timeout_s=30)
    assert again.returncode == 1
    assert "already in use" in again.stderr or "locked" in again.stderr, again.stderr
    assert localnet.height(0) >= 1  # the running node is unaffected


@pytest.mark.parametrize("breakage", ["missing_home", "open_key", "bad_genesis", "bad_config"])
def test_start_explains_why_it_cannot_start(tmp_path: Path, breakage: str) -> None:
    base = find_free_port_block(2 * N)
    made = bcfl("testnet", "-n", str(N), "-o", str(tmp_path / "net"), "--base-port", str(base))
    assert made.returncode == 0, made.stderr
    home = tmp_path / "net" / "node0"
    expected = {"missing_home": "does not exist", "open_key": "chmod 600",
                "bad_genesis": "genesis", "bad_config": "listen_port"}[breakage]
    if breakage == "missing_home":
        home = tmp_path / "nowhere"
    elif breakage == "open_key":
        (home / "config" / "node_key.json").chmod(0o644)
    elif breakage == "bad_genesis":
        (home / "config" / "genesis.json").write_text("{\"chain_id\": 5}")
    else:
        (home / "config" / "config.toml").write_text("[p2p]\nlisten_port = \"x\"\n")
    result = bcfl("start", "--home", str(home), timeout_s=30)
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
