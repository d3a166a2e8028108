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
validator keys of their nodes. The ``fl`` section defines the learning tasks
(see docs/learning.md): :func:`parse_fl_section` checks every field and turns
each task into a :class:`TaskConfig` of unsigned integers (real numbers in
fixed point: ``*_micro`` = x 1e6, ``*_ppm`` = parts per million,
``dp_delta_e12`` = x 1e12) so that the state holds no floats.
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
TASKS_MAX = 16
FL_DATASETS = ("breast_cancer",)
FL_MODEL_KINDS = ("logistic", "softmax", "linear", "mlp")
# FLTrust needs a trusted server update, which a chain does not have.
FL_RULES = (
    "mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan",
    "geometric_median", "centered_clipping",
)
RULE_PARAMS_SIZE_MAX_CHARS = 256
FL_ROUND_LENGTH_MAX_BLOCKS = 1_000_000
FL_DELTAS_PER_ROUND_MAX = 256

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


@dataclass(frozen=True)
class Member:
    name: str
    public_key: bytes
    role: str


@dataclass(frozen=True)
class TaskConfig:
    """One learning task as genesis defines it (governance may later change some fields)."""

    task_id: int
    name: str
    model_kind: str
    n_features: int
    n_classes: int
    hidden: int
    l2_micro: int
    init_seed: int  # initial weights from numpy default_rng(init_seed); linear models: zeros
    rule: str
    rule_params_json: str  # canonical JSON object of the rule's parameters
    round_length_blocks: int
    scale_exp: int
    norm_max_ppm: int  # L2 norm bound of a delta, in real units x 1e6
    roni_tolerance_ppm: int  # accept when loss improvement >= -tolerance
    agreement_min_ppm: int  # accept when cosine with the robust aggregate >= this
    reward_pool: int  # tokens minted per round with at least one accepted delta
    validator_share_ppm: int  # part of the pool for attesting validators and the proposer
    clip_norm_micro: int  # the DP clip norm a delta must declare (at most)
    noise_multiplier_min_micro: int  # the DP noise a delta must declare (at least)
    epsilon_budget_micro: int  # per institution, for the life of the task
    dp_delta_e12: int
    validation_dataset: str
    validation_seed: int
    validation_size: int
    validation_hash: bytes
    deltas_per_round_max: int
    sample_count_max: int


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
    parse_fl_section(fl)

    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=time_ms,
        validators=tuple(validators),
        members=tuple(members),
        balances=tuple(balances),
        fl=fl,
    )


# --- the fl section --------------------------------------------------------------

_TASK_KEYS = {
    "name", "model", "rule", "round_length_blocks", "scale_exp", "reward_pool",
    "privacy", "validation_set",
}
_TASK_OPTIONAL = {
    "init_seed", "rule_params", "thresholds", "validator_share", "deltas_per_round_max",
    "sample_count_max",
}


def _parse_real(value: object, path: str, low: float, high: float) -> float:
    if type(value) not in (int, float):
        raise GenesisError(f"{path}: expected a number, got {type(value).__name__}")
    real = float(value)  # type: ignore[arg-type]
    if not low <= real <= high:
        raise GenesisError(f"{path}: {value} is out of range [{low}, {high}]")
    return real


def _to_fixed(value: float, unit: int) -> int:
    return int(round(value * unit))


def _parse_rule_params(value: object, path: str) -> str:
    if not isinstance(value, dict):
        raise GenesisError(f"{path}: expected an object, got {type(value).__name__}")
    for key, item in value.items():
        if type(item) not in (int, float) or not 0 <= float(item) < 2**53:
            raise GenesisError(f"{path}.{key}: expected a number in [0, 2**53)")
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    if len(text) > RULE_PARAMS_SIZE_MAX_CHARS:
        raise GenesisError(f"{path}: over {RULE_PARAMS_SIZE_MAX_CHARS} chars")
    return text


def _parse_task(value: object, path: str, task_id: int) -> TaskConfig:
    obj = _expect_object(value, path, _TASK_KEYS, _TASK_OPTIONAL)
    model = _expect_object(
        obj["model"], f"{path}.model", {"kind", "n_features"}, {"n_classes", "hidden", "l2"}
    )
    kind = model["kind"]
    if kind not in FL_MODEL_KINDS:
        raise GenesisError(f"{path}.model.kind: expected one of {', '.join(FL_MODEL_KINDS)}")
    rule = obj["rule"]
    if rule not in FL_RULES:
        raise GenesisError(f"{path}.rule: expected one of {', '.join(FL_RULES)}, got {rule!r}")
    thresholds = _expect_object(
        obj.get("thresholds", {}), f"{path}.thresholds", set(),
        {"norm_max", "roni_tolerance", "agreement_min"},
    )
    privacy = _expect_object(
        obj["privacy"], f"{path}.privacy",
        {"clip_norm", "noise_multiplier_min", "epsilon_budget", "delta"}, set(),
    )
    validation = _expect_object(
        obj["validation_set"], f"{path}.validation_set", {"dataset", "seed", "size", "hash"}, set()
    )
    if validation["dataset"] not in FL_DATASETS:
        raise GenesisError(
            f"{path}.validation_set.dataset: expected one of {', '.join(FL_DATASETS)}"
        )
    vs = f"{path}.validation_set"
    pv = f"{path}.privacy"
    th = f"{path}.thresholds"
    return TaskConfig(
        task_id=task_id,
        name=_parse_str(obj["name"], f"{path}.name", _NAME_RE, "a name of [A-Za-z0-9._-]{1,64}"),
        model_kind=kind,
        n_features=_parse_int(model["n_features"], f"{path}.model.n_features", 1, 1 << 20),
        n_classes=_parse_int(model.get("n_classes", 2), f"{path}.model.n_classes", 1, 1 << 12),
        hidden=_parse_int(model.get("hidden", 0), f"{path}.model.hidden", 0, 1 << 20),
        l2_micro=_to_fixed(_parse_real(model.get("l2", 0), f"{path}.model.l2", 0, 1e6), 10**6),
        init_seed=_parse_int(obj.get("init_seed", 0), f"{path}.init_seed", 0, 1 << 63),
        rule=rule,
        rule_params_json=_parse_rule_params(obj.get("rule_params", {}), f"{path}.rule_params"),
        round_length_blocks=_parse_int(
            obj["round_length_blocks"], f"{path}.round_length_blocks", 1,
            FL_ROUND_LENGTH_MAX_BLOCKS + 1,
        ),
        scale_exp=_parse_int(obj["scale_exp"], f"{path}.scale_exp", 0, 65),
        norm_max_ppm=_to_fixed(
            _parse_real(thresholds.get("norm_max", 1e6), f"{th}.norm_max", 1e-6, 1e12), 10**6
        ),
        roni_tolerance_ppm=_to_fixed(
            _parse_real(thresholds.get("roni_tolerance", 0), f"{th}.roni_tolerance", 0, 1e6),
            10**6,
        ),
        agreement_min_ppm=_to_fixed(
            _parse_real(thresholds.get("agreement_min", 0), f"{th}.agreement_min", 0, 1), 10**6
        ),
        reward_pool=_parse_int(obj["reward_pool"], f"{path}.reward_pool", 0, 1 << 48),
        validator_share_ppm=_to_fixed(
            _parse_real(obj.get("validator_share", 0.1), f"{path}.validator_share", 0, 1), 10**6
        ),
        clip_norm_micro=_to_fixed(
            _parse_real(privacy["clip_norm"], f"{pv}.clip_norm", 1e-6, 1e12), 10**6
        ),
        noise_multiplier_min_micro=_to_fixed(
            _parse_real(privacy["noise_multiplier_min"], f"{pv}.noise_multiplier_min", 0, 1e6),
            10**6,
        ),
        epsilon_budget_micro=_to_fixed(
            _parse_real(privacy["epsilon_budget"], f"{pv}.epsilon_budget", 0, 1e9), 10**6
        ),
        dp_delta_e12=_to_fixed(_parse_real(privacy["delta"], f"{pv}.delta", 1e-12, 0.5), 10**12),
        validation_dataset=validation["dataset"],
        validation_seed=_parse_int(validation["seed"], f"{vs}.seed", 0, 1 << 63),
        validation_size=_parse_int(validation["size"], f"{vs}.size", 1, 1 << 20),
        validation_hash=_parse_key(validation["hash"], f"{vs}.hash"),
        deltas_per_round_max=_parse_int(
            obj.get("deltas_per_round_max", 64), f"{path}.deltas_per_round_max", 1,
            FL_DELTAS_PER_ROUND_MAX + 1,
        ),
        sample_count_max=_parse_int(
            obj.get("sample_count_max", 1_000_000), f"{path}.sample_count_max", 1, 1 << 32
        ),
    )


def parse_fl_section(fl: dict[str, Any]) -> tuple[TaskConfig, ...]:
    """The learning tasks of a genesis ``fl`` section (GenesisError names a bad field)."""
    # Keys other than "tasks" belong to other parts (e.g. simulation settings).
    raw_tasks = _parse_list(fl.get("tasks", []), "fl.tasks", TASKS_MAX)
    tasks = [_parse_task(t, f"fl.tasks[{i}]", i) for i, t in enumerate(raw_tasks)]
    _check_unique([t.name for t in tasks], [f"fl.tasks[{i}].name" for i in range(len(tasks))])
    return tuple(tasks)


def get_learning_tasks(genesis: Genesis) -> tuple[TaskConfig, ...]:
    return parse_fl_section(genesis.fl)


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
