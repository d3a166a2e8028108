"""Simulator runs: many seeds, named scenarios, and proof that the simulator can fail."""

import re
from dataclasses import replace

import pytest

from consensus.sim import Scenario, Simulation, run_seed

# Seeds that once failed become regression tests here (seed, n).
REGRESSION_SEEDS: tuple[tuple[int, int | None], ...] = (
    (2714, None),  # view-change timer deadlock: test_a_replica_a_view_ahead_is_caught_up_with
)

CHUNK = 50


def assert_ok(result: object) -> None:
    assert result.ok, result.format_failure()  # type: ignore[attr-defined]


@pytest.mark.parametrize("start", range(0, 300, CHUNK))
def test_mixed_seeds(start: int) -> None:
    for seed in range(start, start + CHUNK):
        assert_ok(run_seed(seed))


@pytest.mark.parametrize(("n", "start"), [(7, 1000), (7, 1050), (10, 2000), (10, 2050)])
def test_larger_committees(n: int, start: int) -> None:
    for seed in range(start, start + CHUNK):
        assert_ok(run_seed(seed, n=n))


def test_regression_seeds() -> None:
    for seed, n in REGRESSION_SEEDS:
        assert_ok(run_seed(seed, n=n))


def test_same_seed_same_trace() -> None:
    a, b = run_seed(42), run_seed(42)
    assert a.trace == b.trace and a.heights == b.heights


@pytest.mark.parametrize(("n", "quorum"), [(4, 2), (7, 3)])
def test_broken_quorum_is_caught(n: int, quorum: int) -> None:
    """With a quorum too small (2f for n=4, f+1 for n=7) two quorums need not share an
    honest replica: the simulator must find a safety violation within the CI seeds."""
    failures = [s for s in range(60) if not run_seed(s, n=n, unsafe_quorum_size=quorum).ok]
    assert failures


def run(scenario: Scenario) -> object:
    result = Simulation(scenario).run()
    assert_ok(result)
    return result


def test_primary_crash_mid_round() -> None:
    result = run(Scenario(seed=1, n=4, crash_events=((31, "crash", 0),), chaos_ticks=60))
    assert min(v for i, v in result.views.items() if i != 0) >= 1  # type: ignore[attr-defined]


def test_primary_crash_and_restart_does_not_equivocate() -> None:
    result = run(
        Scenario(seed=2, n=4, crash_events=((30, "crash", 0), (80, "restart", 0)), chaos_ticks=120)
    )
    assert result.evidence_against == ()  # type: ignore[attr-defined]


def test_equivocating_primary() -> None:
    result = run(Scenario(seed=3, n=4, byzantine=((0, "equivocate"),), chaos_ticks=80))
    assert all(v >= 1 for i, v in result.views.items() if i != 0)  # type: ignore[attr-defined]
    # The conflicting pre-prepare surfaces in view-change certificates as evidence.
    assert result.evidence_against == (0,)  # type: ignore[attr-defined]


def test_double_voter_is_reported() -> None:
    result = run(Scenario(seed=4, n=4, byzantine=((2, "double_vote"),), chaos_ticks=80))
    assert result.evidence_against == (2,)  # type: ignore[attr-defined]


def test_partition_of_the_primary() -> None:
    result = run(Scenario(seed=5, n=4, partition_events=((20, 120, (0,)),), chaos_ticks=150))
    assert all(v >= 1 for v in result.views.values())  # type: ignore[attr-defined]


def test_view_change_during_view_change() -> None:
    # Primaries of views 0 and 1 both crash: the change to view 1 fails and view 2 takes over.
    result = run(
        Scenario(seed=6, n=7, crash_events=((20, "crash", 0), (20, "crash", 1)), chaos_ticks=60)
    )
    assert min(v for i, v in result.views.items() if i > 1) >= 2  # type: ignore[attr-defined]


def test_catch_up_after_missing_several_checkpoints() -> None:
    result = run(Scenario(seed=7, n=4, partition_events=((10, 150, (3,)),), chaos_ticks=150))
    assert result.fetches > 0  # type: ignore[attr-defined]
    heights = result.heights  # type: ignore[attr-defined]
    assert heights[3] >= 40 and heights[3] >= min(heights.values())


@pytest.mark.parametrize("kind", ["silent", "malformed", "replay"])
def test_other_byzantine_replicas(kind: str) -> None:
    run(Scenario(seed=8, n=4, byzantine=((1, kind),), loss_rate=0.05, chaos_ticks=100))


def test_safety_beyond_f_crashes() -> None:
    """All replicas crash and restart (more than f): liveness is not owed, safety is."""
    crashes = tuple((20 + 3 * i, "crash", i) for i in range(4)) + tuple(
        (60 + 2 * i, "restart", i) for i in range(4)
    )
    scenario = Scenario(seed=9, n=4, crash_events=crashes, chaos_ticks=100, check_liveness=False)
    assert_ok(Simulation(scenario).run())
    assert_ok(Simulation(replace(scenario, check_liveness=True, seed=10)).run())


def test_pipelining_keeps_several_blocks_in_flight() -> None:
    sim = Simulation(Scenario(seed=11, n=4, delay_max_ticks=4, propose_interval_ticks=1))
    in_flight_max = 0
    for _ in range(100):
        sim._step()
        primary = sim.nodes[0].replica
        in_flight_max = max(
            in_flight_max, primary.next_proposal_seq - 1 - primary.last_delivered_seq
        )
    assert in_flight_max > 2 and not sim.violations


def test_memory_stays_bounded_on_a_long_run() -> None:
    sim = Simulation(Scenario(seed=12, n=4, propose_interval_ticks=1, loss_rate=0.05))
    for _ in range(600):
        sim._step()
    replica = sim.nodes[1].replica
    assert replica.last_delivered_seq > 200  # many checkpoint intervals went by
    usage, bounds = replica.get_memory_usage(), replica.get_memory_bounds()
    assert all(usage[k] <= bounds[k] for k in usage) and not sim.violations
    assert replica.low_seq >= replica.last_delivered_seq - 2 * replica.config.window_size


def test_f_plus_one_suspicions_replace_the_primary() -> None:
    """A primary that makes progress but censors: f+1 backups' request timers fire (the
    node's SuspectPrimary), the other backups join them, and the chain goes on under the
    next primary. Replica 0 stays honest in the core's eyes: only its proposals' content is
    at fault, which the core cannot see."""
    sim = Simulation(Scenario(seed=13, n=4, suspicion_events=((30, (1, 2)),), chaos_ticks=60))
    for _ in range(29):
        sim._step()
    assert {node.replica.view for node in sim.nodes} == {0}
    height_before = sim._heights()[3]
    result = sim.run()
    assert_ok(result)
    assert all(view >= 1 for view in result.views.values())
    assert result.heights[3] > height_before + 2


def test_fewer_than_f_plus_one_suspicions_keep_the_view() -> None:
    """One backup's timer (a faulty replica, or a tx only it holds) cannot replace a
    primary: the others stay in view 0, and the lone replica keeps up by catch-up."""
    result = run(Scenario(seed=14, n=7, suspicion_events=((30, (1, 2)),), chaos_ticks=60))
    views = result.views  # type: ignore[attr-defined]
    assert views[1] >= 1 and views[2] >= 1
    assert all(views[i] == 0 for i in (0, 3, 4, 5, 6))
    heights = result.heights  # type: ignore[attr-defined]
    assert min(heights[1], heights[2]) >= max(heights.values()) - 2


def test_a_primary_ignores_suspicion_of_itself() -> None:
    result = run(Scenario(seed=15, n=4, suspicion_events=((30, (0,)),), chaos_ticks=60))
    assert set(result.views.values()) == {0}  # type: ignore[attr-defined]


def _payload_askers(result: object) -> set[str]:
    trace = result.trace  # type: ignore[attr-defined]
    return {match[1] for line in trace if (match := re.search(r" (r\d+) asks r", line))}


def test_a_new_primary_fetches_payloads_it_never_received() -> None:
    """Replica 1 gets none of view 0's pre-prepares; 2 and 3 prepare blocks that the crash
    of primary 0 leaves uncommitted. The VIEW-CHANGEs prove those blocks by header only,
    so the new primary 1 asks for their payloads by digest before its NEW-VIEW, and the
    chain goes on with them."""
    drops = ((0, 60, 0, 1, "PrePrepare"),)
    result = run(
        Scenario(seed=16, n=4, drop_events=drops, crash_events=((31, "crash", 0),), chaos_ticks=60)
    )
    assert min(v for i, v in result.views.items() if i != 0) >= 1  # type: ignore[attr-defined]
    assert "r1" in _payload_askers(result)
    new_view_line = next(line for line in result.trace if "r1 view 1 -> 1 (normal)" in line)
    first_ask = next(line for line in result.trace if "r1 asks" in line)
    assert result.trace.index(first_ask) < result.trace.index(new_view_line)  # type: ignore[attr-defined]


def test_a_withholding_holder_is_passed_over() -> None:
    """The first holder the new primary asks (replica 2) never answers: after the fetch
    timeout it asks the next one, and the view change completes (n = 7: a crash and a
    withholder are within f = 2)."""
    drops = ((0, 60, 0, 1, "PrePrepare"),)
    result = run(
        Scenario(
            seed=17,
            n=7,
            byzantine=((2, "withhold"),),
            drop_events=drops,
            crash_events=((31, "crash", 0),),
            chaos_ticks=60,
        )
    )
    asks = [line for line in result.trace if "r1 asks" in line]  # type: ignore[attr-defined]
    assert any("asks r2" in line for line in asks) and any("asks r2" not in line for line in asks)
    assert min(v for i, v in result.views.items() if i != 0) >= 1  # type: ignore[attr-defined]


def test_a_replica_a_view_ahead_is_caught_up_with() -> None:
    """Seed 2714: replica 2 is silent; 3's VIEW-CHANGE to view 1 is lost and a partition
    holds its retransmissions. Replica 0 sees a quorum for view 1, times out and moves to
    view 2 alone; by the time 3's arrives, 1 and 3 count 0 for view 2, not 1, so neither
    view has a quorum and, waiting for exactly one, nobody's timer ran. Now the timer runs
    once a quorum wants the view or a later one, and 1 and 3 follow 0."""
    scenario = Scenario(
        seed=2714,
        n=4,
        byzantine=((2, "silent"),),
        loss_rate=0.05,
        delay_max_ticks=2,
        chaos_ticks=208,
        partition_events=((39, 74, (2, 3)),),
        suspicion_events=((181, (2,)),),
    )
    result = run(scenario)
    assert min(result.views.values()) >= 2  # type: ignore[attr-defined]
