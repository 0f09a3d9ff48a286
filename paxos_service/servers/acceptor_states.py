"""The acceptor's states through a window of memory: the newest instances
resident, older ones on disk and read back when asked for (a late Accept, a
PrepareRange or catch-up read from far back, Explain), so that memory stays
flat however long the log grows.

Memory always wins over disk: a resident state is the latest, including writes
not yet committed, and an instance with a write not yet committed is never
evicted. Steps run one at a time (:meth:`StateWindow.step`): a step may await
a disk read, but no other step runs meanwhile, and eviction waits until no
step is in progress, so a range read can never miss an instance that moves
from memory to disk under it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
from collections.abc import AsyncIterator

from paxos_service.core.logger import get_logger
from paxos_service.storage.group_commit import GroupCommitter
from roles import AcceptorState

#: Instances an acceptor keeps in memory at most (``--max-resident-instances``).
#: After an eviction the newest half stay.
MAX_RESIDENT = 20_000


def resident_after_eviction(max_resident: int) -> int:
    """How many of the newest instances stay in memory after an eviction."""
    return max(1, max_resident // 2)


class StateWindow:
    """Every instance's acceptor state: the resident ones in :attr:`states`,
    the evicted ones (all at most :attr:`spilled_through`) on disk."""

    def __init__(
        self,
        states: dict[int, AcceptorState],
        committer: GroupCommitter,
        max_resident: int,
        *,
        spilled_through: int = 0,
    ) -> None:
        #: The latest state of each resident instance, including writes not yet
        #: committed. An instance not here is on disk if it is at most
        #: ``spilled_through`` (0: nothing is), else it has no state. Keys
        #: below 1 are single-decree instances (servers/acceptor.py): the
        #: lowest keys are evicted first, so ``spilled_through`` may be one.
        self.states = states
        #: Resident instances, sorted, for range reads.
        self.instances = sorted(states)
        self.spilled_through = spilled_through
        self.committer = committer
        self._max_resident = max_resident
        self._resident_after_eviction = resident_after_eviction(max_resident)
        #: Held for the whole of one step (read, decide, queue the write).
        self._step_lock = asyncio.Lock()
        #: An eviction came due while a step was in progress: run it after.
        self._evict_due = False
        #: Writes queued but not yet committed, per instance: those stay resident.
        self._unsaved: dict[int, int] = {}
        self._logger = get_logger()

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[None]:
        """One step at a time: reads of evicted instances may await the disk,
        but no other step decides meanwhile, and nothing is evicted until the
        step is over (so ``spilled_through`` and memory agree with what it read)."""
        async with self._step_lock:
            yield
        if self._evict_due and not self._step_lock.locked():
            self._evict_due = False
            self._evict()

    async def state_of(self, instance: int) -> AcceptorState:
        """The latest state of ``instance``: from memory, or from disk for an
        instance evicted from memory. Call inside :meth:`step`."""
        state = self.states.get(instance)
        if state is not None or not self.on_disk(instance):
            return state or AcceptorState()
        loaded = await self.committer.run(
            self.committer.storage.load_states,
            instance,
            instance,
        )
        # A write may have landed while we read: memory is always the latest.
        return self.states.get(instance) or loaded.get(instance, AcceptorState())

    def on_disk(self, instance: int) -> bool:
        """Whether ``instance``, if it has state and is not resident, is on disk."""
        return self.spilled_through != 0 and instance <= self.spilled_through

    async def states_from(
        self, first: int, *, accepted_limit: int | None = None
    ) -> dict[int, AcceptorState]:
        """Every instance from ``first`` on that has state, in instance order;
        with ``accepted_limit``, at least the first that many with an accepted
        value (maybe more instances: callers stop where they need). Call inside
        :meth:`step`: no eviction can then move an instance out of memory
        past the ``spilled_through`` the disk read used."""
        found: dict[int, AcceptorState] = {}
        if first <= self.spilled_through:
            found = await self.committer.run(
                functools.partial(
                    self.committer.storage.load_states,
                    first,
                    self.spilled_through,
                    accepted_only=accepted_limit is not None,
                    limit=accepted_limit,
                )
            )
        # After the read, with no await until the caller uses the result:
        # resident states are the latest, on disk or not yet.
        for instance in self.instances[bisect.bisect_left(self.instances, first) :]:
            found[instance] = self.states[instance]
        return dict(sorted(found.items()))

    def write(self, instance: int, state: AcceptorState) -> None:
        """Queue ``state`` for commit; later steps see it at once, and it stays
        resident until committed. Raises StorageError once a commit has failed."""
        saved = self.committer.write(instance, state)
        if instance not in self.states:
            bisect.insort(self.instances, instance)
        self.states[instance] = state
        self._unsaved[instance] = self._unsaved.get(instance, 0) + 1
        saved.add_done_callback(functools.partial(self._saved, instance))

    def forget_through(self, through: int) -> None:
        """Drop the log instances 1..``through`` from memory: they are below
        the compaction point, never read again, and deleted from disk by the
        committer. Those with a write not yet committed stay until evicted
        (the truncation deletes them once it is). Call inside :meth:`step`."""
        low = bisect.bisect_left(self.instances, 1)
        high = bisect.bisect_right(self.instances, through)
        gone = [i for i in self.instances[low:high] if i not in self._unsaved]
        for instance in gone:
            del self.states[instance]
        if gone:
            dropped = set(gone)
            self.instances = [i for i in self.instances if i not in dropped]

    def _saved(self, instance: int, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # never evicted: this acceptor has stopped voting anyway
        left = self._unsaved.get(instance, 0) - 1
        if left > 0:
            self._unsaved[instance] = left
        else:
            self._unsaved.pop(instance, None)
        if len(self.states) > self._max_resident:
            if self._step_lock.locked():
                self._evict_due = True  # a step may be reading: after it
            else:
                self._evict()

    def _evict(self) -> None:
        """Drop the oldest committed instances from memory, keeping the newest
        ``resident_after_eviction`` (and any with a write not yet committed)."""
        excess = len(self.states) - self._resident_after_eviction
        evicted = 0
        for instance in self.instances:
            if evicted >= excess:
                break
            if instance in self._unsaved:
                continue  # its latest state is not on disk yet
            del self.states[instance]
            spilled = self.spilled_through
            self.spilled_through = instance if spilled == 0 else max(spilled, instance)
            evicted += 1
        if evicted:
            self.instances = [i for i in self.instances if i in self.states]
            self._logger.debug(
                "evicted instances from memory", count=evicted, spilled_through=self.spilled_through
            )
