"""The ``bcfl`` dispatcher: help, unknown commands, and that every listed command exists."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node import cli
from node.keys import KeyPair, save_key_file

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_listed_command_has_a_module(name: str) -> None:
    module, _ = cli.COMMANDS[name]
    assert importlib.util.find_spec(f"node.commands.{module}") is not None, (
        f"`bcfl {name}` is listed but node/commands/{module}.py does not exist"
    )


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    save_key_file(path, KeyPair.from_seed(b"k" * 32))
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child writes: every write it makes fails
    try:
        done = subprocess.run([sys.executable, "-m", "node", "keys", "show", "--key", str(path)],
                              cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == cli.EXIT_BROKEN_PIPE
    assert b"Traceback" not in done.stderr and b"BrokenPipeError" not in done.stderr
