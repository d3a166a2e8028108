"""A 4-validator, 4-hospital learning chain driven in-process through build_block/apply_block."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

import node.learning as learning
from fl.commitment import train_with_commitment
from fl.models import ModelSpec
from fl.privacy import clip_and_noise
from fl.quantize import QuantizedVector, quantize
from fl.scoring import compute_validation_loss_ppm
from fl.training import TrainConfig
from node.genesis import Genesis, parse_genesis
from node.keys import KeyPair
from node.ledger import (
    AppliedBlock,
    BuiltBlock,
    ChainContext,
    State,
    apply_block,
    build_block,
    get_account,
    get_genesis_state,
)

CHAIN_ID = "learn-test"
SCALE_EXP = 12
VALIDATION_SEED = 7
VALIDATION_SIZE = 120
CONSENSUS_KEYS = [KeyPair.from_seed(bytes([100 + i]) * 32) for i in range(4)]
HOSPITALS = [KeyPair.from_seed(bytes([1 + i]) * 32) for i in range(4)]
VALIDATORS = [KeyPair.from_seed(bytes([40 + i]) * 32) for i in range(4)]
DP = {"clip_norm": 4.0, "noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": 10}


def make_fl_task(**overrides: object) -> dict[str, object]:
    _, _, digest = learning.build_validation_set("breast_cancer", VALIDATION_SEED, VALIDATION_SIZE)
    task: dict[str, object] = {
        "name": "bc-logistic",
        "model": {"kind": "logistic", "n_features": 30},
        "rule": "median",
        "round_length_blocks": 3,
        "scale_exp": SCALE_EXP,
        "reward_pool": 1_000_000,
        "validator_share": 0.1,
        "thresholds": {"norm_max": 8.0, "roni_tolerance": 0.0, "agreement_min": 0.0},
        "privacy": {
            "clip_norm": 4.0,
            "noise_multiplier_min": 0.5,
            "epsilon_budget": 10.0,
            "delta": 1e-5,
        },
        "validation_set": {
            "dataset": "breast_cancer",
            "seed": VALIDATION_SEED,
            "size": VALIDATION_SIZE,
            "hash": digest.hex(),
        },
    }
    task.update(overrides)
    return task


def make_genesis(**task_overrides: object) -> Genesis:
    document = {
        "chain_id": CHAIN_ID,
        "genesis_time_ms": 1000,
        "validators": [
            {
                "name": f"node{i}",
                "public_key": k.public_key.hex(),
                "p2p_host": "127.0.0.1",
                "p2p_port": 26000 + i,
                "api_host": "127.0.0.1",
                "api_port": 27000 + i,
            }
            for i, k in enumerate(CONSENSUS_KEYS)
        ],
        "members": [
            {"name": f"hospital{i}", "public_key": k.public_key.hex(), "role": "trainer"}
            for i, k in enumerate(HOSPITALS)
        ]
        + [
            {"name": f"validator{i}", "public_key": k.public_key.hex(), "role": "validator"}
            for i, k in enumerate(VALIDATORS)
        ],
        "fl": {"tasks": [make_fl_task(**task_overrides)]},
    }
    return parse_genesis(document)


def get_private_data() -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]]:
    """Eight disjoint private shards (4 hospitals, then 4 validators) outside the validation set."""
    x, y = learning.get_shared_dataset("breast_cancer")
    held = set(learning.get_validation_indices("breast_cancer", VALIDATION_SEED, VALIDATION_SIZE))
    rest = np.array([i for i in range(x.shape[0]) if i not in held], dtype=np.int64)
    rest = np.random.default_rng(3).permutation(rest)
    return [(x[part], y[part]) for part in np.array_split(rest, 8)]


@dataclass
class Chain:
    """One proposer building blocks and a second validator applying them."""

    genesis: Genesis
    state: State = field(init=False)
    context: ChainContext = field(init=False)
    nonces: dict[bytes, int] = field(default_factory=dict)
    blocks: list[BuiltBlock] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = get_genesis_state(self.genesis)
        self.context = ChainContext.from_genesis(self.genesis)

    def next_nonce(self, key: KeyPair) -> int:
        # Txs made for the next block count up from the account nonce in the state.
        nonce = self.nonces.get(key.public_key, get_account(self.state, key.public_key).nonce)
        self.nonces[key.public_key] = nonce + 1
        return nonce

    def step(self, txs: Sequence[bytes] = ()) -> BuiltBlock:
        height = self.state.height + 1
        built = build_block(
            self.state, list(txs), self.context, height % 4, 0, 1000 + height * 1000
        )
        # The validator's path must reach the same post-state.
        applied: AppliedBlock = apply_block(self.state, built.block, self.context)
        assert applied.state.state_root == built.applied.state.state_root
        self.state = applied.state
        self.blocks.append(built)
        self.nonces.clear()
        return built

    def current_round(self) -> learning.RoundRecord:
        current = learning.get_round(self.state, 0)
        assert current is not None
        return current


def train_delta(
    chain: Chain, shard: tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]], seed: int
) -> tuple[npt.NDArray[np.float64], learning.TrainingCommitmentRecord]:
    task = learning.get_task(chain.state, 0)
    assert task is not None
    spec = learning.get_model_spec(task.config)
    base = learning.get_model_params(chain.state, 0)
    assert base is not None
    config = TrainConfig(epochs=2, learning_rate=0.05, batch_size=16, momentum=0.0, seed=seed)
    trained, commitment, _ = train_with_commitment(spec, base, *shard, config, seed, 4)
    delta = clip_and_noise(trained - base, DP["clip_norm"], 0.0, np.random.default_rng(seed))
    return delta, learning.make_commitment_record(commitment)


def make_delta_tx(
    chain: Chain,
    key: KeyPair,
    delta: npt.NDArray[np.float64] | QuantizedVector,
    commitment: learning.TrainingCommitmentRecord,
    *,
    round_number: int | None = None,
    base_hash: bytes | None = None,
    dp: dict[str, float] | None = None,
    nonce: int | None = None,
) -> bytes:
    current = chain.current_round()
    params = dict(DP if dp is None else dp)
    q = delta if isinstance(delta, QuantizedVector) else quantize(delta, SCALE_EXP)
    return learning.make_model_delta_tx(
        key,
        CHAIN_ID,
        0,
        current.round if round_number is None else round_number,
        current.base_model_hash if base_hash is None else base_hash,
        q,
        nonce=chain.next_nonce(key) if nonce is None else nonce,
        sample_count=50,
        clip_norm=params["clip_norm"],
        noise_multiplier=params["noise_multiplier"],
        sampling_rate=params["sampling_rate"],
        steps=int(params["steps"]),
        commitment=commitment,
    )


def get_validation_loss_ppm(state: State, version: int | None = None) -> int:
    task = learning.get_task(state, 0)
    assert task is not None
    params = learning.get_model_params(state, 0, version)
    assert params is not None
    spec: ModelSpec = learning.get_model_spec(task.config)
    x, y = learning.load_validation_set(task.config)
    return compute_validation_loss_ppm(spec, params, x, y)
