"""The load generator: a worker process driving many concurrent requests.

Each worker is its own OS process with one asyncio event loop (so the
generator's CPU never competes with the benchmark's bookkeeping under one
GIL). The parent talks to it over a pipe:

    ("run", RunSpec)  ->  ("ready",)     client built, connections warm
    ("go", start_at)  ->  ("result", WorkerResult)
    ("stop",)         ->  the process exits

Every task issues one request at a time, closed loop, to a key chosen at
random from a fixed key space. The measured window is
``[start_at + warmup, start_at + warmup + duration]``: a request counts (for
throughput and latency alike) when it *completes* inside it, and no task
starts a request after the window ends. ``time.monotonic`` is the system-wide
CLOCK_MONOTONIC on Linux, so the parent's ``start_at`` means the same instant
in every worker.

The same loop drives either system: :class:`PaxosDriver` goes through the
public :class:`~paxos_service.client.kv.AsyncKvClient` (puts, and gets that
are linearizable through the log); :class:`EtcdDriver` goes through etcd's v3
JSON gateway (``/v3/kv/put`` and ``/v3/kv/range``, linearizable by default),
one keep-alive HTTP/1.1 connection per task.
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import random
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

from paxos_service.bench._http import HttpConnection
from paxos_service.client.kv import AsyncKvClient

#: How long a task pauses after a failed request, so a down server is not
#: hammered in a tight loop (and the error count stays meaningful).
ERROR_PAUSE = 0.01
#: Most tasks sharing one paxos client (it keeps 1000 sequences retry-safe).
TASKS_PER_CLIENT = 256
#: Distinct error messages a worker keeps as samples.
ERROR_SAMPLES = 5


@dataclass(frozen=True)
class RunSpec:
    target: str  # "paxos" or "etcd"
    endpoints: tuple[str, ...]  # HOST:PORT of the KV servers (learners, etcd members)
    op: str  # "put", "get", or "prefill" (put every key once, untimed)
    tasks: int
    warmup: float
    duration: float
    value_size: int
    keys: int
    timeout: float
    seed: int


@dataclass
class WorkerResult:
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    #: Gets that found no value (the key space is filled before gets run).
    misses: int = 0
    #: CPU seconds this worker used inside the measured window.
    cpu_s: float = 0.0


def key_name(index: int) -> str:
    return f"bench/{index:07d}"


class Driver(Protocol):
    async def setup(self, tasks: int) -> None: ...
    async def call(self, slot: int, op: str, key: str) -> bool:
        """Do ``op`` on ``key`` through connection ``slot``; False for a get
        that found nothing."""

    async def close(self) -> None: ...


class PaxosDriver:
    """The paxos-service KV store through its public asyncio client.

    A client remembers only its last 1000 request sequences as retry-safe, so
    tasks share a client only up to :data:`TASKS_PER_CLIENT` at a time."""

    def __init__(self, spec: RunSpec, value: bytes) -> None:
        self._spec = spec
        self._value = value
        self._clients: list[AsyncKvClient] = []

    async def setup(self, tasks: int) -> None:
        count = max(1, -(-tasks // TASKS_PER_CLIENT))
        self._clients = [
            AsyncKvClient(list(self._spec.endpoints), timeout=self._spec.timeout)
            for _ in range(count)
        ]
        # One linearizable read each opens the channels and waits out an election.
        await asyncio.gather(*(client.get(key_name(0)) for client in self._clients))

    async def call(self, slot: int, op: str, key: str) -> bool:
        client = self._clients[slot % len(self._clients)]
        if op == "get":
            return await client.get(key) is not None
        await client.put(key, self._value)
        return True

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


class EtcdError(Exception):
    pass


class EtcdDriver:
    """etcd through its v3 JSON gateway, one HTTP/1.1 connection per task,
    tasks spread round-robin over the members (as a client given every
    endpoint would); writes sent to a follower are forwarded to the leader."""

    def __init__(self, spec: RunSpec, value: bytes) -> None:
        self._spec = spec
        self._value = base64.b64encode(value).decode("ascii")
        self._connections: list[HttpConnection] = []

    async def setup(self, tasks: int) -> None:
        for slot in range(max(tasks, 1)):
            host, _, port = self._spec.endpoints[slot % len(self._spec.endpoints)].rpartition(":")
            self._connections.append(HttpConnection(host, int(port)))
        await asyncio.gather(
            *(self.call(slot, "get", key_name(0)) for slot in range(len(self._connections)))
        )

    async def call(self, slot: int, op: str, key: str) -> bool:
        encoded_key = base64.b64encode(key.encode()).decode("ascii")
        if op == "get":
            path, request = "/v3/kv/range", {"key": encoded_key}
        else:
            path, request = "/v3/kv/put", {"key": encoded_key, "value": self._value}
        status, body = await self._connections[slot].post(path, json.dumps(request).encode())
        if status != 200:
            raise EtcdError(f"HTTP {status}: {body[:200].decode(errors='replace')}")
        reply: dict[str, Any] = json.loads(body)
        if "header" not in reply:
            raise EtcdError(f"unexpected reply {body[:200].decode(errors='replace')}")
        return op != "get" or bool(reply.get("kvs"))

    async def close(self) -> None:
        for connection in self._connections:
            connection.close()


def make_driver(spec: RunSpec, value: bytes) -> Driver:
    if spec.target == "etcd":
        return EtcdDriver(spec, value)
    return PaxosDriver(spec, value)


async def _run(spec: RunSpec, conn: Connection, counter: Any) -> WorkerResult:
    rng = random.Random(spec.seed)
    value = rng.randbytes(spec.value_size)
    driver = make_driver(spec, value)
    result = WorkerResult()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(driver.setup(spec.tasks), timeout=spec.timeout * 3)
        conn.send(("ready",))
        message = await loop.run_in_executor(None, conn.recv)
        if message[0] != "go":
            return result
        start_at: float = message[1]
        if spec.op == "prefill":
            await _prefill(driver, spec, result, counter)
            return result
        window_start = start_at + spec.warmup
        window_end = window_start + spec.duration
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        cpu = asyncio.create_task(_window_cpu(window_start, window_end, result))
        await asyncio.gather(
            *(
                _task(
                    driver,
                    slot,
                    spec,
                    random.Random(spec.seed * 1_000_003 + slot),
                    result,
                    counter,
                    window_start,
                    window_end,
                )
                for slot in range(spec.tasks)
            )
        )
        await cpu
        return result
    finally:
        await driver.close()


async def _window_cpu(start: float, end: float, result: WorkerResult) -> None:
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    before = time.process_time()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    result.cpu_s = time.process_time() - before


async def _task(
    driver: Driver,
    slot: int,
    spec: RunSpec,
    rng: random.Random,
    result: WorkerResult,
    counter: Any,
    window_start: float,
    window_end: float,
) -> None:
    latencies = result.latencies
    op, keys = spec.op, spec.keys
    while True:
        began = time.monotonic()
        if began >= window_end:
            return
        key = key_name(rng.randrange(keys))
        try:
            found = await driver.call(slot, op, key)
        except Exception as exc:  # every failure is counted, none ends the run
            ended = time.monotonic()
            if window_start <= ended <= window_end:
                _count_error(result, exc)
            await asyncio.sleep(ERROR_PAUSE)
            continue
        ended = time.monotonic()
        counter.value += 1
        if window_start <= ended <= window_end:
            latencies.append(ended - began)
            if not found:
                result.misses += 1


async def _prefill(driver: Driver, spec: RunSpec, result: WorkerResult, counter: Any) -> None:
    pending = iter(range(spec.keys))

    async def fill(slot: int) -> None:
        for index in pending:
            try:
                await driver.call(slot, "put", key_name(index))
            except Exception as exc:
                _count_error(result, exc)
            counter.value += 1

    await asyncio.gather(*(fill(slot) for slot in range(spec.tasks)))


def _count_error(result: WorkerResult, exc: BaseException) -> None:
    name = type(exc).__name__
    result.errors[name] = result.errors.get(name, 0) + 1
    if len(result.error_samples) < ERROR_SAMPLES:
        text = f"{name}: {exc}"[:300]
        if text not in result.error_samples:
            result.error_samples.append(text)


def worker_main(conn: Connection, counter: Any) -> None:
    """The worker process's entry point (``multiprocessing`` spawn target)."""
    # Ctrl-C goes to the whole foreground process group; the parent stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the parent is gone
                return
            if message[0] != "run":
                return
            spec: RunSpec = message[1]
            try:
                result = loop.run_until_complete(_run(spec, conn, counter))
            except Exception as exc:
                conn.send(("failed", f"{type(exc).__name__}: {exc}"))
                continue
            conn.send(("result", result))
    finally:
        loop.close()
