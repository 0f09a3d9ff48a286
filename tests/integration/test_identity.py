"""Identity safety on real processes: an acceptor whose database was lost must
not vote as its old self until an operator recovers it (paxos_service/node/identity.py).

The acceptors run with --acceptors, which turns the checks on. Each test uses
real SQLite files, SIGKILL and the real `paxos acceptor recover` command:
booting, wiping and recovering, old copies, and what recovery refuses.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from paxos_service.client.paxos import PaxosClient
from paxos_service.cluster import LocalCluster
from paxos_service.core.errors import PaxosError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles.recovery import AcceptorStatus
from tests.integration.identity_support import (
    SERVICE,
    SERVING,
    Acceptors,
    accept,
    alive_but_not_voting,
    open_storage,
    prepare,
    recovery_info,
    refusal,
    start_acceptors,
)
from tests.support.processes import Cluster, clean_env, free_port, health_status, wait_until


@pytest.fixture
def acceptors(cluster: Cluster) -> Acceptors:
    return start_acceptors(cluster)


# ---------------------------------------------------------------------------


def test_a_new_cluster_boots_and_votes(cluster: Cluster, acceptors: Acceptors) -> None:
    """Started together, the acceptors vouch for each other; each then knows
    every peer's incarnation, and proposals succeed."""
    incarnations = {}
    for i, address in enumerate(acceptors.addresses):
        assert health_status(address, SERVICE) == SERVING
        info = recovery_info(address, (i + 1) % 3)
        assert info.status == pb.ACCEPTOR_STATUS_VOTING
        incarnations[i] = info.incarnation
    for i, address in enumerate(acceptors.addresses):
        peer = (i + 1) % 3
        assert recovery_info(address, peer).known_incarnation == incarnations[peer]
    proposer = cluster.start_proposer(0)
    with PaxosClient(proposers=[proposer.address], timeout=10) as client:
        assert client.propose(1, b"hello") == b"hello"


def test_a_new_acceptor_votes_only_once_every_peer_has_answered(cluster: Cluster) -> None:
    """A peer that is down may be the only one that remembers the id, so a new
    file waits for all of them, answering introductions meanwhile."""
    ports = [free_port() for _ in range(3)]
    acceptors = Acceptors(cluster, ports, [None] * 3)  # type: ignore[list-item]
    first, second = acceptors.start(0), acceptors.start(1)
    for node in (first, second):
        wait_until(lambda node=node: alive_but_not_voting(node), 20, f"{node.address} joining")
    error = refusal(lambda: prepare(first.address, 1))
    assert "acceptor 0 is joining: waiting for acceptors" in str(error.details())
    # Acceptor 1 has answered; the missing one is named, with why.
    wait_until(
        lambda: (
            "waiting for acceptors 2 to vouch"
            in str(refusal(lambda: prepare(first.address, 1)).details())
        ),
        20,
        "acceptor 0 to wait for acceptor 2 only",
    )
    assert acceptors.addresses[2] in str(refusal(lambda: prepare(first.address, 1)).details())
    acceptors.start(2)
    for node in acceptors.nodes:
        node.wait_healthy()
    assert prepare(first.address, 1).HasField("promise")


def test_a_wiped_acceptor_never_votes_until_recovered(
    cluster: Cluster, acceptors: Acceptors
) -> None:
    learner = cluster.start_learner(0)
    proposer = cluster.start_proposer(0, learners=[learner])
    client = PaxosClient(proposers=[proposer.address], learners=[learner.address], timeout=10)
    with client:
        for i in range(1, 4):
            assert client.propose(i, f"v{i}".encode()) == f"v{i}".encode()

        # Its volume is lost; it comes back with an empty one.
        acceptors.wipe(1)
        wiped = acceptors.start(1)
        wait_until(lambda: "data was lost" in wiped.log(), 20, "the wiped acceptor to notice")
        assert alive_but_not_voting(wiped)
        log = wiped.log()
        assert "acceptor 1's data was lost" in log
        assert "must not vote as its old self" in log
        assert "paxos acceptor recover --id 1" in log
        for call in (lambda: prepare(wiped.address, 1), lambda: accept(wiped.address, 9)):
            assert "acceptor 1 is wiped" in str(refusal(call).details())

        # The other two are a majority: the cluster goes on.
        assert client.propose(4, b"v4") == b"v4"
        assert client.propose(5, b"v5") == b"v5"
        # It stays that way: no crash loop, no change of mind.
        assert alive_but_not_voting(wiped)

        # The operator recovers it while it runs (as with kubectl exec).
        result = acceptors.recover(1)
        assert result.returncode == 0, result.stderr
        assert "never votes on instances <= 5" in result.stdout
        assert alive_but_not_voting(wiped), "recovery alone must not make it vote"
        wiped.terminate()
        recovered = acceptors.start(1).wait_healthy()
        assert health_status(recovered.address, SERVICE) == SERVING

        # It refuses the instances its lost self may have voted on...
        for instance in (1, 5):
            error = refusal(lambda instance=instance: prepare(recovered.address, instance))
            assert "does not vote on instances <= 5" in str(error.details())
        error = refusal(lambda: accept(recovered.address, 3))
        assert "does not vote on instances <= 5" in str(error.details())

        # ...and votes above them, where a majority now needs it.
        acceptors.nodes[0].kill9()
        assert client.propose(6, b"v6") == b"v6"
        # A chosen instance never changes. With acceptor 0 down, instance 1
        # cannot be decided again at all (the recovered acceptor abstains)...
        with pytest.raises(PaxosError):
            client.propose(1, b"other", timeout=3)
        # ...and with acceptor 0 back, the original value is what comes back.
        acceptors.start(0).wait_healthy()
        assert client.propose(1, b"other") == b"v1"
        assert client.propose(5, b"other") == b"v5"


def test_an_old_copy_of_a_recovered_acceptor_stops_voting(
    cluster: Cluster, acceptors: Acceptors, tmp_path: Path
) -> None:
    """Two processes claim one id: the old database (a copy taken before the
    loss, or an old process cut off by a partition) learns from its peers that
    the id now has another incarnation, and retires for good."""
    proposer = cluster.start_proposer(0)
    with PaxosClient(proposers=[proposer.address], timeout=10) as client:
        assert client.propose(1, b"v1") == b"v1"
    acceptors.nodes[2].kill9()
    old = tmp_path / "old"
    old.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{acceptors.db(2)}{suffix}")
        if source.exists():
            shutil.copy(source, old / f"acceptor-2.db{suffix}")
    acceptors.wipe(2)
    wiped = acceptors.start(2)
    wait_until(lambda: "data was lost" in wiped.log(), 20, "the wiped acceptor to notice")
    result = acceptors.recover(2)
    assert result.returncode == 0, result.stderr
    wiped.terminate()
    acceptors.start(2).wait_healthy()

    # The old copy starts as acceptor 2 elsewhere: its peers answer at start,
    # before its server does, so it never votes, not even once.
    ghost = acceptors.start(2, db=old / "acceptor-2.db", port=free_port())
    wait_until(lambda: health_status(ghost.address, "liveness") == SERVING, 20, "it to start")
    assert "acceptor 2 is retired" in str(refusal(lambda: prepare(ghost.address, 7)).details())
    assert "two processes claim acceptor 2" in ghost.log()
    assert alive_but_not_voting(ghost)
    assert "acceptor 2 is retired" in str(refusal(lambda: prepare(ghost.address, 7)).details())
    ghost.terminate()
    storage = open_storage(old / "acceptor-2.db", 2)
    try:
        assert storage.status is AcceptorStatus.RETIRED
    finally:
        storage.close()
    # Restarted, it refuses at once.
    again = acceptors.start(2, db=old / "acceptor-2.db", port=free_port())
    wait_until(lambda: health_status(again.address, "liveness") == SERVING, 20, "it to start")
    assert alive_but_not_voting(again)


def test_a_whole_cluster_cold_start_votes(cluster: Cluster, acceptors: Acceptors) -> None:
    """Every acceptor restarts at once with its volume: none has a peer up at
    its own start, they confirm each other once up, and all vote."""
    for node in acceptors.nodes:
        node.kill9()
    for i in range(3):
        acceptors.start(i)
    for node in acceptors.nodes:
        node.wait_healthy()
        assert prepare(node.address, 1).HasField("promise")


def test_recovery_refuses_unless_every_other_acceptor_answers(
    cluster: Cluster, acceptors: Acceptors
) -> None:
    acceptors.wipe(1)
    wiped = acceptors.start(1)
    wait_until(lambda: "data was lost" in wiped.log(), 20, "the wiped acceptor to notice")
    acceptors.nodes[2].kill9()
    result = acceptors.recover(1)
    assert result.returncode != 0
    assert "needs every other acceptor" in result.stderr
    assert "acceptor 2" in result.stderr and acceptors.addresses[2] in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was written: it still refuses, and still says why.
    wiped.terminate()
    restarted = acceptors.start(1)
    wait_until(lambda: "data was lost" in restarted.log(), 20, "it to refuse again")
    assert alive_but_not_voting(restarted)


def test_recovery_refuses_a_healthy_acceptor(cluster: Cluster, acceptors: Acceptors) -> None:
    result = acceptors.recover(1)
    assert result.returncode != 0
    assert "it has not lost its data" in result.stderr
    assert health_status(acceptors.addresses[1], SERVICE) == SERVING


def test_another_clusters_acceptors_are_refused(cluster: Cluster, acceptors: Acceptors) -> None:
    """At start (the file), and on the wire (an introduction)."""
    acceptors.nodes[0].terminate()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "paxos_service",
            "acceptor",
            "--id",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--db",
            str(acceptors.db(0)),
            "--cluster-id",
            "another",
            "--acceptors",
            acceptors.listed,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 1
    assert "belongs to cluster 'paxos', not 'another'" in result.stderr
    with grpc.insecure_channel(acceptors.addresses[1]) as channel:
        stub = pb_grpc.AcceptorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Introduce(
                pb.IntroduceRequest(acceptor_id=0, cluster_id="another", incarnation="x"),
                timeout=5,
            )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_without_acceptors_the_checks_are_off(cluster: Cluster) -> None:
    """One node, development: a new file votes at once, and says the checks are off."""
    (node,) = cluster.start_acceptors(1)
    assert "identity checks are off" in node.log()
    assert prepare(node.address, 1).HasField("promise")


def test_the_local_cluster_gives_acceptors_their_peers(tmp_path: Path) -> None:
    local = LocalCluster(acceptors=3, proposers=1, learners=1, data_dir=tmp_path, base_port=40000)
    for node in local.nodes:
        if node.role == "acceptor":
            assert node.args[node.args.index("--acceptors") + 1] == (
                "127.0.0.1:40000,127.0.0.1:40001,127.0.0.1:40002"
            )
