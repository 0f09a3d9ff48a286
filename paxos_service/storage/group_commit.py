"""Group commit: the acceptor's durable writes, batched so that every write
queued while a commit runs shares the next commit (and its fsync).

Commits happen strictly in queue order on one storage thread, so "my commit
is done" implies "every earlier write is done". After a failed commit nothing
is ever committed again: every later write is refused with StorageError, and
the acceptor stops voting rather than reply without persisting.

Truncation below the compaction point (roles/compaction.py) runs on the same
thread, between commits, in bounded batches: the new point is saved with a
commit first, and only then are the votes below it deleted and the freed
pages handed back to the file system.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from paxos_service.core import metrics
from paxos_service.core.logger import get_logger
from paxos_service.storage.contract import AcceptorStorage, StorageError
from roles import AcceptorState, RangePromise

T = TypeVar("T")

#: Instances whose votes one truncation step deletes at most: a few
#: milliseconds of the storage thread between two commits.
TRUNCATE_BATCH = 2000


class GroupCommitter:
    """Writes queued acceptor states in batches: every write that arrives while
    a commit is running shares the next commit (and its fsync)."""

    def __init__(self, storage: AcceptorStorage, executor: Executor) -> None:
        self._storage = storage
        self._executor = executor
        self._pending: list[tuple[int, AcceptorState]] = []
        self._pending_range: RangePromise | None = None
        self._pending_chosen: int | None = None
        self._pending_compacted: int | None = None
        #: Truncation: the saved compaction point, how far the deletes got,
        #: and whether free pages are left to hand back.
        self._truncate_to = storage.compacted_through
        self._truncated_through = 0
        self._reclaim_due = True
        self._pending_done: asyncio.Future[None] | None = None
        self._last_done: asyncio.Future[None] | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failure: StorageError | None = None
        self.commits = 0
        self.rows = 0

    @property
    def storage(self) -> AcceptorStorage:
        return self._storage

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def write(self, instance: int, state: AcceptorState) -> asyncio.Future[None]:
        """Queue a write; the future completes once it is durable. Raises
        StorageError once a commit has failed: nothing would ever commit it."""
        self._refuse_after_failure()
        self._pending.append((instance, state))
        return self._enqueued()

    def write_range_promise(self, promise: RangePromise) -> asyncio.Future[None]:
        """Queue the new range promise (it only grows, so the latest wins)."""
        self._refuse_after_failure()
        self._pending_range = promise
        return self._enqueued()

    def note_chosen_through(self, chosen_through: int) -> None:
        """Store ``chosen_through`` with the next commit, whenever that comes:
        it is a hint that only saves work after a restart (roles/acceptor.py),
        so it never costs a commit of its own."""
        if self._pending_chosen is None or chosen_through > self._pending_chosen:
            self._pending_chosen = chosen_through

    def note_compacted_through(self, compacted_through: int) -> None:
        """Store the compaction point with the next commit; once that is
        durable, delete the votes through it, a batch at a time."""
        if self._pending_compacted is None or compacted_through > self._pending_compacted:
            self._pending_compacted = compacted_through

    def _refuse_after_failure(self) -> None:
        if self.failure is not None:
            raise StorageError(f"an earlier commit failed ({self.failure})")

    def _enqueued(self) -> asyncio.Future[None]:
        if self._pending_done is None:
            self._pending_done = asyncio.get_running_loop().create_future()
        self._last_done = self._pending_done
        self._wakeup.set()
        return self._pending_done

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a storage call on the storage thread (in order with the commits:
        the SQLite connection is used from that one thread only)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def barrier(self) -> None:
        """Wait until every write queued so far is durable."""
        if self._last_done is not None and not self._last_done.done():
            await asyncio.shield(self._last_done)
        elif self._last_done is not None and self._last_done.exception() is not None:
            raise StorageError("an earlier commit failed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, promise, done = self._pending, self._pending_range, self._pending_done
            self._pending, self._pending_range, self._pending_done = [], None, None
            if done is None:
                await self._truncate_some()
                continue
            chosen, self._pending_chosen = self._pending_chosen, None
            compacted, self._pending_compacted = self._pending_compacted, None
            try:
                seconds = await loop.run_in_executor(
                    self._executor, self._save, batch, promise, chosen, compacted
                )
            except Exception as exc:  # any failure to commit means: stop voting
                metrics.ACCEPTOR_COMMIT_FAILURES.inc()
                failure = exc if isinstance(exc, StorageError) else StorageError(repr(exc))
                get_logger().critical("commit failed; acceptor stops voting", error=str(failure))
                self.failure = failure
                done.set_exception(failure)
                # Fail whatever queued behind it, too, and accept no more.
                if self._pending_done is not None:
                    self._pending_done.set_exception(failure)
                    self._pending, self._pending_range, self._pending_done = [], None, None
                return
            self.commits += 1
            self.rows += len(batch)
            metrics.ACCEPTOR_COMMIT_SECONDS.observe(seconds)
            metrics.ACCEPTOR_COMMIT_WRITES.observe(len(batch) + (promise is not None))
            done.set_result(None)
            if compacted is not None and compacted > self._truncate_to:
                self._truncate_to = compacted
                metrics.ACCEPTOR_COMPACTED_THROUGH.set(compacted)
            await self._truncate_some()

    async def _truncate_some(self) -> None:
        """One bounded step of deleting the votes below the saved compaction
        point, or of handing free pages back; wakes the loop again while work
        is left. A failure here loses nothing (the votes are below T): it is
        logged and tried again after the next commit."""
        if self._truncate_to <= self._truncated_through and not self._reclaim_due:
            return
        loop = asyncio.get_running_loop()
        try:
            if self._truncate_to > self._truncated_through:
                target = self._truncate_to
                deleted = await loop.run_in_executor(
                    self._executor, self._storage.truncate, target, TRUNCATE_BATCH
                )
                metrics.ACCEPTOR_TRUNCATED.inc(deleted)
                if deleted < TRUNCATE_BATCH:
                    self._truncated_through = target
                self._reclaim_due = True
            else:
                free = await loop.run_in_executor(self._executor, self._storage.reclaim)
                self._reclaim_due = free > 0
                metrics.DISK_BYTES.set(
                    await loop.run_in_executor(self._executor, self._storage.disk_bytes)
                )
        except StorageError as exc:
            get_logger().warning("truncation below the compaction point failed", error=str(exc))
            self._reclaim_due = False
            return
        if self._truncate_to > self._truncated_through or self._reclaim_due:
            self._wakeup.set()

    def _save(
        self,
        batch: list[tuple[int, AcceptorState]],
        promise: RangePromise | None,
        chosen_through: int | None,
        compacted_through: int | None,
    ) -> float:
        """Commit on the storage thread; return how long the commit (and its
        fsync) took there, without the wait for the thread or the event loop."""
        started = time.perf_counter()
        self._storage.save(batch, promise, chosen_through, compacted_through)
        return time.perf_counter() - started
