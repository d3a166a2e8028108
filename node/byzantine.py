"""Test-only Byzantine behaviours and fault switches for the fault-injection runner (``bcfl e2e``).

None of this runs unless a test asks for it: ``bcfl start --byzantine MODE`` is hidden from
help and refused unless ``BCFL_TEST_BYZANTINE=1``; ``BCFL_TEST_SKIP_PERSIST=1`` makes a
deliberately broken node (its votes are never written to the WAL); ``BCFL_TEST_FAULT_FILE``
names a JSON file of per-link delay/loss that the node re-reads while it runs (partitions
and lossy links when the kernel or the user cannot shape real links).

How the Byzantine modes work. The driver hands every list of actions to
:meth:`Byzantine.rewrite` before executing it (one hook; with no Byzantine mode the
driver's path is unchanged). The rewrite replaces or adds signed consensus messages
(signed with this validator's own key, so peers can only catch it, not reject it as
forged), and sends raw frames (garbage, replays, transaction floods) straight to the
network, at a bounded rate measured on the driver's clock. One mode acts before there is
an action: a censoring primary (``censors_txs``) has the driver propose its blocks
without reaping, so it keeps the chain moving with empty blocks and leaves every tx out,
which only the backups' request timers can see.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from consensus.events import Action, Broadcast, Send
from consensus.messages import (
    PHASE_COMMIT,
    PHASE_PREPARE,
    PrePrepare,
    Vote,
    get_signing_body,
)
from node.client import make_transfer
from node.codec import decode_block, encode_block, encode_consensus_message, get_block_hash
from node.keys import KeyPair
from node.mempool import encode_tx_batch
from node.transport import FaultConfig, LinkFault, TrafficClass

ENV_BYZANTINE = "BCFL_TEST_BYZANTINE"
ENV_SKIP_PERSIST = "BCFL_TEST_SKIP_PERSIST"
ENV_FAULT_FILE = "BCFL_TEST_FAULT_FILE"

MODE_EQUIVOCATE = "equivocate"
MODE_DOUBLE_VOTE = "double_vote"
MODE_INVALID_BLOCK = "invalid_block"
MODE_GARBAGE = "garbage"
MODE_REPLAY = "replay"
MODE_FLOOD = "flood"
MODE_CENSOR = "censor"  # as primary, proposes empty blocks only: the chain moves, no tx does
MODES = (MODE_EQUIVOCATE, MODE_DOUBLE_VOTE, MODE_INVALID_BLOCK, MODE_GARBAGE, MODE_REPLAY,
         MODE_FLOOD, MODE_CENSOR)

NOISE_INTERVAL_S = 0.1
GARBAGE_FRAMES_PER_BURST = 4
GARBAGE_SIZE_MAX_BYTES = 4096
REPLAY_KEPT_MAX = 256
REPLAY_FRAMES_PER_BURST = 8
FLOOD_TXS_PER_BURST = 200
FIRST_REWRITE_LOG = "TEST-ONLY Byzantine %s: first rewrite"  # bcfl e2e reads it
FAULT_FILE_SIZE_MAX_BYTES = 64 * 1024
FAULT_LINKS_MAX = 1024


logger = logging.getLogger(__name__)


def is_enabled(name: str) -> bool:
    return os.environ.get(name, "") == "1"


class RawNetwork(Protocol):
    def send(self, to_index: int, frame: bytes, traffic: TrafficClass = ...) -> bool: ...


class Signer(Protocol):
    def sign(self, body: Any) -> bytes: ...


class Byzantine:
    """One Byzantine behaviour of validator ``index`` out of ``n``; see the module docstring."""

    def __init__(self, mode: str, index: int, n: int, auth: Signer, chain_id: str,
                 clock: Callable[[], float], seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown Byzantine mode {mode!r}; one of {', '.join(MODES)}")
        self.mode = mode
        self.index = index
        self.peers = [i for i in range(n) if i != index]
        self.auth = auth
        self.chain_id = chain_id
        self.clock = clock
        self.rng = random.Random(seed * 1000 + index)
        self.sent: deque[bytes] = deque(maxlen=REPLAY_KEPT_MAX)
        self.next_noise = 0.0
        self.flood_nonce = 0
        self.flood_key = KeyPair.from_seed(self.rng.randbytes(32))
        self.rewrites_total = 0

    @property
    def censors_txs(self) -> bool:
        return self.mode == MODE_CENSOR

    def rewrite(self, actions: list[Action], network: RawNetwork) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            message = getattr(action, "message", None)
            if isinstance(action, Broadcast | Send):
                self.sent.append(encode_consensus_message(action.message))
            if isinstance(action, Broadcast) and isinstance(message, PrePrepare) and (
                message.vote.signer == self.index
            ):
                out.extend(self._rewrite_proposal(action, message))
            elif isinstance(action, Broadcast) and isinstance(message, Vote) and (
                self.mode == MODE_DOUBLE_VOTE and message.phase in (PHASE_PREPARE, PHASE_COMMIT)
            ):
                out.append(action)
                out.append(Broadcast(self._sign(dataclasses.replace(
                    message, digest=self.rng.randbytes(32)))))
                self._count_rewrite()
            else:
                out.append(action)
        now = self.clock()
        if now >= self.next_noise:
            self.next_noise = now + NOISE_INTERVAL_S
            self._make_noise(network)
        return out

    def _count_rewrite(self) -> None:
        """Logged once: an equivocator that is never primary never equivocates, and the
        e2e runner asks for evidence only against one that did."""
        if self.rewrites_total == 0:
            logger.warning(FIRST_REWRITE_LOG, self.mode)
        self.rewrites_total += 1

    def _sign(self, vote: Vote) -> Vote:
        unsigned = dataclasses.replace(vote, signature=b"")
        return dataclasses.replace(unsigned, signature=self.auth.sign(get_signing_body(unsigned)))

    def _forge_proposal(self, message: PrePrepare, *, invalid: bool) -> PrePrepare:
        block = decode_block(message.payload, check_txs=False)
        if invalid:  # a state root no execution produces: fails validation everywhere
            header = dataclasses.replace(block.header, state_root=self.rng.randbytes(32))
        else:  # a valid sibling: same parent and txs, another timestamp
            header = dataclasses.replace(block.header, time_ms=block.header.time_ms + 1)
        forged = dataclasses.replace(block, header=header)
        vote = self._sign(dataclasses.replace(message.vote, digest=get_block_hash(header)))
        return PrePrepare(vote, message.parent_digest, encode_block(forged))

    def _rewrite_proposal(self, action: Broadcast, message: PrePrepare) -> list[Action]:
        if self.mode == MODE_INVALID_BLOCK:
            self._count_rewrite()
            return [Broadcast(self._forge_proposal(message, invalid=True))]
        if self.mode != MODE_EQUIVOCATE:
            return [action]
        # Conflicting PRE-PREPAREs: the first peer gets the real one, the second the sibling,
        # the rest get both (so at least one honest node holds the two signed votes).
        self._count_rewrite()
        sibling = self._forge_proposal(message, invalid=False)
        out: list[Action] = []
        for k, peer in enumerate(self.peers):
            if k != 1:
                out.append(Send(peer, message))
            if k != 0:
                out.append(Send(peer, sibling))
        return out

    def _make_noise(self, network: RawNetwork) -> None:
        if self.mode == MODE_GARBAGE:
            # The real frame kinds (0x06 consensus, 0x07 tx batch, 0x10/0x11 catch-up) and any.
            kinds = (0x06, 0x07, 0x10, 0x11, self.rng.randrange(256))
            for _ in range(GARBAGE_FRAMES_PER_BURST):
                frame = bytes([self.rng.choice(kinds)]) + self.rng.randbytes(
                    self.rng.randrange(GARBAGE_SIZE_MAX_BYTES))
                traffic = self.rng.choice(list(TrafficClass))
                network.send(self.rng.choice(self.peers), frame, traffic)
        elif self.mode == MODE_REPLAY and self.sent:
            for _ in range(REPLAY_FRAMES_PER_BURST):
                network.send(self.rng.choice(self.peers), self.rng.choice(self.sent))
        elif self.mode == MODE_FLOOD:
            junk = [self.rng.randbytes(self.rng.randrange(1, 300))
                    for _ in range(FLOOD_TXS_PER_BURST // 2)]
            signed = []  # well-formed, validly signed, from an account with no balance
            for _ in range(FLOOD_TXS_PER_BURST // 2):
                signed.append(make_transfer(self.flood_key, self.chain_id,
                                            self.flood_key.public_key, 1, self.flood_nonce))
                self.flood_nonce += 1
            for peer in self.peers:
                network.send(peer, encode_tx_batch(junk), TrafficClass.TRANSACTIONS)
                network.send(peer, encode_tx_batch(signed), TrafficClass.TRANSACTIONS)


def read_fault_file(path: Path) -> FaultConfig | None:
    """The fault layer described by ``path`` (JSON), or None when it is missing or malformed.

    Format: ``{"seed": 0, "default": [delay_s, loss], "links": [[from, to, delay_s, loss]]}``.
    """
    try:
        raw = path.read_bytes()[:FAULT_FILE_SIZE_MAX_BYTES]
        data = json.loads(raw)
        default = LinkFault(float(data["default"][0]), float(data["default"][1]))
        links = {
            (int(a), int(b)): LinkFault(float(delay), float(loss))
            for a, b, delay, loss in data.get("links", [])[:FAULT_LINKS_MAX]
        }
        return FaultConfig(int(data.get("seed", 0)), links, default)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return None


def write_fault_file(path: Path, links: dict[tuple[int, int], tuple[float, float]],
                     seed: int = 0) -> None:
    """Atomically replace ``path`` (the runner's side of :func:`read_fault_file`)."""
    data = {"seed": seed, "default": [0.0, 0.0],
            "links": [[a, b, d, loss] for (a, b), (d, loss) in sorted(links.items())]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
