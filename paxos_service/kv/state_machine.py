"""The deterministic key-value state machine that every learner applies the
decided log to, persisted in SQLite.

Rules
=====

Determinism. Every replica applies the same log entries in the same order, so
every result must depend only on the stored state and the entry: no clock, no
randomness, no configuration that can differ between replicas (the two limits
below are written into the file and checked on every open). A command that is
invalid (empty key, no operation, ...) is not an exception: it gets a
``CommandResult.error``, changes nothing, and every replica computes the same
error.

Order and atomicity. ``apply_entry(instance, entry)`` applies entry ``instance``
only if it is ``applied_instance + 1`` (else :class:`EntryOutOfOrder`). All of
its commands, its history events, its exactly-once memory and the new
``applied_instance`` are committed in one SQLite transaction (WAL,
``synchronous=FULL``), so after a crash the file holds all of the entry or none
of it, and a restarted learner resumes at ``applied_instance + 1``. A no-op
entry (``noop`` set, or no commands) only advances ``applied_instance``: the
commands of an entry with ``noop`` set are ignored, never applied, and it has
no results (``log_entry.decode`` drops them, so that a learner's results line
up with the commands it delivers).

Failure. Any error while applying (an I/O error, a full disk, a bug) rolls the
transaction back and leaves this object unusable: it raises
:class:`~paxos_service.storage.StorageError` until it is closed and the file
opened again, which resumes from the last committed entry. Like etcd's raft
after a storage error, it never guesses what the disk holds.

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
  :data:`RANGE_LIMIT` means :data:`RANGE_LIMIT`.
* Keys must be non-empty.

Exactly-once
============

Every command carries ``(client_id, sequence)``. ``client_id`` 0 means "no
protection": the command is applied every time. Otherwise:

* The result of each applied ``(client_id, sequence)`` is stored durably with
  a digest of the operation. A repeat with the same operation returns the
  stored result (stored revision included) and changes nothing; a repeat with
  a *different* operation gets an error and changes nothing.
* A client may have many requests in flight, so sequences may arrive in any
  order. The state machine remembers, per client, the sequences within
  :data:`DEDUP_WINDOW` of the highest one applied: with highest ``h``, a
  sequence ``s <= h - DEDUP_WINDOW`` gets the error "sequence ... too old" and
  changes nothing, whether or not it was applied. That error does *not* mean
  "failed": an earlier copy may have been applied, and the store no longer
  knows. :func:`is_forgotten` recognises it, and a server must answer it as
  "outcome unknown", never as a failure (:meth:`KvStateMachine.lookup` says
  ``FORGOTTEN`` for such a request). A client must therefore keep
  fewer than ``DEDUP_WINDOW`` sequence numbers between its oldest outstanding
  request and its newest.
* A fence is a command with a ``client_id`` and no operation. It claims
  ``(client_id, sequence)`` like any command (stored, with the digest of "no
  operation", and answered with the error "command has no operation"), so a
  command with that pair that comes later in the log is refused as "already
  used for a different command" and never applied. ``GetOutcome`` appends one
  before it answers: if the request was applied first, its result is stored;
  if the fence was first, the request will never be applied, and "not
  applied" is final (:meth:`KvStateMachine.lookup` says ``FENCED``).
* Sequences must be below 2**63.
* Garbage collection: a client with no command in the last
  :data:`CLIENT_IDLE_INSTANCES` log instances is forgotten when the entry at
  ``last_instance + CLIENT_IDLE_INSTANCES + 1`` is applied (at the same point
  of the log on every replica). A request it retries after that is treated as
  new. Clients that may pause that long should use a fresh ``client_id``.

Watch history
=============

Every change appends an event at its revision, durably and in the same
transaction. :meth:`KvStateMachine.events_since` replays history from a
revision; ``apply_entry`` also returns the entry's new events so a server can
push them to live watchers. :meth:`KvStateMachine.compact` discards old
history (a local decision, not replicated); a replay from a compacted revision
raises :class:`Compacted`.

Threads: one object, one SQLite connection, used from one thread at a time
(the server runs it in a dedicated executor thread).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import functools
import hashlib
import json
import re
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    Row,
    String,
    Table,
    delete,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from paxos_service.kv import store
from paxos_service.kv.store import (
    Limits,
    client_to_db,
    kv,
    kv_clients,
    kv_events,
    kv_requests,
    kv_state,
)
from paxos_service.sqlite_setup import error_reason as _reason
from paxos_service.storage import StorageError
from paxos_service.v1 import paxos_pb2 as pb

DEDUP_WINDOW = 1000
"""Per client with highest applied sequence ``h``, the sequences ``s`` with
``h - DEDUP_WINDOW < s <= h`` are remembered; older ones are "too old"."""

CLIENT_IDLE_INSTANCES = 100_000
"""A client idle for more than this many log instances is forgotten."""

RANGE_LIMIT = 10_000
"""The most keys one range returns, and the most events one history read returns."""

MAX_SEQUENCE = (1 << 63) - 1

_PUT = pb.WatchEvent.EVENT_TYPE_PUT
_DELETE = pb.WatchEvent.EVENT_TYPE_DELETE
_EVENT_TYPES = {int(_PUT): _PUT, int(_DELETE): _DELETE}

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


@functools.cache
def _sql_kv(n: int) -> str:
    marks = ", ".join("?" * n)
    return (
        f"SELECT key, value, version, create_revision, mod_revision FROM kv WHERE key IN ({marks})"
    )


@functools.cache
def _sql_clients(n: int) -> str:
    marks = ", ".join("?" * n)
    columns = "client_id, max_sequence, last_instance"
    return f"SELECT {columns} FROM kv_clients WHERE client_id IN ({marks})"


@functools.cache
def _sql_requests(n: int) -> str:
    pairs = ", ".join(["(?, ?)"] * n)
    return (
        "SELECT client_id, sequence, digest, result FROM kv_requests "
        f"WHERE (client_id, sequence) IN (VALUES {pairs})"
    )


_T = TypeVar("_T")


class EntryOutOfOrder(ValueError):
    """``apply_entry`` was given an instance other than ``applied_instance + 1``."""

    def __init__(self, expected: int, instance: int) -> None:
        super().__init__(
            f"log entries are applied strictly in order: expected instance {expected}, "
            f"got {instance}"
        )
        self.expected = expected
        self.instance = instance


class Compacted(Exception):
    """History through ``revision`` has been discarded by :meth:`KvStateMachine.compact`.

    A watcher must read the current state and watch from ``revision + 1``.
    """

    def __init__(self, revision: int, start_revision: int | None = None) -> None:
        asked = "" if start_revision is None else f" (asked from revision {start_revision})"
        super().__init__(
            f"watch history through revision {revision} has been compacted{asked}: "
            f"read the current state and watch from revision {revision + 1}"
        )
        self.revision = revision
        self.start_revision = start_revision


class InvalidSnapshot(ValueError):
    """The bytes given to ``restore`` are not a usable snapshot of this store."""


class RequestState(enum.Enum):
    """What the store knows of one ``(client_id, sequence)``."""

    #: Applied; its result is stored.
    APPLIED = "applied"
    #: A fence claimed it first: it was not applied and never will be.
    FENCED = "fenced"
    #: Older than the client's dedup window: it may or may not have been
    #: applied, and the store cannot tell any more ("outcome unknown").
    FORGOTTEN = "forgotten"
    #: Nothing stored: never applied so far (or its client was forgotten as idle).
    ABSENT = "absent"


class StateMachine(Protocol):
    """What a learner replica applies decided commands to.

    Implementations must be deterministic: the same commands applied to the
    same state give the same results and the same state on every replica.
    """

    def apply(self, command: pb.Command) -> pb.CommandResult:
        """Apply one command and return its result. An invalid command is
        answered with ``CommandResult.error`` and changes nothing."""
        ...

    def snapshot(self) -> bytes:
        """The whole state, as bytes that :meth:`restore` accepts."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a :meth:`snapshot`."""
        ...


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one log entry did."""

    instance: int
    # The store revision after the entry.
    revision: int
    # One result per command, in the entry's order.
    results: list[pb.CommandResult]
    # The changes the entry made, as (revision, event), in revision order.
    events: list[tuple[int, pb.WatchEvent]]


class KvStateMachine:
    """The key-value store on SQLite. Open it with :meth:`open`."""

    def __init__(
        self, path: Path, engine: Engine, conn: Connection, state: store.State, limits: Limits
    ) -> None:
        self.path = path
        self.limits = limits
        self._engine = engine
        self._conn: Connection | None = conn
        self._applied_instance = state.applied_instance
        self._revision = state.revision
        self._compacted_revision = state.compacted_revision
        self._broken: str | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        dedup_window: int = DEDUP_WINDOW,
        client_idle_instances: int = CLIENT_IDLE_INSTANCES,
    ) -> KvStateMachine:
        """Open the state machine in ``path``, creating it if it does not exist.

        Raises :class:`~paxos_service.storage.StorageCorrupt` for a file that is
        empty, damaged, not a key-value state machine database, or made with
        other limits. The limits exist for tests; every replica must use the
        same ones.
        """
        path = Path(path)
        limits = Limits(dedup_window, client_idle_instances)
        if not path.exists():
            store.create(path, limits)
        engine, conn, state = store.open_existing(path, limits)
        return cls(path, engine, conn, state, limits)

    # Position ---------------------------------------------------------------

    @property
    def applied_instance(self) -> int:
        """The last log instance applied; 0 before the first."""
        return self._applied_instance

    @property
    def revision(self) -> int:
        """The store revision: the number of changes ever made."""
        return self._revision

    @property
    def compacted_revision(self) -> int:
        """History through this revision has been discarded (0: none)."""
        return self._compacted_revision

    # Applying ---------------------------------------------------------------

    def apply_entry(self, instance: int, entry: pb.LogEntry) -> Applied:
        """Apply decided log entry ``instance`` atomically; see the module docs."""
        return self.apply_entries(instance, [entry])[0]

    def apply_entries(self, first: int, entries: Sequence[pb.LogEntry]) -> list[Applied]:
        """Apply the decided entries ``first``, ``first + 1``, ... in one
        transaction: one commit (one fsync) for all of them, all or none after
        a crash. Each entry's results are exactly those :meth:`apply_entry`
        would give it alone: every entry gets its own working set, read after
        the previous entry's writes (inside the same transaction)."""
        self._usable()
        expected = self._applied_instance + 1
        if first != expected:
            raise EntryOutOfOrder(expected, first)
        if not entries:
            return []
        revision = self._revision
        applied: list[Applied] = []
        with self._transaction() as conn:
            for instance, entry in enumerate(entries, start=first):
                commands: Sequence[pb.Command] = () if entry.noop else entry.commands
                batch = _Batch(conn, self.limits, revision, instance)
                batch.expire_clients()
                batch.prefetch(commands)
                results = [batch.apply(command) for command in commands]
                batch.flush()
                revision = batch.revision
                applied.append(Applied(instance, revision, results, batch.events))
            conn.execute(
                kv_state.update()
                .where(kv_state.c.id == 1)
                .values(applied_instance=applied[-1].instance, revision=revision)
            )
        self._applied_instance = applied[-1].instance
        self._revision = revision
        return applied

    def apply(self, command: pb.Command) -> pb.CommandResult:
        """Apply one command on its own, outside the log: ``applied_instance``
        does not move. Learners use :meth:`apply_entry`; this is the
        :class:`StateMachine` interface for single commands and tests."""
        with self._transaction() as conn:
            batch = _Batch(conn, self.limits, self._revision, self._applied_instance)
            batch.prefetch([command])
            result = batch.apply(command)
            batch.flush()
            conn.execute(
                kv_state.update().where(kv_state.c.id == 1).values(revision=batch.revision)
            )
        self._revision = batch.revision
        return result

    # Local reads (no log: possibly stale) ------------------------------------

    def get_local(self, key: str) -> pb.KeyValue | None:
        """The key as this replica has it, or None."""
        if _key_error(key) is not None:
            return None
        with self._transaction() as conn:
            row = conn.execute(select(kv).where(kv.c.key == key)).first()
        return None if row is None else _kv_from_row(row)

    def range_local(self, prefix: str, limit: int = 0) -> list[pb.KeyValue]:
        """Keys starting with ``prefix`` in key order, as this replica has them."""
        if _utf8_error(prefix) is not None:
            return []
        with self._transaction() as conn:
            return _select_range(conn, prefix, _cap(limit))

    def lookup(self, client_id: int, sequence: int) -> tuple[RequestState, pb.CommandResult | None]:
        """What this replica knows of request ``(client_id, sequence)``, and
        the stored result if it is APPLIED or FENCED. ``ABSENT`` is not final
        (the request may still come through the log): only a fence applied
        through the log makes "not applied" final."""
        if client_id == 0 or not 0 <= sequence <= MAX_SEQUENCE or client_id >= 1 << 64:
            return RequestState.ABSENT, None
        client = client_to_db(client_id)
        with self._transaction() as conn:
            row = conn.execute(
                select(kv_requests.c.digest, kv_requests.c.result).where(
                    kv_requests.c.client_id == client, kv_requests.c.sequence == sequence
                )
            ).first()
            highest = conn.execute(
                select(kv_clients.c.max_sequence).where(kv_clients.c.client_id == client)
            ).scalar()
        if row is not None:
            state = RequestState.FENCED if row.digest == _FENCE_DIGEST else RequestState.APPLIED
            return state, pb.CommandResult.FromString(row.result)
        if highest is not None and sequence <= highest - self.limits.dedup_window:
            return RequestState.FORGOTTEN, None
        return RequestState.ABSENT, None

    def outcome(self, client_id: int, sequence: int) -> pb.CommandResult | None:
        """The stored result of request ``(client_id, sequence)``, or None if
        this replica has not applied it or no longer remembers it. A fence's
        result is stored too; :meth:`lookup` tells the cases apart."""
        if client_id == 0 or not 0 <= sequence <= MAX_SEQUENCE or client_id >= 1 << 64:
            return None
        with self._transaction() as conn:
            stored = conn.execute(
                select(kv_requests.c.result).where(
                    kv_requests.c.client_id == client_to_db(client_id),
                    kv_requests.c.sequence == sequence,
                )
            ).scalar()
        return None if stored is None else pb.CommandResult.FromString(stored)

    # Watch history ------------------------------------------------------------

    def events_since(
        self, start_revision: int, key: str, prefix: bool = False, limit: int = 0
    ) -> list[pb.WatchEvent]:
        """Events with revision >= ``start_revision`` on ``key`` (or on keys
        starting with ``key`` if ``prefix``), in revision order, at most
        ``limit`` (0 or above :data:`RANGE_LIMIT` means :data:`RANGE_LIMIT`).
        An event's revision is ``event.kv.mod_revision``.

        ``start_revision`` must be at least 1 (a watch "from now on" starts at
        ``revision + 1``). Raises :class:`Compacted` if history from there has
        been discarded.
        """
        if start_revision < 1:
            raise ValueError(
                f"start_revision must be at least 1, got {start_revision}; "
                "a watch from now on starts at revision + 1"
            )
        self._usable()
        if start_revision <= self._compacted_revision:
            raise Compacted(self._compacted_revision, start_revision)
        if _utf8_error(key) is not None or (not prefix and not key):
            return []
        query = select(kv_events).where(kv_events.c.revision >= start_revision)
        if prefix:
            query = query.where(*_prefix_clauses(kv_events.c.key, key))
        else:
            query = query.where(kv_events.c.key == key)
        query = query.order_by(kv_events.c.revision).limit(_cap(limit))
        with self._transaction() as conn:
            rows = conn.execute(query).all()
        return [_event_from_row(row) for row in rows]

    def compact(self, keep_revisions: int) -> int:
        """Discard history older than the last ``keep_revisions`` revisions and
        return the compacted revision (history through it is gone). Never moves
        backwards. A local decision: replicas may compact differently."""
        if keep_revisions < 0:
            raise ValueError(f"keep_revisions must not be negative, got {keep_revisions}")
        self._usable()
        target = self._revision - keep_revisions
        if target <= self._compacted_revision:
            return self._compacted_revision
        with self._transaction() as conn:
            conn.execute(delete(kv_events).where(kv_events.c.revision <= target))
            conn.execute(
                kv_state.update().where(kv_state.c.id == 1).values(compacted_revision=target)
            )
        self._compacted_revision = target
        return target

    # Snapshots ------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything (keys, history, exactly-once memory, position) as bytes.

        Deterministic: replicas that applied the same entries and made the same
        compactions produce identical bytes. Held in memory whole; fine for the
        sizes this store is for.
        """
        with self._transaction() as conn:
            tables = {
                table.name: [
                    [_encode(value) for value in row]
                    for row in conn.execute(
                        select(table).order_by(*table.primary_key.columns)
                    ).all()
                ]
                for table in _SNAPSHOT_TABLES
            }
        document = {
            "format": _SNAPSHOT_FORMAT,
            "schema_version": store.SCHEMA_VERSION,
            "dedup_window": self.limits.dedup_window,
            "client_idle_instances": self.limits.client_idle_instances,
            "applied_instance": self._applied_instance,
            "revision": self._revision,
            "compacted_revision": self._compacted_revision,
            "tables": tables,
        }
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
        return _SNAPSHOT_MAGIC + zlib.compress(text.encode("ascii"))

    def restore(self, data: bytes) -> None:
        """Replace the whole state with ``data`` from :meth:`snapshot`, in one
        transaction. Raises :class:`InvalidSnapshot` (and changes nothing) if
        the bytes are not a snapshot made with the same limits."""
        self._usable()
        state, rows = _parse_snapshot(data, self.limits)
        with self._transaction() as conn:
            for table in _SNAPSHOT_TABLES:
                conn.execute(delete(table))
            for table in _SNAPSHOT_TABLES:
                if rows[table.name]:
                    conn.execute(table.insert(), rows[table.name])
            conn.execute(
                kv_state.update()
                .where(kv_state.c.id == 1)
                .values(
                    applied_instance=state.applied_instance,
                    revision=state.revision,
                    compacted_revision=state.compacted_revision,
                )
            )
        self._applied_instance = state.applied_instance
        self._revision = state.revision
        self._compacted_revision = state.compacted_revision

    # Lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
                self._conn.close()
            self._conn = None
        self._engine.dispose()

    def __enter__(self) -> KvStateMachine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Internals ------------------------------------------------------------------

    def _usable(self) -> Connection:
        if self._broken is not None:
            raise StorageError(
                f"key-value state machine {self.path} is unusable after an error "
                f"({self._broken}); close it and open the file again"
            )
        if self._conn is None:
            raise StorageError(f"key-value state machine {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction. Any error rolls it back and makes this object
        unusable, because the state in memory may no longer match the file."""
        conn = self._usable()
        try:
            with conn.begin():
                yield conn
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            self._broken = _reason(exc)
            raise StorageError(f"{self.path}: {self._broken}") from exc
        except BaseException as exc:
            self._broken = f"{type(exc).__name__}: {exc}"
            raise


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


class _Batch:
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
        self._new_events: list[dict[str, Any]] = []

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
            key = _point_key(command)
            if key is not None and _key_error(key) is None:
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
            for client, max_sequence, last in run(_sql_clients(len(id_chunk)), tuple(id_chunk)):
                self._clients[client] = _Client(max_sequence, last)
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
            bound = client.max_sequence - self._limits.dedup_window
            if sequence <= bound:
                return self._error(_too_old(sequence, command.client_id, bound))
        digest = _digest(command)
        stored = self._request(client_id, sequence)
        if stored is not None:
            if stored[0] != digest:
                fenced = (
                    ' (by a GetOutcome fence, which answered "not applied": this request '
                    "will never be applied; send it again under a new sequence)"
                    if stored[0] == _FENCE_DIGEST
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
            self._clients[client_id] = _Client(sequence, self._instance)
        else:
            client.max_sequence = max(client.max_sequence, sequence)
        self._dirty_clients[client_id] = None
        return result

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
        return self._error("command has no operation")

    def _put(self, op: pb.PutOp) -> pb.CommandResult:
        error = _key_error(op.key)
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
        error = _key_error(op.key)
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
        error = _key_error(op.key)
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
        error = _key_error(op.key)
        if error is not None:
            return self._error(error)
        current = self._load(op.key)
        result = pb.CommandResult(revision=self.revision, found=current is not None)
        if current is not None:
            result.kv.CopyFrom(_kv_pb(op.key, current))
        return result

    def _range(self, op: pb.RangeOp) -> pb.CommandResult:
        error = _utf8_error(op.prefix)
        if error is not None:
            return self._error(error)
        self.flush()
        kvs = _select_range(self._conn, op.prefix, _cap(op.limit))
        return pb.CommandResult(revision=self.revision, kvs=kvs)

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
                None if row is None else _Client(row.max_sequence, row.last_instance)
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


# Helpers ------------------------------------------------------------------------------


def _key_error(key: str) -> str | None:
    if not key:
        return "key must not be empty"
    return _utf8_error(key)


def _utf8_error(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "key is not valid UTF-8"
    return None


def _point_key(command: pb.Command) -> str | None:
    which = command.WhichOneof("op")
    if which == "put":
        return command.put.key
    if which == "delete":
        return command.delete.key
    if which == "compare_and_swap":
        return command.compare_and_swap.key
    if which == "get":
        return command.get.key
    return None


def _digest(command: pb.Command) -> bytes:
    """Identifies the operation (not the client or sequence) of a command."""
    which = command.WhichOneof("op")
    digest = hashlib.sha256((which or "").encode())
    if which is not None:
        digest.update(b"\0")
        digest.update(getattr(command, which).SerializeToString(deterministic=True))
    return digest.digest()


#: The digest of a fence (a command with no operation).
_FENCE_DIGEST = _digest(pb.Command())

_TOO_OLD = re.compile(r"sequence \d+ of client \d+ is too old: ")


def _too_old(sequence: int, client_id: int, bound: int) -> str:
    return (
        f"sequence {sequence} of client {client_id} is too old: only "
        f"sequences above {bound} are remembered"
    )


def is_forgotten(result: pb.CommandResult) -> bool:
    """Whether ``result`` is the "too old" refusal: the store forgot the
    request, so whether an earlier copy was applied is unknown (not "failed")."""
    return _TOO_OLD.match(result.error) is not None


def _cap(limit: int) -> int:
    return limit if 0 < limit <= RANGE_LIMIT else RANGE_LIMIT


def _prefix_end(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix``, in
    code point order (which is SQLite's binary order of UTF-8), or None if
    there is none."""
    while prefix:
        last = ord(prefix[-1]) + 1
        if last == 0xD800:  # skip the surrogates, which UTF-8 cannot encode
            last = 0xE000
        if last <= 0x10FFFF:
            return prefix[:-1] + chr(last)
        prefix = prefix[:-1]
    return None


def _prefix_clauses(column: Any, prefix: str) -> list[Any]:
    if not prefix:
        return []
    clauses = [column >= prefix]
    end = _prefix_end(prefix)
    if end is not None:
        clauses.append(column < end)
    return clauses


def _select_range(conn: Connection, prefix: str, limit: int) -> list[pb.KeyValue]:
    query = select(kv).where(*_prefix_clauses(kv.c.key, prefix)).order_by(kv.c.key).limit(limit)
    return [_kv_from_row(row) for row in conn.execute(query)]


def _kv_pb(key: str, row: _Kv) -> pb.KeyValue:
    return pb.KeyValue(
        key=key,
        value=row.value,
        version=row.version,
        create_revision=row.create_revision,
        mod_revision=row.mod_revision,
    )


def _kv_from_row(row: Row[Any]) -> pb.KeyValue:
    return pb.KeyValue(
        key=row.key,
        value=row.value,
        version=row.version,
        create_revision=row.create_revision,
        mod_revision=row.mod_revision,
    )


def _event_from_row(row: Row[Any]) -> pb.WatchEvent:
    event = pb.WatchEvent(
        type=_EVENT_TYPES[row.type],
        kv=pb.KeyValue(
            key=row.key,
            value=row.value,
            version=row.version,
            create_revision=row.create_revision,
            mod_revision=row.mod_revision,
        ),
        had_previous=row.had_previous,
    )
    if row.had_previous:
        event.previous.CopyFrom(
            pb.KeyValue(
                key=row.key,
                value=row.prev_value,
                version=row.prev_version,
                create_revision=row.prev_create_revision,
                mod_revision=row.prev_mod_revision,
            )
        )
    return event


def _chunks(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


# Snapshot format ----------------------------------------------------------------------
#
# MAGIC + zlib(JSON). The JSON holds the position, the limits and a dump of each
# table in primary-key order, bytes in base64. zlib's checksum catches damage.

_SNAPSHOT_MAGIC = b"paxos-kv-snapshot/1\n"
_SNAPSHOT_FORMAT = "paxos-kv-snapshot"
_SNAPSHOT_TABLES: tuple[Table, ...] = (kv, kv_events, kv_clients, kv_requests)


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _decode(table: Table, values: Any) -> dict[str, Any]:
    if not isinstance(values, list) or len(values) != len(table.c):
        raise InvalidSnapshot(f"{table.name}: a row must be a list of {len(table.c)} values")
    row: dict[str, Any] = {}
    for column, value in zip(table.c, values, strict=True):
        where = f"{table.name}.{column.name}"
        if value is None:
            if not column.nullable:
                raise InvalidSnapshot(f"{where} must not be null")
        elif isinstance(column.type, Boolean):
            if not isinstance(value, bool):
                raise InvalidSnapshot(f"{where} must be a boolean")
        elif isinstance(column.type, Integer):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidSnapshot(f"{where} must be an integer")
            if not -(1 << 63) <= value < 1 << 63:
                raise InvalidSnapshot(f"{where} is out of range")
        elif isinstance(column.type, LargeBinary):
            if not isinstance(value, str):
                raise InvalidSnapshot(f"{where} must be base64 text")
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidSnapshot(f"{where} is not valid base64") from exc
        elif isinstance(column.type, String):
            if not isinstance(value, str) or _utf8_error(value) is not None:
                raise InvalidSnapshot(f"{where} must be text")
        else:  # pragma: no cover - the schema has no other column types
            raise AssertionError(column.type)
        row[column.name] = value
    return row


def _parse_snapshot(data: bytes, limits: Limits) -> tuple[store.State, dict[str, list[Any]]]:
    if not data.startswith(_SNAPSHOT_MAGIC):
        raise InvalidSnapshot("not a key-value state machine snapshot (bad header)")
    try:
        document = json.loads(zlib.decompress(data[len(_SNAPSHOT_MAGIC) :]))
    except (zlib.error, ValueError) as exc:
        raise InvalidSnapshot(f"damaged snapshot: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != _SNAPSHOT_FORMAT:
        raise InvalidSnapshot("not a key-value state machine snapshot")
    if document.get("schema_version") != store.SCHEMA_VERSION:
        raise InvalidSnapshot(
            f"snapshot schema version {document.get('schema_version')!r}, "
            f"this build reads {store.SCHEMA_VERSION!r}"
        )
    theirs = (document.get("dedup_window"), document.get("client_idle_instances"))
    if theirs != (limits.dedup_window, limits.client_idle_instances):
        raise InvalidSnapshot(
            f"snapshot was taken with dedup_window={theirs[0]} and client_idle_instances="
            f"{theirs[1]}, this store uses {limits.dedup_window} and "
            f"{limits.client_idle_instances}"
        )
    position = []
    for name in ("applied_instance", "revision", "compacted_revision"):
        value = document.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
            raise InvalidSnapshot(f"snapshot {name} must be a non-negative integer")
        position.append(value)
    state = store.State(*position)
    if state.compacted_revision > state.revision:
        raise InvalidSnapshot("snapshot compacted_revision is above its revision")
    tables = document.get("tables")
    if not isinstance(tables, dict):
        raise InvalidSnapshot("snapshot has no tables")
    rows: dict[str, list[Any]] = {}
    for table in _SNAPSHOT_TABLES:
        dump = tables.get(table.name)
        if not isinstance(dump, list):
            raise InvalidSnapshot(f"snapshot lacks table {table.name}")
        decoded = [_decode(table, values) for values in dump]
        keys = [tuple(row[c.name] for c in table.primary_key.columns) for row in decoded]
        if len(set(keys)) != len(keys):
            raise InvalidSnapshot(f"{table.name}: duplicate primary key")
        rows[table.name] = decoded
    if any(row["revision"] > state.revision for row in rows[kv_events.name]) or any(
        row["mod_revision"] > state.revision for row in rows[kv.name]
    ):
        raise InvalidSnapshot("snapshot holds changes beyond its revision")
    return state, rows


__all__ = [
    "CLIENT_IDLE_INSTANCES",
    "DEDUP_WINDOW",
    "RANGE_LIMIT",
    "Applied",
    "Compacted",
    "EntryOutOfOrder",
    "InvalidSnapshot",
    "KvStateMachine",
    "RequestState",
    "StateMachine",
    "is_forgotten",
]
