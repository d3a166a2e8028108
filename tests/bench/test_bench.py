"""Each benchmark mode runs for a few seconds and emits well-formed JSON.

No timing thresholds: the checks are on the report's shape and on accounting
(every accepted tx committed or reported, none missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.bench import common, consensus, core, transport
from node.bench import round as round_bench
from node.keys import KeyPair


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    summary = common.get_summary(values)
    assert (summary["p50"], summary["p95"], summary["p99"], summary["max"]) == (50, 95, 99, 100)
    assert summary["samples"] == 100
    assert common.get_summary([])["p50"] is None


def test_padded_transfer_is_exactly_the_benchmark_size() -> None:
    tx = consensus.make_padded_transfer(KeyPair.generate(), "c", b"\x02" * 32, 7)
    assert len(tx) == consensus.TX_SIZE_BYTES


def test_core_report_has_machine_and_samples(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    assert core.main(["--sizes", "4", "--ticks", "60", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "core"
    assert report["machine"]["cores"] >= 1
    (result,) = report["results"]
    assert result["n"] == 4 and result["blocks"] > 0 and result["seconds"] > 0


@pytest.mark.slow
def test_transport_report(tmp_path: Path) -> None:
    out = tmp_path / "transport.json"
    assert transport.main(["--duration", "0.3", "--sizes", "200", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "transport" and report["machine"]["cores"] >= 1
    (case,) = report["results"]
    assert case["one_way"]["frames"] > 0 and case["round_trip"]["round_trips"] > 0


@pytest.mark.slow
def test_round_breakdown(tmp_path: Path) -> None:
    out = tmp_path / "round.json"
    assert round_bench.main(["--d", "1000", "--hospitals", "2", "--validators", "2",
                             "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["hospitals"] == 2 and result["params"] >= 900
    for stage in ("local_training_s", "submission_s", "delta_block_s",
                  "validation_attestation_s", "round_close_s", "commit_s"):
        assert stage in result
    assert result["delta_fits_node_block"] is True
    assert result["chain_time_after_last_delta_s"] > 0


@pytest.mark.slow
def test_consensus_accounts_for_every_tx(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = consensus.main(["--validators", "4", "--rate", "100", "--duration", "2",
                           "--warmup", "0.5", "--accounts", "20", "--ceiling-seconds", "0.2",
                           "--output", str(out), "--no-plots"])
    report = json.loads((out / "consensus.json").read_text())
    assert code == 0 and report["failures"] == []
    assert report["ceiling"]["verifications_per_s"] > 0
    (run,) = report["runs"]
    acc = run["accounting"]
    assert acc["submitted"] > 0
    assert acc["accepted"] == acc["committed"] + acc["stranded_behind_rejected"] + acc["missing"]
    assert acc["missing"] == 0 and acc["unanswered"] == 0
    assert acc["submitted"] == acc["accepted"] + acc["duplicate"] + sum(acc["rejected"].values())
    assert run["latency_s"]["samples"] > 0 and run["window_s"] > 0
    assert len(run["cpu_cores_per_validator"]) == 4
    assert run["validator_cpu_us_per_committed_tx"] > 0
    table = capsys.readouterr().err.split("commit/s", 1)[1].splitlines()
    assert table[2].split()[:2] == ["4", "open_loop"]  # header, rule, then the run


def test_a_rejected_tx_strands_only_the_later_txs_of_its_own_account() -> None:
    results = [{"account_hashes": [["a0", "a1", "a2", "a3"], ["b0", "b1"], ["c0", "c1"]]}]
    statuses = {"a0": "accepted", "a1": "overloaded", "a2": "accepted", "a3": "accepted",
                "b0": "accepted", "b1": "accepted", "c0": "accepted"}  # c1 never sent
    # a2, a3 wait for a1 (stranded); b1 has no rejected predecessor (missing, not stranded)
    assert consensus.get_stranded(results, statuses, {"a2", "a3", "b1"}) == 2
    assert consensus.get_stranded(results, statuses, {"a3"}) == 1
    assert consensus.get_stranded(results, statuses, {"b1", "c0"}) == 0
