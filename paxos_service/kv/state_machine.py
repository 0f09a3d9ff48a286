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
:class:`~paxos_service.storage.contract.StorageError` until it is closed and the file
opened again, which resumes from the last committed entry. Like etcd's raft
after a storage error, it never guesses what the disk holds.

Key-value semantics
===================

Like etcd v3: a store revision, and per key a version and the revisions that
created and last changed it. What each operation does and answers is in
:mod:`paxos_service.kv.batch`, beside the code that does it.

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
  knows. :func:`~paxos_service.kv.commands.is_forgotten` recognises it, and a
  server must answer it as "outcome unknown", never as a failure
  (:meth:`KvStateMachine.lookup` says ``FORGOTTEN`` for such a request). A
  client must therefore keep fewer than ``DEDUP_WINDOW`` sequence numbers
  between its oldest outstanding request and its newest.
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

import contextlib
import enum
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from paxos_service.kv import store
from paxos_service.kv.batch import Batch
from paxos_service.kv.commands import FENCE_DIGEST, MAX_SEQUENCE, cap_limit, key_error, utf8_error
from paxos_service.kv.reads import event_from_row, kv_from_row, prefix_clauses, select_range
from paxos_service.kv.snapshot import decode_snapshot, encode_snapshot, read_tables, write_tables
from paxos_service.kv.store import (
    Limits,
    client_to_db,
    kv,
    kv_clients,
    kv_events,
    kv_requests,
    kv_state,
)
from paxos_service.storage.contract import StorageError
from paxos_service.storage.sqlite_setup import error_reason as _reason
from paxos_service.storage.sqlite_setup import reclaim_space
from paxos_service.v1 import paxos_pb2 as pb

DEDUP_WINDOW = 1000
"""Per client with highest applied sequence ``h``, the sequences ``s`` with
``h - DEDUP_WINDOW < s <= h`` are remembered; older ones are "too old"."""

CLIENT_IDLE_INSTANCES = 100_000
"""A client idle for more than this many log instances is forgotten."""


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

        Raises :class:`~paxos_service.storage.contract.StorageCorrupt` for a file that is
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
        compacted = self._compacted_revision
        applied: list[Applied] = []
        with self._transaction() as conn:
            for instance, entry in enumerate(entries, start=first):
                commands: Sequence[pb.Command] = () if entry.noop else entry.commands
                batch = Batch(conn, self.limits, revision, instance)
                batch.expire_clients()
                batch.prefetch(commands)
                results = [batch.apply(command) for command in commands]
                batch.flush()
                if batch.compact_to > compacted:
                    # After the flush: the entry's own events may be covered too.
                    compacted = batch.compact_to
                    conn.execute(delete(kv_events).where(kv_events.c.revision <= compacted))
                revision = batch.revision
                applied.append(Applied(instance, revision, results, batch.events))
            conn.execute(
                kv_state.update()
                .where(kv_state.c.id == 1)
                .values(
                    applied_instance=applied[-1].instance,
                    revision=revision,
                    compacted_revision=compacted,
                )
            )
        self._applied_instance = applied[-1].instance
        self._revision = revision
        self._compacted_revision = compacted
        return applied

    def apply(self, command: pb.Command) -> pb.CommandResult:
        """Apply one command on its own, outside the log: ``applied_instance``
        does not move. Learners use :meth:`apply_entry`; this is the
        :class:`StateMachine` interface for single commands and tests."""
        with self._transaction() as conn:
            batch = Batch(conn, self.limits, self._revision, self._applied_instance)
            batch.prefetch([command])
            result = batch.apply(command)
            batch.flush()
            compacted = max(self._compacted_revision, batch.compact_to)
            if compacted > self._compacted_revision:
                conn.execute(delete(kv_events).where(kv_events.c.revision <= compacted))
            conn.execute(
                kv_state.update()
                .where(kv_state.c.id == 1)
                .values(revision=batch.revision, compacted_revision=compacted)
            )
        self._revision = batch.revision
        self._compacted_revision = compacted
        return result

    # Local reads (no log: possibly stale) ------------------------------------

    def get_local(self, key: str) -> pb.KeyValue | None:
        """The key as this replica has it, or None."""
        if key_error(key) is not None:
            return None
        with self._transaction() as conn:
            row = conn.execute(select(kv).where(kv.c.key == key)).first()
        return None if row is None else kv_from_row(row)

    def range_local(self, prefix: str, limit: int = 0) -> list[pb.KeyValue]:
        """Keys starting with ``prefix`` in key order, as this replica has them."""
        if utf8_error(prefix) is not None:
            return []
        with self._transaction() as conn:
            return select_range(conn, prefix, cap_limit(limit))

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
            known = conn.execute(
                select(kv_clients.c.max_sequence, kv_clients.c.acked_below).where(
                    kv_clients.c.client_id == client
                )
            ).first()
        if row is not None:
            state = RequestState.FENCED if row.digest == FENCE_DIGEST else RequestState.APPLIED
            return state, pb.CommandResult.FromString(row.result)
        if known is not None and (
            sequence <= known.max_sequence - self.limits.dedup_window
            or sequence < known.acked_below
        ):
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
        ``limit`` (0 or above :data:`~paxos_service.kv.commands.RANGE_LIMIT`
        means that limit). An event's revision is ``event.kv.mod_revision``.

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
        if utf8_error(key) is not None or (not prefix and not key):
            return []
        query = select(kv_events).where(kv_events.c.revision >= start_revision)
        if prefix:
            query = query.where(*prefix_clauses(kv_events.c.key, key))
        else:
            query = query.where(kv_events.c.key == key)
        query = query.order_by(kv_events.c.revision).limit(cap_limit(limit))
        with self._transaction() as conn:
            rows = conn.execute(query).all()
        return [event_from_row(row) for row in rows]

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

    def reclaim(self) -> int:
        """Hand free pages (left by compaction) back to the file system, a
        bounded number per call; return how many are still free."""
        conn = self._usable()
        try:
            return reclaim_space(conn)
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"{self.path}: {_reason(exc)}") from exc

    def used_bytes(self) -> int:
        """Bytes the store's data takes: its pages in use, wherever they are
        (file or WAL), free pages not counted. What the space quota measures."""
        raw = self._usable().connection.driver_connection
        assert raw is not None
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
        free = raw.execute("PRAGMA freelist_count").fetchone()[0]
        size = raw.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    # Snapshots ------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything (keys, history, exactly-once memory, position) as bytes.

        Deterministic: replicas that applied the same entries and made the same
        compactions produce identical bytes. Held in memory whole; fine for the
        sizes this store is for.
        """
        with self._transaction() as conn:
            tables = read_tables(conn)
        position = store.State(self._applied_instance, self._revision, self._compacted_revision)
        return encode_snapshot(tables, self.limits, position)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with ``data`` from :meth:`snapshot`, in one
        transaction. Raises :class:`~paxos_service.kv.snapshot.InvalidSnapshot`
        (and changes nothing) if the bytes are not a snapshot made with the
        same limits."""
        self._usable()
        state, rows = decode_snapshot(data, self.limits)
        with self._transaction() as conn:
            write_tables(conn, rows)
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
