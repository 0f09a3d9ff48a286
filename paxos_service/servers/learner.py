"""The learner's gRPC server around :class:`roles.Learner`.

It learns from Decide messages sent by proposers. When asked about an instance
it has not been told about, it asks every acceptor what it accepted and counts
the votes itself, so a decision is found even if the proposer that made it
crashed before telling anyone.

A learner is where a violation of Paxos safety becomes visible: when
:class:`roles.Learner` reports a :class:`roles.Conflict` (two values chosen for
one instance, by two majorities or a Decide that contradicts what was
learned), this server logs one critical line naming both, counts it in
``paxos_learner_conflicts_total``, and turns its health NOT_SERVING for good:
it no longer knows which value is the truth, and says so instead of serving
either.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from paxos_service.client.grpc_status import trailing
from paxos_service.core import metrics
from paxos_service.core.config import LearnerConfig
from paxos_service.core.logger import get_logger
from paxos_service.kv import snapshot_file
from paxos_service.kv.snapshot import InvalidSnapshot
from paxos_service.node.replica import Replica
from paxos_service.servers.kv import KvServicer
from paxos_service.transport import wire
from paxos_service.transport.metadata import COMPACTED_THROUGH_METADATA
from paxos_service.transport.peers import AcceptorPeer, connect_acceptors, describe_rpc_error
from paxos_service.transport.server import RoleServer, bind_request
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import Accepted, Conflict, Learned, Learner, ProtocolError

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
        ids = frozenset(p.acceptor_id for p in self.acceptors)
        #: Single-decree instances (Propose), and the log's when no replica
        #: applies them: two spaces, never mixed (see InstanceSpace in the proto).
        self.learner = Learner(ids)
        self.log_learner = Learner(ids)
        #: The replicated log's replica, when this learner serves the KV store.
        self.replica = replica
        self.kv: KvServicer | None = None
        #: Set once serving: health turns NOT_SERVING on a conflict.
        self.role_server: RoleServer | None = None
        #: The conflicts seen so far (normally none, ever), and whether each
        #: was in the log's space.
        self.conflicts: list[tuple[Conflict, bool]] = []
        #: The highest compaction point an acceptor answered a read with.
        self.compacted_seen = 0
        self._logger = get_logger()

    async def Decide(
        self, request: pb.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DecideResponse:
        try:
            decide = wire.decide_from_pb(request.decide, self.config.max_value_bytes)
            log = wire.is_log(request.space)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        bind_request(context, instance=decide.instance, ballot=str(decide.ballot))
        if log and self.replica is not None:
            # Log instances go to the replica; keeping every value here too
            # would grow without bound. GetDecision asks the acceptors instead.
            self.replica.on_decided(decide.instance, decide.value)
            # The leader's compaction point is made of these (roles/compaction.py).
            return pb.DecideResponse(snapshot_index=self.replica.snapshot_index)
        learner = self.log_learner if log else self.learner
        known = learner.decision(decide.instance)
        try:
            learned = learner.on_decide(decide)
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(learned, Conflict):
            await self.report_conflict(learned, log)
            await context.abort(grpc.StatusCode.INTERNAL, f"safety violation: {learned.describe()}")
        if known is None:
            metrics.LEARNED_FROM_DECIDE.inc()
        self._logger.debug("decided")
        return pb.DecideResponse()

    async def FetchSnapshot(
        self, request: pb.FetchSnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchSnapshotResponse]:
        replica = self.replica
        path = replica.snapshots.path if replica is not None else None
        if replica is None or path is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this learner serves no key-value store, so it has no snapshot",
            )
        assert replica is not None and path is not None
        index = replica.snapshot_index
        if index == 0 or index < request.min_instance:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this learner's latest snapshot holds the log through instance {index}, "
                f"not through {request.min_instance}: ask another learner",
            )
        self._logger.info("sending a snapshot", applied_instance=index)
        try:
            for info, offset, piece in snapshot_file.chunks(path):
                yield pb.FetchSnapshotResponse(
                    applied_instance=info.applied_instance,
                    total_bytes=info.size,
                    sha256=info.sha256,
                    offset=offset,
                    data=piece,
                )
        except (OSError, InvalidSnapshot) as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cannot read this learner's snapshot: {exc}"
            )

    async def GetDecision(
        self, request: pb.GetDecisionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDecisionResponse:
        try:
            instance = wire.check_instance(request.instance)
            log = wire.is_log(request.space)
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        bind_request(context, instance=instance)
        learner = self.log_learner if log else self.learner
        contested = next(
            (c for c, c_log in self.conflicts if c.instance == instance and c_log == log), None
        )
        if contested is not None:
            # Either answer may be wrong: say why instead of picking one.
            await context.abort(
                grpc.StatusCode.INTERNAL, f"safety violation: {contested.describe()}"
            )
        learned = learner.decision(instance)
        if learned is None:
            timeout = self.config.read_timeout
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = min(timeout, max(0.01, remaining - 0.05))
            learned = await self._ask_acceptors(instance, log, timeout)
            if isinstance(learned, Conflict):
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"safety violation: {learned.describe()}"
                )
            if learned is not None:
                metrics.LEARNED_FROM_ACCEPTORS.inc()
        if learned is None and log and instance <= self.compacted_seen:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"log instance {instance} is compacted: it is chosen and applied, and the "
                f"acceptors keep the log only above instance {self.compacted_seen}; its "
                "effect is in the key-value store",
            )
        if learned is None:
            return pb.GetDecisionResponse(instance=instance, decided=False)
        return pb.GetDecisionResponse(
            instance=instance,
            decided=True,
            value=learned.value,
            ballot=wire.ballot_to_pb(learned.ballot),
        )

    async def _ask_acceptors(self, instance: int, log: bool, timeout: float) -> Learned | None:
        results = await asyncio.gather(
            *(self._read(peer, instance, log, timeout) for peer in self.acceptors)
        )
        learner = self.log_learner if log else self.learner
        learned: Learned | None = None
        conflict: Conflict | None = None
        for accepted in results:
            if accepted is not None:
                try:
                    outcome = learner.on_accepted(accepted)
                except ProtocolError as exc:
                    self._logger.error("bad vote from acceptor", error=str(exc))
                    continue
                if isinstance(outcome, Conflict):
                    conflict = outcome
                elif outcome is not None:
                    learned = outcome
        if conflict is not None:
            await self.report_conflict(conflict, log)
            return conflict
        return learned

    async def report_conflict(self, conflict: Conflict, log: bool) -> None:
        """Two values were chosen for one instance (of the log, or
        single-decree): say so loudly (one critical line, a metric) and stop
        serving for good."""
        self.conflicts.append((conflict, log))
        metrics.LEARNER_CONFLICTS.labels(conflict.source).inc()
        self._logger.critical(
            "safety violation: two values chosen for one instance; learner stops serving",
            instance=conflict.instance,
            space="log" if log else "single-decree",
            ballot=str(conflict.ballot),
            conflicting_ballot=str(conflict.conflicting_ballot),
            shown_by=conflict.source,
            error=conflict.describe(),
        )
        if self.role_server is not None:
            await self.role_server.set_serving(False)

    async def _read(
        self, peer: AcceptorPeer, instance: int, log: bool, timeout: float
    ) -> Accepted | None:
        try:
            response = await peer.stub.GetAccepted(
                pb.GetAcceptedRequest(instance=instance, space=wire.space_of(log)),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            through = trailing(exc, COMPACTED_THROUGH_METADATA)
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE and through and through.isdigit():
                self.compacted_seen = max(self.compacted_seen, int(through))
            self._logger.debug("acceptor read failed", error=describe_rpc_error(peer.address, exc))
            return None
        if not response.HasField("accepted"):
            return None
        try:
            accepted = wire.accepted_from_pb(response.accepted)
        except (wire.WireError, ValueError) as exc:
            self._logger.error(
                "malformed reply from acceptor", address=peer.address, error=str(exc)
            )
            return None
        if accepted.acceptor_id != peer.acceptor_id or accepted.instance != instance:
            self._logger.error(
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
