"""Every acceptor request is one atomic step: read, decide, queue the write.

Deterministic, in-process: the real :class:`AcceptorServicer` and
:class:`GroupCommitter` over a real SQLite file, with the memory window shrunk
to 30 instances, called directly with a minimal servicer context. The storage
thread is a real single thread that the test can hold shut (a gate job at the
head of its queue), so the interleavings that broke agreement are forced,
never hoped for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from paxos_service.core.config import AcceptorConfig
from paxos_service.servers.acceptor import AcceptorServicer
from paxos_service.storage.contract import StorageError
from paxos_service.storage.group_commit import GroupCommitter
from paxos_service.storage.sqlite import SqliteAcceptorStorage
from paxos_service.v1 import paxos_pb2 as pb
from roles import AcceptorState, RangePromise

MAX_RESIDENT = 30


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class Context:
    """The parts of a grpc.aio servicer context the acceptor uses."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)

    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()

    def time_remaining(self) -> float | None:
        return None


class FailingStorage(SqliteAcceptorStorage):
    """Real SQLite storage whose commits can be made to fail (an fsync error)."""

    fail = False

    def save(
        self,
        writes: Sequence[tuple[int, AcceptorState]],
        range_promise: RangePromise | None = None,
        chosen_through: int | None = None,
        compacted_through: int | None = None,
    ) -> None:
        if self.fail:
            raise StorageError("disk I/O error (injected)")
        super().save(writes, range_promise, chosen_through, compacted_through)


@dataclass
class Node:
    servicer: AcceptorServicer
    storage: FailingStorage
    executor: ThreadPoolExecutor

    def hold(self) -> threading.Event:
        """Block the storage thread until the returned event is set: every
        storage call (commits and reads) queues behind it, in order."""
        gate = threading.Event()
        self.executor.submit(gate.wait, 30)
        return gate

    async def hold_now(self) -> threading.Event:
        """:meth:`hold`, once the storage thread is idle and waiting on it."""
        running = threading.Event()
        gate = threading.Event()

        def wait() -> None:
            running.set()
            gate.wait(30)

        self.executor.submit(wait)
        assert await asyncio.to_thread(running.wait, 10)
        return gate


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    storage = FailingStorage(tmp_path / "a.db", acceptor_id=0, cluster_id="paxos")
    storage.open()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="acceptor-storage")
    committer = GroupCommitter(storage, executor)
    committer.start()
    config = AcceptorConfig(node_id=0, listen="sim", db_path=tmp_path / "a.db")
    servicer = AcceptorServicer(config, {}, committer, max_resident=MAX_RESIDENT)
    try:
        yield Node(servicer, storage, executor)
    finally:
        await committer.stop()
        executor.shutdown(wait=True)
        storage.close()


def ballot(round_: int, proposer_id: int) -> pb.Ballot:
    return pb.Ballot(round=round_, proposer_id=proposer_id)


async def accept(node: Node, instance: int, b: pb.Ballot, value: bytes) -> pb.AcceptResponse:
    request = pb.AcceptRequest(
        accept=pb.Accept(instance=instance, ballot=b, value=value), space=pb.INSTANCE_SPACE_LOG
    )
    return await node.servicer.Accept(request, Context())  # type: ignore[arg-type]


async def prepare_range(node: Node, first: int, b: pb.Ballot) -> pb.PrepareRangeResponse:
    request = pb.PrepareRangeRequest(prepare=pb.PrepareRange(from_instance=first, ballot=b))
    return await node.servicer.PrepareRange(request, Context())  # type: ignore[arg-type]


async def fill(node: Node, last: int) -> None:
    for instance in range(1, last + 1):
        reply = await accept(node, instance, ballot(1, 1), f"v{instance}".encode())
        assert reply.HasField("accepted")


async def until_queued(node: Node, jobs: int) -> None:
    """Let tasks run until ``jobs`` calls wait on the storage thread."""
    for _ in range(1000):
        if node.executor._work_queue.qsize() >= jobs:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {jobs} queued storage calls")


async def test_a_range_read_sees_instances_evicted_while_it_reads(node: Node) -> None:
    """Race 1: a range read racing an eviction. On the old code this failed every time: the reply
    reported instances 1-16 and 33-47 and left out 17-32, whose votes the
    eviction moved to disk while the disk read (bounded by the old
    ``spilled_through``) waited behind the commit that triggered it."""
    await fill(node, 46)  # evicted once: 1..16 on disk only, 17..46 in memory
    assert node.servicer.window.spilled_through == 16
    gate = await node.hold_now()
    late = asyncio.create_task(accept(node, 47, ballot(1, 1), b"v47"))
    await until_queued(node, 1)  # its commit, behind the gate: it will evict
    second_gate = node.hold()
    phase1 = asyncio.create_task(prepare_range(node, 1, ballot(2, 2)))
    await until_queued(node, 3)  # the disk read of 1..16, behind both
    gate.set()
    # The commit is done and its reply sent before the disk read runs.
    assert (await late).HasField("accepted")
    second_gate.set()
    reply = await phase1
    reported = {a.instance: a.value for a in reply.promise.accepted}
    assert reported == {i: f"v{i}".encode() for i in range(1, 48)}


async def test_an_accept_waiting_on_disk_is_judged_against_the_newest_range_promise(
    node: Node,
) -> None:
    """Race 2: an Accept judged against a stale range promise. On the old code
    the Accept read the range-promise floor before awaiting the disk read of
    evicted instance 5; the PrepareRange queued first promised 2.0 meanwhile,
    and the Accept still accepted 1.2 < 2.0: the reply below had ``accepted`` set."""
    await fill(node, 40)
    assert 5 not in node.servicer.window.states
    gate = await node.hold_now()
    phase1 = asyncio.create_task(prepare_range(node, 1, ballot(2, 0)))
    await until_queued(node, 1)
    late = asyncio.create_task(accept(node, 5, ballot(1, 2), b"other"))
    for _ in range(10):
        await asyncio.sleep(0)
    gate.set()
    assert (await phase1).HasField("promise")
    reply = await late
    assert reply.HasField("reject"), reply
    assert reply.reject.promised_ballot == ballot(2, 0)
    # And what is on disk agrees: instance 5 still holds the old vote.
    states = node.storage.load_states(5, 5)
    assert states[5].accepted_value == b"v5"


async def test_a_request_racing_a_commit_failure_gets_unavailable_at_once(node: Node) -> None:
    """A request racing a commit failure. On the old code the second Accept passed the voting
    check, waited for its disk read, then queued a write after the group
    committer had stopped for good: its future never completed and the call
    hung (the wait_for below timed out)."""
    await fill(node, 40)
    gate = await node.hold_now()
    node.storage.fail = True
    first = asyncio.create_task(accept(node, 41, ballot(1, 1), b"v41"))
    await until_queued(node, 1)  # its commit: it will fail
    second_gate = node.hold()
    second = asyncio.create_task(accept(node, 5, ballot(2, 1), b"v5'"))
    await until_queued(node, 3)  # the disk read of evicted instance 5
    gate.set()
    # The failure is known before the read of instance 5 returns.
    for task in (first, second):
        if task is second:
            second_gate.set()
        with pytest.raises(Aborted) as caught:
            await asyncio.wait_for(task, timeout=10)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    # Nothing was accepted after the failure, and nothing more is.
    with pytest.raises(Aborted):
        await asyncio.wait_for(accept(node, 42, ballot(1, 1), b"v42"), timeout=10)
