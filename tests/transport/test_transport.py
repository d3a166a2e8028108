"""The libp2p transport on real sockets on 127.0.0.1: mesh, refusal, limits, reconnects."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from node.keys import KeyPair
from node.transport import (
    DROP_FAULT_LOSS,
    DROP_INBOUND_FULL,
    DROP_OVERSIZE_IN,
    DROP_OVERSIZE_OUT,
    DROP_QUEUE_FULL,
    PROTOCOL_IDS,
    FaultConfig,
    InboundQueue,
    LinkFault,
    TrafficClass,
    Transport,
    TransportConfig,
    ValidatorAddress,
    create_libp2p_host,
    encode_frame_header,
    get_multiaddr,
    install_yamux_window_rule,
    resolve_multiaddr,
)

HOST = "127.0.0.1"
STEP_TIMEOUT_S = 15.0


def get_free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def make_validator_set(n: int) -> tuple[list[KeyPair], list[ValidatorAddress]]:
    keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(n)]
    validators = [
        ValidatorAddress(i, key.public_key, HOST, get_free_port()) for i, key in enumerate(keys)
    ]
    return keys, validators


def make_transport(
    keys: Sequence[KeyPair],
    validators: Sequence[ValidatorAddress],
    index: int,
    config: TransportConfig | None = None,
) -> Transport:
    return Transport(keys[index], HOST, validators[index].port, validators, config)


@asynccontextmanager
async def running(*transports: Transport) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for transport in transports:
            await nursery.start(transport.run)
        yield
        nursery.cancel_scope.cancel()


async def wait_until_connected(transport: Transport, peers: Sequence[int]) -> None:
    while set(transport.get_connected_peers()) != set(peers):
        await trio.sleep(0.02)


async def receive_n(transport: Transport, count: int, traffic: TrafficClass
                    = TrafficClass.CONSENSUS) -> list[tuple[int, bytes]]:
    return [await transport.inbound(traffic).receive() for _ in range(count)]


def test_full_mesh_send_and_broadcast_carry_sender_indices() -> None:
    async def main() -> None:
        keys, validators = make_validator_set(4)
        transports = [make_transport(keys, validators, i) for i in range(4)]
        async with running(*transports):
            with trio.fail_after(STEP_TIMEOUT_S):
                for t in transports:
                    assert t.broadcast(f"hello from {t.own_index}".encode()) == 3
                for t in transports:
                    got = sorted(await receive_n(t, 3))
                    others = [i for i in range(4) if i != t.own_index]
                    assert got == [(i, f"hello from {i}".encode()) for i in others]
                # Point-to-point both ways, on both traffic classes, in order.
                for i in range(5):
                    assert transports[0].send(2, b"c%d" % i)
                    assert transports[2].send(0, b"t%d" % i, TrafficClass.TRANSACTIONS)
                assert await receive_n(transports[2], 5) == [(0, b"c%d" % i) for i in range(5)]
                assert await receive_n(transports[0], 5, TrafficClass.TRANSACTIONS) == [
                    (2, b"t%d" % i) for i in range(5)
                ]
                await wait_until_connected(transports[1], [0, 2, 3])
            metrics = transports[0].get_metrics()
            assert metrics["peers"]["2"]["frames_sent"] == 6
            assert metrics["peers"]["2"]["frames_received"] == 6
            assert sum(metrics["drops"].values()) == 0

    trio.run(main)


def test_validators_named_by_host_name_are_resolved_and_reached() -> None:
    async def main() -> None:
        keys, by_address = make_validator_set(3)
        named = [ValidatorAddress(v.index, v.public_key, "localhost", v.port) for v in by_address]
        transports = [make_transport(keys, named, i) for i in range(3)]
        async with running(*transports):
            with trio.fail_after(STEP_TIMEOUT_S):
                assert transports[0].broadcast(b"by name") == 2
                assert await receive_n(transports[1], 1) == [(0, b"by name")]
                assert await receive_n(transports[2], 1) == [(0, b"by name")]
        assert str(await resolve_multiaddr("localhost", 7)) in ("/ip4/127.0.0.1/tcp/7",
                                                                 "/ip6/::1/tcp/7")
        assert str(await resolve_multiaddr("::1", 7)) == "/ip6/::1/tcp/7"
        assert str(get_multiaddr("hospital-a.example", 7)) == "/dns4/hospital-a.example/tcp/7"
        with pytest.raises(OSError):
            await resolve_multiaddr("no-such-host.invalid", 7)

    trio.run(main)


def test_large_frames_arrive_intact() -> None:
    async def main() -> None:
        keys, validators = make_validator_set(2)
        a, b = (make_transport(keys, validators, i) for i in range(2))
        frames = [bytes([i]) * size for i, size in enumerate([0, 1, 65536, 1_000_003])]
        async with running(a, b):
            with trio.fail_after(STEP_TIMEOUT_S):
                for frame in frames:
                    assert a.send(1, frame)
                assert await receive_n(b, len(frames)) == [(0, f) for f in frames]

    trio.run(main)


def test_yamux_credit_is_returned_per_half_window_not_per_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small frames one at a time: libp2p 0.8.1 answered every read with a WINDOW_UPDATE;
    with go-yamux's rule the receiver sends one per half window consumed. 16 MiB more
    than fills the window many times over, so credit must keep flowing or it stalls."""
    updates: list[int] = []
    original = YamuxStream.send_window_update

    async def counting(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counting)

    async def main() -> None:
        keys, validators = make_validator_set(2)
        a, b = (make_transport(keys, validators, i) for i in range(2))
        async with running(a, b):
            with trio.fail_after(STEP_TIMEOUT_S):
                assert a.send(1, b"hello")
                assert await receive_n(b, 1) == [(0, b"hello")]
                updates.clear()
                small = [i.to_bytes(4, "little") * 100 for i in range(1000)]  # 400 KB
                for frame in small:  # fewer than the inbound queue holds
                    await a.send_wait(1, frame, TrafficClass.TRANSACTIONS)
                    await trio.sleep(0)  # a trickle: about one frame per read
                got = await receive_n(b, len(small), TrafficClass.TRANSACTIONS)
                assert got == [(0, f) for f in small]
                small_updates = len(updates)
                big = bytes(range(256)) * (16 * 1024 * 1024 // 256 - 64)
                assert a.send(1, big)
                assert await receive_n(b, 1) == [(0, big)]
        assert 1 <= small_updates <= 10  # 400 KB over a 256 KiB window: a few, not 1,000
        half_window_bytes = 128 * 1024
        assert all(increment >= half_window_bytes for increment in updates)

    install_yamux_window_rule()
    trio.run(main)


def test_non_validator_peer_is_refused_and_counted() -> None:
    async def main() -> None:
        keys, validators = make_validator_set(2)
        a, b = (make_transport(keys, validators, i) for i in range(2))
        stranger = create_libp2p_host(KeyPair.from_seed(b"\x99" * 32))
        async with running(a, b), stranger.run([get_multiaddr(HOST, get_free_port())]):
            with trio.fail_after(STEP_TIMEOUT_S):
                a_id = ID.from_base58(keys[0].peer_id)
                frame = b"forged vote"
                for _ in range(3):
                    try:
                        await stranger.connect(PeerInfo(a_id, [get_multiaddr(HOST, a.listen_port)]))
                        stream = await stranger.new_stream(
                            a_id, [PROTOCOL_IDS[TrafficClass.CONSENSUS]]
                        )
                        await stream.write(encode_frame_header(frame) + frame)
                    except Exception:
                        pass  # refused: exactly what we want
                    await trio.sleep(0.1)
                while a.refused_connections + a.refused_streams == 0:
                    await trio.sleep(0.02)
                # A genuine frame sent afterwards is the first thing delivered.
                assert b.send(0, b"genuine")
                assert await a.inbound().receive() == (1, b"genuine")
                with pytest.raises(trio.WouldBlock):
                    a.inbound().receive_nowait()
            assert a.get_metrics()["refused_connections"] >= 1

    trio.run(main)


def test_oversize_frames_are_refused_and_counted_then_stream_recovers() -> None:
    async def main() -> None:
        keys, validators = make_validator_set(2)
        small = TransportConfig(frame_size_max_bytes=1024)
        large = TransportConfig(frame_size_max_bytes=4096)
        a = make_transport(keys, validators, 0, large)
        b = make_transport(keys, validators, 1, small)
        async with running(a, b):
            with trio.fail_after(STEP_TIMEOUT_S):
                # Refused at the sender: over its own limit.
                assert not a.send(1, b"x" * 5000)
                assert a.metrics[1].drops[DROP_OVERSIZE_OUT] == 1
                # Refused at the receiver: over its limit, stream reset.
                assert a.send(1, b"y" * 2000)
                while b.metrics[0].drops[DROP_OVERSIZE_IN] == 0:
                    await trio.sleep(0.02)
                # The sender redials and a frame within limits flows again. A frame written
                # before the sender has seen the reset dies with the old stream (TCP cannot
                # tell it apart from a delivered one), so keep offering until one arrives.
                received: tuple[int, bytes] | None = None
                while received is None:
                    assert a.send(1, b"ok")
                    with trio.move_on_after(0.5):
                        received = await b.inbound().receive()
                assert received == (0, b"ok")
                assert b.metrics[0].frames_received >= 1

    trio.run(main)


def test_outbound_queue_overflow_is_counted() -> None:
    async def main() -> None:
        keys, validators = make_validator_set(2)
        config = TransportConfig(
            outbound_queue_frames={TrafficClass.CONSENSUS: 4, TrafficClass.TRANSACTIONS: 2}
        )
        a = make_transport(keys, validators, 0, config)  # peer 1 never starts
        async with running(a):
            accepted = [a.send(1, b"f%d" % i) for i in range(10)]
            accepted_tx = [a.send(1, b"t", TrafficClass.TRANSACTIONS) for _ in range(5)]
            assert accepted == [True] * 4 + [False] * 6
            assert accepted_tx == [True] * 2 + [False] * 3
            assert a.metrics[1].drops[DROP_QUEUE_FULL] == 9
            assert a.get_metrics()["drops"][DROP_QUEUE_FULL] == 9

    trio.run(main)


def test_inbound_channel_overflow_is_counted() -> None:
    async def main() -> None:
        keys, validators = make_validator_set(2)
        config = TransportConfig(
            inbound_queue_frames={TrafficClass.CONSENSUS: 3, TrafficClass.TRANSACTIONS: 3}
        )
        a = make_transport(keys, validators, 0)
        b = make_transport(keys, validators, 1, config)
        async with running(a, b):
            with trio.fail_after(STEP_TIMEOUT_S):
                for i in range(10):
                    assert a.send(1, b"%d" % i)
                while b.metrics[0].frames_received < 10:
                    await trio.sleep(0.02)
            assert b.metrics[0].drops[DROP_INBOUND_FULL] == 7
            assert await receive_n(b, 3) == [(0, b"0"), (0, b"1"), (0, b"2")]

    trio.run(main)


def test_restarted_peer_is_reconnected() -> None:
    async def main() -> None:
        keys, validators = make_validator_set(3)
        a, c = make_transport(keys, validators, 0), make_transport(keys, validators, 2)
        async with running(a, c):
            with trio.fail_after(STEP_TIMEOUT_S):
                b = make_transport(keys, validators, 1)
                async with running(b):
                    assert a.send(1, b"before")
                    assert await b.inbound().receive() == (0, b"before")
                while 1 in a.get_connected_peers():
                    await trio.sleep(0.02)
                b_again = make_transport(keys, validators, 1)
                async with running(b_again):
                    assert a.send(1, b"after")
                    assert c.send(1, b"from c")
                    got = sorted(await receive_n(b_again, 2))
                    assert got == [(0, b"after"), (2, b"from c")]
                    assert b_again.send(0, b"back")
                    assert await a.inbound().receive() == (1, b"back")
            assert a.metrics[1].reconnects >= 1
            assert a.get_metrics()["reconnects"] >= 1

    trio.run(main)


def test_fault_layer_loses_frames_deterministically_and_counts_them() -> None:
    def run_once() -> list[bytes]:
        received: list[bytes] = []

        async def main() -> None:
            keys, validators = make_validator_set(2)
            fault = FaultConfig(seed=7, links={(0, 1): LinkFault(0.01, 0.5)})
            a = make_transport(keys, validators, 0, TransportConfig(fault=fault))
            b = make_transport(keys, validators, 1)
            async with running(a, b):
                with trio.fail_after(STEP_TIMEOUT_S):
                    for i in range(40):
                        assert a.send(1, b"%d" % i)
                    lost = 0
                    while a.metrics[1].frames_sent + lost < 40:
                        await trio.sleep(0.02)
                        lost = a.metrics[1].drops[DROP_FAULT_LOSS]
                    for _ in range(a.metrics[1].frames_sent):
                        received.append((await b.inbound().receive())[1])
                    assert 0 < lost < 40
                    assert len(received) == 40 - lost
                    # The reverse link has no fault.
                    assert b.send(0, b"clean")
                    assert await a.inbound().receive() == (1, b"clean")

        trio.run(main)
        return received

    assert run_once() == run_once()


def test_transport_rejects_inconsistent_validator_sets() -> None:
    keys, validators = make_validator_set(2)
    outsider = KeyPair.from_seed(b"\x42" * 32)
    with pytest.raises(Exception, match="own key"):
        Transport(outsider, HOST, 1, validators)
    duplicate = [validators[0], ValidatorAddress(1, keys[0].public_key, HOST, 2)]
    with pytest.raises(Exception, match="share a public key"):
        Transport(keys[0], HOST, 1, duplicate)


def test_inbound_queue_is_bounded_in_frames_and_in_bytes_and_frees_what_is_taken() -> None:
    async def body() -> None:
        queue = InboundQueue(frames_max=3, bytes_max=100)
        assert queue.put_nowait((0, b"a" * 60)) and queue.put_nowait((1, b"b" * 40))
        assert not queue.put_nowait((2, b"c"))  # 100 bytes queued: one more byte is refused
        assert await queue.receive() == (0, b"a" * 60)
        assert queue.bytes_queued == 40
        assert queue.put_nowait((2, b"c" * 30)) and queue.put_nowait((3, b""))
        assert not queue.put_nowait((4, b""))  # three frames queued
        assert [queue.receive_nowait()[0] for _ in range(3)] == [1, 2, 3]
        assert queue.bytes_queued == 0

    trio.run(body)
