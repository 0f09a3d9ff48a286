"""``OperatorService``: what ``paxos status`` and ``paxos explain`` ask a node.

Every role server registers it next to its own service, so one client can ask
any node what it is (``GetNodeStatus``) without knowing its role first. It
only *reads* the role's live state (the acceptor's in-memory states and range
promise, the proposer's log driver, the learner's replica): nothing is copied
or stored, so an answer is as fresh as the node itself.

``ExplainInstance`` answers "why is instance 42 stuck?". Whether a value is
chosen is a property of a majority of acceptors, which no single acceptor
knows, so proposers and learners (which know every acceptor) ask each acceptor
for its own state, ask the learners they know what they have learned, and
compute a verdict (:func:`judge`). An acceptor answers for itself only. Each
peer is dialled on a fresh channel with a short deadline, so a dead or
blackholed node becomes one line in the answer ("unreachable: ...") rather
than a failed call, and the explanation says why it matters.

Values are shown cut to ``value_limit`` bytes, with their size and SHA-256,
so that an explanation fits one message however large the values are and
acceptors' values can still be compared exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from paxos_service import log_entry, tls, wire
from paxos_service.config import ConfigError, TlsFiles
from paxos_service.server import channel_options
from paxos_service.storage import StorageError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import majority

if TYPE_CHECKING:
    from paxos_service.acceptor_server import AcceptorServicer
    from paxos_service.learner_server import LearnerServicer
    from paxos_service.log_driver import LogDriver
    from paxos_service.proposer_server import ProposerDriver

SERVICE_NAME = "paxos_service.v1.OperatorService"
#: Bytes of each value an explanation shows when the request sets no limit.
DEFAULT_VALUE_LIMIT = 4096
#: Longest an explanation waits for one acceptor or learner. Short, because a
#: node that does not answer quickly is the news, not something to wait for.
PEER_TIMEOUT = 2.0
#: Channel option: do not share connections with the process's other channels.
FRESH_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
#: Kept back from the caller's deadline so it gets our answer, not DEADLINE_EXCEEDED.
_DEADLINE_MARGIN = 0.1

ROLE_NAMES = {
    pb.NODE_ROLE_ACCEPTOR: "acceptor",
    pb.NODE_ROLE_PROPOSER: "proposer",
    pb.NODE_ROLE_LEARNER: "learner",
}


class PeerUnavailable(Exception):
    """This node cannot describe its own state (e.g. its storage failed)."""


# Values and reasons, for humans --------------------------------------------------


def explained_value(value: bytes, limit: int = DEFAULT_VALUE_LIMIT) -> pb.ExplainedValue:
    return pb.ExplainedValue(
        value=value[:limit],
        size=len(value),
        sha256=hashlib.sha256(value).digest(),
        truncated=len(value) > limit,
    )


def describe_value(value: pb.ExplainedValue, width: int = 40) -> str:
    """A short, one-line description: quoted text, a log entry's commands, or
    the size and digest of anything else."""
    if value.value.startswith(log_entry.MAGIC):
        entry = None if value.truncated else log_entry.decode(value.value)
        if entry is None:
            return f"log entry ({value.size} bytes)"
        if entry.noop:
            return "log no-op"
        ops = [_describe_command(c) for c in entry.commands]
        shown = ", ".join(ops[:3]) + (", ..." if len(ops) > 3 else "")
        return f"log entry, {len(ops)} command{'s' if len(ops) != 1 else ''} ({shown})"
    try:
        text = value.value.decode()
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable() and not value.truncated and len(text) <= width:
        return repr(text)
    if text and text.isprintable():
        return repr(text[:width]) + f"... ({value.size} bytes)"
    return f"{value.size} bytes, sha256 {value.sha256.hex()[:12]}"


def _describe_command(command: pb.Command) -> str:
    op = command.WhichOneof("op")
    key = {
        "put": command.put.key,
        "delete": command.delete.key,
        "compare_and_swap": command.compare_and_swap.key,
        "get": command.get.key,
        "range": command.range.prefix,
    }.get(op or "", "")
    name = {"compare_and_swap": "cas", "delete": "del"}.get(op or "", op or "?")
    return f"{name} {key[:24]!r}" if op else "?"


def rpc_reason(exc: BaseException, *, with_tls: bool = False) -> str:
    """Why a call failed, in a few words: "connection refused", "no answer
    before the deadline", a refused TLS handshake in words, or the status code
    and details."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
        details = (exc.details() or "").strip() if hasattr(exc, "details") else ""
        refusal = tls.describe_refusal(code, details, tls=with_tls)
        if refusal is not None:
            return refusal
        if code is grpc.StatusCode.UNAVAILABLE:
            lowered = details.lower()
            for known in ("connection refused", "no route to host", "connection reset"):
                if known in lowered:
                    return known
            if "dns resolution failed" in lowered or "name resolution" in lowered:
                return "cannot resolve the host name"
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return "no answer before the deadline"
        return f"{code.name}: {details}" if details else code.name
    return f"{type(exc).__name__}: {exc}"


def _ballot(msg: pb.Ballot) -> str:
    return f"{msg.round}.{msg.proposer_id}"


def _key(msg: pb.Ballot) -> tuple[int, int]:
    return (msg.round, msg.proposer_id)


def _ids(word: str, ids: Sequence[int]) -> str:
    return f"{word}{'s' if len(ids) != 1 else ''} " + ", ".join(str(i) for i in ids)


# The verdict ----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    verdict: pb.InstanceVerdict.ValueType
    summary: str
    chosen_value: pb.ExplainedValue | None = None
    chosen_ballot: pb.Ballot | None = None


def judge(
    instance: int,
    acceptors: Sequence[pb.AcceptorInstanceState],
    learners: Sequence[pb.LearnerInstanceState] = (),
    *,
    log_chosen_through: int = 0,
    log_next_instance: int = 0,
) -> Verdict:
    """Whether ``instance`` is chosen, from every acceptor's state (all of the
    cluster's acceptors, reachable or not) and what learners and the log know.

    Chosen means a majority of *all* acceptors accepted one ballot: that is the
    definition, so it is checked first. A learner or the log leader may know
    of a choice that the acceptors no longer show under one ballot (a later
    ballot re-proposed the chosen value to some of them); that counts too.
    Otherwise the summary says what is missing, and why, as far as the states
    tell.
    """
    total = len(acceptors)
    quorum = majority(total)
    answered = [a for a in acceptors if a.reachable]
    down = [a for a in acceptors if not a.reachable]
    votes: dict[tuple[int, int], list[pb.AcceptorInstanceState]] = defaultdict(list)
    for a in answered:
        if a.HasField("accepted_ballot"):
            votes[_key(a.accepted_ballot)].append(a)
    down_note = (
        "; unreachable: "
        + "; ".join(f"acceptor {a.acceptor_id} ({a.address}: {a.error})" for a in down)
        if down
        else ""
    )

    majorities = [k for k, voters in votes.items() if len(voters) >= quorum]
    if majorities:
        voters = votes[max(majorities)]
        first = voters[0]
        summary = (
            f"chosen: {describe_value(first.accepted_value)} at ballot "
            f"{_ballot(first.accepted_ballot)}, accepted by "
            f"{_ids('acceptor', [a.acceptor_id for a in voters])} "
            f"({len(voters)} of {total}; {quorum} needed)"
        )
        behind = [
            f"learner {lr.learner_id} has applied only through {lr.applied_instance}"
            if lr.kv_enabled
            else f"learner {lr.learner_id} was not told yet"
            for lr in learners
            if lr.reachable and not lr.decided
        ]
        if behind:
            summary += "; " + "; ".join(behind) + " (learners catch up from the acceptors)"
        return Verdict(
            pb.INSTANCE_VERDICT_CHOSEN, summary, first.accepted_value, first.accepted_ballot
        )

    highest_accepted = max(votes) if votes else None
    knower = next((lr for lr in learners if lr.reachable and lr.decided), None)
    if knower is not None or (log_chosen_through and instance <= log_chosen_through):
        if knower is not None:
            who = f"learner {knower.learner_id} knows it"
            if knower.applied and not knower.HasField("value"):
                who += " (applied; it keeps no copy of the value)"
        else:
            who = f"the log is chosen through instance {log_chosen_through}"
        value: pb.ExplainedValue | None = None
        ballot: pb.Ballot | None = None
        if knower is not None and knower.HasField("value"):
            value, ballot = knower.value, knower.ballot
        elif highest_accepted is not None and len(answered) >= quorum:
            # Every ballot above the chosen one carries the chosen value, and
            # any majority includes an acceptor that accepted the chosen ballot.
            top = votes[highest_accepted][0]
            value, ballot = top.accepted_value, top.accepted_ballot
        shown = f" ({describe_value(value)})" if value is not None else ""
        why = (
            "a later ballot re-proposed the value to some of them"
            if len(answered) >= quorum
            else "too few of them answered"
        )
        return Verdict(
            pb.INSTANCE_VERDICT_CHOSEN,
            f"chosen{shown}: {who}; the acceptors that answered show no majority for one "
            f"ballot ({why}){down_note}",
            value,
            ballot,
        )

    accepted_note = "; ".join(
        f"{_ids('acceptor', [a.acceptor_id for a in voters])} accepted "
        f"{describe_value(voters[0].accepted_value)} at ballot {_ballot(voters[0].accepted_ballot)}"
        for _, voters in sorted(votes.items(), reverse=True)
    )
    if len(answered) < quorum:
        seen = f"; {accepted_note}" if accepted_note else "; none of them accepted anything"
        return Verdict(
            pb.INSTANCE_VERDICT_UNKNOWN,
            f"unknown: only {len(answered)} of {total} acceptors answered and {quorum} are "
            f"needed to tell whether a value is chosen{seen}{down_note}",
        )

    promised = [a for a in answered if a.HasField("promised_ballot")]
    top_promise = max((_key(a.promised_ballot) for a in promised), default=None)
    if not votes:
        if top_promise is None:
            why = (
                "; no acceptor has promised a ballot for it: nothing was proposed for "
                f"instance {instance}"
            )
        else:
            holders = [a for a in promised if _key(a.promised_ballot) == top_promise]
            ballot_text = _ballot(holders[0].promised_ballot)
            by_range = all(
                a.HasField("range_promised_ballot") and _key(a.range_promised_ballot) == top_promise
                for a in holders
            )
            if by_range:
                why = (
                    f"; {_ids('acceptor', [a.acceptor_id for a in holders])} promised ballot "
                    f"{ballot_text} to the log leader for every instance from "
                    f"{holders[0].range_from_instance}, and no Accept for this one arrived"
                )
                if log_next_instance and instance >= log_next_instance:
                    why += f": the log has not reached it (next instance {log_next_instance})"
            else:
                why = (
                    f"; {_ids('acceptor', [a.acceptor_id for a in holders])} promised ballot "
                    f"{ballot_text}, but its proposer's Accept never reached them (it may "
                    "have crashed between the phases, or is still running)"
                )
        return Verdict(pb.INSTANCE_VERDICT_EMPTY, f"no acceptor accepted anything{why}{down_note}")

    assert highest_accepted is not None
    empty = [a.acceptor_id for a in answered if not a.HasField("accepted_ballot")]
    parts = [f"stuck: no ballot has a majority ({quorum} of {total} needed): {accepted_note}"]
    if empty:
        parts.append(f"{_ids('acceptor', empty)} accepted nothing")
    if top_promise is not None and top_promise > highest_accepted:
        parts.append(
            f"ballot {top_promise[0]}.{top_promise[1]} is promised but was accepted nowhere: "
            "its proposer did not get its Accepts to a majority (it may have crashed, or "
            "is still running)"
        )
    summary = "; ".join(parts) + down_note
    summary += (
        ". Proposing again for this instance finishes it: a new ballot adopts the "
        "highest-ballot value a majority reports (a log leader does this by itself)"
    )
    return Verdict(pb.INSTANCE_VERDICT_STUCK, summary)


# Asking other nodes ---------------------------------------------------------------


@dataclass(frozen=True)
class Dialer:
    """How this node dials peers: its TLS files (its own certificate is its
    client certificate too) and message size limits."""

    files: TlsFiles | None
    max_value_bytes: int

    def channel(self, address: str) -> grpc.aio.Channel:
        """A channel with a connection of its own: gRPC otherwise shares
        connections between a process's channels to one address, and this
        process's other channel to a peer that just came back may still be
        waiting to reconnect, which would report a live peer as unreachable."""
        options = [*channel_options(self.max_value_bytes), FRESH_CONNECTION]
        return tls.aio_channel(address, self.files, options)


async def ask_acceptor(
    dialer: Dialer,
    acceptor_id: int,
    address: str,
    request: pb.ExplainInstanceRequest,
    timeout: float,
) -> pb.AcceptorInstanceState:
    """Acceptor ``acceptor_id``'s own state for the instance, or an entry that
    says why it could not be read."""
    failed = pb.AcceptorInstanceState(acceptor_id=acceptor_id, address=address, reachable=False)
    try:
        async with dialer.channel(address) as channel:
            reply = await pb_grpc.OperatorServiceStub(channel).ExplainInstance(
                request, timeout=timeout
            )
    except grpc.RpcError as exc:
        failed.error = rpc_reason(exc, with_tls=dialer.files is not None)
        return failed
    except ConfigError as exc:  # our TLS files went bad since start
        failed.error = str(exc)
        return failed
    if reply.answered_by_role != pb.NODE_ROLE_ACCEPTOR or len(reply.acceptors) != 1:
        role = ROLE_NAMES.get(reply.answered_by_role, "unknown node")
        failed.error = f"a {role} answers at this address, not an acceptor: check --acceptors"
        return failed
    state = reply.acceptors[0]
    if state.acceptor_id != acceptor_id:
        failed.error = (
            f"answers as acceptor {state.acceptor_id} but is listed as acceptor {acceptor_id}: "
            "list acceptors in id order"
        )
        return failed
    state.address = address
    return state


async def ask_learner(
    dialer: Dialer, address: str, request: pb.ExplainInstanceRequest, timeout: float
) -> pb.LearnerInstanceState:
    failed = pb.LearnerInstanceState(address=address, reachable=False)
    try:
        async with dialer.channel(address) as channel:
            reply = await pb_grpc.OperatorServiceStub(channel).ExplainInstance(
                request, timeout=timeout
            )
    except grpc.RpcError as exc:
        failed.error = rpc_reason(exc, with_tls=dialer.files is not None)
        return failed
    except ConfigError as exc:  # our TLS files went bad since start
        failed.error = str(exc)
        return failed
    if reply.answered_by_role != pb.NODE_ROLE_LEARNER or len(reply.learners) != 1:
        failed.error = "not a learner at this address: check --learners"
        return failed
    state = reply.learners[0]
    state.address = address
    return state


async def explain_from_peers(
    dialer: Dialer,
    instance: int,
    value_limit: int,
    timeout: float,
    acceptors: Sequence[str],
    learners: Sequence[str] = (),
    local_learner: pb.LearnerInstanceState | None = None,
) -> pb.ExplainInstanceResponse:
    """Ask every acceptor (``acceptors[i]`` is acceptor i) and learner at once."""
    request = pb.ExplainInstanceRequest(instance=instance, local_only=True, value_limit=value_limit)
    acceptor_states, learner_states = await asyncio.gather(
        asyncio.gather(
            *(ask_acceptor(dialer, i, a, request, timeout) for i, a in enumerate(acceptors))
        ),
        asyncio.gather(*(ask_learner(dialer, a, request, timeout) for a in learners)),
    )
    response = pb.ExplainInstanceResponse(instance=instance, quorum=majority(len(acceptors)))
    response.acceptors.extend(acceptor_states)
    if local_learner is not None:
        response.learners.append(local_learner)
    response.learners.extend(learner_states)
    return response


def _finish(response: pb.ExplainInstanceResponse) -> pb.ExplainInstanceResponse:
    verdict = judge(
        response.instance,
        response.acceptors,
        response.learners,
        log_chosen_through=response.log_chosen_through,
        log_next_instance=response.log_next_instance,
    )
    response.verdict = verdict.verdict
    response.summary = verdict.summary
    if verdict.chosen_value is not None:
        response.chosen_value.CopyFrom(verdict.chosen_value)
    if verdict.chosen_ballot is not None:
        response.chosen_ballot.CopyFrom(verdict.chosen_ballot)
    return response


# The three roles -------------------------------------------------------------------


class NodeView(Protocol):
    """One role's answers to the operator service."""

    def status(self) -> pb.GetNodeStatusResponse: ...

    async def explain(
        self, instance: int, local_only: bool, value_limit: int, timeout: float
    ) -> pb.ExplainInstanceResponse: ...


class AcceptorView:
    """An acceptor describes itself: its state is the ground truth the other
    roles' explanations are built from."""

    def __init__(self, servicer: AcceptorServicer) -> None:
        self.servicer = servicer

    def status(self) -> pb.GetNodeStatusResponse:
        s = self.servicer
        # The servicer keeps its instances sorted (for range reads). Reading
        # the list from the end keeps a status call O(1) in the usual case,
        # where a walk over every instance would block the acceptor's event
        # loop for most of a second per million instances.
        instances = s._instances
        highest_accepted = next(
            (i for i in reversed(instances) if s.states[i].accepted_value is not None), 0
        )
        detail = pb.AcceptorNodeStatus(
            status=s.status(),
            status_reason=self._status_reason(),
            instances=len(instances),
            highest_instance=instances[-1] if instances else 0,
            highest_accepted_instance=highest_accepted,
            no_vote_through=s.acceptor.no_vote_through,
            acceptors=list(s.identity.acceptors) if s.identity is not None else [],
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
        self, instance: int, local_only: bool, value_limit: int, timeout: float
    ) -> pb.ExplainInstanceResponse:
        s = self.servicer
        state = await s.state_of(instance)  # from disk if it left memory
        range_promise = s.range_promise
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
        return pb.GetNodeStatusResponse(
            role=pb.NODE_ROLE_PROPOSER,
            node_id=config.node_id,
            listen=config.listen,
            proposer=detail,
        )

    async def explain(
        self, instance: int, local_only: bool, value_limit: int, timeout: float
    ) -> pb.ExplainInstanceResponse:
        config = self.driver.config
        if local_only:
            response = pb.ExplainInstanceResponse(instance=instance)
        else:
            response = await explain_from_peers(
                self.dialer, instance, value_limit, timeout, config.acceptors, config.learners
            )
        response.answered_by_role = pb.NODE_ROLE_PROPOSER
        response.answered_by_id = config.node_id
        if self.log is not None:
            response.log_chosen_through = self.log.leader.chosen_through
            response.log_next_instance = self.log.leader.next_instance
        if local_only:
            response.summary = (
                f"proposer {config.node_id} keeps no per-instance state; "
                f"the log is chosen through {response.log_chosen_through}"
            )
            return response
        return _finish(response)


class LearnerView:
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
        return pb.GetNodeStatusResponse(
            role=pb.NODE_ROLE_LEARNER,
            node_id=s.config.node_id,
            listen=s.config.listen,
            learner=detail,
        )

    def local(self, instance: int, value_limit: int) -> pb.LearnerInstanceState:
        s = self.servicer
        state = pb.LearnerInstanceState(
            learner_id=s.config.node_id,
            address=s.config.listen,
            reachable=True,
            kv_enabled=s.replica is not None,
        )
        learned = s.learner.decision(instance)
        if learned is not None:
            state.decided = True
            state.value.CopyFrom(explained_value(learned.value, value_limit))
            state.ballot.CopyFrom(wire.ballot_to_pb(learned.ballot))
        if s.replica is not None:
            state.applied_instance = s.replica.applied_instance
            state.applied = instance <= s.replica.applied_instance
            state.decided = state.decided or state.applied
        return state

    async def explain(
        self, instance: int, local_only: bool, value_limit: int, timeout: float
    ) -> pb.ExplainInstanceResponse:
        s = self.servicer
        me = self.local(instance, value_limit)
        if local_only:
            response = pb.ExplainInstanceResponse(instance=instance, learners=[me])
            response.summary = f"learner {s.config.node_id} " + (
                "knows the value is chosen" if me.decided else "knows of no decision"
            )
        else:
            response = await explain_from_peers(
                self.dialer,
                instance,
                value_limit,
                timeout,
                [p.address for p in s.acceptors],
                local_learner=me,
            )
        response.answered_by_role = pb.NODE_ROLE_LEARNER
        response.answered_by_id = s.config.node_id
        return response if local_only else _finish(response)


# The servicer ------------------------------------------------------------------


class OperatorServicer(pb_grpc.OperatorServiceServicer):
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
        except wire.WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        timeout = PEER_TIMEOUT
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = max(0.05, min(timeout, remaining - _DEADLINE_MARGIN))
        try:
            return await self.view.explain(
                instance, request.local_only, request.value_limit or DEFAULT_VALUE_LIMIT, timeout
            )
        except PeerUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


def add_to_server(view: NodeView, server: grpc.aio.Server) -> None:
    """Register the operator service for ``view`` (call from a role's register)."""
    pb_grpc.add_OperatorServiceServicer_to_server(OperatorServicer(view), server)
