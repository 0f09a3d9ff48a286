"""Reads of the key-value tables that both the state machine (local reads,
watch history) and a batch (a range, inside its transaction) make: key
prefixes in code point order, and rows back into protobuf."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, select

from paxos_service.kv.store import kv
from paxos_service.v1 import paxos_pb2 as pb

_EVENT_TYPES = {
    int(pb.WatchEvent.EVENT_TYPE_PUT): pb.WatchEvent.EVENT_TYPE_PUT,
    int(pb.WatchEvent.EVENT_TYPE_DELETE): pb.WatchEvent.EVENT_TYPE_DELETE,
}


def prefix_end(prefix: str) -> str | None:
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


def prefix_clauses(column: Any, prefix: str) -> list[Any]:
    if not prefix:
        return []
    clauses = [column >= prefix]
    end = prefix_end(prefix)
    if end is not None:
        clauses.append(column < end)
    return clauses


def select_range(conn: Connection, prefix: str, limit: int) -> list[pb.KeyValue]:
    query = select(kv).where(*prefix_clauses(kv.c.key, prefix)).order_by(kv.c.key).limit(limit)
    return [kv_from_row(row) for row in conn.execute(query)]


def kv_from_row(row: Row[Any]) -> pb.KeyValue:
    return pb.KeyValue(
        key=row.key,
        value=row.value,
        version=row.version,
        create_revision=row.create_revision,
        mod_revision=row.mod_revision,
    )


def event_from_row(row: Row[Any]) -> pb.WatchEvent:
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
