"""The acceptor's gRPC server: proto in, :class:`roles.Acceptor` step, durable
commit, proto out.

Durability: a step that changes state is queued for the :class:`GroupCommitter`
and its reply is sent only after the commit that contains it has returned.
A reply that changes nothing (a Reject, a duplicate Accept, a read) still
waits for every write queued before it, because it may describe that write.
Commits happen strictly in queue order on one thread, so "my commit is done"
implies "every earlier write is done".

If a commit fails, the acceptor stops voting for good: every later request gets
UNAVAILABLE and health turns NOT_SERVING. It never replies without persisting.

Atomic steps: every request's read, decision and write happen as one step,
one step at a time (:meth:`AcceptorServicer._atomic`). A step may await a disk
read of an instance evicted from memory, but no other step runs meanwhile, and
eviction waits until no step is in progress, so a range read can never miss an
instance that moves from memory to disk under it, and a decision is never
taken against a promise that changed while its state was being read. The
waits for durability happen after the step, outside it.

Identity safety (:mod:`paxos_service.identity`): an acceptor votes only while
its :class:`~paxos_service.identity.IdentityGuard` says so. A new database
joins first, one whose id voted before with another database never votes, and
a rebuilt one never votes on the instances its lost self may have voted on.
Otherwise votes get UNAVAILABLE saying why, and the readiness health name is
NOT_SERVING. ``Introduce`` and ``GetRecoveryInfo`` are answered either way.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
import structlog

from paxos_service import clock, metrics, operator_server, runtime, wire
from paxos_service.config import AcceptorConfig
from paxos_service.identity import STANDING_TO_PB, IdentityGuard
from paxos_service.log import get_logger
from paxos_service.server import RoleServer, bind_request, start_server
from paxos_service.storage import AcceptorFile, AcceptorStorage, StorageError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import (
    Accepted,
    Acceptor,
    AcceptorState,
    NotVoting,
    Promise,
    PromiseRange,
    ProtocolError,
    RangePromise,
    Reject,
)
from roles.recovery import summarize

T = TypeVar("T")

SERVICE_NAME = "paxos_service.v1.AcceptorService"
#: Most entries one GetAcceptedRange returns.
_RANGE_LIMIT = 1000


#: Instances an acceptor keeps in memory at most (``--max-resident-instances``).
#: Older ones stay on disk and are read when asked for (a late Accept, a
#: PrepareRange or catch-up read from far back, Explain), so memory stays flat
#: however long the log grows. After an eviction the newest half stay.
MAX_RESIDENT = 20_000


def resident_after_eviction(max_resident: int) -> int:
    """How many of the newest instances stay in memory after an eviction."""
    return max(1, max_resident // 2)


class GroupCommitter:
    """Writes queued acceptor states in batches: every write that arrives while
    a commit is running shares the next commit (and its fsync)."""

    def __init__(self, storage: AcceptorStorage, executor: Executor) -> None:
        self._storage = storage
        self._executor = executor
        self._pending: list[tuple[int, AcceptorState]] = []
        self._pending_range: RangePromise | None = None
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
                continue
            try:
                seconds = await loop.run_in_executor(self._executor, self._save, batch, promise)
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

    def _save(self, batch: list[tuple[int, AcceptorState]], promise: RangePromise | None) -> float:
        """Commit on the storage thread; return how long the commit (and its
        fsync) took there, without the wait for the thread or the event loop."""
        started = time.perf_counter()
        self._storage.save(batch, promise)
        return time.perf_counter() - started


class AcceptorServicer(pb_grpc.AcceptorServiceServicer):
    def __init__(
        self,
        config: AcceptorConfig,
        states: dict[int, AcceptorState],
        committer: GroupCommitter,
        range_promise: RangePromise | None = None,
        identity: IdentityGuard | None = None,
        no_vote_through: int = 0,
        *,
        spilled_through: int = 0,
        max_resident: int | None = None,
    ) -> None:
        self.config = config
        self.acceptor = Acceptor(config.node_id, no_vote_through)
        #: Whether this acceptor may vote at all; None: always (tests).
        self.identity = identity
        #: The latest state of each resident instance, including writes not yet
        #: committed. Replies never leave before the writes they depend on are
        #: committed. An instance not here is on disk if it is at most
        #: ``spilled_through``, else it has no state. Memory always wins over disk.
        self.states = states
        #: Resident instances, sorted, for range reads.
        self._instances = sorted(states)
        self.spilled_through = spilled_through
        self._max_resident = max_resident or config.max_resident_instances
        self._resident_after_eviction = resident_after_eviction(self._max_resident)
        #: Held for the whole of one step (read, decide, queue the write).
        self._step_lock = asyncio.Lock()
        #: An eviction came due while a step was in progress: run it after.
        self._evict_due = False
        #: Writes queued but not yet committed, per instance: those stay resident.
        self._unsaved: dict[int, int] = {}
        #: The Multi-Paxos promise for every instance >= its from_instance.
        self.range_promise = range_promise or RangePromise()
        self.committer = committer
        self.role_server: RoleServer | None = None
        #: Pre-vote: (proposer id, monotonic time) of the last Accept accepted here.
        self.last_contact: tuple[int, float] | None = None
        self._log = get_logger()

    async def Prepare(
        self, request: pb.PrepareRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PrepareResponse:
        msg = await self._parse(context, lambda: wire.prepare_from_pb(request.prepare))
        bind_request(context, instance=msg.instance, ballot=str(msg.ballot))
        step = await self._step(
            context, lambda s, floor: self.acceptor.on_prepare(s, msg, floor), msg.instance
        )
        if isinstance(step, Promise):
            metrics.PROMISED_PREPARE.inc()
            return pb.PrepareResponse(promise=wire.promise_to_pb(step))
        assert isinstance(step, Reject)
        metrics.REJECTED_PREPARE.inc()
        return pb.PrepareResponse(reject=wire.reject_to_pb(step))

    async def Accept(
        self, request: pb.AcceptRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AcceptResponse:
        max_bytes = self.config.max_value_bytes
        msg = await self._parse(context, lambda: wire.accept_from_pb(request.accept, max_bytes))
        bind_request(context, instance=msg.instance, ballot=str(msg.ballot))
        step = await self._step(
            context, lambda s, floor: self.acceptor.on_accept(s, msg, floor), msg.instance
        )
        if isinstance(step, Accepted):
            self.last_contact = (msg.ballot.proposer_id, clock.now())
            metrics.ACCEPTOR_ACCEPTS.inc()
            return pb.AcceptResponse(accepted=wire.accepted_to_pb(step))
        assert isinstance(step, Reject)
        metrics.REJECTED_ACCEPT.inc()
        return pb.AcceptResponse(reject=wire.reject_to_pb(step))

    async def GetAccepted(
        self, request: pb.GetAcceptedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetAcceptedResponse:
        instance = await self._parse(context, lambda: wire.check_instance(request.instance))
        async with self._atomic():
            await self._check_voting(context)
            state = await self.state_of(instance)
        await self._wait_durable(context)
        response = pb.GetAcceptedResponse(promised_ballot=wire.ballot_to_pb(state.promised_ballot))
        if state.accepted_value is not None:
            response.accepted.CopyFrom(
                wire.accepted_to_pb(
                    Accepted(
                        instance, state.accepted_ballot, self.config.node_id, state.accepted_value
                    )
                )
            )
        return response

    async def PrepareRange(
        self, request: pb.PrepareRangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PrepareRangeResponse:
        msg = await self._parse(context, lambda: wire.prepare_range_from_pb(request.prepare))
        bind_request(context, instance=msg.from_instance, ballot=str(msg.ballot))
        async with self._atomic():
            await self._check_voting(context)
            later = await self.states_from(msg.from_instance)
            # A commit may have failed during the read: check again, then no
            # await until the promise is queued.
            await self._check_voting(context)
            try:
                step = self.acceptor.on_prepare_range(self.range_promise, later, msg)
            except ProtocolError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except NotVoting as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            if step.persist:
                self.range_promise = step.range_promise
                self.committer.write_range_promise(step.range_promise)
        await self._wait_durable(context)
        if isinstance(step.reply, PromiseRange):
            metrics.PROMISED_PREPARE_RANGE.inc()
            self._log.info("promised range", accepted=len(step.reply.accepted))
            return pb.PrepareRangeResponse(promise=wire.promise_range_to_pb(step.reply))
        metrics.REJECTED_PREPARE_RANGE.inc()
        return pb.PrepareRangeResponse(reject=wire.reject_to_pb(step.reply))

    async def GetAcceptedRange(
        self, request: pb.GetAcceptedRangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetAcceptedRangeResponse:
        start_instance = await self._parse(
            context, lambda: wire.check_instance(request.from_instance)
        )
        limit = min(request.limit or _RANGE_LIMIT, _RANGE_LIMIT)
        async with self._atomic():
            await self._check_voting(context)
            found = await self.states_from(start_instance, accepted_limit=limit)
        entries = []
        for instance, state in found.items():
            if state.accepted_value is None:
                continue
            entries.append(
                Accepted(instance, state.accepted_ballot, self.config.node_id, state.accepted_value)
            )
            if len(entries) >= limit:
                break
        await self._wait_durable(context)
        return pb.GetAcceptedRangeResponse(accepted=[wire.accepted_to_pb(a) for a in entries])

    async def close(self) -> None:
        """Stop the background work (introductions, commits)."""
        if self.identity is not None:
            await self.identity.stop()
        await self.committer.stop()

    # Identity safety ----------------------------------------------------

    async def Introduce(
        self, request: pb.IntroduceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.IntroduceResponse:
        await self._check_peer_request(context, request.cluster_id, request.acceptor_id)
        if not request.incarnation:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "incarnation is required")
        assert self.identity is not None
        try:
            known = await self.identity.record_peer(
                request.acceptor_id, request.incarnation, request.replace
            )
        except StorageError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"acceptor {self.config.node_id} could not record the introduction ({exc})",
            )
        return pb.IntroduceResponse(
            acceptor_id=self.config.node_id,
            cluster_id=self.config.cluster_id,
            incarnation=self.identity.incarnation,
            status=self.status(),
            known_incarnation=known,
            has_state=bool(self.states)
            or self.spilled_through > 0
            or not self.range_promise.ballot.is_zero,
        )

    async def GetRecoveryInfo(
        self, request: pb.GetRecoveryInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRecoveryInfoResponse:
        await self._check_peer_request(context, request.cluster_id, None)
        assert self.identity is not None
        async with self._atomic():
            promised, highest_accepted = summarize(self.states, self.range_promise)
            if self.spilled_through:
                on_disk = await self.committer.run(
                    self.committer.storage.summarize_through,
                    self.spilled_through,
                )
                promised, highest_accepted = (
                    max(promised, on_disk[0]),
                    max(highest_accepted, on_disk[1]),
                )
            status = self.status()
        # It may describe writes still being committed.
        await self._wait_durable(context)
        return pb.GetRecoveryInfoResponse(
            acceptor_id=self.config.node_id,
            incarnation=self.identity.incarnation,
            status=status,
            promised_ballot=wire.ballot_to_pb(promised),
            highest_accepted_instance=highest_accepted,
            no_vote_through=self.acceptor.no_vote_through,
            known_incarnation=self.identity.members.get(request.acceptor_id, ""),
        )

    async def GetLeaderContact(
        self, request: pb.GetLeaderContactRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetLeaderContactResponse:
        """Pre-vote (roles/leader.py): memory only, so a restarted acceptor
        grants at once; that only lets a campaign start, never decides one."""
        contact = self.last_contact
        if contact is None:
            return pb.GetLeaderContactResponse(acceptor_id=self.config.node_id)
        return pb.GetLeaderContactResponse(
            acceptor_id=self.config.node_id,
            has_contact=True,
            proposer_id=contact[0],
            seconds_since=max(0.0, clock.now() - contact[1]),
        )

    def status(self) -> pb.AcceptorStatus.ValueType:
        if self.committer.failure is not None:
            return pb.ACCEPTOR_STATUS_STORAGE_FAILED
        if self.identity is None:
            return pb.ACCEPTOR_STATUS_VOTING
        return STANDING_TO_PB[self.identity.standing]

    async def _check_peer_request(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        cluster_id: str,
        acceptor_id: int | None,
    ) -> None:
        if self.identity is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "this acceptor does not track identities"
            )
        if cluster_id != self.config.cluster_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"acceptor {self.config.node_id} belongs to cluster {self.config.cluster_id!r}, "
                f"not {cluster_id!r}: check --cluster-id and --acceptors",
            )
        if acceptor_id is not None and acceptor_id == self.config.node_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this is acceptor {acceptor_id} itself: two acceptors run with --id "
                f"{acceptor_id}, or --acceptors is wrong",
            )

    # Internals ----------------------------------------------------------

    # Resident instances and the ones on disk ----------------------------------

    @contextlib.asynccontextmanager
    async def _atomic(self) -> AsyncIterator[None]:
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
        instance evicted from memory. Call inside :meth:`_atomic`."""
        state = self.states.get(instance)
        if state is not None or instance > self.spilled_through:
            return state or AcceptorState()
        loaded = await self.committer.run(
            self.committer.storage.load_states,
            instance,
            instance,
        )
        # A write may have landed while we read: memory is always the latest.
        return self.states.get(instance) or loaded.get(instance, AcceptorState())

    async def states_from(
        self, first: int, *, accepted_limit: int | None = None
    ) -> dict[int, AcceptorState]:
        """Every instance from ``first`` on that has state, in instance order;
        with ``accepted_limit``, at least the first that many with an accepted
        value (maybe more instances: callers stop where they need). Call inside
        :meth:`_atomic`: no eviction can then move an instance out of memory
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
        for instance in self._instances[bisect.bisect_left(self._instances, first) :]:
            found[instance] = self.states[instance]
        return dict(sorted(found.items()))

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
        for instance in self._instances:
            if evicted >= excess:
                break
            if instance in self._unsaved:
                continue  # its latest state is not on disk yet
            del self.states[instance]
            self.spilled_through = max(self.spilled_through, instance)
            evicted += 1
        if evicted:
            self._instances = [i for i in self._instances if i in self.states]
            self._log.debug(
                "evicted instances from memory", count=evicted, spilled_through=self.spilled_through
            )

    async def _parse(self, context: grpc.aio.ServicerContext[Any, Any], parse: Any) -> Any:
        try:
            return parse()
        except (wire.WireError, ProtocolError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _step(
        self, context: grpc.aio.ServicerContext[Any, Any], step_fn: Any, instance: int
    ) -> Promise | Accepted | Reject:
        """Read ``instance``, decide with ``step_fn(state, range_floor)`` and
        queue the new state, as one atomic step; reply once it is durable."""
        async with self._atomic():
            await self._check_voting(context)
            state = await self.state_of(instance)
            # A commit may have failed during the read: check again. From here
            # to the write below there is no await, so the decision sees the
            # latest state and the latest range promise.
            await self._check_voting(context)
            try:
                step = step_fn(state, self.range_promise.floor(instance))
            except ProtocolError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except NotVoting as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            if step.persist:
                # Later steps see this state at once; nobody hears of it before it is durable.
                saved = self.committer.write(instance, step.state)
                if instance not in self.states:
                    bisect.insort(self._instances, instance)
                self.states[instance] = step.state
                self._unsaved[instance] = self._unsaved.get(instance, 0) + 1
                saved.add_done_callback(functools.partial(self._saved, instance))
        await self._wait_durable(context)
        self._log.debug("replied", reply=type(step.reply).__name__, persisted=step.persist)
        reply: Promise | Accepted | Reject = step.reply
        return reply

    async def _check_voting(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.committer.failure is not None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"acceptor {self.config.node_id} stopped voting after a storage failure "
                f"({self.committer.failure}); restart it once storage is healthy",
            )
        if self.identity is not None and not self.identity.voting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.identity.refusal())

    async def _wait_durable(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            await self.committer.barrier()
        except StorageError as exc:
            self._log.error("storage failed; acceptor stops voting", error=str(exc))
            if self.role_server is not None:
                await self.role_server.set_serving(False)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"acceptor {self.config.node_id} could not persist its state ({exc}); "
                "it has stopped voting",
            )


async def start_acceptor(
    config: AcceptorConfig, storage: AcceptorFile, acceptors: Sequence[str] = ()
) -> tuple[RoleServer, AcceptorServicer]:
    """Load all state from ``storage`` (already opened and checked) and serve.

    ``acceptors`` lists every acceptor's address in id order, this one's
    included; it turns the identity checks on (see :mod:`paxos_service.identity`).
    """
    executor = runtime.storage_executor("acceptor-storage")
    loop = asyncio.get_running_loop()
    states, spilled_through = await loop.run_in_executor(
        executor,
        storage.load_newest,
        resident_after_eviction(config.max_resident_instances),
    )
    range_promise = await loop.run_in_executor(executor, storage.load_range_promise)
    committer = GroupCommitter(storage, executor)
    committer.start()
    identity = IdentityGuard(
        acceptor_id=config.node_id,
        cluster_id=config.cluster_id,
        db_path=config.db_path,
        storage=storage,
        run_storage=committer.run,
        acceptors=list(acceptors),
        tls=config.tls,
    )
    try:
        await identity.start()
    except BaseException:
        await committer.stop()
        raise
    servicer = AcceptorServicer(
        config,
        states,
        committer,
        range_promise,
        identity,
        storage.no_vote_through,
        spilled_through=spilled_through,
    )

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_AcceptorServiceServicer_to_server(servicer, server)
        operator_server.add_to_server(operator_server.AcceptorView(servicer), server)

    try:
        role = await start_server(
            config,
            SERVICE_NAME,
            register,
            serving=identity.voting,
            extra_services=(operator_server.SERVICE_NAME,),
        )
    except BaseException:
        await committer.stop()
        await identity.stop()
        raise
    servicer.role_server = role

    async def voting_changed(voting: bool) -> None:
        await role.set_serving(voting and committer.failure is None)

    identity.on_voting_changed = voting_changed
    identity.launch()
    structlog.contextvars.bind_contextvars()
    get_logger().info(
        "acceptor serving",
        address=config.listen,
        port=role.port,
        db=str(config.db_path),
        instances=len(states),
        incarnation=storage.incarnation,
        standing=identity.standing.value,
        no_vote_through=storage.no_vote_through or None,
    )
    return role, servicer
