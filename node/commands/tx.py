"""``bcfl tx send``: sign a transfer with an account key file and submit it; ``tx show``.

The chain id comes from the node's status and the nonce, unless given, from
the sender's account (the committed state: pass ``--nonce`` to pipeline
several transactions before the first commits). ``--wait`` polls until the
transaction is committed or ``--timeout`` passes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from node.client import DEFAULT_URL, Client, ClientError, get_tx_hash_hex, make_transfer
from node.codec import MEMO_SIZE_MAX_BYTES
from node.commands._common import EXIT_OK, CommandError, parse_public_key, run
from node.keys import KeyFileError, load_key_file

POLL_INTERVAL_S = 0.2
U64_LIMIT = 1 << 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl tx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True, metavar="{send,show}")
    send = sub.add_parser("send", help="sign and submit a transfer")
    send.add_argument("--node", default=DEFAULT_URL, help="the node's API URL")
    send.add_argument("--from", dest="key_file", type=Path, required=True,
                      help="the sender's account key file")
    send.add_argument("--to", required=True, help="the recipient's public key (64 hex chars)")
    send.add_argument("--amount", type=int, required=True)
    send.add_argument("--nonce", type=int, default=None, help="default: the account's nonce")
    send.add_argument("--memo", default="", help=f"at most {MEMO_SIZE_MAX_BYTES} UTF-8 bytes")
    send.add_argument("--wait", action="store_true", help="wait until committed")
    send.add_argument("--timeout", type=float, default=60.0, help="seconds for --wait")
    show = sub.add_parser("show", help="a transaction's status")
    show.add_argument("--node", default=DEFAULT_URL, help="the node's API URL")
    show.add_argument("hash", help="the transaction hash (hex)")
    return parser


def wait_for_commit(client: Client, tx_hash: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = client.get_tx(tx_hash)
            if status.get("status") == "committed":
                return status
        except ClientError as exc:
            if exc.code != "not_found":  # not yet seen by this node: keep polling
                raise
        if time.monotonic() >= deadline:
            raise CommandError(f"transaction {tx_hash} not committed within {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)


def _send(args: argparse.Namespace) -> int:
    recipient = parse_public_key(args.to, "--to")
    if not 0 <= args.amount < U64_LIMIT:
        raise CommandError(f"--amount {args.amount}: must be a u64")
    if args.nonce is not None and not 0 <= args.nonce < U64_LIMIT:
        raise CommandError(f"--nonce {args.nonce}: must be a u64")
    memo = args.memo.encode("utf-8")
    if len(memo) > MEMO_SIZE_MAX_BYTES:
        raise CommandError(f"--memo: {len(memo)} bytes exceeds maximum {MEMO_SIZE_MAX_BYTES}")
    try:
        key = load_key_file(args.key_file)
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None
    client = Client(args.node)
    chain_id = str(client.get_status()["chain_id"])
    nonce = args.nonce
    if nonce is None:
        nonce = int(client.get_account(key.public_key)["nonce"])
    tx = make_transfer(key, chain_id, recipient, args.amount, nonce, memo)
    result = client.submit_tx(tx)
    tx_hash = str(result["hash"])
    assert tx_hash == get_tx_hash_hex(tx), "the node hashed a different tx"
    print(f"{tx_hash} {result['status']} (nonce {nonce})")
    if args.wait:
        status = wait_for_commit(client, tx_hash, args.timeout)
        print(f"committed at height {status['height']} index {status['index']}")
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    print(json.dumps(Client(args.node).get_tx(args.hash), indent=2))
    return EXIT_OK


def _tx(args: argparse.Namespace) -> int:
    try:
        return _send(args) if args.action == "send" else _show(args)
    except ClientError as exc:
        raise CommandError(str(exc)) from None


def main(argv: list[str]) -> int:
    return run("bcfl tx", _tx, build_parser(), argv)
