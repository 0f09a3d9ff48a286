"""Clients and the nemesis of one simulated run.

Clients speak to the learners' KvService and the proposers' ProposerService
through the generated stubs, exactly as any gRPC client would. A KV client
retries an operation whose outcome is unknown with the same request id (on
any learner) until its deadline; an answer that says the operation failed
ends it. Every operation is recorded with what the client finally knew, for
the linearizability checker and for "every answer is true".
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from paxos_service.core import log_entry
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from paxos_testing.linearizability import Operation
from tests.simulation.realsim.cluster import SimCluster
from tests.simulation.realsim.net import TRANSPORT_PREFIX

KEYS = ("a", "b", "c")
#: The outcome of one attempt: the request may or may not have been applied.
UNKNOWN_CODES = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


@dataclass
class ClientOp:
    """One KV operation as its client saw it."""

    client_id: int
    sequence: int
    op: Operation
    #: The last error the client got (for the report).
    last_error: str = ""


@dataclass
class History:
    ops: list[ClientOp] = field(default_factory=list)
    #: Final operations after the heal that did not complete (liveness).
    stuck: list[str] = field(default_factory=list)


def _outcome_unknown(exc: grpc.aio.AioRpcError) -> bool:
    code, details = exc.code(), exc.details() or ""
    if code in UNKNOWN_CODES:
        return True
    if code == grpc.StatusCode.ABORTED and "outcome unknown" in details:
        return True
    # A transport failure (the learner crashed mid-call, or was never
    # reached) says nothing about the request.
    return code == grpc.StatusCode.UNAVAILABLE and details.startswith(TRANSPORT_PREFIX)


class KvClient:
    def __init__(self, cluster: SimCluster, client_id: int, history: History) -> None:
        self.cluster = cluster
        self.client_id = client_id
        self.history = history
        self.rng = random.Random(cluster.rng.random())
        self.sequence = 0
        #: Sequences without an answer yet (their results must stay readable).
        self.open: set[int] = set()
        self.seen: list[bytes] = []
        self.stubs = [
            pb_grpc.KvServiceStub(cluster.network.channel(self.name, address))
            for address in cluster.learner_addresses
        ]

    @property
    def name(self) -> str:
        return f"client-{self.client_id}"

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            await self.one(self.rng.choice(("put", "put", "get", "cas", "delete")))
            await asyncio.sleep(self.rng.uniform(0.0, 0.2))

    async def one(self, kind: str, *, budget: float = 3.0, persist: bool = False) -> ClientOp:
        """One operation; with ``persist``, retry even after a "failed"
        answer (the same request id: it was not applied) until ``budget``."""
        loop = asyncio.get_running_loop()
        self.sequence += 1
        # The lowest sequence still without an answer: the store forgets the
        # results below it, as with the client stub (RequestIds).
        self.open.add(self.sequence)
        request_id = pb.RequestId(
            client_id=self.client_id, sequence=self.sequence, first_incomplete=min(self.open)
        )
        key = self.rng.choice(KEYS)
        value = f"{self.client_id}.{self.sequence}".encode()
        expected = self.rng.choice(self.seen) if self.seen else b"none"
        invoke = loop.time()
        deadline = invoke + budget
        status, output, last_error = "unknown", None, ""
        attempt = self.rng.randrange(len(self.stubs))
        maybe_sent = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            stub = self.stubs[attempt % len(self.stubs)]
            attempt += 1
            try:
                output = await self._call(stub, kind, key, value, expected, request_id, remaining)
            except grpc.aio.AioRpcError as exc:
                last_error = f"{exc.code().name}: {exc.details()}"
                if _outcome_unknown(exc):
                    maybe_sent = True
                # "Failed" speaks for this attempt only: after an attempt whose
                # outcome is unknown, the request stays unknown until answered.
                if maybe_sent or persist:
                    await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                    continue
                status = "fail"
                break
            status = "ok"
            break
        if status in ("ok", "fail"):  # an answer; "unknown" stays open
            self.open.discard(request_id.sequence)
        complete = loop.time() if status == "ok" else None
        if status == "ok" and kind == "get" and isinstance(output, bytes):
            self.seen.append(output)
        if kind in ("put", "cas"):
            self.seen.append(value)
        record = ClientOp(
            self.client_id,
            self.sequence,
            Operation(
                client_id=self.client_id,
                kind=kind,  # type: ignore[arg-type]
                key=key,
                value=value if kind in ("put", "cas") else None,
                expected=expected if kind == "cas" else None,
                invoke=invoke,
                complete=complete,
                status=status,  # type: ignore[arg-type]
                output=output if status == "ok" else None,
            ),
            last_error,
        )
        self.history.ops.append(record)
        return record

    async def _call(
        self,
        stub: Any,
        kind: str,
        key: str,
        value: bytes,
        expected: bytes,
        request_id: pb.RequestId,
        timeout: float,
    ) -> bytes | bool | None:
        if kind == "put":
            request = pb.PutRequest(key=key, value=value, request_id=request_id)
            await stub.Put(request, timeout=timeout)
            return None
        if kind == "delete":
            await stub.Delete(pb.DeleteRequest(key=key, request_id=request_id), timeout=timeout)
            return None
        if kind == "cas":
            request = pb.CompareAndSwapRequest(
                key=key, value=value, expected_value=expected, request_id=request_id
            )
            reply = await stub.CompareAndSwap(request, timeout=timeout)
            return bool(reply.succeeded)
        reply = await stub.Get(pb.GetRequest(key=key, request_id=request_id), timeout=timeout)
        return bytes(reply.kv.value) if reply.found else None


class ProposeClient:
    """Single-decree proposals, through any proposer, the leader included, at
    instance numbers the log uses too. Half are what grpcurl users send, in
    their own space, so they must never touch the log (check_learners); half
    are what a learner repairing a hole sends: the no-op, at a log instance
    (late, evicted instances, read from disk inside an acceptor's step).
    Every answer must be the value chosen there (check_proposals)."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.rng = random.Random(cluster.rng.random())
        self.stubs = [
            pb_grpc.ProposerServiceStub(cluster.network.channel("client-propose", address))
            for address in cluster.proposer_addresses
        ]
        self.count = 0

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            self.count += 1
            instance = self.rng.randint(1, 40)
            log = self.rng.random() < 0.5
            value = log_entry.NOOP if log else f"p{self.count}".encode()
            space = pb.INSTANCE_SPACE_LOG if log else pb.INSTANCE_SPACE_UNSPECIFIED
            stub = self.rng.choice(self.stubs)
            try:
                reply = await stub.Propose(
                    pb.ProposeRequest(instance=instance, value=value, space=space), timeout=2.0
                )
            except grpc.aio.AioRpcError:
                continue
            # Recorded under the acceptors' key: -k for single-decree instance k.
            key = reply.instance if log else -reply.instance
            self.cluster.recorder.proposals.append((key, bytes(reply.value)))


class Nemesis:
    """Crashes, restarts and partitions, drawn from the seed."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.rng = random.Random(cluster.rng.random())
        # Its own stream: the rest of the schedule stays as it was without wipes.
        self.wipe_rng = random.Random(f"wipe-{cluster.seed}")
        # A dict, not a set: a set of tasks iterates in memory-address order,
        # and the order they are cancelled in must replay exactly.
        self._tasks: dict[asyncio.Task[None], None] = {}

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        names = sorted(self.cluster.nodes)
        while loop.time() < until:
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            roll = self.rng.random()
            if roll < 0.45:
                name = self.rng.choice(names)
                if self._may_wipe(name) and self.wipe_rng.random() < 0.5:
                    await self.cluster.wipe(name)
                else:
                    await self.cluster.crash(name)
                self._later(self.rng.uniform(0.1, 2.0), functools.partial(self._restart, name))
            elif roll < 0.7:
                servers = [self.cluster.nodes[n].name for n in names]
                self.rng.shuffle(servers)
                cut = self.rng.randint(1, len(servers) - 1)
                self.cluster.network.partition(set(servers[:cut]), set(servers[cut:]))
                self.cluster.note(f"partition {sorted(servers[:cut])} | {sorted(servers[cut:])}")
                self._later(self.rng.uniform(0.3, 2.5), self._heal)
            elif roll < 0.8:
                name = self.rng.choice(names)
                self.cluster.network.isolate(name)
                self.cluster.note(f"isolate {name}")
                self._later(self.rng.uniform(0.3, 2.5), self._heal)

    def _may_wipe(self, name: str) -> bool:
        """A learner may lose its volume while every other learner is up and
        holds a snapshot at or above every compaction point saved so far: the
        log below it then survives elsewhere. (Losing the volumes of a majority
        of learners loses the log below T, as losing a majority of acceptors'
        volumes loses votes: the deployment guidance rules out both.)"""
        node = self.cluster.nodes[name]
        learners = self.cluster.of("learner")
        point = self.cluster.recorder.compacted_through
        return (
            self.cluster.shape.wipe_learners
            and node.kind == "learner"
            and len(learners) >= 2
            and all(
                other.up
                and other.servicer is not None
                and other.servicer.replica.snapshot_index >= point
                for other in learners
                if other is not node
            )
        )

    def _later(self, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await action()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks[task] = None
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _restart(self, name: str) -> None:
        if not self.cluster.nodes[name].up:
            await self.cluster.start(name)

    async def _heal(self) -> None:
        self.cluster.network.heal()
        self.cluster.note("heal")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
