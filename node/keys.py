"""Ed25519 validator and client keys, key files, and libp2p peer ids.

A key file holds the 32-byte seed as hex inside a small JSON object and is
written with mode 0600. Loading refuses a key file that group or others can
read, because a leaked validator key lets anyone vote in its name. A
validator's libp2p peer id is derived from the same Ed25519 key, so the
genesis file alone says who may connect.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

SEED_SIZE_BYTES = 32
PUBLIC_KEY_SIZE_BYTES = 32
SIGNATURE_SIZE_BYTES = 64
KEY_FILE_MODE = 0o600
KEY_FILE_TYPE = "bcfl/ed25519"


class KeyFileError(Exception):
    """A key file is missing, malformed or too widely readable."""


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 signing key and its 32-byte public key."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        if len(seed) != SEED_SIZE_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE_BYTES} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def sign_raw(self, message: bytes) -> bytes:
        """Sign bytes as they are. Callers sign domain-tagged bytes (see the codec)."""
        return self.signing_key.sign(message).signature

    @property
    def peer_id(self) -> str:
        return get_peer_id(self.public_key)


def verify_raw(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    if len(public_key) != PUBLIC_KEY_SIZE_BYTES or len(signature) != SIGNATURE_SIZE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        return False
    return True


def get_peer_id(public_key: bytes) -> str:
    """The base58 libp2p peer id of an Ed25519 public key (identity multihash)."""
    # Imported here: libp2p is slow to import and most key users never need it.
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    if len(public_key) != PUBLIC_KEY_SIZE_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE_BYTES} bytes")
    return str(ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)).to_base58())


def save_key_file(path: Path, key: KeyPair) -> None:
    """Write ``key`` to ``path`` with mode 0600, never exposing it more widely, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "type": KEY_FILE_TYPE,
        "public_key": key.public_key.hex(),
        "seed": key.seed.hex(),
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)
        os.write(fd, (json.dumps(document, indent=2) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_key_file(path: Path) -> KeyPair:
    """Read a key file written by :func:`save_key_file`; refuse one others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist (run `bcfl init` first)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} has permissions {stat.filemode(mode)}; it must be readable "
            f"by its owner only: chmod 600 {path}"
        )
    try:
        document = json.loads(path.read_text())
        if document.get("type") != KEY_FILE_TYPE:
            raise KeyFileError(f"key file {path}: type is not {KEY_FILE_TYPE!r}")
        key = KeyPair.from_seed(bytes.fromhex(document["seed"]))
        if document.get("public_key") != key.public_key.hex():
            raise KeyFileError(f"key file {path}: public_key does not match the seed")
    except KeyFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(f"key file {path} is malformed: {exc}") from None
    return key
