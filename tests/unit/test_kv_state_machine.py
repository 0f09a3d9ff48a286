"""The key-value state machine that learners apply the decided log to: its semantics.

Real SQLite files, no mocks. Expected values are computed by hand from etcd's
rules (a store revision that every change bumps by one; per key a version,
create_revision and mod_revision). Covers the interface, puts, deletes,
compare-and-swap and ranges, the order of the log, and large entries.
"""

from __future__ import annotations

import pytest

from paxos_service.kv import RANGE_LIMIT, Applied, EntryOutOfOrder, KvStateMachine, StateMachine
from paxos_service.kv.reads import prefix_end
from paxos_service.v1 import paxos_pb2 as pb
from tests.unit.kv_support import (
    Log,
    cas_value,
    cas_version,
    delete,
    dump,
    entry,
    get,
    kv,
    put,
    range_,
)

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
    assert prefix_end(prefix) == end


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
