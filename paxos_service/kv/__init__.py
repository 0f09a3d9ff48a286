"""The replicated key-value store's state machine: what every learner applies
the decided log to. See :mod:`paxos_service.kv.state_machine` for the rules."""

from paxos_service.kv.state_machine import (
    CLIENT_IDLE_INSTANCES,
    DEDUP_WINDOW,
    RANGE_LIMIT,
    Applied,
    Compacted,
    EntryOutOfOrder,
    InvalidSnapshot,
    KvStateMachine,
    StateMachine,
)

__all__ = [
    "CLIENT_IDLE_INSTANCES",
    "DEDUP_WINDOW",
    "RANGE_LIMIT",
    "Applied",
    "Compacted",
    "EntryOutOfOrder",
    "InvalidSnapshot",
    "KvStateMachine",
    "StateMachine",
]
