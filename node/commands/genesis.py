"""``bcfl genesis build|validate``: a consortium's genesis.json, assembled from public keys.

``bcfl testnet`` makes every key on one machine, which suits a localnet and not a
consortium, whose members each keep their own keys and share only public ones
(docs/node.md, "A consortium across machines"):

1. each validator's operator runs ``bcfl init --home DIR`` and sends its public key
   with the host:port its p2p and API listen on;
2. each institution runs ``bcfl keys new --output KEY.json`` and sends the public key;
3. one coordinator runs ``bcfl genesis build`` with all of them and sends the file out;
4. every operator runs ``bcfl genesis validate FILE`` and compares the printed hash with
   the others' over a channel they trust, then copies the file to
   ``HOME/config/genesis.json``.

``build`` validates the whole document before it writes (the genesis parser's errors name
the field, e.g. ``validators[2].public_key``, the third ``--validator``) and never
overwrites a file. Validators keep the order given: a validator's index is its place.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

from node.commands._common import (
    EXIT_OK,
    CommandError,
    load_home_config,
    parse_public_key,
    run,
)
from node.commands.testnet import DEFAULT_BALANCE, add_task_arguments, get_task_section
from node.genesis import (
    ROLES,
    U64_LIMIT,
    Genesis,
    GenesisError,
    Member,
    ValidatorInfo,
    get_genesis_hash,
    get_learning_tasks,
    load_genesis,
    save_genesis,
)
from node.keys import KeyFileError, load_key_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl genesis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True, metavar="build|validate")
    build = sub.add_parser("build", help="write genesis.json from the members' public keys")
    build.add_argument("--chain-id", required=True)
    build.add_argument("--output", "-o", type=Path, required=True, help="the file to create")
    build.add_argument("--validator", action="append", required=True,
                       metavar="NAME,PUBKEY,P2P_HOST:PORT,API_HOST:PORT",
                       help="a validator (repeat, in index order; at least 4)")
    build.add_argument("--member", action="append", default=[],
                       metavar="NAME,PUBKEY[,ROLE]",
                       help=f"a member institution (role one of {', '.join(ROLES)}; default "
                       "both); funded with --balance")
    build.add_argument("--fund", action="append", default=[], metavar="PUBKEY[,AMOUNT]",
                       help="another funded account, e.g. a client (default: --balance)")
    build.add_argument("--balance", type=int, default=DEFAULT_BALANCE,
                       help="initial balance of each member and --fund account")
    add_task_arguments(build)
    validate = sub.add_parser("validate", help="check a genesis file and print its hash")
    source = validate.add_mutually_exclusive_group(required=True)
    source.add_argument("file", type=Path, nargs="?", help="the genesis file")
    source.add_argument("--home", type=Path,
                        help="a node's home: its genesis, and whether its key validates")
    return parser


def _split_spec(spec: str, option: str, low: int, high: int) -> list[str]:
    parts = [part.strip() for part in spec.split(",")]
    if not low <= len(parts) <= high or not all(parts):
        raise CommandError(f"{option} {spec!r}: expected {low}-{high} comma-separated fields"
                           if low != high else
                           f"{option} {spec!r}: expected {low} comma-separated fields")
    return parts


def _parse_address(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT``; the port follows the last colon, so an IPv6 host needs no brackets."""
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit():
        raise CommandError(f"{option}: {text!r} is not HOST:PORT")
    return host, int(port)


def parse_validator(spec: str) -> ValidatorInfo:
    name, key, p2p, api = _split_spec(spec, "--validator", 4, 4)
    p2p_host, p2p_port = _parse_address(p2p, f"--validator {name}")
    api_host, api_port = _parse_address(api, f"--validator {name}")
    return ValidatorInfo(name, parse_public_key(key, f"--validator {name}"),
                         p2p_host, p2p_port, api_host, api_port)


def parse_member(spec: str) -> Member:
    name, key, *rest = _split_spec(spec, "--member", 2, 3)
    role = rest[0] if rest else "both"
    if role not in ROLES:
        raise CommandError(f"--member {spec!r}: role must be one of {', '.join(ROLES)}")
    return Member(name, parse_public_key(key, f"--member {name}"), role)


def parse_fund(spec: str, default_amount: int) -> tuple[bytes, int]:
    key, *rest = _split_spec(spec, "--fund", 1, 2)
    if rest and not rest[0].isdigit():
        raise CommandError(f"--fund {spec!r}: the amount must be a whole number")
    return parse_public_key(key, "--fund"), int(rest[0]) if rest else default_amount


def get_balances(members: list[Member], funds: list[tuple[bytes, int]],
                 balance: int) -> tuple[tuple[bytes, int], ...]:
    """Each member at ``balance``, then ``funds``; one account listed twice is an error."""
    amounts: dict[bytes, int] = {}
    for key, amount in [*((m.public_key, balance) for m in members), *funds]:
        if key in amounts:
            raise CommandError(f"account {key.hex()} is funded twice (a --member and a "
                               "--fund, or two --fund)")
        if not 0 <= amount < U64_LIMIT:
            raise CommandError(f"account {key.hex()}: balance {amount} is not a u64")
        amounts[key] = amount
    return tuple(sorted(amounts.items()))


def _build(args: argparse.Namespace) -> int:
    output: Path = args.output
    if output.exists() or output.is_symlink():
        raise CommandError(f"{output} already exists; refusing to overwrite a genesis")
    members = [parse_member(spec) for spec in args.member]
    genesis = Genesis(
        chain_id=args.chain_id,
        genesis_time_ms=int(time.time() * 1000),
        validators=tuple(parse_validator(spec) for spec in args.validator),
        members=tuple(members),
        balances=get_balances(members, [parse_fund(s, args.balance) for s in args.fund],
                              args.balance),
        fl=get_task_section(args),
    )
    try:
        save_genesis(output, genesis)
    except GenesisError as exc:
        raise CommandError(f"invalid genesis: {exc}") from None
    print(f"wrote {output}")
    _print_summary(genesis)
    print("next: send the file to every validator and member; each runs "
          "`bcfl genesis validate FILE` and compares the hash")
    return EXIT_OK


def _print_summary(genesis: Genesis) -> None:
    created = datetime.datetime.fromtimestamp(genesis.genesis_time_ms / 1000, datetime.UTC)
    print(f"chain:      {genesis.chain_id}")
    print(f"hash:       {get_genesis_hash(genesis).hex()}")
    print(f"time:       {created.isoformat(timespec='seconds')} ({genesis.genesis_time_ms} ms)")
    print(f"validators: {genesis.n} (tolerates f = {genesis.f} Byzantine)")
    for index, v in enumerate(genesis.validators):
        print(f"  {index:>3} {v.name:<16} {v.public_key.hex()}  p2p {v.p2p_host}:{v.p2p_port}"
              f"  api {v.api_host}:{v.api_port}")
    print(f"members:    {len(genesis.members)}")
    for m in genesis.members:
        print(f"      {m.name:<16} {m.public_key.hex()}  {m.role}")
    total = sum(amount for _, amount in genesis.balances)
    print(f"balances:   {len(genesis.balances)} accounts, {total} in all")
    tasks = get_learning_tasks(genesis)
    print(f"tasks:      {len(tasks)}")
    for task in tasks:
        print(f"  {task.task_id:>3} {task.name}: {task.model_kind}, rule {task.rule}, "
              f"rounds of at most {task.round_length_blocks} blocks")


def _load_and_print(path: Path) -> Genesis:
    try:
        genesis = load_genesis(path)
    except GenesisError as exc:
        raise CommandError(f"invalid genesis: {exc}") from None
    print(f"genesis:    {path} is valid")
    _print_summary(genesis)
    return genesis


def _validate_home(home: Path) -> int:
    """The home's genesis, and that the home's own key is one of its validators."""
    config = load_home_config(home)
    path = config.get_genesis_path(home)
    genesis = _load_and_print(path)
    try:
        key = load_key_file(config.get_key_path(home))
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None
    index = genesis.get_validator_index(key.public_key)
    if index is None:
        raise CommandError(f"this node's key {key.public_key.hex()} is not a validator "
                           f"in {path}: `bcfl start` would refuse it")
    print(f"this node:  validator {index} ({genesis.validators[index].name})")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    if args.home is not None:
        return _validate_home(args.home)
    _load_and_print(args.file)
    return EXIT_OK


def _genesis(args: argparse.Namespace) -> int:
    return _build(args) if args.action == "build" else _validate(args)


def main(argv: list[str]) -> int:
    return run("bcfl genesis", _genesis, build_parser(), argv)
