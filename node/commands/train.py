"""``bcfl train``: a hospital trains on its own CSV and submits through any validator's API.

Loosely coupled: the hospital runs no node. Each round it reads the task and
the open round from ``--node`` (or the API of the node whose home is
``--home``), fetches the current global model (``/v1/fl/tasks/{id}/model``,
checked against the round's base hash), trains by DP-SGD on ``--data``
(``fl.data.parse_csv``; label column ``label``), builds the training
commitment, quantises at the task's scale and submits a signed ModelDelta
(``--key``: its institution key). A member with role ``both`` then attests the
round's deltas on its private validation slice once ``--expect-deltas`` deltas
are in (or the deadline is near). It waits for the round to close, prints the
outcome and repeats ``--rounds`` times. A rejection prints the chain's reason
(``privacy_budget`` ends the run: the budget never comes back).

``--attack`` is for tests and the demo only (``sign_flip``, ``free_rider``).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.client import Client, ClientError
from node.commands._common import EXIT_OK, CommandError, get_home_api_url, run
from node.hospital import ATTACKS, HospitalAgent, TrainSettings, load_hospital_data
from node.keys import KeyFileError, load_key_file

POLL_S = 0.25
ROUND_WAIT_S = 600.0
DEADLINE_MARGIN_BLOCKS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl train", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None,
                        help="a node home whose API to use when --node is not given")
    parser.add_argument("--node", default=None, help="the validator API URL")
    parser.add_argument("--key", type=Path, required=True, help="the institution's key file")
    parser.add_argument("--data", type=Path, required=True, help="the hospital's CSV")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--standardize", choices=("public", "local"), default="public")
    parser.add_argument("--attest", choices=("auto", "yes", "no"), default="auto",
                        help="attest each round (auto: if the member is a validator member)")
    parser.add_argument("--expect-deltas", type=int, default=0,
                        help="attest once this many deltas are in (0: every trainer member)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--noise-multiplier", type=float, default=0.0,
                        help="DP noise (raised to the task's minimum)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack", choices=ATTACKS, default="none", help=argparse.SUPPRESS)
    return parser


def _get_url(args: argparse.Namespace) -> str:
    if args.node:
        return str(args.node)
    if args.home is None:
        raise CommandError("give --node URL or --home DIR")
    return get_home_api_url(args.home)


def _wait_for_round(
    agent: HospitalAgent, number: int, stop: threading.Event | None = None
) -> dict[str, Any] | None:
    deadline = time.monotonic() + ROUND_WAIT_S
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return None
        _, round_json, _ = agent.get_view()
        if int(round_json["round"]) > number:
            summary: dict[str, Any] = agent.client.get_fl_round(agent.task_id, number)
            return summary
        time.sleep(POLL_S)
    raise CommandError(f"round {number} did not close within {ROUND_WAIT_S:.0f} s")


def _should_attest(agent: HospitalAgent, mode: str, expect: int) -> bool:
    if mode == "no":
        return False
    view = agent.client.get_fl_tasks()
    me = [m for m in view["members"] if m["public_key"] == agent.key.public_key.hex()]
    if not me:
        raise CommandError("the key is not a member institution of this chain")
    if mode == "auto" and me[0]["role"] not in ("validator", "both"):
        return False
    _, round_json, _ = agent.get_view()
    trainers = sum(1 for m in view["members"] if m["role"] in ("trainer", "both"))
    height = int(view["height"])
    near_deadline = height >= int(round_json["deadline_height"]) - DEADLINE_MARGIN_BLOCKS
    return len(round_json["deltas"]) >= (expect or trainers) or near_deadline


def _train(args: argparse.Namespace) -> int:
    if not 1 <= args.rounds <= 100_000:
        raise CommandError("--rounds must be in 1..100000")
    try:
        key = load_key_file(args.key)
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None
    client = Client(_get_url(args))
    try:
        settings = TrainSettings(epochs=args.epochs, learning_rate=args.learning_rate,
                                 noise_multiplier=args.noise_multiplier)
        agent = HospitalAgent(client, key, None, task_id=args.task, settings=settings,
                              attack=args.attack, seed=args.seed)
        policy, _, _ = agent.get_view()
        agent.data = load_hospital_data(args.data, args.standardize, policy.validation_dataset,
                                        args.seed)
        for _ in range(args.rounds):
            run_round(agent, args.attest, args.expect_deltas)
    except ClientError as exc:
        raise CommandError(str(exc)) from None
    except (ValueError, OSError) as exc:  # bad CSV, unreadable file
        raise CommandError(str(exc)) from None
    return EXIT_OK


def run_round(
    agent: HospitalAgent,
    attest_mode: str,
    expect_deltas: int,
    log: Callable[[str], None] = print,
    submit: bool = True,
    stop: threading.Event | None = None,
) -> None:
    """One round: submit a delta (if ``submit``), attest when due, wait for the close.

    Raises ClientError ``privacy_budget`` (the budget never comes back); logs
    any other rejection and carries on.
    """
    _, round_json, _ = agent.get_view()
    number = int(round_json["round"])
    if submit:
        try:
            result = agent.submit_delta()
            log(f"round {number}: delta {result['hash'][:16]} {result['status']}")
        except ClientError as exc:
            log(f"round {number}: delta rejected: {exc.code}: {exc.message}")
            if exc.code == "privacy_budget":
                raise
    attested = False
    deadline = time.monotonic() + ROUND_WAIT_S
    while not attested and time.monotonic() < deadline and not (stop and stop.is_set()):
        _, current, _ = agent.get_view()
        if int(current["round"]) != number:
            break
        if _should_attest(agent, attest_mode, expect_deltas):
            agent.attest()
            attested = True
        else:
            time.sleep(POLL_S)
    summary = _wait_for_round(agent, number, stop)
    if summary is None:
        return
    mine = [o for o in summary["deltas"] if o["institution"] == agent.key.public_key.hex()]
    outcome = ("no delta" if not mine else "accepted" if mine[0]["accepted"]
               else f"rejected ({mine[0]['reason']})")
    reward = sum(int(o["reward"]) for o in mine)
    log(f"round {number} closed: model {summary['model_hash'][:16]} v{summary['model_version']}"
        f", my delta {outcome}, reward {reward}")


def main(argv: list[str]) -> int:
    return run("bcfl train", _train, build_parser(), argv)
