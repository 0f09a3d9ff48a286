"""The proposer's gRPC server: runs a :class:`roles.Proposer` per Propose call.

The driver below is the only place where the proposer meets time and the
network: it performs the state machine's effects (Broadcast -> one RPC per
acceptor, SetTimer -> a wake-up, Chosen -> Decide to learners) and feeds every
reply and timer back in. Calls for the same instance on this proposer are
serialised, so this proposer never has two ballots of its own in flight for
one instance.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from typing import Any

import grpc

from paxos_service import clock, log_entry, metrics, operator_server, runtime, tls, wire
from paxos_service.config import ProposerConfig
from paxos_service.log import get_logger
from paxos_service.log_driver import LEADER_METADATA, AppendOutcomeUnknown, LogDriver, NotLeader
from paxos_service.peers import AcceptorPeer, connect_acceptors, describe_rpc_error
from paxos_service.server import RoleServer, bind_request, channel_options, start_server
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import (
    Accept,
    Broadcast,
    Chosen,
    Effect,
    GaveUp,
    Phase,
    Prepare,
    Promise,
    Proposer,
    ProtocolError,
    Reject,
    SetTimer,
    majority,
)
from roles import ProposerConfig as RoleProposerConfig
from roles.messages import Accepted, Decide

SERVICE_NAME = "paxos_service.v1.ProposerService"

# Answer the client this long before its deadline, so it gets our reason
# (UNAVAILABLE: no quorum ...) rather than a bare DEADLINE_EXCEEDED.
_DEADLINE_MARGIN = 0.05

Reply = Promise | Accepted | Reject


class QuorumUnavailable(Exception):
    """Too few acceptors answered to make progress."""


class ProposalFailed(Exception):
    """Enough acceptors answered, but no value was chosen before the deadline."""


class ProposerDriver:
    """Runs proposals for one proposer id against a fixed acceptor set."""

    def __init__(
        self,
        config: ProposerConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = clock.now,
    ) -> None:
        self.config = config
        self.acceptors = connect_acceptors(config.acceptors, config.max_value_bytes, config.tls)
        self.learners = [
            pb_grpc.LearnerServiceStub(
                tls.aio_channel(a, config.tls, channel_options(config.max_value_bytes))
            )
            for a in config.learners
        ]
        self.role_config = RoleProposerConfig(phase_timeout=config.phase_timeout)
        self._rng = rng or runtime.rng()
        self._clock = clock
        #: Per-instance lock and the number of calls holding or awaiting it.
        self._locks: dict[int, tuple[asyncio.Lock, list[int]]] = {}
        #: Highest round seen per instance, so a retry starts above it.
        self._rounds: dict[int, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._log = get_logger()

    async def propose(self, instance: int, value: bytes, deadline: float) -> Chosen:
        lock, users = self._locks.setdefault(instance, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                return await self._run(instance, value, deadline)
        finally:
            users[0] -= 1
            if users[0] == 0:  # keep the dict small: drop idle locks
                del self._locks[instance]

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for peer in self.acceptors:
            await peer.channel.close(grace=None)

    async def _run(self, instance: int, value: bytes, deadline: float) -> Chosen:
        proposer = Proposer(
            proposer_id=self.config.node_id,
            instance=instance,
            value=value,
            acceptor_ids=frozenset(p.acceptor_id for p in self.acceptors),
            rng=self._rng,
            deadline=deadline,
            config=self.role_config,
            min_round=self._rounds.get(instance, 0),
        )
        inbox: asyncio.Queue[Reply] = asyncio.Queue()
        # A dict, not a set: tasks are cancelled in the order they were sent
        # (a set would use memory-address order, and a seed would not replay).
        in_flight: dict[asyncio.Task[None], None] = {}
        answered: set[int] = set()
        timer_at = deadline
        stats = metrics.SINGLE_DECREE
        stats.proposals.inc()
        phase_started = 0.0  # when the current phase's Broadcast went out
        try:
            effects: list[Effect] = proposer.start(self._clock())
            while True:
                for effect in effects:
                    if isinstance(effect, Broadcast):
                        self._log.debug(
                            "broadcast",
                            message=type(effect.message).__name__,
                            instance=instance,
                            ballot=str(effect.message.ballot),
                        )
                        now = self._clock()
                        if isinstance(effect.message, Accept):  # phase 1 is through
                            stats.phase1.observe(now - phase_started)
                        phase_started = now
                        for peer in self.acceptors:
                            task = asyncio.create_task(
                                self._send(peer, effect.message, inbox, answered, deadline)
                            )
                            in_flight[task] = None
                            task.add_done_callback(functools.partial(in_flight.pop))
                    elif isinstance(effect, SetTimer):
                        timer_at = effect.at
                    elif isinstance(effect, Chosen):
                        stats.phase2.observe(self._clock() - phase_started)
                        stats.chosen.inc()
                        self._rounds.pop(instance, None)
                        self._announce(effect.decide)
                        return effect
                    elif isinstance(effect, GaveUp):
                        self._rounds[instance] = proposer.highest_round_seen
                        raise self._failure(effect, answered)
                try:
                    reply = await asyncio.wait_for(
                        inbox.get(), timeout=max(0.0, timer_at - self._clock())
                    )
                except TimeoutError:
                    # Our timer fired, so its time has come, even if the clock
                    # reads a hair earlier (asyncio runs timers due within its
                    # resolution): otherwise we would wait 0 s again, and spin.
                    effects = proposer.on_timer(max(self._clock(), timer_at))
                    continue
                phase = proposer.phase
                try:
                    effects = proposer.on_message(reply, self._clock())
                except ProtocolError as exc:
                    self._log.error("bad reply from acceptor", error=str(exc))
                    effects = []
                if isinstance(reply, Reject):
                    stats.rejections.inc()
                    if proposer.phase is Phase.BACKING_OFF and phase is not Phase.BACKING_OFF:
                        stats.preemptions.inc()  # a higher ballot: retry above it
        finally:
            for task in list(in_flight):
                task.cancel()

    async def _send(
        self,
        peer: AcceptorPeer,
        message: Prepare | Accept,
        inbox: asyncio.Queue[Reply],
        answered: set[int],
        deadline: float,
    ) -> None:
        timeout = max(0.01, min(self.config.phase_timeout, deadline - self._clock()))
        try:
            reply: Reply
            if isinstance(message, Prepare):
                response = await peer.stub.Prepare(
                    pb.PrepareRequest(prepare=wire.prepare_to_pb(message)), timeout=timeout
                )
                reply = wire.prepare_response_from_pb(response)
            else:
                accept_response = await peer.stub.Accept(
                    pb.AcceptRequest(accept=wire.accept_to_pb(message)), timeout=timeout
                )
                reply = wire.accept_response_from_pb(accept_response)
        except grpc.aio.AioRpcError as exc:
            peer.last_error = describe_rpc_error(peer.address, exc)
            self._log.debug("acceptor call failed", error=peer.last_error)
            return
        except (wire.WireError, ValueError) as exc:
            peer.last_error = f"{peer.address}: malformed reply: {exc}"
            self._log.error("malformed reply from acceptor", error=peer.last_error)
            return
        if reply.acceptor_id != peer.acceptor_id:
            peer.last_error = (
                f"{peer.address} answers as acceptor {reply.acceptor_id} but is listed as "
                f"acceptor {peer.acceptor_id}: list acceptors in id order in --acceptors"
            )
            self._log.error("acceptor id mismatch", error=peer.last_error)
            return
        peer.last_error = None
        answered.add(peer.acceptor_id)
        inbox.put_nowait(reply)

    def _failure(self, gave_up: GaveUp, answered: set[int]) -> Exception:
        needed = majority(len(self.acceptors))
        if len(answered) < needed:
            down = [
                p.last_error or f"{p.address}: no answer"
                for p in self.acceptors
                if p.acceptor_id not in answered
            ]
            return QuorumUnavailable(
                f"no quorum of acceptors reachable for instance {gave_up.instance}: "
                f"{len(answered)} of {len(self.acceptors)} answered, {needed} needed; "
                + "; ".join(down)
            )
        return ProposalFailed(f"instance {gave_up.instance}: {gave_up.reason}")

    def _announce(self, decide: Decide) -> None:
        """Tell the learners, without making the client wait for them."""
        if not self.learners:
            return
        task = asyncio.create_task(self._send_decide(decide))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_decide(self, decide: Decide) -> None:
        request = pb.DecideRequest(decide=wire.decide_to_pb(decide))
        results = await asyncio.gather(
            *(stub.Decide(request, timeout=2.0) for stub in self.learners),
            return_exceptions=True,
        )
        for address, result in zip(self.config.learners, results, strict=True):
            if isinstance(result, BaseException):
                self._log.warning(
                    "could not tell learner",
                    instance=decide.instance,
                    error=describe_rpc_error(address, result),
                )


class ProposerServicer(pb_grpc.ProposerServiceServicer):
    def __init__(self, driver: ProposerDriver, log: LogDriver | None = None) -> None:
        self.driver = driver
        self.log = log
        self._log = get_logger()

    async def Propose(
        self, request: pb.ProposeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProposeResponse:
        config = self.driver.config
        try:
            instance = wire.check_instance(request.instance)
            value = wire.check_value(request.value, config.max_value_bytes)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if log_entry.is_reserved(value):
            # Learners decode such a value as a log entry: a client could inject
            # commands (or a malformed entry) into the replicated log.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a value must not begin with {log_entry.MAGIC!r}: that prefix is reserved for "
                "the replicated log's entries (use the KvService, or Append, to add to the log)",
            )
        bind_request(context, instance=instance)
        budget = config.propose_timeout
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining - _DEADLINE_MARGIN)
        if budget <= 0:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline too short to propose")
        deadline = clock.now() + budget
        try:
            chosen = await self.driver.propose(instance, value, deadline)
        except QuorumUnavailable as exc:
            self._log.warning("propose failed", error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except ProposalFailed as exc:
            self._log.warning("propose failed", error=str(exc))
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        self._log.info(
            "chosen", ballot=str(chosen.decide.ballot), own_value_chosen=chosen.own_value_chosen
        )
        return pb.ProposeResponse(
            instance=instance,
            value=chosen.decide.value,
            own_value_chosen=chosen.own_value_chosen,
            ballot=wire.ballot_to_pb(chosen.decide.ballot),
        )

    async def Append(
        self, request: pb.AppendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AppendResponse:
        log = await self._log_driver(context)
        if not request.commands:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no commands to append")
        commands = [c.SerializeToString() for c in request.commands]
        limit = log_entry.max_command_bytes(self.driver.config.max_value_bytes)
        if any(len(c) > limit for c in commands):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"a command is larger than {limit} bytes"
            )
        remaining = context.time_remaining()
        budget = self.driver.config.propose_timeout
        if remaining is not None:
            budget = min(budget, remaining - _DEADLINE_MARGIN)
        try:
            instance = await log.append(commands, clock.now() + budget)
        except NotLeader as exc:
            # FAILED_PRECONDITION is the one answer that proves the commands were
            # not appended (NotLeader is raised before any is given an
            # instance): a learner may then say "not appended" and retry. Any
            # other failure of an Append is "outcome unknown" to the caller.
            if exc.leader_address is not None:
                context.set_trailing_metadata(((LEADER_METADATA, exc.leader_address),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except AppendOutcomeUnknown as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"outcome unknown: {exc}")
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "outcome unknown: not chosen before the deadline"
            )
        return pb.AppendResponse(instance=instance)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HeartbeatResponse:
        log = await self._log_driver(context)
        try:
            return log.heartbeat(request)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def GetLeader(
        self, request: pb.GetLeaderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetLeaderResponse:
        return (await self._log_driver(context)).describe()

    async def _log_driver(self, context: grpc.aio.ServicerContext[Any, Any]) -> LogDriver:
        if self.log is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the replicated log is off on this proposer: start it with --proposers",
            )
        assert self.log is not None
        return self.log


async def start_proposer(
    config: ProposerConfig,
) -> tuple[RoleServer, ProposerDriver, LogDriver | None]:
    driver = ProposerDriver(config)
    log: LogDriver | None = None
    if config.proposers:
        log = LogDriver(config, driver.acceptors, driver.learners)
        log.start()
    servicer = ProposerServicer(driver, log)

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_ProposerServiceServicer_to_server(servicer, server)
        operator_server.add_to_server(operator_server.ProposerView(driver, log), server)

    role = await start_server(
        config, SERVICE_NAME, register, extra_services=(operator_server.SERVICE_NAME,)
    )
    get_logger().info(
        "proposer serving",
        address=config.listen,
        port=role.port,
        acceptors=config.acceptors,
        learners=config.learners,
        log=log is not None,
    )
    return role, driver, log
