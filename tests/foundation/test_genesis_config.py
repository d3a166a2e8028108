from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from node.config import Config, ConfigError, load_config, parse_config, save_config
from node.genesis import (
    GenesisError,
    get_genesis_hash,
    load_genesis,
    parse_genesis,
    save_genesis,
)


def _document(n: int = 4) -> dict[str, Any]:
    return {
        "chain_id": "bcfl-test",
        "genesis_time_ms": 1_700_000_000_000,
        "validators": [
            {
                "name": f"hospital{i}",
                "public_key": f"{i:02x}" * 32,
                "p2p_host": "127.0.0.1",
                "p2p_port": 26656 + i,
                "api_host": "127.0.0.1",
                "api_port": 8080 + i,
            }
            for i in range(n)
        ],
        "members": [{"name": "clinic", "public_key": "aa" * 32, "role": "trainer"}],
        "balances": {"aa" * 32: 1000},
        "fl": {"rounds": 3},
    }


def test_genesis_roundtrip_and_hash(tmp_path: Path) -> None:
    genesis = parse_genesis(_document(7))
    assert (genesis.n, genesis.f) == (7, 2)
    assert genesis.get_validator_index(bytes([3]) * 32) == 3
    path = tmp_path / "genesis.json"
    save_genesis(path, genesis)
    loaded = load_genesis(path)
    assert loaded == genesis
    assert get_genesis_hash(loaded) == get_genesis_hash(genesis)
    changed = _document(7)
    changed["balances"]["aa" * 32] = 1001
    assert get_genesis_hash(parse_genesis(changed)) != get_genesis_hash(genesis)


BAD_GENESIS = [
    (
        lambda d: d["validators"][2].update(public_key="xyz"),
        r"validators\[2\].public_key: expected 64",
    ),
    (lambda d: d["validators"][1].update(public_key="AA" * 32), r"validators\[1\].public_key"),
    (lambda d: d["validators"][3].update(public_key="00" * 32), r"validators\[3\].public_key: dup"),
    (lambda d: d["validators"][1].update(name="hospital0"), r"validators\[1\].name: duplicate"),
    (lambda d: d["validators"][0].update(p2p_port=0), r"validators\[0\].p2p_port: 0 is out"),
    (lambda d: d["validators"][0].update(api_port="80"), r"validators\[0\].api_port: expected an"),
    (lambda d: d["validators"][0].update(extra=1), r"validators\[0\].extra: unknown field"),
    (lambda d: d["validators"][0].pop("api_host"), r"validators\[0\].api_host: missing"),
    (lambda d: d["validators"].pop(), r"validators: need at least 4"),
    (lambda d: d.update(chain_id=""), r"chain_id: expected"),
    (lambda d: d.update(genesis_time_ms=-1), r"genesis_time_ms: -1 is out of range"),
    (lambda d: d.update(genesis_time_ms=True), r"genesis_time_ms: expected an integer"),
    (lambda d: d["members"][0].update(role="admin"), r"members\[0\].role: expected one of"),
    (lambda d: d["balances"].update({"aa" * 32: 2**64}), r"balances.aaaa.*out of range"),
    (lambda d: d["balances"].update({"zz": 1}), r"balances.zz: expected 64"),
    (lambda d: d.update(fl=[1]), r"fl: expected an object"),
    (lambda d: d.update(surprise=1), r"surprise: unknown field"),
]


@pytest.mark.parametrize("mutate, message", BAD_GENESIS)
def test_bad_genesis_names_the_field(mutate: Any, message: str) -> None:
    document = copy.deepcopy(_document())
    mutate(document)
    with pytest.raises(GenesisError, match=message):
        parse_genesis(document)


def test_genesis_file_errors(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="does not exist"):
        load_genesis(tmp_path / "missing.json")
    path = tmp_path / "genesis.json"
    path.write_text("{not json")
    with pytest.raises(GenesisError, match="not valid JSON"):
        load_genesis(path)
    path.write_text("[]")
    with pytest.raises(GenesisError, match="expected an object"):
        load_genesis(path)


def test_config_roundtrip_and_defaults(tmp_path: Path) -> None:
    config = parse_config({"moniker": "n1", "consensus": {"tick_ms": 25}, "api": {},
                           "mempool": {"relay": "all"}})
    assert config.consensus.tick_ms == 25 and config.api.listen_host == "127.0.0.1"
    assert config.mempool.relay == "all" and Config().mempool.relay == "primary"
    path = tmp_path / "config.toml"
    save_config(path, config)
    assert load_config(path) == config
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_config(empty) == Config()
    home = Path("/home/x")
    assert config.get_key_path(home) == home / "config/node_key.json"
    assert Config(data_dir="/abs/data").get_data_path(home) == Path("/abs/data")


BAD_CONFIG = [
    ({"consensus": {"tick_ms": 0}}, r"consensus.tick_ms: 0 is out of range"),
    ({"consensus": {"tick_ms": True}}, r"consensus.tick_ms: expected an integer, got bool"),
    ({"consensus": {"tick_ms": 1.5}}, r"consensus.tick_ms: expected an integer"),
    ({"consensus": {"tik_ms": 1}}, r"consensus.tik_ms: unknown key"),
    ({"p2p": {"listen_port": 70000}}, r"p2p.listen_port: 70000 is out of range"),
    ({"api": 5}, r"api: expected a table"),
    ({"moniker": 5}, r"moniker: expected a non-empty string"),
    ({"mempol": {}}, r"mempol: unknown key"),
    ({"mempool": {"relay": "everyone"}}, r"mempool.relay: 'everyone' is not one of primary, all"),
    ({"mempool": {"relay": 1}}, r"mempool.relay"),
    ({"consensus": {"window": 4, "checkpoint_interval": 8}}, r"consensus.checkpoint_interval"),
]


@pytest.mark.parametrize("document, message", BAD_CONFIG)
def test_bad_config_names_the_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(document)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    path = tmp_path / "config.toml"
    path.write_text("moniker = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    path.write_text("[block]\ntxs_max = -1\n")
    with pytest.raises(ConfigError, match="block.txs_max: -1"):
        load_config(path)
