"""Shared helpers for the key-value state machine tests.

Builders for commands and log entries, a ``Log`` that feeds entries with
consecutive instance numbers, and ``dump``, everything observable about a
store, for "unchanged" and "identical" checks. The ``db``, ``sm`` and ``log``
fixtures built on them live in this folder's conftest.py.
"""

from __future__ import annotations

from typing import Any

from paxos_service.kv import Applied, KvStateMachine
from paxos_service.v1 import paxos_pb2 as pb

PUT = pb.WatchEvent.EVENT_TYPE_PUT
DELETE = pb.WatchEvent.EVENT_TYPE_DELETE


# Commands ----------------------------------------------------------------------------------------


def put(key: str, value: bytes, client: int = 0, seq: int = 0) -> pb.Command:
    return pb.Command(client_id=client, sequence=seq, put=pb.PutOp(key=key, value=value))


def delete(key: str, client: int = 0, seq: int = 0) -> pb.Command:
    return pb.Command(client_id=client, sequence=seq, delete=pb.DeleteOp(key=key))


def cas_value(key: str, expected: bytes, value: bytes, client: int = 0, seq: int = 0) -> pb.Command:
    op = pb.CompareAndSwapOp(key=key, value=value, expected_value=expected)
    return pb.Command(client_id=client, sequence=seq, compare_and_swap=op)


def cas_version(key: str, expected: int, value: bytes, client: int = 0, seq: int = 0) -> pb.Command:
    op = pb.CompareAndSwapOp(key=key, value=value, expected_version=expected)
    return pb.Command(client_id=client, sequence=seq, compare_and_swap=op)


def get(key: str, client: int = 0, seq: int = 0) -> pb.Command:
    return pb.Command(client_id=client, sequence=seq, get=pb.GetOp(key=key))


def range_(prefix: str, limit: int = 0, client: int = 0, seq: int = 0) -> pb.Command:
    return pb.Command(client_id=client, sequence=seq, range=pb.RangeOp(prefix=prefix, limit=limit))


def entry(*commands: pb.Command) -> pb.LogEntry:
    return pb.LogEntry(commands=commands)


def kv(key: str, value: bytes, version: int, create: int, mod: int) -> pb.KeyValue:
    return pb.KeyValue(
        key=key, value=value, version=version, create_revision=create, mod_revision=mod
    )


class Log:
    """Feeds entries to a state machine with consecutive instance numbers."""

    def __init__(self, sm: KvStateMachine) -> None:
        self.sm = sm

    def apply(self, *commands: pb.Command) -> Applied:
        return self.sm.apply_entry(self.sm.applied_instance + 1, entry(*commands))

    def one(self, command: pb.Command) -> pb.CommandResult:
        return self.apply(command).results[0]


def dump(sm: KvStateMachine) -> dict[str, Any]:
    """Everything observable, for "unchanged" and "identical" checks."""
    return {
        "applied_instance": sm.applied_instance,
        "revision": sm.revision,
        "kvs": sm.range_local(""),
        "events": sm.events_since(sm.compacted_revision + 1, "", prefix=True),
        "snapshot": sm.snapshot(),
    }
