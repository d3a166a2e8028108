"""``bcfl localnet up|status|down``: N validators as detached processes on loopback.

``up`` writes a testnet into ``--dir`` unless one is there (then it is reused),
starts ``python -m node start --home DIR/node<i>`` for each validator, detached,
with its output in ``DIR/node<i>/node.log`` and its pid in ``DIR/node<i>/node.pid``,
and waits (at most ``--timeout`` seconds) until every node's API reports height >= 1.
On failure it prints the tail of the failing node's log and stops what it started.
``status`` prints each node's height, view, peers and latest block hash; ``down``
sends SIGTERM, then SIGKILL after a grace period, and removes the pid files.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.client import Client, ClientError
from node.commands import testnet
from node.commands._common import EXIT_ERROR, EXIT_OK, CommandError, get_home_api_url, run

DEFAULT_DIR = Path("localnet")
DEFAULT_VALIDATORS = 4
DEFAULT_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.25
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30
NODES_MAX = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl localnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True, metavar="{up,status,down}")
    up = sub.add_parser("up", help="create (or reuse) the testnet and start every node")
    up.add_argument("--validators", "-n", type=int, default=DEFAULT_VALIDATORS)
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    up.add_argument("--base-port", type=int, default=testnet.DEFAULT_BASE_PORT)
    up.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="seconds to wait for every node to commit block 1")
    for name, text in (("status", "height, view, peers of each node"),
                       ("down", "stop every node")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    return parser


def get_homes(directory: Path) -> list[Path]:
    homes = sorted(
        (p for p in directory.glob("node*") if p.is_dir() and p.name[4:].isdigit()),
        key=lambda p: int(p.name[4:]),
    )
    return homes[:NODES_MAX]


def read_pid(home: Path) -> int | None:
    try:
        return int((home / "node.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def start_node(home: Path) -> int:
    log = (home / "node.log").open("ab")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(
        [sys.executable, "-m", "node", "start", "--home", str(home)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=env,
    )
    log.close()
    (home / "node.pid").write_text(f"{process.pid}\n")
    return process.pid


def get_log_tail(home: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = (home / "node.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _up(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not (directory / "genesis.json").exists():
        code = testnet.main(["--validators", str(args.validators), "--output", str(directory),
                             "--base-port", str(args.base_port)])
        if code != EXIT_OK:
            return code
    homes = get_homes(directory)
    if not homes:
        raise CommandError(f"{directory} holds no node<i> homes")
    started: list[Path] = []
    for home in homes:
        pid = read_pid(home)
        if pid is not None and is_alive(pid):
            print(f"{home.name}: already running (pid {pid})")
            continue
        pid = start_node(home)
        started.append(home)
        print(f"{home.name}: started (pid {pid}), log {home / 'node.log'}")
    deadline = time.monotonic() + args.timeout
    waiting = list(homes)
    while waiting:
        for home in list(waiting):
            pid = read_pid(home)
            if pid is None or not is_alive(pid):
                print(f"{home.name} exited; last lines of {home / 'node.log'}:\n"
                      f"{get_log_tail(home)}", file=sys.stderr)
                _stop(started)
                return EXIT_ERROR
            try:
                height = Client(get_home_api_url(home), timeout_s=2.0).get_status()["height"]
            except ClientError:
                continue
            if height >= 1:
                waiting.remove(home)
        if waiting and time.monotonic() > deadline:
            home = waiting[0]
            print(f"{home.name} did not commit block 1 within {args.timeout:.0f} s; last lines "
                  f"of {home / 'node.log'}:\n{get_log_tail(home)}", file=sys.stderr)
            _stop(started)
            return EXIT_ERROR
        if waiting:
            time.sleep(POLL_INTERVAL_S)
    print(f"localnet of {len(homes)} validators is up:")
    for home in homes:
        print(f"  {home.name}: api {get_home_api_url(home)}  log {home / 'node.log'}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    homes = get_homes(args.dir)
    if not homes:
        raise CommandError(f"{args.dir} holds no localnet")
    for home in homes:
        pid = read_pid(home)
        running = pid is not None and is_alive(pid)
        try:
            status = Client(get_home_api_url(home), timeout_s=2.0).get_status()
        except ClientError as exc:
            print(f"{home.name}: {'running' if running else 'stopped'}, api unreachable "
                  f"({exc.message})")
            continue
        block_hash = status.get("latest_block_hash") or "-"
        print(f"{home.name}: height {status['height']} view {status['view']} "
              f"peers {status['peers_connected']} latest {block_hash[:16]}")
    return EXIT_OK


def _stop(homes: list[Path]) -> None:
    pids = {home: read_pid(home) for home in homes}
    for pid in pids.values():
        if pid is not None and is_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for home, pid in pids.items():
        while pid is not None and is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid is not None and is_alive(pid):
            os.kill(pid, signal.SIGKILL)
            print(f"{home.name}: killed (pid {pid}) after {STOP_GRACE_S:.0f} s")
        (home / "node.pid").unlink(missing_ok=True)


def _down(args: argparse.Namespace) -> int:
    homes = get_homes(args.dir)
    if not homes:
        raise CommandError(f"{args.dir} holds no localnet")
    _stop(homes)
    print(f"localnet in {args.dir} is down")
    return EXIT_OK


def _localnet(args: argparse.Namespace) -> int:
    handlers = {"up": _up, "status": _status, "down": _down}
    return handlers[args.action](args)


def main(argv: list[str]) -> int:
    return run("bcfl localnet", _localnet, build_parser(), argv)
