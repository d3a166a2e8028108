"""The learning part of the HTTP API: ``/v1/fl/...`` routes over the committed state.

Every handler asks the node for its committed :class:`~node.ledger.State` over
the runtime bridge (``get_state``: the State is immutable, so the asyncio side
may read it while the node moves on) and renders it with the ``node.learning``
readers. The routes are plain :class:`node.api.Route` records, passed to
``create_app(..., extra_routes=get_learning_routes())``, so the router and the
OpenAPI document stay one list.

The model route serves the float64 parameters as a ``.npy`` file written by
``np.save(..., allow_pickle=False)``; its version, hash, parent hash and
lineage are in ``X-Bcfl-Model-*`` headers and at ``.../model/info``.
"""

from __future__ import annotations

import io
from typing import Any, Protocol, runtime_checkable

import numpy as np
from aiohttp import web

import node.learning as learning
from node.api import SERVICE_KEY, ApiError, Route, call_service
from node.ledger import State

PPM = 1_000_000
TASK_ID_DIGITS_MAX = 10
ROUND_DIGITS_MAX = 20
MODEL_MEDIA_TYPE = "application/octet-stream"


@runtime_checkable
class StateSource(Protocol):
    async def get_state(self) -> State: ...


def get_learning_account(state: State, account_id: bytes) -> tuple[float | None, float | None]:
    """(reputation in [0, 1], epsilon spent summed over tasks) of a member; (None, None) else."""
    if not any(m.public_key == account_id for m in learning.get_members(state)):
        return None, None
    spent_micro = sum(learning.get_epsilon_spent(state, t, account_id)
                      for t in learning.get_task_ids(state))
    return learning.get_reputation(state, account_id) / PPM, spent_micro / PPM


async def _get_state(request: web.Request) -> State:
    service = request.app[SERVICE_KEY]
    if not isinstance(service, StateSource):
        raise ApiError(404, "not_found", "this node does not serve learning state")
    return await call_service(request, service.get_state())


def _parse_int(text: str, what: str, digits_max: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > digits_max:
        raise ApiError(400, f"bad_{what}", f"{what}: expected a non-negative integer, got "
                       f"{text[:40]!r}")
    return int(text)


def _get_task_or_404(state: State, request: web.Request) -> learning.TaskRecord:
    task_id = _parse_int(request.match_info["task_id"], "task_id", TASK_ID_DIGITS_MAX)
    task = learning.get_task(state, task_id)
    if task is None:
        raise ApiError(404, "not_found", f"no learning task {task_id}")
    return task


def _task_json(state: State, task: learning.TaskRecord) -> dict[str, Any]:
    c = task.config
    current = learning.get_round(state, c.task_id)
    model = learning.get_model(state, c.task_id)
    return {
        "id": c.task_id,
        "name": c.name,
        "model": {"kind": c.model_kind, "n_features": c.n_features, "n_classes": c.n_classes,
                  "hidden": c.hidden},
        "rule": c.rule,
        "rule_params_json": c.rule_params_json,
        "round_length_blocks": c.round_length_blocks,
        "scale_exp": c.scale_exp,
        "reward_pool": c.reward_pool,
        "validator_share": c.validator_share_ppm / PPM,
        "norm_max": c.norm_max_ppm / PPM,
        "roni_tolerance": c.roni_tolerance_ppm / PPM,
        "agreement_min": c.agreement_min_ppm / PPM,
        "deltas_per_round_max": c.deltas_per_round_max,
        "sample_count_max": c.sample_count_max,
        "privacy": {"clip_norm": c.clip_norm_micro / PPM,
                    "noise_multiplier_min": c.noise_multiplier_min_micro / PPM,
                    "epsilon_budget": c.epsilon_budget_micro / PPM,
                    "delta": c.dp_delta_e12 / 1e12},
        "validation_set": {"dataset": c.validation_dataset, "seed": c.validation_seed,
                           "size": c.validation_size, "hash": c.validation_hash.hex()},
        "pending_changes": [{"effective_round": p.effective_round, "rule": p.config.rule}
                            for p in task.pending],
        "round": None if current is None else _open_round_json(current),
        "model_version": None if model is None else model.version,
        "model_hash": None if model is None else model.model_hash.hex(),
    }


def _open_round_json(current: learning.RoundRecord) -> dict[str, Any]:
    return {
        "round": current.round,
        "status": "open",
        "opened_height": current.opened_height,
        "deadline_height": current.deadline_height,
        "base_version": current.base_version,
        "base_model_hash": current.base_model_hash.hex(),
        "deltas": [{"tx_hash": h.hex(), "institution": s.hex()}
                   for h, s in zip(current.delta_tx_hashes, current.delta_senders, strict=True)],
        "attesters": [a.hex() for a in current.attesters],
    }


def _summary_json(summary: learning.RoundSummary, names: dict[bytes, str]) -> dict[str, Any]:
    outcomes = [
        {
            "tx_hash": o.tx_hash.hex(),
            "institution": o.institution.hex(),
            "name": names.get(o.institution, ""),
            "member_id": o.member_id,
            "accepted": o.accepted,
            "reason": o.reason,
            "improvement_ppm": o.improvement_ppm,
            "agreement_ppm": o.agreement_ppm,
            "attested_improvement_ppm": o.attested_improvement_ppm,
            "attestation_count": o.attestation_count,
            "shapley_ppm": o.shapley_ppm,
            "weight": o.weight,
            "reward": o.reward,
        }
        for o in summary.outcomes
    ]
    return {
        "round": summary.round,
        "status": "closed",
        "closed_height": summary.closed_height,
        "rule": summary.rule,
        "rule_params_json": summary.rule_params_json,
        "model_version": summary.model_version,
        "model_hash": summary.model_hash.hex(),
        "deltas": outcomes,
        "accepted": [o["tx_hash"] for o in outcomes if o["accepted"]],
        "rejected": [o["tx_hash"] for o in outcomes if not o["accepted"]],
        "rewards": [{"account": o["institution"], "name": o["name"], "amount": o["reward"]}
                    for o in outcomes]
        + [{"account": r.account.hex(), "name": names.get(r.account, ""), "amount": r.amount}
           for r in summary.validator_rewards],
        "minted": summary.minted,
    }


async def handle_get_tasks(request: web.Request) -> web.Response:
    state = await _get_state(request)
    tasks = [learning.get_task(state, t) for t in learning.get_task_ids(state)]
    members = [{"name": m.name, "public_key": m.public_key.hex(), "role": m.role,
                "member_id": m.member_id} for m in learning.get_members(state)]
    return web.json_response({
        "height": state.height,
        "tasks": [_task_json(state, t) for t in tasks if t is not None],
        "members": members,
    })


async def handle_get_round(request: web.Request) -> web.Response:
    state = await _get_state(request)
    task = _get_task_or_404(state, request)
    number = _parse_int(request.match_info["round"], "round", ROUND_DIGITS_MAX)
    current = learning.get_round(state, task.config.task_id)
    if current is not None and current.round == number:
        return web.json_response({"height": state.height, **_open_round_json(current)})
    summary = learning.get_round_summary(state, task.config.task_id, number)
    if summary is None:
        raise ApiError(404, "not_found", f"task {task.config.task_id} has no round {number}")
    names = {m.public_key: m.name for m in learning.get_members(state)}
    return web.json_response({"height": state.height, **_summary_json(summary, names)})


def _model_info(state: State, task_id: int) -> tuple[learning.ModelVersion, dict[str, Any]]:
    model = learning.get_model(state, task_id)
    if model is None:
        raise ApiError(404, "not_found", f"task {task_id} has no model")
    info = {
        "height": state.height,
        "task_id": task_id,
        "version": model.version,
        "round": model.round,
        "model_height": model.height,
        "model_hash": model.model_hash.hex(),
        "parent_hash": model.parent_hash.hex(),
        "rule": model.rule,
        "lineage": [{"tx_hash": e.tx_hash.hex(), "institution": e.institution.hex(),
                     "weight": e.weight} for e in model.lineage],
    }
    return model, info


async def handle_get_model_info(request: web.Request) -> web.Response:
    state = await _get_state(request)
    task = _get_task_or_404(state, request)
    _, info = _model_info(state, task.config.task_id)
    return web.json_response(info)


async def handle_get_model(request: web.Request) -> web.Response:
    state = await _get_state(request)
    task = _get_task_or_404(state, request)
    model, info = _model_info(state, task.config.task_id)
    params = learning.get_model_params(state, task.config.task_id, model.version)
    assert params is not None, "the latest version's parameters are always kept"
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(params, dtype="<f8"), allow_pickle=False)
    headers = {
        "X-Bcfl-Model-Version": str(model.version),
        "X-Bcfl-Model-Hash": info["model_hash"],
        "X-Bcfl-Model-Parent-Hash": info["parent_hash"],
        "X-Bcfl-Model-Round": str(model.round),
        "X-Bcfl-Height": str(state.height),
    }
    return web.Response(body=buffer.getvalue(), content_type=MODEL_MEDIA_TYPE, headers=headers)


def load_model_npy(data: bytes) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Read what the model route serves (strictly: a 1-D float64 array, never pickle)."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype != np.float64 or array.ndim != 1 or not np.all(np.isfinite(array)):
        raise ValueError(f"model must be a finite 1-D float64 array, got {array.dtype} "
                         f"{array.shape}")
    return np.asarray(array, dtype=np.float64)


def _param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": "^[0-9]+$"}}


def _json_ok(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"type": "object"}}}}


_ERRORS = {"400": {"description": "bad task id or round number"},
           "404": {"description": "no such task, round or model"},
           "503": {"description": "the node is busy; retry"}}
_TASK = _param("task_id", "the task's index in genesis fl.tasks")


def get_learning_routes() -> list[Route]:
    return [
        Route("GET", "/v1/fl/tasks", handle_get_tasks, {
            "summary": "Learning tasks (config, open round, latest model) and member institutions",
            "responses": {"200": _json_ok("the tasks"), "503": _ERRORS["503"]},
        }),
        Route("GET", "/v1/fl/tasks/{task_id}/rounds/{round}", handle_get_round, {
            "summary": "A round: open (deltas and attesters so far) or closed (each delta's "
                       "scores, accepted or why not, rewards, the model it made)",
            "parameters": [_TASK, _param("round", "round number")],
            "responses": {"200": _json_ok("the round"), **_ERRORS},
        }),
        Route("GET", "/v1/fl/tasks/{task_id}/model", handle_get_model, {
            "summary": "The latest global model's float64 parameters as a .npy file "
                       "(no pickle); version and hash in X-Bcfl-Model-* headers",
            "parameters": [_TASK],
            "responses": {"200": {"description": "the parameters",
                                  "content": {MODEL_MEDIA_TYPE: {"schema": {
                                      "type": "string", "format": "binary"}}}},
                          **_ERRORS},
        }),
        Route("GET", "/v1/fl/tasks/{task_id}/model/info", handle_get_model_info, {
            "summary": "The latest model's version, hash, parent hash, rule and lineage",
            "parameters": [_TASK],
            "responses": {"200": _json_ok("the model's record"), **_ERRORS},
        }),
    ]


__all__ = ["StateSource", "get_learning_account", "get_learning_routes",
           "load_model_npy"]
