"""Shared builders for consensus unit tests."""

from consensus.config import ReplicaConfig
from consensus.messages import PHASE_COMMIT, CommitCertificate, PrePrepare, Vote
from consensus.replica import Replica
from consensus.sim import SimAuthenticator, SimBlockValidator

N = 4
GENESIS = b"\x00" * 32
VALIDATOR = SimBlockValidator()


def make_replica(index: int, n: int = N) -> Replica:
    config = ReplicaConfig(n=n, index=index, window_size=16, checkpoint_interval=4)
    return Replica(config, SimAuthenticator(index, n), VALIDATOR)


def sign_vote(signer: int, phase: int, view: int, seq: int, digest: bytes, n: int = N) -> Vote:
    body = Vote(phase, view, seq, digest, signer, b"")
    return Vote(phase, view, seq, digest, signer, SimAuthenticator(signer, n).sign(body))


def make_block(seq: int, parent: bytes, tag: bytes = b"a") -> tuple[bytes, bytes]:
    payload = b"blk|" + tag + b"%d" % seq
    digest = VALIDATOR.validate_block(seq, parent, payload)
    assert isinstance(digest, bytes)
    return payload, digest


def make_pre_prepare(
    view: int, seq: int, parent: bytes, tag: bytes = b"a", n: int = N
) -> PrePrepare:
    payload, digest = make_block(seq, parent, tag)
    return PrePrepare(sign_vote(view % n, 1, view, seq, digest, n), parent, payload)


def make_certificate(
    seq: int, digest: bytes, signers: range | list[int], view: int = 0
) -> CommitCertificate:
    return CommitCertificate(tuple(sign_vote(s, PHASE_COMMIT, view, seq, digest) for s in signers))
