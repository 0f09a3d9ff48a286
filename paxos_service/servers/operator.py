"""``OperatorService``: what ``paxos status`` and ``paxos explain`` ask a node.

Every role server registers it next to its own service, so one client can ask
any node what it is (``GetNodeStatus``) without knowing its role first, and
why an instance is or is not chosen (``ExplainInstance``). The answers come
from the role's :class:`NodeView` (:mod:`paxos_service.servers.views`); this
module knows no role, so every role's start-up can register it.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from paxos_service.servers.explain import DEFAULT_VALUE_LIMIT
from paxos_service.transport import wire
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

SERVICE_NAME = "paxos_service.v1.OperatorService"
#: Longest an explanation waits for one acceptor or learner. Short, because a
#: node that does not answer quickly is the news, not something to wait for.
PEER_TIMEOUT = 2.0
#: Kept back from the caller's deadline so it gets our answer, not DEADLINE_EXCEEDED.
_DEADLINE_MARGIN = 0.1


class PeerUnavailable(Exception):
    """This node cannot describe its own state (e.g. its storage failed)."""


class NodeView(Protocol):
    """One role's answers to the operator service."""

    def status(self) -> pb.GetNodeStatusResponse: ...

    async def explain(
        self, instance: int, log: bool, local_only: bool, value_limit: int, timeout: float
    ) -> pb.ExplainInstanceResponse:
        """``instance`` of the log (``log``), or the single-decree one."""
        ...


class OperatorServicer(pb_grpc.OperatorServiceServicer):
    """Answers from one role's view, with the peers' wait cut to the caller's deadline."""

    def __init__(self, view: NodeView) -> None:
        self.view = view

    async def GetNodeStatus(
        self, request: pb.GetNodeStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetNodeStatusResponse:
        return self.view.status()

    async def ExplainInstance(
        self, request: pb.ExplainInstanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExplainInstanceResponse:
        try:
            instance = wire.check_instance(request.instance)
            log = wire.is_log(request.space)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        timeout = PEER_TIMEOUT
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = max(0.05, min(timeout, remaining - _DEADLINE_MARGIN))
        try:
            return await self.view.explain(
                instance,
                log,
                request.local_only,
                request.value_limit or DEFAULT_VALUE_LIMIT,
                timeout,
            )
        except PeerUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


def add_to_server(view: NodeView, server: grpc.aio.Server) -> None:
    """Register the operator service for ``view`` (call from a role's register)."""
    pb_grpc.add_OperatorServiceServicer_to_server(OperatorServicer(view), server)
