"""``bcfl e2e`` on real processes: the CI suite passes, a deliberately broken build fails.

Runs in network namespaces when root with ``ip`` (CI), otherwise on loopback. Nothing here
asserts on speed; every wait inside the runner is bounded.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consensus.events import Broadcast
from consensus.messages import PHASE_PREPARE, Vote
from node.byzantine import ENV_BYZANTINE, Byzantine, read_fault_file, write_fault_file
from node.client import ClientError
from node.commands.e2e import get_broken_build_manifest, get_suite, make_hosts
from node.e2e.hosts import NamespaceHosts
from node.e2e.manifest import (
    Manifest,
    ManifestError,
    Perturbation,
    generate_manifest,
    parse_manifest,
)
from node.e2e.runner import FIRST_REWRITE_RE, Result, Timeline, run_scenario
from tests.ports import find_free_port_block

ROOT = Path(__file__).resolve().parents[2]


def run(manifest: Manifest, tmp_path: Path) -> Result:
    hosts = make_hosts("auto", manifest.validators, tmp_path)
    try:
        base_port = find_free_port_block(2 * manifest.validators)
        result = run_scenario(manifest, hosts, tmp_path, base_port)
    finally:
        hosts.close()
    if isinstance(hosts, NamespaceHosts):
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(ns in listed for ns in hosts.namespaces), "a namespace was left behind"
    return result


@pytest.mark.slow
@pytest.mark.parametrize("manifest", get_suite(), ids=lambda m: m.name)
def test_suite_scenario_passes(manifest: Manifest, tmp_path: Path) -> None:
    result = run(manifest, tmp_path)
    assert result.violations == []
    assert result.recovery_s is not None
    assert result.txs_committed > 0
    for signer, mode in manifest.byzantine.items():
        if mode in ("equivocate", "double_vote"):
            assert result.evidence_against.get(signer, 0) > 0
        if mode == "censor":  # replaced by request timers, not by the progress timer
            assert result.request_timeouts_against.get(signer, 0) >= 2  # f+1 at n = 4


@pytest.mark.slow
def test_broken_build_is_caught(tmp_path: Path) -> None:
    """A node that does not persist its votes double-proposes after a crash: reported."""
    result = run(get_broken_build_manifest(), tmp_path)
    assert not result.passed
    assert any("evidence against honest validator 0" in v for v in result.violations), (
        result.violations)


@pytest.mark.slow
def test_same_scenario_passes_with_a_correct_node(tmp_path: Path) -> None:
    """The control: the broken-build timeline on a node that persists its votes."""
    manifest = dataclasses.replace(get_broken_build_manifest(), skip_persist=())
    result = run(manifest, tmp_path)
    assert result.violations == []


def test_manifest_parsing_rejects_bad_fields() -> None:
    good = {"name": "x", "perturbation": [{"at_s": 1, "kind": "kill", "nodes": [0]}]}
    assert parse_manifest(good).perturbations[0].nodes == (0,)
    for bad, field in (
        ({"validators": 3}, "validators"),
        ({"byzantine": {"0": "nope"}}, "byzantine"),
        ({"byzantine": {"0": "flood", "1": "replay"}}, "byzantine"),
        ({"perturbation": [{"kind": "explode", "nodes": [0]}]}, "kind"),
        ({"perturbation": [{"kind": "kill", "nodes": [9]}]}, "nodes"),
        ({"consensus": {"tick_ms": 1}}, "consensus"),
    ):
        with pytest.raises(ManifestError, match=field):
            parse_manifest(bad)


def test_random_manifests_are_seeded_and_keep_f_faults() -> None:
    for seed in range(50):
        manifest = generate_manifest(seed)
        assert manifest == generate_manifest(seed)
        assert len(manifest.byzantine) <= 1
        ends = [(p.at_s, p.at_s + p.duration_s) for p in manifest.perturbations]
        pairs = zip(ends, ends[1:], strict=False)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairs)
        # A censoring validator is replaced only by request timers: short ones in its runs.
        censors = "censor" in manifest.byzantine.values()
        assert ("request_timeout_ticks" in manifest.consensus) == censors
    assert any("censor" in generate_manifest(seed).byzantine.values() for seed in range(50))


def test_fault_file_round_trip_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "fault.json"
    write_fault_file(path, {(0, 1): (0.05, 1.0)})
    fault = read_fault_file(path)
    assert fault is not None and fault.get_link(0, 1).loss_probability == 1.0
    assert fault.get_link(1, 0).loss_probability == 0.0
    path.write_text("{not json")
    assert read_fault_file(path) is None


def test_byzantine_flag_is_refused_without_the_test_env(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_BYZANTINE}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "node", "start", "--home", str(tmp_path),
                          "--byzantine", "equivocate"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert ENV_BYZANTINE in out.stderr
    helped = subprocess.run([sys.executable, "-m", "node", "start", "--help"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "byzantine" not in helped.stdout



class _SlowStartingCluster:
    """Stands in for the runner's Cluster: a restarted node answers its API only after
    a few polls, as a node loading its store on a busy machine does. Records events."""

    def __init__(self, polls_before_answer: int) -> None:
        self.stopped: set[int] = set()
        self.events: list[str] = []
        self.polls_before_answer = polls_before_answer
        self.polls = 0

    def signal(self, i: int, sig: object) -> None:
        self.events.append(f"kill {i}")

    def start(self, i: int) -> None:
        self.events.append(f"start {i}")
        self.polls = 0

    def is_alive(self, i: int) -> bool:
        return True

    def height(self, i: int) -> int:
        self.polls += 1
        if self.polls <= self.polls_before_answer:
            raise ClientError(None, "unreachable", "starting")
        self.events.append(f"answered {i}")
        return 0


class _RecordingHosts:
    def __init__(self, cluster: _SlowStartingCluster) -> None:
        self.cluster = cluster

    def set_deaf(self, i: int, deaf: bool) -> None:
        self.cluster.events.append(f"{'deaf' if deaf else 'hears'} {i}")


def test_a_restart_holds_the_timeline_until_the_node_answers() -> None:
    # Deaf for 0.05 s around a restart that takes three API polls: without the hold the
    # deafness would heal before the node was up (the broken build's CI flake).
    cluster = _SlowStartingCluster(polls_before_answer=3)
    timeline = Timeline(cluster, _RecordingHosts(cluster), time.monotonic())  # type: ignore[arg-type]
    timeline.run((Perturbation(0.0, "deafen", (0,), 0.05), Perturbation(0.0, "kill", (0,), 0.01)))
    assert cluster.events == ["deaf 0", "kill 0", "start 0", "answered 0", "hears 0"]
    assert timeline.errors == [] and any("held" in line for line in timeline.log)


def test_a_byzantine_node_logs_its_first_rewrite_once_and_the_runner_reads_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner asks for evidence only against an equivocator whose log shows it
    equivocated (an ``equivocate`` validator that is never primary never does)."""
    class Signer:
        def sign(self, body: object) -> bytes:
            return b"s" * 64

    class Network:
        def send(self, to_index: int, frame: bytes, traffic: object = None) -> bool:
            return True

    node = Byzantine("double_vote", 1, 4, Signer(), "chain", clock=lambda: 0.0)
    vote = Vote(PHASE_PREPARE, 0, 1, b"\x01" * 32, 1, b"s" * 64)
    with caplog.at_level("WARNING", logger="node.byzantine"):
        assert FIRST_REWRITE_RE.search(caplog.text) is None
        for _ in range(3):
            assert len(node.rewrite([Broadcast(vote)], Network())) == 2
    assert node.rewrites_total == 3
    assert len(FIRST_REWRITE_RE.findall(caplog.text)) == 1
