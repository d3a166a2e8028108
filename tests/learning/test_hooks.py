"""The ledger's block and genesis hooks (used by node.learning) refuse duplicate names."""

from __future__ import annotations

import pytest

import node.learning  # noqa: F401  (registers the hooks)
from node.ledger import BLOCK_HOOKS, GENESIS_HOOKS, register_block_hook, register_genesis_hook


def test_learning_hooks_are_registered_once() -> None:
    assert [name for name, _ in BLOCK_HOOKS].count("learning") == 1
    assert [name for name, _ in GENESIS_HOOKS].count("learning") == 1
    with pytest.raises(ValueError, match="already registered"):
        register_block_hook("learning", lambda writer, context, parent: None)
    with pytest.raises(ValueError, match="already registered"):
        register_genesis_hook("learning", lambda genesis: {})
