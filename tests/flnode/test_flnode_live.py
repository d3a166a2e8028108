"""The learning node for real: validator processes on loopback, hospitals over the HTTP API.

Governance (a rule change takes effect at the round after the vote passes) is
covered in-process, on the same block code path the nodes run, by
tests/learning/test_checks.py::test_a_rule_change_takes_effect_at_the_round_after_it_passes;
it is not repeated here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl.privacy import compute_composed_epsilon_micro
from node.client import Client, ClientError
from node.commands import demo, testnet, train
from node.hospital import HospitalAgent, TrainSettings, load_hospital_data, write_hospital_csvs
from node.keys import load_key_file
from tests.ports import find_free_port_block

pytestmark = pytest.mark.slow

WAIT_S = 60.0


def test_the_demo_trains_a_model_as_good_as_central_training(tmp_path: Path) -> None:
    """The real demo (20 rounds), not a shortened one: it fits in about two minutes."""
    base = find_free_port_block(8)
    assert demo.main(["--out", str(tmp_path), "--base-port", str(base)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds"] == 20
    # Every validator's API gave the same model hash after every round.
    assert all(row["same_hash"] for row in summary["per_round"])
    assert summary["reference_accuracy"] - summary["final_accuracy"] <= 0.02
    rewards = summary["rewards_total"]
    honest = [rewards[f"hospital-{i}"] for i in range(3)]
    assert rewards["hospital-3"] < min(honest)
    assert rewards["free-rider"] == 0
    # The Byzantine hospital's deltas are rejected (or, rarely, let in with no weight).
    rejected = sum("hospital-3" in row["rejected"] for row in summary["per_round"])
    assert rejected >= 15
    assert all(row["rejected"].get("free-rider") == "copy" for row in summary["per_round"])
    assert (tmp_path / "demo.png").stat().st_size > 0
    assert not list((tmp_path / "net").glob("node*/node.pid"))  # the localnet was stopped


def _wait_round(client: Client, after: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while int(client.get_fl_tasks()["tasks"][0]["round"]["round"]) <= after:
        assert time.monotonic() < deadline, f"round {after} did not close"
        time.sleep(0.2)


@pytest.fixture
def budget_net(tmp_path: Path) -> Iterator[tuple[Path, list[str], float]]:
    """A localnet whose budget lets hospital-0 spend one round's epsilon, not two."""
    pre = write_hospital_csvs(tmp_path / "pre", 4, testnet.VALIDATION_SEED,
                              testnet.VALIDATION_SIZE, seed=2)[0][0]
    data = load_hospital_data(pre, "public", "breast_cancer", 0)
    m = data.x_train.shape[0]
    batch = min(TrainSettings().batch_size, m)
    entry = (1.0, batch / m, TrainSettings().epochs * (m // batch))
    one = compute_composed_epsilon_micro([entry], 1e-5) / 1e6
    two = compute_composed_epsilon_micro([entry, entry], 1e-5) / 1e6
    assert two > one * 1.2
    directory = tmp_path / "net"
    base = find_free_port_block(8)
    assert testnet.main(["-n", "4", "-o", str(directory), "--base-port", str(base),
                         "--round-blocks", "4", "--epsilon-budget", f"{one * 1.2:.6f}"]) == 0
    with demo.running_localnet(directory, base) as urls:
        yield directory, urls, one


def test_a_hospital_trains_over_the_api_until_its_privacy_budget_is_spent(
    budget_net: tuple[Path, list[str], float], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, urls, one = budget_net
    key_file = directory / "accounts" / "hospital-0.json"
    data_file = directory / "hospitals" / "hospital-0.csv"
    args = ["--node", urls[1], "--key", str(key_file), "--data", str(data_file), "--attest", "no"]
    assert train.main([*args, "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "my delta accepted" in out
    closed = re.search(r"round (\d+) closed", out)
    assert closed is not None, out
    # The trainer saw the close at its own node; the others may be a block behind.
    number = int(closed.group(1))
    for url in urls:
        _wait_round(Client(url), number)
    client = Client(urls[2])
    key = load_key_file(key_file)
    account = client.get_account(key.public_key)
    assert account["epsilon_spent"] == pytest.approx(one, rel=1e-3)
    assert 0 < account["reputation"] <= 1
    # Every validator made the same model in that round.
    hashes = {Client(url).get_fl_round(0, number)["model_hash"] for url in urls}
    assert len(hashes) == 1
    # The next delta would overspend: 400 with the chain's reason, through any validator.
    agent = HospitalAgent(client, key, load_hospital_data(data_file, "public", "breast_cancer", 0),
                          seed=5)
    with pytest.raises(ClientError) as refused:
        agent.submit_delta()
    assert (refused.value.status, refused.value.code) == (400, "privacy_budget")
    assert train.main([*args, "--rounds", "1"]) == 1
    assert "privacy_budget" in capsys.readouterr().err


def test_stale_and_copied_deltas_are_refused_with_their_reasons(
    budget_net: tuple[Path, list[str], float],
) -> None:
    directory, urls, _ = budget_net
    agents = [HospitalAgent(Client(urls[i]), load_key_file(
        directory / "accounts" / f"hospital-{i}.json"), load_hospital_data(
            directory / "hospitals" / f"hospital-{i}.csv", "public", "breast_cancer", i),
        seed=i) for i in (1, 2)]
    assert agents[0].submit_delta()["status"] == "accepted"
    deadline = time.monotonic() + WAIT_S
    while not agents[1].get_view()[1]["deltas"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    copier = HospitalAgent(agents[1].client, agents[1].key, None, attack="free_rider")
    with pytest.raises(ClientError) as copied:
        copier.submit_delta()
    assert (copied.value.status, copied.value.code) == (400, "copy")
    opened = int(agents[1].get_view()[1]["round"])
    _wait_round(agents[1].client, opened)
    late = HospitalAgent(agents[1].client, agents[1].key, agents[1].data, seed=9)
    late.get_view = lambda: _stale_view(late, opened)  # type: ignore[method-assign]
    with pytest.raises(ClientError) as stale:
        late.submit_delta()
    assert (stale.value.status, stale.value.code) == (400, "wrong_round")


def _stale_view(agent: HospitalAgent, number: int) -> tuple[object, dict[str, object], object]:
    policy, round_json, members = HospitalAgent.get_view(agent)
    return policy, {**round_json, "round": number}, members


def test_validators_that_train_and_attest_themselves_advance_the_model(tmp_path: Path) -> None:
    """Fully coupled: each node's config.toml [learning] runs its hospital's agent."""
    directory = tmp_path / "net"
    base = find_free_port_block(8)
    assert testnet.main(["-n", "4", "-o", str(directory), "--base-port", str(base),
                         "--learning-mode", "train+attest"]) == 0
    assert 'mode = "train+attest"' in (directory / "node0" / "config" / "config.toml").read_text()
    with demo.running_localnet(directory, base) as urls:
        client = Client(urls[0])
        _wait_round(client, 1)
        summary = client.get_fl_round(0, 0)
        # Every hospital sent a delta and the round closed on attestations, not the deadline.
        assert len(summary["deltas"]) == 4
        assert all(o["attestation_count"] == 4 for o in summary["deltas"])
        assert summary["closed_height"] < client.get_fl_tasks()["tasks"][0]["round_length_blocks"]
        for url in urls[1:]:  # one may be a block behind the first
            _wait_round(Client(url), 0)
        hashes = {Client(url).get_fl_round(0, 0)["model_hash"] for url in urls}
        assert len(hashes) == 1 and summary["model_version"] == 1
