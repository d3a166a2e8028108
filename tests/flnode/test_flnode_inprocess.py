"""The learning node parts that need no processes: API routes, admission reasons, testnet files."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import node.learning as learning
from node.api import SETTINGS_KEY, create_app, get_openapi_document
from node.commands import start, testnet
from node.config import Config, load_config
from node.genesis import load_genesis
from node.learning_api import get_learning_account, get_learning_routes, load_model_npy
from node.ledger import State
from node.mempool import SOURCE_LOCAL, SOURCE_PEER, Mempool
from tests.api.fakes import FakeNodeService
from tests.learning.helpers import (
    HOSPITALS,
    Chain,
    get_private_data,
    make_delta_tx,
    make_genesis,
    train_delta,
)

Client = TestClient[web.Request, web.Application]


class StateService(FakeNodeService):
    """The API's fake node plus the committed State the learning routes read."""

    def __init__(self, state: State) -> None:
        super().__init__("learn-test")
        self.state = state

    async def get_state(self) -> State:
        return self.state


@pytest.fixture(scope="module")
def chain_after_one_round() -> Chain:
    chain = Chain(make_genesis())
    shards = get_private_data()
    txs = []
    for i, key in enumerate(HOSPITALS):
        delta, commitment = train_delta(chain, shards[i], seed=i)
        txs.append(make_delta_tx(chain, key, delta, commitment))
    chain.step(txs)
    while chain.current_round().round == 0:  # the deadline closes it
        chain.step()
    return chain


def _get(service: StateService, paths: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    async def main() -> list[tuple[int, dict[str, str], bytes]]:
        app = create_app(service, Config(), extra_routes=get_learning_routes())
        out = []
        async with TestClient(TestServer(app)) as client:
            for path in paths:
                response = await client.get(path)
                out.append((response.status, dict(response.headers), await response.read()))
        return out

    return asyncio.run(main())


def test_learning_routes_serve_the_state(chain_after_one_round: Chain) -> None:
    state = chain_after_one_round.state
    service = StateService(state)
    (tasks_status, _, tasks_body), (round_status, _, round_body), (open_status, _, open_body), \
        (model_status, headers, model_body), (info_status, _, info_body) = _get(service, [
            "/v1/fl/tasks", "/v1/fl/tasks/0/rounds/0", "/v1/fl/tasks/0/rounds/1",
            "/v1/fl/tasks/0/model", "/v1/fl/tasks/0/model/info"])
    assert (tasks_status, round_status, open_status, model_status, info_status) == (200,) * 5
    tasks = json.loads(tasks_body)
    assert tasks["tasks"][0]["name"] == "bc-logistic"
    assert tasks["tasks"][0]["round"]["round"] == 1
    assert len(tasks["members"]) == 8
    closed = json.loads(round_body)
    summary = learning.get_round_summary(state, 0, 0)
    assert summary is not None
    assert closed["status"] == "closed"
    assert closed["model_hash"] == summary.model_hash.hex()
    assert len(closed["deltas"]) == 4
    assert sorted(closed["accepted"] + closed["rejected"]) == sorted(
        o.tx_hash.hex() for o in summary.outcomes)
    assert sum(r["amount"] for r in closed["rewards"]) == summary.minted
    assert json.loads(open_body)["status"] == "open"
    params = load_model_npy(model_body)
    expected = learning.get_model_params(state, 0)
    assert expected is not None and np.array_equal(params, expected)
    info = json.loads(info_body)
    assert headers["X-Bcfl-Model-Hash"] == info["model_hash"] == learning.compute_model_hash(
        params).hex()
    assert int(headers["X-Bcfl-Model-Version"]) == info["version"] == 1
    assert {e["tx_hash"] for e in info["lineage"]} == set(closed["accepted"])


def test_learning_routes_refuse_bad_ids(chain_after_one_round: Chain) -> None:
    results = _get(StateService(chain_after_one_round.state), [
        "/v1/fl/tasks/7", "/v1/fl/tasks/7/model", "/v1/fl/tasks/x/model/info",
        "/v1/fl/tasks/0/rounds/99", "/v1/fl/tasks/0/rounds/-1"])
    codes = [(status, json.loads(body)["error"]["code"]) for status, _, body in results]
    assert codes == [(404, "not_found"), (404, "not_found"), (400, "bad_task_id"),
                     (404, "not_found"), (400, "bad_round")]


def test_a_node_without_state_answers_404_not_500() -> None:
    (status, _, body), = _get(FakeNodeService("x"), ["/v1/fl/tasks"])  # type: ignore[arg-type]
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_openapi_lists_the_learning_routes_and_nothing_else() -> None:
    app = create_app(FakeNodeService("x"), Config(), extra_routes=get_learning_routes())
    document = get_openapi_document(app[SETTINGS_KEY].routes)
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    routed = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        routed.add((route.method.lower(), info.get("path") or info.get("formatter")))
    assert documented == routed
    assert ("get", "/v1/fl/tasks/{task_id}/rounds/{round}") in documented
    assert ("get", "/v1/fl/tasks/{task_id}/model") in documented


def test_the_model_reader_refuses_pickles_and_wrong_dtypes() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        load_model_npy(buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="float64"):
        load_model_npy(buffer.getvalue())


def test_accounts_carry_reputation_and_epsilon_for_members_only(
    chain_after_one_round: Chain,
) -> None:
    state = chain_after_one_round.state
    reputation, epsilon = get_learning_account(state, HOSPITALS[0].public_key)
    assert reputation is not None and 0 < reputation <= 1
    assert epsilon is not None and epsilon > 0
    assert get_learning_account(state, bytes(32)) == (None, None)


def _mempool(chain: Chain) -> Mempool:
    return Mempool(chain.genesis.chain_id)


def test_local_learning_txs_are_refused_with_the_chain_reason(
    chain_after_one_round: Chain,
) -> None:
    chain = chain_after_one_round
    shards = get_private_data()
    delta, commitment = train_delta(chain, shards[0], seed=50)
    stale = make_delta_tx(chain, HOSPITALS[0], delta, commitment, round_number=0)
    result = _mempool(chain).admit(stale, chain.state, 0, SOURCE_LOCAL)
    assert result.reason == "wrong_round"
    # A relayed copy is kept: this node's state may lag the sender's.
    assert _mempool(chain).admit(stale, chain.state, 0, SOURCE_PEER).reason is None
    fine = make_delta_tx(chain, HOSPITALS[1], delta, commitment)
    assert _mempool(chain).admit(fine, chain.state, 0, SOURCE_LOCAL).reason is None


def test_testnet_writes_a_learning_task_and_hospital_data(tmp_path: Path) -> None:
    out = tmp_path / "net"
    assert testnet.main(["-n", "4", "-o", str(out), "--base-port", "29800",
                         "--skip-port-check", "--round-blocks", "7", "--fl-rule", "median"]) == 0
    genesis = load_genesis(out / "genesis.json")
    task = genesis.fl["tasks"][0]
    assert task["rule"] == "median" and task["round_length_blocks"] == 7
    learning.verify_learning_setup(genesis)  # the validation hash is what nodes rebuild
    for i in range(4):
        header = (out / "hospitals" / f"hospital-{i}.csv").read_text().splitlines()[0]
        assert header.split(",")[-1] == "label" and len(header.split(",")) == 31
    assert (out / "hospitals" / "test.csv").exists()


@pytest.mark.parametrize("validators", [10, 16])
def test_testnet_of_a_big_committee_gives_every_hospital_disjoint_rows(
    tmp_path: Path, validators: int
) -> None:
    # Regression: with 20 rows required per hospital, no label-skewed draw of the ~330-row
    # pool could serve 10 hospitals and `bcfl testnet -n 10` failed with a traceback.
    out = tmp_path / "net"
    assert testnet.main(["-n", str(validators), "-o", str(out), "--skip-port-check"]) == 0
    rows: list[str] = []
    for i in range(validators):
        lines = (out / "hospitals" / f"hospital-{i}.csv").read_text().splitlines()[1:]
        assert len(lines) >= 5
        rows += lines
    assert len(rows) == len(set(rows))
    # All n validators share this machine: the view-change timeout grows with n.
    config = load_config(out / "node0" / "config" / "config.toml")
    assert config.consensus.view_change_timeout_ticks == 60 * validators // 4


def test_start_refuses_a_genesis_whose_validation_set_it_cannot_rebuild(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "net"
    assert testnet.main(["-n", "4", "-o", str(out), "--base-port", "29900",
                         "--skip-port-check"]) == 0
    path = out / "node0" / "config" / "genesis.json"
    document: dict[str, Any] = json.loads(path.read_text())
    document["fl"]["tasks"][0]["validation_set"]["hash"] = "00" * 32
    path.write_text(json.dumps(document))
    assert start.main(["--home", str(out / "node0")]) == 1
    assert "learning setup does not match genesis" in capsys.readouterr().err
