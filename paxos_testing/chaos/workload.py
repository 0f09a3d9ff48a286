"""Concurrent KV clients that record what they saw, for the checkers.

Each client is an :class:`~paxos_service.client.kv.AsyncKvClient` over both
learners (half the clients prefer each), doing put, linearizable get and
compare-and-swap on a few keys, one operation at a time. Every operation
becomes an :class:`~paxos_testing.linearizability.Operation` with the times
it was invoked and answered (seconds on the run's clock) and its outcome:

* ``ok``: the reply came.
* ``fail``: the client knows it did not take effect: UNAVAILABLE with nothing
  appended (:class:`~paxos_service.client.paxos.UnavailableError`), or bad input.
* ``unknown``: it may or may not have taken effect
  (:class:`~paxos_service.client.paxos.OutcomeUnknownError`, a deadline, anything
  unexpected). The checker lets it take effect at any later time, or never.

Values are unique (``c<client>-<n>``), so a read names the write it saw.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from paxos_service.client.kv import AsyncKvClient
from paxos_service.core.errors import (
    InvalidArgumentError,
    OutcomeUnknownError,
    PaxosError,
    UnavailableError,
)
from paxos_testing.linearizability import Kind, Operation, Status

#: Every key the workload touches starts with this (the final Range reads it).
KEY_PREFIX = "chaos/"
#: Client id of the reads made after the final heal.
FINAL_READER = 0


@dataclass
class Workload:
    learners: Sequence[str]
    clock: Callable[[], float]
    seed: int
    clients: int = 4
    keys: int = 4
    op_timeout: float = 3.0
    #: Pause after each operation, drawn from [0, think] seconds.
    think: float = 0.01
    history: list[Operation] = field(default_factory=list)
    #: Why operations ended ``fail`` or ``unknown`` (error class -> count).
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def key_names(self) -> list[str]:
        return [f"{KEY_PREFIX}k{i}" for i in range(self.keys)]

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._client(c, stop) for c in range(1, self.clients + 1)))

    async def _client(self, client_id: int, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/{client_id}")
        order = list(self.learners)
        shift = client_id % len(order)
        kv = AsyncKvClient(order[shift:] + order[:shift], timeout=self.op_timeout)
        last_seen: dict[str, bytes | None] = {}
        try:
            n = 0
            while not stop.is_set():
                n += 1
                key = rng.choice(self.key_names)
                roll = rng.random()
                if roll < 0.4:
                    op = await self.put(kv, client_id, key, f"c{client_id}-{n}".encode())
                elif roll < 0.8:
                    op = await self.get(kv, client_id, key)
                else:
                    expected = last_seen.get(key)
                    op = await self.cas(kv, client_id, key, expected, f"c{client_id}-{n}".encode())
                if op.status == "ok":
                    if op.kind == "get":
                        assert not isinstance(op.output, bool)
                        last_seen[key] = op.output
                    elif op.kind == "put" or (op.kind == "cas" and op.output is True):
                        last_seen[key] = op.value
                await asyncio.sleep(rng.uniform(0, self.think))
        finally:
            await kv.close()

    async def put(self, kv: AsyncKvClient, client_id: int, key: str, value: bytes) -> Operation:
        invoke = self.clock()
        try:
            await kv.put(key, value)
        except Exception as exc:
            return self._failed(client_id, "put", key, value, None, invoke, exc)
        return self._record(client_id, "put", key, value, None, invoke, "ok", None)

    async def get(self, kv: AsyncKvClient, client_id: int, key: str) -> Operation:
        invoke = self.clock()
        try:
            found = await kv.get(key)
        except Exception as exc:
            return self._failed(client_id, "get", key, None, None, invoke, exc)
        output = found.value if found is not None else None
        return self._record(client_id, "get", key, None, None, invoke, "ok", output)

    async def cas(
        self,
        kv: AsyncKvClient,
        client_id: int,
        key: str,
        expected: bytes | None,
        value: bytes,
    ) -> Operation:
        invoke = self.clock()
        try:
            if expected is None:
                result = await kv.cas(key, value, expected_version=0)
            else:
                result = await kv.cas(key, value, expected_value=expected)
        except Exception as exc:
            return self._failed(client_id, "cas", key, value, expected, invoke, exc)
        return self._record(client_id, "cas", key, value, expected, invoke, "ok", result.succeeded)

    def _failed(
        self,
        client_id: int,
        kind: Kind,
        key: str,
        value: bytes | None,
        expected: bytes | None,
        invoke: float,
        exc: Exception,
    ) -> Operation:
        status: Status
        if isinstance(exc, UnavailableError | InvalidArgumentError) and not isinstance(
            exc, OutcomeUnknownError
        ):
            status = "fail"
        else:
            status = "unknown"
        name = type(exc).__name__ if isinstance(exc, PaxosError) else f"unexpected {exc!r}"[:120]
        self.errors[f"{kind} {name}"] += 1
        return self._record(client_id, kind, key, value, expected, invoke, status, None)

    def _record(
        self,
        client_id: int,
        kind: Kind,
        key: str,
        value: bytes | None,
        expected: bytes | None,
        invoke: float,
        status: Status,
        output: bytes | bool | None,
    ) -> Operation:
        op = Operation(
            client_id=client_id,
            kind=kind,
            key=key,
            value=value,
            expected=expected,
            invoke=invoke,
            complete=self.clock() if status == "ok" else None,
            status=status,
            output=output,
        )
        self.history.append(op)
        return op

    async def final_reads(self, timeout: float = 10.0) -> bool:
        """After the final heal: one linearizable read of every key, recorded
        in the history, so a write lost at the end is caught too. True if
        every read succeeded."""
        ok = True
        async with AsyncKvClient(list(self.learners), timeout=timeout) as kv:
            for key in self.key_names:
                op = await self.get(kv, FINAL_READER, key)
                ok = ok and op.status == "ok"
        return ok
