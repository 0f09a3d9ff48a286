"""What each role tells the operator service (:class:`~paxos_service.servers.operator.NodeView`).

They only *read* the role's live state (the acceptor's in-memory states and
range promise, the proposer's log driver, the learner's replica): nothing is
copied or stored, so an answer is as fresh as the node itself. An acceptor
answers for itself only; a proposer or learner, which knows every acceptor,
asks them all (:mod:`paxos_service.servers.explain`).
"""

from __future__ import annotations

from paxos_service.client.operator import describe_value
from paxos_service.node.log_driver import LogDriver
from paxos_service.node.proposer_driver import ProposerDriver
from paxos_service.servers.acceptor import AcceptorServicer, state_key
from paxos_service.servers.explain import Dialer, explain_from_peers, explained_value, finish
from paxos_service.servers.learner import LearnerServicer
from paxos_service.servers.operator import PeerUnavailable
from paxos_service.storage.contract import StorageError
from paxos_service.transport import wire
from paxos_service.v1 import paxos_pb2 as pb


class AcceptorView:
    """An acceptor describes itself: its state is the ground truth the other
    roles' explanations are built from."""

    def __init__(self, servicer: AcceptorServicer) -> None:
        self.servicer = servicer

    def status(self) -> pb.GetNodeStatusResponse:
        s = self.servicer
        # The window keeps its instances sorted (for range reads). Reading
        # the list from the end keeps a status call O(1) in the usual case,
        # where a walk over every instance would block the acceptor's event
        # loop for most of a second per million instances.
        instances = s.window.instances
        states = s.window.states
        # Keys < 1 are single-decree instances, not the log's (servers/acceptor.py).
        highest_accepted = next(
            (i for i in reversed(instances) if states[i].accepted_value is not None), 0
        )
        detail = pb.AcceptorNodeStatus(
            status=s.status(),
            status_reason=self._status_reason(),
            instances=len(instances),
            highest_instance=max(instances[-1], 0) if instances else 0,
            highest_accepted_instance=max(highest_accepted, 0),
            no_vote_through=s.acceptor.no_vote_through,
            acceptors=list(s.identity.acceptors) if s.identity is not None else [],
            compacted_through=s.compacted_through,
            disk_bytes=s.committer.storage.disk_bytes(),
        )
        if not s.range_promise.ballot.is_zero:
            detail.range_from_instance = s.range_promise.from_instance
            detail.range_ballot.CopyFrom(wire.ballot_to_pb(s.range_promise.ballot))
        return pb.GetNodeStatusResponse(
            role=pb.NODE_ROLE_ACCEPTOR,
            node_id=s.config.node_id,
            listen=s.config.listen,
            acceptor=detail,
        )

    def _status_reason(self) -> str:
        s = self.servicer
        if s.committer.failure is not None:
            return f"storage failed: {s.committer.failure}"
        if s.identity is not None and not s.identity.voting:
            return s.identity.refusal()
        return ""

    async def explain(
        self, instance: int, log: bool, local_only: bool, value_limit: int, timeout: float
    ) -> pb.ExplainInstanceResponse:
        s = self.servicer
        # From disk if it left memory.
        state = await s.window.state_of(state_key(instance, log))
        range_promise = s.range_promise  # it binds both spaces (servers/acceptor.py)
        status = s.status()
        # What we report may include writes still being committed: say nothing
        # that is not on disk, as for every other reply.
        try:
            await s.committer.barrier()
        except StorageError as exc:
            raise PeerUnavailable(
                f"acceptor {s.config.node_id} could not persist its state ({exc})"
            ) from exc
        entry = pb.AcceptorInstanceState(
            acceptor_id=s.config.node_id,
            address=s.config.listen,
            reachable=True,
            status=status,
            no_vote=not s.acceptor.votes_on(instance),
        )
        if log and instance <= s.compacted_through:
            entry.compacted_through = s.compacted_through
        floor = range_promise.floor(instance)
        if not state.promised_ballot.is_zero:
            entry.instance_promised_ballot.CopyFrom(wire.ballot_to_pb(state.promised_ballot))
        if not floor.is_zero:
            entry.range_promised_ballot.CopyFrom(wire.ballot_to_pb(floor))
            entry.range_from_instance = range_promise.from_instance
        binding = max(state.promised_ballot, floor)
        if not binding.is_zero:
            entry.promised_ballot.CopyFrom(wire.ballot_to_pb(binding))
        if state.accepted_value is not None:
            entry.accepted_ballot.CopyFrom(wire.ballot_to_pb(state.accepted_ballot))
            entry.accepted_value.CopyFrom(explained_value(state.accepted_value, value_limit))
        promise = f"promised {binding}" if not binding.is_zero else "promised nothing"
        accepted = (
            f"accepted {describe_value(entry.accepted_value)} at ballot {state.accepted_ballot}"
            if state.accepted_value is not None
            else "accepted nothing"
        )
        return pb.ExplainInstanceResponse(
            instance=instance,
            summary=(
                f"acceptor {s.config.node_id} alone: {promise}, {accepted}. A value is chosen "
                "only when a majority accepts one ballot: ask a proposer or learner "
                "(`paxos explain`), which asks every acceptor"
            ),
            acceptors=[entry],
            answered_by_role=pb.NODE_ROLE_ACCEPTOR,
            answered_by_id=s.config.node_id,
        )


class ProposerView:
    """A proposer keeps no per-instance state: it explains by asking every
    acceptor and learner, and adds what its log driver knows."""

    def __init__(self, driver: ProposerDriver, log: LogDriver | None) -> None:
        self.driver = driver
        self.log = log
        config = driver.config
        self.dialer = Dialer(config.tls, config.max_value_bytes)

    def status(self) -> pb.GetNodeStatusResponse:
        config = self.driver.config
        detail = pb.ProposerNodeStatus(
            acceptors=config.acceptors,
            learners=config.learners,
            proposers=config.proposers,
            log_enabled=self.log is not None,
        )
        if self.log is not None:
            described = self.log.describe()
            detail.is_leader = described.is_leader
            detail.has_leader = self.log.leader.leader_id is not None
            detail.leader_id = described.leader_id
            detail.leader_address = described.leader_address
            if described.ballot.round:  # none until it first campaigns
                detail.ballot.CopyFrom(described.ballot)
            detail.chosen_through = described.chosen_through
            detail.next_instance = described.next_instance
            detail.compact_through = self.log.leader.compact_through
        return pb.GetNodeStatusResponse(
            role=pb.NODE_ROLE_PROPOSER,
            node_id=config.node_id,
            listen=config.listen,
            proposer=detail,
        )

    async def explain(
        self, instance: int, log: bool, local_only: bool, value_limit: int, timeout: float
    ) -> pb.ExplainInstanceResponse:
        config = self.driver.config
        if local_only:
            response = pb.ExplainInstanceResponse(instance=instance)
        else:
            response = await explain_from_peers(
                self.dialer, instance, log, value_limit, timeout, config.acceptors, config.learners
            )
        response.answered_by_role = pb.NODE_ROLE_PROPOSER
        response.answered_by_id = config.node_id
        if self.log is not None and log:
            response.log_chosen_through = self.log.leader.chosen_through
            response.log_next_instance = self.log.leader.next_instance
        if local_only:
            response.summary = (
                f"proposer {config.node_id} keeps no per-instance state; "
                f"the log is chosen through {response.log_chosen_through}"
            )
            return response
        return finish(response)


class LearnerView:
    """A learner explains with what it learned itself and every acceptor's state."""

    def __init__(self, servicer: LearnerServicer) -> None:
        self.servicer = servicer
        config = servicer.config
        self.dialer = Dialer(config.tls, config.max_value_bytes)

    def status(self) -> pb.GetNodeStatusResponse:
        s = self.servicer
        detail = pb.LearnerNodeStatus(
            acceptors=s.config.acceptors,
            proposers=s.config.proposers,
            kv_enabled=s.replica is not None,
            decisions_known=s.learner.decided_instances,
        )
        if s.replica is not None:
            detail.applied_instance = s.replica.applied_instance
            detail.highest_decided_instance = s.replica.highest_decided
            detail.lag_instances = s.replica.lag
            detail.snapshot_index = s.replica.snapshot_index
            if s.replica.snapshots.latest is not None:
                detail.snapshot_bytes = s.replica.snapshots.latest.size
            detail.disk_bytes = s.replica.disk_bytes()
        return pb.GetNodeStatusResponse(
            role=pb.NODE_ROLE_LEARNER,
            node_id=s.config.node_id,
            listen=s.config.listen,
            learner=detail,
        )

    def local(self, instance: int, log: bool, value_limit: int) -> pb.LearnerInstanceState:
        s = self.servicer
        state = pb.LearnerInstanceState(
            learner_id=s.config.node_id,
            address=s.config.listen,
            reachable=True,
            kv_enabled=s.replica is not None,
        )
        learned = (s.log_learner if log else s.learner).decision(instance)
        if learned is not None:
            state.decided = True
            state.value.CopyFrom(explained_value(learned.value, value_limit))
            state.ballot.CopyFrom(wire.ballot_to_pb(learned.ballot))
        if s.replica is not None and log:
            state.applied_instance = s.replica.applied_instance
            state.applied = instance <= s.replica.applied_instance
            state.decided = state.decided or state.applied
        return state

    async def explain(
        self, instance: int, log: bool, local_only: bool, value_limit: int, timeout: float
    ) -> pb.ExplainInstanceResponse:
        s = self.servicer
        me = self.local(instance, log, value_limit)
        if local_only:
            response = pb.ExplainInstanceResponse(instance=instance, learners=[me])
            response.summary = f"learner {s.config.node_id} " + (
                "knows the value is chosen" if me.decided else "knows of no decision"
            )
        else:
            response = await explain_from_peers(
                self.dialer,
                instance,
                log,
                value_limit,
                timeout,
                [p.address for p in s.acceptors],
                local_learner=me,
            )
        response.answered_by_role = pb.NODE_ROLE_LEARNER
        response.answered_by_id = s.config.node_id
        return response if local_only else finish(response)
