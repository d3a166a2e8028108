"""trio-in-asyncio guest runtime: HTTP round trips through trio, overload, events, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trio
from aiohttp import web

from node.runtime import Bridge, EventsDropped, NodeStopped, Overloaded, serve_node

HOST = "127.0.0.1"
STEP_TIMEOUT_S = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_app(bridge: Bridge) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        try:
            answer = await bridge.call("echo", await request.read())
        except Overloaded:
            return web.Response(status=503, text="overloaded")
        return web.Response(body=answer)

    app = web.Application()
    app.router.add_post("/echo", echo)
    return app


async def serve_trio_requests(bridge: Bridge) -> None:
    """The trio side: answers each echo with its bytes reversed, after a trio checkpoint."""
    while True:
        request = await bridge.receive_request()
        await trio.sleep(0)
        assert trio.lowlevel.current_task() is not None  # really on the trio side
        request.reply(bytes(reversed(request.payload)))


async def start(
    trio_main: Any, app_factory: Any, capacity: int = 8
) -> tuple[asyncio.Task[None], asyncio.Event, Bridge, int]:
    stop = asyncio.Event()
    started: asyncio.Future[tuple[Bridge, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(
        serve_node(
            trio_main,
            app_factory,
            http_host=HOST,
            request_capacity=capacity,
            stop=stop,
            on_started=lambda b, p: started.set_result((b, p)),
        )
    )
    bridge, port = await asyncio.wait_for(started, STEP_TIMEOUT_S)
    return task, stop, bridge, port


def test_http_request_round_trips_through_trio() -> None:
    async def main() -> None:
        task, stop, bridge, port = await start(serve_trio_requests, make_app)
        async with aiohttp.ClientSession() as session:
            for body in (b"abc", b"hello world"):
                async with session.post(f"http://{HOST}:{port}/echo", data=body) as response:
                    assert response.status == 200
                    assert await response.read() == bytes(reversed(body))
            # Many concurrent calls, all answered.
            answers = await asyncio.gather(*(bridge.call("echo", b"%d!" % i) for i in range(8)))
            assert answers == [bytes(reversed(b"%d!" % i)) for i in range(8)]
        stop.set()
        await asyncio.wait_for(task, STEP_TIMEOUT_S)
        with pytest.raises(NodeStopped):
            await bridge.call("echo", b"late")

    asyncio.run(main())


def test_full_request_queue_is_overloaded_at_once_and_503() -> None:
    async def never_reads(bridge: Bridge) -> None:
        await trio.sleep_forever()

    async def main() -> None:
        task, stop, bridge, port = await start(never_reads, make_app, capacity=3)
        waiting = [asyncio.ensure_future(bridge.call("echo", b"x")) for _ in range(3)]
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        before = loop.time()
        with pytest.raises(Overloaded):
            await bridge.call("echo", b"one too many")
        assert loop.time() - before < STEP_TIMEOUT_S  # it did not wait for a reply
        assert bridge.get_metrics()["requests_overloaded"] == 1
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://{HOST}:{port}/echo", data=b"y") as response:
                assert response.status == 503
        stop.set()
        await asyncio.wait_for(task, STEP_TIMEOUT_S)
        for future in waiting:
            with pytest.raises(NodeStopped):
                await future

    asyncio.run(main())


def test_events_reach_subscribers_and_slow_ones_get_a_counted_notice() -> None:
    async def main() -> None:
        published = asyncio.Event()
        holder: dict[str, Any] = {}

        async def publisher(bridge: Bridge) -> None:
            await trio.sleep(0.05)
            for i in range(10):
                bridge.publish({"height": i})
            holder["loop"].call_soon_threadsafe(published.set)
            await trio.sleep_forever()

        holder["loop"] = asyncio.get_running_loop()
        stop = asyncio.Event()
        ready: asyncio.Future[Bridge] = asyncio.get_running_loop().create_future()
        subscriptions: dict[str, Any] = {}

        def on_started(bridge: Bridge, port: int) -> None:
            subscriptions["fast"] = bridge.subscribe(capacity=100)
            subscriptions["slow"] = bridge.subscribe(capacity=3)
            ready.set_result(bridge)

        task = asyncio.ensure_future(
            serve_node(publisher, None, stop=stop, on_started=on_started)
        )
        bridge = await asyncio.wait_for(ready, STEP_TIMEOUT_S)
        await asyncio.wait_for(published.wait(), STEP_TIMEOUT_S)
        fast = [await subscriptions["fast"].get() for _ in range(10)]
        assert fast == [{"height": i} for i in range(10)]
        slow = [await subscriptions["slow"].get() for _ in range(4)]
        assert slow == [EventsDropped(7), {"height": 0}, {"height": 1}, {"height": 2}]
        assert bridge.get_metrics()["events_dropped"] == 7
        stop.set()
        await asyncio.wait_for(task, STEP_TIMEOUT_S)

    asyncio.run(main())


def test_trio_failure_propagates_and_stops_the_api() -> None:
    async def crashes(bridge: Bridge) -> None:
        await trio.sleep(0.01)
        raise RuntimeError("node crashed")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="node crashed"):
            await asyncio.wait_for(serve_node(crashes, make_app, http_host=HOST), STEP_TIMEOUT_S)

    asyncio.run(main())


def test_sigterm_stops_run_node_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "node_main.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from aiohttp import web
            from node.runtime import run_node

            def make_app(bridge):
                async def echo(request):
                    return web.Response(body=await bridge.call("echo", await request.read()))
                app = web.Application()
                app.router.add_post("/echo", echo)
                return app

            async def trio_main(bridge):
                try:
                    while True:
                        request = await bridge.receive_request()
                        request.reply(request.payload)
                finally:
                    print("trio cleaned up", flush=True)

            def on_started(bridge, port):
                print("listening", port, flush=True)

            sys.exit(run_node(trio_main, make_app, on_started=on_started))
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening"), line
        port = int(line.split()[1])

        async def ask() -> bytes:
            async with aiohttp.ClientSession() as session:
                async with session.post(f"http://{HOST}:{port}/echo", data=b"ping") as response:
                    return await response.read()

        assert asyncio.run(ask()) == b"ping"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=STEP_TIMEOUT_S)
        assert process.returncode == 0
        assert "trio cleaned up" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_configure_gc_freezes_startup_and_still_collects_young_cycles() -> None:
    """In a process of its own (the collector is process-wide): after configure_gc the
    startup objects are frozen, the thresholds are the node's, and cyclic garbage made
    later is still reclaimed by the automatic collections, with no gc.collect()."""
    script = textwrap.dedent("""
        import gc, weakref
        from node.runtime import GC_THRESHOLDS, configure_gc, get_frozen_object_count
        configure_gc()
        assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()
        assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
        assert get_frozen_object_count() == gc.get_freeze_count()
        freed = [0]
        class Node:
            pass
        def on_free(_ref):
            freed[0] += 1
        refs = []
        for _ in range(300_000):
            node = Node()
            node.self = node  # a cycle: only the collector frees it
            refs.append(weakref.ref(node, on_free))
            del node
        print(freed[0])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=120,
                            env={**os.environ, "PYTHONPATH": "."})
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 200_000  # all but the last threshold's worth
