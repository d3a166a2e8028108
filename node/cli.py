"""The ``bcfl`` command line: a table of subcommands, each in its own module.

Each subcommand lives in ``node/commands/<name>.py`` and exposes
``main(argv: list[str]) -> int``; it parses its own arguments. Modules are
imported only when their command runs, so ``bcfl --help`` stays fast and one
broken optional dependency cannot take the whole CLI down.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE (128 + 13)

# name -> (module under node.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the main job: a local testnet training a model on medical data"),
    "init": ("init", "create a validator home directory (config.toml, key, data/)"),
    "testnet": ("testnet", "write genesis and a home per validator for a local testnet"),
    "start": ("start", "run a validator node from its home directory"),
    "localnet": ("localnet", "up|status|down: run N validators on loopback"),
    "status": ("status", "show a node's status through its API"),
    "keys": ("keys", "show|new: a home's or a key file's public key; a new account key"),
    "genesis": ("genesis", "build|validate: a consortium's genesis.json from public keys"),
    "tx": ("tx", "send: sign and submit a transaction"),
    "reset": ("reset", "reset --unsafe: wipe a node's data, keep its key"),

    "train": ("train", "a hospital trains on its CSV and submits deltas through a validator"),
    "sim": ("sim", "run the deterministic PBFT simulator for one or many seeds"),
    "robustness": ("robustness", "evaluate aggregation rules against attacks"),
    "bench": ("bench", "benchmarks: consensus, node, core, transport, ledger, aggregation, round"),
    "e2e": ("e2e", "fault-injection scenarios on real processes"),

}

def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: bcfl <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `bcfl <command> --help` for a command's options."]
    return "\n".join(lines)

def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"bcfl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = f"node.commands.{COMMANDS[name][0]}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"bcfl: command {name!r} is not available in this build", file=sys.stderr)
        return 2
    try:
        result: int = module.main(rest)
        sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at exit
    except BrokenPipeError:
        # The reader went away (`bcfl ... | head`): not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return result

if __name__ == "__main__":
    sys.exit(main())
