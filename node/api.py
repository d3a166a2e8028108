"""The HTTP API: aiohttp handlers over a :class:`node.service.NodeService`.

Routes are declared once, in :data:`ROUTES`, as :class:`Route` records that
carry both the handler and its OpenAPI operation; :func:`create_app` registers
them and :func:`get_openapi_document` describes exactly them, so the router
and ``/v1/openapi.json`` cannot drift apart. Another part adds its routes by
passing more ``Route`` records to ``create_app(..., extra_routes=...)``.

Every response is JSON (except ``/metrics``, Prometheus text). Errors are
``{"error": {"code": ..., "message": ...}}``: 400 for bad input, 404 for
unknown things and routes, 413 over ``api.request_size_max_bytes``, 503 when
the node is overloaded (a full bridge channel or mempool) or too slow to
answer, and 500, logged, for anything unexpected; no input crashes the server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from aiohttp import WSMsgType, web

from node.codec import DEFAULT_LIMITS, DecodeError, Limits, decode_tx, get_tx_hash
from node.config import Config
from node.runtime import get_frozen_object_count
from node.service import (
    OVERLOAD_CODES,
    AccountInfo,
    BlockEvent,
    BlockInfo,
    DroppedNotice,
    EventSubscription,
    Histogram,
    Metrics,
    NodeService,
    NodeStatus,
    Overloaded,
    SubmitResult,
    TxEvent,
    TxStatus,
)

logger = logging.getLogger("bcfl.api")

API_VERSION = "1.0.0"
SERVICE_TIMEOUT_S = 10.0
EVENT_QUEUE_SIZE_MAX = 256
WEBSOCKET_HEARTBEAT_S = 30.0
WEBSOCKET_MESSAGE_SIZE_MAX_BYTES = 4096  # clients only ever send control frames
HEX_HASH_SIZE_CHARS = 64
HEIGHT_SIZE_MAX_CHARS = 20  # 2**64 has 20 digits
U64_LIMIT = 1 << 64
SUBMIT_BATCH_TXS_MAX = 1000
# Txs of one batch handed to the node in one request: enough to amortise the wake-ups
# (two per request), few enough (~15 ms of admission) not to hold consensus up.
SUBMIT_BATCH_CHUNK_TXS = 200
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    """One route: method, aiohttp path (``{name}`` parameters, as in OpenAPI) and handler.

    ``operation`` is the OpenAPI operation object (summary, parameters,
    requestBody, responses); path parameters must be declared there.
    """

    method: str
    path: str
    handler: Handler
    operation: Mapping[str, Any]


@dataclass
class ApiSettings:
    config: Config
    limits: Limits = DEFAULT_LIMITS
    service_timeout_s: float = SERVICE_TIMEOUT_S
    event_queue_size_max: int = EVENT_QUEUE_SIZE_MAX
    routes: list[Route] = field(default_factory=list)
    events_dropped_total: int = 0
    websocket_clients: int = 0


SERVICE_KEY = web.AppKey("service", NodeService)
SETTINGS_KEY = web.AppKey("settings", ApiSettings)


class ApiError(Exception):
    """Answer the request with ``status`` and ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def get_error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}, **extra}, status=status)


# --- JSON views of the service's results ----------------------------------------


def get_tx_status_json(status: TxStatus) -> dict[str, Any]:
    return {
        "hash": status.tx_hash.hex(),
        "status": status.status,
        "height": status.height,
        "index": status.index,
    }


def get_block_json(info: BlockInfo, include_encoded: bool = True) -> dict[str, Any]:
    header = info.header
    certificate = info.certificate
    return {
        "height": header.height,
        "hash": info.block_hash.hex(),
        "chain_id": header.chain_id,
        "view": header.view,
        "parent_hash": header.parent_hash.hex(),
        "tx_root": header.tx_root.hex(),
        "state_root": header.state_root.hex(),
        "proposer_index": header.proposer_index,
        "time_ms": header.time_ms,
        "committed_time_ms": info.committed_time_ms,
        "tx_count": len(info.tx_hashes),
        "tx_hashes": [tx_hash.hex() for tx_hash in info.tx_hashes],
        "encoded": info.block_bytes.hex() if include_encoded else None,
        "certificate": None
        if certificate is None
        else {
            "height": certificate.height,
            "view": certificate.view,
            "block_hash": certificate.block_hash.hex(),
            "signatures": [
                {"validator_index": s.validator_index, "signature": s.signature.hex()}
                for s in certificate.signatures
            ],
        },
    }


def get_status_json(status: NodeStatus) -> dict[str, Any]:
    return {
        "chain_id": status.chain_id,
        "moniker": status.moniker,
        "public_key": status.public_key.hex(),
        "peer_id": status.peer_id,
        "validator_index": status.validator_index,
        "height": status.height,
        "latest_block_hash": None
        if status.latest_block_hash is None
        else status.latest_block_hash.hex(),
        "view": status.view,
        "primary_index": status.primary_index,
        "peers_connected": status.peers_connected,
        "catching_up": status.catching_up,
        "mempool_txs": status.mempool_txs,
        "validators": [
            {
                "index": v.index,
                "name": v.name,
                "public_key": v.public_key.hex(),
                "connected": v.connected,
            }
            for v in status.validators
        ],
    }


def get_account_json(account: AccountInfo) -> dict[str, Any]:
    return {
        "id": account.account_id.hex(),
        "balance": account.balance,
        "nonce": account.nonce,
        "reputation": account.reputation,
        "epsilon_spent": account.epsilon_spent,
    }


def get_event_json(event: BlockEvent | TxEvent | DroppedNotice) -> dict[str, Any]:
    if isinstance(event, BlockEvent):
        return {
            "type": "block",
            "height": event.height,
            "hash": event.block_hash.hex(),
            "tx_count": event.tx_count,
        }
    if isinstance(event, TxEvent):
        return {"type": "tx", "hash": event.tx_hash.hex(), "height": event.height,
                "index": event.index}
    return {"type": "dropped", "count": event.count}


# --- Prometheus text -------------------------------------------------------------


def _format_value(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render_histogram(lines: list[str], name: str, help_text: str, hist: Histogram) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for bound, count in zip(hist.bounds_seconds, hist.cumulative_counts, strict=True):
        lines.append(f'{name}_bucket{{le="{_format_value(bound)}"}} {count}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {hist.count}')
    lines.append(f"{name}_sum {_format_value(hist.sum_seconds)}")
    lines.append(f"{name}_count {hist.count}")


def render_metrics(metrics: Metrics, settings: ApiSettings | None = None) -> str:
    """The Prometheus text exposition (format 0.0.4) of a metrics snapshot."""
    lines: list[str] = []

    def add(name: str, kind: str, help_text: str, value: float) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name} {_format_value(value)}")

    add("bcfl_height", "gauge", "Latest committed block height.", metrics.height)
    add("bcfl_view", "gauge", "Current PBFT view.", metrics.view)
    add("bcfl_view_changes_total", "counter", "View changes completed.",
        metrics.view_changes_total)
    add("bcfl_blocks_committed_total", "counter", "Blocks committed.",
        metrics.blocks_committed_total)
    add("bcfl_txs_committed_total", "counter", "Transactions committed.",
        metrics.txs_committed_total)
    add("bcfl_mempool_txs", "gauge", "Transactions in the mempool.", metrics.mempool_txs)
    add("bcfl_mempool_size_bytes", "gauge", "Bytes of transactions in the mempool.",
        metrics.mempool_size_bytes)
    add("bcfl_peers_connected", "gauge", "Validators with a live stream.",
        metrics.peers_connected)
    _render_histogram(lines, "bcfl_consensus_latency_seconds",
                      "Proposal to commit latency.", metrics.consensus_latency)
    name = "bcfl_messages_dropped_total"
    lines += [f"# HELP {name} Messages dropped, by reason.", f"# TYPE {name} counter"]
    for reason, count in sorted(metrics.messages_dropped_total.items()):
        lines.append(f'{name}{{reason="{_escape_label(reason)}"}} {count}')
    if settings is not None:
        add("bcfl_api_events_dropped_total", "counter",
            "Events dropped for slow websocket clients.", settings.events_dropped_total)
        add("bcfl_api_websocket_clients", "gauge", "Connected websocket clients.",
            settings.websocket_clients)
    for extra_name, value in sorted(metrics.extra_gauges.items()):
        if _METRIC_NAME_RE.fullmatch(extra_name) is None:
            logger.warning("metrics: skipping invalid metric name %r", extra_name)
            continue
        add(extra_name, "gauge", extra_name.replace("_", " ") + ".", value)
    _render_gc(lines)
    return "\n".join(lines) + "\n"


def _render_gc(lines: list[str]) -> None:
    """This process's cycle collector, under the names Prometheus's Python client uses
    (the node sets its thresholds: node/runtime.py ``configure_gc``)."""
    stats = gc.get_stats()
    for name, key, help_text in (
        ("python_gc_collections_total", "collections", "Collections, by generation."),
        ("python_gc_objects_collected_total", "collected", "Objects the collector freed."),
        ("python_gc_objects_uncollectable_total", "uncollectable",
         "Objects the collector found uncollectable."),
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f'{name}{{generation="{generation}"}} {stat[key]}'
                  for generation, stat in enumerate(stats)]
    name = "python_gc_objects_frozen"
    lines += [f"# HELP {name} Objects frozen out of every collection (gc.freeze).",
              f"# TYPE {name} gauge", f"{name} {get_frozen_object_count()}"]


# --- request helpers -------------------------------------------------------------


def _get_service(request: web.Request) -> NodeService:
    return request.app[SERVICE_KEY]


def _get_settings(request: web.Request) -> ApiSettings:
    return request.app[SETTINGS_KEY]


async def call_service(request: web.Request, call: Awaitable[T]) -> T:
    """Await a service call under the API's deadline: too slow means 503, never a hang."""
    try:
        async with asyncio.timeout(_get_settings(request).service_timeout_s):
            return await call
    except TimeoutError:
        raise ApiError(503, "timeout", "the node did not answer in time; retry later") from None


def parse_hex_hash(text: str, what: str) -> bytes:
    if _HEX_KEY_RE.fullmatch(text) is None:
        raise ApiError(400, f"bad_{what}", f"{what}: expected 64 hex characters, got {text[:80]!r}")
    return bytes.fromhex(text)


def parse_height(text: str) -> int | None:
    if text == "latest":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > HEIGHT_SIZE_MAX_CHARS:
        raise ApiError(400, "bad_height", f"height: expected a u64 or 'latest', got {text[:40]!r}")
    height = int(text)
    if height >= U64_LIMIT:
        raise ApiError(400, "bad_height", f"height: {height} is not a u64")
    return height


def _not_allowed(name: str, reason: str) -> NoReturn:
    raise ApiError(400, "bad_request", f"{name}: {reason}")


async def _read_body(request: web.Request) -> bytes:
    """The request body, refused with 413 when it declares more than the configured limit."""
    limit = request.app[SETTINGS_KEY].config.api.request_size_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "request_too_large",
                       f"body of {request.content_length} bytes exceeds maximum {limit}")
    return await request.read()  # aiohttp enforces client_max_size (413) too


def _parse_json_object(body: bytes, fields: frozenset[str]) -> dict[str, Any]:
    """A JSON object body with no fields outside ``fields``; 400 naming what is wrong."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        _not_allowed("body", f"expected a JSON object, got {type(document).__name__}")
    unknown = sorted(set(document) - fields)
    if unknown:
        _not_allowed(f"body.{unknown[0]}", "unknown field")
    return document


async def read_tx_bytes(request: web.Request) -> bytes:
    """The raw tx from a JSON ``{"tx": hex}`` or an ``application/octet-stream`` body."""
    body = await _read_body(request)
    if request.content_type == "application/octet-stream":
        return body
    document = _parse_json_object(body, frozenset({"tx"}))
    tx_hex = document.get("tx")
    if not isinstance(tx_hex, str):
        _not_allowed("body.tx", "expected a hex string")
    try:
        return bytes.fromhex(tx_hex)
    except ValueError:
        raise ApiError(400, "bad_hex", "body.tx: not a hex string") from None


# --- handlers --------------------------------------------------------------------


async def handle_submit_tx(request: web.Request) -> web.Response:
    raw = await read_tx_bytes(request)
    try:
        decode_tx(raw, _get_settings(request).limits)
    except DecodeError as exc:
        raise ApiError(400, "decode_error", str(exc)) from None
    result = await call_service(request, _get_service(request).submit_tx(raw))
    tx_hash = result.tx_hash.hex()
    if result.status == "accepted":
        return web.json_response({"hash": tx_hash, "status": "accepted"}, status=202)
    if result.status == "duplicate":
        return web.json_response({"hash": tx_hash, "status": "duplicate"}, status=200)
    status = 503 if result.code in OVERLOAD_CODES else 400
    return get_error_response(status, result.code, result.message, hash=tx_hash)


async def read_tx_batch(request: web.Request) -> list[str]:
    """The hex txs of a ``{"txs": [hex, ...]}`` body (at most SUBMIT_BATCH_TXS_MAX)."""
    document = _parse_json_object(await _read_body(request), frozenset({"txs"}))
    txs = document.get("txs")
    if not isinstance(txs, list) or not txs:
        _not_allowed("body.txs", "expected a non-empty list of hex strings")
    if len(txs) > SUBMIT_BATCH_TXS_MAX:
        _not_allowed("body.txs", f"{len(txs)} txs, at most {SUBMIT_BATCH_TXS_MAX}")
    for i, tx_hex in enumerate(txs):
        if not isinstance(tx_hex, str):
            _not_allowed(f"body.txs[{i}]", "expected a hex string")
    return txs


def _check_batch_tx(tx_hex: str, limits: Limits) -> tuple[bytes, dict[str, Any] | None]:
    """The tx's bytes, and its result if it is refused at the edge (before the node)."""
    try:
        raw = bytes.fromhex(tx_hex)
    except ValueError:
        return b"", {"hash": None, "status": "rejected", "code": "bad_hex", "message": "not hex"}
    try:
        decode_tx(raw, limits)
    except DecodeError as exc:
        return raw, {"hash": get_tx_hash(raw).hex(), "status": "rejected",
                     "code": "decode_error", "message": str(exc)}
    return raw, None


def _get_batch_result(result: SubmitResult) -> dict[str, Any]:
    if result.status == "rejected":
        return {"hash": result.tx_hash.hex(), "status": "rejected", "code": result.code,
                "message": result.message}
    return {"hash": result.tx_hash.hex(), "status": result.status}


async def _submit_chunk(request: web.Request, raws: list[bytes]) -> list[dict[str, Any]]:
    try:
        results = await call_service(request, _get_service(request).submit_txs(raws))
    except Overloaded as exc:
        return [{"hash": get_tx_hash(raw).hex(), "status": "rejected", "code": "overloaded",
                 "message": str(exc)} for raw in raws]
    assert len(results) == len(raws)
    return [_get_batch_result(result) for result in results]


async def handle_submit_tx_batch(request: web.Request) -> web.Response:
    """Submit up to SUBMIT_BATCH_TXS_MAX txs; one result per tx, in order (always 200).

    One request instead of one per tx: the per-request HTTP cost capped a single
    client near 950 tx/s. Each tx gets exactly the single-submit checks: hex and
    decoding here, at the edge; the rest in the node, which takes the valid txs in
    chunks of SUBMIT_BATCH_CHUNK_TXS, one wake-up of the node per chunk.
    """
    txs = await read_tx_batch(request)
    limits = _get_settings(request).limits
    results: list[dict[str, Any] | None] = []
    valid: list[tuple[int, bytes]] = []
    for tx_hex in txs:
        raw, refused = _check_batch_tx(tx_hex, limits)
        if refused is None:
            valid.append((len(results), raw))
        results.append(refused)
    for start in range(0, len(valid), SUBMIT_BATCH_CHUNK_TXS):
        chunk = valid[start:start + SUBMIT_BATCH_CHUNK_TXS]
        answers = await _submit_chunk(request, [raw for _, raw in chunk])
        for (index, _), answer in zip(chunk, answers, strict=True):
            results[index] = answer
    assert len(results) == len(txs)
    return web.json_response({"results": results}, status=200)


async def handle_get_tx(request: web.Request) -> web.Response:
    tx_hash = parse_hex_hash(request.match_info["hash"], "hash")
    status = await call_service(request, _get_service(request).get_tx(tx_hash))
    if status is None:
        raise ApiError(404, "not_found", f"transaction {tx_hash.hex()} is unknown")
    return web.json_response(get_tx_status_json(status))


async def handle_get_block(request: web.Request) -> web.Response:
    height = parse_height(request.match_info["height"])
    encoded = request.query.get("encoded", "true")
    if encoded not in ("true", "false"):
        _not_allowed("encoded", f"expected true or false, got {encoded[:20]!r}")
    info = await call_service(request, _get_service(request).get_block(height))
    if info is None:
        what = "no block yet" if height is None else f"no block at height {height}"
        raise ApiError(404, "not_found", what)
    return web.json_response(get_block_json(info, include_encoded=encoded == "true"))


async def handle_get_status(request: web.Request) -> web.Response:
    status = await call_service(request, _get_service(request).get_status())
    return web.json_response(get_status_json(status))


async def handle_get_account(request: web.Request) -> web.Response:
    account_id = parse_hex_hash(request.match_info["id"], "account_id")
    account = await call_service(request, _get_service(request).get_account(account_id))
    return web.json_response(get_account_json(account))


async def handle_get_metrics(request: web.Request) -> web.Response:
    metrics = await call_service(request, _get_service(request).get_metrics())
    body = render_metrics(metrics, _get_settings(request)).encode()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def handle_get_openapi(request: web.Request) -> web.Response:
    return web.json_response(get_openapi_document(_get_settings(request).routes))


async def _pump_events(
    ws: web.WebSocketResponse, subscription: EventSubscription, settings: ApiSettings
) -> None:
    while not ws.closed:
        try:
            item = await subscription.get()
        except EOFError:
            await ws.close(code=1001, message=b"node shutting down")
            return
        if isinstance(item, DroppedNotice):
            settings.events_dropped_total += item.count
        # A slow client blocks here (aiohttp waits on the socket's drain); the
        # subscription meanwhile fills and drops, so memory stays bounded.
        await ws.send_json(get_event_json(item))


async def handle_events(request: web.Request) -> web.StreamResponse:
    settings = _get_settings(request)
    # Subscribe before the handshake completes, so a client that has connected
    # sees every event published after its connect returned.
    subscription = _get_service(request).subscribe_events(settings.event_queue_size_max)
    ws = web.WebSocketResponse(
        heartbeat=WEBSOCKET_HEARTBEAT_S, max_msg_size=WEBSOCKET_MESSAGE_SIZE_MAX_BYTES
    )
    settings.websocket_clients += 1
    pump: asyncio.Task[None] | None = None
    try:
        await ws.prepare(request)
        pump = asyncio.create_task(_pump_events(ws, subscription, settings))
        async for message in ws:  # clients send nothing we use; this notices the close
            if message.type == WSMsgType.ERROR:
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    except Exception:  # the response is already prepared: log, never re-raise
        logger.exception("websocket /v1/events failed")
    finally:
        settings.websocket_clients -= 1
        subscription.close()
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        await ws.close()
    return ws


# --- middleware ------------------------------------------------------------------

_HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return get_error_response(exc.status, exc.code, exc.message, **exc.extra)
    except Overloaded as exc:
        return get_error_response(503, "overloaded", f"the node is overloaded: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_ERROR_CODES.get(exc.status, "http_error")
        response = get_error_response(exc.status, code, exc.text or exc.reason)
        allow = exc.headers.get("Allow")
        if allow is not None:
            response.headers["Allow"] = allow
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return get_error_response(500, "internal_error", "internal error")


# --- routes and OpenAPI ----------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> dict[str, Any]:
    return _json_response(description, "Error")


def _path_param(name: str, description: str, pattern: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


_HEX64 = "^[0-9a-fA-F]{64}$"
_HEX = {"type": "string", "pattern": "^[0-9a-f]*$"}
_HEX32 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_U64 = {"type": "integer", "minimum": 0}
_NULLABLE_U64 = {"type": "integer", "minimum": 0, "nullable": True}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "hash": _HEX32,
        },
    },
    "SubmitTxRequest": {
        "type": "object",
        "required": ["tx"],
        "additionalProperties": False,
        "properties": {"tx": {**_HEX, "description": "the canonical encoded signed tx"}},
    },
    "SubmitTxBatchRequest": {
        "type": "object",
        "required": ["txs"],
        "additionalProperties": False,
        "properties": {"txs": {"type": "array", "minItems": 1, "maxItems": SUBMIT_BATCH_TXS_MAX,
                               "items": {**_HEX, "description": "a canonical encoded signed tx"}}},
    },
    "SubmitTxBatchResponse": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": {
            "type": "object",
            "required": ["hash", "status"],
            "properties": {
                "hash": {**_HEX32, "nullable": True},
                "status": {"type": "string", "enum": ["accepted", "duplicate", "rejected"]},
                "code": {"type": "string"},
                "message": {"type": "string"},
            },
        }}},
    },
    "SubmitTxResponse": {
        "type": "object",
        "required": ["hash", "status"],
        "properties": {"hash": _HEX32, "status": {"type": "string",
                                                  "enum": ["accepted", "duplicate"]}},
    },
    "TxStatus": {
        "type": "object",
        "required": ["hash", "status", "height", "index"],
        "properties": {
            "hash": _HEX32,
            "status": {"type": "string", "enum": ["pending", "committed"]},
            "height": _NULLABLE_U64,
            "index": _NULLABLE_U64,
        },
    },
    "Block": {
        "type": "object",
        "required": ["height", "hash", "chain_id", "view", "parent_hash", "tx_root",
                     "state_root", "proposer_index", "time_ms", "committed_time_ms", "tx_count",
                     "tx_hashes", "encoded", "certificate"],
        "properties": {
            "height": _U64,
            "hash": _HEX32,
            "chain_id": {"type": "string"},
            "view": _U64,
            "parent_hash": _HEX32,
            "tx_root": _HEX32,
            "state_root": _HEX32,
            "proposer_index": _U64,
            "time_ms": _U64,
            "committed_time_ms": {**_U64, "nullable": True, "description":
                                  "this node's wall clock at commit (ms); local, not agreed"},
            "tx_count": _U64,
            "tx_hashes": {"type": "array", "items": _HEX32},
            "encoded": {**_HEX, "nullable": True,
                        "description": "the canonical encoded block (null if encoded=false)"},
            "certificate": {
                "type": "object",
                "nullable": True,
                "required": ["height", "view", "block_hash", "signatures"],
                "properties": {
                    "height": _U64,
                    "view": _U64,
                    "block_hash": _HEX32,
                    "signatures": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["validator_index", "signature"],
                            "properties": {"validator_index": _U64, "signature": _HEX},
                        },
                    },
                },
            },
        },
    },
    "Status": {
        "type": "object",
        "required": ["chain_id", "moniker", "public_key", "peer_id", "validator_index",
                     "height", "latest_block_hash", "view", "primary_index",
                     "peers_connected", "catching_up", "mempool_txs", "validators"],
        "properties": {
            "chain_id": {"type": "string"},
            "moniker": {"type": "string"},
            "public_key": _HEX32,
            "peer_id": {"type": "string"},
            "validator_index": _NULLABLE_U64,
            "height": _U64,
            "latest_block_hash": {**_HEX32, "nullable": True},
            "view": _U64,
            "primary_index": _U64,
            "peers_connected": _U64,
            "catching_up": {"type": "boolean"},
            "mempool_txs": _U64,
            "validators": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "name", "public_key", "connected"],
                    "properties": {"index": _U64, "name": {"type": "string"},
                                   "public_key": _HEX32, "connected": {"type": "boolean"}},
                },
            },
        },
    },
    "Account": {
        "type": "object",
        "required": ["id", "balance", "nonce", "reputation", "epsilon_spent"],
        "properties": {
            "id": _HEX32,
            "balance": _U64,
            "nonce": _U64,
            "reputation": {"type": "number", "nullable": True},
            "epsilon_spent": {"type": "number", "nullable": True},
        },
    },
    "Event": {
        "type": "object",
        "required": ["type"],
        "description": "block: height, hash, tx_count; tx: hash, height, index; "
        "dropped: count (events lost because this client read too slowly)",
        "properties": {
            "type": {"type": "string", "enum": ["block", "tx", "dropped"]},
            "height": _U64,
            "hash": _HEX32,
            "tx_count": _U64,
            "index": _U64,
            "count": _U64,
        },
    },
}

_OVERLOADED = _error("the node is overloaded (channel or mempool full) or too slow; retry")


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/txs", handle_submit_tx, {
        "operationId": "submitTx",
        "summary": "Submit a signed transaction",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("SubmitTxRequest")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "202": _json_response("accepted into the mempool", "SubmitTxResponse"),
            "200": _json_response("already known (duplicate)", "SubmitTxResponse"),
            "400": _error("bad JSON/hex, undecodable tx, or rejected (bad signature, nonce...)"),
            "413": _error("body over api.request_size_max_bytes"),
            "503": _OVERLOADED,
        },
    }),
    Route("POST", "/v1/txs/batch", handle_submit_tx_batch, {
        "operationId": "submitTxBatch",
        "summary": f"Submit up to {SUBMIT_BATCH_TXS_MAX} signed transactions in one request",
        "description": "Each tx gets the same checks as POST /v1/txs; the answer lists one "
        "result per tx in order: accepted, duplicate, or rejected with a code "
        "(overloaded and mempool_full mean retry later).",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("SubmitTxBatchRequest")}},
        },
        "responses": {
            "200": _json_response("one result per tx", "SubmitTxBatchResponse"),
            "400": _error("bad JSON, not a list of hex strings, empty or too many txs"),
            "413": _error("body over api.request_size_max_bytes"),
            "503": _OVERLOADED,
        },
    }),
    Route("GET", "/v1/txs/{hash}", handle_get_tx, {
        "operationId": "getTx",
        "summary": "A transaction's status: pending, or committed at a height",
        "parameters": [_path_param("hash", "the tx hash (SHA-256 of its encoding)", _HEX64)],
        "responses": {
            "200": _json_response("the transaction's status", "TxStatus"),
            "400": _error("malformed hash"),
            "404": _error("unknown transaction"),
            "503": _OVERLOADED,
        },
    }),
    Route("GET", "/v1/blocks/{height}", handle_get_block, {
        "operationId": "getBlock",
        "summary": "A committed block with its commit certificate",
        "parameters": [
            _path_param("height", "a height, or 'latest'", "^([0-9]{1,20}|latest)$"),
            {"name": "encoded", "in": "query", "required": False,
             "description": "include the encoded block hex (default true)",
             "schema": {"type": "string", "enum": ["true", "false"]}},
        ],
        "responses": {
            "200": _json_response("the block", "Block"),
            "400": _error("malformed height"),
            "404": _error("no block at that height (yet)"),
            "503": _OVERLOADED,
        },
    }),
    Route("GET", "/v1/status", handle_get_status, {
        "operationId": "getStatus",
        "summary": "The node's chain, height, view, primary, peers and validators",
        "responses": {"200": _json_response("the status", "Status"), "503": _OVERLOADED},
    }),
    Route("GET", "/v1/accounts/{id}", handle_get_account, {
        "operationId": "getAccount",
        "summary": "An account's balance and next nonce (unknown accounts read as zero)",
        "parameters": [_path_param("id", "the account's Ed25519 public key, hex", _HEX64)],
        "responses": {
            "200": _json_response("the account", "Account"),
            "400": _error("malformed account id"),
            "503": _OVERLOADED,
        },
    }),
    Route("GET", "/v1/events", handle_events, {
        "operationId": "followEvents",
        "summary": "WebSocket: a JSON message per new block and committed transaction",
        "description": "Each client has a bounded queue; a client that reads too slowly "
        "gets {\"type\": \"dropped\", \"count\": n} where events were lost.",
        "responses": {
            "101": {"description": "switching to WebSocket; messages are Event objects",
                    "content": {"application/json": {"schema": _ref("Event")}}},
            "503": _error("too many event subscribers"),
        },
    }),
    Route("GET", "/metrics", handle_get_metrics, {
        "operationId": "getMetrics",
        "summary": "Prometheus metrics (text format 0.0.4)",
        "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {
                "schema": {"type": "string"}}}},
            "503": _OVERLOADED,
        },
    }),
    Route("GET", "/v1/openapi.json", handle_get_openapi, {
        "operationId": "getOpenApi",
        "summary": "This document",
        "responses": {"200": {"description": "the OpenAPI 3.0 document",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }),
)


def get_openapi_document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of exactly ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = dict(route.operation)
        operation.setdefault("responses", {})
        operation["responses"] = {
            **operation["responses"],
            "500": _error("unexpected error (logged by the node)"),
        }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "bcfl node API", "version": API_VERSION},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


def create_app(
    service: NodeService,
    config: Config,
    *,
    extra_routes: Sequence[Route] = (),
    limits: Limits = DEFAULT_LIMITS,
    service_timeout_s: float = SERVICE_TIMEOUT_S,
    event_queue_size_max: int = EVENT_QUEUE_SIZE_MAX,
) -> web.Application:
    """The API application; the caller binds it (``config.api.listen_host``, 127.0.0.1)."""
    routes = [*ROUTES, *extra_routes]
    seen = [(r.method, r.path) for r in routes]
    assert len(seen) == len(set(seen)), "a route is declared twice"
    app = web.Application(
        client_max_size=config.api.request_size_max_bytes, middlewares=[error_middleware]
    )
    app[SERVICE_KEY] = service
    app[SETTINGS_KEY] = ApiSettings(
        config=config,
        limits=limits,
        service_timeout_s=service_timeout_s,
        event_queue_size_max=event_queue_size_max,
        routes=routes,
    )
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    return app


async def start_api(
    service: NodeService, config: Config, **kwargs: Any
) -> web.AppRunner:
    """Serve the API on ``config.api.listen_host:listen_port``; ``runner.cleanup()`` stops it."""
    runner = web.AppRunner(create_app(service, config, **kwargs), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.api.listen_host, config.api.listen_port)
    await site.start()
    return runner
