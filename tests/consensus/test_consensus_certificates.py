import dataclasses

import pytest
from consensus_helpers import GENESIS, VALIDATOR, make_block, make_certificate, sign_vote

from consensus.certificates import (
    compute_prepared_proof,
    verify_commit_certificate,
    verify_evidence,
    verify_prepared_proof,
)
from consensus.config import ReplicaConfig
from consensus.messages import (
    MESSAGE_TYPES,
    PHASE_COMMIT,
    PHASE_PRE_PREPARE,
    PHASE_PREPARE,
    CommitCertificate,
    Evidence,
    PreparedCertificate,
    PreparedProof,
    PrePrepare,
)
from consensus.sim import SimAuthenticator

AUTH = SimAuthenticator(0, 4)


@pytest.mark.parametrize(("n", "f", "quorum"), [(4, 1, 3), (7, 2, 5), (10, 3, 7), (16, 5, 11)])
def test_quorum_is_two_f_plus_one(n: int, f: int, quorum: int) -> None:
    config = ReplicaConfig(n=n, index=0)
    assert (config.f, config.quorum) == (f, quorum)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 3, "index": 0},
        {"n": 4, "index": 4},
        {"n": 4, "index": 0, "window_size": 4, "checkpoint_interval": 4},
        {"n": 4, "index": 0, "view_change_timeout_ticks": 0},
        {"n": 4, "index": 0, "unsafe_quorum_size": 5},
        {"n": 4, "index": 0, "genesis_digest": b"short"},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ReplicaConfig(**kwargs)


def test_message_kinds_are_unique_and_in_range() -> None:
    kinds = [t.KIND for t in MESSAGE_TYPES]
    assert len(set(kinds)) == len(kinds) and all(1 <= k <= 255 for k in kinds)


def test_commit_certificate_accepts_quorum_and_rejects_forgeries() -> None:
    _, digest = make_block(1, GENESIS)
    good = make_certificate(1, digest, [0, 1, 2])
    assert verify_commit_certificate(AUTH, 4, 3, 1, digest, good)
    assert not verify_commit_certificate(AUTH, 4, 3, 2, digest, good)  # wrong seq
    assert not verify_commit_certificate(AUTH, 4, 3, 1, b"\x09" * 32, good)  # wrong digest
    assert not verify_commit_certificate(AUTH, 4, 3, 1, digest, make_certificate(1, digest, [0, 1]))
    dup = CommitCertificate((good.commits[0], good.commits[0], good.commits[1]))
    assert not verify_commit_certificate(AUTH, 4, 3, 1, digest, dup)
    forged = CommitCertificate(
        good.commits[:2]
        + (good.commits[2].__class__(PHASE_COMMIT, 0, 1, digest, 3, good.commits[2].signature),)
    )
    assert not verify_commit_certificate(AUTH, 4, 3, 1, digest, forged)
    mixed_view = CommitCertificate(good.commits[:2] + (sign_vote(3, PHASE_COMMIT, 1, 1, digest),))
    assert not verify_commit_certificate(AUTH, 4, 3, 1, digest, mixed_view)
    prepares = CommitCertificate(tuple(sign_vote(s, PHASE_PREPARE, 0, 1, digest) for s in range(3)))
    assert not verify_commit_certificate(AUTH, 4, 3, 1, digest, prepares)


def test_evidence_requires_two_valid_conflicting_votes() -> None:
    a = sign_vote(2, PHASE_PREPARE, 0, 5, b"\x01" * 32)
    b = sign_vote(2, PHASE_PREPARE, 0, 5, b"\x02" * 32)
    assert verify_evidence(AUTH, 4, Evidence(a, b))
    assert not verify_evidence(AUTH, 4, Evidence(a, a))
    assert not verify_evidence(
        AUTH, 4, Evidence(a, sign_vote(3, PHASE_PREPARE, 0, 5, b"\x02" * 32))
    )
    assert not verify_evidence(
        AUTH, 4, Evidence(a, sign_vote(2, PHASE_PREPARE, 0, 6, b"\x02" * 32))
    )
    assert not verify_evidence(AUTH, 4, Evidence(a, b.__class__(2, 0, 5, b"\x02" * 32, 2, b"x")))


def _make_proof(seq: int = 1, parent: bytes = GENESIS, view: int = 0) -> PreparedProof:
    payload, digest = make_block(seq, parent)
    header = VALIDATOR.get_block_header(payload)
    prepares = tuple(sign_vote(s, PHASE_PREPARE, view, seq, digest) for s in (1, 2))
    return PreparedProof(sign_vote(view % 4, PHASE_PRE_PREPARE, view, seq, digest), parent,
                         header, prepares)


def test_a_prepared_proof_binds_its_parent_through_the_header() -> None:
    """A VIEW-CHANGE carries no payload: the header is what ties the claimed parent to the
    voted digest, so a sender cannot cut the re-proposed chain by naming another parent."""
    config = ReplicaConfig(n=4, index=0)
    proof = _make_proof()
    assert verify_prepared_proof(AUTH, config, VALIDATOR, proof)
    other_parent = dataclasses.replace(proof, parent_digest=b"\x01" * 32)
    assert not verify_prepared_proof(AUTH, config, VALIDATOR, other_parent)
    other_payload, _ = make_block(1, GENESIS, b"b")
    other_header = dataclasses.replace(proof, header=VALIDATOR.get_block_header(other_payload))
    assert not verify_prepared_proof(AUTH, config, VALIDATOR, other_header)
    payload, _ = make_block(1, GENESIS)
    payload_as_header = dataclasses.replace(proof, header=payload)
    assert not verify_prepared_proof(AUTH, config, VALIDATOR, payload_as_header)
    too_few = dataclasses.replace(proof, prepares=proof.prepares[:1])
    assert not verify_prepared_proof(AUTH, config, VALIDATOR, too_few)


def test_a_prepared_proof_is_the_certificate_without_its_payload() -> None:
    payload, digest = make_block(1, GENESIS)
    pre_prepare = PrePrepare(sign_vote(0, PHASE_PRE_PREPARE, 0, 1, digest), GENESIS, payload)
    prepares = tuple(sign_vote(s, PHASE_PREPARE, 0, 1, digest) for s in (1, 2))
    proof = compute_prepared_proof(VALIDATOR, PreparedCertificate(pre_prepare, prepares))
    assert proof == _make_proof()
    assert payload not in repr(proof).encode()
