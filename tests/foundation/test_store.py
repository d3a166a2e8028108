from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import schema
from node.store import KVStore, LevelDBStore, MemoryStore, StoreError, StoreLockedError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["leveldb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    opened: KVStore = LevelDBStore(tmp_path / "db") if request.param == "leveldb" else MemoryStore()
    yield opened
    opened.close()


def test_get_put_delete(store: KVStore) -> None:
    assert store.get(b"k") is None
    store.put(b"k", b"v")
    assert store.get(b"k") == b"v"
    store.delete(b"k")
    assert store.get(b"k") is None
    store.delete(b"missing")  # deleting an absent key is not an error


def test_batch_applies_deletes_then_puts(store: KVStore) -> None:
    store.put(b"old", b"1")
    store.write_batch([(b"a", b"1"), (b"b", b"2"), (b"old", b"2")], deletes=[b"old", b"a"])
    assert store.get(b"a") == b"1"
    assert store.get(b"b") == b"2"
    assert store.get(b"old") == b"2"


def test_bad_batch_writes_nothing(store: KVStore) -> None:
    with pytest.raises(TypeError):
        store.write_batch([(b"a", b"1"), (b"b", "not bytes")])  # type: ignore[list-item]
    assert store.get(b"a") is None


def test_prefix_iteration_is_ordered_bounded_and_a_snapshot(store: KVStore) -> None:
    heights = [300, 2, 1, 70000, 256]
    store.write_batch([(schema.get_block_key(h), b"%d" % h) for h in heights])
    store.put(schema.get_certificate_key(5), b"cert")
    store.put(b"a", b"before the prefix")
    walked = list(store.iterate_prefix(schema.BLOCK_PREFIX))
    assert [schema.get_height_of_block_key(k) for k, _ in walked] == sorted(heights)
    assert [v for _, v in walked] == [b"%d" % h for h in sorted(heights)]
    assert len(list(store.iterate_prefix(schema.BLOCK_PREFIX, limit=2))) == 2
    iterator = store.iterate_prefix(schema.BLOCK_PREFIX)
    first = next(iterator)
    store.put(schema.get_block_key(3), b"late")
    assert [first, *iterator] == walked
    assert len(list(store.iterate_prefix(b""))) == len(heights) + 3


def test_closed_store_refuses_use(store: KVStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(b"k")


def test_leveldb_survives_reopen_and_refuses_a_second_opener(tmp_path: Path) -> None:
    db = LevelDBStore(tmp_path / "db")
    db.write_batch([(b"x", b"1"), (b"y", b"2")])
    with pytest.raises(StoreLockedError, match="another node"):
        LevelDBStore(tmp_path / "db")
    db.close()
    reopened = LevelDBStore(tmp_path / "db")
    assert reopened.get(b"x") == b"1" and reopened.get(b"y") == b"2"
    reopened.close()


CHILD = """
import sys
from node.store import LevelDBStore
db = LevelDBStore(sys.argv[1])
for batch in range(100000):
    db.write_batch([(b"%08d/%02d" % (batch, i), b"v" * 100) for i in range(20)])
    print(batch, flush=True)
"""


def test_batches_are_all_or_nothing_across_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert child.stdout is not None
    acknowledged = -1
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= 150:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert acknowledged >= 150, "the writer died before it got going"
    db = LevelDBStore(path)
    keys = [key for key, _ in db.iterate_prefix(b"")]
    db.close()
    per_batch: dict[int, int] = {}
    for key in keys:
        batch = int(key.split(b"/")[0])
        per_batch[batch] = per_batch.get(batch, 0) + 1
    assert all(count == 20 for count in per_batch.values()), "a batch was torn"
    assert set(range(acknowledged + 1)) <= set(per_batch), "an acknowledged batch was lost"
    assert sorted(per_batch) == list(range(len(per_batch))), "batches applied out of order"


def get_table_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.ldb"))


def test_leveldb_writes_tables_uncompressed(tmp_path: Path) -> None:
    """Stored values reach the table files at their full size (no Snappy): 4 MiB of
    zeros, which Snappy would shrink ~20-fold, take at least 4 MiB on disk once
    compacted out of the log."""
    value_bytes = 64 * 1024
    store = LevelDBStore(tmp_path / "db")
    for index in range(64):
        store.put(b"b/" + index.to_bytes(8, "big"), bytes(value_bytes))
    store._get_db().compact_range()
    store.close()
    assert get_table_bytes(tmp_path / "db") >= 64 * value_bytes


def test_leveldb_reads_a_database_written_with_snappy(tmp_path: Path) -> None:
    """A home from a version that stored compressed tables still opens and reads."""
    import plyvel

    values = {b"b/" + index.to_bytes(8, "big"): bytes([index]) * 50_000 for index in range(40)}
    old = plyvel.DB(str(tmp_path / "db"), create_if_missing=True, compression="snappy")
    for key, value in values.items():
        old.put(key, value)
    old.compact_range()
    old.close()
    assert get_table_bytes(tmp_path / "db") < sum(map(len, values.values())) // 10
    store = LevelDBStore(tmp_path / "db")
    try:
        assert all(store.get(key) == value for key, value in values.items())
        store.put(b"b/" + (99).to_bytes(8, "big"), b"new")
        assert store.get(b"b/" + (99).to_bytes(8, "big")) == b"new"
    finally:
        store.close()


def test_schema_keys() -> None:
    assert schema.get_block_key(1) < schema.get_block_key(256) < schema.get_block_key(2**40)
    assert schema.get_wal_seq(schema.get_wal_key(77)) == 77
    assert schema.decode_tx_location(schema.encode_tx_location(5, 9)) == (5, 9)
    assert schema.decode_height(schema.encode_height(2**64 - 1)) == 2**64 - 1
    assert schema.get_account_key(b"\x01" * 32).startswith(schema.STATE_PREFIX)
    assert schema.get_account_public_key(schema.get_account_key(b"\x01" * 32)) == b"\x01" * 32
    assert schema.get_account_public_key(schema.get_state_key(b"e", b"\x01" * 32)) is None
    assert schema.get_account_public_key(schema.ACCOUNT_PREFIX + b"\x01" * 31) is None
    with pytest.raises(schema.SchemaError):
        schema.get_tx_key(b"short")
    with pytest.raises(schema.SchemaError):
        schema.get_block_key(-1)
    with pytest.raises(schema.SchemaError):
        schema.get_state_key(b"ab", b"x")
    with pytest.raises(schema.SchemaError):
        schema.decode_height(b"\x00" * 7)
