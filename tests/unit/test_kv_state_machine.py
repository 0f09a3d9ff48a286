"""The key-value state machine that learners apply the decided log to.

Real SQLite files, no mocks. Expected values are computed by hand from etcd's
rules (a store revision that every change bumps by one; per key a version,
create_revision and mod_revision), and a property test compares the state
machine with a small in-memory model over random logs with restarts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxos_service.kv import (
    RANGE_LIMIT,
    Applied,
    Compacted,
    EntryOutOfOrder,
    InvalidSnapshot,
    KvStateMachine,
    StateMachine,
)
from paxos_service.kv import state_machine as kv_module
from paxos_service.sqlite_storage import SqliteAcceptorStorage
from paxos_service.storage import StorageCorrupt, StorageError
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


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "kv.db"


@pytest.fixture
def sm(db: Path) -> Iterator[KvStateMachine]:
    machine = KvStateMachine.open(db)
    yield machine
    machine.close()


@pytest.fixture
def log(sm: KvStateMachine) -> Log:
    return Log(sm)


def dump(sm: KvStateMachine) -> dict[str, Any]:
    """Everything observable, for "unchanged" and "identical" checks."""
    return {
        "applied_instance": sm.applied_instance,
        "revision": sm.revision,
        "kvs": sm.range_local(""),
        "events": sm.events_since(sm.compacted_revision + 1, "", prefix=True),
        "snapshot": sm.snapshot(),
    }


# The interface -----------------------------------------------------------------------------------


def test_kv_state_machine_is_a_state_machine(sm: KvStateMachine) -> None:
    machine: StateMachine = sm
    result = machine.apply(put("a", b"1"))
    assert result == pb.CommandResult(revision=1, succeeded=True)
    # apply() is outside the log: the store changes, the log position does not.
    assert sm.applied_instance == 0
    assert sm.revision == 1
    assert sm.get_local("a") == kv("a", b"1", 1, 1, 1)


def test_new_store_is_empty(sm: KvStateMachine) -> None:
    assert (sm.applied_instance, sm.revision, sm.compacted_revision) == (0, 0, 0)
    assert sm.get_local("a") is None
    assert sm.range_local("") == []
    assert sm.events_since(1, "", prefix=True) == []


# Key-value semantics -----------------------------------------------------------------------------


def test_puts_deletes_and_gets_follow_etcd_versions_and_revisions(log: Log) -> None:
    # Worked by hand: every change bumps the store revision by one; a key's
    # version counts changes since it was (re)created.
    assert log.one(put("a", b"1")) == pb.CommandResult(revision=1, succeeded=True)
    assert log.one(put("b", b"2")) == pb.CommandResult(revision=2, succeeded=True)
    assert log.one(put("a", b"3")) == pb.CommandResult(
        revision=3, succeeded=True, found=True, kv=kv("a", b"1", 1, 1, 1)
    )
    assert log.one(get("a")) == pb.CommandResult(revision=3, found=True, kv=kv("a", b"3", 2, 1, 3))
    assert log.one(delete("a")) == pb.CommandResult(
        revision=4, succeeded=True, found=True, kv=kv("a", b"3", 2, 1, 3)
    )
    # Deleting an absent key changes nothing, not even the revision.
    assert log.one(delete("a")) == pb.CommandResult(revision=4)
    assert log.one(get("a")) == pb.CommandResult(revision=4)
    # Recreated: version starts again at 1, create_revision is the new one.
    assert log.one(put("a", b"5")) == pb.CommandResult(revision=5, succeeded=True)
    assert log.one(get("a")) == pb.CommandResult(revision=5, found=True, kv=kv("a", b"5", 1, 5, 5))
    assert log.one(get("b")) == pb.CommandResult(revision=5, found=True, kv=kv("b", b"2", 1, 2, 2))
    assert log.sm.revision == 5
    assert log.sm.applied_instance == 10


def test_an_entry_applies_its_commands_in_order(log: Log) -> None:
    applied = log.apply(put("a", b"1"), put("a", b"2"), get("a"), delete("a"), get("a"))
    assert applied.instance == 1
    assert applied.revision == 3
    assert [r.revision for r in applied.results] == [1, 2, 2, 3, 3]
    assert applied.results[2].kv == kv("a", b"2", 2, 1, 2)
    assert not applied.results[4].found


def test_empty_values_are_values(log: Log) -> None:
    log.one(put("a", b""))
    assert log.one(get("a")) == pb.CommandResult(revision=1, found=True, kv=kv("a", b"", 1, 1, 1))
    assert log.one(cas_value("a", b"", b"x")).succeeded


def test_compare_and_swap_on_value(log: Log) -> None:
    # Absent key: an expected value never matches, not even b"".
    assert log.one(cas_value("a", b"", b"x")) == pb.CommandResult(revision=0)
    log.one(put("a", b"1"))
    failed = log.one(cas_value("a", b"2", b"x"))
    current = kv("a", b"1", 1, 1, 1)
    assert failed == pb.CommandResult(revision=1, found=True, kv=current, current=current)
    swapped = log.one(cas_value("a", b"1", b"x"))
    assert swapped == pb.CommandResult(revision=2, succeeded=True, found=True, kv=current)
    assert log.sm.get_local("a") == kv("a", b"x", 2, 1, 2)


def test_compare_and_swap_on_version(log: Log) -> None:
    # Version 0 means "absent": it creates the key.
    created = log.one(cas_version("a", 0, b"1"))
    assert created == pb.CommandResult(revision=1, succeeded=True)
    assert log.sm.get_local("a") == kv("a", b"1", 1, 1, 1)
    # ... and fails once the key exists.
    failed = log.one(cas_version("a", 0, b"2"))
    assert failed == pb.CommandResult(
        revision=1, found=True, kv=kv("a", b"1", 1, 1, 1), current=kv("a", b"1", 1, 1, 1)
    )
    assert not log.one(cas_version("a", 2, b"2")).succeeded
    assert log.one(cas_version("a", 1, b"2")).succeeded
    assert log.sm.get_local("a") == kv("a", b"2", 2, 1, 2)
    log.one(delete("a"))
    assert not log.one(cas_version("a", 2, b"3")).succeeded
    assert log.one(cas_version("a", 0, b"3")).succeeded
    assert log.sm.get_local("a") == kv("a", b"3", 1, 4, 4)
    assert log.sm.revision == 4


def test_compare_and_swap_without_expectation_is_an_error(log: Log) -> None:
    log.one(put("a", b"1"))
    op = pb.CompareAndSwapOp(key="a", value=b"2")
    result = log.one(pb.Command(compare_and_swap=op))
    assert "expected_value or expected_version" in result.error
    assert result.revision == 1
    assert log.sm.get_local("a") == kv("a", b"1", 1, 1, 1)


def test_range_by_prefix_in_key_order_with_limit(log: Log) -> None:
    keys = ["b/2", "a", "b/10", "b", "b/1", "c", "b\u00e9", "b/\U0010ffff", "ba"]
    log.apply(*(put(k, k.encode()) for k in keys))
    everything = log.one(range_(""))
    assert [x.key for x in everything.kvs] == sorted(keys)
    assert everything.revision == len(keys)
    assert [x.key for x in log.one(range_("b/")).kvs] == ["b/1", "b/10", "b/2", "b/\U0010ffff"]
    assert [x.key for x in log.one(range_("b/", limit=2)).kvs] == ["b/1", "b/10"]
    assert [x.key for x in log.one(range_("b")).kvs] == [
        "b",
        "b/1",
        "b/10",
        "b/2",
        "b/\U0010ffff",
        "ba",
        "b\u00e9",
    ]
    assert log.one(range_("zz")).kvs == []
    assert log.one(range_("b/1")).kvs[0] == kv("b/1", b"b/1", 1, 5, 5)
    assert log.sm.range_local("b/", 3) == list(log.one(range_("b/", limit=3)).kvs)


def test_range_sees_the_writes_before_it_in_the_same_entry(log: Log) -> None:
    applied = log.apply(put("a", b"1"), range_(""), put("b", b"2"), delete("a"), range_(""))
    assert [x.key for x in applied.results[1].kvs] == ["a"]
    assert [x.key for x in applied.results[4].kvs] == ["b"]
    assert log.sm.range_local("") == [kv("b", b"2", 1, 2, 2)]


def test_range_limit_is_capped(log: Log) -> None:
    log.apply(*(put(f"k{i:05}", b"") for i in range(RANGE_LIMIT + 1)))
    assert len(log.one(range_("")).kvs) == RANGE_LIMIT
    assert len(log.one(range_("", limit=RANGE_LIMIT + 5)).kvs) == RANGE_LIMIT
    assert len(log.sm.range_local("k", 0)) == RANGE_LIMIT


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (put("", b"x"), "key must not be empty"),
        (delete(""), "key must not be empty"),
        (get(""), "key must not be empty"),
        (cas_version("", 0, b"x"), "key must not be empty"),
        (pb.Command(), "command has no operation"),
    ],
)
def test_invalid_commands_are_answered_with_an_error_and_change_nothing(
    log: Log, command: pb.Command, message: str
) -> None:
    log.one(put("a", b"1"))
    before = dump(log.sm)
    applied = log.apply(command)
    assert applied.results == [pb.CommandResult(revision=1, error=message)]
    assert applied.events == []
    after = dump(log.sm)
    assert after.pop("applied_instance") == 2
    assert before.pop("applied_instance") == 1
    before.pop("snapshot")
    after.pop("snapshot")
    assert after == before


# The log -----------------------------------------------------------------------------------------


def test_noop_entries_only_advance_the_applied_instance(sm: KvStateMachine) -> None:
    assert sm.apply_entry(1, pb.LogEntry(noop=True)) == Applied(1, 0, [], [])
    assert sm.apply_entry(2, pb.LogEntry()) == Applied(2, 0, [], [])
    # A no-op is a no-op even if it carries commands.
    assert sm.apply_entry(3, pb.LogEntry(noop=True, commands=[put("a", b"1")])).results == []
    assert (sm.applied_instance, sm.revision, sm.get_local("a")) == (3, 0, None)


@pytest.mark.parametrize("instance", [1, 3, 4, 0, -1])
def test_entries_out_of_order_are_rejected_and_change_nothing(
    sm: KvStateMachine, instance: int
) -> None:
    sm.apply_entry(1, entry(put("a", b"1")))
    before = dump(sm)
    with pytest.raises(EntryOutOfOrder, match="expected instance 2") as caught:
        sm.apply_entry(instance, entry(put("a", b"2")))
    assert isinstance(caught.value, ValueError)
    assert dump(sm) == before
    # Still usable: the rejection happened before any transaction.
    assert sm.apply_entry(2, entry(put("a", b"2"))).revision == 2


# Exactly-once ------------------------------------------------------------------------------------


def test_a_repeated_request_in_one_entry_is_applied_once(log: Log) -> None:
    applied = log.apply(put("a", b"1", client=7, seq=1), put("a", b"1", client=7, seq=1))
    assert applied.results[0] == applied.results[1] == pb.CommandResult(revision=1, succeeded=True)
    assert len(applied.events) == 1
    assert log.sm.get_local("a") == kv("a", b"1", 1, 1, 1)


def test_a_retried_request_in_a_later_entry_returns_the_first_result(log: Log) -> None:
    first = log.one(put("a", b"1", client=7, seq=1))
    log.one(put("a", b"2", client=8, seq=1))
    retried = log.apply(put("a", b"1", client=7, seq=1))
    assert retried.results == [first]
    assert retried.events == []
    assert log.sm.revision == 2
    assert log.sm.get_local("a") == kv("a", b"2", 2, 1, 2)
    assert log.sm.outcome(7, 1) == first
    assert log.sm.outcome(7, 2) is None
    assert log.sm.outcome(0, 0) is None


def test_a_repeated_read_returns_what_it_read_the_first_time(log: Log) -> None:
    log.one(put("a", b"1"))
    first = log.one(get("a", client=3, seq=9))
    log.one(put("a", b"2"))
    assert log.one(get("a", client=3, seq=9)) == first


def test_a_sequence_reused_for_another_command_is_rejected(log: Log) -> None:
    first = log.one(put("a", b"1", client=7, seq=1))
    reused = log.one(put("a", b"other", client=7, seq=1))
    assert "already used for a different command" in reused.error
    assert log.sm.get_local("a") == kv("a", b"1", 1, 1, 1)
    assert log.sm.outcome(7, 1) == first


def test_invalid_commands_are_remembered_too(log: Log) -> None:
    first = log.one(put("", b"x", client=7, seq=1))
    assert first.error
    assert log.one(put("", b"x", client=7, seq=1)) == first
    assert log.sm.outcome(7, 1) == first


def test_client_zero_is_not_deduplicated(log: Log) -> None:
    log.apply(put("a", b"1"), put("a", b"1"))
    log.one(put("a", b"1"))
    assert log.sm.get_local("a") == kv("a", b"1", 3, 1, 3)
    assert log.sm.outcome(0, 0) is None


def test_sequences_may_arrive_out_of_order(log: Log) -> None:
    log.one(put("a", b"10", client=7, seq=10))
    log.one(put("a", b"5", client=7, seq=5))
    log.one(put("a", b"7", client=7, seq=7))
    assert log.sm.get_local("a") == kv("a", b"7", 3, 1, 3)
    assert log.one(put("a", b"5", client=7, seq=5)).revision == 2


def test_sequences_before_the_window_are_too_old(db: Path) -> None:
    with KvStateMachine.open(db) as sm:  # the default window: 1,000 sequences
        log = Log(sm)
        log.apply(*(put(f"k{s}", b"", client=7, seq=s) for s in range(1, 1002)))
        assert sm.revision == 1001
        # Highest 1001: sequences 2..1001 are remembered, 1 is forgotten.
        too_old = log.one(put("k1", b"", client=7, seq=1))
        assert too_old == pb.CommandResult(
            revision=1001,
            error="sequence 1 of client 7 is too old: only sequences above 1 are remembered",
        )
        assert sm.outcome(7, 1) is None
        assert log.one(put("k2", b"", client=7, seq=2)) == pb.CommandResult(
            revision=2, succeeded=True
        )
        # A never-used sequence below the window is refused as well: the state
        # machine cannot tell it from a forgotten one.
        log.one(put("x", b"", client=8, seq=5000))
        assert "too old" in log.one(put("x", b"", client=8, seq=4000)).error
        assert log.one(put("x", b"", client=8, seq=4001)).succeeded
        assert sm.revision == 1003
        # Other clients are unaffected.
        assert log.one(put("y", b"", client=9, seq=1)).succeeded


def test_window_and_eviction_hold_within_one_entry(db: Path) -> None:
    with KvStateMachine.open(db, dedup_window=3) as sm:
        applied = Log(sm).apply(
            put("a", b"", client=7, seq=1),
            put("a", b"", client=7, seq=4),  # remembers 2..4 from here on
            put("a", b"", client=7, seq=1),
            put("a", b"", client=7, seq=2),
            put("a", b"", client=7, seq=2),
        )
        assert [r.succeeded for r in applied.results] == [True, True, False, True, True]
        assert "too old" in applied.results[2].error
        assert applied.results[3] == applied.results[4]
        assert sm.revision == 3
        assert [sm.outcome(7, s) is not None for s in range(1, 6)] == [
            False,
            True,
            False,
            True,
            False,
        ]


def test_large_client_ids_and_sequences(log: Log) -> None:
    biggest = (1 << 64) - 1
    first = log.one(put("a", b"", client=biggest, seq=(1 << 63) - 1))
    assert log.one(put("a", b"", client=biggest, seq=(1 << 63) - 1)) == first
    assert log.sm.outcome(biggest, (1 << 63) - 1) == first
    assert "out of range" in log.one(put("a", b"", client=biggest, seq=1 << 63)).error
    assert log.sm.revision == 1


def test_idle_clients_are_forgotten_at_the_same_point_of_the_log(db: Path) -> None:
    with KvStateMachine.open(db, client_idle_instances=3) as sm:
        log = Log(sm)
        log.one(put("a", b"", client=7, seq=1))  # instance 1
        log.one(put("b", b"", client=8, seq=1))  # instance 2
        log.apply()  # 3
        log.one(get("a", client=8, seq=2))  # 4: client 8 is active again
        assert sm.outcome(7, 1) is not None
        log.apply()  # 5: client 7 idle since 1: 4 instances > 3
        assert sm.outcome(7, 1) is None
        assert sm.outcome(8, 1) is not None
        # A retry after expiry is a new request (the documented trade-off).
        assert log.one(put("a", b"", client=7, seq=1)).revision == 3


# Restart -----------------------------------------------------------------------------------------


def test_restart_resumes_from_the_applied_instance(db: Path) -> None:
    with KvStateMachine.open(db) as sm:
        log = Log(sm)
        first = log.one(put("a", b"1", client=7, seq=1))
        log.apply(put("b", b"2"), delete("b"), put("c", b"3", client=7, seq=2))
        before = dump(sm)
    with KvStateMachine.open(db) as sm:
        assert dump(sm) == before
        assert (sm.applied_instance, sm.revision) == (2, 4)
        with pytest.raises(EntryOutOfOrder):
            sm.apply_entry(1, entry(put("a", b"1", client=7, seq=1)))
        # The retried request still applies once.
        assert Log(sm).one(put("a", b"1", client=7, seq=1)) == first
        assert sm.revision == 4
        assert sm.get_local("a") == kv("a", b"1", 1, 1, 1)


# Atomicity ---------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def test_a_crash_mid_entry_keeps_none_of_it(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with KvStateMachine.open(db) as sm:
        Log(sm).one(put("z", b"0"))
        before = dump(sm)
        real_put = kv_module._Batch._put
        calls = []

        def put_then_crash(batch: Any, op: pb.PutOp) -> pb.CommandResult:
            calls.append(op.key)
            if len(calls) == 2:
                raise Crash("power cut")
            return real_put(batch, op)

        monkeypatch.setattr(kv_module._Batch, "_put", put_then_crash)
        # The range makes the first put reach the database (inside the
        # transaction) before the crash.
        doomed = entry(put("a", b"1", client=7, seq=1), range_(""), put("b", b"2"))
        with pytest.raises(Crash):
            sm.apply_entry(2, doomed)
        assert calls == ["a", "b"]
        # Nothing to guess: the object refuses further work.
        with pytest.raises(StorageError, match="close it and open the file again"):
            sm.get_local("a")
        monkeypatch.undo()
    with KvStateMachine.open(db) as sm:
        assert dump(sm) == before
        assert sm.outcome(7, 1) is None
        applied = sm.apply_entry(2, doomed)
        assert [r.succeeded for r in applied.results] == [True, False, True]
        assert sm.revision == 3


def test_a_crash_after_all_writes_before_commit_keeps_none_of_it(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with KvStateMachine.open(db) as sm:
        Log(sm).one(put("z", b"0"))
        before = dump(sm)
        real_flush = kv_module._Batch.flush

        def flush_then_crash(batch: Any) -> None:
            real_flush(batch)
            raise Crash("power cut")

        monkeypatch.setattr(kv_module._Batch, "flush", flush_then_crash)
        with pytest.raises(Crash):
            sm.apply_entry(2, entry(put("a", b"1", client=7, seq=1), delete("z")))
        monkeypatch.undo()
    with KvStateMachine.open(db) as sm:
        assert dump(sm) == before


# Watch history -----------------------------------------------------------------------------------


def test_events_record_every_change_with_its_previous_value(log: Log) -> None:
    first = log.apply(put("a", b"1"), put("ab", b"2"), get("a"), delete("zz"))
    second = log.apply(
        put("a", b"3"), delete("ab"), cas_version("b", 0, b"4"), cas_value("b", b"x", b"")
    )
    a1, a3 = kv("a", b"1", 1, 1, 1), kv("a", b"3", 2, 1, 3)
    ab = kv("ab", b"2", 1, 2, 2)
    expected = [
        pb.WatchEvent(type=PUT, kv=a1),
        pb.WatchEvent(type=PUT, kv=ab),
        pb.WatchEvent(type=PUT, kv=a3, previous=a1, had_previous=True),
        pb.WatchEvent(
            type=DELETE, kv=pb.KeyValue(key="ab", mod_revision=4), previous=ab, had_previous=True
        ),
        pb.WatchEvent(type=PUT, kv=kv("b", b"4", 1, 5, 5)),
    ]
    assert first.events == list(enumerate(expected[:2], start=1))
    assert second.events == list(enumerate(expected[2:], start=3))
    sm = log.sm
    assert sm.events_since(1, "", prefix=True) == expected
    assert sm.events_since(1, "a") == [expected[0], expected[2]]
    assert sm.events_since(1, "a", prefix=True) == expected[:4]
    assert sm.events_since(3, "a", prefix=True) == expected[2:4]
    assert sm.events_since(2, "a", prefix=True, limit=2) == expected[1:3]
    assert sm.events_since(4, "ab") == [expected[3]]
    assert sm.events_since(6, "", prefix=True) == []
    assert sm.events_since(1, "") == []  # an exact watch needs a key
    with pytest.raises(ValueError, match="start_revision"):
        sm.events_since(0, "a")


def test_compaction_discards_old_history(db: Path) -> None:
    with KvStateMachine.open(db) as sm:
        log = Log(sm)
        log.apply(*(put(f"k{i}", b"") for i in range(10)))
        assert sm.compact(keep_revisions=4) == 6
        with pytest.raises(Compacted) as caught:
            sm.events_since(6, "k", prefix=True)
        assert caught.value.revision == 6
        assert "watch from revision 7" in str(caught.value)
        assert [e.kv.mod_revision for e in sm.events_since(7, "k", prefix=True)] == [7, 8, 9, 10]
        # Never backwards.
        assert sm.compact(keep_revisions=8) == 6
        assert sm.compact(keep_revisions=0) == 10
        assert sm.events_since(11, "", prefix=True) == []
        with pytest.raises(ValueError):
            sm.compact(-1)
        log.one(put("k0", b"again"))
        assert [e.kv.mod_revision for e in sm.events_since(11, "k0")] == [11]
    with KvStateMachine.open(db) as sm:
        assert sm.compacted_revision == 10
        with pytest.raises(Compacted):
            sm.events_since(10, "k0")
        assert len(sm.events_since(11, "k0")) == 1


# Refusing bad files ------------------------------------------------------------------------------


def test_garbage_is_refused(db: Path) -> None:
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(StorageCorrupt, match="file is not a database"):
        KvStateMachine.open(db)


def test_an_empty_file_is_refused(db: Path) -> None:
    db.write_bytes(b"")
    with pytest.raises(StorageCorrupt, match="exists but is empty"):
        KvStateMachine.open(db)


def test_an_acceptor_database_is_not_a_kv_database(db: Path) -> None:
    acceptor = SqliteAcceptorStorage(db, acceptor_id=1, cluster_id="c")
    acceptor.open()
    acceptor.close()
    with pytest.raises(StorageCorrupt, match="not a key-value state machine database"):
        KvStateMachine.open(db)


def test_a_damaged_file_is_refused(db: Path) -> None:
    with KvStateMachine.open(db) as sm:
        Log(sm).apply(*(put(f"k{i:04}", b"v" * 100) for i in range(300)))
    data = bytearray(db.read_bytes())
    assert len(data) > 6 * 4096
    data[3 * 4096 : 3 * 4096 + 1500] = b"\x5a" * 1500  # smash a b-tree page
    db.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupt, match=r"integrity check|malformed"):
        KvStateMachine.open(db)


def test_a_file_made_with_other_limits_is_refused(db: Path) -> None:
    KvStateMachine.open(db, dedup_window=10).close()
    with pytest.raises(StorageCorrupt, match="dedup_window=10"):
        KvStateMachine.open(db)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageCorrupt, match="does not exist"):
        KvStateMachine.open(tmp_path / "nowhere" / "kv.db")


def test_a_file_left_half_created_is_ignored(db: Path) -> None:
    (db.parent / (db.name + ".creating")).write_bytes(b"half")
    with KvStateMachine.open(db) as sm:
        assert sm.revision == 0
    assert not (db.parent / (db.name + ".creating")).exists()
    assert not Path(f"{db}-wal").exists()  # closed cleanly


def test_closed_store_refuses_work(db: Path) -> None:
    sm = KvStateMachine.open(db)
    sm.close()
    sm.close()
    with pytest.raises(StorageError, match="closed"):
        sm.apply_entry(1, entry())


# Snapshots ---------------------------------------------------------------------------------------


def busy_store(sm: KvStateMachine) -> None:
    log = Log(sm)
    log.apply(put("a", b"1", client=7, seq=1), put("b/1", b"\x00\xff"), put("b/2", b"2"))
    log.apply(
        delete("b/1", client=(1 << 64) - 1, seq=3), cas_version("c", 0, b"c", client=7, seq=2)
    )
    log.apply()
    sm.compact(keep_revisions=2)
    log.apply(put("\U0001f600", b"smile"))


def test_snapshot_restores_identical_state_in_a_fresh_file(tmp_path: Path) -> None:
    with (
        KvStateMachine.open(tmp_path / "one.db") as one,
        KvStateMachine.open(tmp_path / "two.db") as two,
    ):
        busy_store(one)
        two.restore(one.snapshot())
        assert dump(two) == dump(one)
        assert two.compacted_revision == one.compacted_revision == 3
        for client, seq in [(7, 1), (7, 2), ((1 << 64) - 1, 3)]:
            assert two.outcome(client, seq) == one.outcome(client, seq) is not None
        # Both go on identically, exactly-once memory included.
        more = entry(put("a", b"1", client=7, seq=1), put("a", b"9"), delete("c"))
        assert two.apply_entry(5, more) == one.apply_entry(5, more)
        assert dump(two) == dump(one)
    with KvStateMachine.open(tmp_path / "two.db") as reopened:
        assert reopened.applied_instance == 5


def test_restore_replaces_everything(tmp_path: Path) -> None:
    with KvStateMachine.open(tmp_path / "kv.db") as sm:
        Log(sm).one(put("old", b""))
        snapshot = sm.snapshot()
        before = dump(sm)
        Log(sm).apply(put("new", b""), put("old", b"x", client=1, seq=1))
        sm.restore(snapshot)
        assert dump(sm) == before
        assert sm.outcome(1, 1) is None


def test_snapshots_are_deterministic(tmp_path: Path) -> None:
    with (
        KvStateMachine.open(tmp_path / "one.db") as one,
        KvStateMachine.open(tmp_path / "two.db") as two,
    ):
        busy_store(one)
        busy_store(two)
        assert one.snapshot() == two.snapshot()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"garbage",
        lambda data: data[:-10],
        lambda data: data[:30] + bytes([data[30] ^ 1]) + data[31:],
        lambda data: b"",
    ],
)
def test_a_bad_snapshot_is_refused_and_changes_nothing(tmp_path: Path, damage: Any) -> None:
    with (
        KvStateMachine.open(tmp_path / "one.db") as one,
        KvStateMachine.open(tmp_path / "two.db") as two,
    ):
        busy_store(one)
        Log(two).one(put("mine", b""))
        before = dump(two)
        with pytest.raises(InvalidSnapshot):
            two.restore(damage(one.snapshot()))
        assert dump(two) == before


def test_a_snapshot_with_other_limits_is_refused(tmp_path: Path) -> None:
    with KvStateMachine.open(tmp_path / "one.db", dedup_window=5) as one:
        snapshot = one.snapshot()
    with (
        KvStateMachine.open(tmp_path / "two.db") as two,
        pytest.raises(InvalidSnapshot, match="dedup_window=5"),
    ):
        two.restore(snapshot)


# Helpers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("a", "b"),
        ("ab", "ac"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff", None),
        ("\ud7ff", "\ue000"),
        ("", None),
    ],
)
def test_prefix_end(prefix: str, end: str | None) -> None:
    assert kv_module._prefix_end(prefix) == end


# Performance -------------------------------------------------------------------------------------


def test_large_entries_apply_whole(sm: KvStateMachine) -> None:
    """Eight entries of 500 puts each apply completely. (How fast is a matter
    for `paxos bench`, not for a timed assertion on a shared machine.)"""
    for n in range(8):
        commands = [
            put(f"key/{n}/{i}", b"v" * 100, client=1 + i % 50, seq=n * 500 + i + 1)
            for i in range(500)
        ]
        applied = sm.apply_entry(n + 1, entry(*commands))
        assert len(applied.results) == 500
    assert sm.revision == 4000
    assert sm.applied_instance == 8
    assert len(sm.range_local("key/7/", 0)) == 500


# The model ---------------------------------------------------------------------------------------


@dataclass
class ModelClient:
    max_sequence: int
    last_instance: int
    results: dict[int, tuple[Any, pb.CommandResult]] = field(default_factory=dict)


class Model:
    """The rules, written as plainly as possible, in memory."""

    def __init__(self, window: int, idle: int) -> None:
        self.window = window
        self.idle = idle
        self.revision = 0
        self.applied = 0
        self.compacted = 0
        self.kvs: dict[str, pb.KeyValue] = {}
        self.events: list[pb.WatchEvent] = []
        self.clients: dict[int, ModelClient] = {}

    def apply_entry(self, log_entry: pb.LogEntry) -> list[pb.CommandResult]:
        self.applied += 1
        for client_id in [
            c for c, s in self.clients.items() if self.applied - s.last_instance > self.idle
        ]:
            del self.clients[client_id]
        if log_entry.noop:
            return []
        return [self.apply(command) for command in log_entry.commands]

    def apply(self, command: pb.Command) -> pb.CommandResult:
        if command.client_id == 0:
            return self.execute(command)
        seq = command.sequence
        client = self.clients.get(command.client_id)
        if client is not None:
            client.last_instance = self.applied
            if seq <= client.max_sequence - self.window:
                return self.error("too old")
        which = command.WhichOneof("op")
        op = (which, getattr(command, which) if which else None)
        if client is not None and seq in client.results:
            first_op, result = client.results[seq]
            return result if first_op == op else self.error("different command")
        result = self.execute(command)
        if client is None:
            client = self.clients[command.client_id] = ModelClient(seq, self.applied)
        client.max_sequence = max(client.max_sequence, seq)
        client.results[seq] = (op, result)
        for old in [s for s in client.results if s <= client.max_sequence - self.window]:
            del client.results[old]
        return result

    def execute(self, command: pb.Command) -> pb.CommandResult:
        which = command.WhichOneof("op")
        if which == "range":
            limit = command.range.limit or RANGE_LIMIT
            keys = sorted(k for k in self.kvs if k.startswith(command.range.prefix))[:limit]
            return pb.CommandResult(revision=self.revision, kvs=[self.kvs[k] for k in keys])
        if which is None:
            return self.error("no operation")
        op = getattr(command, which)
        if not op.key:
            return self.error("empty")
        previous = self.kvs.get(op.key)
        found = previous is not None
        if which == "get":
            return pb.CommandResult(revision=self.revision, found=found, kv=previous)
        if which == "delete":
            if previous is None:
                return pb.CommandResult(revision=self.revision)
            self.revision += 1
            del self.kvs[op.key]
            deleted = pb.KeyValue(key=op.key, mod_revision=self.revision)
            self.events.append(
                pb.WatchEvent(type=DELETE, kv=deleted, previous=previous, had_previous=True)
            )
            return pb.CommandResult(revision=self.revision, succeeded=True, found=True, kv=previous)
        if which == "compare_and_swap":
            expect = op.WhichOneof("expect")
            if expect is None:
                return self.error("needs expected")
            if expect == "expected_value":
                ok = previous is not None and previous.value == op.expected_value
            else:
                ok = (previous.version if previous else 0) == op.expected_version
            if not ok:
                return pb.CommandResult(
                    revision=self.revision, found=found, kv=previous, current=previous
                )
        self.revision += 1
        new = pb.KeyValue(
            key=op.key,
            value=op.value,
            version=previous.version + 1 if previous else 1,
            create_revision=previous.create_revision if previous else self.revision,
            mod_revision=self.revision,
        )
        self.kvs[op.key] = new
        self.events.append(pb.WatchEvent(type=PUT, kv=new, previous=previous, had_previous=found))
        return pb.CommandResult(revision=self.revision, succeeded=True, found=found, kv=previous)

    def error(self, marker: str) -> pb.CommandResult:
        return pb.CommandResult(revision=self.revision, error=marker)


def assert_same_result(actual: pb.CommandResult, expected: pb.CommandResult) -> None:
    """Equal, except that the model names an error by a word of its message."""
    if not expected.error:
        assert actual == expected
        return
    assert expected.error in actual.error, (actual, expected)
    without_error = []
    for result in (actual, expected):
        copy = pb.CommandResult()
        copy.CopyFrom(result)
        copy.ClearField("error")
        without_error.append(copy)
    assert without_error[0] == without_error[1]


KEYS = st.sampled_from(["", "a", "ab", "b", "b\u00e9", "\U0010ffff"])
VALUES = st.sampled_from([b"", b"x", b"y"])
OPS = st.one_of(
    st.builds(lambda k, v: pb.Command(put=pb.PutOp(key=k, value=v)), KEYS, VALUES),
    st.builds(lambda k: pb.Command(delete=pb.DeleteOp(key=k)), KEYS),
    st.builds(
        lambda k, v, e: pb.Command(
            compare_and_swap=pb.CompareAndSwapOp(key=k, value=v, expected_value=e)
        ),
        KEYS,
        VALUES,
        VALUES,
    ),
    st.builds(
        lambda k, v, n: pb.Command(
            compare_and_swap=pb.CompareAndSwapOp(key=k, value=v, expected_version=n)
        ),
        KEYS,
        VALUES,
        st.integers(0, 3),
    ),
    st.builds(
        lambda k, v: pb.Command(compare_and_swap=pb.CompareAndSwapOp(key=k, value=v)), KEYS, VALUES
    ),
    st.builds(lambda k: pb.Command(get=pb.GetOp(key=k)), KEYS),
    st.builds(
        lambda p, n: pb.Command(range=pb.RangeOp(prefix=p, limit=n)),
        st.sampled_from(["", "a", "b", "\U0010ffff"]),
        st.integers(0, 3),
    ),
    st.just(pb.Command()),
)


def _with_id(command: pb.Command, client_id: int, sequence: int) -> pb.Command:
    copy = pb.Command()
    copy.CopyFrom(command)
    copy.client_id = client_id
    copy.sequence = sequence
    return copy


COMMANDS = st.builds(_with_id, OPS, st.sampled_from([0, 1, 2, (1 << 64) - 1]), st.integers(0, 8))
ENTRIES = st.builds(
    lambda commands, noop: pb.LogEntry(commands=commands, noop=noop),
    st.lists(COMMANDS, max_size=6),
    st.sampled_from([False, False, False, True]),  # noop
)
STEPS = st.lists(
    st.one_of(
        ENTRIES.map(lambda e: ("entry", e)),
        ENTRIES.map(lambda e: ("entry", e)),
        ENTRIES.map(lambda e: ("entry", e)),
        st.just(("restart", None)),
        st.integers(0, 4).map(lambda k: ("compact", k)),
    ),
    max_size=14,
)


@settings(max_examples=150, deadline=None)
@given(steps=STEPS)
def test_the_state_machine_behaves_like_the_model(steps: list[tuple[str, Any]]) -> None:
    window, idle = 3, 3
    model = Model(window, idle)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kv.db"
        sm = KvStateMachine.open(path, dedup_window=window, client_idle_instances=idle)
        try:
            for kind, arg in steps:
                if kind == "restart":
                    sm.close()
                    sm = KvStateMachine.open(path, dedup_window=window, client_idle_instances=idle)
                elif kind == "compact":
                    model.compacted = max(model.compacted, model.revision - arg)
                    assert sm.compact(arg) == model.compacted
                else:
                    events_before = len(model.events)
                    expected = model.apply_entry(arg)
                    applied = sm.apply_entry(model.applied, arg)
                    assert len(applied.results) == len(expected)
                    for got, want in zip(applied.results, expected, strict=True):
                        assert_same_result(got, want)
                    new_events = model.events[events_before:]
                    assert applied.events == list(enumerate(new_events, start=events_before + 1))
                assert (sm.applied_instance, sm.revision) == (model.applied, model.revision)
            assert sm.range_local("") == [model.kvs[k] for k in sorted(model.kvs)]
            assert (
                sm.events_since(model.compacted + 1, "", prefix=True)
                == model.events[model.compacted :]
            )
            for client_id, client in model.clients.items():
                for seq, (_op, result) in client.results.items():
                    stored = sm.outcome(client_id, seq)
                    assert stored is not None
                    assert_same_result(stored, result)
            copy_path = Path(directory) / "copy.db"
            with KvStateMachine.open(
                copy_path, dedup_window=window, client_idle_instances=idle
            ) as copy:
                copy.restore(sm.snapshot())
                assert copy.snapshot() == sm.snapshot()
        finally:
            sm.close()


def test_entries_applied_together_equal_entries_applied_one_by_one(tmp_path: Path) -> None:
    """``apply_entries`` (one transaction for a run of entries, as a learner
    applies what is ready) gives every entry exactly the results, events and
    exactly-once memory it gets alone, and leaves the same file."""
    entries = [
        entry(put("a", b"1", client=7, seq=1), put("b", b"1")),
        pb.LogEntry(noop=True),
        entry(put("a", b"1", client=7, seq=1), cas_version("a", 1, b"2", client=7, seq=2)),
        entry(delete("b"), range_(""), get("a", client=8, seq=1)),
        entry(put("b", b"3"), cas_value("a", b"2", b"4"), delete("zz")),
    ]
    with (
        KvStateMachine.open(tmp_path / "one.db") as one,
        KvStateMachine.open(tmp_path / "all.db") as together,
    ):
        alone = [one.apply_entry(i, e) for i, e in enumerate(entries, start=1)]
        assert together.apply_entries(1, entries) == alone
        assert dump(together) == dump(one)
        assert together.applied_instance == one.applied_instance == len(entries)
        assert together.outcome(7, 2) == one.outcome(7, 2) is not None
        with pytest.raises(EntryOutOfOrder):
            together.apply_entries(len(entries) + 2, [entry(put("x", b""))])
        assert together.apply_entries(len(entries) + 1, []) == []
    with KvStateMachine.open(tmp_path / "all.db") as reopened:
        assert reopened.applied_instance == len(entries)
