"""A log longer than one message: every proposer restarted still leads at once.

A restarted proposer has no state, so its phase 1 starts at instance 1. It
used to ask each acceptor for every value accepted since then in one reply;
once the log outgrew a message, phase 1 never completed and the cluster
stayed unwritable. Here the message limit is small (``--max-value-bytes
4096``: replies up to about 68 KiB), so a few thousand puts make the log
longer than a message; then every proposer is SIGKILLed and started again
with its own command line.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from paxos_service.v1 import paxos_pb2 as pb
from tests.integration.test_log import Client
from tests.support.processes import Cluster, start_kv_cluster

PUTS = 2_000
WRITERS = 16


async def test_every_proposer_restarted_after_a_long_log_leads_again(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, extra_args=["--max-value-bytes", "4096"])
    try:
        kv = start_kv_cluster(cluster, proposers=2, learners=1)
        kv.leader()
        clients = [Client(kv.learner_addresses) for _ in range(WRITERS)]
        keys = iter(range(PUTS))

        async def writer(client: Client) -> None:
            for i in keys:
                request = pb.PutRequest(key=f"k{i:05}", value=b"v" * 66)
                await client.call("Put", request, timeout=30)

        await asyncio.gather(*(writer(c) for c in clients))
        for node in list(kv.proposers):
            node.kill9()
        restarted_at = time.monotonic()
        for node in list(kv.proposers):
            kv.restart_proposer(node)
        serving_at = time.monotonic()
        # The first put after the restart: it waits for an election, nothing else.
        put = pb.PutRequest(key="after", value=b"restart")
        await clients[0].call("Put", put, timeout=30)
        done = time.monotonic()
        print(
            f"\nfirst put {done - serving_at:.2f} s after the restarted proposers served "
            f"({done - restarted_at:.2f} s after the restart began; election timeout 0.3 s)"
        )
        reader = Client(kv.learner_addresses)
        for i in range(0, PUTS, 97):
            got = await reader.call("Get", pb.GetRequest(key=f"k{i:05}"))
            assert got.found, f"acknowledged put k{i:05} lost"  # type: ignore[attr-defined]
        for client in (*clients, reader):
            await client.close()
    finally:
        cluster.stop()


def test_a_leader_log_reports_what_phase_1_skipped(tmp_path: Path) -> None:
    """The acceptors' side of it, over gRPC: a PrepareRange from instance 1
    after instances the acceptor knows are chosen reports only the rest."""
    cluster = Cluster(tmp_path)
    try:
        (acceptor,) = cluster.start_acceptors(1)
        from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

        with grpc.insecure_channel(acceptor.address) as channel:
            stub = pb_grpc.AcceptorServiceStub(channel)
            ballot = pb.Ballot(round=1, proposer_id=0)
            for i in range(1, 11):
                accept = pb.Accept(instance=i, ballot=ballot, value=b"x", chosen_through=i - 1)
                assert stub.Accept(
                    pb.AcceptRequest(accept=accept, space=pb.INSTANCE_SPACE_LOG), timeout=5
                ).HasField("accepted")
            higher = pb.PrepareRange(from_instance=1, ballot=pb.Ballot(round=2, proposer_id=1))
            reply = stub.PrepareRange(pb.PrepareRangeRequest(prepare=higher), timeout=5)
        assert reply.promise.chosen_through == 9
        assert [a.instance for a in reply.promise.accepted] == [10]
        assert reply.promise.next_page == 0
    finally:
        cluster.stop()
