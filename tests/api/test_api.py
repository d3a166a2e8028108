"""The HTTP API against the in-memory fake: every route, every error, and no 5xx from bad input."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import re
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError, web
from aiohttp.test_utils import TestClient

from node import runtime
from node.api import SETTINGS_KEY, Route, create_app, get_openapi_document, render_metrics
from node.client import make_transfer
from node.codec import decode_block, get_tx_hash
from node.config import ApiConfig, Config
from node.keys import KeyPair
from node.service import BlockEvent, DroppedNotice, EventSubscription
from tests.api.conftest import run_with_client
from tests.api.fakes import FakeNodeService

Client = TestClient[web.Request, web.Application]
CHAIN = "test-chain"
ALICE = KeyPair.from_seed(b"a" * 32)
BOB = KeyPair.from_seed(b"b" * 32)


def make_service(**kwargs: Any) -> FakeNodeService:
    return FakeNodeService(CHAIN, balances={ALICE.public_key: 1000}, **kwargs)


def transfer(nonce: int = 0, amount: int = 10, chain_id: str = CHAIN) -> bytes:
    return make_transfer(ALICE, chain_id, BOB.public_key, amount, nonce, b"hi")


async def post_tx(client: Client, tx: bytes) -> tuple[int, dict[str, Any]]:
    response = await client.post("/v1/txs", json={"tx": tx.hex()})
    return response.status, await response.json()


def assert_error(status: int, body: dict[str, Any], expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_submit_then_follow_the_tx_to_its_block() -> None:
    service = make_service()
    tx0, tx1 = transfer(0), transfer(1)

    async def body(client: Client) -> None:
        status, result = await post_tx(client, tx0)
        assert (status, result) == (202, {"hash": get_tx_hash(tx0).hex(), "status": "accepted"})
        response = await client.post("/v1/txs", data=tx1,
                                     headers={"Content-Type": "application/octet-stream"})
        assert response.status == 202
        status, result = await post_tx(client, tx0)
        assert (status, result["status"]) == (200, "duplicate")

        response = await client.get(f"/v1/txs/{get_tx_hash(tx1).hex()}")
        assert await response.json() == {"hash": get_tx_hash(tx1).hex(), "status": "pending",
                                         "height": None, "index": None}
        info = service.commit_block()
        response = await client.get(f"/v1/txs/{get_tx_hash(tx1).hex().upper()}")
        assert await response.json() == {"hash": get_tx_hash(tx1).hex(), "status": "committed",
                                         "height": 1, "index": 1}

        for path in ("/v1/blocks/1", "/v1/blocks/latest"):
            response = await client.get(path)
            assert response.status == 200
            block = await response.json()
            assert block["height"] == 1 and block["hash"] == info.block_hash.hex()
            assert block["tx_hashes"] == [get_tx_hash(tx0).hex(), get_tx_hash(tx1).hex()]
            assert block["tx_count"] == 2 and block["chain_id"] == CHAIN
            decoded = decode_block(bytes.fromhex(block["encoded"]), chain_id=CHAIN)
            assert decoded.txs == (tx0, tx1)
            certificate = block["certificate"]
            assert certificate["block_hash"] == info.block_hash.hex()
            assert [s["validator_index"] for s in certificate["signatures"]] == [0, 1, 2]
        response = await client.get("/v1/blocks/1?encoded=false")
        assert (await response.json())["encoded"] is None

        response = await client.get(f"/v1/accounts/{BOB.public_key.hex()}")
        assert await response.json() == {"id": BOB.public_key.hex(), "balance": 20, "nonce": 0,
                                         "reputation": None, "epsilon_spent": None}
        response = await client.get(f"/v1/accounts/{ALICE.public_key.hex()}")
        account = await response.json()
        assert (account["balance"], account["nonce"]) == (980, 2)

        response = await client.get("/v1/status")
        status_json = await response.json()
        assert status_json["height"] == 1 and status_json["chain_id"] == CHAIN
        assert status_json["latest_block_hash"] == info.block_hash.hex()
        assert len(status_json["validators"]) == 4 and status_json["catching_up"] is False

    run_with_client(service, body)


def test_submit_rejects_bad_input_with_400_and_the_reason() -> None:
    service = make_service()
    good = transfer(0)

    async def body(client: Client) -> None:
        cases: list[tuple[bytes, str, str]] = [
            (b"{not json", "application/json", "bad_json"),
            (b"[1, 2]", "application/json", "bad_request"),
            (b'{"tx": 5}', "application/json", "bad_request"),
            (b'{"tx": "00", "extra": 1}', "application/json", "bad_request"),
            (b'{"tx": "zz"}', "application/json", "bad_hex"),
            (b"\xff\xfe", "application/json", "bad_json"),
            (json.dumps({"tx": good[:-1].hex()}).encode(), "application/json", "decode_error"),
            (good + b"\x00", "application/octet-stream", "decode_error"),
            (b"", "application/octet-stream", "decode_error"),
        ]
        for data, content_type, code in cases:
            response = await client.post("/v1/txs", data=data,
                                         headers={"Content-Type": content_type})
            assert_error(response.status, await response.json(), 400, code)
        response = await client.post("/v1/txs", json={"tx": good[:-1].hex()})
        assert "truncated" in (await response.json())["error"]["message"]

        status, result = await post_tx(client, transfer(0, chain_id="other-chain"))
        assert_error(status, result, 400, "bad_signature")
        assert result["hash"] == get_tx_hash(transfer(0, chain_id="other-chain")).hex()
        status, result = await post_tx(client, transfer(5))
        assert_error(status, result, 400, "bad_nonce")
        status, result = await post_tx(client, transfer(0, amount=10**6))
        assert_error(status, result, 400, "insufficient_balance")
        assert service.pending == {}

    run_with_client(service, body)


def test_overload_and_full_mempool_are_503() -> None:
    service = make_service(mempool_txs_max=1)

    async def body(client: Client) -> None:
        assert (await post_tx(client, transfer(0)))[0] == 202
        status, result = await post_tx(client, transfer(1))
        assert_error(status, result, 503, "mempool_full")
        service.overloaded = True
        for method, path in [("GET", "/v1/status"), ("GET", f"/v1/txs/{'ab' * 32}"),
                             ("GET", "/v1/blocks/latest"), ("GET", "/metrics"),
                             ("GET", f"/v1/accounts/{'ab' * 32}")]:
            response = await client.request(method, path)
            assert_error(response.status, await response.json(), 503, "overloaded")
        status, result = await post_tx(client, transfer(1))
        assert_error(status, result, 503, "overloaded")

    run_with_client(service, body)


def test_batch_submit_answers_each_tx_in_order_in_few_node_calls() -> None:
    service = FakeNodeService(CHAIN, balances={ALICE.public_key: 10**9}, mempool_txs_max=1000)
    good = [transfer(n, 1) for n in range(450)]  # spans three chunks of the node's intake
    garbage = b"\x02\x01garbage"
    sent = [good[0].hex(), "zz", garbage.hex(), *[tx.hex() for tx in good[1:]], good[0].hex()]

    async def body(client: Client) -> None:
        response = await client.post("/v1/txs/batch", json={"txs": sent})
        assert response.status == 200
        results = (await response.json())["results"]
        assert len(results) == len(sent)
        assert results[0] == {"hash": get_tx_hash(good[0]).hex(), "status": "accepted"}
        assert (results[1]["status"], results[1]["code"]) == ("rejected", "bad_hex")
        assert results[2]["hash"] == get_tx_hash(garbage).hex()
        assert (results[2]["status"], results[2]["code"]) == ("rejected", "decode_error")
        assert [r["hash"] for r in results[3:-1]] == [get_tx_hash(t).hex() for t in good[1:]]
        assert all(r["status"] == "accepted" for r in results[3:-1])
        assert results[-1]["status"] == "duplicate"
        assert service.submit_calls == 3  # 451 edge-valid txs in chunks, not one call per tx
        assert len(service.pending) == 450
        service.overloaded = True
        response = await client.post("/v1/txs/batch", json={"txs": [transfer(450).hex(), "zz"]})
        results = (await response.json())["results"]
        assert [(r["status"], r["code"]) for r in results] == [
            ("rejected", "overloaded"), ("rejected", "bad_hex")]
        assert len(service.pending) == 450

    run_with_client(service, body)


def test_slow_service_is_503_not_a_hang() -> None:
    service = make_service()
    service.hang = True

    async def body(client: Client) -> None:
        response = await client.get("/v1/status")
        assert_error(response.status, await response.json(), 503, "timeout")

    run_with_client(service, body, service_timeout_s=0.05)


def test_oversize_body_is_413() -> None:
    config = Config(api=ApiConfig(request_size_max_bytes=1024))

    async def body(client: Client) -> None:
        response = await client.post("/v1/txs", data=b"0" * 5000,
                                     headers={"Content-Type": "application/octet-stream"})
        assert_error(response.status, await response.json(), 413, "request_too_large")

        async def chunks() -> Any:  # no Content-Length: aiohttp's own limit must catch it
            for _ in range(10):
                yield b"0" * 512

        response = await client.post("/v1/txs", data=chunks(),
                                     headers={"Content-Type": "application/octet-stream"})
        assert_error(response.status, await response.json(), 413, "request_too_large")

    run_with_client(make_service(), body, config=config)


def test_lookups_404_and_400() -> None:
    async def body(client: Client) -> None:
        for path in ("/v1/blocks/latest", "/v1/blocks/7", f"/v1/txs/{'ab' * 32}", "/nope",
                     "/v1/txs"):
            response = await client.get(path)
            expected = 405 if path == "/v1/txs" else 404
            code = "method_not_allowed" if expected == 405 else "not_found"
            assert_error(response.status, await response.json(), expected, code)
        for path, code in [("/v1/blocks/abc", "bad_height"), ("/v1/blocks/-1", "bad_height"),
                           (f"/v1/blocks/{2**64}", "bad_height"),
                           ("/v1/blocks/%EF%BC%91", "bad_height"),
                           ("/v1/blocks/1?encoded=maybe", "bad_request"),
                           ("/v1/txs/abcd", "bad_hash"), (f"/v1/txs/{'zz' * 32}", "bad_hash"),
                           ("/v1/accounts/12", "bad_account_id")]:
            response = await client.get(path)
            assert_error(response.status, await response.json(), 400, code)

    run_with_client(make_service(), body)


def test_unexpected_errors_are_500_generic_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    service = make_service()
    service.fail = True

    async def body(client: Client) -> None:
        response = await client.get("/v1/status")
        result = await response.json()
        assert_error(response.status, result, 500, "internal_error")
        assert "secret" not in json.dumps(result)

    with caplog.at_level(logging.ERROR, logger="bcfl.api"):
        run_with_client(service, body)
    assert any("secret internal detail" in record.exc_text for record in caplog.records
               if record.exc_text)


def test_garbage_never_gets_a_5xx() -> None:
    rng = random.Random(7)
    good = transfer(0)
    bodies = [rng.randbytes(rng.randrange(0, 300)) for _ in range(40)]
    for _ in range(40):  # flip a byte of a valid tx
        mangled = bytearray(good)
        mangled[rng.randrange(len(mangled))] ^= 1 << rng.randrange(8)
        bodies.append(bytes(mangled))
    service = make_service()

    async def body(client: Client) -> None:
        for data in bodies:
            for content_type, payload in [("application/octet-stream", data),
                                          ("application/json",
                                           json.dumps({"tx": data.hex()}).encode()),
                                          ("application/json", data)]:
                response = await client.post("/v1/txs", data=payload,
                                             headers={"Content-Type": content_type})
                assert response.status < 500 or response.status == 503, await response.text()
        response = await client.get("/v1/status")
        assert response.status == 200  # still serving

    run_with_client(service, body)


def test_events_are_streamed_over_websocket() -> None:
    service = make_service()

    async def body(client: Client) -> None:
        async with client.ws_connect("/v1/events") as ws:
            assert len(service.hub) == 1
            await post_tx(client, transfer(0))
            await post_tx(client, transfer(1))
            info = service.commit_block()
            received = [await ws.receive_json(timeout=5) for _ in range(3)]
        assert received == [
            {"type": "block", "height": 1, "hash": info.block_hash.hex(), "tx_count": 2},
            {"type": "tx", "hash": get_tx_hash(transfer(0)).hex(), "height": 1, "index": 0},
            {"type": "tx", "hash": get_tx_hash(transfer(1)).hex(), "height": 1, "index": 1},
        ]
        for _ in range(100):  # the handler unsubscribes once the client has gone
            if len(service.hub) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(service.hub) == 0

    run_with_client(service, body)


def test_slow_websocket_client_gets_a_drop_notice() -> None:
    service = make_service()

    async def body(client: Client) -> None:
        async with client.ws_connect("/v1/events") as ws:
            # Published without yielding: the handler cannot drain in between,
            # exactly as if the client's socket were stalled.
            for height in range(1, 11):
                service.hub.publish(BlockEvent(height, bytes(32), 0))
            received = [await ws.receive_json(timeout=5) for _ in range(5)]
            service.hub.publish(BlockEvent(11, bytes(32), 0))
            received.append(await ws.receive_json(timeout=5))
        assert [e.get("height") for e in received[:4]] == [1, 2, 3, 4]
        assert received[4] == {"type": "dropped", "count": 6}
        assert received[5]["height"] == 11
        response = await client.get("/metrics")
        assert "bcfl_api_events_dropped_total 6" in await response.text()

    run_with_client(service, body, event_queue_size_max=4)


def test_too_many_subscribers_is_503() -> None:
    service = make_service()

    async def body(client: Client) -> None:
        count = service.hub.subscribers_max
        sockets = [await client.ws_connect("/v1/events") for _ in range(count)]
        with pytest.raises(WSServerHandshakeError) as excinfo:
            await client.ws_connect("/v1/events")
        assert excinfo.value.status == 503
        for ws in sockets:
            await ws.close()

    run_with_client(service, body)


def test_subscription_puts_the_drop_notice_where_the_gap_is() -> None:
    async def body() -> None:
        subscription = EventSubscription(queue_size_max=2)
        events = [BlockEvent(h, bytes(32), 0) for h in range(1, 6)]
        assert [subscription.publish(e) for e in events[:4]] == [True, True, False, False]
        assert await subscription.get() == events[0]
        assert subscription.publish(events[4])
        assert await subscription.get() == events[1]
        assert await subscription.get() == DroppedNotice(2)
        assert await subscription.get() == events[4]
        assert subscription.dropped_total == 2 and len(subscription) == 0
        subscription.close()
        with pytest.raises(EOFError):
            await subscription.get()

    asyncio.run(body())


_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_prometheus(text: str) -> dict[str, float]:
    """A strict reader of the text format: every line a comment or a well-formed sample."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter", "histogram"), line
            typed.add(name)
        elif line.startswith("# HELP "):
            continue
        else:
            match = _SAMPLE_RE.match(line)
            assert match is not None, f"malformed sample line {line!r}"
            base = re.sub(r"_(bucket|sum|count)$", "", match.group(1))
            assert match.group(1) in typed or base in typed, f"untyped metric in {line!r}"
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics_are_prometheus_text() -> None:
    service = make_service()

    async def body(client: Client) -> str:
        await post_tx(client, transfer(0))
        service.commit_block()
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()

    text = run_with_client(service, body)
    samples = parse_prometheus(text)
    assert samples["bcfl_height"] == 1 and samples["bcfl_txs_committed_total"] == 1
    assert samples["bcfl_peers_connected"] == 3
    assert samples['bcfl_consensus_latency_seconds_bucket{le="0.5"}'] == 5
    assert samples['bcfl_consensus_latency_seconds_bucket{le="+Inf"}'] == 7
    assert samples["bcfl_consensus_latency_seconds_sum"] == 3.25
    assert samples['bcfl_messages_dropped_total{reason="oversize"}'] == 2
    assert samples['bcfl_messages_dropped_total{reason="we\\"ird\\n"}'] == 1
    assert samples["bcfl_fl_round"] == 3
    assert not any("bad name" in key for key in samples)

    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["bcfl_consensus_latency_seconds"].type == "histogram"
    assert families["bcfl_view_changes"].type == "counter"
    assert families["python_gc_collections"].type == "counter"
    assert families["python_gc_objects_frozen"].type == "gauge"


def test_metrics_count_the_collector_as_it_runs() -> None:
    metrics = asyncio.run(make_service().get_metrics())
    before = parse_prometheus(render_metrics(metrics))
    gc.collect()
    after = parse_prometheus(render_metrics(metrics))
    key = 'python_gc_collections_total{generation="2"}'
    assert after[key] >= before[key] + 1  # the full collection in between (and any other)
    for generation in range(3):
        assert f'python_gc_objects_uncollectable_total{{generation="{generation}"}}' in after
    assert after["python_gc_objects_frozen"] == gc.get_freeze_count()


def test_metrics_report_the_frozen_count_taken_at_configure_gc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scrape does not walk the frozen objects (~21 ms for a node's): it reports the
    count configure_gc took, here a stand-in."""
    metrics = asyncio.run(make_service().get_metrics())
    monkeypatch.setattr(runtime, "_frozen_at_configure", [123_456])
    assert parse_prometheus(render_metrics(metrics))["python_gc_objects_frozen"] == 123_456


def _router_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str), info
        routes.add((route.method.lower(), path))
    return routes


def _document_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in document["paths"].items() for method in ops}


def test_openapi_document_matches_the_router_both_ways() -> None:
    async def extra(request: web.Request) -> web.Response:
        return web.json_response({"round": 1})

    extra_route = Route("GET", "/v1/fl/rounds/{round}", extra, {
        "summary": "a learning round",
        "parameters": [{"name": "round", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the round"}},
    })
    service = make_service()

    async def body(client: Client) -> dict[str, Any]:
        response = await client.get("/v1/openapi.json")
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document

    document = run_with_client(service, body, extra_routes=[extra_route])
    app = create_app(service, Config(), extra_routes=[extra_route])
    assert _router_routes(app) == _document_routes(document)
    assert ("get", "/v1/fl/rounds/{round}") in _document_routes(document)
    assert document == json.loads(json.dumps(get_openapi_document(app[SETTINGS_KEY].routes)))
    assert document["openapi"].startswith("3.0")
    schemas = document["components"]["schemas"]
    for path, operations in document["paths"].items():
        declared = set(re.findall(r"\{(\w+)\}", path))
        for operation in operations.values():
            params = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert params == declared, path
            assert "500" in operation["responses"]
            for ref in re.findall(r'"#/components/schemas/(\w+)"', json.dumps(operation)):
                assert ref in schemas, ref
