"""How every SQLite file of ours is opened: the durability settings in one place.

* ``journal_mode=WAL`` with ``synchronous=FULL``: the WAL is fsynced at every
  commit, so a committed transaction survives power loss (WAL with NORMAL
  may lose the last commits).
* Python 3.11's sqlite3 driver does not BEGIN by itself (SELECT and DDL run
  outside transactions), so, as SQLAlchemy's SQLite dialect docs describe, we
  take over: the driver's own transaction handling is off, and every
  transaction starts with ``BEGIN IMMEDIATE`` so writers never deadlock.
"""

from __future__ import annotations

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


def on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def error_reason(exc: BaseException) -> str:
    """The driver's own message where there is one (``disk I/O error``, ...)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    return str(exc)
