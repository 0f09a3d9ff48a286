"""The replicated log and KV store on real processes: leader failover under
load, linearizable histories, learner catch-up."""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from paxos_testing.linearizability import Operation, check_history
from tests.support.processes import Cluster, KvCluster, free_port, start_kv_cluster

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KvCluster]:
    cluster = Cluster(tmp_path)
    try:
        yield start_kv_cluster(cluster)
    finally:
        cluster.stop()


@dataclass
class Client:
    """A minimal KV client on the raw stubs: a request id per operation,
    retried with the same id on UNAVAILABLE/ABORTED (exactly-once makes that
    safe), failing over between learners, within a deadline."""

    learners: list[str]
    client_id: int = field(default_factory=lambda: secrets.randbits(62) | 1)
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    stubs: list[pb_grpc.KvServiceAsyncStub] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def __post_init__(self) -> None:
        for address in self.learners:
            channel = grpc.aio.insecure_channel(address)
            self.channels.append(channel)
            self.stubs.append(pb_grpc.KvServiceStub(channel))

    async def call(self, method: str, request: object, timeout: float = 10.0) -> object:
        request.request_id.CopyFrom(  # type: ignore[attr-defined]
            pb.RequestId(client_id=self.client_id, sequence=next(self.sequence))
        )
        deadline = time.monotonic() + timeout
        for attempt in itertools.count():
            stub = self.stubs[attempt % len(self.stubs)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{method} did not complete in {timeout}s")
            try:
                return await getattr(stub, method)(request, timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                await asyncio.sleep(0.02)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(grace=None)


async def test_leader_failover_under_load_loses_no_acknowledged_write(kv: KvCluster) -> None:
    """SIGKILL the leader under a steady write load: a new leader takes over,
    and every acknowledged write is there afterwards. Prints the stall."""
    leader = kv.leader()
    clients = [Client(kv.learner_addresses) for _ in range(4)]
    acked: dict[str, tuple[bytes, float]] = {}
    stop = asyncio.Event()
    started = asyncio.Event()
    enough = asyncio.Event()
    wanted = [10**9]  # set once the leader is killed

    async def writer(w: int, client: Client) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            key, value = f"load/{w}/{i}", f"v{w}-{i}".encode()
            try:
                await client.call("Put", pb.PutRequest(key=key, value=value))
            except TimeoutError:
                continue
            acked[key] = (value, time.monotonic())
            if len(acked) >= 40:
                started.set()
            if len(acked) >= wanted[0]:
                enough.set()

    tasks = [asyncio.create_task(writer(w, c)) for w, c in enumerate(clients)]
    await asyncio.wait_for(started.wait(), 30)
    killed_at = time.monotonic()
    leader.kill9()
    wanted[0] = len(acked) + 100
    await asyncio.wait_for(enough.wait(), 60)
    stop.set()
    await asyncio.gather(*tasks)
    new_leader = kv.leader()
    assert new_leader is not leader
    times = sorted(t for _, t in acked.values())
    stall = max(b - a for a, b in itertools.pairwise(times) if b >= killed_at - 1)
    first_after = min(t for t in times if t > killed_at)
    print(
        f"\nfailover: {len(acked)} writes acknowledged, longest gap {stall * 1000:.0f} ms, "
        f"first write {1000 * (first_after - killed_at):.0f} ms after SIGKILL of the leader"
    )
    reader = Client(kv.learner_addresses)
    try:
        for key, (value, _) in acked.items():
            got = await reader.call("Get", pb.GetRequest(key=key))
            assert got.found and got.kv.value == value, f"acknowledged write {key} lost"  # type: ignore[attr-defined]
    finally:
        for client in (*clients, reader):
            await client.close()


async def test_concurrent_histories_are_linearizable(kv: KvCluster) -> None:
    """Clients on a few keys record put/get/cas histories while the leader is
    killed; the Wing-Gong/Porcupine checker must find every key linearizable."""
    keys = ["x", "y", "z"]
    history: list[Operation] = []
    rng = random.Random(7)
    values = itertools.count(1)

    async def one_operation(client: Client, client_id: int) -> Operation:
        key = rng.choice(keys)
        kind = rng.choice(["put", "get", "get", "cas"])
        value = f"{next(values)}".encode() if kind != "get" else None
        expected = f"{rng.randint(1, 30)}".encode() if kind == "cas" else None
        invoke = time.monotonic()
        fields = {
            "client_id": client_id,
            "kind": kind,
            "key": key,
            "value": value,
            "expected": expected,
            "invoke": invoke,
        }
        try:
            if kind == "put":
                await client.call("Put", pb.PutRequest(key=key, value=value), timeout=5)
                output: bytes | bool | None = None
            elif kind == "get":
                reply = await client.call("Get", pb.GetRequest(key=key), timeout=5)
                output = reply.kv.value if reply.found else None  # type: ignore[attr-defined]
            else:
                request = pb.CompareAndSwapRequest(key=key, value=value, expected_value=expected)
                reply = await client.call("CompareAndSwap", request, timeout=5)
                output = reply.succeeded  # type: ignore[attr-defined]
        except TimeoutError:
            return Operation(**fields, complete=None, status="unknown")  # type: ignore[arg-type]
        return Operation(**fields, complete=time.monotonic(), status="ok", output=output)  # type: ignore[arg-type]

    async def run_client(client_id: int) -> None:
        # Half the clients talk to each learner first.
        addresses = kv.learner_addresses
        client = Client(addresses[client_id % 2 :] + addresses[: client_id % 2])
        try:
            for _ in range(40):
                history.append(await one_operation(client, client_id))
                if len(history) >= 60:
                    enough.set()
        finally:
            await client.close()

    leader = kv.leader()
    enough = asyncio.Event()
    runs = [asyncio.create_task(run_client(c)) for c in range(5)]
    # Kill the leader a third of the way in (or at once if a client failed).
    await asyncio.wait([asyncio.create_task(enough.wait()), *runs], return_when="FIRST_COMPLETED")
    leader.kill9()
    await asyncio.gather(*runs)
    result = check_history(history, timeout_seconds=60)
    print(
        f"\nlinearizability: {result.operations_checked} operations on "
        f"{result.keys_checked} keys: {'linearizable' if result.linearizable else 'VIOLATION'}"
    )
    assert not result.timed_out
    assert result.linearizable, result.explanation


async def test_restarted_learner_catches_up_and_agrees(kv: KvCluster) -> None:
    lagging = kv.learners[1]
    client = Client([kv.learners[0].address])
    try:
        for i in range(20):
            await client.call("Put", pb.PutRequest(key=f"before/{i}", value=b"x"))

        async def applied(address: str) -> int:
            async with grpc.aio.insecure_channel(address) as channel:
                reply = await pb_grpc.KvServiceStub(channel).Get(
                    pb.GetRequest(key="before/0", stale=True), timeout=5
                )
                return int(reply.applied_instance)

        async def converged(address: str, target: int) -> None:
            # Polling another process's state: there is no event to await.
            while await applied(address) < target:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await asyncio.wait_for(
            converged(lagging.address, await applied(kv.learners[0].address)), 20
        )
        applied_before = await applied(lagging.address)
        lagging.kill9()
        for i in range(300):
            await client.call("Put", pb.PutRequest(key=f"during/{i:03d}", value=f"{i}".encode()))
        target = await applied(kv.learners[0].address)
        restarted = kv.restart_learner(lagging)
        # It resumes from its own applied index, not from zero.
        assert await applied(restarted.address) >= applied_before > 0
        await asyncio.wait_for(converged(restarted.address, target), 30)
        async with (
            grpc.aio.insecure_channel(restarted.address) as a,
            grpc.aio.insecure_channel(kv.learners[0].address) as b,
        ):
            request = pb.RangeRequest(prefix="during/", stale=True)
            mine = await pb_grpc.KvServiceStub(a).Range(request, timeout=5)
            theirs = await pb_grpc.KvServiceStub(b).Range(request, timeout=5)
        assert len(mine.kvs) == 300
        assert list(mine.kvs) == list(theirs.kvs)
    finally:
        await client.close()
    assert "caught up from acceptors" in restarted.log()


async def _get_leader(address: str) -> pb.GetLeaderResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        reply: pb.GetLeaderResponse = await pb_grpc.ProposerServiceStub(channel).GetLeader(
            pb.GetLeaderRequest(), timeout=2
        )
        return reply


async def test_a_proposer_that_never_hears_the_leader_does_not_depose_it(
    kv: KvCluster, tmp_path: Path
) -> None:
    """Pre-vote on real processes. A fourth proposer is missing from the
    others' --proposers lists, so no heartbeat ever reaches it: the shape of a
    one-way partition, or of a proposer cut off and healed. Its election timer
    fires every 0.3-0.6 s. Without pre-vote each firing raised its round and
    its PrepareRange deposed the leader; with it, the acceptors report the
    leader's recent Accepts and it never campaigns while writes flow."""
    leader = kv.leader()
    before = await _get_leader(leader.address)
    listed = ",".join([*(n.address for n in kv.proposers), f"127.0.0.1:{free_port()}"])
    rogue_address = listed.rsplit(",", 1)[1]
    rogue = kv.cluster.node(
        "proposer",
        len(kv.proposers),
        "--acceptors",
        ",".join(kv.cluster.acceptor_addresses),
        "--proposers",
        listed,
        port=int(rogue_address.rsplit(":", 1)[1]),
    )
    client = Client(kv.learner_addresses)
    stop = asyncio.Event()
    acked = [0]
    target = [20]
    reached = asyncio.Event()

    async def writer() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            await client.call("Put", pb.PutRequest(key=f"prevote/{i % 5}", value=b"v"))
            acked[0] += 1
            if acked[0] >= target[0]:
                reached.set()

    writers = [asyncio.create_task(writer()) for _ in range(2)]
    try:
        await asyncio.wait_for(reached.wait(), 30)
        rogue.start().wait_healthy()
        # About ten election timeouts' worth of writes while the rogue is up.
        reached.clear()
        target[0] = acked[0] + 200
        await asyncio.wait_for(reached.wait(), 60)
        rogue_log = rogue.log()
    finally:
        stop.set()
        await asyncio.gather(*writers)
        await client.close()
    after = await _get_leader(leader.address)
    assert after.is_leader, f"the leader was deposed; the rogue proposer's log:\n{rogue_log}"
    assert after.ballot == before.ballot
    assert not (await _get_leader(rogue.address)).is_leader
    assert "became leader" not in rogue_log
