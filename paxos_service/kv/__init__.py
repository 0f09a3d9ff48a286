"""The replicated key-value store's state machine: what every learner applies
the decided log to. See :mod:`paxos_service.kv.state_machine` for the rules.

Modules: :mod:`.state_machine` (the object a learner holds, and the rules),
:mod:`.batch` (one transaction of commands, and the key-value semantics),
:mod:`.commands` (checks and digests that depend on a command alone),
:mod:`.reads` (queries shared by both), :mod:`.snapshot` (the snapshot format)
and :mod:`.store` (the SQLite file and its schema)."""

from paxos_service.kv.commands import MAX_SEQUENCE, RANGE_LIMIT, is_forgotten
from paxos_service.kv.snapshot import InvalidSnapshot
from paxos_service.kv.state_machine import (
    CLIENT_IDLE_INSTANCES,
    DEDUP_WINDOW,
    Applied,
    Compacted,
    EntryOutOfOrder,
    KvStateMachine,
    RequestState,
    StateMachine,
)

__all__ = [
    "CLIENT_IDLE_INSTANCES",
    "DEDUP_WINDOW",
    "MAX_SEQUENCE",
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
