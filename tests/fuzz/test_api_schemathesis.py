"""Schemathesis against the node's own OpenAPI document (``/v1/openapi.json``).

The app (``create_app`` over ``FakeNodeService``, with a committed block and a funded
account so lookups can succeed) is served on 127.0.0.1 by a background thread with its own
event loop. Schemathesis generates requests from the document - valid and, for
``POST /v1/txs`` and the path parameters, arbitrary bodies and strings - and checks every
response: no 5xx (``not_a_server_error``), status code, content type, headers and body
conform to the document, and every call finishes within a timeout (no hang).

``GET /v1/events`` is a never-ending SSE stream: schemathesis would wait on it forever, so it
is excluded here; the API tests cover it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from node.api import ROUTES, create_app, get_openapi_document
from node.codec import Transaction, Transfer, encode_tx, sign_tx
from node.config import Config
from node.keys import KeyPair
from tests.api.fakes import FakeNodeService
from tests.fuzz._support import FUZZ_SCALE

REQUEST_TIMEOUT_S = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_dict(get_openapi_document(ROUTES)).exclude(path="/v1/events")


async def _make_service() -> FakeNodeService:
    key = KeyPair.from_seed(b"\x42" * 32)
    service = FakeNodeService(balances={key.public_key: 10_000}, mempool_txs_max=50)
    tx = sign_tx(key, service.chain_id, Transaction(key.public_key, 0, Transfer(b"\x07" * 32, 5)))
    assert (await service.submit_tx(encode_tx(tx))).status == "accepted"
    service.commit_block()
    return service


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(create_app(await _make_service(), Config()), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = runner.addresses[0][1]

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(timeout=10), "the API server did not start"
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@schema.parametrize()
@settings(max_examples=40 * FUZZ_SCALE, deadline=None)
def test_api_conforms_to_its_openapi_document(
    case: schemathesis.Case, base_url: str, session: requests.Session
) -> None:
    case.call_and_validate(
        base_url=base_url, session=session, checks=CHECKS, timeout=REQUEST_TIMEOUT_S
    )


def test_served_document_is_the_one_fuzzed(base_url: str) -> None:
    served = requests.get(f"{base_url}/v1/openapi.json", timeout=REQUEST_TIMEOUT_S).json()
    assert served == get_openapi_document(ROUTES)
