"""``bcfl demo`` runs end to end and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.commands import demo


def test_demo_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--rounds", "3", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert set(report["results"]) == {"none", "sign_flip", "label_flip"}
    assert (tmp_path / "robustness.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "0 safety or liveness violations" in out
    assert "centralised accuracy" in out
