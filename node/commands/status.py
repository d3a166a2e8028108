"""``bcfl status [--node URL | --home DIR]``: a node's status through its API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node.client import DEFAULT_URL, Client, ClientError
from node.commands._common import EXIT_OK, CommandError, get_home_api_url, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl status", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--node", help=f"the node's API URL (default {DEFAULT_URL})")
    where.add_argument("--home", type=Path, help="use the API address in this home's config")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")
    return parser


def get_node_url(args: argparse.Namespace) -> str:
    if args.node:
        return str(args.node)
    if args.home is not None:
        return get_home_api_url(args.home)
    return DEFAULT_URL


def format_status(status: dict[str, Any]) -> str:
    validators = status.get("validators", [])
    connected = sum(1 for v in validators if v.get("connected"))
    index = status.get("validator_index")
    lines = [
        f"chain:       {status['chain_id']}",
        f"moniker:     {status['moniker']}",
        f"validator:   {'no' if index is None else f'index {index}'}",
        f"height:      {status['height']}  (latest block {status['latest_block_hash']})",
        f"view:        {status['view']}  (primary {status['primary_index']})",
        f"peers:       {status['peers_connected']} connected; "
        f"{connected}/{len(validators)} validators reachable",
        f"catching up: {'yes' if status['catching_up'] else 'no'}",
        f"mempool:     {status.get('mempool_txs', 0)} txs",
    ]
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    url = get_node_url(args)
    try:
        status = Client(url, timeout_s=args.timeout).get_status()
    except ClientError as exc:
        raise CommandError(str(exc)) from None
    try:
        print(json.dumps(status, indent=2) if args.json else format_status(status))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CommandError(f"{url} answered an unexpected status document ({exc!r})") from None
    return EXIT_OK


def main(argv: list[str]) -> int:
    return run("bcfl status", _status, build_parser(), argv)
