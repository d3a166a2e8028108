"""``bcfl demo``: the main job, run by ``./scripts/demo``.

Starts a 4-validator local testnet (real processes on loopback, ``bcfl
localnet``) whose genesis holds a learning task on the bundled breast cancer
data, and lets four hospitals train it through the validators' APIs as real
transactions: hospital *i* talks to validator *i*, trains by DP-SGD on its own
label-skewed CSV (``DIR/hospitals/hospital-<i>.csv``), submits a ModelDelta for
the open round, then attests every delta of the round on its private
validation slice. Hospital 3 is Byzantine (``--attack``, default a boosted sign
flip); a fifth institution is a free rider that resubmits another's delta.

After every round the demo reads the round's outcome and the new model from
*each* validator's API and checks that all of them hold the same model hash,
then prints a row: the global model's accuracy on the held-out test set,
accepted and rejected deltas (with the chain's reason), rewards and epsilon
spent. It ends with the final accuracy beside a centrally trained reference
(logistic regression on all hospitals' rows pooled) and writes
``OUT/summary.json`` and ``OUT/demo.png``. The localnet is stopped at the end,
on failure and on Ctrl-C. Exit code 1 if any validator disagreed or a round
did not close in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fl.models import ModelSpec, compute_accuracy
from fl.training import TrainConfig, train_local
from node.client import Client, ClientError
from node.commands import localnet, testnet
from node.commands._common import EXIT_ERROR, EXIT_OK
from node.hospital import (
    HospitalAgent,
    HospitalData,
    get_public_standardizer,
    load_hospital_data,
    read_csv_dataset,
)
from node.keys import load_key_file
from node.learning_api import load_model_npy

VALIDATORS = 4
HOSPITALS = 4
BYZANTINE_INDEX = 3
FREE_RIDER = "free-rider"
TASK_ID = 0
DEFAULT_BASE_PORT = 26700
QUICK_ROUNDS = 3
ROUND_WAIT_S = 60.0
DELTAS_WAIT_S = 30.0
POLL_S = 0.1
REFERENCE_EPOCHS = 20
ACCURACY_TOLERANCE = 0.02


@dataclass
class RoundRow:
    round: int
    accuracy: float
    model_hash: str
    model_version: int
    same_hash: bool
    accepted: list[str]
    rejected: dict[str, str]  # institution -> reason (chain or API)
    rewards: dict[str, int]
    epsilon: dict[str, float]
    seconds: float


@dataclass
class Demo:
    directory: Path
    urls: list[str]
    agents: dict[str, HospitalAgent]
    free_rider: HospitalAgent | None
    spec: ModelSpec
    x_test: np.ndarray[Any, Any]
    y_test: np.ndarray[Any, Any]
    rows: list[RoundRow] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="where to write summary.json, demo.png and the testnet")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ROUNDS} rounds (for tests)")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help="validator i uses base+2i (p2p) and base+2i+1 (API)")
    parser.add_argument("--attack", choices=("sign_flip", "none"), default="sign_flip",
                        help="what the Byzantine hospital (hospital-3) does")
    parser.add_argument("--no-free-rider", action="store_true")
    parser.add_argument("--rule", choices=testnet.FL_RULES, default="trimmed_mean")
    parser.add_argument("--seed", type=int, default=2, help="seed of the label-skewed split")
    return parser


def find_free_base_port(start: int, count: int, tries: int = 200) -> int:
    """The first base >= start with ``count`` consecutive free loopback ports."""
    for base in range(start, start + 2 * count * tries, 2 * count):
        if not testnet.find_ports_in_use("127.0.0.1", list(range(base, base + count))):
            return base
    raise RuntimeError(f"no {count} free consecutive ports from {start}")


@contextlib.contextmanager
def running_localnet(directory: Path, base_port: int) -> Iterator[list[str]]:
    """Start the testnet in ``directory``; always stop it (failure, Ctrl-C included)."""
    try:
        code = localnet.main(["up", "--dir", str(directory), "--base-port", str(base_port),
                              "--timeout", "90"])
        if code != EXIT_OK:
            raise RuntimeError("the localnet did not start (see the node logs above)")
        yield [f"http://127.0.0.1:{base_port + 2 * i + 1}" for i in range(VALIDATORS)]
    finally:
        localnet.main(["down", "--dir", str(directory)])


def _wait(what: str, timeout_s: float, check: Any) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def _open_round(client: Client) -> dict[str, Any]:
    round_json: dict[str, Any] = client.get_fl_tasks()["tasks"][TASK_ID]["round"]
    return round_json


def run_round(demo: Demo) -> RoundRow:
    started = time.monotonic()
    first = next(iter(demo.agents.values()))
    number = int(_open_round(first.client)["round"])
    rejected: dict[str, str] = {}
    submitted = 0
    for name, agent in demo.agents.items():
        try:
            agent.submit_delta()
            submitted += 1
        except ClientError as exc:
            rejected[name] = exc.code
    _wait(f"round {number}'s deltas", DELTAS_WAIT_S,
          lambda: len(_open_round(first.client)["deltas"]) >= submitted)
    if demo.free_rider is not None:
        try:
            demo.free_rider.submit_delta()
        except ClientError as exc:
            rejected[FREE_RIDER] = exc.code
    for agent in demo.agents.values():
        with contextlib.suppress(ClientError):  # e.g. the round closed already at its deadline
            agent.attest()
    clients = [Client(url) for url in demo.urls]
    for client in clients:  # every validator has closed the round
        _wait(f"round {number} to close on {client.url}", ROUND_WAIT_S,
              lambda c=client: int(_open_round(c)["round"]) > number)
    summaries = [client.get_fl_round(TASK_ID, number) for client in clients]
    hashes = {s["model_hash"] for s in summaries}
    infos = [client.get_fl_model_info(TASK_ID) for client in clients]
    same_hash = len(hashes) == 1 and len({i["model_hash"] for i in infos}) == 1
    summary = summaries[0]
    data, _ = clients[0].get_fl_model(TASK_ID)
    params = load_model_npy(data)
    accuracy = float(compute_accuracy(demo.spec, params, demo.x_test, demo.y_test))
    rewards: dict[str, int] = {}
    for outcome in summary["deltas"]:
        rewards[outcome["name"]] = rewards.get(outcome["name"], 0) + int(outcome["reward"])
        if not outcome["accepted"]:
            rejected[outcome["name"]] = outcome["reason"]
    epsilon = {name: float(clients[0].get_account(agent.key.public_key)["epsilon_spent"] or 0)
               for name, agent in demo.agents.items()}
    return RoundRow(
        round=number, accuracy=accuracy, model_hash=str(summary["model_hash"]),
        model_version=int(summary["model_version"]), same_hash=same_hash,
        accepted=[o["name"] for o in summary["deltas"] if o["accepted"]],
        rejected=rejected, rewards=rewards, epsilon=epsilon,
        seconds=time.monotonic() - started,
    )


def compute_reference_accuracy(demo: Demo) -> float:
    """Logistic regression trained centrally on every hospital's rows pooled."""
    standardizer = get_public_standardizer("breast_cancer")
    parts = [read_csv_dataset(demo.directory / "hospitals" / f"hospital-{i}.csv")
             for i in range(HOSPITALS)]
    x = standardizer.apply(np.concatenate([p.x for p in parts]))
    y = np.concatenate([p.y for p in parts])
    config = TrainConfig(epochs=REFERENCE_EPOCHS, learning_rate=0.1, batch_size=16,
                         momentum=0.0, seed=0)
    params = train_local(demo.spec, np.zeros(demo.spec.n_features + 1), x, y, config)
    return float(compute_accuracy(demo.spec, params, demo.x_test, demo.y_test))


def _print_header() -> None:
    print(f"{'round':>5} {'acc':>6} {'model':>10} {'same':>4}  {'accepted':<12} "
          f"{'rejected':<30} {'rewards (k tokens)':<28} {'eps max':>7} {'s':>5}")


def _print_row(row: RoundRow) -> None:
    accepted = ",".join(name.replace("hospital-", "h") for name in row.accepted) or "-"
    rejected = ",".join(f"{name.replace('hospital-', 'h')}:{reason}"
                        for name, reason in sorted(row.rejected.items())) or "-"
    rewards = " ".join(f"{name.replace('hospital-', 'h')}:{amount / 1000:.0f}"
                       for name, amount in sorted(row.rewards.items()))
    print(f"{row.round:>5} {row.accuracy:6.3f} {row.model_hash[:10]:>10} "
          f"{'yes' if row.same_hash else 'NO':>4}  {accepted:<12} {rejected:<30} "
          f"{rewards:<28} {max(row.epsilon.values(), default=0.0):7.2f} {row.seconds:5.1f}")


def _setup(directory: Path, urls: list[str], args: argparse.Namespace) -> Demo:
    agents = {}
    for i in range(HOSPITALS):
        name = f"hospital-{i}"
        data: HospitalData = load_hospital_data(directory / "hospitals" / f"{name}.csv",
                                                "public", "breast_cancer", i)
        attack = args.attack if i == BYZANTINE_INDEX else "none"
        agents[name] = HospitalAgent(Client(urls[i]), load_key_file(
            directory / "accounts" / f"{name}.json"), data, attack=attack, seed=100 + i)
    free_rider = None
    if not args.no_free_rider:
        free_rider = HospitalAgent(Client(urls[0]), load_key_file(
            directory / "accounts" / f"{FREE_RIDER}.json"), None, attack="free_rider")
    test = read_csv_dataset(directory / "hospitals" / "test.csv")
    x_test = get_public_standardizer("breast_cancer").apply(test.x)
    spec = ModelSpec(kind="logistic", n_features=30, n_classes=2)
    return Demo(directory, urls, agents, free_rider, spec, x_test, np.asarray(test.y))


def _report(demo: Demo, reference: float, out: Path, elapsed_s: float,
            args: argparse.Namespace) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for row in demo.rows:
        for name, amount in row.rewards.items():
            totals[name] = totals.get(name, 0) + amount
    names = [*demo.agents, *([FREE_RIDER] if demo.free_rider else [])]
    byzantine = f"hospital-{BYZANTINE_INDEX}"
    final = demo.rows[-1].accuracy if demo.rows else 0.0
    summary = {
        "rounds": len(demo.rows),
        "rule": args.rule,
        "attack": args.attack,
        "final_accuracy": final,
        "reference_accuracy": reference,
        "within_tolerance": abs(reference - final) <= ACCURACY_TOLERANCE,
        "tolerance": ACCURACY_TOLERANCE,
        "all_validators_agreed": all(r.same_hash for r in demo.rows),
        "rewards_total": {name: totals.get(name, 0) for name in names},
        "byzantine": byzantine,
        "byzantine_reward_below_every_honest": all(
            totals.get(byzantine, 0) < totals.get(n, 0) for n in demo.agents if n != byzantine
        ),
        "free_rider_reward": totals.get(FREE_RIDER, 0) if demo.free_rider else None,
        "epsilon_spent": demo.rows[-1].epsilon if demo.rows else {},
        "elapsed_s": elapsed_s,
        "per_round": [row.__dict__ for row in demo.rows],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(demo, reference, out / "demo.png", names)
    return summary


def _plot(demo: Demo, reference: float, path: Path, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = [r.round for r in demo.rows]
    ax1.plot(rounds, [r.accuracy for r in demo.rows], marker="o", label="on-chain global model")
    ax1.axhline(reference, color="gray", linestyle="--", label="central reference")
    ax1.set_xlabel("round")
    ax1.set_ylabel("test accuracy")
    ax1.set_ylim(0.4, 1.0)
    ax1.legend(loc="lower right")
    for name in names:
        cumulative = np.cumsum([r.rewards.get(name, 0) for r in demo.rows])
        ax2.plot(rounds, cumulative, label=name)
    ax2.set_xlabel("round")
    ax2.set_ylabel("cumulative reward (tokens)")
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle("bcfl: 4 hospitals (1 Byzantine) on a 4-validator PBFT chain")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    rounds = QUICK_ROUNDS if args.quick else args.rounds
    if not 1 <= rounds <= 1000:
        print("bcfl demo: --rounds must be in 1..1000", file=sys.stderr)
        return 2
    out: Path = args.out
    directory = out / "net"
    if directory.exists():
        shutil.rmtree(directory)
    started = time.monotonic()
    base_port = find_free_base_port(args.base_port, 2 * VALIDATORS)
    institutions = [f"hospital-{i}:both" for i in range(HOSPITALS)]
    if not args.no_free_rider:
        institutions.append(f"{FREE_RIDER}:trainer")
    code = testnet.main(["--validators", str(VALIDATORS), "--output", str(directory),
                         "--base-port", str(base_port), "--chain-id", "bcfl-demo",
                         "--fl-rule", args.rule, "--data-seed", str(args.seed),
                         "--institutions", *institutions])
    if code != EXIT_OK:
        return EXIT_ERROR
    with running_localnet(directory, base_port) as urls:
        demo = _setup(directory, urls, args)
        reference = compute_reference_accuracy(demo)
        print(f"\n{HOSPITALS} hospitals (hospital-{BYZANTINE_INDEX}: {args.attack}"
              f"{', plus a free rider' if demo.free_rider else ''}), rule {args.rule}, "
              f"{rounds} rounds; each row read from all {VALIDATORS} validators' APIs")
        _print_header()
        try:
            for _ in range(rounds):
                row = run_round(demo)
                demo.rows.append(row)
                _print_row(row)
                if not row.same_hash:
                    print(f"validators DISAGREE on round {row.round}'s model", file=sys.stderr)
                    break
        except TimeoutError as exc:
            print(f"bcfl demo: {exc}", file=sys.stderr)
        summary = _report(demo, reference, out, time.monotonic() - started, args)
    _print_summary(summary, out)
    ok = summary["all_validators_agreed"] and len(demo.rows) == rounds
    return EXIT_OK if ok else EXIT_ERROR


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    final, reference = summary["final_accuracy"], summary["reference_accuracy"]
    print(f"\nfinal accuracy {final:.3f}  vs  central reference {reference:.3f} "
          f"({(final - reference) * 100:+.1f} points; "
          f"{'within' if summary['within_tolerance'] else 'OUTSIDE'} "
          f"{summary['tolerance'] * 100:.0f} points)")
    print("rewards: " + ", ".join(f"{n} {v}" for n, v in summary["rewards_total"].items()))
    print(f"Byzantine {summary['byzantine']} earned less than every honest hospital: "
          f"{'yes' if summary['byzantine_reward_below_every_honest'] else 'NO'}")
    if summary["free_rider_reward"] is not None:
        print(f"free rider earned {summary['free_rider_reward']}")
    print(f"every validator held the same model hash after every round: "
          f"{'yes' if summary['all_validators_agreed'] else 'NO'}")
    print(f"{summary['rounds']} rounds in {summary['elapsed_s']:.0f} s; wrote "
          f"{out / 'summary.json'} and {out / 'demo.png'}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("bcfl demo: interrupted; the localnet was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
