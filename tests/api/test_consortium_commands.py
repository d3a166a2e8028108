"""A consortium across machines: ``bcfl keys new|show --key``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from node.commands import init, keys
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
