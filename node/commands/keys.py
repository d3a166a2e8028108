"""``bcfl keys show|new``: a node's or an account's public key; a new account key.

``show --home DIR`` prints the node key's public key, libp2p peer id and, when
the home has a genesis, its validator index. ``show --key FILE`` prints an
account key file's public key (what a member sends to the genesis
coordinator, or what ``bcfl tx send --to`` takes). ``new --output FILE`` writes
a fresh account key (an institution's or a client's) at mode 0600 and never
overwrites a file: a replaced account key loses the account.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from node.commands._common import EXIT_OK, CommandError, load_home_config, run
from node.genesis import GenesisError, load_genesis
from node.keys import KeyFileError, KeyPair, load_key_file, save_key_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl keys", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True, metavar="show|new")
    show = sub.add_parser("show", help="print a home's or a key file's public key")
    source = show.add_mutually_exclusive_group(required=True)
    source.add_argument("--home", type=Path, help="a node's home: its key, peer id, index")
    source.add_argument("--key", type=Path, help="an account key file: its public key")
    new = sub.add_parser("new", help="write a new account key file (0600)")
    new.add_argument("--output", "-o", type=Path, required=True, help="the key file to create")
    return parser


def _load_key(path: Path) -> KeyPair:
    try:
        return load_key_file(path)
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None


def _show_home(home: Path) -> int:
    config = load_home_config(home)
    key = _load_key(config.get_key_path(home))
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


def _new(output: Path) -> int:
    if output.exists() or output.is_symlink():
        raise CommandError(f"{output} already exists; refusing to overwrite a key "
                           "(an account whose key is lost cannot be recovered)")
    if output.parent.exists() and not output.parent.is_dir():
        raise CommandError(f"{output.parent} is not a directory")
    key = KeyPair.generate()
    try:
        save_key_file(output, key)
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
    print(f"wrote {output} (mode 0600)")
    print(f"public key: {key.public_key.hex()}")
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    if args.action == "new":
        return _new(args.output)
    if args.home is not None:
        return _show_home(args.home)
    if not args.key.exists():
        raise CommandError(f"key file {args.key} does not exist "
                           f"(create one with `bcfl keys new --output {args.key}`)")
    print(f"public key: {_load_key(args.key).public_key.hex()}")
    return EXIT_OK


def main(argv: list[str]) -> int:
    return run("bcfl keys", _keys, build_parser(), argv)
