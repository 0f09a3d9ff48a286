"""Classic Paxos on real processes: agreement under contention and crashes."""

from __future__ import annotations

import asyncio

from paxos_service.client.paxos import AsyncPaxosClient, PaxosClient
from tests.support.processes import Cluster

INSTANCES = range(1, 31)


async def test_two_proposers_racing_agree_on_every_instance(cluster: Cluster) -> None:
    """Two proposers propose different values for the same instances at the same
    time; every client and the learner see one value per instance."""
    cluster.start_acceptors(3)
    learner = cluster.start_learner(0)
    p0 = cluster.start_proposer(1, learners=[learner])
    p1 = cluster.start_proposer(2, learners=[learner])
    a = AsyncPaxosClient(proposers=[p0.address], timeout=20)
    b = AsyncPaxosClient(proposers=[p1.address], timeout=20)
    reader = AsyncPaxosClient(learners=[learner.address])
    try:
        results = await asyncio.gather(
            *(a.propose_detailed(i, f"A-{i}".encode()) for i in INSTANCES),
            *(b.propose_detailed(i, f"B-{i}".encode()) for i in INSTANCES),
        )
        from_a, from_b = results[: len(INSTANCES)], results[len(INSTANCES) :]
        for i, ra, rb in zip(INSTANCES, from_a, from_b, strict=True):
            assert ra.value == rb.value, f"instance {i}: clients disagree"
            assert ra.value in (f"A-{i}".encode(), f"B-{i}".encode()), "validity"
            assert ra.own_value_chosen != rb.own_value_chosen, "exactly one value won"
            assert await reader.get(i) == ra.value, f"instance {i}: learner disagrees"
    finally:
        for c in (a, b, reader):
            await c.close()


def test_progress_continues_after_kill_9_of_one_acceptor(cluster: Cluster) -> None:
    acceptors = cluster.start_acceptors(3)
    learner = cluster.start_learner(0)
    proposer = cluster.start_proposer(0, learners=[learner])
    with PaxosClient(proposers=[proposer.address], learners=[learner.address]) as client:
        for i in range(1, 11):
            assert client.propose(i, f"v{i}".encode()) == f"v{i}".encode()
        acceptors[1].kill9()
        for i in range(11, 31):
            assert client.propose(i, f"v{i}".encode()) == f"v{i}".encode()
        assert [client.get(i) for i in range(1, 31)] == [f"v{i}".encode() for i in range(1, 31)]


def test_decision_survives_kill_9_of_all_acceptors(cluster: Cluster) -> None:
    """After every acceptor is SIGKILLed and restarted from its SQLite file, a
    brand-new proposer proposing another value gets the original value back."""
    acceptors = cluster.start_acceptors(3)
    first = cluster.start_proposer(1)
    with PaxosClient(proposers=[first.address]) as client:
        for i in range(1, 6):
            assert client.propose(i, f"original-{i}".encode()) == f"original-{i}".encode()
    first.kill9()
    for node in acceptors:
        node.kill9()
    for node in acceptors:
        cluster.restart_acceptor(node)
    learner = cluster.start_learner(0)
    second = cluster.start_proposer(2, learners=[learner])
    with PaxosClient(proposers=[second.address], learners=[learner.address]) as client:
        for i in range(1, 6):
            result = client.propose_detailed(i, f"usurper-{i}".encode())
            assert result.value == f"original-{i}".encode()
            assert not result.own_value_chosen
            assert client.get(i) == f"original-{i}".encode()


def test_learner_finds_decision_from_acceptors_when_never_told(cluster: Cluster) -> None:
    """The proposer knows no learners, so the learner must count acceptor votes."""
    cluster.start_acceptors(3)
    proposer = cluster.start_proposer(0)  # no --learners: nobody sends Decide
    learner = cluster.start_learner(0)
    with PaxosClient(proposers=[proposer.address], learners=[learner.address]) as client:
        assert client.get(7) is None
        client.propose(7, b"seven")
        assert client.get(7) == b"seven"


def test_client_fails_over_to_the_next_proposer(cluster: Cluster) -> None:
    cluster.start_acceptors(3)
    p0 = cluster.start_proposer(0)
    p1 = cluster.start_proposer(1)
    with PaxosClient(proposers=[p0.address, p1.address], timeout=5) as client:
        assert client.propose(1, b"one") == b"one"
        p0.kill9()
        assert client.propose(2, b"two") == b"two"
