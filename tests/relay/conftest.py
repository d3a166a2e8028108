"""Makes the in-process cluster of tests/node (node_harness) importable here."""

from __future__ import annotations

import sys
from pathlib import Path

_NODE_TESTS = str(Path(__file__).resolve().parent.parent / "node")
if _NODE_TESTS not in sys.path:
    sys.path.insert(0, _NODE_TESTS)
