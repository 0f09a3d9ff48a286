"""How a proposer or learner explains an instance: it asks every acceptor for
its own state and every learner it knows what it has learned, then judges
(:mod:`paxos_service.servers.verdict`).

Each peer is dialled on a fresh channel with a short deadline, so a dead or
blackholed node becomes one line in the answer ("unreachable: ...") rather
than a failed call, and the explanation says why it matters.

Values are shown cut to ``value_limit`` bytes, with their size and SHA-256,
so that an explanation fits one message however large the values are and
acceptors' values can still be compared exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from paxos_service.core.config import ConfigError, TlsFiles
from paxos_service.servers.verdict import judge
from paxos_service.transport import tls, wire
from paxos_service.transport.channels import channel_options
from paxos_service.transport.diagnostics import FRESH_CONNECTION, rpc_reason
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import majority

#: Bytes of each value an explanation shows when the request sets no limit.
DEFAULT_VALUE_LIMIT = 4096

ROLE_NAMES = {
    pb.NODE_ROLE_ACCEPTOR: "acceptor",
    pb.NODE_ROLE_PROPOSER: "proposer",
    pb.NODE_ROLE_LEARNER: "learner",
}


def explained_value(value: bytes, limit: int = DEFAULT_VALUE_LIMIT) -> pb.ExplainedValue:
    """``value`` as an explanation shows it: cut to ``limit`` bytes, with its
    size and digest so that values can still be compared exactly."""
    return pb.ExplainedValue(
        value=value[:limit],
        size=len(value),
        sha256=hashlib.sha256(value).digest(),
        truncated=len(value) > limit,
    )


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
    log: bool,
    value_limit: int,
    timeout: float,
    acceptors: Sequence[str],
    learners: Sequence[str] = (),
    local_learner: pb.LearnerInstanceState | None = None,
) -> pb.ExplainInstanceResponse:
    """Ask every acceptor (``acceptors[i]`` is acceptor i) and learner at once."""
    request = pb.ExplainInstanceRequest(
        instance=instance, local_only=True, value_limit=value_limit, space=wire.space_of(log)
    )
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


def finish(response: pb.ExplainInstanceResponse) -> pb.ExplainInstanceResponse:
    """Fill in the verdict on the states gathered in ``response``."""
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
