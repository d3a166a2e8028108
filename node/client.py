"""A small client for the node's HTTP API, used by the CLI, the tests and the benchmarks.

:class:`Client` is synchronous (urllib; no event loop needed) and
:class:`AsyncClient` is asynchronous (one aiohttp session with a bounded
connection pool, for high-rate submission). Both return the API's JSON as
plain dicts and raise :class:`ClientError` with the server's error code and
message, or code ``"unreachable"`` when no node answers. Byte arguments (tx
hashes, account ids) may be given as bytes or hex.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

import aiohttp

from node.codec import Transaction, Transfer, encode_tx, get_tx_hash, sign_tx
from node.keys import KeyPair

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
CONNECTIONS_MAX = 64
RESPONSE_SIZE_MAX_BYTES = 64 * 1024 * 1024
EVENT_MESSAGE_SIZE_MAX_BYTES = 64 * 1024


class ClientError(Exception):
    """The API answered with an error, or could not be reached (``code == "unreachable"``)."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if status is None else
                         f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def make_transfer(
    key: KeyPair, chain_id: str, recipient: bytes, amount: int, nonce: int, memo: bytes = b""
) -> bytes:
    """A signed, canonically encoded transfer from ``key``'s account."""
    unsigned = Transaction(key.public_key, nonce, Transfer(recipient, amount, memo))
    return encode_tx(sign_tx(key, chain_id, unsigned))


def get_tx_hash_hex(tx_bytes: bytes) -> str:
    return get_tx_hash(tx_bytes).hex()


def _as_hex(value: bytes | str) -> str:
    return value.hex() if isinstance(value, bytes) else value


def _error_from_body(status: int, body: bytes) -> ClientError:
    try:
        error = json.loads(body)["error"]
        return ClientError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace")
        return ClientError(status, "http_error", text or f"HTTP {status}")


def _check_size(size: int, path: str) -> None:
    if size > RESPONSE_SIZE_MAX_BYTES:
        raise ClientError(None, "bad_response",
                          f"{path}: response over {RESPONSE_SIZE_MAX_BYTES} bytes")


async def _read_body(response: aiohttp.ClientResponse, path: str) -> bytes:
    """The whole body, refused past the limit. (``content.read(n)`` would return only what
    is buffered so far, which cut large responses short.)"""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        _check_size(size, path)
        chunks.append(chunk)
    return b"".join(chunks)


def _block_path(height: int | str | None) -> str:
    return f"/v1/blocks/{'latest' if height is None else height}"


class Client:
    """Synchronous API client over urllib (one request per call, no shared state)."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json") -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read(RESPONSE_SIZE_MAX_BYTES + 1)
            _check_size(len(raw), path)
        except urllib.error.HTTPError as exc:
            raise _error_from_body(exc.code, exc.read(RESPONSE_SIZE_MAX_BYTES)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(None, "unreachable", f"cannot reach {self.url}: {reason}") from None
        if path == "/metrics":
            return raw.decode("utf-8")
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(None, "bad_response", f"{path}: response is not JSON") from None

    def submit_tx(self, tx_bytes: bytes) -> dict[str, Any]:
        """``{"hash": hex, "status": "accepted" | "duplicate"}``."""
        result: dict[str, Any] = self._request(
            "POST", "/v1/txs", tx_bytes, content_type="application/octet-stream"
        )
        return result

    def submit_txs(self, txs: list[bytes]) -> list[dict[str, Any]]:
        """Submit up to 1000 txs in one request; one result dict per tx, in order."""
        body = json.dumps({"txs": [tx.hex() for tx in txs]}).encode()
        result: dict[str, Any] = self._request("POST", "/v1/txs/batch", body)
        results: list[dict[str, Any]] = result["results"]
        return results

    def get_tx(self, tx_hash: bytes | str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/v1/txs/{_as_hex(tx_hash)}")
        return result

    def get_evidence(self, limit: int | None = None) -> dict[str, Any]:
        path = "/v1/evidence" if limit is None else f"/v1/evidence?limit={int(limit)}"
        result: dict[str, Any] = self._request("GET", path)
        return result

    def get_block(self, height: int | str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", _block_path(height))
        return result

    def get_status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/v1/status")
        return result

    def get_account(self, account_id: bytes | str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/v1/accounts/{_as_hex(account_id)}")
        return result

    def get_metrics(self) -> str:
        result: str = self._request("GET", "/metrics")
        return result

    # --- learning (node.learning_api) ---------------------------------------------------

    def get_fl_tasks(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/v1/fl/tasks")
        return result

    def get_fl_round(self, task_id: int, round_number: int) -> dict[str, Any]:
        path = f"/v1/fl/tasks/{task_id}/rounds/{round_number}"
        result: dict[str, Any] = self._request("GET", path)
        return result

    def get_fl_model_info(self, task_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/v1/fl/tasks/{task_id}/model/info")
        return result

    def get_fl_model(self, task_id: int) -> tuple[bytes, dict[str, str]]:
        """The latest model as ``.npy`` bytes and the response headers (X-Bcfl-Model-*)."""
        request = urllib.request.Request(f"{self.url}/v1/fl/tasks/{task_id}/model")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read(RESPONSE_SIZE_MAX_BYTES), dict(response.headers.items())
        except urllib.error.HTTPError as exc:
            raise _error_from_body(exc.code, exc.read(RESPONSE_SIZE_MAX_BYTES)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(None, "unreachable", f"cannot reach {self.url}: {reason}") from None

    def follow_events(self) -> EventStream:
        """Connect to ``/v1/events`` now; iterate the result for events, then close it.

        Connecting before returning means no event published after this call
        returns is missed. The stream runs a private event loop while it reads.
        """
        return EventStream(self.url, self.timeout_s)


class EventStream:
    """A synchronous, already connected event stream (an iterator of event dicts)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(url, timeout_s=timeout_s)
        try:
            self._stream = self._loop.run_until_complete(self._client.follow_events())
        except BaseException:
            self._loop.run_until_complete(self._client.close())
            self._loop.close()
            raise

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return self._loop.run_until_complete(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self._stream.close())
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncClient:
    """Asynchronous API client: one aiohttp session, at most ``connections_max`` sockets."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = TIMEOUT_S,
                 connections_max: int = CONNECTIONS_MAX) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.connections_max = connections_max
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections_max),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _request(self, method: str, path: str, body: bytes | None = None,
                       content_type: str = "application/octet-stream") -> Any:
        headers = {"Content-Type": content_type} if body is not None else None
        try:
            async with self._get_session().request(
                method, self.url + path, data=body, headers=headers
            ) as response:
                raw = await _read_body(response, path)
                status = response.status
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise ClientError(None, "unreachable", f"cannot reach {self.url}: {exc}") from None
        if status >= 400:
            raise _error_from_body(status, raw)
        if path == "/metrics":
            return raw.decode("utf-8")
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(None, "bad_response", f"{path}: response is not JSON") from None

    async def submit_tx(self, tx_bytes: bytes) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", "/v1/txs", tx_bytes)
        return result

    async def submit_txs(self, txs: list[bytes]) -> list[dict[str, Any]]:
        """Submit up to 1000 txs in one request (``POST /v1/txs/batch``); a result per tx:
        ``{"hash", "status": "accepted" | "duplicate" | "rejected"[, "code", "message"]}``."""
        body = json.dumps({"txs": [tx.hex() for tx in txs]}).encode()
        result: dict[str, Any] = await self._request("POST", "/v1/txs/batch", body,
                                                     content_type="application/json")
        results: list[dict[str, Any]] = result["results"]
        return results

    async def get_tx(self, tx_hash: bytes | str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/v1/txs/{_as_hex(tx_hash)}")
        return result

    async def get_block(self, height: int | str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", _block_path(height))
        return result

    async def get_status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/v1/status")
        return result

    async def get_account(self, account_id: bytes | str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "GET", f"/v1/accounts/{_as_hex(account_id)}"
        )
        return result

    async def get_metrics(self) -> str:
        result: str = await self._request("GET", "/metrics")
        return result

    async def follow_events(self) -> AsyncEventStream:
        """Connect to ``/v1/events``; ``async for`` over the result, then ``close()`` it."""
        # A session of its own: the pool's total request timeout must not end
        # a stream that is meant to stay open; only connecting is bounded.
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s)
        )
        try:
            ws = await session.ws_connect(
                self.url + "/v1/events", max_msg_size=EVENT_MESSAGE_SIZE_MAX_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=self.timeout_s),
            )
        except aiohttp.WSServerHandshakeError as exc:
            await session.close()
            raise ClientError(exc.status, "handshake_failed", exc.message) from None
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            await session.close()
            raise ClientError(None, "unreachable", f"cannot reach {self.url}: {exc}") from None
        return AsyncEventStream(ws, session)


class AsyncEventStream:
    """A connected ``/v1/events`` websocket: an async iterator of event dicts."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self._ws = ws
        self._session = session

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        message = await self._ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            raise StopAsyncIteration
        try:
            event: dict[str, Any] = json.loads(message.data)
        except ValueError:
            raise ClientError(None, "bad_response", "event is not JSON") from None
        return event

    async def close(self) -> None:
        await self._ws.close()
        await self._session.close()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
