"""One transaction of the key-value state machine (:class:`Batch`): the
commands of one log entry, or one command outside the log. The rules around it
(order, atomicity, failure, exactly-once) are described in
:mod:`paxos_service.kv.state_machine`; this is the code every learner runs for
every entry, so it is written for speed (see :class:`Batch`).

Key-value semantics (like etcd v3)
==================================

* The store has a ``revision``, 0 when empty. Every command that changes the
  store (put, delete of a present key, successful compare-and-swap) adds exactly
  1; get, range, a delete of an absent key and a failed compare-and-swap do
  not. ``CommandResult.revision`` is the store revision after the command.
* Every key has ``version`` (1 when created, +1 per put or successful
  compare-and-swap), ``create_revision`` and ``mod_revision``. A delete removes
  the key; a later put creates it again with version 1.
* ``put``: always succeeds; ``kv``/``found`` are the previous key, if any.
* ``delete``: ``succeeded`` = ``found`` = the key existed; ``kv`` is the
  deleted key.
* ``compare_and_swap``: with ``expected_value``, swaps iff the key exists and
  its value equals it; with ``expected_version``, iff the key's version equals
  it, where 0 means "absent" (so it creates the key). On success ``kv``/
  ``found`` are the previous key like a put; on failure nothing changes and
  ``kv``, ``current`` and ``found`` describe the key as it is. Without either
  expectation it is an error.
* ``get``: ``kv``/``found``.
* ``range``: keys starting with ``prefix`` (``""`` = all), ordered by key
  (Unicode code point order), at most ``limit``; 0 or anything above
  :data:`~paxos_service.kv.commands.RANGE_LIMIT` means that limit.
* Keys must be non-empty.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, select

from paxos_service.kv.commands import (
    FENCE_DIGEST,
    MAX_SEQUENCE,
    cap_limit,
    key_error,
    operation_digest,
    point_key,
    too_old,
    utf8_error,
)
from paxos_service.kv.reads import select_range
from paxos_service.kv.store import Limits, client_to_db, kv, kv_clients, kv_events, kv_requests
from paxos_service.v1 import paxos_pb2 as pb

_PUT = pb.WatchEvent.EVENT_TYPE_PUT
_DELETE = pb.WatchEvent.EVENT_TYPE_DELETE

# Bound parameters carry a prefix so they never collide with column names.
_CHUNK = 500  # keys per IN (...) list

_SQL_EXPIRE_REQUESTS = (
    "DELETE FROM kv_requests WHERE client_id IN "
    "(SELECT client_id FROM kv_clients WHERE last_instance < ?)"
)
_SQL_EXPIRE_CLIENTS = "DELETE FROM kv_clients WHERE last_instance < ?"


def _upsert_sql(table: Table, key: str) -> str:
    """INSERT ... ON CONFLICT (key) DO UPDATE, with named parameters."""
    columns = [c.name for c in table.columns]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


def _insert_sql(table: Table) -> str:
    columns = [c.name for c in table.columns]
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)})"
    )


_SQL_KV_UPSERT = _upsert_sql(kv, "key")
_SQL_KV_DELETE = "DELETE FROM kv WHERE key = :b_key"
_SQL_CLIENT_UPSERT = _upsert_sql(kv_clients, "client_id")
_SQL_EVENT_INSERT = _insert_sql(kv_events)
_SQL_REQUEST_INSERT = _insert_sql(kv_requests)
_SQL_EVICT = "DELETE FROM kv_requests WHERE client_id = :b_client_id AND sequence <= :b_bound"
_SQL_FORGET = "DELETE FROM kv_requests WHERE client_id = :b_client_id AND sequence < :b_below"


@functools.cache
def _sql_kv(n: int) -> str:
    marks = ", ".join("?" * n)
    return (
        f"SELECT key, value, version, create_revision, mod_revision FROM kv WHERE key IN ({marks})"
    )


@functools.cache
def _sql_clients(n: int) -> str:
    marks = ", ".join("?" * n)
    columns = "client_id, max_sequence, last_instance, acked_below"
    return f"SELECT {columns} FROM kv_clients WHERE client_id IN ({marks})"


@functools.cache
def _sql_requests(n: int) -> str:
    pairs = ", ".join(["(?, ?)"] * n)
    return (
        "SELECT client_id, sequence, digest, result FROM kv_requests "
        f"WHERE (client_id, sequence) IN (VALUES {pairs})"
    )


_T = TypeVar("_T")


@dataclass(slots=True)
class _Kv:
    value: bytes
    version: int
    create_revision: int
    mod_revision: int


@dataclass(slots=True)
class _Client:
    max_sequence: int
    last_instance: int
    #: Every sequence below this has its answer at the client (forgotten).
    acked_below: int = 0


class Batch:
    """The commands of one transaction.

    Reads go through a working set loaded up front with one query per table,
    and writes are collected and flushed with one ``executemany`` per table:
    one SQL statement per command would cost far more than the commit. A range
    flushes first, then reads the database (inside the same transaction).
    """

    def __init__(self, conn: Connection, limits: Limits, revision: int, instance: int) -> None:
        self.revision = revision
        self.events: list[tuple[int, pb.WatchEvent]] = []
        self._conn = conn
        self._limits = limits
        self._instance = instance
        self._kvs: dict[str, _Kv | None] = {}
        self._dirty_keys: dict[str, None] = {}
        self._clients: dict[int, _Client | None] = {}
        self._dirty_clients: dict[int, None] = {}
        # None: known not to be remembered.
        self._requests: dict[tuple[int, int], tuple[bytes, bytes] | None] = {}
        self._new_requests: list[dict[str, Any]] = []
        #: Results the clients acknowledged: (client, below) to delete.
        self._forget: list[dict[str, Any]] = []
        self._new_events: list[dict[str, Any]] = []
        #: The highest revision a compact command of this batch asked for (0: none);
        #: the state machine discards the history once the batch is flushed.
        self.compact_to = 0

    # The hot path (every entry) uses plain SQL through the driver: building
    # and compiling SQLAlchemy statements per entry was a third of a learner's
    # Python time (see docs/performance.md). Same tables, same semantics.

    def expire_clients(self) -> None:
        bound = self._instance - self._limits.client_idle_instances
        if bound <= 0:
            return
        self._conn.exec_driver_sql(_SQL_EXPIRE_REQUESTS, (bound,))
        self._conn.exec_driver_sql(_SQL_EXPIRE_CLIENTS, (bound,))

    def prefetch(self, commands: Iterable[pb.Command]) -> None:
        keys: set[str] = set()
        clients: set[int] = set()
        requests: set[tuple[int, int]] = set()
        for command in commands:
            key = point_key(command)
            if key is not None and key_error(key) is None:
                keys.add(key)
            if command.client_id != 0 and command.sequence <= MAX_SEQUENCE:
                client = client_to_db(command.client_id)
                clients.add(client)
                requests.add((client, command.sequence))
        run = self._conn.exec_driver_sql
        for chunk in _chunks(sorted(keys - self._kvs.keys())):
            for key in chunk:
                self._kvs[key] = None
            for key, value, version, create, mod in run(_sql_kv(len(chunk)), tuple(chunk)):
                self._kvs[key] = _Kv(value, version, create, mod)
        for id_chunk in _chunks(sorted(clients)):
            for client in id_chunk:
                self._clients[client] = None
            rows = run(_sql_clients(len(id_chunk)), tuple(id_chunk))
            for client, max_sequence, last, acked_below in rows:
                self._clients[client] = _Client(max_sequence, last, acked_below)
        for pair_chunk in _chunks(sorted(requests - self._requests.keys())):
            for pair in pair_chunk:
                self._requests[pair] = None
            flat = tuple(x for pair in pair_chunk for x in pair)
            for client, sequence, digest, result in run(_sql_requests(len(pair_chunk)), flat):
                self._requests[(client, sequence)] = (digest, result)

    def apply(self, command: pb.Command) -> pb.CommandResult:
        """Exactly-once around :meth:`_execute`."""
        if command.client_id == 0:
            return self._execute(command)
        sequence = command.sequence
        if sequence > MAX_SEQUENCE:
            return self._error(f"sequence {sequence} is out of range (must be below 2**63)")
        client_id = client_to_db(command.client_id)
        client = self._client(client_id)
        if client is not None:
            client.last_instance = self._instance
            self._dirty_clients[client_id] = None
            bound = max(client.max_sequence - self._limits.dedup_window, client.acked_below - 1)
            if sequence <= bound:
                return self._error(too_old(sequence, command.client_id, bound))
            self._acknowledge(client_id, client, min(command.first_incomplete, sequence))
        digest = operation_digest(command)
        stored = self._request(client_id, sequence)
        if stored is not None:
            if stored[0] != digest:
                fenced = (
                    ' (by a GetOutcome fence, which answered "not applied": this request '
                    "will never be applied; send it again under a new sequence)"
                    if stored[0] == FENCE_DIGEST
                    else ""
                )
                return self._error(
                    f"sequence {sequence} of client {command.client_id} was already used "
                    f"for a different command{fenced}"
                )
            return pb.CommandResult.FromString(stored[1])
        result = self._execute(command)
        blob = result.SerializeToString(deterministic=True)
        self._requests[(client_id, sequence)] = (digest, blob)
        self._new_requests.append(
            {"client_id": client_id, "sequence": sequence, "digest": digest, "result": blob}
        )
        if client is None:
            # A client the store does not know has no results to forget.
            acked = min(command.first_incomplete, sequence)
            self._clients[client_id] = _Client(sequence, self._instance, acked)
        else:
            client.max_sequence = max(client.max_sequence, sequence)
        self._dirty_clients[client_id] = None
        return result

    def _acknowledge(self, client_id: int, client: _Client, below: int) -> None:
        """The client has the answers of its sequences below ``below``: forget
        their results (deterministically: it is part of the command). Nothing
        in this batch reads them again: the client's floor refuses those
        sequences first. The delete runs at :meth:`flush`, after the inserts,
        so it also takes a result this batch stored."""
        if below <= client.acked_below:
            return
        client.acked_below = below
        self._forget.append({"b_client_id": client_id, "b_below": below})

    def flush(self) -> None:
        """Write everything collected so far (still inside the transaction)."""
        conn = self._conn
        if self._dirty_keys:
            upserts: list[dict[str, Any]] = []
            deletes: list[dict[str, Any]] = []
            for key in self._dirty_keys:
                row = self._kvs[key]
                if row is None:
                    deletes.append({"b_key": key})
                else:
                    upserts.append(
                        {
                            "key": key,
                            "value": row.value,
                            "version": row.version,
                            "create_revision": row.create_revision,
                            "mod_revision": row.mod_revision,
                        }
                    )
            if deletes:
                conn.exec_driver_sql(_SQL_KV_DELETE, deletes)
            if upserts:
                conn.exec_driver_sql(_SQL_KV_UPSERT, upserts)
            self._dirty_keys.clear()
        if self._new_events:
            conn.exec_driver_sql(_SQL_EVENT_INSERT, self._new_events)
            self._new_events = []
        if self._new_requests:
            conn.exec_driver_sql(_SQL_REQUEST_INSERT, self._new_requests)
            self._new_requests = []
        if self._forget:
            conn.exec_driver_sql(_SQL_FORGET, self._forget)
            self._forget = []
        if self._dirty_clients:
            clients: list[dict[str, Any]] = []
            evictions: list[dict[str, Any]] = []
            for client_id in self._dirty_clients:
                client = self._clients[client_id]
                assert client is not None
                clients.append(
                    {
                        "client_id": client_id,
                        "max_sequence": client.max_sequence,
                        "last_instance": client.last_instance,
                        "acked_below": client.acked_below,
                    }
                )
                bound = client.max_sequence - self._limits.dedup_window
                if bound >= 0:
                    evictions.append({"b_client_id": client_id, "b_bound": bound})
            conn.exec_driver_sql(_SQL_CLIENT_UPSERT, clients)
            if evictions:
                conn.exec_driver_sql(_SQL_EVICT, evictions)
            self._dirty_clients.clear()

    # Operations -------------------------------------------------------------------

    def _execute(self, command: pb.Command) -> pb.CommandResult:
        which = command.WhichOneof("op")
        if which == "put":
            return self._put(command.put)
        if which == "delete":
            return self._delete(command.delete)
        if which == "compare_and_swap":
            return self._compare_and_swap(command.compare_and_swap)
        if which == "get":
            return self._get(command.get)
        if which == "range":
            return self._range(command.range)
        if which == "compact":
            return self._compact(command.compact)
        return self._error("command has no operation")

    def _put(self, op: pb.PutOp) -> pb.CommandResult:
        error = key_error(op.key)
        if error is not None:
            return self._error(error)
        previous = self._load(op.key)
        self._write(op.key, op.value, previous)
        result = pb.CommandResult(
            revision=self.revision, succeeded=True, found=previous is not None
        )
        if previous is not None:
            result.kv.CopyFrom(_kv_pb(op.key, previous))
        return result

    def _delete(self, op: pb.DeleteOp) -> pb.CommandResult:
        error = key_error(op.key)
        if error is not None:
            return self._error(error)
        previous = self._load(op.key)
        if previous is None:
            return pb.CommandResult(revision=self.revision, succeeded=False, found=False)
        self.revision += 1
        self._kvs[op.key] = None
        self._dirty_keys[op.key] = None
        self._record_event(
            _DELETE, op.key, _Kv(b"", 0, 0, self.revision), previous, stored_value=b""
        )
        result = pb.CommandResult(revision=self.revision, succeeded=True, found=True)
        result.kv.CopyFrom(_kv_pb(op.key, previous))
        return result

    def _compare_and_swap(self, op: pb.CompareAndSwapOp) -> pb.CommandResult:
        error = key_error(op.key)
        if error is not None:
            return self._error(error)
        expect = op.WhichOneof("expect")
        if expect is None:
            return self._error("compare_and_swap needs expected_value or expected_version")
        current = self._load(op.key)
        if expect == "expected_value":
            matches = current is not None and current.value == op.expected_value
        else:
            matches = (0 if current is None else current.version) == op.expected_version
        if not matches:
            result = pb.CommandResult(
                revision=self.revision, succeeded=False, found=current is not None
            )
            if current is not None:
                result.kv.CopyFrom(_kv_pb(op.key, current))
                result.current.CopyFrom(_kv_pb(op.key, current))
            return result
        self._write(op.key, op.value, current)
        result = pb.CommandResult(revision=self.revision, succeeded=True, found=current is not None)
        if current is not None:
            result.kv.CopyFrom(_kv_pb(op.key, current))
        return result

    def _get(self, op: pb.GetOp) -> pb.CommandResult:
        error = key_error(op.key)
        if error is not None:
            return self._error(error)
        current = self._load(op.key)
        result = pb.CommandResult(revision=self.revision, found=current is not None)
        if current is not None:
            result.kv.CopyFrom(_kv_pb(op.key, current))
        return result

    def _range(self, op: pb.RangeOp) -> pb.CommandResult:
        error = utf8_error(op.prefix)
        if error is not None:
            return self._error(error)
        self.flush()
        kvs = select_range(self._conn, op.prefix, cap_limit(op.limit))
        return pb.CommandResult(revision=self.revision, kvs=kvs)

    def _compact(self, op: pb.CompactOp) -> pb.CommandResult:
        """The answer depends on the revisions only, never on how far this
        replica's own retention has compacted, so every replica gives the same."""
        if op.revision < 1:
            return self._error("compact needs a revision >= 1")
        if op.revision > self.revision:
            return self._error(
                f"revision {op.revision} is in the future: the store is at revision {self.revision}"
            )
        self.compact_to = max(self.compact_to, op.revision)
        return pb.CommandResult(revision=self.revision, succeeded=True)

    def _error(self, message: str) -> pb.CommandResult:
        return pb.CommandResult(revision=self.revision, error=message)

    # Working set ------------------------------------------------------------------------

    def _write(self, key: str, value: bytes, previous: _Kv | None) -> None:
        self.revision += 1
        if previous is None:
            new = _Kv(value, 1, self.revision, self.revision)
        else:
            new = _Kv(value, previous.version + 1, previous.create_revision, self.revision)
        self._kvs[key] = new
        self._dirty_keys[key] = None
        self._record_event(_PUT, key, new, previous, stored_value=value)

    def _record_event(
        self,
        kind: pb.WatchEvent.EventType.ValueType,
        key: str,
        new: _Kv,
        previous: _Kv | None,
        *,
        stored_value: bytes,
    ) -> None:
        event = pb.WatchEvent(type=kind, kv=_kv_pb(key, new), had_previous=previous is not None)
        if previous is not None:
            event.previous.CopyFrom(_kv_pb(key, previous))
        self.events.append((self.revision, event))
        self._new_events.append(
            {
                "revision": self.revision,
                "key": key,
                "type": int(kind),
                "value": stored_value,
                "version": new.version,
                "create_revision": new.create_revision,
                "mod_revision": new.mod_revision,
                "had_previous": previous is not None,
                "prev_value": None if previous is None else previous.value,
                "prev_version": 0 if previous is None else previous.version,
                "prev_create_revision": 0 if previous is None else previous.create_revision,
                "prev_mod_revision": 0 if previous is None else previous.mod_revision,
            }
        )

    def _load(self, key: str) -> _Kv | None:
        if key not in self._kvs:
            row = self._conn.execute(select(kv).where(kv.c.key == key)).first()
            self._kvs[key] = (
                None
                if row is None
                else _Kv(row.value, row.version, row.create_revision, row.mod_revision)
            )
        return self._kvs[key]

    def _client(self, client_id: int) -> _Client | None:
        if client_id not in self._clients:
            row = self._conn.execute(
                select(kv_clients).where(kv_clients.c.client_id == client_id)
            ).first()
            self._clients[client_id] = (
                None
                if row is None
                else _Client(row.max_sequence, row.last_instance, row.acked_below)
            )
        return self._clients[client_id]

    def _request(self, client_id: int, sequence: int) -> tuple[bytes, bytes] | None:
        pair = (client_id, sequence)
        if pair not in self._requests:
            row = self._conn.execute(
                select(kv_requests.c.digest, kv_requests.c.result).where(
                    kv_requests.c.client_id == client_id, kv_requests.c.sequence == sequence
                )
            ).first()
            self._requests[pair] = None if row is None else (row.digest, row.result)
        return self._requests[pair]


def _kv_pb(key: str, row: _Kv) -> pb.KeyValue:
    return pb.KeyValue(
        key=key,
        value=row.value,
        version=row.version,
        create_revision=row.create_revision,
        mod_revision=row.mod_revision,
    )


def _chunks(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
