"""The ``bcfl`` dispatcher: help, unknown commands, and that every listed command exists."""

from __future__ import annotations

import importlib.util

import pytest

from node import cli


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
