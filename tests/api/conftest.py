from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.api import create_app
from node.config import Config
from tests.api.fakes import FakeNodeService

T = TypeVar("T")


def run_with_client(
    service: FakeNodeService,
    body: Callable[[TestClient[web.Request, web.Application]], Awaitable[T]],
    config: Config | None = None,
    **kwargs: Any,
) -> T:
    """Run ``body`` against the app over a real loopback socket, in a fresh event loop."""

    async def main() -> T:
        app = create_app(service, config or Config(), **kwargs)
        async with TestClient(TestServer(app)) as client:
            return await body(client)

    return asyncio.run(main())


class ServedApp:
    """The app on a background thread's loop, for synchronous clients and the CLI."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str) -> None:
        self.loop = loop
        self.url = url

    def call(self, func: Callable[[], T]) -> T:
        """Run ``func`` on the server's loop (the fake is not thread-safe)."""

        async def wrapper() -> T:
            return func()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=10)


@contextmanager
def serve_app(service: FakeNodeService, config: Config | None = None) -> Iterator[ServedApp]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(create_app(service, config or Config()))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = runner.addresses[0][1]

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    assert started.wait(timeout=10), "the API server did not start"
    try:
        yield ServedApp(loop, f"http://127.0.0.1:{state['port']}")
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
