"""``bcfl keys show --home DIR``: the node's public key, peer id and validator index."""

from __future__ import annotations

import argparse
from pathlib import Path

from node.commands._common import EXIT_OK, CommandError, load_home_config, run
from node.genesis import GenesisError, load_genesis
from node.keys import KeyFileError, load_key_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl keys", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True, metavar="show")
    show = sub.add_parser("show", help="print the home's public key, peer id, validator index")
    show.add_argument("--home", type=Path, required=True)
    return parser


def _show(args: argparse.Namespace) -> int:
    home: Path = args.home
    config = load_home_config(home)
    try:
        key = load_key_file(config.get_key_path(home))
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None
    print(f"public key: {key.public_key.hex()}")
    print(f"peer id:    {key.peer_id}")
    genesis_path = config.get_genesis_path(home)
    if not genesis_path.exists():
        print(f"validator:  unknown ({genesis_path} does not exist yet)")
        return EXIT_OK
    try:
        genesis = load_genesis(genesis_path)
    except GenesisError as exc:
        raise CommandError(f"bad genesis: {exc}") from None
    index = genesis.get_validator_index(key.public_key)
    if index is None:
        print(f"validator:  no (not in the validator set of chain {genesis.chain_id!r})")
    else:
        print(f"validator:  index {index} of {genesis.n} on chain {genesis.chain_id!r} "
              f"(name {genesis.validators[index].name})")
    return EXIT_OK


def main(argv: list[str]) -> int:
    return run("bcfl keys", _show, build_parser(), argv)
