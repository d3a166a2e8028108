"""``bcfl init --home DIR``: create a validator's home directory.

Writes ``DIR/config/config.toml`` (defaults, with the moniker), a fresh
Ed25519 key in ``DIR/config/node_key.json`` (mode 0600) and ``DIR/data/``,
then prints the public key and libp2p peer id. It never overwrites a key: a
lost validator key cannot be recovered, and a replaced one silently changes
who the node is. The chain's ``genesis.json`` is copied in separately: from
the consortium's coordinator (``bcfl genesis build``, which needs this node's
public key and addresses) or written by ``bcfl testnet``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from node.commands._common import EXIT_OK, CommandError, get_config_path, load_home_config, run
from node.config import Config, save_config
from node.keys import KeyPair, save_key_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl init", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="the node's home directory")
    parser.add_argument("--moniker", default=None, help="a human-readable node name")
    return parser


def initialise_home(home: Path, moniker: str | None) -> tuple[KeyPair, Config]:
    """Create ``home``'s layout and key; CommandError if it already has a key."""
    config_path = get_config_path(home)
    if config_path.exists():
        config = load_home_config(home)
        if moniker is not None and moniker != config.moniker:
            raise CommandError(f"{config_path} exists with moniker {config.moniker!r}; "
                               "edit it instead of re-running init")
    else:
        config = Config() if moniker is None else dataclasses.replace(Config(), moniker=moniker)
    key_path = config.get_key_path(home)
    if key_path.exists():
        raise CommandError(
            f"{key_path} already exists; refusing to overwrite a node key "
            "(move it away first if you really mean to replace this node's identity)"
        )
    if not config_path.exists():
        save_config(config_path, config)
    key = KeyPair.generate()
    save_key_file(key_path, key)
    config.get_data_path(home).mkdir(parents=True, exist_ok=True)
    return key, config


def _init(args: argparse.Namespace) -> int:
    home: Path = args.home
    if home.exists() and not home.is_dir():
        raise CommandError(f"{home} exists and is not a directory")
    key, config = initialise_home(home, args.moniker)
    print(f"initialised {home}")
    print(f"public key: {key.public_key.hex()}")
    print(f"peer id:    {key.peer_id}")
    print("next: send the public key and the host:port at which peers and clients reach "
          f"this node (config.toml listens on p2p port {config.p2p.listen_port}, api port "
          f"{config.api.listen_port}) to the genesis coordinator (`bcfl genesis build`); "
          f"then copy the chain's genesis.json to {home / 'config' / 'genesis.json'}")
    return EXIT_OK


def main(argv: list[str]) -> int:
    return run("bcfl init", _init, build_parser(), argv)
