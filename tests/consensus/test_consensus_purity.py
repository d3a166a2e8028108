"""The consensus package must stay a pure state machine: no I/O, clock or ambient randomness."""

import ast
from pathlib import Path

import consensus

FORBIDDEN_MODULES = {
    "asyncio",
    "datetime",
    "http",
    "io",
    "multiprocessing",
    "node",
    "os",
    "pathlib",
    "random",
    "secrets",
    "select",
    "selectors",
    "shutil",
    "socket",
    "ssl",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "trio",
    "urllib",
}
FORBIDDEN_CALLS = {"open", "input", "print", "eval", "exec"}


def get_module_paths() -> list[Path]:
    root = Path(consensus.__file__).parent
    paths = sorted(root.rglob("*.py"))
    assert len(paths) >= 8  # guards against scanning the wrong directory
    return paths


def test_no_forbidden_imports_or_calls() -> None:
    offenders = []
    for path in get_module_paths():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in FORBIDDEN_CALLS:
                    offenders.append(f"{path.name}: call {node.func.id}")
            for name in names:
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    offenders.append(f"{path.name}: import {name}")
    assert offenders == []


def test_scanner_catches_a_forbidden_import() -> None:
    tree = ast.parse("import time\nfrom socket import socket\n")
    found = [
        n.names[0].name if isinstance(n, ast.Import) else n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
    ]
    assert [f for f in found if f and f.split(".")[0] in FORBIDDEN_MODULES] == ["time", "socket"]
