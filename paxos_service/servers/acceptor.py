"""The acceptor's gRPC server: proto in, :class:`roles.Acceptor` step, durable
commit, proto out.

Durability: a step that changes state is queued for the
:class:`~paxos_service.storage.group_commit.GroupCommitter` and its reply is
sent only after the commit that contains it has returned. A reply that changes
nothing (a Reject, a duplicate Accept, a read) still waits for every write
queued before it, because it may describe that write.

If a commit fails, the acceptor stops voting for good: every later request gets
UNAVAILABLE and health turns NOT_SERVING. It never replies without persisting.

Atomic steps: every request's read, decision and write happen as one step,
one step at a time (:meth:`~paxos_service.servers.acceptor_states.StateWindow.step`).
A step may await a disk read of an instance evicted from memory, but no other
step runs meanwhile, and eviction waits until no step is in progress, so a
decision is never taken against a promise that changed while its state was
being read. The waits for durability happen after the step, outside it.

Identity safety (:mod:`paxos_service.node.identity`): an acceptor votes only while
its :class:`~paxos_service.node.identity.IdentityGuard` says so. A new database
joins first, one whose id voted before with another database never votes, and
a rebuilt one never votes on the instances its lost self may have voted on.
Otherwise votes get UNAVAILABLE saying why, and the readiness health name is
NOT_SERVING. ``Introduce`` and ``GetRecoveryInfo`` are answered either way.
"""

from __future__ import annotations

from typing import Any

import grpc

from paxos_service.core import clock, metrics
from paxos_service.core.config import AcceptorConfig
from paxos_service.core.logger import get_logger
from paxos_service.node.identity import IdentityGuard
from paxos_service.servers.acceptor_states import StateWindow
from paxos_service.storage.contract import StorageError
from paxos_service.storage.group_commit import GroupCommitter
from paxos_service.transport import wire
from paxos_service.transport.metadata import COMPACTED_THROUGH_METADATA
from paxos_service.transport.server import RoleServer, bind_request
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import (
    Accepted,
    Acceptor,
    AcceptorState,
    Compacted,
    NotVoting,
    Promise,
    PromiseRange,
    ProtocolError,
    RangePromise,
    Reject,
)
from roles.acceptor import report_start
from roles.recovery import summarize

SERVICE_NAME = "paxos_service.v1.AcceptorService"


def state_key(instance: int, log: bool) -> int:
    """Where an instance's state is kept. Single-decree instance k is kept
    under key -k: the log's range reads (PrepareRange, catch-up) and its
    compaction look only at keys >= 1, so they never see or touch a
    single-decree instance. Two things still span both spaces, as they did
    when the spaces were one: the range promise's floor binds instance k of
    either, and recovery's no_vote_through M counts both (``abs`` of the key),
    so a rebuilt acceptor keeps every promise its lost self may have made."""
    return instance if log else -instance


async def _abort_compacted(context: grpc.aio.ServicerContext[Any, Any], exc: Compacted) -> None:
    """The typed answer below the compaction point: OUT_OF_RANGE, a message
    that says what to do, and T in the trailing metadata."""
    context.set_trailing_metadata(((COMPACTED_THROUGH_METADATA, str(exc.compacted_through)),))
    await context.abort(
        grpc.StatusCode.OUT_OF_RANGE,
        f"{exc}; nothing is left to vote on there, and a learner that needs those "
        "instances installs a snapshot from another learner",
    )


#: Most entries one GetAcceptedRange returns.
_RANGE_LIMIT = 1000


class AcceptorServicer(pb_grpc.AcceptorServiceServicer):
    """The AcceptorService: one :class:`roles.Acceptor` over its durable states."""

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
        #: Every instance's state: the newest in memory, the others on disk.
        #: Replies never leave before the writes they depend on are committed.
        self.window = StateWindow(
            states,
            committer,
            max_resident or config.max_resident_instances,
            spilled_through=spilled_through,
        )
        #: The Multi-Paxos promise for every instance >= its from_instance.
        self.range_promise = range_promise or RangePromise()
        #: The highest ``Accept.chosen_through`` heard: a PromiseRange skips
        #: the instances through it (a bounded phase 1, roles/acceptor.py).
        self.chosen_through = committer.storage.chosen_through
        #: The compaction point: the log's votes through it are deleted, and
        #: Prepare, Accept and reads there get OUT_OF_RANGE (roles/compaction.py).
        self.compacted_through = committer.storage.compacted_through
        metrics.ACCEPTOR_COMPACTED_THROUGH.set(self.compacted_through)
        self.committer = committer
        self.role_server: RoleServer | None = None
        #: Pre-vote: (proposer id, monotonic time) of the last Accept accepted here.
        self.last_contact: tuple[int, float] | None = None
        self._logger = get_logger()

    async def Prepare(
        self, request: pb.PrepareRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PrepareResponse:
        msg = await self._parse(context, lambda: wire.prepare_from_pb(request.prepare))
        log = await self._parse(context, lambda: wire.is_log(request.space))
        bind_request(context, instance=msg.instance, ballot=str(msg.ballot))
        step = await self._step(
            context,
            lambda s, floor, compacted: self.acceptor.on_prepare(
                s, msg, floor, compacted_through=compacted
            ),
            msg.instance,
            log,
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
        log = await self._parse(context, lambda: wire.is_log(request.space))
        bind_request(context, instance=msg.instance, ballot=str(msg.ballot))
        if log and msg.chosen_through > self.chosen_through:
            self.chosen_through = msg.chosen_through
            self.committer.note_chosen_through(msg.chosen_through)
        if log and msg.compact_through > self.compacted_through:
            await self._compact(msg.compact_through)
        step = await self._step(
            context,
            lambda s, floor, compacted: self.acceptor.on_accept(
                s, msg, floor, compacted_through=compacted
            ),
            msg.instance,
            log,
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
        log = await self._parse(context, lambda: wire.is_log(request.space))
        async with self.window.step():
            await self._check_voting(context)
            # Inside the step: the point moves only in a step of its own, and
            # the deletes below it never reach an instance above it.
            if log and instance <= self.compacted_through:
                await _abort_compacted(context, Compacted(instance, self.compacted_through))
            state = await self.window.state_of(state_key(instance, log))
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
        async with self.window.step():
            await self._check_voting(context)
            # What is compacted is never reported, with or without the skip.
            compacted = self.compacted_through
            chosen_through = self.chosen_through if self.config.skip_known_chosen else compacted
            later = await self.window.states_from(report_start(msg, max(chosen_through, compacted)))
            # A commit may have failed during the read: check again, then no
            # await until the promise is queued.
            await self._check_voting(context)
            try:
                step = self.acceptor.on_prepare_range(
                    self.range_promise,
                    later,
                    msg,
                    chosen_through=chosen_through,
                    compacted_through=compacted,
                    page_bytes=self.config.promise_page_bytes or self.config.max_value_bytes,
                )
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
            self._logger.info(
                "promised range",
                accepted=len(step.reply.accepted),
                chosen_through=step.reply.chosen_through,
                next_page=step.reply.next_page,
            )
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
        async with self.window.step():
            await self._check_voting(context)
            if start_instance <= self.compacted_through:
                await _abort_compacted(context, Compacted(start_instance, self.compacted_through))
            found = await self.window.states_from(start_instance, accepted_limit=limit)
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
            has_state=bool(self.window.states)
            or self.window.spilled_through != 0
            or not self.range_promise.ballot.is_zero,
        )

    async def GetRecoveryInfo(
        self, request: pb.GetRecoveryInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRecoveryInfoResponse:
        await self._check_peer_request(context, request.cluster_id, None)
        assert self.identity is not None
        async with self.window.step():
            promised, highest_accepted = summarize(self.window.states, self.range_promise)
            if self.window.spilled_through:
                on_disk = await self.committer.run(
                    self.committer.storage.summarize_through,
                    self.window.spilled_through,
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
        return wire.acceptor_status_to_pb(self.identity.status)

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

    async def _parse(self, context: grpc.aio.ServicerContext[Any, Any], parse: Any) -> Any:
        try:
            return parse()
        except (wire.WireError, ProtocolError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _step(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        step_fn: Any,
        instance: int,
        log: bool,
    ) -> Promise | Accepted | Reject:
        """Read ``instance`` (of the log, or single-decree), decide with
        ``step_fn(state, range_floor)`` and queue the new state, as one
        atomic step; reply once it is durable."""
        key = state_key(instance, log)
        async with self.window.step():
            await self._check_voting(context)
            state = await self.window.state_of(key)
            # A commit may have failed during the read: check again. From here
            # to the write below there is no await, so the decision sees the
            # latest state and the latest range promise.
            await self._check_voting(context)
            # The range promise binds single-decree instances too, as when the
            # two shared one space: a rebuilt acceptor's floor (roles/recovery.py)
            # must. It never blocks a log's PrepareRange, which reads keys >= 1.
            compacted = self.compacted_through if log else 0  # decrees never compact
            try:
                step = step_fn(state, self.range_promise.floor(instance), compacted)
            except ProtocolError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except NotVoting as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except Compacted as exc:
                await _abort_compacted(context, exc)
            if step.persist:
                # Later steps see this state at once; nobody hears of it before it is durable.
                self.window.write(key, step.state)
        await self._wait_durable(context)
        self._logger.debug("replied", reply=type(step.reply).__name__, persisted=step.persist)
        reply: Promise | Accepted | Reject = step.reply
        return reply

    async def _compact(self, through: int) -> None:
        """Take the leader's compaction point: refuse votes through it from
        now on, save it with the next commit (the votes are deleted after
        that, on the storage thread), and drop what memory holds there."""
        async with self.window.step():
            if through <= self.compacted_through:
                return
            self.compacted_through = through
            self.committer.note_compacted_through(through)
            self.window.forget_through(through)
        self._logger.info("compaction point moved", compacted_through=through)

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
            self._logger.error("storage failed; acceptor stops voting", error=str(exc))
            if self.role_server is not None:
                await self.role_server.set_serving(False)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"acceptor {self.config.node_id} could not persist its state ({exc}); "
                "it has stopped voting",
            )
