"""trio (the node) as a guest on asyncio (the HTTP API), on one thread, with bounded bridges.

How it works. libp2p is trio-only and aiohttp is asyncio-only, so the node
runs trio in guest mode (``trio.lowlevel.start_guest_run``) on top of the
asyncio loop: trio's ticks are asyncio callbacks, and the two never run at the
same time. No threads, no locks: plain Python state shared between the two is
safe, but each side's *scheduling* primitives must be called from the right
place:

- asyncio -> trio: requests enter trio through ``TrioToken.run_sync_soon``,
  the documented way in. (Calling a trio channel's ``send_nowait`` straight
  from an asyncio callback happens to work with trio 0.35, whose
  ``reschedule`` forces a guest tick, but it runs trio internals outside trio's
  context and no documentation promises it.) The bound is checked
  synchronously on the asyncio side with a plain counter, so a full request
  queue raises ``Overloaded`` at once, never a hang.
- trio -> asyncio: replies resolve the caller's ``asyncio.Future`` through
  ``loop.call_soon_threadsafe``; events go into bounded per-subscriber
  ``asyncio.Queue``s with ``put_nowait`` (trio code runs inside an asyncio
  callback on the loop's thread, where that is allowed). A slow subscriber
  loses events, counted, and receives an ``EventsDropped`` notice.

Shutdown (SIGINT, SIGTERM, ``stop`` set, or trio returning): stop the HTTP
site, fail pending requests with ``NodeStopped``, cancel trio, wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from aiohttp import web
from outcome import Outcome

logger = logging.getLogger(__name__)

REQUEST_QUEUE_MAX = 1024
SUBSCRIBER_QUEUE_MAX = 256
SUBSCRIBERS_MAX = 1024


class Overloaded(Exception):
    """The node's request queue is full; the API answers 503."""


class NodeStopped(Exception):
    """The node is shutting down or has stopped; the request will not be answered."""


@dataclass(frozen=True)
class EventsDropped:
    """Notice to a slow subscriber: ``count`` events were dropped since its last read."""

    count: int


class Request:
    """One API request on the trio side; answer it exactly once with ``reply`` or ``fail``."""

    def __init__(
        self, kind: str, payload: Any, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.kind = kind
        self.payload = payload
        self._future = future
        self._loop = loop
        self._answered = False

    def reply(self, value: Any) -> None:
        self._answer(_set_result, value)

    def fail(self, error: BaseException) -> None:
        self._answer(_set_exception, error)

    def _answer(self, setter: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        assert not self._answered, "a request is answered once"
        self._answered = True
        self._loop.call_soon_threadsafe(setter, self._future, value)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # the caller may have given up (cancelled)
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class EventSubscription:
    """A bounded queue of events for one asyncio consumer (e.g. a websocket)."""

    def __init__(self, bridge: Bridge, capacity: int) -> None:
        assert capacity > 0
        self._bridge = bridge
        self._queue: asyncio.Queue[Any] = asyncio.Queue(capacity)
        self.dropped_total = 0
        self._dropped_unreported = 0

    def offer(self, event: Any) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped_total += 1
            self._dropped_unreported += 1
            self._bridge.events_dropped += 1

    async def get(self) -> Any:
        """The next event, or ``EventsDropped(n)`` first if events were lost since last time."""
        if self._dropped_unreported:
            notice = EventsDropped(self._dropped_unreported)
            self._dropped_unreported = 0
            return notice
        return await self._queue.get()

    def close(self) -> None:
        self._bridge._subscribers.discard(self)


class Bridge:
    """The bounded channels between the asyncio API and the trio node."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request_capacity: int = REQUEST_QUEUE_MAX):
        assert request_capacity > 0
        self.loop = loop
        self.request_capacity = request_capacity
        self._send, self._receive = trio.open_memory_channel[Request](request_capacity)
        self._queued = 0  # submitted and not yet taken by the trio side
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        self._pending: set[asyncio.Future[Any]] = set()
        self._subscribers: set[EventSubscription] = set()
        self.requests_overloaded = 0
        self.events_published = 0
        self.events_dropped = 0

    # -- asyncio side -----------------------------------------------------------

    async def call(self, kind: str, payload: Any = None) -> Any:
        """Ask the trio side; raises ``Overloaded`` at once when the queue is full."""
        if self._closed or self._token is None:
            raise NodeStopped("the node is not running")
        if self._queued >= self.request_capacity:
            self.requests_overloaded += 1
            raise Overloaded(f"request queue full ({self.request_capacity})")
        future: asyncio.Future[Any] = self.loop.create_future()
        request = Request(kind, payload, future, self.loop)
        self._queued += 1
        self._pending.add(future)
        try:
            self._token.run_sync_soon(self._enqueue, request)
        except trio.RunFinishedError:
            self._queued -= 1
            self._pending.discard(future)
            raise NodeStopped("the node has stopped") from None
        try:
            return await future
        finally:
            self._pending.discard(future)

    def subscribe(self, capacity: int = SUBSCRIBER_QUEUE_MAX) -> EventSubscription:
        if len(self._subscribers) >= SUBSCRIBERS_MAX:
            raise Overloaded(f"too many event subscribers ({SUBSCRIBERS_MAX})")
        subscription = EventSubscription(self, capacity)
        self._subscribers.add(subscription)
        return subscription

    def get_metrics(self) -> dict[str, int]:
        return {
            "requests_queued": self._queued,
            "requests_overloaded": self.requests_overloaded,
            "events_published": self.events_published,
            "events_dropped": self.events_dropped,
            "subscribers": len(self._subscribers),
        }

    # -- trio side --------------------------------------------------------------

    def _enqueue(self, request: Request) -> None:
        # Runs inside trio (run_sync_soon); the counter guarantees room.
        self._send.send_nowait(request)

    async def receive_request(self) -> Request:
        """The next API request (trio side)."""
        request = await self._receive.receive()
        self._queued -= 1
        assert self._queued >= 0
        return request

    def publish(self, event: Any) -> None:
        """Offer ``event`` to every subscriber without blocking (trio side)."""
        self.events_published += 1
        for subscription in list(self._subscribers):
            subscription.offer(event)

    # -- lifecycle --------------------------------------------------------------

    def _attach(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    def _close(self) -> None:
        self._closed = True
        for future in list(self._pending):
            _set_exception(future, NodeStopped("the node is shutting down"))
        self._pending.clear()


TrioMain = Callable[[Bridge], Awaitable[None]]
AppFactory = Callable[[Bridge], web.Application]


async def serve_node(
    trio_main: TrioMain,
    app_factory: AppFactory | None,
    *,
    http_host: str = "127.0.0.1",
    http_port: int = 0,
    request_capacity: int = REQUEST_QUEUE_MAX,
    stop: asyncio.Event | None = None,
    on_started: Callable[[Bridge, int], None] | None = None,
    handle_signals: bool = False,
) -> None:
    """Run ``trio_main`` as a trio guest and the aiohttp app on this asyncio loop until stopped.

    ``on_started(bridge, http_port)`` is called once the site listens (the real
    port when ``http_port`` is 0). Re-raises trio_main's exception, if any.
    """
    loop = asyncio.get_running_loop()
    bridge = Bridge(loop, request_capacity)
    stop = stop or asyncio.Event()
    trio_done: asyncio.Future[Outcome[None]] = loop.create_future()
    cancel_scope = trio.CancelScope()

    if handle_signals:
        # Installed before trio starts, so trio leaves SIGINT to asyncio.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

    async def trio_entry() -> None:
        bridge._attach(trio.lowlevel.current_trio_token())
        with cancel_scope:
            await trio_main(bridge)

    def on_trio_done(result: Outcome[None]) -> None:
        if not trio_done.done():
            trio_done.set_result(result)

    def run_sync_soon_threadsafe(callback: Callable[[], None]) -> None:
        loop.call_soon_threadsafe(callback)

    def run_sync_soon_not_threadsafe(callback: Callable[[], None]) -> None:
        loop.call_soon(callback)

    trio.lowlevel.start_guest_run(
        trio_entry,
        run_sync_soon_threadsafe=run_sync_soon_threadsafe,
        run_sync_soon_not_threadsafe=run_sync_soon_not_threadsafe,
        done_callback=on_trio_done,
        host_uses_signal_set_wakeup_fd=handle_signals,
    )
    runner: web.AppRunner | None = None
    try:
        port = http_port
        if app_factory is not None:
            runner = web.AppRunner(app_factory(bridge))
            await runner.setup()
            site = web.TCPSite(runner, http_host, http_port)
            await site.start()
            port = _get_bound_port(runner, http_port)
        if on_started is not None:
            on_started(bridge, port)
        stop_task: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        waited: list[asyncio.Future[Any]] = [stop_task, trio_done]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
    finally:
        if runner is not None:
            await runner.cleanup()
        bridge._close()
        if not trio_done.done():
            token = bridge._token
            if token is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(cancel_scope.cancel)
            else:
                # trio has not started its entry task yet; cancel from its first tick.
                cancel_scope.cancel()
        outcome = await trio_done
        if handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    outcome.unwrap()


def _get_bound_port(runner: web.AppRunner, fallback: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return fallback


# Young collections every 50,000 allocations of tracked objects, not 700; a full one
# after 100 middle ones (CPython also waits until a quarter of the old objects are new).
# With the defaults, full collections walked every pending tx's objects and the states
# every few seconds under load: in `bcfl bench node`, 5 full collections of ~125 ms
# each, ~9% of the validators' CPU. Cycles still die in the young collections, and the
# full ones still come, so memory stays bounded.
GC_THRESHOLDS = (50_000, 20, 100)


# The frozen-object count as of configure_gc. gc.get_freeze_count() walks the list of
# every frozen object: ~21 ms of CPU for a node's ~216,000, scattered over the heap, on
# each /metrics scrape (node.api). Only gc.freeze() changes it, and configure_gc is the
# node's one call.
_frozen_at_configure: list[int] = []


def configure_gc() -> None:
    """Tune the cycle collector for a long-running node, once its state is loaded: what
    exists now (modules, genesis, the loaded state) is frozen out of every collection.

    No collection first: it took ~90 ms of a restarting node's startup (200,000
    objects), and the startup garbage it would free is small and made once."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _frozen_at_configure[:] = [gc.get_freeze_count()]


def get_frozen_object_count() -> int:
    """Objects frozen out of collection: as counted by configure_gc once it ran (see
    _frozen_at_configure), else counted now (cheap while few or none are frozen)."""
    return _frozen_at_configure[0] if _frozen_at_configure else gc.get_freeze_count()


def run_node(
    trio_main: TrioMain,
    app_factory: AppFactory | None,
    *,
    http_host: str = "127.0.0.1",
    http_port: int = 0,
    request_capacity: int = REQUEST_QUEUE_MAX,
    on_started: Callable[[Bridge, int], None] | None = None,
) -> int:
    """Blocking entry point for ``bcfl start``: returns 0 after a clean SIGINT/SIGTERM stop."""
    configure_gc()
    asyncio.run(
        serve_node(
            trio_main,
            app_factory,
            http_host=http_host,
            http_port=http_port,
            request_capacity=request_capacity,
            on_started=on_started,
            handle_signals=True,
        )
    )
    return 0
