"""The key-value state machine against a small in-memory model.

A property test compares the state machine with the model over random logs
with restarts, and applying entries together must equal applying them one
by one.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxos_service.kv import RANGE_LIMIT, EntryOutOfOrder, KvStateMachine
from paxos_service.v1 import paxos_pb2 as pb
from tests.unit.kv_support import (
    DELETE,
    PUT,
    cas_value,
    cas_version,
    delete,
    dump,
    entry,
    get,
    put,
    range_,
)

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

    def execute(self, command: pb.Command) -> pb.CommandResult:  # noqa: PLR0911 (one per op)
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
