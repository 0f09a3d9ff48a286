"""Python client stub for other services.

    from paxos_service.client import PaxosClient

    with PaxosClient(proposers=["127.0.0.1:50054"], learners=["127.0.0.1:50056"]) as c:
        chosen = c.propose(1, b"hello")   # the value chosen for instance 1
        c.get(1)                          # b"hello"; None while undecided

Every call has a deadline (``timeout``, 5 s by default). A proposer or learner
that answers UNAVAILABLE, or cannot be reached, is skipped for the next one in
the list. Errors are :class:`PaxosError` subclasses, never raw gRPC errors.
Proposing again for an instance is always safe: Paxos returns the value
already chosen, so a retry after an unknown outcome cannot choose twice.

With ``tls=TlsFiles(ca, cert, key)`` every channel is mutual TLS: the client
trusts only the cluster CA and presents its own certificate (see
docs/security.md). A refused certificate is :class:`AuthenticationError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

import grpc

from paxos_service import tls as tls_channels
from paxos_service.config import DEFAULT_MAX_VALUE_BYTES, TlsFiles
from paxos_service.server import channel_options
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from paxos_service.kv_client import AsyncKvClient, KvClient

DEFAULT_TIMEOUT = 5.0
_T = TypeVar("_T")


class PaxosError(Exception):
    """Base class of every error this client raises."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class InvalidArgumentError(PaxosError):
    """The request was malformed (empty or oversized value, instance 0, ...)."""


class UnavailableError(PaxosError):
    """No server could make progress (unreachable, or no quorum of acceptors)."""


class AuthenticationError(PaxosError):
    """With TLS: the handshake failed (code UNAUTHENTICATED): the server
    refused this client's certificate (not signed by the cluster CA, expired),
    or this client refused the server's. Or the server refused the
    certificate's role (PERMISSION_DENIED: a client certificate calling a
    peer-only method). Retrying does not help; the message says what to check.

    A plaintext client that a TLS server hangs up on gets
    :class:`UnavailableError` saying that the server may require TLS: without
    TLS, a dropped connection is not proof of a refusal."""


class DeadlineExceededError(PaxosError):
    """The deadline passed. For ``propose`` the outcome is unknown: the value
    may still be chosen. Proposing again (or ``get``) finds out safely."""


class OutcomeUnknownError(PaxosError):
    """A key-value write's deadline passed after an attempt that may have been
    applied. Sending the same request again is safe (the state machine applies
    a ``(client_id, sequence)`` once), and ``kv.outcome(client_id, sequence)``
    says whether it was applied and what it returned."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        *,
        client_id: int,
        sequence: int,
    ) -> None:
        super().__init__(message, code)
        self.client_id = client_id
        self.sequence = sequence


@dataclass(frozen=True)
class ProposeResult:
    instance: int
    value: bytes
    own_value_chosen: bool
    ballot: tuple[int, int]


def _error_from(exc: grpc.RpcError, address: str, *, tls: bool = False) -> PaxosError:
    # grpc.aio's AioRpcError is no grpc.Call, but has the same two methods.
    has_status = isinstance(exc, grpc.Call | grpc.aio.AioRpcError)
    code = exc.code() if has_status else None
    details = (exc.details() if has_status else str(exc)) or ""
    return error_for(code, details, address, tls=tls)


def error_for(code: grpc.StatusCode | None, details: str, address: str, *, tls: bool) -> PaxosError:
    """The typed error for a failed call to ``address``. A failed TLS
    handshake reaches us as UNAVAILABLE; it becomes :class:`AuthenticationError`
    (with TLS), or an UnavailableError with a hint (without)."""
    refusal = tls_channels.describe_refusal(code, details, tls=tls)
    if refusal is not None and tls:
        return AuthenticationError(f"{address}: {refusal}", grpc.StatusCode.UNAUTHENTICATED)
    if refusal is not None:
        return UnavailableError(f"{address}: {details} ({refusal})", code)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        assert code is not None
        return AuthenticationError(f"{address}: {code.name}: {details}", code)
    message = f"{address}: {details}"
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(message, code)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(message, code)
    if code is grpc.StatusCode.UNAVAILABLE:
        return UnavailableError(message, code)
    name = code.name if code is not None else "UNKNOWN"
    return PaxosError(f"{address}: {name}: {details}", code)


def _result(response: pb.ProposeResponse) -> ProposeResult:
    return ProposeResult(
        instance=response.instance,
        value=response.value,
        own_value_chosen=response.own_value_chosen,
        ballot=(response.ballot.round, response.ballot.proposer_id),
    )


def _check_args(instance: int, value: bytes | None = None) -> None:
    if not isinstance(instance, int) or instance < 1:
        raise InvalidArgumentError(f"instance must be an integer >= 1, got {instance!r}")
    if value is not None and not isinstance(value, bytes):
        raise InvalidArgumentError(f"value must be bytes, got {type(value).__name__}")


class _Servers:
    """An ordered list of servers of one kind; calls start with the last one
    that answered."""

    def __init__(self, addresses: Sequence[str], what: str, *, tls: bool = False) -> None:
        self.addresses = list(addresses)
        self.what = what
        self.preferred = 0
        #: Whether the channels use TLS (it changes what a refusal means).
        self.tls = tls


class _Failover:
    """One call's walk down a server list within one deadline: UNAVAILABLE
    moves on to the next server, any other error is final. A refused TLS
    handshake moves on too (one server may have a bad certificate), and is
    what the call reports if no server answers.

        for i, remaining in (attempt := _Failover(servers, timeout)):
            try: response = call(i, remaining)
            except grpc.RpcError as exc: attempt.failed(i, exc); continue
            return attempt.succeeded(i, response)
        raise attempt.error()
    """

    def __init__(self, servers: _Servers, timeout: float) -> None:
        if not servers.addresses:
            raise InvalidArgumentError(f"no {servers.what} addresses configured")
        self.servers = servers
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.last: PaxosError | None = None
        self.refused: AuthenticationError | None = None

    def __iter__(self) -> Iterator[tuple[int, float]]:
        n = len(self.servers.addresses)
        for k in range(n):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return
            yield (self.servers.preferred + k) % n, remaining

    def failed(self, index: int, exc: grpc.RpcError) -> None:
        self.last = _error_from(exc, self.servers.addresses[index], tls=self.servers.tls)
        if isinstance(self.last, AuthenticationError) and self.last.code is (
            grpc.StatusCode.UNAUTHENTICATED
        ):
            self.refused = self.last
        elif not isinstance(self.last, UnavailableError):
            raise self.last from None

    def succeeded(self, index: int, response: _T) -> _T:
        self.servers.preferred = index
        return response

    def error(self) -> PaxosError:
        if self.refused is not None:
            return self.refused
        if self.last is not None:
            return self.last
        return DeadlineExceededError(f"no {self.servers.what} answered within {self.timeout}s")


class PaxosClient:
    """Blocking client. Share one instance; close it (or use ``with``) when done."""

    def __init__(
        self,
        proposers: Sequence[str] = (),
        learners: Sequence[str] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        tls: TlsFiles | None = None,
    ) -> None:
        self.timeout = timeout
        self.tls = tls
        options = channel_options(max_value_bytes)
        self._proposers = _Servers(proposers, "proposer", tls=tls is not None)
        self._learners = _Servers(learners, "learner", tls=tls is not None)
        self._channels = [
            tls_channels.sync_channel(a, tls, options) for a in (*proposers, *learners)
        ]
        self._proposer_stubs = [
            pb_grpc.ProposerServiceStub(c) for c in self._channels[: len(proposers)]
        ]
        self._learner_stubs = [
            pb_grpc.LearnerServiceStub(c) for c in self._channels[len(proposers) :]
        ]
        self._max_value_bytes = max_value_bytes
        self._kv: KvClient | None = None
        self._kv_lock = threading.Lock()

    @property
    def kv(self) -> KvClient:
        """The key-value store on the learners (created on first use)."""
        with self._kv_lock:
            if self._kv is None:
                from paxos_service.kv_client import KvClient

                self._kv = KvClient(
                    self._learners.addresses,
                    timeout=self.timeout,
                    max_value_bytes=self._max_value_bytes,
                    tls=self.tls,
                )
            return self._kv

    def propose(self, instance: int, value: bytes, *, timeout: float | None = None) -> bytes:
        """Propose ``value`` for ``instance``; return the value chosen for it."""
        return self.propose_detailed(instance, value, timeout=timeout).value

    def propose_detailed(
        self, instance: int, value: bytes, *, timeout: float | None = None
    ) -> ProposeResult:
        """Like :meth:`propose`, also saying whether our value won, and its ballot."""
        _check_args(instance, value)
        request = pb.ProposeRequest(instance=instance, value=value)
        attempt = _Failover(self._proposers, timeout or self.timeout)
        for i, remaining in attempt:
            try:
                response = self._proposer_stubs[i].Propose(request, timeout=remaining)
            except grpc.RpcError as exc:
                attempt.failed(i, exc)
                continue
            return _result(attempt.succeeded(i, response))
        raise attempt.error()

    def get(self, instance: int, *, timeout: float | None = None) -> bytes | None:
        """The value chosen for ``instance``, or None if none is chosen yet."""
        _check_args(instance)
        request = pb.GetDecisionRequest(instance=instance)
        attempt = _Failover(self._learners, timeout or self.timeout)
        for i, remaining in attempt:
            try:
                response = self._learner_stubs[i].GetDecision(request, timeout=remaining)
            except grpc.RpcError as exc:
                attempt.failed(i, exc)
                continue
            decision = attempt.succeeded(i, response)
            return decision.value if decision.decided else None
        raise attempt.error()

    def close(self) -> None:
        if self._kv is not None:
            self._kv.close()
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncPaxosClient:
    """The asyncio twin of :class:`PaxosClient` (same methods, awaited)."""

    def __init__(
        self,
        proposers: Sequence[str] = (),
        learners: Sequence[str] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        tls: TlsFiles | None = None,
    ) -> None:
        self.timeout = timeout
        self.tls = tls
        options = channel_options(max_value_bytes)
        self._proposers = _Servers(proposers, "proposer", tls=tls is not None)
        self._learners = _Servers(learners, "learner", tls=tls is not None)
        self._channels = [
            tls_channels.aio_channel(a, tls, options) for a in (*proposers, *learners)
        ]
        self._proposer_stubs = [
            pb_grpc.ProposerServiceStub(c) for c in self._channels[: len(proposers)]
        ]
        self._learner_stubs = [
            pb_grpc.LearnerServiceStub(c) for c in self._channels[len(proposers) :]
        ]
        self._max_value_bytes = max_value_bytes
        self._kv: AsyncKvClient | None = None

    @property
    def kv(self) -> AsyncKvClient:
        """The key-value store on the learners (created on first use)."""
        if self._kv is None:
            from paxos_service.kv_client import AsyncKvClient

            self._kv = AsyncKvClient(
                self._learners.addresses,
                timeout=self.timeout,
                max_value_bytes=self._max_value_bytes,
                tls=self.tls,
            )
        return self._kv

    async def propose(self, instance: int, value: bytes, *, timeout: float | None = None) -> bytes:
        return (await self.propose_detailed(instance, value, timeout=timeout)).value

    async def propose_detailed(
        self, instance: int, value: bytes, *, timeout: float | None = None
    ) -> ProposeResult:
        _check_args(instance, value)
        request = pb.ProposeRequest(instance=instance, value=value)
        attempt = _Failover(self._proposers, timeout or self.timeout)
        for i, remaining in attempt:
            try:
                response = await self._proposer_stubs[i].Propose(request, timeout=remaining)
            except grpc.RpcError as exc:
                attempt.failed(i, exc)
                continue
            return _result(attempt.succeeded(i, response))
        raise attempt.error()

    async def get(self, instance: int, *, timeout: float | None = None) -> bytes | None:
        _check_args(instance)
        request = pb.GetDecisionRequest(instance=instance)
        attempt = _Failover(self._learners, timeout or self.timeout)
        for i, remaining in attempt:
            try:
                response = await self._learner_stubs[i].GetDecision(request, timeout=remaining)
            except grpc.RpcError as exc:
                attempt.failed(i, exc)
                continue
            decision = attempt.succeeded(i, response)
            return decision.value if decision.decided else None
        raise attempt.error()

    async def close(self) -> None:
        if self._kv is not None:
            await self._kv.close()
        for channel in self._channels:
            await channel.close(grace=None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
