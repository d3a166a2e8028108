"""Helpers shared by the file-level commands: argument parsing, home directories, errors.

A command parses with :func:`parse_args`, which returns an exit code instead
of raising ``SystemExit`` (so tests and ``bcfl`` get 2 for a usage error), and
reports a failure by raising :class:`CommandError`, which :func:`run` turns
into a one-line message on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from node.config import Config, ConfigError, load_config

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
CONFIG_RELATIVE_PATH = Path("config") / "config.toml"
PUBLIC_KEY_HEX_CHARS = 64


class CommandError(Exception):
    """A failure to report in one line (no traceback); exit code 1."""


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code argparse chose (0 for --help, 2 for misuse)."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def run(prog: str, body: Callable[[argparse.Namespace], int],
        parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    args = parse_args(parser, argv)
    if isinstance(args, int):
        return args
    try:
        return body(args)
    except CommandError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_ERROR


def parse_public_key(text: str, option: str) -> bytes:
    """A 64-hex-char Ed25519 public key given on the command line (any case)."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(text) != PUBLIC_KEY_HEX_CHARS or len(key) != PUBLIC_KEY_HEX_CHARS // 2:
        raise CommandError(f"{option}: {text!r} is not a public key ({PUBLIC_KEY_HEX_CHARS} "
                           "hex chars, as `bcfl keys show` prints)")
    return key


def get_config_path(home: Path) -> Path:
    return home / CONFIG_RELATIVE_PATH


def load_home_config(home: Path) -> Config:
    """The home's config; a clear error if ``home`` is missing or not initialised."""
    if not home.is_dir():
        raise CommandError(f"home directory {home} does not exist (run `bcfl init --home {home}`)")
    path = get_config_path(home)
    if not path.exists():
        raise CommandError(f"{path} does not exist: {home} is not a bcfl home "
                           f"(run `bcfl init --home {home}`)")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def get_home_api_url(home: Path) -> str:
    """The URL of the API the home's node serves (a wildcard listen host means loopback)."""
    config = load_home_config(home)
    host = config.api.listen_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.api.listen_port}"
