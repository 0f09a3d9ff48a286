"""Every answer of the key-value service is true, and one odd log entry or one
apply error never stops a learner silently.

Each test runs the real code in process: a :class:`Replica` on a real SQLite
file, a :class:`KvServicer` (with its real :class:`LogAppender`) on a real
gRPC server on 127.0.0.1 port 0, and a scripted proposer, also a real gRPC
server, that "decides" what it is asked to append by handing it to the
replica (what a leader's Decide does). Nothing waits on a sleep: tests await
events, with a timeout only as a bound for the old code's hangs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from paxos_service.client.kv import AsyncKvClient
from paxos_service.core import log_entry
from paxos_service.core.config import DEFAULT_MAX_VALUE_BYTES
from paxos_service.core.errors import OutcomeUnknownError
from paxos_service.kv.state_machine import KvStateMachine
from paxos_service.node import replica as replica_module
from paxos_service.node.appender import LogAppender
from paxos_service.node.replica import Replica, ReplicaFailed
from paxos_service.servers.kv import KvServicer
from paxos_service.storage.contract import StorageError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

#: A bound on waits that hung on the old code; never reached when it works.
BOUND = 10.0


def put(key: str, value: bytes, client_id: int = 0, sequence: int = 0) -> pb.Command:
    return pb.Command(client_id=client_id, sequence=sequence, put=pb.PutOp(key=key, value=value))


def entry(*commands: pb.Command) -> bytes:
    return log_entry.encode_batch([c.SerializeToString() for c in commands])


class ScriptedProposer(pb_grpc.ProposerServiceServicer):
    """Appends by deciding the next instance on the replica, unless the test
    scripted a different answer for the next Append calls."""

    def __init__(self) -> None:
        self.replica: Replica | None = None
        self.next_instance = 1
        self.appends: list[pb.AppendRequest] = []
        #: Called instead of appending, one per Append call, while any is left.
        self.script: list[Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]] = []
        #: After the script: refuse every Append as not the leader.
        self.refuse_rest = False

    def decide(self, value: bytes) -> int:
        assert self.replica is not None
        instance = self.next_instance
        self.next_instance += 1
        self.replica.on_decided(instance, value)
        return instance

    async def Append(
        self, request: pb.AppendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AppendResponse:
        self.appends.append(request)
        if self.script:
            await self.script.pop(0)(context)
        if self.refuse_rest:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no leader elected yet")
        return pb.AppendResponse(instance=self.decide(entry(*request.commands)))


@dataclass
class Node:
    machine: KvStateMachine
    replica: Replica
    proposer: ScriptedProposer
    stub: pb_grpc.KvServiceAsyncStub
    address: str
    executor: ThreadPoolExecutor
    servers: list[grpc.aio.Server] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def applied(self, instance: int) -> None:
        await asyncio.wait_for(self.replica.wait_applied(instance), BOUND)


async def _serve(register: Callable[[grpc.aio.Server], None]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-store")
    loop = asyncio.get_running_loop()
    machine = await loop.run_in_executor(
        executor, lambda: KvStateMachine.open(tmp_path / "kv.db", dedup_window=3)
    )
    replica = Replica(machine, [], executor)
    proposer = ScriptedProposer()  # type: ignore[abstract]  # Append is all it serves
    proposer.replica = replica
    proposer_server, proposer_address = await _serve(
        lambda s: pb_grpc.add_ProposerServiceServicer_to_server(proposer, s)
    )
    appender = LogAppender([proposer_address], DEFAULT_MAX_VALUE_BYTES, None)
    kv = KvServicer(replica, appender, DEFAULT_MAX_VALUE_BYTES)
    kv_server, address = await _serve(lambda s: pb_grpc.add_KvServiceServicer_to_server(kv, s))
    channel = grpc.aio.insecure_channel(address)
    replica.start()
    n = Node(machine, replica, proposer, pb_grpc.KvServiceStub(channel), address, executor)
    n.servers += [kv_server, proposer_server]
    n.channels.append(channel)
    try:
        yield n
    finally:
        for channel in n.channels:
            await channel.close(grace=None)
        for server in n.servers:
            await server.stop(grace=None)
        await appender.close()
        await replica.stop()
        await loop.run_in_executor(executor, machine.close)
        executor.shutdown()


def _metadata(exc: grpc.aio.AioRpcError, name: str) -> str | None:
    items: Any = exc.trailing_metadata() or ()
    for key, value in items:
        if key == name:
            return value if isinstance(value, str) else bytes(value).decode()
    return None


# Item 7: a hand-made Propose, an odd entry, an apply error -------------------------


async def test_a_noop_entry_with_commands_is_a_noop_and_the_learner_goes_on(node: Node) -> None:
    """Old code: the state machine applied the entry as a no-op (zero
    results), ``zip(entry.commands, results, strict=True)`` raised in the
    apply task after the commit, the task died unseen, and waiting for the
    next instance hung (the BOUND timeout fired)."""
    forged = (
        log_entry.MAGIC + pb.LogEntry(noop=True, commands=[put("forged", b"x")]).SerializeToString()
    )
    node.proposer.decide(forged)
    node.proposer.decide(entry(put("after", b"y")))
    await node.applied(2)
    assert node.replica.failure is None
    assert node.machine.get_local("forged") is None, "a no-op's commands are never applied"
    got = node.machine.get_local("after")
    assert got is not None and got.value == b"y"
    # And through the service, the learner still answers.
    response = await node.stub.Put(pb.PutRequest(key="k", value=b"v"), timeout=BOUND)
    assert response.revision == 2


def _failures() -> float:
    value = REGISTRY.get_sample_value("paxos_learner_apply_failures_total")
    return 0.0 if value is None else value


async def test_an_apply_error_fails_the_learner_loudly(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: the StorageError killed the apply task silently (no
    ``failure``, no callback: the BOUND timeout on ``failed`` fired), and a
    Put waiting for its instance answered "outcome unknown" only at its
    deadline while the learner looked healthy."""
    failed = asyncio.Event()
    reasons: list[str] = []

    async def on_failure(reason: str) -> None:
        reasons.append(reason)
        failed.set()

    node.replica.on_failure = on_failure
    before = _failures()

    def broken(first: int, entries: Any) -> Any:
        raise StorageError("disk I/O error")

    monkeypatch.setattr(node.machine, "apply_entries", broken)
    waiting = asyncio.create_task(node.replica.wait_applied(1))
    node.proposer.decide(entry(put("k", b"v")))
    await asyncio.wait_for(failed.wait(), BOUND)
    assert node.replica.failure is not None and "disk I/O error" in node.replica.failure
    assert reasons == [node.replica.failure]
    assert _failures() == before + 1
    with pytest.raises(ReplicaFailed):
        await asyncio.wait_for(waiting, BOUND)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.stub.Put(pb.PutRequest(key="k2", value=b"v"), timeout=BOUND)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "disk I/O error" in (raised.value.details() or "")
    assert len(node.proposer.appends) == 0, "nothing appended by a failed learner"


async def test_an_unexpected_end_of_the_apply_task_fails_the_learner(node: Node) -> None:
    """Old code: nobody watched the task; cancelling it (any unexpected end)
    left the learner looking healthy forever (the BOUND timeout fired)."""
    failed = asyncio.Event()

    async def on_failure(reason: str) -> None:
        failed.set()

    node.replica.on_failure = on_failure
    node.replica._tasks[0].cancel()
    await asyncio.wait_for(failed.wait(), BOUND)
    assert node.replica.failure is not None and "replica-apply" in node.replica.failure


# Item 8: answers that were not true -----------------------------------------------


async def test_a_forgotten_sequence_is_outcome_unknown_never_failed(node: Node) -> None:
    """Old code: with a dedup window of 3, the retry of sequence 1 after
    sequences 2..5 got INVALID_ARGUMENT "too old" (a "failed" answer for a
    write that was applied), GetOutcome said applied=false, and the client's
    outcome() returned None, inviting a second application."""
    cid = 77
    for seq in range(1, 6):
        request = pb.PutRequest(key="k", value=str(seq).encode())
        request.request_id.CopyFrom(pb.RequestId(client_id=cid, sequence=seq))
        await node.stub.Put(request, timeout=BOUND)
    retry = pb.PutRequest(key="k", value=b"1")
    retry.request_id.CopyFrom(pb.RequestId(client_id=cid, sequence=1))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.stub.Put(retry, timeout=BOUND)
    assert raised.value.code() is grpc.StatusCode.ABORTED
    assert (raised.value.details() or "").startswith("outcome unknown")
    assert _metadata(raised.value, "paxos-outcome") == "forgotten"
    asked = pb.GetOutcomeRequest(request_id=pb.RequestId(client_id=cid, sequence=1))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.stub.GetOutcome(asked, timeout=BOUND)
    assert raised.value.code() is grpc.StatusCode.ABORTED
    assert _metadata(raised.value, "paxos-outcome") == "forgotten"
    async with AsyncKvClient([node.address], timeout=BOUND) as client:
        with pytest.raises(OutcomeUnknownError) as unknown:
            await client.outcome(cid, 1)
        assert (unknown.value.client_id, unknown.value.sequence) == (cid, 1)
        assert await client.outcome(cid, 5) is not None


async def test_a_transport_error_after_the_append_arrived_is_outcome_unknown(
    node: Node,
) -> None:
    """Old code: the proposer took the Append, then the call failed with
    UNAVAILABLE (a reset connection); the learner counted that as "not
    appended" and retried, every other attempt was refused as not the
    leader, and it ended with UNAVAILABLE "no leader accepted the command in
    time" (docs: "nothing was appended: safe to retry"), or, as seen in this
    run on the old code, its backoff slept past the deadline and the caller
    got a bare DEADLINE_EXCEEDED. Never the true "outcome unknown"."""

    async def reset(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "Connection reset by peer")

    node.proposer.script.append(reset)
    node.proposer.refuse_rest = True
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.stub.Put(pb.PutRequest(key="k", value=b"v"), timeout=1.5)
    assert len(node.proposer.appends) >= 1
    assert raised.value.code() is grpc.StatusCode.ABORTED, raised.value.details()
    assert (raised.value.details() or "").startswith("outcome unknown")


async def test_refusals_before_appending_are_still_not_appended(node: Node) -> None:
    """The other side of the rule: when every proposer answer proves the
    command was not taken (FAILED_PRECONDITION), the learner says so with
    UNAVAILABLE before the caller's deadline. Old code: its backoff slept
    past the deadline, so the caller got a bare DEADLINE_EXCEEDED instead."""
    node.proposer.refuse_rest = True
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.stub.Put(pb.PutRequest(key="k", value=b"v"), timeout=1.0)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no leader accepted" in (raised.value.details() or "")


async def test_not_applied_from_get_outcome_is_final(node: Node) -> None:
    """Old code: GetOutcome put a plain read through the log and said
    applied=false; a copy of the request still in flight (a batch outlives
    its members' deadlines) was appended after that and applied, so the key
    was written and a second GetOutcome said applied=true."""
    cid, seq = 91, 1
    asked = pb.GetOutcomeRequest(request_id=pb.RequestId(client_id=cid, sequence=seq))
    first = await node.stub.GetOutcome(asked, timeout=BOUND)
    assert not first.applied
    # The late copy of the request reaches the log now.
    instance = node.proposer.decide(entry(put("late", b"x", client_id=cid, sequence=seq)))
    await node.applied(instance)
    assert node.machine.get_local("late") is None, "'not applied' was final"
    again = await node.stub.GetOutcome(asked, timeout=BOUND)
    assert not again.applied
    # Sent again with the same id, it is refused (failed: true, never applied).
    retry = pb.PutRequest(key="late", value=b"x")
    retry.request_id.CopyFrom(pb.RequestId(client_id=cid, sequence=seq))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.stub.Put(retry, timeout=BOUND)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert node.machine.get_local("late") is None


async def test_get_outcome_reports_a_request_applied_before_it(node: Node) -> None:
    cid = 92
    request = pb.PutRequest(key="early", value=b"x")
    request.request_id.CopyFrom(pb.RequestId(client_id=cid, sequence=1))
    put_response = await node.stub.Put(request, timeout=BOUND)
    asked = pb.GetOutcomeRequest(request_id=pb.RequestId(client_id=cid, sequence=1))
    answer = await node.stub.GetOutcome(asked, timeout=BOUND)
    assert answer.applied and answer.result.revision == put_response.revision
    # The fence did not break the request: a retry still gets its result.
    assert (await node.stub.Put(request, timeout=BOUND)).revision == put_response.revision


async def test_a_watch_that_overflows_during_its_replay_ends_with_where_to_resume(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old code: live events arrived (and overflowed the queue) after the
    watch subscribed but before its history read; the history then held
    them, the queue held only events already sent, and the stream blocked
    forever after the history (the BOUND timeout fired) instead of ending.
    Here the client resumes from the revision the server gives."""
    monkeypatch.setattr(replica_module, "WATCH_QUEUE_LIMIT", 2)
    node.proposer.decide(entry(put("w/a", b"1"), put("w/b", b"2")))
    await node.applied(1)

    # Order the store's thread: a gate, then the apply of 3 more events, then
    # the watch's history read; so the events reach the live queue first.
    gate = threading.Event()
    node.executor.submit(gate.wait)
    apply_queued = asyncio.Event()
    subscribed = asyncio.Event()
    run, subscribe = node.replica.run, node.replica.subscribe

    async def traced_run(fn: Callable[..., Any], *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "apply_entries":
            apply_queued.set()
        return await run(fn, *args)

    def traced_subscribe(key: str, prefix: bool) -> replica_module.Watcher:
        watcher = subscribe(key, prefix)
        subscribed.set()
        return watcher

    monkeypatch.setattr(node.replica, "run", traced_run)
    monkeypatch.setattr(node.replica, "subscribe", traced_subscribe)
    node.proposer.decide(entry(put("w/c", b"3"), put("w/d", b"4"), put("w/e", b"5")))
    await asyncio.wait_for(apply_queued.wait(), BOUND)

    # The raw stream: history 1..5, then RESOURCE_EXHAUSTED with revision 6.
    stream = node.stub.Watch(pb.WatchRequest(key="w/", prefix=True, start_revision=1))
    await asyncio.wait_for(subscribed.wait(), BOUND)
    gate.set()
    seen: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with asyncio.timeout(BOUND):
            async for response in stream:
                seen += [e.kv.mod_revision for e in response.events]
    assert seen == [1, 2, 3, 4, 5]
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "revision 6" in (raised.value.details() or "")
    assert _metadata(raised.value, "paxos-watch-resume-revision") == "6"

    # The client stub resumes from there and sees the next change.
    async with AsyncKvClient([node.address], timeout=BOUND) as client:
        watch = client.watch("w/", prefix=True, start_revision=6)
        async with watch:
            node.proposer.decide(entry(put("w/f", b"6")))
            event = await asyncio.wait_for(anext(watch), BOUND)
            assert (event.kv.key, event.revision) == ("w/f", 6)
