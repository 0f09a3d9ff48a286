"""How every SQLite file of ours is opened: the durability settings in one place.

* ``journal_mode=WAL`` with ``synchronous=FULL``: the WAL is fsynced at every
  commit, so a committed transaction survives power loss (WAL with NORMAL
  may lose the last commits).
* Python 3.11's sqlite3 driver does not BEGIN by itself (SELECT and DDL run
  outside transactions), so, as SQLAlchemy's SQLite dialect docs describe, we
  take over: the driver's own transaction handling is off, and every
  transaction starts with ``BEGIN IMMEDIATE`` so writers never deadlock.
* Space goes back to the file system without an operator: new files are
  made with ``auto_vacuum=INCREMENTAL`` (files from before are converted
  once, by :func:`ensure_incremental_vacuum`), :func:`reclaim_space` hands
  the free pages back after a delete, and ``journal_size_limit`` truncates
  the WAL after each checkpoint instead of leaving it at its largest size.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool


def durable_engine(path: Path) -> Engine:
    """An engine over one connection to ``path`` with our durability settings.
    The caller uses it from one thread at a time."""
    engine = create_engine(
        URL.create("sqlite", database=str(path)),  # no escaping trouble with odd paths
        poolclass=StaticPool,
        connect_args={"check_same_thread": False, "timeout": 30},
    )
    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    return engine


def reader_engine(path: Path) -> Engine:
    """An engine for long reads beside the writer: its transactions begin
    DEFERRED, so in WAL mode a read sees one consistent state of the file
    while the writer goes on committing (a snapshot is read this way)."""
    engine = create_engine(
        URL.create("sqlite", database=str(path)),
        poolclass=StaticPool,
        connect_args={"check_same_thread": False, "timeout": 30},
    )
    event.listen(engine, "connect", _reader_connect)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


def _reader_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA query_only=1")


def on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # Before anything creates the file's first table, or it has no effect.
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


#: Bytes the WAL is cut back to after a checkpoint.
WAL_SIZE_LIMIT = 8 * 1024 * 1024
#: Free pages handed back to the file system per :func:`reclaim_space` call:
#: bounded, so that a reclaim holds the writer lock for milliseconds.
RECLAIM_PAGES = 4096


def ensure_incremental_vacuum(conn: Connection) -> bool:
    """Convert a file made before auto_vacuum=INCREMENTAL (one VACUUM, which
    rewrites it). Returns whether it had to. Call outside any transaction."""
    raw = conn.connection.driver_connection
    assert raw is not None
    if raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return False
    raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
    raw.execute("VACUUM")
    return True


def reclaim_space(conn: Connection, pages: int = RECLAIM_PAGES) -> int:
    """Hand up to ``pages`` free pages back to the file system; return how
    many are still free. Call outside any transaction. (``executescript``:
    the driver's ``execute`` would step the pragma once, freeing one page.)"""
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    return int(raw.execute("PRAGMA freelist_count").fetchone()[0])


def disk_bytes(path: Path) -> int:
    """What the database at ``path`` takes on disk: the file and its WAL."""
    total = 0
    for name in (str(path), f"{path}-wal"):
        with contextlib.suppress(OSError):
            total += Path(name).stat().st_size
    return total


def on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def error_reason(exc: BaseException) -> str:
    """The driver's own message where there is one (``disk I/O error``, ...)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    return str(exc)
