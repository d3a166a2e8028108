"""The key-value store: LevelDB through plyvel, and an in-memory twin.

Both implement :class:`KVStore`, a deliberately narrow interface: point reads
and writes, atomic batches, and ordered prefix iteration. Keys are built only
in ``node/schema.py``.

Durability: a commit goes through :meth:`KVStore.write_batch`, which is atomic
(LevelDB applies a write batch all or nothing, even across a crash) and, with
``sync=True`` (the default, and passed to plyvel explicitly because plyvel's
default is ``sync=False``), durable before it returns. Within one batch the
deletes apply first, then the puts. Prefix iteration walks a snapshot in key
order and is lazy; ``limit`` bounds how many entries it yields.

LevelDB allows one process per directory; a second node started on the same
home gets :class:`StoreLockedError` with a message that says so.

Blocks are stored uncompressed (``compression=None``): they are mostly keys and
signatures, which Snappy cannot shrink (it saved 3.5% of a benchmark database's
disk), yet it compressed them again on every compaction. In a 60 s closed loop
of 4 validators Snappy took 10-13% of the machine and its share grew with the
database (docs/benchmarks.md, eleventh session). LevelDB marks each table block
with its own compression type, so databases written with Snappy by earlier
versions still read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import plyvel


class StoreError(Exception):
    """The store cannot be opened or used."""


class StoreLockedError(StoreError):
    """Another process holds the LevelDB directory's lock."""


class KVStore(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, sync: bool = True) -> None: ...

    def delete(self, key: bytes, sync: bool = True) -> None: ...

    def write_batch(
        self,
        puts: Iterable[tuple[bytes, bytes]],
        deletes: Iterable[bytes] = (),
        sync: bool = True,
    ) -> None: ...

    def iterate_prefix(
        self, prefix: bytes, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


def _check_bytes(what: str, value: object) -> None:
    if type(value) is not bytes:
        raise TypeError(f"store {what} must be bytes, got {type(value).__name__}")


def _collect_batch(
    puts: Iterable[tuple[bytes, bytes]], deletes: Iterable[bytes]
) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    # Validate everything before writing anything: a bad entry must not leave half a batch.
    put_list = list(puts)
    delete_list = list(deletes)
    for key, value in put_list:
        _check_bytes("key", key)
        _check_bytes("value", value)
    for key in delete_list:
        _check_bytes("key", key)
    return put_list, delete_list


class LevelDBStore:
    """A LevelDB database in directory ``path`` (created if missing)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db: plyvel.DB | None = plyvel.DB(
                str(self.path), create_if_missing=True, compression=None)
        except plyvel.IOError as exc:
            if "lock" in str(exc).lower():
                raise StoreLockedError(
                    f"database {self.path} is locked by another process: is another node "
                    f"already running on this home? ({exc})"
                ) from None
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        except (plyvel.Error, OSError) as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None

    def _get_db(self) -> plyvel.DB:
        if self._db is None:
            raise StoreError(f"database {self.path} is closed")
        return self._db

    def get(self, key: bytes) -> bytes | None:
        _check_bytes("key", key)
        value: bytes | None = self._get_db().get(key)
        return value

    def put(self, key: bytes, value: bytes, sync: bool = True) -> None:
        _check_bytes("key", key)
        _check_bytes("value", value)
        self._get_db().put(key, value, sync=sync)

    def delete(self, key: bytes, sync: bool = True) -> None:
        _check_bytes("key", key)
        self._get_db().delete(key, sync=sync)

    def write_batch(
        self,
        puts: Iterable[tuple[bytes, bytes]],
        deletes: Iterable[bytes] = (),
        sync: bool = True,
    ) -> None:
        put_list, delete_list = _collect_batch(puts, deletes)
        batch = self._get_db().write_batch(sync=sync)
        for key in delete_list:
            batch.delete(key)
        for key, value in put_list:
            batch.put(key, value)
        batch.write()

    def iterate_prefix(
        self, prefix: bytes, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        _check_bytes("prefix", prefix)
        db = self._get_db()
        # An empty prefix means "everything"; plyvel wants None for that.
        iterator = db.iterator(prefix=prefix or None)
        try:
            for count, (key, value) in enumerate(iterator):
                if limit is not None and count >= limit:
                    return
                yield key, value
        finally:
            iterator.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class MemoryStore:
    """The same contract as :class:`LevelDBStore`, held in a dict (tests, simulations)."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] | None = {}

    def _get_data(self) -> dict[bytes, bytes]:
        if self._data is None:
            raise StoreError("memory store is closed")
        return self._data

    def get(self, key: bytes) -> bytes | None:
        _check_bytes("key", key)
        return self._get_data().get(key)

    def put(self, key: bytes, value: bytes, sync: bool = True) -> None:
        _check_bytes("key", key)
        _check_bytes("value", value)
        self._get_data()[key] = value

    def delete(self, key: bytes, sync: bool = True) -> None:
        _check_bytes("key", key)
        self._get_data().pop(key, None)

    def write_batch(
        self,
        puts: Iterable[tuple[bytes, bytes]],
        deletes: Iterable[bytes] = (),
        sync: bool = True,
    ) -> None:
        put_list, delete_list = _collect_batch(puts, deletes)
        data = self._get_data()
        for key in delete_list:
            data.pop(key, None)
        data.update(put_list)

    def iterate_prefix(
        self, prefix: bytes, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        _check_bytes("prefix", prefix)
        data = self._get_data()
        # A snapshot, like a LevelDB iterator: later writes do not show up mid-walk.
        keys = sorted(key for key in data if key.startswith(prefix))
        snapshot = [(key, data[key]) for key in keys]
        return iter(snapshot if limit is None else snapshot[:limit])

    def close(self) -> None:
        self._data = None


__all__ = [
    "KVStore",
    "LevelDBStore",
    "MemoryStore",
    "StoreError",
    "StoreLockedError",
]
