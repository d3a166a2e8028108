"""A consortium across machines: ``bcfl keys new|show --key`` and ``bcfl genesis build|validate``.

Each test plays the members' side with real homes and key files: validators run ``bcfl
init``, institutions ``bcfl keys new``, a coordinator ``bcfl genesis build`` from the
public keys alone, and every home then checks the file with ``bcfl genesis validate``.
"""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from node.commands import genesis, init, keys
from node.commands.start import get_address_warnings
from node.config import ApiConfig, Config, P2PConfig
from node.genesis import get_genesis_hash, get_learning_tasks, load_genesis
from node.keys import load_key_file

BALANCE = 5_000


def make_homes(tmp_path: Path, count: int) -> list[Path]:
    homes = [tmp_path / f"val{i}" for i in range(count)]
    for i, home in enumerate(homes):
        assert init.main(["--home", str(home), "--moniker", f"val{i}"]) == 0
    return homes


def get_validator_specs(homes: list[Path]) -> list[str]:
    args = []
    for i, home in enumerate(homes):
        key = load_key_file(home / "config" / "node_key.json").public_key.hex()
        args += ["--validator", f"val{i},{key},10.0.0.{i + 1}:26656,10.0.0.{i + 1}:8080"]
    return args


def build_plain_genesis(tmp_path: Path, homes: list[Path]) -> Path:
    """A genesis without a learning task, its validators the first four of ``homes``."""
    output = tmp_path / "genesis.json"
    assert genesis.main(["build", "--chain-id", "c1", "--output", str(output), "--fl-task",
                         "none", *get_validator_specs(homes[:4])]) == 0
    return output


def make_member_key(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / f"{name}.json"
    assert keys.main(["new", "--output", str(path)]) == 0
    capsys.readouterr()
    return load_key_file(path).public_key.hex()


def test_keys_new_writes_an_owner_only_key_and_never_replaces_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys" / "hospital.json"
    assert keys.main(["new", "--output", str(path)]) == 0
    printed = capsys.readouterr().out
    key = load_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"public key: {key.public_key.hex()}" in printed

    before = path.read_bytes()
    assert keys.main(["new", "--output", str(path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert path.read_bytes() == before

    assert keys.main(["show", "--key", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"public key: {key.public_key.hex()}"
    assert keys.main(["show", "--key", str(tmp_path / "missing.json")]) == 1
    assert "bcfl keys new --output" in capsys.readouterr().err
    path.chmod(0o644)
    assert keys.main(["show", "--key", str(path)]) == 1
    assert "chmod 600" in capsys.readouterr().err
    assert keys.main(["show"]) == 2
    assert keys.main(["show", "--key", str(path), "--home", str(tmp_path)]) == 2


def test_genesis_built_from_public_keys_is_what_every_home_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = make_homes(tmp_path, 4)
    hospital_a = make_member_key(tmp_path, "hospital-a", capsys)
    hospital_b = make_member_key(tmp_path, "hospital-b", capsys)
    client = make_member_key(tmp_path, "client", capsys)
    output = tmp_path / "genesis.json"
    code = genesis.main([
        "build", "--chain-id", "consortium-1", "--output", str(output),
        *get_validator_specs(homes),
        "--member", f"hospital-a,{hospital_a}",
        "--member", f"hospital-b,{hospital_b.upper()},trainer",
        "--fund", f"{client},77", "--balance", str(BALANCE), "--round-blocks", "30",
    ])
    assert code == 0, capsys.readouterr().err
    built = load_genesis(output)
    printed = capsys.readouterr().out
    assert f"hash:       {get_genesis_hash(built).hex()}" in printed

    assert built.chain_id == "consortium-1"
    for i, (home, validator) in enumerate(zip(homes, built.validators, strict=True)):
        assert validator.public_key == load_key_file(home / "config" / "node_key.json").public_key
        assert (validator.name, validator.p2p_host, validator.p2p_port, validator.api_port) == (
            f"val{i}", f"10.0.0.{i + 1}", 26656, 8080)
    assert [(m.name, m.public_key.hex(), m.role) for m in built.members] == [
        ("hospital-a", hospital_a, "both"), ("hospital-b", hospital_b, "trainer")]
    assert dict((k.hex(), v) for k, v in built.balances) == {
        hospital_a: BALANCE, hospital_b: BALANCE, client: 77}
    (task,) = get_learning_tasks(built)
    assert (task.name, task.rule, task.round_length_blocks) == ("breast-cancer", "trimmed_mean", 30)

    for i, home in enumerate(homes):
        (home / "config" / "genesis.json").write_bytes(output.read_bytes())
        assert genesis.main(["validate", "--home", str(home)]) == 0
        shown = capsys.readouterr().out
        assert f"this node:  validator {i} (val{i})" in shown
        assert get_genesis_hash(built).hex() in shown


def test_genesis_build_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = make_homes(tmp_path, 4)
    specs = get_validator_specs(homes)
    member = make_member_key(tmp_path, "hospital-a", capsys)
    output = tmp_path / "genesis.json"
    base = ["build", "--chain-id", "c1", "--output", str(output), "--fl-task", "none"]
    cases = [
        (specs[:6], "validators: need at least 4"),
        ([*specs[:6], "--validator", specs[1]],
         "validators[3].name: duplicate of validators[0].name"),
        ([*specs[:6], "--validator", "val3,abc,10.0.0.4:1,10.0.0.4:2"], "is not a public key"),
        ([*specs[:6], "--validator", f"val3,{'a' * 64},10.0.0.4,10.0.0.4:2"], "is not HOST:PORT"),
        ([*specs[:6], "--validator", f"val3,{'a' * 64},10.0.0.4:2"], "expected 4 comma-separated"),
        ([*specs, "--member", f"h,{member},auditor"], "role must be one of"),
        ([*specs, "--member", f"h,{member}", "--fund", member], "funded twice"),
        ([*specs, "--fund", f"{member},-5"], "whole number"),
        ([*specs, "--fund", f"{member},{1 << 64}"], "not a u64"),
        ([*specs, "--round-blocks", "0"], "--round-blocks 0"),
    ]
    for extra, message in cases:
        assert genesis.main([*base, *extra]) == 1, message
        assert message in capsys.readouterr().err
        assert not output.exists() and not output.with_name("genesis.json.tmp").exists()

    assert genesis.main([*base, *specs]) == 0
    written = output.read_bytes()
    assert genesis.main([*base, *specs]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert output.read_bytes() == written


def test_genesis_validate_names_the_bad_field_and_a_home_it_leaves_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = make_homes(tmp_path, 5)
    output = build_plain_genesis(tmp_path, homes)
    capsys.readouterr()
    assert genesis.main(["validate", str(output)]) == 0
    assert "is valid" in capsys.readouterr().out

    (homes[4] / "config" / "genesis.json").write_bytes(output.read_bytes())
    assert genesis.main(["validate", "--home", str(homes[4])]) == 1
    assert "is not a validator" in capsys.readouterr().err

    document = json.loads(output.read_text())
    document["validators"][1]["public_key"] = "zz"
    output.write_text(json.dumps(document))
    assert genesis.main(["validate", str(output)]) == 1
    assert "validators[1].public_key" in capsys.readouterr().err
    assert genesis.main(["validate", str(tmp_path / "missing.json")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert genesis.main(["validate"]) == 2


def test_start_warns_when_it_listens_where_genesis_does_not_send_peers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = load_genesis(build_plain_genesis(tmp_path, make_homes(tmp_path, 4)))
    matching = dataclasses.replace(Config(), p2p=P2PConfig(listen_port=26656),
                                   api=dataclasses.replace(ApiConfig(), listen_port=8080))
    assert get_address_warnings(matching, built, 2) == []
    moved = dataclasses.replace(matching, p2p=P2PConfig(listen_port=26700))
    (warning,) = get_address_warnings(moved, built, 2)
    assert "p2p listens on port 26700" in warning and "validators[2] lists 26656" in warning
    both = dataclasses.replace(moved, api=dataclasses.replace(ApiConfig(), listen_port=9090))
    assert [w.split(" listens")[0] for w in get_address_warnings(both, built, 2)] == ["p2p", "api"]
