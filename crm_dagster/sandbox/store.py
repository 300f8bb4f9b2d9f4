"""In-memory record store behind the sandbox API.

The store keeps each record as its encoded JSON text, so a page of 1,000 records is one
string join. Generated records are produced in id order, on first access or ahead of it by
:meth:`RecordStore.generate_in_background`, so a server with a million records starts at
once. Any change through the control API first generates the rest of the dataset.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crm_dagster.sandbox.records import (
    encode_record,
    format_timestamp,
    generate_record,
    parse_timestamp,
)

# Records generated per lock hold in the background, small so that a request waits briefly.
_BACKGROUND_BATCH = 256


def updated_at_key(value: Any) -> str | None:
    """Return ``value`` as a ``YYYY-MM-DDTHH:MM:SSZ`` string for ordering, or None if invalid.

    Strings in that form sort in time order, which makes the ``updated_since`` filter a string
    comparison.
    """
    if not isinstance(value, str):
        return None
    if len(value) == 20 and value[10] == "T" and value[19] == "Z":
        return value
    try:
        return format_timestamp(parse_timestamp(value))
    except ValueError:
        return None


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in changes.items():
        current = merged.get(name)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[name] = _merge(current, value)
        else:
            merged[name] = value
    return merged


def _record_id(record: Any) -> int:
    if not isinstance(record, dict):
        raise ValueError(f"invalid upsert record {record!r}: expected a JSON object")
    record_id = record.get("id")
    if type(record_id) is not int:
        raise ValueError(f"invalid upsert record: id must be an integer, got {record_id!r}")
    return record_id


@dataclass(frozen=True)
class _Encoded:
    """A record's JSON text and its ``updated_at`` ordering key."""

    text: str
    updated_key: str | None

    @classmethod
    def of(cls, record: dict[str, Any]) -> _Encoded:
        try:
            text = encode_record(record)
        except (TypeError, ValueError) as error:
            raise ValueError(f"cannot encode record {record.get('id')}: {error}") from error
        return cls(text, updated_at_key(record.get("updated_at")))


def _check_ids(ids: Iterable[Any], operation: str) -> list[int]:
    checked = list(ids)
    for record_id in checked:
        if type(record_id) is not int:
            raise ValueError(f"invalid {operation} id {record_id!r}: expected an integer")
    return checked


class RecordStore:
    """Thread-safe list of CRM records sorted by ``id``.

    Args:
        count: Number of generated records, with ids 1 to ``count``.
        seed: Seed passed to :func:`generate_record`.
    """

    def __init__(self, count: int, seed: int) -> None:
        if type(count) is not int or count < 0:
            raise ValueError(f"invalid record count {count!r}: expected an integer >= 0")
        self.seed = seed
        self._lock = threading.Lock()
        # Parallel lists, one entry per record in id order. Only the first len(self._ids)
        # records exist yet. The next self._pending records are generated ids that follow.
        self._ids: list[int] = []
        self._encoded: list[str] = []
        self._updated_keys: list[str | None] = []
        self._pending = count
        self._max_id = count
        # Positions matching the last updated_since value, valid while _version is unchanged.
        self._version = 0
        self._filter_cache: tuple[int, str, list[int]] | None = None

    def _generate_until(self, size: int) -> None:
        """Generate pending records until at least ``size`` records exist. Needs the lock."""
        missing = min(size - len(self._ids), self._pending)
        if missing <= 0:
            return
        first = len(self._ids) + 1
        for index in range(first, first + missing):
            record = generate_record(index, self.seed)
            self._ids.append(index)
            self._encoded.append(encode_record(record))
            self._updated_keys.append(record["updated_at"])
        self._pending -= missing

    def _generate_all(self) -> None:
        self._generate_until(len(self._ids) + self._pending)

    def generate_in_background(self, stop: threading.Event) -> threading.Thread:
        """Start a daemon thread that generates pending records until done or ``stop`` is set.

        The thread takes the lock for a batch of records at a time, so requests wait for at
        most one batch. It lets the server generate records while a client processes the
        previous page.
        """

        def run() -> None:
            while not stop.is_set():
                with self._lock:
                    if self._pending == 0:
                        return
                    self._generate_until(len(self._ids) + _BACKGROUND_BATCH)

        thread = threading.Thread(target=run, name="crm-sandbox-records", daemon=True)
        thread.start()
        return thread

    @property
    def total(self) -> int:
        """Number of records in the store."""
        with self._lock:
            return len(self._ids) + self._pending

    def page(
        self,
        offset: int,
        limit: int,
        updated_since: str | None = None,
        newest_first: bool = False,
    ) -> tuple[list[str], int]:
        """Return encoded records ``offset + 1`` to ``offset + limit`` and the matching total.

        Args:
            offset: Number of matching records to skip.
            limit: Maximum number of records to return.
            updated_since: Keep only records with ``updated_at >= updated_since``. The value
                must be in the form ``YYYY-MM-DDTHH:MM:SSZ``. Records without a valid
                ``updated_at`` never match.
            newest_first: Order by ``updated_at`` descending, then ``id`` descending, with
                records without a valid ``updated_at`` last, instead of by ``id``.
        """
        with self._lock:
            if newest_first:
                positions = self._newest_first_positions(updated_since)
                selected = positions[offset : offset + limit]
                return [self._encoded[position] for position in selected], len(positions)
            if updated_since is None:
                self._generate_until(offset + limit)
                return self._encoded[offset : offset + limit], len(self._ids) + self._pending
            positions = self._filtered_positions(updated_since)
            selected = positions[offset : offset + limit]
            return [self._encoded[position] for position in selected], len(positions)

    def _newest_first_positions(self, updated_since: str | None) -> list[int]:
        """Positions of the matching records, newest ``updated_at`` first. Needs the lock."""
        if updated_since is None:
            self._generate_all()
            positions = list(range(len(self._ids)))
        else:
            positions = self._filtered_positions(updated_since)
        return sorted(
            positions,
            key=lambda position: (self._updated_keys[position] or "", self._ids[position]),
            reverse=True,
        )

    def _filtered_positions(self, updated_since: str) -> list[int]:
        cache = self._filter_cache
        if cache is not None and cache[0] == self._version and cache[1] == updated_since:
            return cache[2]
        self._generate_all()
        positions = [
            position
            for position, key in enumerate(self._updated_keys)
            if key is not None and key >= updated_since
        ]
        self._filter_cache = (self._version, updated_since, positions)
        return positions

    def records(self) -> list[dict[str, Any]]:
        """Return new copies of all records in id order."""
        with self._lock:
            self._generate_all()
            return [json.loads(text) for text in self._encoded]

    def apply(
        self,
        upsert: Iterable[dict[str, Any]] = (),
        touch: Iterable[int] = (),
        delete: Iterable[int] = (),
        add: int = 0,
    ) -> int:
        """Change records in the order upsert, touch, delete, add, all or nothing.

        Args:
            upsert: Records with an integer ``id``. Fields are merged into the stored record,
                nested objects field by field. An unknown id inserts the generated record
                for that id with the fields merged in.
            touch: Ids whose ``updated_at`` becomes the current UTC time, in whole seconds.
            delete: Ids to remove.
            add: Number of generated records to append. Their ids continue after the highest
                id the store has held, and their ``created_at`` and ``updated_at`` are the
                current time, so an incremental load with ``updated_since`` picks them up.

        Returns:
            The number of records after the change.

        Raises:
            ValueError: If an argument is invalid, a touched or deleted id does not exist, or a
                record cannot be encoded as JSON. Nothing changes then.
        """
        upsert = list(upsert)
        touch = _check_ids(touch, "touch")
        delete = _check_ids(delete, "delete")
        if type(add) is not int or add < 0:
            raise ValueError(f"invalid add count {add!r}: expected an integer >= 0")
        now = format_timestamp(datetime.now(UTC))

        with self._lock:
            self._generate_all()
            # Collect every change first so that an invalid request leaves the store as it
            # was. A value of None marks a deleted id.
            changes: dict[int, _Encoded | None] = {}
            for fields in upsert:
                record_id = _record_id(fields)
                current = self._lookup(record_id, changes)
                if current is None:
                    base = generate_record(record_id, self.seed)
                else:
                    base = json.loads(current.text)
                changes[record_id] = _Encoded.of(_merge(base, fields))
            for record_id in touch:
                current = self._lookup(record_id, changes)
                if current is None:
                    raise ValueError(f"cannot touch record {record_id}: not found")
                record = json.loads(current.text)
                record["updated_at"] = now
                changes[record_id] = _Encoded.of(record)
            for record_id in delete:
                if self._lookup(record_id, changes) is None:
                    raise ValueError(f"cannot delete record {record_id}: not found")
                changes[record_id] = None
            next_id = max([self._max_id, *changes]) + 1
            for record_id in range(next_id, next_id + add):
                record = generate_record(record_id, self.seed)
                record["created_at"] = record["updated_at"] = now
                changes[record_id] = _Encoded.of(record)
            self._commit(changes)
            return len(self._ids)

    def _position(self, record_id: int) -> int | None:
        """Find the list position of ``record_id``. Needs the lock and a generated dataset."""
        position = bisect.bisect_left(self._ids, record_id)
        if position < len(self._ids) and self._ids[position] == record_id:
            return position
        return None

    def _lookup(self, record_id: int, changes: dict[int, _Encoded | None]) -> _Encoded | None:
        if record_id in changes:
            return changes[record_id]
        position = self._position(record_id)
        if position is None:
            return None
        return _Encoded(self._encoded[position], self._updated_keys[position])

    def _commit(self, changes: dict[int, _Encoded | None]) -> None:
        """Write collected changes into the lists. Needs the lock."""
        deleted: set[int] = set()
        inserted: list[tuple[int, _Encoded]] = []
        for record_id, encoded in changes.items():
            position = self._position(record_id)
            if encoded is None:
                if position is not None:
                    deleted.add(position)
            elif position is None:
                inserted.append((record_id, encoded))
            else:
                self._encoded[position] = encoded.text
                self._updated_keys[position] = encoded.updated_key
        if deleted:
            kept = [position for position in range(len(self._ids)) if position not in deleted]
            self._ids = [self._ids[position] for position in kept]
            self._encoded = [self._encoded[position] for position in kept]
            self._updated_keys = [self._updated_keys[position] for position in kept]
        for record_id, encoded in sorted(inserted, key=lambda item: item[0]):
            # Appending is the common case (add, or upserts of new high ids) and is O(1).
            position = bisect.bisect_left(self._ids, record_id)
            self._ids.insert(position, record_id)
            self._encoded.insert(position, encoded.text)
            self._updated_keys.insert(position, encoded.updated_key)
        self._max_id = max([self._max_id, *changes])
        self._version += 1
        self._filter_cache = None
