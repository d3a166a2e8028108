"""Golden hashes: fixed inputs -> the SHA-256 of each aggregate, in process and in fresh
subprocesses with 1 and 2 Numba threads."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "fl_golden_cases.py"
GOLDEN = {
    "mean": "d2586fc254da670e3cb951acd6e91cdd25c4d673a531eb3fee0e121f493c8563",
    "median": "509c497cf55df750fc792ddd8603094449a31e8e9332a954805a7de75b8e5f8c",
    "trimmed_mean": "6852b75ef257e3e8fbf4e07d097d1cc8cda10b4fd90a1d5683591dc0c7cc7f0a",
    "krum": "82eacdd8ff1ff8d89b2ba84bcc441456597c02cf44fa98506274f5c0e96dc2cd",
    "multi_krum": "a9f756727bf211acd8f5582c155ebf0039bf9e439e9c4e5eed8449132b54c4d2",
    "bulyan": "5b0ad10931068685a3e1f9f02c02a62d831f325497ac311e31b188cd29179eb3",
    "geometric_median": "0c4b1fcf78b05953aa97349379ad64d67393bd9c66054e9ac7e50c8ac6a1bfa9",
    "centered_clipping": "2d64651e2c6bc919f61f695cb222862d63826a823535b6b77b7cc1575d4455dc",
    "fltrust": "aa3e7adcd2b388222bf3f3deb8f9267eab116fdd0bd6f8fbe866b045d666abda",
    "nnm+median": "0b328f0edd8934aef9d79451295931a1633f1f37d3d1da95533f8b786ac48f61",
    "clip+mean": "98688bbad994a4c88bbb316d04cdf2f875265ec183e15d25e7c8ddcdb1631e56",
}


def test_golden_in_process() -> None:
    spec = importlib.util.spec_from_file_location("fl_golden_cases", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.compute_golden_digests() == GOLDEN


@pytest.mark.parametrize("threads", ["1", "2"])
def test_golden_in_fresh_process(threads: str) -> None:
    env = dict(os.environ, NUMBA_NUM_THREADS=threads, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert json.loads(out.stdout) == GOLDEN
