"""The learner's gRPC server around :class:`roles.Learner`.

It learns from Decide messages sent by proposers. When asked about an instance
it has not been told about, it asks every acceptor what it accepted and counts
the votes itself, so a decision is found even if the proposer that made it
crashed before telling anyone.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from paxos_service import metrics, operator_server, wire
from paxos_service.config import LearnerConfig
from paxos_service.kv.state_machine import KvStateMachine
from paxos_service.kv_server import SERVICE_NAME as KV_SERVICE_NAME
from paxos_service.kv_server import KvServicer, LogAppender
from paxos_service.log import get_logger
from paxos_service.peers import AcceptorPeer, connect_acceptors, describe_rpc_error
from paxos_service.replica import Replica
from paxos_service.server import RoleServer, bind_request, start_server
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import Accepted, Learned, Learner, ProtocolError, SafetyViolation

SERVICE_NAME = "paxos_service.v1.LearnerService"


class LearnerServicer(pb_grpc.LearnerServiceServicer):
    def __init__(self, config: LearnerConfig, replica: Replica | None = None) -> None:
        self.config = config
        # With a replica, share its channels: they are kept warm by catch-up polls.
        self.acceptors = (
            replica.acceptors
            if replica is not None
            else connect_acceptors(config.acceptors, config.max_value_bytes, config.tls)
        )
        self.learner = Learner(frozenset(p.acceptor_id for p in self.acceptors))
        #: The replicated log's replica, when this learner serves the KV store.
        self.replica = replica
        self.kv: KvServicer | None = None
        self._log = get_logger()

    async def Decide(
        self, request: pb.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DecideResponse:
        try:
            decide = wire.decide_from_pb(request.decide, self.config.max_value_bytes)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        bind_request(context, instance=decide.instance, ballot=str(decide.ballot))
        if self.replica is not None:
            # Log instances go to the replica; keeping every value here too
            # would grow without bound. GetDecision asks the acceptors instead.
            self.replica.on_decided(decide.instance, decide.value)
            return pb.DecideResponse()
        known = self.learner.decision(decide.instance)
        try:
            self.learner.on_decide(decide)
        except SafetyViolation as exc:
            self._log.critical("safety violation", error=str(exc))
            await context.abort(grpc.StatusCode.INTERNAL, f"safety violation: {exc}")
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if known is None:
            metrics.LEARNED_FROM_DECIDE.inc()
        self._log.debug("decided")
        return pb.DecideResponse()

    async def GetDecision(
        self, request: pb.GetDecisionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDecisionResponse:
        try:
            instance = wire.check_instance(request.instance)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        bind_request(context, instance=instance)
        learned = self.learner.decision(instance)
        if learned is None:
            timeout = self.config.read_timeout
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = min(timeout, max(0.01, remaining - 0.05))
            try:
                learned = await self._ask_acceptors(instance, timeout)
            except SafetyViolation as exc:
                self._log.critical("safety violation", error=str(exc))
                await context.abort(grpc.StatusCode.INTERNAL, f"safety violation: {exc}")
            if learned is not None:
                metrics.LEARNED_FROM_ACCEPTORS.inc()
        if learned is None:
            return pb.GetDecisionResponse(instance=instance, decided=False)
        return pb.GetDecisionResponse(
            instance=instance,
            decided=True,
            value=learned.value,
            ballot=wire.ballot_to_pb(learned.ballot),
        )

    async def _ask_acceptors(self, instance: int, timeout: float) -> Learned | None:
        results = await asyncio.gather(
            *(self._read(peer, instance, timeout) for peer in self.acceptors)
        )
        learned = None
        for accepted in results:
            if accepted is not None:
                try:
                    learned = self.learner.on_accepted(accepted) or learned
                except ProtocolError as exc:
                    self._log.error("bad vote from acceptor", error=str(exc))
        return learned

    async def _read(self, peer: AcceptorPeer, instance: int, timeout: float) -> Accepted | None:
        try:
            response = await peer.stub.GetAccepted(
                pb.GetAcceptedRequest(instance=instance), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            self._log.debug("acceptor read failed", error=describe_rpc_error(peer.address, exc))
            return None
        if not response.HasField("accepted"):
            return None
        try:
            accepted = wire.accepted_from_pb(response.accepted)
        except (wire.WireError, ValueError) as exc:
            self._log.error("malformed reply from acceptor", address=peer.address, error=str(exc))
            return None
        if accepted.acceptor_id != peer.acceptor_id or accepted.instance != instance:
            self._log.error(
                "acceptor answered as someone else",
                address=peer.address,
                expected=peer.acceptor_id,
                got=accepted.acceptor_id,
            )
            return None
        return accepted

    async def close(self) -> None:
        if self.replica is not None:
            await self.replica.stop()
            self.replica.machine.close()
        if self.kv is not None:
            await self.kv.appender.close()
        for peer in self.acceptors:
            await peer.channel.close(grace=None)


async def start_learner(config: LearnerConfig) -> tuple[RoleServer, LearnerServicer]:
    """Serve the learner; with ``config.db_path``, also the replicated KV store.
    Raises StorageCorrupt if the KV file cannot be used."""
    replica: Replica | None = None
    kv: KvServicer | None = None
    if config.db_path is not None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-store")
        loop = asyncio.get_running_loop()
        machine = await loop.run_in_executor(executor, KvStateMachine.open, config.db_path)
        acceptors = connect_acceptors(config.acceptors, config.max_value_bytes, config.tls)
        replica = Replica(machine, acceptors, executor)
        replica.start()
        appender = LogAppender(config.proposers, config.max_value_bytes, config.tls)
        kv = KvServicer(replica, appender, config.max_value_bytes)
    servicer = LearnerServicer(config, replica)
    servicer.kv = kv

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_LearnerServiceServicer_to_server(servicer, server)
        if kv is not None:
            pb_grpc.add_KvServiceServicer_to_server(kv, server)
        operator_server.add_to_server(operator_server.LearnerView(servicer), server)

    extra = ((KV_SERVICE_NAME,) if kv is not None else ()) + (operator_server.SERVICE_NAME,)
    role = await start_server(config, SERVICE_NAME, register, extra_services=extra)
    get_logger().info(
        "learner serving", address=config.listen, port=role.port, acceptors=config.acceptors
    )
    return role, servicer
