"""Compacting watch history through the log: every replica at the same point,
with the same answer, whatever its own retention did."""

from __future__ import annotations

from pathlib import Path

import pytest

from paxos_service.kv import KvStateMachine
from paxos_service.kv.state_machine import Compacted
from paxos_service.v1 import paxos_pb2 as pb
from tests.unit.kv_support import Log, put


def compact(revision: int) -> pb.Command:
    return pb.Command(compact=pb.CompactOp(revision=revision))


def test_compact_discards_history_through_the_revision(log: Log, sm: KvStateMachine) -> None:
    for i in range(5):
        log.one(put(f"k{i}", b"v"))
    result = log.one(compact(3))
    assert not result.error and result.succeeded and result.revision == 5
    assert sm.compacted_revision == 3
    with pytest.raises(Compacted) as caught:
        sm.events_since(3, "k", prefix=True)
    assert caught.value.revision == 3
    assert [e.kv.mod_revision for e in sm.events_since(4, "k", prefix=True)] == [4, 5]
    # Keys and values stay.
    got = sm.get_local("k0")
    assert got is not None and got.value == b"v"


def test_compact_covers_the_events_of_its_own_entry(log: Log, sm: KvStateMachine) -> None:
    applied = log.apply(put("a", b"1"), put("b", b"2"), compact(2), put("c", b"3"))
    assert [r.error for r in applied.results] == ["", "", "", ""]
    assert sm.compacted_revision == 2
    assert [e.kv.key for e in sm.events_since(3, "", prefix=True)] == ["c"]


def test_compact_in_the_future_or_at_zero_is_refused_and_changes_nothing(
    log: Log, sm: KvStateMachine
) -> None:
    log.one(put("a", b"1"))
    assert "in the future" in log.one(compact(2)).error
    assert "revision >= 1" in log.one(compact(0)).error
    assert sm.compacted_revision == 0


def test_every_replica_answers_alike_whatever_its_own_retention(tmp_path: Path) -> None:
    one = KvStateMachine.open(tmp_path / "one.db")
    two = KvStateMachine.open(tmp_path / "two.db")
    try:
        for sm in (one, two):
            for i in range(6):
                Log(sm).one(put(f"k{i}", b"v"))
        two.compact(keep_revisions=1)  # its own retention went further
        answers = [Log(sm).one(compact(3)) for sm in (one, two)]
        assert answers[0] == answers[1]
        assert (one.compacted_revision, two.compacted_revision) == (3, 5)
        # Never backwards, and survives a restart.
        Log(two).one(compact(2))
        two.close()
        two = KvStateMachine.open(tmp_path / "two.db")
        assert two.compacted_revision == 5
    finally:
        one.close()
        two.close()
