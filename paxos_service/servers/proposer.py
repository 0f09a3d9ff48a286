"""The proposer's gRPC server: single-decree ``Propose`` and the replicated log's RPCs.

``Propose`` runs a :class:`roles.Proposer` per call through the
:class:`~paxos_service.node.proposer_driver.ProposerDriver`; ``Append``,
``Heartbeat`` and ``GetLeader`` go to the log's
:class:`~paxos_service.node.log_driver.LogDriver`, when the log is on.
"""

from __future__ import annotations

from typing import Any

import grpc

from paxos_service.core import clock, log_entry
from paxos_service.core.errors import NotLeaderError, OutcomeUnknownError
from paxos_service.core.logger import get_logger
from paxos_service.node.log_driver import LogDriver
from paxos_service.node.proposer_driver import ProposalFailed, ProposerDriver, QuorumUnavailable
from paxos_service.transport import wire
from paxos_service.transport.metadata import LEADER_METADATA
from paxos_service.transport.server import bind_request
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

SERVICE_NAME = "paxos_service.v1.ProposerService"

# Answer the client this long before its deadline, so it gets our reason
# (UNAVAILABLE: no quorum ...) rather than a bare DEADLINE_EXCEEDED.
_DEADLINE_MARGIN = 0.05


class ProposerServicer(pb_grpc.ProposerServiceServicer):
    def __init__(self, driver: ProposerDriver, log: LogDriver | None = None) -> None:
        self.driver = driver
        self.log = log
        self._logger = get_logger()

    async def Propose(
        self, request: pb.ProposeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProposeResponse:
        config = self.driver.config
        try:
            instance = wire.check_instance(request.instance)
            value = wire.check_value(request.value, config.max_value_bytes)
            log = wire.is_log(request.space)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if log and value != log_entry.NOOP:
            # The log's instances take commands through Append only; a Propose
            # there is a learner filling a hole it cannot read, with the no-op.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a Propose in the log's instance space may only carry the log's no-op "
                "(learners repair holes with it); use Append or the KvService to add commands",
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
            chosen = await self.driver.propose(instance, value, deadline, log=log)
        except QuorumUnavailable as exc:
            self._logger.warning("propose failed", error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except ProposalFailed as exc:
            self._logger.warning("propose failed", error=str(exc))
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        self._logger.info(
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
        except NotLeaderError as exc:
            # FAILED_PRECONDITION is the one answer that proves the commands were
            # not appended (NotLeaderError is raised before any is given an
            # instance): a learner may then say "not appended" and retry. Any
            # other failure of an Append is "outcome unknown" to the caller.
            if exc.leader_address is not None:
                context.set_trailing_metadata(((LEADER_METADATA, exc.leader_address),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except OutcomeUnknownError as exc:
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
