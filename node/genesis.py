"""``genesis.json``: the chain id, the validator set, member institutions, balances.

Loading validates every field and raises :class:`GenesisError` naming the
offending one, e.g. ``validators[2].public_key: expected 64 lowercase hex
chars``. Public keys are lowercase hex so that each genesis has one canonical
JSON form; :func:`get_genesis_hash` hashes that form (sorted keys, no spaces).

Validators are ordered: a validator's index in the list is its consensus index
(block headers and commit certificates name validators by it). There must be
at least 4 (n = 3f + 1 with f >= 1); ``Genesis.f`` is ``(n - 1) // 3``.
Members are the institutions taking part in learning, each a trainer, a
validator or both; their keys are account keys, which may differ from the
validator keys of their nodes. The ``fl`` section belongs to the learning part
and is only checked to be an object here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.crypto import sha256

VALIDATORS_MIN = 4
VALIDATORS_MAX = 1024
MEMBERS_MAX = 1024
BALANCES_MAX = 100_000
NAME_SIZE_MAX_CHARS = 64
GENESIS_FILE_SIZE_MAX_BYTES = 16 * 1024 * 1024
U64_LIMIT = 1 << 64
ROLES = ("trainer", "validator", "both")

_CHAIN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOST_RE = re.compile(r"[A-Za-z0-9.:-]{1,253}")
_KEY_HEX_RE = re.compile(r"[0-9a-f]{64}")


class GenesisError(ValueError):
    """The genesis document is invalid; the message names the field."""


@dataclass(frozen=True)
class ValidatorInfo:
    name: str
    public_key: bytes
    p2p_host: str
    p2p_port: int
    api_host: str
    api_port: int

    def get_p2p_multiaddr(self) -> str:
        """The libp2p listen address, e.g. ``/ip4/127.0.0.1/tcp/26656``."""
        is_ipv4 = re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", self.p2p_host) is not None
        proto = "ip4" if is_ipv4 else "ip6" if ":" in self.p2p_host else "dns4"
        return f"/{proto}/{self.p2p_host}/tcp/{self.p2p_port}"


@dataclass(frozen=True)
class Member:
    name: str
    public_key: bytes
    role: str


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    validators: tuple[ValidatorInfo, ...]
    members: tuple[Member, ...] = ()
    balances: tuple[tuple[bytes, int], ...] = ()  # (account public key, amount), sorted by key
    fl: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def f(self) -> int:
        """How many Byzantine validators the chain tolerates."""
        return (len(self.validators) - 1) // 3

    def get_validator_index(self, public_key: bytes) -> int | None:
        for index, validator in enumerate(self.validators):
            if validator.public_key == public_key:
                return index
        return None


# --- parsing -------------------------------------------------------------------


def _expect_object(value: object, path: str, keys: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GenesisError(f"{path}: expected an object, got {type(value).__name__}")
    unknown = sorted(set(value) - keys - optional)
    if unknown:
        raise GenesisError(f"{path}.{unknown[0]}: unknown field")
    missing = sorted(keys - set(value))
    if missing:
        raise GenesisError(f"{path}.{missing[0]}: missing field")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parse_int(value: object, path: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise GenesisError(f"{path}: expected an integer, got {type(value).__name__}")
    if not low <= value < high:
        raise GenesisError(f"{path}: {value} is out of range [{low}, {high})")
    return value


def _parse_str(value: object, path: str, pattern: re.Pattern[str], what: str) -> str:
    if type(value) is not str:
        raise GenesisError(f"{path}: expected a string, got {type(value).__name__}")
    if pattern.fullmatch(value) is None:
        raise GenesisError(f"{path}: expected {what}, got {value!r}")
    return value


def _parse_key(value: object, path: str) -> bytes:
    text = _parse_str(value, path, _KEY_HEX_RE, "64 lowercase hex chars")
    return bytes.fromhex(text)


def _parse_list(value: object, path: str, count_max: int) -> list[Any]:
    if not isinstance(value, list):
        raise GenesisError(f"{path}: expected a list, got {type(value).__name__}")
    if len(value) > count_max:
        raise GenesisError(f"{path}: {len(value)} entries exceeds maximum {count_max}")
    return value


def _parse_validator(value: object, path: str) -> ValidatorInfo:
    keys = {"name", "public_key", "p2p_host", "p2p_port", "api_host", "api_port"}
    obj = _expect_object(value, path, keys, set())
    return ValidatorInfo(
        name=_parse_str(obj["name"], f"{path}.name", _NAME_RE, "a name of [A-Za-z0-9._-]{1,64}"),
        public_key=_parse_key(obj["public_key"], f"{path}.public_key"),
        p2p_host=_parse_str(obj["p2p_host"], f"{path}.p2p_host", _HOST_RE, "a host name or IP"),
        p2p_port=_parse_int(obj["p2p_port"], f"{path}.p2p_port", 1, 65536),
        api_host=_parse_str(obj["api_host"], f"{path}.api_host", _HOST_RE, "a host name or IP"),
        api_port=_parse_int(obj["api_port"], f"{path}.api_port", 1, 65536),
    )


def _parse_member(value: object, path: str) -> Member:
    obj = _expect_object(value, path, {"name", "public_key", "role"}, set())
    role = obj["role"]
    if role not in ROLES:
        raise GenesisError(f"{path}.role: expected one of {', '.join(ROLES)}, got {role!r}")
    return Member(
        name=_parse_str(obj["name"], f"{path}.name", _NAME_RE, "a name of [A-Za-z0-9._-]{1,64}"),
        public_key=_parse_key(obj["public_key"], f"{path}.public_key"),
        role=role,
    )


def _check_unique(values: list[Any], paths: list[str]) -> None:
    seen: dict[Any, str] = {}
    for value, path in zip(values, paths, strict=True):
        if value in seen:
            raise GenesisError(f"{path}: duplicate of {seen[value]}")
        seen[value] = path


def parse_genesis(document: object) -> Genesis:
    """Validate a parsed JSON document and build the :class:`Genesis` it describes."""
    keys = {"chain_id", "genesis_time_ms", "validators"}
    obj = _expect_object(document, "", keys, {"members", "balances", "fl"})
    chain_id = _parse_str(obj["chain_id"], "chain_id", _CHAIN_ID_RE, "[A-Za-z0-9._-]{1,64}")
    time_ms = _parse_int(obj["genesis_time_ms"], "genesis_time_ms", 0, U64_LIMIT)

    raw_validators = _parse_list(obj["validators"], "validators", VALIDATORS_MAX)
    if len(raw_validators) < VALIDATORS_MIN:
        raise GenesisError(
            f"validators: need at least {VALIDATORS_MIN} (n = 3f + 1, f >= 1), "
            f"got {len(raw_validators)}"
        )
    validators = [_parse_validator(v, f"validators[{i}]") for i, v in enumerate(raw_validators)]
    _check_unique(
        [v.name for v in validators], [f"validators[{i}].name" for i in range(len(validators))]
    )
    _check_unique(
        [v.public_key for v in validators],
        [f"validators[{i}].public_key" for i in range(len(validators))],
    )
    _check_unique(
        [(v.p2p_host, v.p2p_port) for v in validators],
        [f"validators[{i}].p2p_port" for i in range(len(validators))],
    )

    raw_members = _parse_list(obj.get("members", []), "members", MEMBERS_MAX)
    members = [_parse_member(m, f"members[{i}]") for i, m in enumerate(raw_members)]
    _check_unique([m.name for m in members], [f"members[{i}].name" for i in range(len(members))])
    _check_unique(
        [m.public_key for m in members], [f"members[{i}].public_key" for i in range(len(members))]
    )

    raw_balances = obj.get("balances", {})
    if not isinstance(raw_balances, dict):
        raise GenesisError(f"balances: expected an object, got {type(raw_balances).__name__}")
    if len(raw_balances) > BALANCES_MAX:
        raise GenesisError(f"balances: {len(raw_balances)} entries exceeds maximum {BALANCES_MAX}")
    balances = sorted(
        (_parse_key(k, f"balances.{k}"), _parse_int(v, f"balances.{k}", 0, U64_LIMIT))
        for k, v in raw_balances.items()
    )

    fl = obj.get("fl", {})
    if not isinstance(fl, dict):
        raise GenesisError(f"fl: expected an object, got {type(fl).__name__}")

    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=time_ms,
        validators=tuple(validators),
        members=tuple(members),
        balances=tuple(balances),
        fl=fl,
    )


def get_genesis_document(genesis: Genesis) -> dict[str, Any]:
    """The JSON document of ``genesis`` (what :func:`parse_genesis` accepts)."""
    return {
        "chain_id": genesis.chain_id,
        "genesis_time_ms": genesis.genesis_time_ms,
        "validators": [
            {
                "name": v.name,
                "public_key": v.public_key.hex(),
                "p2p_host": v.p2p_host,
                "p2p_port": v.p2p_port,
                "api_host": v.api_host,
                "api_port": v.api_port,
            }
            for v in genesis.validators
        ],
        "members": [
            {"name": m.name, "public_key": m.public_key.hex(), "role": m.role}
            for m in genesis.members
        ],
        "balances": {key.hex(): amount for key, amount in genesis.balances},
        "fl": genesis.fl,
    }


def get_genesis_canonical_json(genesis: Genesis) -> bytes:
    return json.dumps(
        get_genesis_document(genesis), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def get_genesis_hash(genesis: Genesis) -> bytes:
    """SHA-256 of the canonical JSON (sorted keys, no spaces): two nodes agree iff equal."""
    return sha256(get_genesis_canonical_json(genesis))


def load_genesis(path: Path) -> Genesis:
    try:
        size = path.stat().st_size
        if size > GENESIS_FILE_SIZE_MAX_BYTES:
            raise GenesisError(
                f"{path}: {size} bytes exceeds maximum {GENESIS_FILE_SIZE_MAX_BYTES}"
            )
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise GenesisError(f"{path}: genesis file does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise GenesisError(f"{path}: not valid JSON: {exc}") from None
    try:
        return parse_genesis(document)
    except GenesisError as exc:
        raise GenesisError(f"{path}: {exc}") from None


def save_genesis(path: Path, genesis: Genesis) -> None:
    """Write ``genesis`` as indented JSON (atomically: temp file, then rename)."""
    parse_genesis(json.loads(get_genesis_canonical_json(genesis)))  # never write what we'd refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(get_genesis_document(genesis), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
