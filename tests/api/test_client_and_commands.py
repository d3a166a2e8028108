"""The Python client against a served app, and the file-level CLI commands."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node.api import create_app
from node.client import AsyncClient, Client, ClientError, make_transfer
from node.codec import Transfer, decode_tx, get_tx_hash, verify_tx
from node.commands import init, keys, reset, status, testnet, tx
from node.config import Config, load_config
from node.genesis import load_genesis
from node.keys import KeyPair, load_key_file, save_key_file
from tests.api.conftest import serve_app
from tests.api.fakes import FakeNodeService
from tests.ports import find_free_port_block

CHAIN = "test-chain"
ALICE = KeyPair.from_seed(b"a" * 32)
BOB = KeyPair.from_seed(b"b" * 32)


def make_service(**kwargs: Any) -> FakeNodeService:
    return FakeNodeService(CHAIN, balances={ALICE.public_key: 1000}, **kwargs)


def test_make_transfer_is_a_signed_canonical_transfer() -> None:
    raw = make_transfer(ALICE, CHAIN, BOB.public_key, 7, 3, b"memo")
    decoded = decode_tx(raw)
    assert decoded.body == Transfer(BOB.public_key, 7, b"memo")
    assert decoded.sender == ALICE.public_key and decoded.nonce == 3
    assert verify_tx(CHAIN, decoded) and not verify_tx("other", decoded)


def test_sync_client_round_trip_and_errors() -> None:
    service = make_service()
    with serve_app(service) as served:
        client = Client(served.url, timeout_s=0.5)
        raw = make_transfer(ALICE, CHAIN, BOB.public_key, 5, 0)
        assert client.submit_tx(raw) == {"hash": get_tx_hash(raw).hex(), "status": "accepted"}
        assert client.get_tx(get_tx_hash(raw))["status"] == "pending"
        served.call(service.commit_block)
        assert client.get_tx(get_tx_hash(raw).hex())["height"] == 1
        assert client.get_block()["height"] == 1 and client.get_block(1)["tx_count"] == 1
        assert client.get_account(BOB.public_key)["balance"] == 5
        assert client.get_status()["chain_id"] == CHAIN
        assert "bcfl_height 1" in client.get_metrics()
        with pytest.raises(ClientError) as excinfo:
            client.submit_tx(make_transfer(ALICE, CHAIN, BOB.public_key, 5, 0, b"x"))
        assert (excinfo.value.status, excinfo.value.code) == (400, "bad_nonce")
        with pytest.raises(ClientError) as excinfo:
            client.get_block(99)
        assert (excinfo.value.status, excinfo.value.code) == (404, "not_found")

        with client.follow_events() as events:
            time.sleep(0.7)  # outlives the client's request timeout
            served.call(service.commit_block)
            assert next(events) == {"type": "block", "height": 2,
                                    "hash": service.blocks[1].block_hash.hex(), "tx_count": 0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_node_is_a_clear_client_error() -> None:
    with pytest.raises(ClientError) as excinfo:
        Client(f"http://127.0.0.1:{_free_port()}", timeout_s=2).get_status()
    assert excinfo.value.code == "unreachable" and "cannot reach" in str(excinfo.value)


def test_both_clients_read_a_large_streamed_body_whole_and_refuse_one_over_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A block of thousands of txs is a JSON body of megabytes that arrives in many chunks;
    reading only what was buffered once made it look like "not JSON" (bench at N = 7)."""
    hashes = [f"{k:064x}" for k in range(40_000)]  # ~2.7 MB

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        body = json.dumps({"height": 7, "tx_hashes": hashes}).encode()
        for start in range(0, len(body), 10_000):
            await response.write(body[start:start + 10_000])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    async def body() -> None:
        app = web.Application()
        app.router.add_get("/v1/blocks/7", streamed)
        server = TestServer(app)
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        try:
            async with AsyncClient(url) as client:
                assert (await client.get_block(7))["tx_hashes"] == hashes
            sync_block = await asyncio.to_thread(Client(url).get_block, 7)
            assert sync_block["tx_hashes"] == hashes
            monkeypatch.setattr("node.client.RESPONSE_SIZE_MAX_BYTES", 1_000_000)
            async with AsyncClient(url) as client:
                with pytest.raises(ClientError, match="over 1000000 bytes"):
                    await client.get_block(7)
            with pytest.raises(ClientError, match="over 1000000 bytes"):
                await asyncio.to_thread(Client(url).get_block, 7)
        finally:
            await server.close()

    asyncio.run(body())


def test_async_client_submits_concurrently() -> None:
    service = make_service()

    async def body() -> None:
        server = TestServer(create_app(service, Config()))
        await server.start_server()
        try:
            async with AsyncClient(str(server.make_url("")), connections_max=4) as client:
                txs = [make_transfer(ALICE, CHAIN, BOB.public_key, 1, n) for n in range(20)]
                results = []
                for raw in txs:  # nonce order matters to the fake's mempool
                    results.append(await client.submit_tx(raw))
                assert all(r["status"] == "accepted" for r in results)
                statuses = await asyncio.gather(*(client.get_tx(get_tx_hash(r)) for r in txs))
                assert all(s["status"] == "pending" for s in statuses)
                async with await client.follow_events() as events:
                    service.commit_block()
                    event = await asyncio.wait_for(events.__anext__(), 5)
                    assert event["tx_count"] == 20
                with pytest.raises(ClientError) as excinfo:
                    await client.get_tx("00")
                assert excinfo.value.code == "bad_hash"
        finally:
            await server.close()

    asyncio.run(body())


# --- commands --------------------------------------------------------------------


def test_init_creates_the_layout_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    assert init.main(["--home", str(home), "--moniker", "alpha"]) == 0
    key_path = home / "config" / "node_key.json"
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert (home / "data").is_dir()
    assert load_config(home / "config" / "config.toml").moniker == "alpha"
    key = load_key_file(key_path)
    out = capsys.readouterr().out
    assert key.public_key.hex() in out and key.peer_id in out

    assert init.main(["--home", str(home)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert load_key_file(key_path).seed == key.seed
    assert init.main([]) == 2


def test_testnet_writes_n_homes_with_one_valid_genesis(tmp_path: Path) -> None:
    out = tmp_path / "net"
    base = find_free_port_block(8)
    assert testnet.main(["--validators", "4", "--output", str(out), "--chain-id", "c1",
                         "--base-port", str(base), "--accounts", "2",
                         "--institutions", "h-a", "h-b:trainer"]) == 0
    genesis = load_genesis(out / "genesis.json")
    assert genesis.chain_id == "c1" and genesis.n == 4
    ports = [p for v in genesis.validators for p in (v.p2p_port, v.api_port)]
    assert len(set(ports)) == 8 and all(base <= p < base + 8 for p in ports)
    assert [(m.name, m.role) for m in genesis.members] == [("h-a", "both"), ("h-b", "trainer")]
    for i, validator in enumerate(genesis.validators):
        home = out / f"node{i}"
        config = load_config(home / "config" / "config.toml")
        assert config.api.listen_port == validator.api_port
        assert config.p2p.listen_port == validator.p2p_port
        assert load_key_file(home / "config" / "node_key.json").public_key == validator.public_key
        assert load_genesis(home / "config" / "genesis.json") == genesis
        assert (home / "data").is_dir()
    account_files = sorted(p.name for p in (out / "accounts").iterdir())
    assert account_files == ["client-0.json", "client-1.json", "h-a.json", "h-b.json"]
    balances = dict(genesis.balances)
    for path in (out / "accounts").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
        assert balances[load_key_file(path).public_key] > 0
    # a second run into the same directory refuses
    assert testnet.main(["--validators", "4", "--output", str(out), "--skip-port-check"]) == 1


def test_testnet_validates_n_and_ports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert testnet.main(["--validators", "3", "--output", str(tmp_path / "a")]) == 1
    assert "n = 3f + 1" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = testnet.main(["--validators", "4", "--output", str(tmp_path / "b"),
                             "--base-port", str(port - 3)])
        assert code == 1
        assert f"port(s) {port}" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert testnet.main(["--validators", "x", "--output", str(tmp_path)]) == 2


def test_keys_show_and_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "net"
    assert testnet.main(["--validators", "4", "--output", str(out), "--skip-port-check"]) == 0
    home = out / "node2"
    capsys.readouterr()
    assert keys.main(["show", "--home", str(home)]) == 0
    shown = capsys.readouterr().out
    key = load_key_file(home / "config" / "node_key.json")
    assert key.public_key.hex() in shown and "index 2 of 4" in shown

    (home / "config" / "genesis.json").write_text('{"chain_id": "x"}')
    assert keys.main(["show", "--home", str(home)]) == 1
    assert "bad genesis" in capsys.readouterr().err
    assert keys.main(["show", "--home", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err

    (home / "data" / "blocks").mkdir()
    (home / "data" / "blocks" / "000001.ldb").write_bytes(b"x")
    assert reset.main(["--home", str(home)]) == 2
    assert "--unsafe" in capsys.readouterr().err
    assert (home / "data" / "blocks").exists()
    assert reset.main(["--unsafe", "--home", str(home)]) == 0
    assert (home / "data").is_dir() and list((home / "data").iterdir()) == []
    assert load_key_file(home / "config" / "node_key.json").seed == key.seed
    assert (home / "config" / "config.toml").exists()


def test_status_and_tx_send_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "alice.json"
    save_key_file(key_file, ALICE)
    service = make_service(auto_commit=True)
    with serve_app(service) as served:
        assert status.main(["--node", served.url]) == 0
        assert f"chain:       {CHAIN}" in capsys.readouterr().out
        assert status.main(["--node", served.url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["chain_id"] == CHAIN

        send = ["send", "--node", served.url, "--from", str(key_file),
                "--to", BOB.public_key.hex(), "--amount", "9", "--memo", "rent"]
        assert tx.main([*send, "--wait"]) == 0
        printed = capsys.readouterr().out
        assert "committed at height 1" in printed
        tx_hash = printed.split()[0]
        assert served.call(lambda: service.committed[bytes.fromhex(tx_hash)]) == (1, 0)
        assert tx.main(send) == 0  # nonce 1 read from the account
        assert "(nonce 1)" in capsys.readouterr().out
        assert served.call(lambda: service.accounts[BOB.public_key].balance) == 18

        assert tx.main([*send, "--nonce", "7"]) == 1
        assert "bad_nonce" in capsys.readouterr().err
        assert tx.main(["send", "--node", served.url, "--from", str(key_file),
                        "--to", "abc", "--amount", "1"]) == 1
        assert "64 hex" in capsys.readouterr().err
        assert tx.main(["show", "--node", served.url, tx_hash]) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "committed"
    unreachable = f"http://127.0.0.1:{_free_port()}"
    assert status.main(["--node", unreachable, "--timeout", "2"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert status.main(["--home", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
