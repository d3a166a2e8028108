"""The evidence part of the HTTP API: ``GET /v1/evidence`` over the committed state.

Like ``node.learning_api``, the handler asks the node for its committed
:class:`~node.ledger.State` over the runtime bridge (``get_state``) and renders the
equivocation records ``node.evidence`` keeps there, newest first, at most ``limit``
(default and maximum :data:`EVIDENCE_LIST_MAX`). Passed to ``create_app`` as
``extra_routes=get_evidence_routes()``, so the router and the OpenAPI document agree.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node.api import SERVICE_KEY, ApiError, Route, call_service
from node.evidence import EvidenceRecord, get_evidence_records, get_offender_count
from node.learning_api import StateSource
from node.ledger import State

EVIDENCE_LIST_MAX = 100
LIMIT_DIGITS_MAX = 4


async def _get_state(request: web.Request) -> State:
    service = request.app[SERVICE_KEY]
    if not isinstance(service, StateSource):
        raise ApiError(404, "not_found", "this node does not serve chain state")
    return await call_service(request, service.get_state())


def _parse_limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return EVIDENCE_LIST_MAX
    if not (text.isascii() and text.isdigit()) or len(text) > LIMIT_DIGITS_MAX or int(text) < 1:
        raise ApiError(400, "bad_limit", f"limit: expected 1..{EVIDENCE_LIST_MAX}, got "
                       f"{text[:40]!r}")
    return min(int(text), EVIDENCE_LIST_MAX)


def _record_json(state: State, record: EvidenceRecord) -> dict[str, Any]:
    return {
        "offender_index": record.offender,
        "view": record.view,
        "seq": record.seq,
        "kind": record.kind,
        "height": record.height,
        "digests": [record.first_digest.hex(), record.second_digest.hex()],
        "reporter": record.reporter.hex(),
        "offender_evidence_count": get_offender_count(state, record.offender),
    }


async def handle_get_evidence(request: web.Request) -> web.Response:
    limit = _parse_limit(request)
    state = await _get_state(request)
    records = get_evidence_records(state, limit)
    return web.json_response({
        "height": state.height,
        "evidence": [_record_json(state, r) for r in records],
    })


def get_evidence_routes() -> list[Route]:
    return [
        Route("GET", "/v1/evidence", handle_get_evidence, {
            "operationId": "getEvidence",
            "summary": "Equivocation evidence recorded on chain, newest first",
            "description": "One record per (offender_index, view, seq): the validator that "
            "signed two conflicting votes, the vote kind, and the height that recorded it. "
            f"At most {EVIDENCE_LIST_MAX} records (query parameter limit).",
            "parameters": [{
                "name": "limit", "in": "query", "required": False,
                "description": f"how many records, 1..{EVIDENCE_LIST_MAX}",
                "schema": {"type": "integer", "minimum": 1, "maximum": EVIDENCE_LIST_MAX},
            }],
            "responses": {
                "200": {"description": "the records",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": {"description": "bad limit"},
                "503": {"description": "the node is busy; retry"},
            },
        }),
    ]


__all__ = ["EVIDENCE_LIST_MAX", "get_evidence_routes", "handle_get_evidence"]
