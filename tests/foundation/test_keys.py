from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.keys import KeyFileError, KeyPair, get_peer_id, load_key_file, save_key_file, verify_raw


def test_key_file_roundtrip_and_mode(tmp_path: Path) -> None:
    key = KeyPair.generate()
    path = tmp_path / "config" / "node_key.json"
    save_key_file(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_key_file(path)
    assert loaded.public_key == key.public_key and loaded.seed == key.seed
    assert verify_raw(key.public_key, b"m", loaded.sign_raw(b"m"))
    assert not verify_raw(key.public_key, b"n", loaded.sign_raw(b"m"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_readable_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key.json"
    save_key_file(path, KeyPair.generate())
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(path)


def test_malformed_and_missing_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key_file(tmp_path / "nope.json")
    path = tmp_path / "bad.json"
    for text in ["{", '{"type": "bcfl/ed25519", "seed": "zz"}', "[]", '{"type": "other"}']:
        path.write_text(text)
        os.chmod(path, 0o600)
        with pytest.raises(KeyFileError):
            load_key_file(path)
    save_key_file(path, KeyPair.generate())
    text = path.read_text().replace('"public_key": "', '"public_key": "00', 1)
    path.write_text(text)
    with pytest.raises(KeyFileError, match="does not match"):
        load_key_file(path)


def test_peer_id_is_stable_and_distinct() -> None:
    key = KeyPair.from_seed(b"\x07" * 32)
    assert key.peer_id == get_peer_id(key.public_key) == KeyPair.from_seed(b"\x07" * 32).peer_id
    assert key.peer_id != KeyPair.from_seed(b"\x08" * 32).peer_id
    assert key.peer_id.startswith("12D3KooW")  # identity-multihash Ed25519 ids
    with pytest.raises(ValueError):
        KeyPair.from_seed(b"short")
