"""Acceptor storage below the compaction point: the point is saved, the log's
votes through it are deleted in bounded batches (single-decree keys never),
and the freed pages go back to the file system. Real SQLite files."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from paxos_service.storage.group_commit import TRUNCATE_BATCH, GroupCommitter
from paxos_service.storage.sqlite import SqliteAcceptorStorage
from roles import AcceptorState, Ballot

BALLOT = Ballot(1, 0)


def _open(path: Path) -> SqliteAcceptorStorage:
    storage = SqliteAcceptorStorage(path, acceptor_id=0, cluster_id="t")
    storage.open()
    return storage


def _fill(storage: SqliteAcceptorStorage, log: range, decrees: range) -> None:
    state = AcceptorState(BALLOT, BALLOT, b"v" * 1000)
    storage.save([(i, state) for i in log] + [(-k, state) for k in decrees])


def test_truncation_deletes_only_the_log_below_the_point_and_returns_the_space(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.db"
    storage = _open(path)
    _fill(storage, range(1, 5001), range(1, 11))
    before = storage.disk_bytes()
    storage.save([], chosen_through=4500, compacted_through=4000)
    deleted = []
    while (count := storage.truncate(4000, 1500)) > 0:
        deleted.append(count)
    assert deleted == [1500, 1500, 1000]
    while storage.reclaim() > 0:
        pass
    left = storage.load_all()
    assert sorted(i for i in left if i > 0) == list(range(4001, 5001))
    assert sorted(-i for i in left if i < 0) == list(range(1, 11))  # decrees stay
    storage.close()
    reopened = _open(path)  # closing checkpointed the WAL into the file
    assert reopened.compacted_through == 4000
    assert reopened.disk_bytes() < before / 3, (before, reopened.disk_bytes())
    reopened.close()


async def test_group_committer_saves_the_point_first_then_truncates_in_batches(
    tmp_path: Path,
) -> None:
    storage = _open(tmp_path / "a.db")
    count = TRUNCATE_BATCH * 2 + 10
    _fill(storage, range(1, count + 1), range(0))
    executor = ThreadPoolExecutor(max_workers=1)
    committer = GroupCommitter(storage, executor)
    committer.start()
    try:
        committer.note_compacted_through(count - 5)
        await committer.write(count + 1, AcceptorState(BALLOT))  # carries the point

        async def truncated() -> None:
            while True:
                left = await committer.run(storage.load_states, 1, count)
                if len(left) == 5:
                    return
                await asyncio.sleep(0.01)

        await asyncio.wait_for(truncated(), 30)
        assert storage.compacted_through == count - 5
    finally:
        await committer.stop()
        executor.shutdown()
        storage.close()
