"""Validator-only direct streams over libp2p (Noise + Yamux), with counted drops.

How it works. Each validator runs one libp2p host whose identity is its
Ed25519 validator key, so its peer id is ``get_peer_id(public_key)`` and the
validator set (from genesis) alone says who may take part. For every other
validator and every traffic class the transport keeps ONE long-lived outbound
stream, fed by a bounded queue and owned by one writer task that dials with
exponential backoff and redials after any failure. Inbound streams are only
read. A frame on the wire is a u32 little-endian length followed by that many
bytes; a frame over ``frame_size_max_bytes`` is refused, counted and its
stream reset.

Traffic classes. Consensus frames and transaction-batch frames use separate
protocol ids, hence separate Yamux streams, separate outbound queues and
separate inbound channels. A transaction flood fills only the transaction
queue (its overflow is counted) and the node reads the consensus channel
first, so it cannot starve consensus. Yamux interleaves the two streams on
one connection in chunks of at most 64 KiB.

Nothing is dropped silently: a full outbound queue, a full inbound channel,
a frame lost when a stream breaks, an oversize frame and a frame the test
fault layer discards each bump a counter in ``get_metrics()``. A stream or
connection from a peer id outside the validator set is reset (or closed) and
counted before a single byte of its payload is read.

The optional fault layer (tests only, off by default) delays and loses
frames per directed link, deterministically from a seed.

Flow control. py-libp2p 0.8.1's Yamux answers every read with a WINDOW_UPDATE
frame (encrypted and written on its own), so each small frame received cost a
frame sent back. ``install_yamux_window_rule`` applies go-yamux's rule instead:
credit is returned once it reaches half the receive window. Under load that
halves the frames each node handles (``bcfl bench transport --nodes 4``: 200-byte
round trips 1,464-1,555/s -> 2,520-2,531/s, one-way +37%).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair as Libp2pKeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from node.keys import KeyPair, get_peer_id

logger = logging.getLogger(__name__)

FRAME_HEADER = struct.Struct("<I")
# 16 MiB: the node caps a block at a quarter of a frame (node.node.BLOCK_SIZE_CAP_BYTES),
# and a learning round's d = 1e6 delta is a 2 MB tx, so blocks need 4 MiB (two deltas).
FRAME_SIZE_MAX_BYTES = 16 * 1024 * 1024
READ_CHUNK_MAX_BYTES = 256 * 1024
WRITE_BATCH_FRAMES_MAX = 256
WRITE_BATCH_BYTES_MAX = 256 * 1024
LOOPBACK_HOST = "127.0.0.1"


class TrafficClass(IntEnum):
    """Which queue, stream and inbound channel a frame travels on."""

    CONSENSUS = 0
    TRANSACTIONS = 1


PROTOCOL_IDS: dict[TrafficClass, TProtocol] = {
    TrafficClass.CONSENSUS: TProtocol("/bcfl/consensus/1.0.0"),
    TrafficClass.TRANSACTIONS: TProtocol("/bcfl/txbatch/1.0.0"),
}

# Drop reasons; every dropped frame is counted under exactly one of them.
DROP_QUEUE_FULL = "outbound_queue_full"
DROP_INBOUND_FULL = "inbound_channel_full"
DROP_OVERSIZE_OUT = "oversize_outbound"
DROP_OVERSIZE_IN = "oversize_inbound"
DROP_FAULT_LOSS = "fault_loss"
DROP_SHUTDOWN = "shutdown"
DROP_REASONS = (
    DROP_QUEUE_FULL,
    DROP_INBOUND_FULL,
    DROP_OVERSIZE_OUT,
    DROP_OVERSIZE_IN,
    DROP_FAULT_LOSS,
    DROP_SHUTDOWN,
)


class TransportError(Exception):
    """The transport was configured inconsistently (unknown peer, bad validator set)."""


@dataclass(frozen=True)
class ValidatorAddress:
    """One member of the validator set, as genesis lists it."""

    index: int
    public_key: bytes
    host: str
    port: int


@dataclass(frozen=True)
class LinkFault:
    """Test-only fault on one directed link: a fixed extra delay and a loss probability."""

    delay_s: float = 0.0
    loss_probability: float = 0.0

    def __post_init__(self) -> None:
        assert self.delay_s >= 0.0
        assert 0.0 <= self.loss_probability <= 1.0


@dataclass(frozen=True)
class FaultConfig:
    """Faults keyed by (from_index, to_index); links not listed use ``default``."""

    seed: int
    links: dict[tuple[int, int], LinkFault] = field(default_factory=dict)
    default: LinkFault = LinkFault()

    def get_link(self, from_index: int, to_index: int) -> LinkFault:
        return self.links.get((from_index, to_index), self.default)

    def compute_link_rng(self, from_index: int, to_index: int, traffic: int) -> random.Random:
        material = f"{self.seed}/{from_index}/{to_index}/{traffic}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "little"))


@dataclass(frozen=True)
class TransportConfig:
    """Limits of the transport; every queue is bounded."""

    frame_size_max_bytes: int = FRAME_SIZE_MAX_BYTES
    outbound_queue_frames: dict[TrafficClass, int] = field(
        default_factory=lambda: {TrafficClass.CONSENSUS: 1024, TrafficClass.TRANSACTIONS: 256}
    )
    inbound_queue_frames: dict[TrafficClass, int] = field(
        default_factory=lambda: {TrafficClass.CONSENSUS: 4096, TrafficClass.TRANSACTIONS: 1024}
    )
    # Bytes too: frames may be 16 MiB, so a count alone would allow gigabytes queued.
    inbound_queue_bytes: dict[TrafficClass, int] = field(
        default_factory=lambda: {TrafficClass.CONSENSUS: 4 * FRAME_SIZE_MAX_BYTES,
                                 TrafficClass.TRANSACTIONS: 2 * FRAME_SIZE_MAX_BYTES}
    )
    dial_backoff_initial_s: float = 0.05
    dial_backoff_max_s: float = 2.0
    dial_timeout_s: float = 5.0
    stream_open_timeout_s: float = 2.0
    fault: FaultConfig | None = None

    def __post_init__(self) -> None:
        assert 0 < self.frame_size_max_bytes < 2**32
        assert all(n > 0 for n in self.outbound_queue_frames.values())
        assert all(n >= self.frame_size_max_bytes for n in self.inbound_queue_bytes.values())
        assert all(n > 0 for n in self.inbound_queue_frames.values())
        assert set(self.outbound_queue_frames) == set(TrafficClass)
        assert set(self.inbound_queue_frames) == set(TrafficClass)
        assert 0 < self.dial_backoff_initial_s <= self.dial_backoff_max_s


@dataclass
class PeerMetrics:
    """Counters for one remote validator."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    connects: int = 0
    reconnects: int = 0
    dial_failures: int = 0
    drops: dict[str, int] = field(default_factory=lambda: {r: 0 for r in DROP_REASONS})

    def to_json(self) -> dict[str, Any]:
        return {
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "frames_received": self.frames_received,
            "bytes_received": self.bytes_received,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "dial_failures": self.dial_failures,
            "drops": dict(self.drops),
        }


@dataclass
class _Outbound:
    """An item on an outbound queue: the frame and when it was queued (for fault delays)."""

    frame: bytes
    queued_at: float


def compute_libp2p_key_pair(key: KeyPair) -> Libp2pKeyPair:
    """libp2p's view of a validator key: the same Ed25519 seed, hence the same peer id."""
    private_key = Ed25519PrivateKey.from_bytes(key.seed)
    return Libp2pKeyPair(private_key, private_key.get_public_key())


_yamux_window_rule_installed = False


def install_yamux_window_rule() -> None:
    """Send Yamux credit only once it reaches half the receive window, as go-yamux does
    (``sendWindowUpdate``: ``delta < max/2`` is skipped). py-libp2p 0.8.1 sends an
    update after every read whatever its size; past the check its own code runs, so
    window auto-tuning is unchanged. The sender still has half a window of room when
    credit is withheld, and a reader that drains its buffer always returns it, so no
    stream waits on credit that is never sent. Idempotent."""
    global _yamux_window_rule_installed
    if _yamux_window_rule_installed:
        return
    _yamux_window_rule_installed = True
    original = YamuxStream._auto_tune_and_send_window_update

    async def send_window_update_at_half(self: YamuxStream, *, bytes_read: int = 0) -> None:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        credit = self.target_recv_window - (self.recv_window + buffered)
        if credit < self.target_recv_window // 2:
            return
        await original(self, bytes_read=bytes_read)

    YamuxStream._auto_tune_and_send_window_update = send_window_update_at_half  # type: ignore[method-assign]


def create_libp2p_host(key: KeyPair) -> IHost:
    """A TCP host with Noise security and Yamux muxing only (no TLS, secio, plaintext, mplex)."""
    install_yamux_window_rule()
    libp2p_key = compute_libp2p_key_pair(key)
    noise = NoiseTransport(libp2p_key, noise_privkey=create_new_x25519_key_pair().private_key)
    return new_host(
        key_pair=libp2p_key,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
    )


def get_multiaddr(host: str, port: int) -> multiaddr.Multiaddr:
    """``/ip4`` or ``/ip6`` for an address, ``/dns4`` for a host name (to show; to dial one,
    :func:`resolve_multiaddr`)."""
    if not is_ip_address(host):
        return multiaddr.Multiaddr(f"/dns4/{host}/tcp/{port}")
    return multiaddr.Multiaddr(f"/ip{ipaddress.ip_address(host).version}/{host}/tcp/{port}")


async def resolve_multiaddr(host: str, port: int) -> multiaddr.Multiaddr:
    """The address to dial or listen on: an IP as it is, a host name (genesis allows them)
    resolved by the system, /etc/hosts included, IPv4 first since nodes listen on 0.0.0.0.

    Resolved here, at every dial, because libp2p's own ``/dns`` resolver asks name servers
    only, and a name it cannot resolve it dials as it is, which always fails. Raises
    ``OSError`` when the name does not resolve."""
    if not is_ip_address(host):
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        ipv4 = [info[4][0] for info in infos if info[0] == trio.socket.AF_INET]
        ipv6 = [info[4][0] for info in infos if info[0] == trio.socket.AF_INET6]
        if not ipv4 + ipv6:
            raise OSError(f"{host} resolves to no IPv4 or IPv6 address")
        host = (ipv4 + ipv6)[0]
    return get_multiaddr(host, port)


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def encode_frame_header(frame: bytes) -> bytes:
    return FRAME_HEADER.pack(len(frame))


class _RefuseStrangers(INotifee):
    """Closes every connection whose remote peer id is not a validator."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        if self.transport.get_index_of_peer(peer_id) is None:
            self.transport.refused_connections += 1
            logger.info("closing connection from non-validator peer %s", peer_id)
            await conn.close()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class Transport:
    """Direct, validator-only, length-prefixed frame streams between validators.

    Use ``async with transport.running(): ...`` (or ``nursery.start(transport.run)``);
    then ``send``/``broadcast`` enqueue without blocking and
    ``inbound(TrafficClass.X)`` yields ``(from_index, frame)`` tuples.
    """

    def __init__(
        self,
        key: KeyPair,
        listen_host: str,
        listen_port: int,
        validators: Sequence[ValidatorAddress],
        config: TransportConfig | None = None,
    ) -> None:
        self.config = config or TransportConfig()
        self.key = key
        self.listen_host = listen_host
        self.listen_port = listen_port
        indices = [v.index for v in validators]
        if len(set(indices)) != len(indices):
            raise TransportError("validator indices must be unique")
        self.validators = {v.index: v for v in validators}
        self.peer_ids: dict[int, ID] = {
            v.index: ID.from_base58(get_peer_id(v.public_key)) for v in validators
        }
        self.index_by_peer_id: dict[ID, int] = {p: i for i, p in self.peer_ids.items()}
        if len(self.index_by_peer_id) != len(self.peer_ids):
            raise TransportError("two validators share a public key")
        own = [v.index for v in validators if v.public_key == key.public_key]
        if len(own) != 1:
            raise TransportError("own key is not exactly once in the validator set")
        self.own_index = own[0]
        self.peer_indices = sorted(i for i in self.validators if i != self.own_index)

        self.metrics: dict[int, PeerMetrics] = {i: PeerMetrics() for i in self.peer_indices}
        self.refused_connections = 0
        self.refused_streams = 0
        self.stream_errors = 0
        self._connected: dict[tuple[int, TrafficClass], bool] = {}

        self._outbound_send: dict[tuple[int, TrafficClass], trio.MemorySendChannel[_Outbound]] = {}
        self._outbound_receive: dict[
            tuple[int, TrafficClass], trio.MemoryReceiveChannel[_Outbound]
        ] = {}
        for peer in self.peer_indices:
            for traffic in TrafficClass:
                size = self.config.outbound_queue_frames[traffic]
                send, receive = trio.open_memory_channel[_Outbound](size)
                self._outbound_send[(peer, traffic)] = send
                self._outbound_receive[(peer, traffic)] = receive
                self._connected[(peer, traffic)] = False

        self._inbound: dict[TrafficClass, InboundQueue] = {
            traffic: InboundQueue(self.config.inbound_queue_frames[traffic],
                                  self.config.inbound_queue_bytes[traffic])
            for traffic in TrafficClass
        }

        self.host: IHost | None = None
        self._running = False

    # -- public API -------------------------------------------------------------

    def inbound(self, traffic: TrafficClass = TrafficClass.CONSENSUS) -> InboundQueue:
        """The bounded queue of ``(from_index, frame)`` received on ``traffic``."""
        return self._inbound[traffic]

    def send(
        self, to_index: int, frame: bytes, traffic: TrafficClass = TrafficClass.CONSENSUS
    ) -> bool:
        """Queue ``frame`` for ``to_index`` without blocking; False (and counted) if dropped."""
        if to_index not in self.metrics:
            raise TransportError(f"no peer validator with index {to_index}")
        metrics = self.metrics[to_index]
        if len(frame) > self.config.frame_size_max_bytes:
            metrics.drops[DROP_OVERSIZE_OUT] += 1
            return False
        item = _Outbound(bytes(frame), trio.current_time())
        try:
            self._outbound_send[(to_index, traffic)].send_nowait(item)
        except trio.WouldBlock:
            metrics.drops[DROP_QUEUE_FULL] += 1
            return False
        return True

    async def send_wait(
        self, to_index: int, frame: bytes, traffic: TrafficClass = TrafficClass.CONSENSUS
    ) -> None:
        """Queue ``frame``, waiting for room: for producers that want backpressure, not drops."""
        if to_index not in self.metrics:
            raise TransportError(f"no peer validator with index {to_index}")
        if len(frame) > self.config.frame_size_max_bytes:
            self.metrics[to_index].drops[DROP_OVERSIZE_OUT] += 1
            raise TransportError(f"frame of {len(frame)} bytes is over the limit")
        item = _Outbound(bytes(frame), trio.current_time())
        await self._outbound_send[(to_index, traffic)].send(item)

    def broadcast(self, frame: bytes, traffic: TrafficClass = TrafficClass.CONSENSUS) -> int:
        """Queue ``frame`` for every other validator; returns how many queues accepted it."""
        return sum(self.send(peer, frame, traffic) for peer in self.peer_indices)

    def get_index_of_peer(self, peer_id: ID) -> int | None:
        index = self.index_by_peer_id.get(peer_id)
        return None if index == self.own_index else index

    def get_connected_peers(self) -> list[int]:
        """Peers whose outbound consensus stream is currently open."""
        return [p for p in self.peer_indices if self._connected[(p, TrafficClass.CONSENSUS)]]

    def get_metrics(self) -> dict[str, Any]:
        """JSON-ready counters: per peer, drop totals by reason, refusals, connected peers."""
        drops = {r: sum(m.drops[r] for m in self.metrics.values()) for r in DROP_REASONS}
        return {
            "own_index": self.own_index,
            "peers": {str(i): m.to_json() for i, m in self.metrics.items()},
            "drops": drops,
            "refused_connections": self.refused_connections,
            "refused_streams": self.refused_streams,
            "stream_errors": self.stream_errors,
            "connected_peers": self.get_connected_peers(),
            "reconnects": sum(m.reconnects for m in self.metrics.values()),
        }

    def get_listen_multiaddr(self) -> str:
        return str(get_multiaddr(self.listen_host, self.listen_port)) + "/p2p/" + str(
            self.peer_ids[self.own_index]
        )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, keep streams to every peer, until cancelled; ``task_status`` once listening."""
        assert not self._running, "a Transport runs once"
        self._running = True
        # libp2p logs every failed TCP dial at ERROR; a peer that is down is expected
        # and counted in ``dial_failures`` instead.
        logging.getLogger("libp2p.transport.tcp.tcp").setLevel(logging.CRITICAL)
        host = create_libp2p_host(self.key)
        self.host = host
        for traffic, protocol in PROTOCOL_IDS.items():
            host.set_stream_handler(protocol, self._make_stream_handler(traffic))
        host.get_network().register_notifee(_RefuseStrangers(self))
        try:
            listen_address = await resolve_multiaddr(self.listen_host, self.listen_port)
        except OSError as exc:
            raise TransportError(f"cannot listen on {self.listen_host}: {exc}") from None
        try:
            async with host.run([listen_address]):
                async with trio.open_nursery() as nursery:
                    for peer in self.peer_indices:
                        for traffic in TrafficClass:
                            nursery.start_soon(self._keep_outbound_stream, peer, traffic)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._count_queued_as_shutdown()
            for key in self._connected:
                self._connected[key] = False

    # -- outbound ---------------------------------------------------------------

    async def _keep_outbound_stream(self, peer: int, traffic: TrafficClass) -> None:
        """Dial, write queued frames, and redial after failures, with bounded backoff."""
        backoff_s = self.config.dial_backoff_initial_s
        pending: list[_Outbound] = []  # frames whose write failed, to rewrite first
        rng = (
            self.config.fault.compute_link_rng(self.own_index, peer, traffic)
            if self.config.fault is not None
            else None
        )
        while True:
            stream = await self._open_stream(peer, traffic)
            if stream is None:
                self.metrics[peer].dial_failures += 1
                await trio.sleep(backoff_s)
                backoff_s = min(2 * backoff_s, self.config.dial_backoff_max_s)
                continue
            backoff_s = self.config.dial_backoff_initial_s
            metrics = self.metrics[peer]
            if traffic == TrafficClass.CONSENSUS:
                metrics.reconnects += metrics.connects > 0
                metrics.connects += 1
            self._connected[(peer, traffic)] = True
            try:
                await self._write_until_broken(stream, peer, traffic, pending, rng)
            finally:
                self._connected[(peer, traffic)] = False
                with trio.CancelScope(shield=True):
                    await _reset_quietly(stream)
            assert len(pending) <= WRITE_BATCH_FRAMES_MAX
            # Give libp2p a moment to notice a dead connection before redialling.
            await trio.sleep(backoff_s)

    async def _open_stream(self, peer: int, traffic: TrafficClass) -> INetStream | None:
        host = self.host
        assert host is not None
        peer_id = self.peer_ids[peer]
        v = self.validators[peer]
        network: Any = host.get_network()
        # libp2p blacklists a peer for 60 s after a failed dial; we do our own backoff.
        network.unblock_peer(peer_id)
        # libp2p keeps a dead connection listed for a while, and new_stream on it hangs.
        for conn in list(network.get_connections(peer_id)):
            if conn.is_closed or conn.muxed_conn.is_closed:
                await _close_quietly(conn)
        stream: INetStream | None = None
        with trio.move_on_after(self.config.dial_timeout_s):
            try:
                address = await resolve_multiaddr(v.host, v.port)
                await host.connect(PeerInfo(peer_id, [address]))
            except Exception as exc:  # libp2p raises many unrelated types on a failed dial
                logger.debug("dial %d/%s failed: %r", peer, traffic.name, exc)
                return None
        with trio.move_on_after(self.config.stream_open_timeout_s):
            try:
                stream = await host.new_stream(peer_id, [PROTOCOL_IDS[traffic]])
            except Exception as exc:
                logger.debug("new stream %d/%s failed: %r", peer, traffic.name, exc)
                return None
        if stream is None:
            # The connection looks alive but cannot open a stream: drop it so the
            # next attempt dials afresh.
            logger.debug("new stream %d/%s timed out; closing the connection", peer, traffic.name)
            self.stream_errors += 1
            with trio.move_on_after(self.config.dial_timeout_s):
                await host.disconnect(peer_id)
        return stream

    async def _write_until_broken(
        self,
        stream: INetStream,
        peer: int,
        traffic: TrafficClass,
        pending: list[_Outbound],
        rng: random.Random | None,
    ) -> None:
        """Write frames until the stream breaks; frames of a failed write stay in ``pending``.

        Without faults, frames already queued are coalesced into one write (one
        Noise encryption and one Yamux frame per 64 KiB, not per frame), which
        is what makes small consensus frames cheap.
        """
        receive = self._outbound_receive[(peer, traffic)]
        metrics = self.metrics[peer]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_for_close, stream, nursery.cancel_scope)
            while True:
                if not pending:
                    pending.append(await receive.receive())
                    if rng is None:
                        _take_ready(receive, pending)
                    elif not self._apply_fault(peer, pending[0], rng, metrics):
                        pending.clear()
                        continue
                    else:
                        fault = self._get_fault(peer)
                        await trio.sleep_until(pending[0].queued_at + fault.delay_s)
                data = b"".join(encode_frame_header(item.frame) + item.frame for item in pending)
                try:
                    await stream.write(data)
                except Exception as exc:
                    # These frames are written again on the next stream: a duplicate
                    # at worst, which the layers above tolerate; never a silent loss.
                    self.stream_errors += 1
                    logger.debug("write to %d/%s failed: %r", peer, traffic.name, exc)
                    nursery.cancel_scope.cancel()
                    return
                metrics.frames_sent += len(pending)
                metrics.bytes_sent += sum(len(item.frame) for item in pending)
                pending.clear()

    def _get_fault(self, peer: int) -> LinkFault:
        assert self.config.fault is not None
        return self.config.fault.get_link(self.own_index, peer)

    def _apply_fault(
        self, peer: int, item: _Outbound, rng: random.Random, metrics: PeerMetrics
    ) -> bool:
        """False if the fault layer loses this frame (counted)."""
        fault = self._get_fault(peer)
        if fault.loss_probability > 0.0 and rng.random() < fault.loss_probability:
            metrics.drops[DROP_FAULT_LOSS] += 1
            return False
        return True

    def _count_queued_as_shutdown(self) -> None:
        for (peer, _), receive in self._outbound_receive.items():
            while True:
                try:
                    receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                self.metrics[peer].drops[DROP_SHUTDOWN] += 1

    # -- inbound ----------------------------------------------------------------

    def _make_stream_handler(self, traffic: TrafficClass) -> Any:
        async def handle(stream: INetStream) -> None:
            await self._read_stream(stream, traffic)

        return handle

    async def _read_stream(self, stream: INetStream, traffic: TrafficClass) -> None:
        peer = self.get_index_of_peer(stream.muxed_conn.peer_id)
        if peer is None:
            self.refused_streams += 1
            logger.info("refusing stream from non-validator %s", stream.muxed_conn.peer_id)
            await _reset_quietly(stream)
            return
        metrics = self.metrics[peer]
        inbound = self._inbound[traffic]
        reader = _FrameReader(stream)
        try:
            while True:
                length = FRAME_HEADER.unpack(await reader.read_exactly(FRAME_HEADER.size))[0]
                if length > self.config.frame_size_max_bytes:
                    metrics.drops[DROP_OVERSIZE_IN] += 1
                    logger.warning("peer %d sent a %d-byte frame; resetting", peer, length)
                    return
                frame = await reader.read_exactly(length)
                metrics.frames_received += 1
                metrics.bytes_received += length
                if not inbound.put_nowait((peer, frame)):
                    metrics.drops[DROP_INBOUND_FULL] += 1
        except _StreamEnded:
            return
        except Exception as exc:  # a broken stream: the peer redials on its side
            logger.debug("inbound stream from %d/%s ended: %r", peer, traffic.name, exc)
            return
        finally:
            with trio.CancelScope(shield=True):
                await _reset_quietly(stream)


class InboundQueue:
    """Received ``(from_index, frame)`` pairs, bounded in frames and in bytes.

    ``put_nowait`` refuses (False) rather than waits: a reader that blocked would stall
    its stream and, through flow control, the peer's other traffic on the connection."""

    def __init__(self, frames_max: int, bytes_max: int) -> None:
        assert frames_max > 0 and bytes_max > 0
        self._send, self._receive = trio.open_memory_channel[tuple[int, bytes]](frames_max)
        self.bytes_max = bytes_max
        self.bytes_queued = 0

    def put_nowait(self, item: tuple[int, bytes]) -> bool:
        if self.bytes_queued + len(item[1]) > self.bytes_max:
            return False
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            return False
        self.bytes_queued += len(item[1])
        return True

    def _taken(self, item: tuple[int, bytes]) -> tuple[int, bytes]:
        self.bytes_queued -= len(item[1])
        assert self.bytes_queued >= 0
        return item

    async def receive(self) -> tuple[int, bytes]:
        return self._taken(await self._receive.receive())

    def receive_nowait(self) -> tuple[int, bytes]:
        return self._taken(self._receive.receive_nowait())

    def is_consumer_idle(self) -> bool:
        """Nothing queued and the consumer waits for more. A frame put while the consumer
        waits goes straight to it (the buffer stays empty), so an empty buffer alone does
        not say the frame has been handled."""
        stats = self._receive.statistics()
        return bool(stats.current_buffer_used == 0 and stats.tasks_waiting_receive > 0)

    def __aiter__(self) -> InboundQueue:
        return self

    async def __anext__(self) -> tuple[int, bytes]:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class _StreamEnded(Exception):
    """The remote closed the stream cleanly between frames."""


class _FrameReader:
    """Buffers a stream's reads so frames can be cut out of arbitrary chunks."""

    def __init__(self, stream: INetStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            want = min(max(size - len(self.buffer), 4096), READ_CHUNK_MAX_BYTES)
            chunk = await self.stream.read(want)
            if not chunk:
                raise _StreamEnded()
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


async def _watch_for_close(stream: INetStream, scope: trio.CancelScope) -> None:
    """Peers never write on our outbound stream, so any read result means it is gone."""
    try:
        await stream.read(1)
    except Exception as exc:
        logger.debug("outbound stream closed: %r", exc)
    scope.cancel()


def _take_ready(receive: trio.MemoryReceiveChannel[_Outbound], batch: list[_Outbound]) -> None:
    """Move frames already queued into ``batch``, within the batch bounds."""
    size = sum(len(item.frame) for item in batch)
    while len(batch) < WRITE_BATCH_FRAMES_MAX and size < WRITE_BATCH_BYTES_MAX:
        try:
            item = receive.receive_nowait()
        except trio.WouldBlock:
            return
        batch.append(item)
        size += len(item.frame)


async def _close_quietly(conn: INetConn) -> None:
    try:
        await conn.close()
    except Exception as exc:  # already closing
        logger.debug("close failed: %r", exc)


async def _reset_quietly(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception as exc:  # already closed or the connection is gone
        logger.debug("reset failed: %r", exc)
