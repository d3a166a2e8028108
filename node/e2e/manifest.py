"""Scenario manifests (TOML) and a seeded random manifest generator.

A manifest names the validators, which of them are Byzantine (``bcfl start --byzantine``)
or deliberately broken (``BCFL_TEST_SKIP_PERSIST``), the transfer load, the run length, and
a timeline of perturbations, each applied at ``at_s`` and undone ``duration_s`` later::

    name = "kill-primary"
    validators = 4
    duration_s = 15
    load_tx_per_s = 20
    byzantine = { "3" = "equivocate" }
    [[perturbation]]
    at_s = 3
    kind = "kill"
    nodes = [0]
    duration_s = 2
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.byzantine import MODE_CENSOR, MODES

KIND_KILL = "kill"          # SIGKILL, restart after duration_s
KIND_PAUSE = "pause"        # SIGSTOP, SIGCONT after duration_s
KIND_WIPE = "wipe"          # SIGKILL, delete data/, restart after duration_s (full catch-up)
KIND_ISOLATE = "isolate"    # cut nodes[0] off from every other validator
KIND_SPLIT = "split"        # nodes on one side, the rest on the other
KIND_SLOW = "slow"          # rate-limit nodes' links (tc tbf) or delay them (fault layer)
KIND_LOSSY = "lossy"        # lose a fraction of frames on nodes' links (fault layer)
KIND_DEAFEN = "deafen"      # one-way: peers' frames to nodes are lost, theirs still go out
KINDS = (KIND_KILL, KIND_PAUSE, KIND_WIPE, KIND_ISOLATE, KIND_SPLIT, KIND_SLOW, KIND_LOSSY,
         KIND_DEAFEN)
CONSENSUS_KEYS = ("view_change_timeout_ticks", "window", "checkpoint_interval",
                  "request_timeout_ticks")
# A censoring primary is replaced only by the request timer (30 s by default): scenarios
# with one run it at 3 s, twice the e2e view-change timeout.
CENSOR_REQUEST_TIMEOUT_TICKS = 60
PERTURBATIONS_MAX = 64
VALIDATORS_MAX = 16
DURATION_MAX_S = 3600.0


class ManifestError(Exception):
    """The manifest is malformed (the field is named)."""


@dataclass(frozen=True)
class Perturbation:
    at_s: float
    kind: str
    nodes: tuple[int, ...]
    duration_s: float
    loss: float = 0.2
    delay_s: float = 0.05
    rate_kbit: int = 256

    def describe(self) -> str:
        return f"{self.kind} {list(self.nodes)} at {self.at_s:.1f}s for {self.duration_s:.1f}s"


@dataclass(frozen=True)
class Manifest:
    name: str
    validators: int = 4
    duration_s: float = 15.0
    load_tx_per_s: float = 20.0
    recovery_max_s: float = 30.0
    byzantine: dict[int, str] = field(default_factory=dict)
    skip_persist: tuple[int, ...] = ()
    perturbations: tuple[Perturbation, ...] = ()
    consensus: dict[str, int] = field(default_factory=dict)  # overrides of the e2e timers

    def get_honest(self) -> list[int]:
        return [i for i in range(self.validators) if i not in self.byzantine]

    def get_last_heal_s(self) -> float:
        return max((p.at_s + p.duration_s for p in self.perturbations), default=0.0)


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ManifestError(f"{key}: expected a number in [{low}, {high}], got {value!r}")
    return float(value)


def _nodes(data: dict[str, Any], n: int, where: str) -> tuple[int, ...]:
    nodes = data.get("nodes", [])
    if not isinstance(nodes, list) or not nodes or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in nodes
    ):
        raise ManifestError(f"{where}.nodes: expected a non-empty list of indices < {n}")
    return tuple(nodes)


def parse_manifest(data: dict[str, Any]) -> Manifest:
    name = data.get("name", "scenario")
    if not isinstance(name, str) or not name:
        raise ManifestError("name: expected a non-empty string")
    n = int(_number(data, "validators", 4, 4, VALIDATORS_MAX))
    byzantine: dict[int, str] = {}
    for key, mode in dict(data.get("byzantine", {})).items():
        if not str(key).isdigit() or not 0 <= int(key) < n or mode not in MODES:
            raise ManifestError(f"byzantine.{key}: expected an index < {n} = one of {MODES}")
        byzantine[int(key)] = mode
    if len(byzantine) > (n - 1) // 3:
        raise ManifestError(f"byzantine: at most f = {(n - 1) // 3} of {n} validators")
    raw = data.get("perturbation", [])
    if not isinstance(raw, list) or len(raw) > PERTURBATIONS_MAX:
        raise ManifestError(f"perturbation: expected a list of at most {PERTURBATIONS_MAX}")
    duration_s = _number(data, "duration_s", 15, 1, DURATION_MAX_S)
    perturbations = []
    for k, p in enumerate(raw):
        where = f"perturbation[{k}]"
        if not isinstance(p, dict) or p.get("kind") not in KINDS:
            raise ManifestError(f"{where}.kind: expected one of {', '.join(KINDS)}")
        perturbations.append(Perturbation(
            at_s=_number(p, "at_s", 0, 0, duration_s),
            kind=p["kind"],
            nodes=_nodes(p, n, where),
            duration_s=_number(p, "duration_s", 2, 0, DURATION_MAX_S),
            loss=_number(p, "loss", 0.2, 0, 1),
            delay_s=_number(p, "delay_s", 0.05, 0, 10),
            rate_kbit=int(_number(p, "rate_kbit", 256, 8, 10**7)),
        ))
    skip = data.get("skip_persist", [])
    if not isinstance(skip, list) or not all(isinstance(i, int) and 0 <= i < n for i in skip):
        raise ManifestError(f"skip_persist: expected a list of indices < {n}")
    consensus = dict(data.get("consensus", {}))
    for key, value in consensus.items():
        if key not in CONSENSUS_KEYS or not isinstance(value, int) or value < 1:
            raise ManifestError(f"consensus.{key}: expected one of {CONSENSUS_KEYS} = int >= 1")
    return Manifest(
        name=name, validators=n, duration_s=duration_s, consensus=consensus,
        load_tx_per_s=_number(data, "load_tx_per_s", 20, 0, 10_000),
        recovery_max_s=_number(data, "recovery_max_s", 30, 1, DURATION_MAX_S),
        byzantine=byzantine, skip_persist=tuple(skip),
        perturbations=tuple(sorted(perturbations, key=lambda p: p.at_s)),
    )


def load_manifest(path: Path) -> Manifest:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: {exc}") from None
    return parse_manifest(data)


def generate_manifest(seed: int, duration_s: float = 20.0) -> Manifest:
    """A random scenario: 4 validators, at most one Byzantine, 1-4 perturbations on honest
    nodes, never more than f honest nodes down or cut off at a time (so it must recover)."""
    rng = random.Random(seed)
    n = 4
    byzantine: dict[int, str] = {}
    if rng.random() < 0.5:
        byzantine[rng.randrange(n)] = rng.choice(MODES)
    honest = [i for i in range(n) if i not in byzantine]
    perturbations = []
    t = rng.uniform(2.0, 4.0)
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(KINDS)
        length = rng.uniform(1.0, 4.0)
        if t + length > duration_s - 3:
            break
        if kind == KIND_SPLIT and not byzantine:
            nodes: tuple[int, ...] = tuple(sorted(rng.sample(range(n), 2)))
        else:  # one honest node: with a Byzantine one, f faults are already used
            nodes = (rng.choice(honest),)
            kind = KIND_ISOLATE if kind == KIND_SPLIT else kind
        perturbations.append(Perturbation(
            round(t, 2), kind, nodes, round(length, 2), loss=round(rng.uniform(0.05, 0.3), 2),
            delay_s=round(rng.uniform(0.01, 0.1), 3)))
        t += length + rng.uniform(0.5, 2.0)  # one fault at a time
    consensus = ({"request_timeout_ticks": CENSOR_REQUEST_TIMEOUT_TICKS}
                 if MODE_CENSOR in byzantine.values() else {})
    return Manifest(name=f"random-{seed}", validators=n, duration_s=duration_s,
                    load_tx_per_s=20.0, byzantine=byzantine, consensus=consensus,
                    perturbations=tuple(perturbations))
