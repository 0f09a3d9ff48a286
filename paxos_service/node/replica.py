"""A learner's replica of the replicated log and the key-value state machine.

Decided instances arrive out of order (Decide from the leader, or catch-up
reads from the acceptors) and are applied strictly in instance order, by one
thread; the entries ready at once share one SQLite transaction. A restarted learner resumes
from the applied instance stored with the state, not from zero.

Catch-up: whenever the next instance to apply is missing for a moment (or
periodically, in case nobody tells us anything), the replica reads accepted
proposals from every acceptor and counts votes per ballot with a fresh
:class:`roles.Learner`; an instance a majority accepted under one ballot is
chosen. If no majority is visible yet (acceptors moved on to re-proposals
under different ballots), the current leader's retransmissions will make one.

Failure. If applying fails (a storage error, a bug), the replica stops for
good, loudly: it logs the reason (critical), counts it in
``paxos_learner_apply_failures_total``, sets :attr:`Replica.failure`, wakes
every request waiting for an instance (they raise :class:`ReplicaFailed`),
ends every watch, and calls :attr:`Replica.on_failure` (the server turns its
health to NOT_SERVING there). Like etcd's raft after a storage error, it never
guesses: a restart re-opens the file and resumes from the last committed
entry. Either background task ending for any reason but :meth:`Replica.stop`
is such a failure too; neither can die silently.

Snapshots and compaction (roles/compaction.py). Once the log applied since
the last snapshot exceeds ``retain_log_bytes``, the replica writes a snapshot
of its store (read over a connection of its own, so applying goes on) to a
checksummed file beside it, and reports the snapshot's index to the leader in
every Decide answer. The leader derives the compaction point T from a
majority of those, and the acceptors delete their votes through T. A replica
that needs instances at or below T (new, wiped, or down for a long time) gets
OUT_OF_RANGE from the acceptors' range read, fetches a snapshot at or above T
from another learner (FetchSnapshot, in chunks), checks it, installs it, and
catches up the rest from the acceptors.

Odd entries do not stop it: every value is read by :func:`log_entry.decode`,
whose one rule every replica applies alike (an opaque or unparsable value, and
an entry marked no-op whatever it carries, is a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from paxos_service.client.grpc_status import trailing
from paxos_service.core import clock, log_entry, metrics
from paxos_service.core.config import DEFAULT_RETAIN_LOG_BYTES
from paxos_service.core.logger import get_logger
from paxos_service.kv import snapshot_file
from paxos_service.kv.snapshot import InvalidSnapshot
from paxos_service.kv.snapshot_file import SnapshotInfo
from paxos_service.kv.state_machine import KvStateMachine
from paxos_service.node.snapshots import Snapshots
from paxos_service.transport import wire
from paxos_service.transport.metadata import COMPACTED_THROUGH_METADATA
from paxos_service.transport.peers import AcceptorPeer, describe_rpc_error
from paxos_service.v1 import paxos_pb2 as pb
from roles import Accepted, Learner, ProtocolError

#: How long the next instance may be missing before we go and look for it.
CATCH_UP_DELAY = 0.2
#: How often to look for decisions even when nothing seems missing.
POLL_INTERVAL = 1.0
#: How long an instance below a decided one may stay unlearnable from the
#: acceptors before the learner runs Paxos on it (see Replica._repair).
REPAIR_AFTER = 1.0
CATCH_UP_BATCH = 500
#: Decided entries applied in one state machine transaction at most.
APPLY_BATCH = 64
#: Events a watcher may have queued before it is cut off as too slow.
WATCH_QUEUE_LIMIT = 10_000
#: How often disk use is measured against the space quota.
QUOTA_CHECK_INTERVAL = 1.0


class ReplicaFailed(Exception):
    """The replica stopped applying the log; ``str(exc)`` says why."""


@dataclass(eq=False)
class Watcher:
    key: str
    prefix: bool
    queue: asyncio.Queue[tuple[int, pb.WatchEvent] | None] = field(
        default_factory=lambda: asyncio.Queue(WATCH_QUEUE_LIMIT)
    )
    overflowed: bool = False

    def matches(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key


@dataclass(frozen=True)
class Bounds:
    """What keeps a replica's disk bounded (README, "A bounded log")."""

    #: Watch history kept: the last this many revisions (0: all of it).
    retain_revisions: int = 0
    #: Snapshot once this much log was applied since the last snapshot.
    retain_log_bytes: int = DEFAULT_RETAIN_LOG_BYTES
    #: Refuse writes that add data above this much store data (0: never).
    quota_bytes: int = 0


class Replica:
    def __init__(
        self,
        machine: KvStateMachine,
        acceptors: list[AcceptorPeer],
        executor: Executor,
        *,
        bounds: Bounds | None = None,
        snapshot_path: Path | None = None,
        snapshot: SnapshotInfo | None = None,
        snapshot_sources: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.machine = machine
        bounds = bounds or Bounds()
        #: Writes that add data are refused while disk use is above this (0: never).
        self.quota_bytes = bounds.quota_bytes
        self.over_quota = False
        #: Called with the new state when ``over_quota`` changes (health wiring).
        self.on_quota: Callable[[bool], Awaitable[None]] | None = None
        #: This replica's snapshots, and the other learners it fetches one from.
        self.snapshots = Snapshots(
            machine, snapshot_path, snapshot, bounds.retain_log_bytes, snapshot_sources
        )
        #: Held while applying a run of entries or installing a snapshot.
        self._apply_lock = asyncio.Lock()
        #: The highest compaction point an acceptor reported to catch-up.
        self.compacted_through = 0
        #: Watch history kept: the last this many revisions (0: all of it).
        self.retain_revisions = bounds.retain_revisions
        self.acceptors = acceptors
        self._executor = executor
        self.applied_instance = machine.applied_instance
        #: The highest instance known to be decided (from Decide or catch-up).
        self.highest_decided = self.applied_instance
        self._pending: dict[int, bytes] = {}
        self._waiters: dict[tuple[int, int], asyncio.Future[pb.CommandResult]] = {}
        self._applied_changed = asyncio.Condition()
        self._wakeup = asyncio.Event()
        self._watchers: set[Watcher] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        #: Why this replica stopped applying the log, or None while it works.
        self.failure: str | None = None
        #: Called once, with the reason, when the replica fails (health wiring).
        self.on_failure: Callable[[str], Awaitable[None]] | None = None
        self._failing: set[asyncio.Task[None]] = set()
        #: Runs a Paxos round on an instance through a proposer and returns
        #: the value chosen there (see :meth:`_repair`); None: no repairs.
        self.repair: Callable[[int], Awaitable[bytes | None]] | None = None
        self._logger = get_logger()
        metrics.LEARNER_APPLIED.set(self.applied_instance)
        metrics.QUOTA_BYTES.set(self.quota_bytes)
        self._note_progress()

    # Lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._apply_loop(), name="replica-apply"),
            asyncio.create_task(self._catch_up_loop(), name="replica-catch-up"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    async def stop(self) -> None:
        self._stopping = True
        await self.snapshots.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._failing, return_exceptions=True)
        for watcher in list(self._watchers):
            # Tell live watch streams to end (a full queue ends on overflow anyway).
            with contextlib.suppress(asyncio.QueueFull):
                watcher.queue.put_nowait(None)

    # Inputs --------------------------------------------------------------

    def on_decided(self, instance: int, value: bytes, *, found: bool = False) -> None:
        """``value`` is chosen for ``instance``: told by a proposer, or
        ``found`` by counting the acceptors' votes."""
        if instance <= self.applied_instance or instance in self._pending:
            return
        self._pending[instance] = value
        (metrics.LEARNED_FROM_ACCEPTORS if found else metrics.LEARNED_FROM_DECIDE).inc()
        if instance > self.highest_decided:
            self.highest_decided = instance
            self._note_progress()
        self._wakeup.set()

    def expect(self, client_id: int, sequence: int) -> asyncio.Future[pb.CommandResult]:
        """A future for the result of request ``(client_id, sequence)`` when applied."""
        key = (client_id, sequence)
        future = self._waiters.get(key)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._waiters[key] = future
        return future

    def forget(self, client_id: int, sequence: int) -> None:
        self._waiters.pop((client_id, sequence), None)

    async def wait_applied(self, instance: int) -> None:
        """Return once every instance up to ``instance`` is applied. Raises
        :class:`ReplicaFailed` if the replica fails before that."""
        async with self._applied_changed:
            await self._applied_changed.wait_for(
                lambda: self.applied_instance >= instance or self.failure is not None
            )
        if self.applied_instance < instance:
            raise ReplicaFailed(self.failure)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a state machine call on its thread (all calls are serialised)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def subscribe(self, key: str, prefix: bool) -> Watcher:
        watcher = Watcher(key, prefix)
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    @property
    def lag(self) -> int:
        return max(0, self.highest_decided - self.applied_instance)

    def _note_progress(self) -> None:
        metrics.LEARNER_DECIDED.set(self.highest_decided)
        metrics.LEARNER_LAG.set(self.lag)

    # Applying -------------------------------------------------------------

    async def fail(self, reason: str) -> None:
        """Stop for good (see the module docstring). Idempotent."""
        if self.failure is not None:
            return
        self.failure = reason
        metrics.LEARNER_APPLY_FAILURES.inc()
        self._logger.critical(
            "learner stopped applying the log; restart it",
            error=reason,
            applied_instance=self.applied_instance,
        )
        async with self._applied_changed:
            self._applied_changed.notify_all()
        for watcher in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                watcher.queue.put_nowait(None)
        if self.on_failure is not None:
            try:
                await self.on_failure(reason)
            except Exception as exc:  # the failure itself is already recorded
                self._logger.error("on_failure callback failed", error=repr(exc))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """No background task ends silently: any end but stop() is a failure."""
        if task.cancelled() and self._stopping:
            return
        if task.cancelled():
            reason = f"{task.get_name()} was cancelled"
        elif (exc := task.exception()) is not None:
            reason = f"{task.get_name()} crashed: {exc!r}"
        else:
            reason = f"{task.get_name()} ended"
        if self.failure is None and not self._stopping:
            failing = asyncio.get_running_loop().create_task(self.fail(reason))
            self._failing.add(failing)
            failing.add_done_callback(self._failing.discard)
        elif self.failure is None:
            self._logger.critical("replica task ended while stopping", error=reason)

    async def _apply_loop(self) -> None:
        try:
            await self._apply_forever()
        except Exception as exc:
            self._logger.exception("applying the log failed")
            await self.fail(f"applying instance {self.applied_instance + 1} failed: {exc!r}")

    async def _apply_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            async with self._apply_lock:
                await self._apply_ready()
            if not self._stopping:
                self.snapshots.maybe_take()

    async def _apply_ready(self) -> None:
        """Apply every decided entry that is next in line, in runs."""
        while self.applied_instance + 1 in self._pending:
            first = self.applied_instance + 1
            # Every consecutive decided entry goes in one transaction: one
            # commit for the run instead of one per entry. They stay
            # pending until applied, so that a decision arriving meanwhile
            # is not taken for a new one (and kept forever).
            entries: list[pb.LogEntry] = []
            while first + len(entries) in self._pending and len(entries) < APPLY_BATCH:
                instance = first + len(entries)
                entry = log_entry.decode(self._pending[instance])
                if entry is None:
                    self._logger.info("skipping an opaque (hand-proposed) value", instance=instance)
                    entry = pb.LogEntry(noop=True)
                entries.append(entry)
            started = time.perf_counter()
            applied = await self.run(self.machine.apply_entries, first, entries)
            metrics.LEARNER_APPLY_SECONDS.observe(time.perf_counter() - started)
            for entry, result in zip(entries, applied, strict=True):
                self._deliver(entry, result)
                self.snapshots.log_bytes += len(self._pending.pop(result.instance))
            self.applied_instance = applied[-1].instance
            metrics.LEARNER_APPLIED.set(self.applied_instance)
            metrics.LEARNER_LAG.set(self.lag)
            await self._compact_history()
            async with self._applied_changed:
                self._applied_changed.notify_all()

    async def _compact_history(self) -> None:
        """Keep the last ``retain_revisions`` revisions of watch history: drop
        the rest once a tenth more (at least 1) has piled up, so that the
        delete runs now and then, not after every entry. A local decision:
        a learner's history serves its own watchers."""
        keep = self.retain_revisions
        machine = self.machine
        if keep <= 0 or machine.revision - machine.compacted_revision < keep + max(1, keep // 10):
            return
        started = time.perf_counter()
        compacted = await self.run(machine.compact, keep)
        await self.run(machine.reclaim)  # the deleted history's pages go back
        self._logger.info(
            "compacted watch history",
            compacted_revision=compacted,
            seconds=round(time.perf_counter() - started, 4),
        )

    # Snapshots ------------------------------------------------------------

    @property
    def snapshot_index(self) -> int:
        """Every instance <= this is in this replica's durable snapshot (0: none)."""
        return self.snapshots.index

    def disk_bytes(self) -> int:
        """Bytes this replica's store and snapshot take on disk."""
        return self.snapshots.disk_bytes()

    async def install_from_peers(self, needed: int) -> bool:
        """Fetch a snapshot holding every instance <= ``needed`` from another
        learner, and install it. Returns whether one was installed."""
        fetched = await self.snapshots.fetch(needed)
        if fetched is None:
            return False
        address, info, data = fetched
        try:
            await self.install(info, data)
        except InvalidSnapshot as exc:
            self._logger.warning("snapshot refused", source=address, error=str(exc))
            return False
        self._logger.info(
            "snapshot installed", source=address, applied_instance=info.applied_instance
        )
        return True

    async def install(self, info: SnapshotInfo, data: bytes) -> None:
        """Replace the store with the snapshot ``data`` (checked against
        ``info``), keep it as this replica's own snapshot, and go on from its
        applied instance. Watchers are cut off with a resume revision: their
        history jumped. Raises :class:`InvalidSnapshot` and changes nothing
        for bytes that are not a usable snapshot."""
        snapshot_file.verify(info, data)
        async with self._apply_lock:
            if info.applied_instance <= self.applied_instance:
                return  # applied past it meanwhile: nothing to gain
            await self.run(self.machine.restore, data)
            if self.machine.applied_instance != info.applied_instance:
                # A valid store, with a header that lied: go on from the store.
                self._logger.warning(
                    "snapshot header and contents disagree; going on from its contents",
                    header=info.applied_instance,
                    contents=self.machine.applied_instance,
                )
            elif self.snapshots.path is not None:
                written = await self.run(
                    snapshot_file.write, self.snapshots.path, data, info.applied_instance
                )
                self.snapshots.note(written)
            self.applied_instance = self.machine.applied_instance
            self.highest_decided = max(self.highest_decided, self.applied_instance)
            for instance in [i for i in self._pending if i <= self.applied_instance]:
                del self._pending[instance]
            self.snapshots.log_bytes = 0
            metrics.SNAPSHOT_INSTALLS.inc()
            metrics.LEARNER_APPLIED.set(self.applied_instance)
            self._note_progress()
            for watcher in list(self._watchers):
                watcher.overflowed = True  # ends with a resume revision
                with contextlib.suppress(asyncio.QueueFull):
                    watcher.queue.put_nowait((0, pb.WatchEvent()))  # wakes it
            async with self._applied_changed:
                self._applied_changed.notify_all()
        self._wakeup.set()

    def _deliver(self, entry: pb.LogEntry, applied: Any) -> None:
        for command, result in zip(entry.commands, applied.results, strict=True):
            future = self._waiters.pop((command.client_id, command.sequence), None)
            if future is not None and not future.done():
                future.set_result(result)
        for revision, event in applied.events:
            for watcher in list(self._watchers):
                if watcher.overflowed or not watcher.matches(event.kv.key):
                    continue
                try:
                    watcher.queue.put_nowait((revision, event))
                except asyncio.QueueFull:
                    watcher.overflowed = True

    # Catching up ----------------------------------------------------------

    async def check_quota(self) -> None:
        """Measure disk use against the quota; on a change, say so (a log
        line, the metric, and ``on_quota``, which the server turns into the
        health of writes)."""
        metrics.DISK_BYTES.set(self.disk_bytes())
        if self.quota_bytes <= 0 or self.failure is not None:
            return
        used = await self.run(self.machine.used_bytes)
        over = used > self.quota_bytes
        if over:
            # Free pages (deleted keys, compacted history) go back to the disk.
            await self.run(self.machine.reclaim)
        if over == self.over_quota:
            return
        self.over_quota = over
        metrics.QUOTA_EXCEEDED.set(int(over))
        if over:
            self._logger.error(
                "space quota exceeded: puts and compare-and-swaps are refused until "
                "deletes and compaction bring the store's data back under it",
                disk_bytes=used,
                quota_bytes=self.quota_bytes,
            )
        else:
            self._logger.info("back under the space quota", disk_bytes=used)
        if self.on_quota is not None:
            await self.on_quota(over)

    async def _catch_up_loop(self) -> None:
        missing_since: float | None = None
        last_poll = 0.0
        last_quota_check = 0.0
        while True:
            await asyncio.sleep(CATCH_UP_DELAY / 2)
            now = clock.now()
            if now - last_quota_check >= QUOTA_CHECK_INTERVAL:
                last_quota_check = now
                await self.check_quota()
            stuck = self.highest_decided > self.applied_instance and (
                self.applied_instance + 1 not in self._pending
            )
            if stuck and missing_since is None:
                missing_since = now
            if not stuck:
                missing_since = None
            due = missing_since is not None and now - missing_since >= CATCH_UP_DELAY
            if due or now - last_poll >= POLL_INTERVAL:
                last_poll = now
                try:
                    found = await self.catch_up()
                    if (
                        not found
                        and missing_since is not None
                        and now - missing_since >= REPAIR_AFTER
                    ):
                        found = await self._repair(self.applied_instance + 1)
                except Exception as exc:  # keep the loop alive, say why
                    self._logger.warning("catch-up failed", error=repr(exc))
                    continue
                if found:
                    missing_since = None

    async def _repair(self, instance: int) -> int:
        """Learn ``instance`` by running Paxos on it: a later instance is
        decided, yet no majority of acceptors holds one ballot's value here
        (a new leader re-proposed it to a minority, then learned from a peer
        that it was chosen, and never touched it again), so reading the
        acceptors can never settle it. A Propose of the no-op through a
        proposer does: its phase 1 finds the chosen value, if any, and phase 2
        gets it accepted by a majority under one ballot; if nothing was
        chosen, the no-op fills the hole. Either way the answer is the value
        chosen for ``instance``. Returns 1 if it learned it."""
        if self.repair is None or instance <= self.applied_instance:
            return 0
        if instance <= self.compacted_through:
            return 0  # chosen, in the snapshots: a Propose there is refused
        value = await self.repair(instance)
        if value is None:
            return 0
        self._logger.info("repaired an instance no majority could show", instance=instance)
        self.on_decided(instance, value, found=True)
        return 1

    async def catch_up(self) -> int:
        """Read accepted proposals after the applied instance from every
        acceptor and feed every instance a majority chose. Returns how many."""
        start = self.applied_instance + 1
        replies = await asyncio.gather(*(self._read_range(p, start) for p in self.acceptors))
        compacted = max((through for _, through in replies), default=0)
        if compacted >= start:
            # What this replica needs next is in the learners' snapshots only.
            self.compacted_through = max(self.compacted_through, compacted)
            return int(await self.install_from_peers(compacted))
        tally = Learner(frozenset(p.acceptor_id for p in self.acceptors))
        found = 0
        for accepted_list, _ in replies:
            for accepted in accepted_list:
                try:
                    learned = tally.on_accepted(accepted)
                except ProtocolError as exc:
                    self._logger.error("bad vote from acceptor", error=str(exc))
                    continue
                if learned is not None and learned.instance not in self._pending:
                    self.on_decided(learned.instance, learned.value, found=True)
                    found += 1
        if found:
            self._logger.info("caught up from acceptors", found=found, from_instance=start)
        return found

    async def _read_range(self, peer: AcceptorPeer, start: int) -> tuple[list[Accepted], int]:
        """The votes ``peer`` holds from ``start`` on, and its compaction
        point if ``start`` lies at or below it (else 0)."""
        try:
            response = await peer.stub.GetAcceptedRange(
                pb.GetAcceptedRangeRequest(from_instance=start, limit=CATCH_UP_BATCH), timeout=2.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                return [], _compacted_through(exc)
            self._logger.debug(
                "acceptor range read failed", error=describe_rpc_error(peer.address, exc)
            )
            return [], 0
        out = []
        for item in response.accepted:
            try:
                accepted = wire.accepted_from_pb(item)
            except (wire.WireError, ValueError):
                continue
            if accepted.acceptor_id == peer.acceptor_id and accepted.instance >= start:
                out.append(accepted)
        return out, 0


def _compacted_through(exc: grpc.aio.AioRpcError) -> int:
    """The compaction point an acceptor's OUT_OF_RANGE carries (0: none)."""
    value = trailing(exc, COMPACTED_THROUGH_METADATA)
    with contextlib.suppress(TypeError, ValueError):
        return max(0, int(value))  # type: ignore[arg-type]
    return 0
