"""``bcfl testnet --validators N --output DIR``: files for a local N-validator chain.

Writes, under DIR:

- ``genesis.json``: the chain id, the N validators (keys, loopback p2p and API
  ports: validator i gets ``base_port + 2i`` for p2p and ``base_port + 2i + 1``
  for its API), the member institutions and the funded accounts' balances;
- ``node<i>/``: a home per validator (``config/config.toml`` with its ports,
  ``config/node_key.json`` at 0600, ``config/genesis.json``, ``data/``);
- ``accounts/<name>.json``: 0600 account keys: one per institution (default
  ``hospital-<i>`` per validator, role ``both``) and ``--accounts`` funded
  client accounts ``client-<k>`` for ``bcfl tx send`` and the benchmarks;
- with ``--fl-task breast_cancer`` (the default): a learning task in genesis
  ``fl.tasks`` (logistic regression on the bundled breast cancer data, the
  shared validation set's hash from ``node.learning.build_validation_set``,
  robust rule, DP policy, reward pool, round length) and ``hospitals/``: one
  label-skewed CSV per trainer institution (``hospital-<i>.csv``, for
  ``bcfl train --data``) and ``test.csv`` (held out from all of them).

Nothing is written unless every check passes: N >= 4 (n = 3f + 1, f >= 1),
the ports are free, and DIR holds no earlier testnet.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import socket
import time
from pathlib import Path

from node.commands._common import EXIT_OK, CommandError, get_config_path, run
from node.config import (
    LEARNING_MODES,
    ApiConfig,
    Config,
    ConsensusConfig,
    LearningConfig,
    P2PConfig,
    save_config,
)
from node.genesis import (
    ROLES,
    VALIDATORS_MAX,
    VALIDATORS_MIN,
    Genesis,
    GenesisError,
    Member,
    ValidatorInfo,
    save_genesis,
)
from node.hospital import write_hospital_csvs
from node.keys import KeyPair, save_key_file
from node.learning import build_validation_set

DEFAULT_CHAIN_ID = "bcfl-testnet"
DEFAULT_BASE_PORT = 26600
DEFAULT_HOST = "127.0.0.1"
DEFAULT_ACCOUNTS = 4
DEFAULT_BALANCE = 10**12
ACCOUNTS_MAX = 10_000
PORT_MAX = 65535
FL_TASKS = ("breast_cancer", "none")
FL_RULES = ("trimmed_mean", "median", "mean", "krum", "geometric_median")
VALIDATION_SEED = 7
VALIDATION_SIZE = 120
DEFAULT_ROUND_BLOCKS = 20
DEFAULT_EPSILON_BUDGET = 100.0


@dataclasses.dataclass(frozen=True)
class Institution:
    name: str
    role: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl testnet", description=__doc__.splitlines()[0])
    parser.add_argument("--validators", "-n", type=int, required=True,
                        help="number of validators (at least 4: n = 3f + 1)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output directory")
    parser.add_argument("--chain-id", default=DEFAULT_CHAIN_ID)
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help="validator i listens on base+2i (p2p) and base+2i+1 (API)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address every node listens on")
    parser.add_argument("--institutions", nargs="+", metavar="NAME[:ROLE]", default=None,
                        help=f"member institutions (role one of {', '.join(ROLES)}; default "
                        "both); default: hospital-<i> per validator")
    parser.add_argument("--accounts", type=int, default=DEFAULT_ACCOUNTS,
                        help="funded client accounts to create")
    parser.add_argument("--balance", type=int, default=DEFAULT_BALANCE,
                        help="initial balance of each institution and client account")
    parser.add_argument("--skip-port-check", action="store_true",
                        help="write the files even if a port is in use now")
    add_task_arguments(parser)
    parser.add_argument("--learning-mode", choices=LEARNING_MODES, default="off",
                        help="fully coupled learning: validator i runs hospital-i's agent "
                        "(its key copied to the home, its CSV as train_data)")
    parser.add_argument("--data-seed", type=int, default=2,
                        help="seed of the label-skewed split of the hospital data")
    return parser


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """The learning task's options, shared with ``bcfl genesis build``."""
    parser.add_argument("--fl-task", choices=FL_TASKS, default="breast_cancer",
                        help="learning task in genesis (none: a plain chain)")
    parser.add_argument("--fl-rule", choices=FL_RULES, default="trimmed_mean",
                        help="the task's robust aggregation rule (f = 1 where it has f)")
    parser.add_argument("--round-blocks", type=int, default=DEFAULT_ROUND_BLOCKS,
                        help="a round's deadline in blocks (it closes earlier once every "
                        "validator member has attested)")
    parser.add_argument("--epsilon-budget", type=float, default=DEFAULT_EPSILON_BUDGET,
                        help="each institution's differential-privacy budget for the task")


def get_task_section(args: argparse.Namespace) -> dict[str, object]:
    """Genesis's ``fl`` section from :func:`add_task_arguments`' options (checked here)."""
    if not 1 <= args.round_blocks <= 100_000:
        raise CommandError(f"--round-blocks {args.round_blocks}: must be in 1..100000")
    if not 0 < args.epsilon_budget <= 1e6:
        raise CommandError(f"--epsilon-budget {args.epsilon_budget}: must be in (0, 1e6]")
    if args.fl_task == "none":
        return {}
    return {"tasks": [make_breast_cancer_task(args.fl_rule, args.round_blocks,
                                              args.epsilon_budget)]}


def make_breast_cancer_task(
    rule: str, round_blocks: int, epsilon_budget: float
) -> dict[str, object]:
    """The genesis ``fl.tasks[]`` entry of the demo task (see docs/learning.md)."""
    _, _, digest = build_validation_set("breast_cancer", VALIDATION_SEED, VALIDATION_SIZE)
    return {
        "name": "breast-cancer",
        "model": {"kind": "logistic", "n_features": 30, "n_classes": 2},
        "rule": rule,
        "rule_params": {"f": 1} if rule in ("trimmed_mean", "krum") else {},
        "round_length_blocks": round_blocks,
        "scale_exp": 12,
        "reward_pool": 1_000_000,
        "validator_share": 0.1,
        # A little tolerance: under label skew an honest delta may cost a bit of shared
        # validation loss; a poisoned one costs far more.
        "thresholds": {"norm_max": 7.9, "roni_tolerance": 0.05, "agreement_min": 0.0},
        "privacy": {"clip_norm": 1.0, "noise_multiplier_min": 1.0,
                    "epsilon_budget": epsilon_budget, "delta": 1e-5},
        "validation_set": {"dataset": "breast_cancer", "seed": VALIDATION_SEED,
                           "size": VALIDATION_SIZE, "hash": digest.hex()},
        "deltas_per_round_max": 64,
        "sample_count_max": 1_000_000,
    }


def parse_institutions(specs: list[str] | None, validators: int) -> list[Institution]:
    if specs is None:
        return [Institution(f"hospital-{i}", "both") for i in range(validators)]
    institutions = []
    for spec in specs:
        name, _, role = spec.partition(":")
        role = role or "both"
        if role not in ROLES:
            raise CommandError(f"--institutions {spec!r}: role must be one of {', '.join(ROLES)}")
        institutions.append(Institution(name, role))
    names = [i.name for i in institutions]
    if len(set(names)) != len(names):
        raise CommandError("--institutions: names must be distinct")
    return institutions


def get_testnet_view_change_timeout_ticks(n: int) -> int:
    """A testnet's validators share one machine, so each block costs it about n times one
    validator's work: on 2 cores at n = 10 a loaded block took longer than the default
    3 s, and needless view changes (which re-check the prepared blocks they carry) made the
    chain slower still. The default grows with n from n = 4 (60 ticks: 3 s; 240 at n = 16)."""
    return ConsensusConfig().view_change_timeout_ticks * max(4, n) // 4


def find_ports_in_use(host: str, ports: list[int]) -> list[int]:
    """The ports of ``ports`` that cannot be bound on ``host`` right now."""
    in_use = []
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in ports:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise CommandError(f"cannot bind {host}:{port}: {exc.strerror}") from None
                in_use.append(port)
    return in_use


def _check_args(args: argparse.Namespace) -> None:
    n = args.validators
    if n < VALIDATORS_MIN:
        raise CommandError(
            f"--validators {n}: need at least {VALIDATORS_MIN}; PBFT needs n = 3f + 1 "
            f"validators to tolerate f faults, and f >= 1 (4, 7, 10, ... are the efficient sizes)"
        )
    if n > VALIDATORS_MAX:
        raise CommandError(f"--validators {n}: at most {VALIDATORS_MAX}")
    if not 1 <= args.base_port or args.base_port + 2 * n - 1 > PORT_MAX:
        raise CommandError(f"--base-port {args.base_port}: ports base..base+{2 * n - 1} "
                           f"must lie in 1..{PORT_MAX}")
    if not 0 <= args.accounts <= ACCOUNTS_MAX:
        raise CommandError(f"--accounts {args.accounts}: must be in 0..{ACCOUNTS_MAX}")
    if not 0 <= args.balance < 1 << 64:
        raise CommandError(f"--balance {args.balance}: must be a u64")


def _testnet(args: argparse.Namespace) -> int:
    _check_args(args)
    fl = get_task_section(args)
    n: int = args.validators
    output: Path = args.output
    institutions = parse_institutions(args.institutions, n)
    if args.learning_mode != "off" and (args.fl_task == "none" or len(institutions) < n):
        raise CommandError("--learning-mode needs a learning task and an institution per node")
    existing = [output / name for name in ("genesis.json", "node0", "accounts")
                if (output / name).exists()]
    if existing:
        raise CommandError(f"{existing[0]} already exists; choose an empty --output "
                           "(or delete the old testnet)")
    ports = [args.base_port + k for k in range(2 * n)]
    if not args.skip_port_check:
        in_use = find_ports_in_use(args.host, ports)
        if in_use:
            listed = ", ".join(str(p) for p in in_use)
            raise CommandError(f"port(s) {listed} on {args.host} already in use; pick another "
                               f"--base-port (this testnet needs {ports[0]}..{ports[-1]})")

    node_keys = [KeyPair.generate() for _ in range(n)]
    validators = tuple(
        ValidatorInfo(f"node{i}", key.public_key, args.host, args.base_port + 2 * i,
                      args.host, args.base_port + 2 * i + 1)
        for i, key in enumerate(node_keys)
    )
    accounts_dir = output / "accounts"
    member_keys = {i.name: KeyPair.generate() for i in institutions}
    client_keys = {f"client-{k}": KeyPair.generate() for k in range(args.accounts)}
    funded = [*member_keys.values(), *client_keys.values()]
    genesis = Genesis(
        chain_id=args.chain_id,
        genesis_time_ms=int(time.time() * 1000),
        validators=validators,
        members=tuple(Member(i.name, member_keys[i.name].public_key, i.role)
                      for i in institutions),
        balances=tuple(sorted((key.public_key, args.balance) for key in funded)),
        fl=fl,
    )
    try:  # validate everything (names, chain id...) before writing anything
        save_genesis(output / "genesis.json", genesis)
    except GenesisError as exc:
        raise CommandError(f"invalid testnet: {exc}") from None

    for i, key in enumerate(node_keys):
        home = output / f"node{i}"
        config = dataclasses.replace(
            Config(),
            moniker=f"node{i}",
            consensus=dataclasses.replace(
                ConsensusConfig(),
                view_change_timeout_ticks=get_testnet_view_change_timeout_ticks(len(node_keys))),
            p2p=P2PConfig(listen_host=args.host, listen_port=validators[i].p2p_port),
            api=dataclasses.replace(ApiConfig(), listen_host=args.host,
                                    listen_port=validators[i].api_port),
        )
        if args.learning_mode != "off":
            name = institutions[i].name
            config = dataclasses.replace(config, learning=LearningConfig(
                mode=args.learning_mode, train_data=f"../hospitals/{name}.csv",
                member_key_file="config/member_key.json"))
            save_key_file(config.resolve(home, "config/member_key.json"), member_keys[name])
        save_config(get_config_path(home), config)
        save_key_file(config.get_key_path(home), key)
        save_genesis(config.get_genesis_path(home), genesis)
        config.get_data_path(home).mkdir(parents=True, exist_ok=True)
    for name, key in [*member_keys.items(), *client_keys.items()]:
        save_key_file(accounts_dir / f"{name}.json", key)
    trainers = [i for i in institutions if i.role in ("trainer", "both")]
    if args.fl_task != "none" and trainers:
        paths, _ = write_hospital_csvs(output / "hospitals", len(trainers), VALIDATION_SEED,
                                       VALIDATION_SIZE, seed=args.data_seed)
        for institution, path in zip(trainers, paths, strict=True):
            path.rename(path.with_name(f"{institution.name}.csv"))

    print(f"wrote a {n}-validator testnet (f = {genesis.f}) for chain {args.chain_id!r} "
          f"to {output}")
    for i, validator in enumerate(validators):
        print(f"  node{i}: p2p {validator.p2p_host}:{validator.p2p_port}  "
              f"api http://{validator.api_host}:{validator.api_port}  "
              f"key {validator.public_key.hex()[:16]}...")
    print(f"  accounts: {len(funded)} funded with {args.balance} each in {accounts_dir}")
    if args.fl_task != "none":
        print(f"  learning task 0: breast-cancer, rule {args.fl_rule}, rounds of at most "
              f"{args.round_blocks} blocks; hospital data in {output / 'hospitals'}")
    return EXIT_OK


def main(argv: list[str]) -> int:
    return run("bcfl testnet", _testnet, build_parser(), argv)
