"""Python client stub for other services.

    from paxos_service.client.paxos import PaxosClient

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

:class:`AsyncPaxosClient` is the implementation; :class:`PaxosClient` runs it
on a private event-loop thread.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from paxos_service.client.failover import Failover, Servers
from paxos_service.client.grpc_status import error_from
from paxos_service.client.kv import AsyncKvClient, KvClient
from paxos_service.client.requests import DEFAULT_TIMEOUT, check_instance
from paxos_service.client.results import ProposeResult, propose_result
from paxos_service.client.sync import AsyncClosing, BlockingClient, blocking_twin
from paxos_service.core.config import DEFAULT_MAX_VALUE_BYTES, TlsFiles
from paxos_service.core.errors import (
    AuthenticationError,
    DeadlineExceededError,
    PaxosError,
    UnavailableError,
)
from paxos_service.transport import tls as tls_channels
from paxos_service.transport.channels import channel_options
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

__all__ = ["AsyncPaxosClient", "PaxosClient", "ProposeResult"]

_T = TypeVar("_T")


class _OnePass:
    """One call's single pass down a server list within one deadline:
    UNAVAILABLE moves on to the next server, any other error is final. A
    refused TLS handshake moves on too (one server may have a bad
    certificate), and is what the call reports if no server answers."""

    def __init__(self, servers: Servers, timeout: float) -> None:
        self.failover = Failover(servers, timeout, passes=1)
        self.refused: AuthenticationError | None = None

    def failed(self, address: str, exc: grpc.RpcError) -> float:
        error = error_from(exc, address, tls=self.failover.servers.tls)
        if isinstance(error, AuthenticationError) and error.code is grpc.StatusCode.UNAUTHENTICATED:
            self.refused = error
        elif not isinstance(error, UnavailableError):
            raise error from None
        return self.failover.failed(error)

    def error(self) -> PaxosError:
        if self.refused is not None:
            return self.refused
        if self.failover.last is not None:
            return self.failover.last
        what, timeout = self.failover.servers.what, self.failover.timeout
        return DeadlineExceededError(f"no {what} answered within {timeout}s")


class AsyncPaxosClient(AsyncClosing):
    """Client of the proposers and learners, for asyncio. Close it (or use
    ``async with``) when done."""

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
        self._proposers = Servers(proposers, "proposer", tls=tls is not None)
        self._learners = Servers(learners, "learner", tls=tls is not None)
        proposer_channels = {a: tls_channels.aio_channel(a, tls, options) for a in proposers}
        learner_channels = {a: tls_channels.aio_channel(a, tls, options) for a in learners}
        self._channels = [*proposer_channels.values(), *learner_channels.values()]
        self._proposer_stubs = {
            a: pb_grpc.ProposerServiceStub(c) for a, c in proposer_channels.items()
        }
        self._learner_stubs = {
            a: pb_grpc.LearnerServiceStub(c) for a, c in learner_channels.items()
        }
        self._max_value_bytes = max_value_bytes
        self._kv: AsyncKvClient | None = None

    @property
    def kv(self) -> AsyncKvClient:
        """The key-value store on the learners (created on first use)."""
        if self._kv is None:
            self._kv = AsyncKvClient(
                self._learners.addresses,
                timeout=self.timeout,
                max_value_bytes=self._max_value_bytes,
                tls=self.tls,
            )
        return self._kv

    async def propose(self, instance: int, value: bytes, *, timeout: float | None = None) -> bytes:
        """Propose ``value`` for ``instance``; return the value chosen for it."""
        return (await self.propose_detailed(instance, value, timeout=timeout)).value

    async def propose_detailed(
        self, instance: int, value: bytes, *, timeout: float | None = None
    ) -> ProposeResult:
        """Like :meth:`propose`, also saying whether our value won, and its ballot."""
        check_instance(instance, value)
        request = pb.ProposeRequest(instance=instance, value=value)

        def call(address: str, remaining: float) -> Awaitable[pb.ProposeResponse]:
            return self._proposer_stubs[address].Propose(request, timeout=remaining)

        return propose_result(await self._call(self._proposers, call, timeout))

    async def get(self, instance: int, *, timeout: float | None = None) -> bytes | None:
        """The value chosen for ``instance``, or None if none is chosen yet."""
        check_instance(instance)
        request = pb.GetDecisionRequest(instance=instance)

        def call(address: str, remaining: float) -> Awaitable[pb.GetDecisionResponse]:
            return self._learner_stubs[address].GetDecision(request, timeout=remaining)

        decision = await self._call(self._learners, call, timeout)
        return decision.value if decision.decided else None

    async def close(self) -> None:
        if self._kv is not None:
            await self._kv.close()
        for channel in self._channels:
            await channel.close(grace=None)

    async def _call(
        self,
        servers: Servers,
        call: Callable[[str, float], Awaitable[_T]],
        timeout: float | None,
    ) -> _T:
        attempts = _OnePass(servers, timeout or self.timeout)
        return await attempts.failover.run(call, attempts.failed, attempts.error)


class PaxosClient(BlockingClient[AsyncPaxosClient]):
    """Blocking client: :class:`AsyncPaxosClient` run on a private event-loop
    thread. Share one instance (from any thread); close it (or use ``with``)
    when done."""

    def __init__(
        self,
        proposers: Sequence[str] = (),
        learners: Sequence[str] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        tls: TlsFiles | None = None,
    ) -> None:
        self._kv: KvClient | None = None
        self._kv_lock = threading.Lock()
        self._start(
            "paxos-client",
            lambda: AsyncPaxosClient(
                proposers, learners, timeout=timeout, max_value_bytes=max_value_bytes, tls=tls
            ),
        )

    @property
    def tls(self) -> TlsFiles | None:
        return self._core.tls

    @property
    def kv(self) -> KvClient:
        """The key-value store on the learners (created on first use)."""
        with self._kv_lock:
            if self._kv is None:
                core = self._loop.build(lambda: self._core.kv)
                self._kv = KvClient._on_loop(self._loop, core, self)
            return self._kv

    @blocking_twin(AsyncPaxosClient.propose)
    def propose(self, instance: int, value: bytes, *, timeout: float | None = None) -> bytes:
        return self._loop.run(self._core.propose(instance, value, timeout=timeout))

    @blocking_twin(AsyncPaxosClient.propose_detailed)
    def propose_detailed(
        self, instance: int, value: bytes, *, timeout: float | None = None
    ) -> ProposeResult:
        return self._loop.run(self._core.propose_detailed(instance, value, timeout=timeout))

    @blocking_twin(AsyncPaxosClient.get)
    def get(self, instance: int, *, timeout: float | None = None) -> bytes | None:
        return self._loop.run(self._core.get(instance, timeout=timeout))
