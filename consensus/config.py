"""Replica configuration, validated on construction; every bound the core enforces lives here."""

from __future__ import annotations

from dataclasses import dataclass

DIGEST_SIZE_BYTES = 32


@dataclass(frozen=True)
class ReplicaConfig:
    """Static parameters of one replica. ``f = (n - 1) // 3``; quorum = 2f+1 when n = 3f+1
    (in general ``(n + f) // 2 + 1``, the smallest size whose pairwise intersections
    contain an honest replica)."""

    n: int
    index: int
    genesis_digest: bytes = b"\x00" * DIGEST_SIZE_BYTES
    window_size: int = 32
    checkpoint_interval: int = 8
    view_change_timeout_ticks: int = 40
    timeout_backoff_max: int = 4
    status_interval_ticks: int = 10
    fetch_timeout_ticks: int = 30
    fetch_blocks_max: int = 64
    stash_per_sender_max: int = 64
    stash_total_max: int = 512
    evidence_max: int = 64
    checkpoints_per_sender_max: int = 4
    # Test-only: replace the quorum size to prove the simulator can fail. Never set in production.
    unsafe_quorum_size: int | None = None

    def __post_init__(self) -> None:
        if self.n < 4:
            raise ValueError(f"n must be >= 4 (n = 3f+1 with f >= 1), got {self.n}")
        if not 0 <= self.index < self.n:
            raise ValueError(f"index must be in [0, {self.n}), got {self.index}")
        if len(self.genesis_digest) != DIGEST_SIZE_BYTES:
            raise ValueError("genesis_digest must be 32 bytes")
        if self.checkpoint_interval < 1:
            raise ValueError("checkpoint_interval must be >= 1")
        if self.window_size < 2 * self.checkpoint_interval:
            raise ValueError("window_size must be >= 2 * checkpoint_interval")
        for name in (
            "view_change_timeout_ticks",
            "status_interval_ticks",
            "fetch_timeout_ticks",
            "fetch_blocks_max",
            "stash_per_sender_max",
            "stash_total_max",
            "evidence_max",
            "checkpoints_per_sender_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.timeout_backoff_max < 0:
            raise ValueError("timeout_backoff_max must be >= 0")
        if self.unsafe_quorum_size is not None and not 1 <= self.unsafe_quorum_size <= self.n:
            raise ValueError("unsafe_quorum_size must be in [1, n]")

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        if self.unsafe_quorum_size is not None:
            return self.unsafe_quorum_size
        return (self.n + self.f) // 2 + 1

    @property
    def weak_quorum(self) -> int:
        """f+1: at least one honest replica among them."""
        return self.f + 1

    def get_primary(self, view: int) -> int:
        return view % self.n
