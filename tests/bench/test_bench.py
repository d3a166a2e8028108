"""Each benchmark mode runs for a few seconds and emits well-formed JSON.

No timing thresholds: the checks are on the report's shape and on accounting
(every accepted tx committed or reported, none missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.bench import common, consensus, core, transport
from node.bench import node as node_bench
from node.bench import round as round_bench
from node.keys import KeyPair
from tests.ports import find_free_port_block


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
                             "--repeat", "2", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["parameters"]["block_cap_bytes"] == round_bench_node_cap()
    assert [r["repeat"] for r in report["results"]] == [0, 1]  # one fresh chain each
    result = report["results"][0]
    assert result["hospitals"] == 2 and result["params"] >= 900
    for stage in ("local_training_s", "submission_s", "delta_blocks",
                  "validation_attestation_s", "round_close_s", "commit_s"):
        assert stage in result
    assert result["delta_fits_node_block"] is True
    assert result["deltas_included"] == 2 and len(result["delta_blocks"]) == 1
    assert result["validation_attestation_s"]["samples"] == 2
    assert 0 < result["chain_time_after_last_delta_s"] < result["critical_path_after_last_delta_s"]


def round_bench_node_cap() -> int:
    from node.node import BLOCK_SIZE_CAP_BYTES

    return BLOCK_SIZE_CAP_BYTES


def test_deltas_are_packed_in_order_under_the_block_cap() -> None:
    txs = [bytes([i]) * size for i, size in enumerate([600, 500, 400, 700, 300])]
    groups = round_bench.pack_txs(txs, 1000)
    assert groups is not None
    assert [[len(tx) for tx in g] for g in groups] == [[600], [500, 400], [700, 300]]
    assert [tx for g in groups for tx in g] == txs  # every tx once, in order
    assert round_bench.pack_txs(txs, 699) is None  # the 700-byte tx fits no block
    assert round_bench.pack_txs([], 1000) == []


@pytest.mark.slow
def test_round_spreads_deltas_over_blocks_and_includes_every_one(tmp_path: Path) -> None:
    """With a cap of two deltas per block, 3 deltas take 2 blocks, all reach the round and
    the round closes with an outcome for each (asserted inside measure_round too)."""
    probe = round_bench.measure_round(1000, 1, 1, tmp_path / "probe")
    tx_bytes = probe["delta_tx_bytes"]
    cap = round_bench.BLOCK_OVERHEAD_BYTES + 2 * tx_bytes + 100
    result = round_bench.measure_round(1000, 3, 2, tmp_path / "split", cap)
    assert [b["txs"] for b in result["delta_blocks"]] == [2, 1]
    assert all(b["bytes"] <= cap for b in result["delta_blocks"])
    assert result["deltas_included"] == 3 and result["hospitals"] == 3
    # the bench's training makes useful deltas: all accepted, so the close pays for Shapley
    assert result["deltas_accepted"] == 3
    too_small = round_bench.measure_round(1000, 2, 1, tmp_path / "small", tx_bytes)
    assert "does not fit" in too_small["error"] and "delta_blocks" not in too_small


@pytest.mark.slow
@pytest.mark.parametrize("routing", consensus.ROUTINGS)
def test_consensus_accounts_for_every_tx(tmp_path: Path, routing: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = consensus.main(["--validators", "4", "--rate", "100", "--duration", "2",
                           "--routing", routing, "--closed-loop", "--closed-loop-txs", "400",
                           "--base-port", str(find_free_port_block(8)),
                           "--warmup", "0.5", "--accounts", "20", "--ceiling-seconds", "0.2",
                           "--output", str(out), "--no-plots"])
    report = json.loads((out / "consensus.json").read_text())
    assert code == 0 and report["failures"] == []
    ceiling = report["ceiling"]
    assert len(ceiling["measured_per_s"]) == 2 and min(ceiling["measured_per_s"]) > 0
    assert ceiling["verifications_per_s"] == pytest.approx(sum(ceiling["measured_per_s"]) / 2,
                                                           abs=0.1)
    run, closed = report["runs"]
    assert (run["mode"], closed["mode"]) == ("open_loop", "closed_loop")
    for acc in (run["accounting"], closed["accounting"]):
        assert acc["submitted"] > 0
        assert acc["accepted"] == (acc["committed"] + acc["stranded_behind_rejected"]
                                   + acc["missing"])
        assert acc["missing"] == 0 and acc["unanswered"] == 0
        assert acc["submitted"] == (acc["accepted"] + acc["duplicate"]
                                    + sum(acc["rejected"].values()))
    # 20 txs per account, well inside the nonce window: the closed loop gets all 400 in
    assert closed["accounting"]["committed"] == 400
    assert closed["accounting"]["presigned_unsent"] == 0
    assert run["latency_s"]["samples"] > 0 and run["window_s"] > 0
    assert len(run["cpu_cores_per_validator"]) == 4
    assert run["fraction_of_ceiling"] == pytest.approx(
        run["committed_tx_per_s"] / (ceiling["verifications_per_s"] / 4), abs=1e-3)
    # the loader's CPU is its own, and the machine's busy time holds everyone's
    assert run["cpu_cores_loaders"] > 0
    ours = sum(run["cpu_cores_per_validator"]) + run["cpu_cores_loaders"]
    assert run["cpu_cores_machine_busy"] >= ours - 0.05  # /proc ticks are 10 ms
    assert run["validator_cpu_us_per_committed_tx"] > 0
    table = capsys.readouterr().err.split("commit/s", 1)[1].splitlines()
    assert table[2].split()[:2] == ["4", "open_loop"]  # header, rule, then the run
    assert [r["repetition"] for r in report["runs"]] == [0, 0]
    assert [s["runs"] for s in report["summary"]["steps"]] == [1, 1]
    (scaling,) = report["summary"]["closed_loop_scaling"]  # N = 4 against itself
    assert (scaling["validators"], scaling["relative_to_validators"]) == (4, 4)
    assert scaling["median_tx_per_s"] == closed["committed_tx_per_s"]


def test_a_rejected_tx_strands_only_the_later_txs_of_its_own_account() -> None:
    results = [{"account_hashes": [["a0", "a1", "a2", "a3"], ["b0", "b1"], ["c0", "c1"]]}]
    statuses = {"a0": "accepted", "a1": "overloaded", "a2": "accepted", "a3": "accepted",
                "b0": "accepted", "b1": "accepted", "c0": "accepted"}  # c1 never sent
    # a2, a3 wait for a1 (stranded); b1 has no rejected predecessor (missing, not stranded)
    assert consensus.get_stranded(results, statuses, {"a2", "a3", "b1"}) == 2
    assert consensus.get_stranded(results, statuses, {"a3"}) == 1
    assert consensus.get_stranded(results, statuses, {"b1", "c0"}) == 0


def test_latency_counts_only_txs_this_step_put_in_the_pool() -> None:
    # "d" was pending from an earlier step, committed at 101 s and sent again at 102 s: a
    # duplicate, whose "latency" would be negative. Only "a" (accepted now) is a sample.
    before = consensus.Snapshot(100.0, [0.0] * 4, [{"bcfl_mempool_relay_retries_total": 5}] * 4)
    after = consensus.Snapshot(110.0, [1.0] * 4, [
        {"bcfl_mempool_relay_retries_total": 5 + i, "bcfl_mempool_duplicates_total": 2,
         'python_gc_collections_total{generation="0"}': 3}
        for i in range(4)])
    blocks = [consensus.ObservedBlock(1, 101.0, ["a", "d"])]
    step = consensus.StepConfig(1000.0, 2.0, 10.0, 30.0, 1, 250, 0)
    run = consensus.summarise(
        step, before, after, blocks, submitted={"a": 100.5, "d": 102.0},
        statuses={"a": "accepted", "d": "duplicate"}, accepted={"a"},
        committed_at={"a": 101.0, "d": 101.0},
        results=[{"account_hashes": [["a"], ["d"]], "unsent": 0, "retries": 0}])
    assert run["latency_s"]["samples"] == 1 and run["latency_s"]["max"] == 0.5
    assert run["accounting"]["duplicate"] == 1 and run["accounting"]["missing"] == 0
    # the nodes' counters move by their deltas, summed over the nodes
    assert run["relay_retries_in_window"] == 0 + 1 + 2 + 3
    assert run["duplicates_in_window"] == 4 * 2
    assert run["gc_collections_in_window"] == [4 * 3, 0, 0]
    # the last submission was at 102 s of a window ending at 110 s: the load ran out
    assert run["load_ended_s_before_window_end"] == 8.0


def test_a_closed_loop_backing_off_from_a_full_node_did_not_run_out() -> None:
    closed = consensus.StepConfig(0.0, 2.0, 10.0, 30.0, 2, 250, 1000)
    submitted = {"a": 101.0, "b": 109.47}
    # Loaders still holding pre-signed txs were waiting out refusals at the end: 0.
    holding = [{"unsent": 0}, {"unsent": 250}]
    assert consensus.get_load_ended_s(closed, (100.0, 110.0), submitted, holding) == 0.0
    # Every tx sent: the loop ran out 0.53 s early, and the figure says so.
    spent = [{"unsent": 0}, {"unsent": 0}]
    assert consensus.get_load_ended_s(closed, (100.0, 110.0), submitted, spent) == 0.53
    # An open loop's unsent txs are its schedule's, not a full node's: still counted.
    opened = consensus.StepConfig(1000.0, 2.0, 10.0, 30.0, 2, 250, 0)
    assert consensus.get_load_ended_s(opened, (100.0, 110.0), submitted, holding) == 0.53
    # Nothing sent at all: the load ended as the window began.
    assert consensus.get_load_ended_s(opened, (100.0, 110.0), {}, holding) == 10.0


@pytest.mark.parametrize("count,accounts,apis,batch", [(1000, 20, 4, 7), (96, 10, 16, 250),
                                                       (50, 3, 7, 4), (0, 5, 4, 10)])
def test_pinned_batches_keep_each_account_on_one_api_in_nonce_order(
        count: int, accounts: int, apis: int, batch: int) -> None:
    plan = consensus.plan_closed_loop_batches(count, accounts, apis, batch,
                                              consensus.ROUTING_PINNED)
    sent = [k for _, indexes in plan for k in indexes]
    assert sorted(sent) == list(range(count))  # every tx once
    api_of_account: dict[int, int] = {}
    for api, indexes in plan:
        assert api is not None and 0 < len(indexes) <= batch
        for k in indexes:  # presign interleaves accounts: tx k is account k % accounts's
            assert api_of_account.setdefault(k % accounts, api) == api
    for account in range(min(accounts, count)):  # its nonces leave in order
        mine = [k for k in sent if k % accounts == account]
        assert mine == sorted(mine)
    assert len(set(api_of_account.values())) == min(apis, accounts, count)


def test_spread_batches_are_consecutive_and_leave_the_api_to_the_sender() -> None:
    plan = consensus.plan_closed_loop_batches(10, 3, 4, 4, consensus.ROUTING_SPREAD)
    assert plan == [(None, [0, 1, 2, 3]), (None, [4, 5, 6, 7]), (None, [8, 9])]


def test_closed_loop_presigns_enough_txs_for_its_window() -> None:
    args = consensus.parse_args(["--closed-loop", "--duration", "10", "--warmup", "2"])
    assert args.closed_loop_txs == 12 * consensus.CLOSED_LOOP_TXS_PER_S
    args = consensus.parse_args(["--closed-loop", "--closed-loop-txs", "500"])
    assert args.closed_loop_txs == 500


def make_run(n: int, repetition: int, committed: float, p99: float | None = 1.0,
             mode: str = "closed_loop", rate: float = 0.0) -> dict[str, object]:
    return {"validators": n, "repetition": repetition, "mode": mode,
            "target_rate_tx_per_s": rate, "committed_tx_per_s": committed,
            "latency_s": {"p99": p99}}


def test_repeated_steps_are_summarised_by_median_range_and_paired_ratios() -> None:
    runs = [make_run(4, 0, 4000.0), make_run(16, 0, 1100.0),
            make_run(4, 1, 5000.0, p99=3.0), make_run(16, 1, 1000.0),
            make_run(4, 2, 4400.0, p99=None), make_run(16, 2, 1200.0),
            make_run(4, 0, 500.0, mode="open_loop", rate=500.0)]
    summary = consensus.compute_summary(runs)
    steps = {(s["validators"], s["mode"]): s for s in summary["steps"]}
    assert steps[(4, "closed_loop")]["committed_tx_per_s"] == {
        "median": 4400.0, "min": 4000.0, "max": 5000.0}
    assert steps[(4, "closed_loop")]["runs"] == 3
    assert steps[(4, "closed_loop")]["p99_s_median"] == 2.0  # the runs with a p99
    assert steps[(4, "open_loop")]["runs"] == 1
    # The ratio of medians (1,100 / 4,400), and each repetition's own pair.
    (base, sixteen) = summary["closed_loop_scaling"]
    assert base["validators"] == 4 and base["ratio_of_medians"] == 1.0
    assert sixteen["relative_to_validators"] == 4
    assert sixteen["ratio_of_medians"] == 0.25
    assert sixteen["paired_ratios"] == [0.275, 0.2, 0.2727]
    text = consensus.format_summary(summary)
    assert "N=16 / N=4: 25.0% of medians; paired by repetition: 27.5%, 20.0%, 27.3%" in text
    assert "N=4 / N=4" not in text


def test_a_repetition_without_the_smallest_n_gives_no_paired_ratio() -> None:
    runs = [make_run(4, 0, 4000.0), make_run(16, 0, 1000.0), make_run(16, 1, 1100.0)]
    (_, sixteen) = consensus.compute_summary(runs)["closed_loop_scaling"]
    assert sixteen["paired_ratios"] == [0.25]
    assert consensus.compute_summary([make_run(4, 0, 10.0, mode="open_loop", rate=10.0)])[
        "closed_loop_scaling"] == []


def test_a_ceiling_that_moved_under_the_runs_is_a_warning() -> None:
    def ceiling(before: float, after: float) -> dict[str, object]:
        rate = {"processes": 2, "duration_s": 2.0, "verifications": int(2 * before),
                "verifications_per_s": before, "per_core_per_s": before / 2}
        return consensus.combine_ceilings(rate, {**rate, "verifications_per_s": after})

    # The twelfth session's sweep: 31,800 before, 25,200 after, 23% of their mean.
    moved = consensus.get_ceiling_warning(ceiling(31_800.0, 25_200.0))
    assert moved is not None and "23%" in moved
    assert "31,800" in moved and "25,200" in moved
    # A few percent, as in a quiet hour, and exactly the threshold: no warning.
    assert consensus.get_ceiling_warning(ceiling(36_600.0, 34_600.0)) is None
    assert consensus.get_ceiling_warning(ceiling(10_500.0, 9_500.0)) is None


def test_plots_take_each_steps_median_run() -> None:
    runs = [make_run(4, 0, 4000.0), make_run(4, 1, 5000.0), make_run(4, 2, 4400.0),
            make_run(4, 3, 4100.0), make_run(16, 0, 1000.0)]
    chosen = consensus.select_median_runs(runs)
    # Of four, the lower middle one (4,100 and 4,400): a run that happened, not a mean.
    assert [(r["validators"], r["repetition"]) for r in chosen] == [(4, 3), (16, 0)]


def test_repeat_is_bounded() -> None:
    assert consensus.parse_args(["--repeat", "3"]).repeat == 3
    for bad in ("0", str(consensus.REPEAT_MAX + 1)):
        with pytest.raises(SystemExit):
            consensus.parse_args(["--repeat", bad])


@pytest.mark.parametrize("store", ["leveldb", "memory"])
def test_node_mode_commits_every_tx_at_every_validator(tmp_path: Path, store: str) -> None:
    out = tmp_path / "node.json"
    code = node_bench.main(["--validators", "4,7", "--txs", "300", "--accounts", "30",
                            "--batch", "40", "--store", store, "--output", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["failures"] == []
    assert [run["validators"] for run in report["runs"]] == [4, 7]
    for run in report["runs"]:
        assert run["committed_per_validator"] == [300] * run["validators"]
        assert run["top_blocks_agree"] and run["blocks"] >= 1
        assert run["cpu_us_per_tx"] > 0 and 0 < run["verify_share"] < 1
        # each validator's share of the cost, split into signature checks and the rest
        assert run["cpu_us_per_tx_per_validator"] == pytest.approx(
            run["cpu_us_per_tx"] / run["validators"], abs=0.1)
        assert run["other_us_per_tx_per_validator"] == pytest.approx(
            (run["cpu_us_per_tx"] - run["verify_us_per_tx"]) / run["validators"], abs=0.2)


def test_node_mode_refuses_more_txs_than_the_nonce_window_allows() -> None:
    with pytest.raises(SystemExit):
        node_bench.parse_args(["--txs", "1000", "--accounts", "10"])
    with pytest.raises(SystemExit):
        node_bench.parse_args(["--validators", "5"])
