"""``bcfl robustness --quick`` and ``bcfl bench aggregation`` write what they promise."""

from __future__ import annotations

import json
from pathlib import Path

from node.bench import aggregation as bench
from node.commands import robustness


def test_robustness_quick_writes_json_and_png_and_fedavg_collapses(tmp_path: Path) -> None:
    assert robustness.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = report["results"]
    assert set(res) == {"none", "sign_flip"} and set(res["none"]) == {"mean", "median", "krum"}
    clean = res["none"]["mean"]["accuracy"]
    assert res["sign_flip"]["mean"]["accuracy"] < clean - 0.3
    assert res["sign_flip"]["median"]["accuracy"] > clean - 0.05


def test_robustness_bad_arguments_exit_2(tmp_path: Path) -> None:
    assert robustness.main(["--byzantine", "20", "--out", str(tmp_path)]) == 2
    assert robustness.main(["--rules", "nope", "--out", str(tmp_path)]) == 2
    assert robustness.main(["--clients", "1000", "--byzantine", "1", "--out", str(tmp_path)]) == 2
    assert bench.main(["--n", "abc", "--out", str(tmp_path / "x.json")]) == 2
    assert bench.main(["--d", "1e9", "--out", str(tmp_path / "x.json")]) == 2


def test_bench_aggregation_small_run(tmp_path: Path) -> None:
    out = tmp_path / "agg.json"
    assert (
        bench.main(["--n", "7", "--d", "1000", "--repeats", "1", "--no-flower", "--out", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["flower"] == "unavailable"
    case = report["cases"][0]
    assert (case["n"], case["d"], case["f"]) == (7, 1000, 1)
    assert set(case["rules"]) == set(bench.BENCH_RULES)
    assert all(len(e["sha256"]) == 64 and e["flower_ms"] is None for e in case["rules"].values())
