"""The SQLite file behind :class:`~paxos_service.kv.state_machine.KvStateMachine`.

This module knows the schema and how to create, open and check the file; the
key-value semantics live in ``state_machine.py``.

Durability follows the acceptor's storage (``paxos_service/storage/sqlite.py``),
whose SQLAlchemy event listeners we reuse: ``journal_mode=WAL`` with
``synchronous=FULL`` (a commit is fsynced before it returns), and every
transaction begins with ``BEGIN IMMEDIATE``.

A new file is built under a temporary name and renamed into place only once
its schema and identity are committed, so a crash during creation never leaves
a half-made file at ``path``. An existing file that is empty, fails SQLite's
integrity check, or is not a key-value state machine database (for example an
acceptor's) is refused with :class:`~paxos_service.storage.contract.StorageCorrupt`.

Integers: SQLite stores signed 64-bit integers. Client ids are ``uint64`` on
the wire and are stored in two's complement (ids below 2**63, the usual case,
are stored unchanged); sequence numbers must be below 2**63 (the state machine
rejects others) because eviction compares them in SQL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    func,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from paxos_service.storage.contract import StorageCorrupt, StorageError
from paxos_service.storage.sqlite_setup import durable_engine, ensure_incremental_vacuum
from paxos_service.storage.sqlite_setup import error_reason as _reason

SCHEMA_VERSION = "2"
#: Files of this version are upgraded when opened (kv_clients.acked_below added).
UPGRADABLE_FROM = "1"
KIND = "paxos-kv-state-machine"

_U64 = 1 << 64
_I64 = 1 << 63

metadata = MetaData()

# Identity and the replicated parameters, as strings.
meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)

# Exactly one row (id = 1): where the state machine is in the log.
kv_state = Table(
    "kv_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("applied_instance", Integer, nullable=False),
    Column("revision", Integer, nullable=False),
    # Events with revision <= compacted_revision have been discarded.
    Column("compacted_revision", Integer, nullable=False),
)

kv = Table(
    "kv",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("version", Integer, nullable=False),
    Column("create_revision", Integer, nullable=False),
    Column("mod_revision", Integer, nullable=False),
    sqlite_with_rowid=False,
)

# The change history that watches read. One row per store revision.
kv_events = Table(
    "kv_events",
    metadata,
    Column("revision", Integer, primary_key=True, autoincrement=False),
    Column("key", String, nullable=False),
    Column("type", Integer, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("version", Integer, nullable=False),
    Column("create_revision", Integer, nullable=False),
    Column("mod_revision", Integer, nullable=False),
    Column("had_previous", Boolean, nullable=False),
    Column("prev_value", LargeBinary, nullable=True),
    Column("prev_version", Integer, nullable=False),
    Column("prev_create_revision", Integer, nullable=False),
    Column("prev_mod_revision", Integer, nullable=False),
)
Index("ix_kv_events_key_revision", kv_events.c.key, kv_events.c.revision)

# Exactly-once memory: the result of each remembered (client_id, sequence).
# ``digest`` identifies the operation, so that a sequence number reused for a
# different command is rejected instead of answered with the wrong result.
kv_requests = Table(
    "kv_requests",
    metadata,
    Column("client_id", Integer, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("digest", LargeBinary, nullable=False),
    Column("result", LargeBinary, nullable=False),
    PrimaryKeyConstraint("client_id", "sequence"),
    # A rowid table: a result (often with a whole previous value) packs a few
    # to a page instead of taking about a page each (older files keep theirs).
)

kv_clients = Table(
    "kv_clients",
    metadata,
    Column("client_id", Integer, primary_key=True, autoincrement=False),
    Column("max_sequence", Integer, nullable=False),
    Column("last_instance", Integer, nullable=False),
    # Every sequence below this has its answer at the client: forgotten, and
    # a late copy is refused (RequestId.first_incomplete).
    Column("acked_below", Integer, nullable=False, server_default="0"),
)
Index("ix_kv_clients_last_instance", kv_clients.c.last_instance)

TABLES = frozenset(t.name for t in metadata.sorted_tables)


@dataclass(frozen=True, slots=True)
class Limits:
    """Parameters that change results, so every replica must use the same
    ones. They are written into the file when it is created and checked on
    every open."""

    dedup_window: int
    client_idle_instances: int

    def __post_init__(self) -> None:
        if self.dedup_window < 1:
            raise ValueError(f"dedup_window must be at least 1, got {self.dedup_window}")
        if self.client_idle_instances < 1:
            raise ValueError(
                f"client_idle_instances must be at least 1, got {self.client_idle_instances}"
            )


@dataclass(frozen=True, slots=True)
class State:
    applied_instance: int
    revision: int
    compacted_revision: int


def client_to_db(client_id: int) -> int:
    """A ``uint64`` client id as a signed 64-bit SQLite integer."""
    return client_id - _U64 if client_id >= _I64 else client_id


def client_from_db(value: int) -> int:
    return value + _U64 if value < 0 else value


def create_engine_for(path: Path) -> Engine:
    """An engine with the same durability settings as the acceptor's."""
    return durable_engine(path)


def create(path: Path, limits: Limits) -> None:
    """Create a new, empty state machine file at ``path`` (which must not exist)."""
    if not path.parent.is_dir():
        raise StorageCorrupt(f"directory {path.parent} does not exist")
    temporary = path.with_name(path.name + ".creating")
    sidecars = [temporary, *(Path(f"{temporary}{suffix}") for suffix in ("-wal", "-shm"))]
    for leftover in sidecars:
        leftover.unlink(missing_ok=True)
    engine = create_engine_for(temporary)
    try:
        with engine.connect() as conn, conn.begin():
            metadata.create_all(conn)
            conn.execute(
                meta.insert(),
                [
                    {"key": "kind", "value": KIND},
                    {"key": "schema_version", "value": SCHEMA_VERSION},
                    {"key": "dedup_window", "value": str(limits.dedup_window)},
                    {"key": "client_idle_instances", "value": str(limits.client_idle_instances)},
                ],
            )
            conn.execute(
                kv_state.insert(),
                {"id": 1, "applied_instance": 0, "revision": 0, "compacted_revision": 0},
            )
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise StorageError(f"cannot create key-value database {path}: {_reason(exc)}") from exc
    finally:
        # Closing the last connection checkpoints the WAL into the main file
        # and deletes the WAL, so the main file alone holds everything.
        engine.dispose()
    if Path(f"{temporary}-wal").exists():
        raise StorageError(
            f"cannot create key-value database {path}: SQLite left {temporary}-wal behind"
        )
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def open_existing(path: Path, limits: Limits) -> tuple[Engine, Connection, State]:
    """Open ``path`` and check that it is a healthy state machine file made
    with ``limits``. Raises :class:`StorageCorrupt` otherwise."""
    if path.stat().st_size == 0:
        raise StorageCorrupt(
            f"{path} exists but is empty: it is not a key-value state machine database. "
            "If this learner is new, delete the file."
        )
    engine = create_engine_for(path)
    conn: Connection | None = None
    try:
        conn = engine.connect()
        _upgrade(conn)
        state = _check(conn, path, limits)
        ensure_incremental_vacuum(conn)
    except BaseException as exc:
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
                conn.close()
        engine.dispose()
        if isinstance(exc, (SQLAlchemyError, sqlite3.Error, OSError)):
            raise StorageCorrupt(f"cannot open key-value database {path}: {_reason(exc)}") from exc
        raise
    return engine, conn, state


def _upgrade(conn: Connection) -> None:
    """Bring a file of schema ``UPGRADABLE_FROM`` to this one, in one
    transaction: kv_clients gains ``acked_below`` (0: nothing acknowledged)."""
    with conn.begin():
        tables = set(
            conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'").scalars()
        )
        if "meta" not in tables or "kv_clients" not in tables:
            return  # not ours: _check says so
        version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        if version != UPGRADABLE_FROM:
            return
        conn.exec_driver_sql(
            "ALTER TABLE kv_clients ADD COLUMN acked_below INTEGER NOT NULL DEFAULT 0"
        )
        conn.execute(
            meta.update().where(meta.c.key == "schema_version").values(value=SCHEMA_VERSION)
        )


def _check(conn: Connection, path: Path, limits: Limits) -> State:
    with conn.begin():
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        integrity = list(conn.exec_driver_sql("PRAGMA quick_check").scalars())
        tables = set(
            conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'").scalars()
        )
    if str(mode).lower() != "wal" or sync not in (2, 3):
        raise StorageCorrupt(
            f"{path}: need journal_mode=WAL and synchronous=FULL, got {mode}/{sync}"
        )
    if integrity != ["ok"]:
        raise StorageCorrupt(f"{path} failed SQLite's integrity check: {integrity[:3]}")
    if not TABLES.issubset(tables):
        raise StorageCorrupt(
            f"{path} is an SQLite file but not a key-value state machine database "
            f"(tables: {', '.join(sorted(tables)) or 'none'})"
        )
    with conn.begin():
        stored = {k: v for k, v in conn.execute(select(meta.c.key, meta.c.value))}
        rows = conn.execute(select(kv_state)).all()
        highest_event = conn.execute(select(func.max(kv_events.c.revision))).scalar()
    if stored.get("kind") != KIND:
        raise StorageCorrupt(
            f"{path} is an SQLite file but not a key-value state machine database "
            f"(kind {stored.get('kind')!r})"
        )
    if stored.get("schema_version") != SCHEMA_VERSION:
        raise StorageCorrupt(
            f"{path}: schema version {stored.get('schema_version')!r}, "
            f"this build reads {SCHEMA_VERSION!r}"
        )
    file_limits = (stored.get("dedup_window"), stored.get("client_idle_instances"))
    wanted = (str(limits.dedup_window), str(limits.client_idle_instances))
    if file_limits != wanted:
        raise StorageCorrupt(
            f"{path} was created with dedup_window={file_limits[0]} and "
            f"client_idle_instances={file_limits[1]}, not {wanted[0]} and {wanted[1]}: "
            "every replica must apply the log with the same parameters"
        )
    if len(rows) != 1 or rows[0].id != 1:
        raise StorageCorrupt(f"{path}: kv_state must hold exactly one row, found {len(rows)}")
    row = rows[0]
    state = State(int(row.applied_instance), int(row.revision), int(row.compacted_revision))
    if not 0 <= state.compacted_revision <= state.revision or state.applied_instance < 0:
        raise StorageCorrupt(f"{path}: impossible position {state}")
    if highest_event is not None and int(highest_event) > state.revision:
        raise StorageCorrupt(
            f"{path}: history holds revision {highest_event} beyond the store revision "
            f"{state.revision}"
        )
    return state


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
