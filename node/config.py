"""``config.toml``: one node's local settings (never part of consensus).

Every section and key is a field of a frozen dataclass with a default, so an
empty file is a valid config. Loading is strict: an unknown key, a value of
the wrong type (``true`` where a number belongs, a float for an int) or one out
of range raises :class:`ConfigError` naming the field, e.g.
``consensus.tick_ms: 0 is out of range [1, 60000]``. Paths are relative to the
node's home directory unless absolute (:meth:`Config.resolve`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

CONFIG_FILE_SIZE_MAX_BYTES = 1024 * 1024
KIB = 1024
MIB = 1024 * KIB


class ConfigError(ValueError):
    """The config file is invalid; the message names the field."""


def _range(low: int, high: int) -> dict[str, Any]:
    """Field metadata: the inclusive range an int setting must lie in."""
    return {"range": (low, high)}


@dataclass(frozen=True)
class P2PConfig:
    listen_host: str = "0.0.0.0"
    listen_port: int = field(default=26656, metadata=_range(0, 65535))


@dataclass(frozen=True)
class ApiConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = field(default=8080, metadata=_range(0, 65535))
    request_size_max_bytes: int = field(default=8 * MIB, metadata=_range(KIB, 1024 * MIB))


@dataclass(frozen=True)
class ConsensusConfig:
    tick_ms: int = field(default=50, metadata=_range(1, 60_000))
    propose_timeout_ticks: int = field(default=20, metadata=_range(1, 1_000_000))
    view_change_timeout_ticks: int = field(default=60, metadata=_range(1, 1_000_000))
    # PBFT's request timer: a backup holding a tx that could go in the next block and has
    # waited this long (from its admission, the commit of its sender's previous nonce, or
    # the view's start) relays it to every validator and votes to change view. 0: off.
    # 30 s at 50 ms ticks: over twice the slowest commit a closed loop saw at n = 16.
    request_timeout_ticks: int = field(default=600, metadata=_range(0, 1_000_000))
    window: int = field(default=64, metadata=_range(1, 100_000))
    checkpoint_interval: int = field(default=16, metadata=_range(1, 100_000))


RELAY_PRIMARY = "primary"
RELAY_ALL = "all"
RELAY_MODES = (RELAY_PRIMARY, RELAY_ALL)


@dataclass(frozen=True)
class MempoolConfig:
    # Clients' txs may fill half (node/mempool.py LOCAL_FILL_PERCENT; past it, txs that can
    # apply, up to half as much again, so gapped txs never hold out their fillers): two
    # full blocks of backlog, so latency under overload stays a few seconds and the API
    # sheds load (503 mempool_full) instead of queueing (CometBFT's default pool: 5,000).
    txs_max: int = field(default=20_000, metadata=_range(1, 10_000_000))
    size_max_bytes: int = field(default=256 * MIB, metadata=_range(KIB, 64 * 1024 * MIB))
    # A local tx still pending this long after its relay is relayed again (backing off).
    relay_retry_ms: int = field(default=1_000, metadata=_range(10, 600_000))
    # Where clients' txs are relayed: "primary" (the current view's primary, the one that
    # proposes them; after a view change they go again to the new one) or "all" (every
    # other validator, which then checks their signatures before the block arrives).
    relay: str = "primary"

    def __post_init__(self) -> None:
        if self.relay not in RELAY_MODES:
            raise ConfigError(f"mempool.relay: {self.relay!r} is not one of "
                              f"{', '.join(RELAY_MODES)}")


@dataclass(frozen=True)
class BlockConfig:
    txs_max: int = field(default=5_000, metadata=_range(1, 1_000_000))
    size_max_bytes: int = field(default=8 * MIB, metadata=_range(KIB, 1024 * MIB))
    build_interval_ms: int = field(default=200, metadata=_range(1, 600_000))


LEARNING_MODES = ("off", "train", "attest", "train+attest")


@dataclass(frozen=True)
class LearningConfig:
    """Fully coupled learning: this validator's institution trains and/or attests itself.

    The node runs a hospital agent (node.hospital) on a thread, talking to its own
    API like any trainer, signing with the institution key ``member_key_file``.
    """

    mode: str = "off"  # off | train | attest | train+attest
    train_data: str = "hospital.csv"  # the institution's CSV (label column "label")
    member_key_file: str = "config/member_key.json"
    task: int = field(default=0, metadata=_range(0, 1_000_000))
    standardize: str = "public"  # public | local

    def __post_init__(self) -> None:
        if self.mode not in LEARNING_MODES:
            raise ConfigError(f"learning.mode: {self.mode!r} is not one of "
                              f"{', '.join(LEARNING_MODES)}")
        if self.standardize not in ("public", "local"):
            raise ConfigError(f"learning.standardize: {self.standardize!r} is not public or local")


@dataclass(frozen=True)
class Config:
    moniker: str = "node"
    key_file: str = "config/node_key.json"
    data_dir: str = "data"
    genesis_file: str = "config/genesis.json"
    p2p: P2PConfig = field(default_factory=P2PConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    mempool: MempoolConfig = field(default_factory=MempoolConfig)
    block: BlockConfig = field(default_factory=BlockConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)

    def __post_init__(self) -> None:
        if self.consensus.checkpoint_interval > self.consensus.window:
            raise ConfigError(
                f"consensus.checkpoint_interval: {self.consensus.checkpoint_interval} must not "
                f"exceed consensus.window ({self.consensus.window})"
            )

    @staticmethod
    def resolve(home: Path, path: str) -> Path:
        """``path`` relative to ``home`` (absolute paths stay as they are)."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else home / candidate

    def get_key_path(self, home: Path) -> Path:
        return self.resolve(home, self.key_file)

    def get_data_path(self, home: Path) -> Path:
        return self.resolve(home, self.data_dir)

    def get_genesis_path(self, home: Path) -> Path:
        return self.resolve(home, self.genesis_file)


def _parse_section(cls: type, value: object, path: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{path or 'config'}: expected a table, got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        name = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{name}: unknown key (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        spec = fields[key]
        name = f"{path}.{key}" if path else key
        field_type = hints[key]
        default = spec.default
        if isinstance(field_type, type) and dataclasses.is_dataclass(field_type):  # a section
            kwargs[key] = _parse_section(field_type, item, name)
        elif type(default) is int:
            if type(item) is not int:
                raise ConfigError(f"{name}: expected an integer, got {type(item).__name__}")
            low, high = spec.metadata["range"]
            if not low <= item <= high:
                raise ConfigError(f"{name}: {item} is out of range [{low}, {high}]")
            kwargs[key] = item
        elif type(default) is str:
            if type(item) is not str or not item or len(item) > 4096:
                raise ConfigError(f"{name}: expected a non-empty string, got {item!r}")
            kwargs[key] = item
        else:  # pragma: no cover - a new field type needs a branch above
            raise AssertionError(f"{name}: unsupported config field type")
    return cls(**kwargs)


def parse_config(document: object) -> Config:
    config: Config = _parse_section(Config, document, "")
    return config


def load_config(path: Path) -> Config:
    try:
        size = path.stat().st_size
        if size > CONFIG_FILE_SIZE_MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes exceeds maximum {CONFIG_FILE_SIZE_MAX_BYTES}")
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(document)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def get_config_document(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(path: Path, config: Config) -> None:
    """Write ``config`` as TOML (atomically: temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(tomli_w.dumps(get_config_document(config)).encode("utf-8"))
    os.replace(tmp, path)
