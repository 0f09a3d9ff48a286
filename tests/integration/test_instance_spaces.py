"""Single-decree instances and the log's are separate spaces.

They used to share one: a hand-made Propose could land on a log instance and
answer with a log entry's bytes, and a Propose far above the log made the next
leader fill every instance up to it with no-ops (minutes of an unwritable KV
store for a proposal at 100,000).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from paxos_service.core import log_entry
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.integration.test_log import Client
from tests.support.processes import Cluster, start_kv_cluster

FAR = 100_000


async def test_a_proposal_by_hand_never_touches_the_log(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        kv = start_kv_cluster(cluster, proposers=2, learners=1)
        leader = kv.leader()
        client = Client(kv.learner_addresses)
        for i in range(3):
            await client.call("Put", pb.PutRequest(key=f"k{i}", value=b"v"))
        async with grpc.aio.insecure_channel(leader.address) as channel:
            proposer = pb_grpc.ProposerServiceStub(channel)
            # Instance 2 of the log holds a put; instance 2 by hand is another instance.
            mine = await proposer.Propose(pb.ProposeRequest(instance=2, value=b"hand"), timeout=10)
            assert mine.value == b"hand" and mine.own_value_chosen
            far = await proposer.Propose(pb.ProposeRequest(instance=FAR, value=b"far"), timeout=10)
            assert far.value == b"far"
            # Any bytes, the log's prefix included: they are a single-decree value.
            odd = log_entry.MAGIC + b"not a log entry"
            assert (await proposer.Propose(pb.ProposeRequest(instance=3, value=odd))).value == odd
            # The log's space takes only the no-op by Propose (learners repair holes with it).
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await proposer.Propose(
                    pb.ProposeRequest(instance=50, value=b"x", space=pb.INSTANCE_SPACE_LOG)
                )
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        async with grpc.aio.insecure_channel(kv.learners[0].address) as channel:
            learner = pb_grpc.LearnerServiceStub(channel)
            by_hand = await learner.GetDecision(pb.GetDecisionRequest(instance=2), timeout=10)
            assert by_hand.decided and by_hand.value == b"hand"
            in_log = await learner.GetDecision(
                pb.GetDecisionRequest(instance=2, space=pb.INSTANCE_SPACE_LOG), timeout=10
            )
            assert in_log.decided and in_log.value.startswith(log_entry.MAGIC)
        # A change of leader: the new one must not fill the log up to FAR.
        leader.kill9()
        killed_at = time.monotonic()
        await client.call("Put", pb.PutRequest(key="after", value=b"failover"), timeout=30)
        print(f"\nfirst put {time.monotonic() - killed_at:.2f} s after SIGKILL of the leader")
        survivor = next(p for p in kv.proposers if p.alive())
        async with grpc.aio.insecure_channel(survivor.address) as channel:
            described = await pb_grpc.ProposerServiceStub(channel).GetLeader(
                pb.GetLeaderRequest(), timeout=5
            )
        assert described.next_instance < 100, described
        got = await client.call("Get", pb.GetRequest(key="after"))
        assert got.found  # type: ignore[attr-defined]
        await client.close()
    finally:
        cluster.stop()


def test_unknown_space_is_invalid_argument(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        (acceptor,) = cluster.start_acceptors(1)
        with grpc.insecure_channel(acceptor.address) as channel:
            stub = pb_grpc.AcceptorServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetAccepted(pb.GetAcceptedRequest(instance=1, space=7), timeout=5)  # type: ignore[arg-type]
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "unknown instance space 7" in caught.value.details()  # type: ignore[attr-defined]
    finally:
        cluster.stop()
