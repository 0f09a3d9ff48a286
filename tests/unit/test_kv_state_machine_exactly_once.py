"""The key-value state machine applies each client request exactly once, and durably.

Retried requests get their first result back within a bounded window of
sequences per client; a restart resumes from the applied instance; and a
crash in the middle of an entry keeps none of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from paxos_service.kv import EntryOutOfOrder, KvStateMachine, RequestState
from paxos_service.kv.batch import Batch
from paxos_service.storage.contract import StorageError
from paxos_service.v1 import paxos_pb2 as pb
from tests.unit.kv_support import Log, delete, dump, entry, get, kv, put, range_

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
        real_put = Batch._put
        calls = []

        def put_then_crash(batch: Any, op: pb.PutOp) -> pb.CommandResult:
            calls.append(op.key)
            if len(calls) == 2:
                raise Crash("power cut")
            return real_put(batch, op)

        monkeypatch.setattr(Batch, "_put", put_then_crash)
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
        real_flush = Batch.flush

        def flush_then_crash(batch: Any) -> None:
            real_flush(batch)
            raise Crash("power cut")

        monkeypatch.setattr(Batch, "flush", flush_then_crash)
        with pytest.raises(Crash):
            sm.apply_entry(2, entry(put("a", b"1", client=7, seq=1), delete("z")))
        monkeypatch.undo()
    with KvStateMachine.open(db) as sm:
        assert dump(sm) == before


# Acknowledged results are forgotten -----------------------------------------------------------


def _acked(command: pb.Command, first_incomplete: int) -> pb.Command:
    command.first_incomplete = first_incomplete
    return command


def test_results_the_client_acknowledged_are_forgotten_and_a_late_copy_is_refused(
    log: Log,
) -> None:
    first = log.one(_acked(put("a", b"1", client=7, seq=1), 1))
    assert log.sm.outcome(7, 1) == first
    log.one(_acked(put("a", b"2", client=7, seq=2), 2))  # the client has answer 1
    assert log.sm.outcome(7, 1) is None
    assert log.sm.lookup(7, 1)[0] is RequestState.FORGOTTEN
    late = log.one(_acked(put("a", b"1", client=7, seq=1), 1))  # a late copy of 1
    assert "too old" in late.error
    assert log.sm.get_local("a") == kv("a", b"2", 2, 1, 2)  # never applied twice


def test_a_client_cannot_acknowledge_its_own_request_or_move_back(log: Log) -> None:
    log.one(_acked(put("a", b"1", client=7, seq=1), 5))  # above itself: counts as 1
    assert log.sm.outcome(7, 1) is not None
    log.one(_acked(put("a", b"2", client=7, seq=3), 3))
    log.one(_acked(put("a", b"3", client=7, seq=4), 1))  # lower: changes nothing
    assert log.sm.outcome(7, 1) is None
    assert log.sm.lookup(7, 2)[0] is RequestState.FORGOTTEN
    assert log.sm.outcome(7, 3) is not None and log.sm.outcome(7, 4) is not None


def test_without_acknowledgements_the_window_still_bounds_the_memory(log: Log) -> None:
    log.one(put("a", b"1", client=7, seq=1))
    log.one(put("a", b"2", client=7, seq=2))
    assert log.sm.outcome(7, 1) is not None  # grpcurl-style clients: as before
