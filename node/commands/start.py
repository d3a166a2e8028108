"""``bcfl start --home DIR``: run one validator until SIGINT/SIGTERM.

Loads ``config/config.toml``, the genesis and the 0600 key, opens LevelDB under
``data/``, restores the committed state and the consensus replica (from the
write-ahead records and the chain tip), then runs the transport and the
consensus driver on trio and the HTTP API on asyncio (``node.runtime.run_node``).
Every startup failure (missing home, bad genesis or config, key readable by
others, data dir locked by another node, port in use) is one clear line and
exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

import trio

from node import byzantine
from node.api import create_app
from node.app import BridgeService
from node.chain import ChainStoreError
from node.client import Client
from node.commands._common import EXIT_OK, CommandError, load_home_config, run
from node.commands.train import run_round
from node.config import Config
from node.evidence_api import get_evidence_routes
from node.genesis import Genesis, GenesisError, load_genesis
from node.hospital import HospitalAgent, load_hospital_data
from node.keys import KeyFileError, KeyPair, load_key_file
from node.learning import LearningSetupError, verify_learning_setup
from node.learning_api import get_learning_routes
from node.node import Driver, Node, NodeSetupError
from node.runtime import Bridge, run_node
from node.service import EventHub
from node.store import LevelDBStore, StoreError
from node.transport import (
    FaultConfig,
    Transport,
    TransportConfig,
    TransportError,
    ValidatorAddress,
)

logger = logging.getLogger("bcfl.start")

FAULT_FILE_POLL_S = 0.2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl start", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="the node's home directory")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # Test-only (bcfl e2e): hidden, and refused unless BCFL_TEST_BYZANTINE=1.
    parser.add_argument("--byzantine", default=None, help=argparse.SUPPRESS)
    return parser


def is_port_in_use(host: str, port: int) -> bool:
    """True if something listens on ``host:port`` (SO_REUSEADDR, as the servers use it, so
    connections of a killed node lingering in TIME_WAIT do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise CommandError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return False


def _check_ports(config: Config) -> None:
    for what, host, port in (
        ("p2p", config.p2p.listen_host, config.p2p.listen_port),
        ("api", config.api.listen_host, config.api.listen_port),
    ):
        if port and is_port_in_use(host, port):
            raise CommandError(f"{what} port {host}:{port} is already in use "
                               "(another node running on this home or port?)")


def get_address_warnings(config: Config, genesis: Genesis, index: int) -> list[str]:
    """Where this node listens against where genesis tells peers and clients to find it.

    Warnings, not errors: a port forward or a proxy may join the two. Without one, a
    p2p port that differs leaves the node unreachable by its peers, and an API port that
    differs sends hospitals that read genesis to the wrong place."""
    own = genesis.validators[index]
    warnings = []
    for what, port, listed in (("p2p", config.p2p.listen_port, own.p2p_port),
                               ("api", config.api.listen_port, own.api_port)):
        if port != listed:
            warnings.append(
                f"{what} listens on port {port}, but genesis validators[{index}] lists "
                f"{listed}: unless something forwards {listed} to {port}, nothing that reads "
                f"genesis reaches this node's {what} (set [{what}] listen_port = {listed} "
                "in config.toml)")
    return warnings


LIBP2P_LOGGER = "libp2p"
TRACEBACK_MARKER = "Traceback (most recent call last)"


class PeerTracebackFilter(logging.Filter):
    """Cuts libp2p's tracebacks to the record's first line.

    libp2p logs ordinary peer failures (a connection reset while it answers identify,
    which two peers dialling each other at startup produce) at ERROR with the whole
    traceback pasted into the message. To an operator that reads as a crash of the node,
    while the transport already counts and retries these. ``bcfl start --log-level
    DEBUG`` keeps them whole."""

    def __init__(self, keep_tracebacks: bool = False) -> None:
        super().__init__()
        self.keep_tracebacks = keep_tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        is_libp2p = record.name == LIBP2P_LOGGER or record.name.startswith(LIBP2P_LOGGER + ".")
        if self.keep_tracebacks or not is_libp2p:
            return True
        message = record.getMessage()
        if TRACEBACK_MARKER not in message and record.exc_info is None:
            return True
        first_line = message.split("\n", 1)[0]
        record.msg, record.args = f"{first_line} (traceback omitted)", ()
        record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str) -> None:
    """One line per record on stderr; libp2p's peer-failure tracebacks cut to one line."""
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    keep = getattr(logging, level) <= logging.DEBUG
    for handler in logging.root.handlers:
        handler.addFilter(PeerTracebackFilter(keep_tracebacks=keep))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per request


def _start(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    home: Path = args.home
    if args.byzantine is not None:
        if not byzantine.is_enabled(byzantine.ENV_BYZANTINE):
            raise CommandError(f"--byzantine is a test-only switch; it needs "
                               f"{byzantine.ENV_BYZANTINE}=1")
        if args.byzantine not in byzantine.MODES:
            raise CommandError(f"--byzantine {args.byzantine!r}: one of "
                               f"{', '.join(byzantine.MODES)}")
    config = load_home_config(home)
    try:
        genesis = load_genesis(config.get_genesis_path(home))
        key = load_key_file(config.get_key_path(home))
    except (GenesisError, KeyFileError) as exc:
        raise CommandError(str(exc)) from None
    try:  # a node that cannot rebuild what genesis promises must stop, not diverge
        verify_learning_setup(genesis)
    except LearningSetupError as exc:
        raise CommandError(f"learning setup does not match genesis: {exc}") from None
    _check_ports(config)
    try:
        store = LevelDBStore(config.get_data_path(home))
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    try:
        return _run(config, genesis, key, store, home, args.byzantine)
    finally:
        store.close()


def _start_learning(home: Path, config: Config, url: str, stop: threading.Event) -> None:
    """Fully coupled mode: this validator's institution trains and/or attests on a thread.

    The agent talks to this node's own API (as a loosely coupled trainer would),
    so nothing on the node's trio side blocks on training. Errors are logged;
    the validator keeps running whatever the agent does.
    """
    learning_config = config.learning
    mode = learning_config.mode

    def loop() -> None:
        try:
            member_key = load_key_file(config.resolve(home, learning_config.member_key_file))
            agent = HospitalAgent(Client(url), member_key, None, task_id=learning_config.task)
            policy, _, _ = agent.get_view()
            agent.data = load_hospital_data(
                config.resolve(home, learning_config.train_data), learning_config.standardize,
                policy.validation_dataset, 0)
            while not stop.is_set():
                run_round(agent, "yes" if "attest" in mode else "no", 0,
                          lambda line: logger.info("learning: %s", line),
                          submit="train" in mode, stop=stop)
        except Exception:  # the agent is optional; the validator must keep running
            logger.exception("learning agent stopped")

    threading.Thread(target=loop, name="bcfl-learning", daemon=True).start()


def _run(
    config: Config, genesis: Genesis, key: KeyPair, store: LevelDBStore, home: Path,
    byzantine_mode: str | None = None,
) -> int:
    hub = EventHub()
    fault_file = os.environ.get(byzantine.ENV_FAULT_FILE)
    transport_config = TransportConfig(
        fault=FaultConfig(seed=0) if fault_file else None  # test-only, see node/byzantine.py
    )
    try:
        driver = Driver(config, genesis, key, store, network=_Unwired(), publish=hub.publish)
        validators = [
            ValidatorAddress(i, v.public_key, v.p2p_host, v.p2p_port)
            for i, v in enumerate(genesis.validators)
        ]
        transport = Transport(key, config.p2p.listen_host, config.p2p.listen_port, validators,
                              transport_config)
    except (NodeSetupError, ChainStoreError, TransportError) as exc:
        raise CommandError(str(exc)) from None
    driver.network = transport
    for warning in get_address_warnings(config, genesis, driver.index):
        logger.warning("%s", warning)
    if byzantine_mode is not None:
        logger.warning("TEST-ONLY Byzantine mode %r is on", byzantine_mode)
        driver.byzantine = byzantine.Byzantine(
            byzantine_mode, driver.index, len(genesis.validators), driver.auth,
            genesis.chain_id, time.monotonic)
    if byzantine.is_enabled(byzantine.ENV_SKIP_PERSIST):
        logger.warning("TEST-ONLY broken build: votes are not persisted before sending")
        driver.skip_persist = True
    node = Node(driver, transport)

    async def trio_main(bridge: Bridge) -> None:
        if not fault_file:
            await node.run(bridge)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_fault_file, transport, Path(fault_file))
            await node.run(bridge)

    def on_started(bridge: Bridge, port: int) -> None:
        logger.info(
            "started %s: validator %d of %d on chain %r, peer id %s, p2p %s:%d, api http://%s:%d, "
            "height %d, view %d",
            config.moniker, driver.index, len(genesis.validators), genesis.chain_id,
            key.peer_id, config.p2p.listen_host, config.p2p.listen_port,
            config.api.listen_host, port, driver.state.height, driver.replica.view,
        )

    stop_learning = threading.Event()

    def on_started_all(bridge: Bridge, port: int) -> None:
        on_started(bridge, port)
        if config.learning.mode != "off":
            _start_learning(home, config, f"http://127.0.0.1:{port}", stop_learning)

    run_node(
        trio_main,
        lambda bridge: create_app(
            BridgeService(bridge, hub),
            config,
            extra_routes=[*get_learning_routes(), *get_evidence_routes()],
        ),
        http_host=config.api.listen_host,
        http_port=config.api.listen_port,
        on_started=on_started_all,
    )
    stop_learning.set()
    logger.info("stopped %s at height %d", config.moniker, driver.state.height)
    return EXIT_OK


async def _watch_fault_file(transport: Transport, path: Path) -> None:
    """Test-only: apply the per-link delay/loss of ``path`` whenever it changes."""
    last: FaultConfig | None = None
    while True:
        fault = byzantine.read_fault_file(path)
        if fault is not None and fault != last:
            transport.config = dataclasses.replace(transport.config, fault=fault)
            last = fault
        await trio.sleep(FAULT_FILE_POLL_S)


class _Unwired:
    """Placeholder network until the transport exists (nothing is sent during restore)."""

    def send(self, to_index: int, frame: bytes, traffic: object = None) -> bool:
        raise AssertionError("the driver sent before the transport was wired")

    def broadcast(self, frame: bytes, traffic: object = None) -> int:
        raise AssertionError("the driver sent before the transport was wired")

    def get_connected_peers(self) -> list[int]:
        return []

    def get_metrics(self) -> dict[str, object]:
        return {}


def main(argv: list[str]) -> int:
    return run("bcfl start", _start, build_parser(), argv)
