"""``bcfl reset --unsafe --home DIR``: wipe the node's data, keep its key, config and genesis.

The data directory holds the chain, the state and the consensus write-ahead
log; wiping it makes the node catch up from its peers. That is unsafe for a
validator that has voted (it forgets its own votes and could equivocate after
restarting), hence the required ``--unsafe``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from node.commands._common import EXIT_OK, EXIT_USAGE, CommandError, load_home_config, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl reset", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--unsafe", action="store_true",
                        help="confirm: the node forgets its chain, state and own votes")
    return parser


def _is_within(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def _reset(args: argparse.Namespace) -> int:
    if not args.unsafe:
        print("bcfl reset: refusing without --unsafe: this deletes the node's chain, state "
              "and its record of its own votes (it can equivocate if it rejoins too soon)",
              file=sys.stderr)
        return EXIT_USAGE
    home: Path = args.home
    config = load_home_config(home)
    data = config.get_data_path(home).resolve()
    keep = [config.get_key_path(home), config.get_genesis_path(home), home / "config"]
    for path in keep:
        if _is_within(path.resolve(), data):
            raise CommandError(f"data_dir {data} contains {path}; refusing to wipe it")
    if _is_within(home.resolve(), data):
        raise CommandError(f"data_dir {data} contains the home {home}; refusing to wipe it")
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    print(f"wiped {data}; kept the key, config and genesis")
    return EXIT_OK


def main(argv: list[str]) -> int:
    return run("bcfl reset", _reset, build_parser(), argv)
