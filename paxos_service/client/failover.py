"""Which server a call tries next, and for how long.

One mechanism for everything that spreads calls over a list of servers: the
client stubs (over the proposers, over the learners) and the learner's
appender (over the proposers, following the leader). A :class:`Servers` is
shared by every call of its owner and remembers where calls start: the server
that answered last, or the leader a refusal named. A :class:`Failover` is one
call: it walks the list from there within the call's one deadline, goes
straight to a leader that a refusal names, skips servers that recently went
silent, pauses between passes and keeps the last error.

What a failure means (retry, follow, or give up) is the caller's to say, since
it differs between them; the caller reads the gRPC error and tells the
failover::

    attempts = Failover(servers, timeout, backoff=doubling_per_pass(0.025, 0.5))
    return await attempts.run(call, failed, exhausted)

where ``call(address, timeout)`` makes one attempt, ``failed(address, exc)``
raises a final error or returns the pause before the next attempt (usually
``attempts.failed(error)``), and ``exhausted()`` is the error once the
deadline has passed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from paxos_service.core import clock
from paxos_service.core.errors import InvalidArgumentError, PaxosError

_T = TypeVar("_T")

#: The pause after ``attempts`` attempts over a list of ``servers`` servers
#: (the call's deadline caps it).
Backoff = Callable[[int, int], float]


def doubling_per_pass(first: float, cap: float) -> Backoff:
    """``first`` after the first pass over the list, doubling per pass up to
    ``cap``, jittered down by up to a half so that clients refused together
    do not come back together."""

    def pause(attempts: int, servers: int) -> float:
        passes = attempts // servers
        return min(cap, first * 2.0 ** (passes - 1)) * random.uniform(0.5, 1.0)

    return pause


def linear(step: float, cap: float) -> Backoff:
    """``step`` more per attempt made, up to ``cap``."""

    def pause(attempts: int, servers: int) -> float:
        return min(step * attempts, cap)

    return pause


def no_pause(attempts: int, servers: int) -> float:
    return 0.0


@dataclass(frozen=True)
class Attempt:
    address: str
    #: How long this attempt may take (its gRPC timeout).
    timeout: float


class Servers:
    """An ordered list of servers of one kind, shared by every call of its owner."""

    def __init__(self, addresses: Sequence[str], what: str, *, tls: bool = False) -> None:
        self.addresses = list(addresses)
        #: What they are, for messages ("learner", "proposer").
        self.what = what
        #: Whether the channels use TLS (it changes what a refusal means).
        self.tls = tls
        #: Where calls start: the server that answered last, or the leader a
        #: refusal named (which may be missing from ``addresses``). None: the
        #: walk carries on down the list where the last one stopped.
        self.preferred: str | None = None
        #: Where the last walk down the list stopped.
        self.cursor = 0
        self._silent_until: dict[str, float] = {}

    def silence(self, address: str, seconds: float) -> None:
        """Skip ``address`` for ``seconds`` (unless every server is skipped):
        it let an attempt time out, so it may be paused or cut off."""
        self._silent_until[address] = clock.now() + seconds

    def silent(self, address: str) -> bool:
        return self._silent_until.get(address, 0.0) > clock.now()

    def forget(self, address: str) -> None:
        """Calls no longer start with ``address`` (it stopped answering)."""
        if self.preferred == address:
            self.preferred = None

    def after(self, address: str) -> int | None:
        """The list position after ``address``, or None if it is not listed."""
        try:
            return (self.addresses.index(address) + 1) % len(self.addresses)
        except ValueError:
            return None


class Failover:
    """One call's attempts within one deadline (``timeout`` from now, or an
    absolute ``deadline`` on :func:`paxos_service.core.clock.now`).

    The first attempt goes to the preferred server, then down the list from
    there, round and round until the deadline, or for ``passes`` passes. With
    ``attempt_timeout``, one attempt may take at most that long: a paused or
    cut-off server answers nothing, and waiting on it for the whole deadline
    would stall the caller while another server could answer."""

    def __init__(
        self,
        servers: Servers,
        timeout: float | None = None,
        *,
        deadline: float | None = None,
        passes: int | None = None,
        attempt_timeout: float | None = None,
        backoff: Backoff = no_pause,
    ) -> None:
        if not servers.addresses:
            raise InvalidArgumentError(f"no {servers.what} addresses configured")
        now = clock.now()
        self.deadline = deadline if deadline is not None else now + (timeout or 0.0)
        self.timeout = timeout if timeout is not None else self.deadline - now
        self.servers = servers
        self.passes = passes
        self.attempt_timeout = attempt_timeout
        self.backoff = backoff
        #: Attempts made so far.
        self.count = 0
        #: The error of the last failed attempt.
        self.last: PaxosError | None = None
        self._target = servers.preferred
        start = None if self._target is None else servers.after(self._target)
        self._position = servers.cursor if start is None else start

    def remaining(self) -> float:
        return self.deadline - clock.now()

    def next(self) -> Attempt | None:
        """The next attempt, or None once the deadline passed (or the passes are done)."""
        remaining = self.remaining()
        done = self.passes is not None and self.count >= self.passes * len(self.servers.addresses)
        if remaining <= 0 or done:
            return None
        self.count += 1
        if self.attempt_timeout is not None:
            remaining = min(remaining, self.attempt_timeout)
        return Attempt(self._take(), remaining)

    def _take(self) -> str:
        target, self._target = self._target, None
        if target is not None:
            return target
        addresses = self.servers.addresses
        n = len(addresses)
        skip = next(
            (k for k in range(n) if not self.servers.silent(addresses[(self._position + k) % n])),
            0,  # every one went silent: try the next one anyway
        )
        address = addresses[(self._position + skip) % n]
        self._position = self.servers.cursor = (self._position + skip + 1) % n
        return address

    def succeeded(self, address: str) -> None:
        """Later calls start with the server that answered."""
        self.servers.preferred = address

    def failed(self, error: PaxosError) -> float:
        """Record a failed attempt that may be retried; return the pause
        before the next one: none until every server was tried in this pass,
        then the backoff."""
        self.last = error
        return self._pause(every_attempt=False)

    def redirected(self, leader: str | None, error: PaxosError) -> float:
        """The server refused because it does not lead, naming ``leader``
        (None: it knows of none). The next attempt goes to the leader, at
        once; with none named (or one that recently went silent on us), an
        election is under way: the pause comes after this attempt already."""
        self.last = error
        if leader is not None and self.servers.silent(leader):
            leader = None
        self.servers.preferred = leader
        if leader is None:
            return self._pause(every_attempt=True)
        self._target = leader
        position = self.servers.after(leader)
        if position is not None:
            self._position = position
        return 0.0

    def renew(self, address: str) -> None:
        """A long-lived call to ``address`` (a watch stream) worked for a
        while, then broke: the next attempts get a fresh deadline, starting
        with the next server (the deadline bounds a failover, not a stream)."""
        self.deadline = clock.now() + self.timeout
        self.servers.preferred = address
        self.count = 1
        self._target = None
        self._position = self.servers.after(address) or 0

    def _pause(self, *, every_attempt: bool) -> float:
        n = len(self.servers.addresses)
        if not every_attempt and self.count % n:
            return 0.0
        return max(0.0, min(self.backoff(self.count, n), self.remaining()))

    async def run(
        self,
        call: Callable[[str, float], Awaitable[_T]],
        failed: Callable[[str, grpc.RpcError], float],
        exhausted: Callable[[], PaxosError],
    ) -> _T:
        """``call(address, timeout)`` until one attempt answers. For a failed
        one, ``failed(address, exc)`` raises if the failure is final, or
        returns the pause before the next attempt; past the deadline, raise
        ``exhausted()``."""
        while (attempt := self.next()) is not None:
            try:
                result = await call(attempt.address, attempt.timeout)
            except grpc.RpcError as exc:
                pause = failed(attempt.address, exc)
                if pause > 0:
                    await asyncio.sleep(pause)
                continue
            self.succeeded(attempt.address)
            return result
        raise exhausted()
