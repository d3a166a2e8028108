"""The package rules of the brief, checked on the source itself.

consensus/ and fl/ never import node/; nothing turns on fastmath (it breaks
bit-exact aggregation); nothing unpickles.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["consensus", "fl"])
def test_pure_packages_never_import_node(package: str) -> None:
    offenders = [str(p.relative_to(REPO_ROOT)) for p in _python_files(package)
                 if "node" in _imported_top_levels(p)]
    assert offenders == [], f"{package}/ must not import node/: {offenders}"


def test_the_checker_sees_an_import_of_node(tmp_path: Path) -> None:
    # The rule above must be able to fail.
    bad = tmp_path / "bad.py"
    bad.write_text("from node.codec import encode_tx\nimport node.store as s\n")
    assert "node" in _imported_top_levels(bad)


@pytest.mark.parametrize("package", ["node", "consensus", "fl"])
def test_no_fastmath_and_no_pickle(package: str) -> None:
    forbidden = re.compile(
        r"fastmath\s*=\s*True|allow_pickle\s*=\s*True|^\s*(?:import|from)\s+pickle\b|pickle\.loads?\(",
        re.MULTILINE,
    )
    offenders = [
        f"{p.relative_to(REPO_ROOT)}: {match.group(0)}"
        for p in _python_files(package)
        for match in forbidden.finditer(p.read_text())
    ]
    assert offenders == []
