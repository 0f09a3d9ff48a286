"""One key-value call's attempts: which failures are retried, whether the
request may have been applied by then, and the error once the deadline passed.

Unlike the single-decree client's one pass down the list, a key-value call
keeps going round the learners until its deadline: the request carries its
``RequestId``, so sending it again can never apply it twice, and the usual
cause of a refusal (a leader election) is over within a moment. Where to go
next and how long to pause is :class:`~paxos_service.client.failover.Failover`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from paxos_service.client.failover import Attempt, Failover, Servers, doubling_per_pass
from paxos_service.client.grpc_status import error_from, never_sent, status_of, trailing
from paxos_service.core.errors import (
    AuthenticationError,
    DeadlineExceededError,
    OutcomeUnknownError,
    PaxosError,
    UnavailableError,
)
from paxos_service.transport import tls as tls_channels
from paxos_service.transport.metadata import OUTCOME_METADATA, OUTCOME_UNKNOWN
from paxos_service.v1 import paxos_pb2 as pb

#: Backoff between passes over the learner list: doubles from BACKOFF_MIN, capped.
BACKOFF_MIN = 0.025
BACKOFF_MAX = 0.5
#: Longest single attempt when other learners could answer instead. Longer
#: than a learner's own attempt at its leader (1 s) plus an election.
ATTEMPT_TIMEOUT = 2.5
#: UNAVAILABLE details that prove the request was never acted on: gRPC could
#: not connect, or the learner found no leader (servers/kv: nothing appended).
#: Any other UNAVAILABLE (a connection lost mid-call) may follow an append.
_NOT_SENT = (
    "failed to connect",
    "dns resolution failed",
    "no leader accepted",
    "nothing was appended",  # servers/kv: a learner that stopped applying the log
)
_T = TypeVar("_T")


class KvCall:
    """The attempts of one call to the learners ``servers`` within ``timeout``."""

    def __init__(
        self,
        servers: Servers,
        timeout: float,
        request_id: pb.RequestId | None = None,
        *,
        writes: bool = False,
    ) -> None:
        self.failover = Failover(
            servers,
            timeout,
            attempt_timeout=ATTEMPT_TIMEOUT if len(servers.addresses) > 1 else None,
            backoff=doubling_per_pass(BACKOFF_MIN, BACKOFF_MAX),
        )
        self.servers = servers
        self.request_id = request_id
        self.writes = writes
        self.maybe_applied = False
        #: Learners that refused the TLS handshake in this call.
        self.refused_by: set[str] = set()

    async def run(self, call: Callable[[str, float], Awaitable[_T]]) -> _T:
        """``call(address, timeout)`` until a learner answers, or raise."""
        return await self.failover.run(call, self.failed, self.error)

    def next(self) -> Attempt | None:
        return self.failover.next()

    def failed(self, address: str, exc: grpc.RpcError) -> float:
        """Record a failed attempt. Raise if it is final; else return the pause
        before the next attempt."""
        code, details = status_of(exc)
        refusal = tls_channels.describe_refusal(code, details, tls=self.servers.tls)
        if refusal is not None and self.servers.tls:
            # Nothing was sent. Another learner may take our certificate;
            # once every one has refused it, waiting cannot help.
            error: PaxosError = AuthenticationError(
                f"{address}: {refusal}", grpc.StatusCode.UNAUTHENTICATED
            )
            self.refused_by.add(address)
            if len(self.refused_by) == len(set(self.servers.addresses)) and not self.maybe_applied:
                raise error
        elif code is grpc.StatusCode.UNAVAILABLE:
            if not never_sent(details, _NOT_SENT):
                self.maybe_applied = True
            # Without TLS a hang-up may be a TLS server's refusal, or just a
            # dropped connection: keep trying, and say what it may be.
            hint = f" ({refusal})" if refusal is not None else ""
            error = UnavailableError(f"{address}: {details}{hint}", code)
        elif code is grpc.StatusCode.ABORTED and OUTCOME_UNKNOWN in details:
            self.maybe_applied = True
            error = PaxosError(f"{address}: {details}", code)
            if trailing(exc, OUTCOME_METADATA) == "forgotten":
                # The store forgot the request: no retry can tell. Never "failed".
                raise self._forgotten(address, details, code)
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            self.maybe_applied = True
            error = DeadlineExceededError(f"{address}: {details}", code)
        else:
            raise error_from(exc, address, tls=self.servers.tls) from None
        return self.failover.failed(error)

    def broken(self, address: str, error: PaxosError, *, was_healthy: bool) -> float:
        """Record a watch stream at ``address`` that broke and can resume;
        return the pause. A stream that had been working gets a fresh budget
        for reconnecting, starting with the next learner."""
        if was_healthy:
            self.failover.renew(address)
        return self.failover.failed(error)

    def _forgotten(self, address: str, details: str, code: grpc.StatusCode) -> PaxosError:
        if self.request_id is None:
            return PaxosError(f"{address}: {details}", code)
        cid, seq = self.request_id.client_id, self.request_id.sequence
        return OutcomeUnknownError(
            f"outcome unknown: request (client_id={cid}, sequence={seq}) is older than the "
            f"sequences the store remembers; it may or may not have been applied, and no "
            f"retry or outcome() can tell ({address}: {details})",
            code,
            client_id=cid,
            sequence=seq,
        )

    def error(self) -> PaxosError:
        """The error for a call whose deadline passed without an answer."""
        last_error, timeout = self.failover.last, self.failover.timeout
        last = f" (last: {last_error})" if last_error is not None else ""
        if self.writes and self.maybe_applied and self.request_id is not None:
            cid, seq = self.request_id.client_id, self.request_id.sequence
            return OutcomeUnknownError(
                f"outcome unknown after {timeout:g}s: request (client_id={cid}, "
                f"sequence={seq}) may or may not have been applied; retrying it is safe, "
                f"or ask outcome({cid}, {seq}){last}",
                grpc.StatusCode.DEADLINE_EXCEEDED,
                client_id=cid,
                sequence=seq,
            )
        if isinstance(last_error, AuthenticationError):
            return last_error
        if isinstance(last_error, UnavailableError):
            return UnavailableError(
                f"no {self.servers.what} could serve the request within {timeout:g}s{last}",
                grpc.StatusCode.UNAVAILABLE,
            )
        return DeadlineExceededError(
            f"no {self.servers.what} answered within {timeout:g}s{last}",
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
