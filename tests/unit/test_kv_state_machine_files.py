"""The key-value state machine's history, files and snapshots.

The watch history records every change with its previous value until it is
compacted; files that are not a healthy key-value database of the same
limits are refused; and snapshots restore an identical, deterministic state.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from paxos_service.kv import Compacted, InvalidSnapshot, KvStateMachine
from paxos_service.storage.contract import StorageCorrupt, StorageError
from paxos_service.storage.sqlite import SqliteAcceptorStorage
from paxos_service.v1 import paxos_pb2 as pb
from tests.unit.kv_support import (
    DELETE,
    PUT,
    Log,
    cas_value,
    cas_version,
    delete,
    dump,
    entry,
    get,
    kv,
    put,
)

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


def test_a_file_of_the_previous_schema_is_upgraded_when_opened(tmp_path: Path) -> None:
    """Schema 1 had no kv_clients.acked_below: opening adds it (0: nothing
    acknowledged) and keeps every row."""
    path = tmp_path / "kv.db"
    with KvStateMachine.open(path) as machine:
        command = pb.Command(client_id=7, sequence=1, put=pb.PutOp(key="a", value=b"1"))
        machine.apply_entry(1, pb.LogEntry(commands=[command]))
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("ALTER TABLE kv_clients DROP COLUMN acked_below")
    raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    raw.close()
    with KvStateMachine.open(path) as machine:
        assert machine.applied_instance == 1
        assert machine.outcome(7, 1) is not None
        again = pb.Command(client_id=7, sequence=2, first_incomplete=2, delete=pb.DeleteOp(key="a"))
        machine.apply_entry(2, pb.LogEntry(commands=[again]))
        assert machine.outcome(7, 1) is None
