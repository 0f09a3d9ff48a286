"""A log that stays bounded: learners snapshot, acceptors truncate below the
compaction point, and a wiped learner rebuilds from a peer's snapshot.

Real processes over loopback with small knobs (``--retain-log-bytes 8192``):
a few thousand overwrites make the learners snapshot many times, so the
leader's compaction point T rises, and the acceptors delete their votes
below it. Then one learner is SIGKILLed, its volume wiped, and it is
started again with its own command line: the acceptors answer its catch-up
with OUT_OF_RANGE, it fetches a snapshot from another learner, installs it,
catches up the rest, and ends identical to the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paxos_service.kv.state_machine import KvStateMachine
from paxos_service.servers.kv import KV_WRITES_HEALTH
from paxos_service.transport.metadata import COMPACTED_THROUGH_METADATA
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.integration.test_log import Client
from tests.support.processes import Cluster, start_kv_cluster, wait_until

PUTS = 1_500
WRITERS = 8
KEYS = 40


def _status(address: str) -> pb.GetNodeStatusResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.OperatorServiceStub(channel).GetNodeStatus(
            pb.GetNodeStatusRequest(), timeout=5
        )


def _refusal(address: str, call: Callable[[grpc.Channel], object]) -> grpc.RpcError:
    """The error ``call`` gets from ``address`` (it must fail)."""
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
        call(channel)
    return refused.value


def _dump(path: Path) -> tuple[int, list[tuple[str, bytes, int, int]]]:
    with KvStateMachine.open(path) as machine:
        rows = [
            (kv.key, kv.value, kv.create_revision, kv.mod_revision)
            for kv in machine.range_local("", limit=0)
        ]
        return machine.revision, rows


def _put_many(learners: list[str], start: int, count: int) -> None:
    """Overwrite ``KEYS`` keys ``count`` times in all, from ``WRITERS`` clients."""

    async def load() -> None:
        clients = [Client(learners) for _ in range(WRITERS)]
        numbers = iter(range(start, start + count))

        async def writer(client: Client) -> None:
            for i in numbers:
                request = pb.PutRequest(key=f"k{i % KEYS:03}", value=f"{i:06}".encode() * 30)
                await client.call("Put", request, timeout=30)

        try:
            await asyncio.gather(*(writer(c) for c in clients))
        finally:
            for client in clients:
                await client.close()

    asyncio.run(load())


@pytest.mark.timeout(300)
def test_acceptors_truncate_and_a_wiped_learner_rebuilds_from_a_snapshot(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        kv = start_kv_cluster(
            cluster, proposers=2, learners=3, learner_args=["--retain-log-bytes", "8192"]
        )
        kv.leader()
        _put_many(kv.learner_addresses, 0, PUTS)

        # Every acceptor learned a compaction point and deleted votes below it.
        def compacted() -> bool:
            return all(_status(a.address).acceptor.compacted_through > 100 for a in kv.acceptors)

        wait_until(compacted, 30, "acceptors to compact")
        statuses = [_status(a.address).acceptor for a in kv.acceptors]
        point = min(s.compacted_through for s in statuses)
        learners = [_status(n.address).learner for n in kv.learners]
        assert all(s.snapshot_index > 0 and s.snapshot_bytes > 0 for s in learners), learners
        assert all(s.disk_bytes > 0 for s in statuses)

        # Below the point, a typed answer that carries it.
        log_instance_1 = {"instance": 1, "space": pb.INSTANCE_SPACE_LOG}
        refused = _refusal(
            kv.acceptors[0].address,
            lambda channel: pb_grpc.AcceptorServiceStub(channel).GetAccepted(
                pb.GetAcceptedRequest(**log_instance_1), timeout=5
            ),
        )
        assert refused.code() == grpc.StatusCode.OUT_OF_RANGE
        trailers = dict(refused.trailing_metadata() or ())
        assert int(trailers[COMPACTED_THROUGH_METADATA]) >= point
        range_refused = _refusal(
            kv.acceptors[1].address,
            lambda channel: pb_grpc.AcceptorServiceStub(channel).GetAcceptedRange(
                pb.GetAcceptedRangeRequest(from_instance=1), timeout=5
            ),
        )
        assert range_refused.code() == grpc.StatusCode.OUT_OF_RANGE
        # A learner asked for a compacted log instance says so, not "undecided".
        learner_refused = _refusal(
            kv.learners[0].address,
            lambda channel: pb_grpc.LearnerServiceStub(channel).GetDecision(
                pb.GetDecisionRequest(**log_instance_1), timeout=5
            ),
        )
        assert learner_refused.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "compacted" in (learner_refused.details() or "")
        # And explain says so, instead of "no acceptor accepted anything".
        with grpc.insecure_channel(kv.learners[0].address) as channel:
            explained = pb_grpc.OperatorServiceStub(channel).ExplainInstance(
                pb.ExplainInstanceRequest(instance=1, space=pb.INSTANCE_SPACE_LOG), timeout=10
            )
        assert explained.verdict == pb.INSTANCE_VERDICT_CHOSEN
        assert explained.summary.startswith("chosen and compacted"), explained.summary

        # Wipe a learner's volume and start it again with its own command line.
        victim = kv.learners[2]
        victim.kill9()
        db = tmp_path / "learner-2.db"
        for leftover in tmp_path.glob("learner-2.db*"):
            leftover.unlink()
        reborn = kv.restart_learner(victim)
        _put_many(kv.learner_addresses, PUTS, 200)  # writes go on meanwhile
        target = max(_status(n.address).learner.applied_instance for n in kv.learners[:2])

        def rebuilt() -> bool:
            return _status(reborn.address).learner.applied_instance >= target

        wait_until(rebuilt, 60, "the wiped learner to rebuild")
        assert "snapshot installed" in reborn.log()
        # Same store on every learner once all have applied the same log.
        final = max(_status(n.address).learner.applied_instance for n in kv.learners)

        def level() -> bool:
            return all(_status(n.address).learner.applied_instance >= final for n in kv.learners)

        wait_until(level, 30, "every learner at the same instance")
        for node in kv.learners:
            node.terminate()
        dumps = [_dump(tmp_path / f"learner-{i}.db") for i in range(3)]
        assert dumps[0] == dumps[1] == dumps[2]
        assert db.exists()
    finally:
        cluster.stop()


def _health(address: str, name: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            .status
        )


def test_over_its_space_quota_a_learner_refuses_puts_and_serves_reads_and_deletes(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path)
    try:
        kv = start_kv_cluster(
            cluster, proposers=1, learners=1, learner_args=["--quota-bytes", "400000"]
        )
        address = kv.learners[0].address
        serving = health_pb2.HealthCheckResponse.SERVING
        assert _health(address, KV_WRITES_HEALTH) == serving
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.KvServiceStub(channel)
            refused: grpc.RpcError | None = None
            written = 0
            for i in range(2000):  # about 2 MB at most: far past the quota
                try:
                    stub.Put(pb.PutRequest(key=f"big{i:04}", value=b"x" * 1000), timeout=10)
                    written += 1
                except grpc.RpcError as exc:
                    refused = exc
                    break
            assert refused is not None, "no put was refused"
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "space quota exceeded" in (refused.details() or "")
            assert _health(address, KV_WRITES_HEALTH) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert _health(address, "") == serving  # reads go on: the pod stays ready
            assert stub.Get(pb.GetRequest(key="big0000"), timeout=10).found
            deleted = stub.Delete(pb.DeleteRequest(key="big0000"), timeout=10)
            assert deleted.deleted
            stub.Compact(pb.CompactRequest(revision=deleted.revision), timeout=10)
        # The operator's other way out: a larger quota (a restart keeps the data).
        learner = kv.learners[0]
        learner.terminate()
        learner.argv[learner.argv.index("--quota-bytes") + 1] = "4000000"
        address = kv.restart_learner(learner).wait_healthy().address
        assert _health(address, KV_WRITES_HEALTH) == serving
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.KvServiceStub(channel)
            stub.Put(pb.PutRequest(key="after", value=b"room again"), timeout=10)
            assert stub.Get(pb.GetRequest(key=f"big{written - 1:04}"), timeout=10).found
    finally:
        cluster.stop()
