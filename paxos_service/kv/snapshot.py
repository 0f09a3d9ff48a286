"""The snapshot format of the key-value state machine: MAGIC + zlib(JSON).

The JSON holds the position, the limits and a dump of each table in
primary-key order, bytes in base64. zlib's checksum catches damage. Decoding
checks every value against the schema, so that a damaged or foreign snapshot
is refused (:class:`InvalidSnapshot`) before it replaces anything.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    select,
)

from paxos_service.kv import store
from paxos_service.kv.commands import utf8_error
from paxos_service.kv.store import Limits, kv, kv_clients, kv_events, kv_requests, kv_state
from paxos_service.storage.sqlite_setup import reader_engine

_MAGIC = b"paxos-kv-snapshot/1\n"
_FORMAT = "paxos-kv-snapshot"
#: Every table a snapshot holds, in the order it is written and restored.
TABLES: tuple[Table, ...] = (kv, kv_events, kv_clients, kv_requests)


class InvalidSnapshot(ValueError):
    """The bytes given to ``restore`` are not a usable snapshot of this store."""


def read_tables(conn: Connection) -> dict[str, list[list[Any]]]:
    """Every row of every table, in primary-key order, as JSON values."""
    return {
        table.name: [
            [_encode(value) for value in row]
            for row in conn.execute(select(table).order_by(*table.primary_key.columns)).all()
        ]
        for table in TABLES
    }


def encode_snapshot(
    tables: dict[str, list[list[Any]]], limits: Limits, position: store.State
) -> bytes:
    """The snapshot bytes of ``tables`` (from :func:`read_tables`) at ``position``.
    Deterministic: the same rows and position give the same bytes.

    The text is exactly ``json.dumps(document, separators=(",", ":"),
    sort_keys=True)``, but encoded and compressed a few hundred rows at a
    time: one ``json.dumps`` of a large store holds the GIL for as long as it
    runs, which would stop the learner's event loop and apply thread."""
    document = {
        "format": _FORMAT,
        "schema_version": store.SCHEMA_VERSION,
        "dedup_window": limits.dedup_window,
        "client_idle_instances": limits.client_idle_instances,
        "applied_instance": position.applied_instance,
        "revision": position.revision,
        "compacted_revision": position.compacted_revision,
    }
    head = json.dumps(document, separators=(",", ":"), sort_keys=True)
    # "tables" sorts after every other key: it goes last, as sort_keys puts it.
    compressor = zlib.compressobj()
    out = [_MAGIC, compressor.compress(head[:-1].encode("ascii") + b',"tables":{')]
    for index, name in enumerate(sorted(tables)):
        opening = ("," if index else "") + json.dumps(name) + ":["
        out.append(compressor.compress(opening.encode("ascii")))
        rows = tables[name]
        for start in range(0, len(rows), _ROWS_PER_PIECE):
            piece = json.dumps(rows[start : start + _ROWS_PER_PIECE], separators=(",", ":"))
            text = ("," if start else "") + piece[1:-1]
            out.append(compressor.compress(text.encode("ascii")))
        out.append(compressor.compress(b"]"))
    out.append(compressor.compress(b"}}"))
    out.append(compressor.flush())
    return b"".join(out)


#: Rows encoded per ``json.dumps`` call when writing a snapshot.
_ROWS_PER_PIECE = 256


def snapshot_of_file(path: Path, limits: Limits) -> tuple[bytes, int]:
    """The snapshot of the store in ``path`` and its applied instance, read
    over a connection of its own in one read transaction: in WAL mode the
    applying thread goes on committing meanwhile, and the snapshot is the
    state of one moment, its position included."""
    engine = reader_engine(path)
    try:
        with engine.connect() as conn, conn.begin():
            tables = read_tables(conn)
            row = conn.execute(select(kv_state)).one()
    finally:
        engine.dispose()
    position = store.State(
        int(row.applied_instance), int(row.revision), int(row.compacted_revision)
    )
    return encode_snapshot(tables, limits, position), position.applied_instance


def write_tables(conn: Connection, rows: dict[str, list[Any]]) -> None:
    """Replace every table's rows with ``rows`` (from :func:`decode_snapshot`)."""
    for table in TABLES:
        conn.execute(delete(table))
    for table in TABLES:
        if rows[table.name]:
            conn.execute(table.insert(), rows[table.name])


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _decode(table: Table, values: Any) -> dict[str, Any]:
    if not isinstance(values, list) or len(values) != len(table.c):
        raise InvalidSnapshot(f"{table.name}: a row must be a list of {len(table.c)} values")
    return {
        column.name: _decode_cell(column, value, f"{table.name}.{column.name}")
        for column, value in zip(table.c, values, strict=True)
    }


def _decode_cell(column: Column[Any], value: Any, where: str) -> Any:
    """``value`` as the row to insert holds it, once checked against ``column``."""
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
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidSnapshot(f"{where} is not valid base64") from exc
    elif isinstance(column.type, String):
        if not isinstance(value, str) or utf8_error(value) is not None:
            raise InvalidSnapshot(f"{where} must be text")
    else:  # pragma: no cover - the schema has no other column types
        raise AssertionError(column.type)
    return value


def decode_snapshot(data: bytes, limits: Limits) -> tuple[store.State, dict[str, list[Any]]]:
    """The position and the rows of every table in ``data``, checked as far as
    the schema allows. Raises :class:`InvalidSnapshot`."""
    if not data.startswith(_MAGIC):
        raise InvalidSnapshot("not a key-value state machine snapshot (bad header)")
    try:
        document = json.loads(zlib.decompress(data[len(_MAGIC) :]))
    except (zlib.error, ValueError) as exc:
        raise InvalidSnapshot(f"damaged snapshot: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
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
    for table in TABLES:
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
