"""Identity safety on real processes: an acceptor whose database was lost must
not vote as its old self until an operator recovers it (paxos_service/identity.py).

The acceptors run with --acceptors, which turns the checks on. Each test uses
real SQLite files, SIGKILL and the real `paxos acceptor recover` command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from paxos_service.client import PaxosClient, PaxosError
from paxos_service.cluster import LocalCluster
from paxos_service.sqlite_storage import SqliteAcceptorStorage
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import Ballot
from roles.recovery import RecoveryPlan, Status
from tests.support.processes import Cluster, Node, clean_env, free_port, health_status, wait_until

SERVICE = "paxos_service.v1.AcceptorService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Acceptors:
    """Acceptors that know each other (--acceptors), on fixed ports."""

    cluster: Cluster
    ports: list[int]
    nodes: list[Node]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    @property
    def listed(self) -> str:
        return ",".join(self.addresses)

    def db(self, acceptor_id: int) -> Path:
        return self.cluster.db_path(acceptor_id)

    def start(self, acceptor_id: int, *, db: Path | None = None, port: int | None = None) -> Node:
        node = self.cluster.node(
            "acceptor",
            acceptor_id,
            "--db",
            str(db or self.db(acceptor_id)),
            "--acceptors",
            self.listed,
            port=port or self.ports[acceptor_id],
        )
        if port is None:
            self.nodes[acceptor_id] = node
        return node.start()

    def wipe(self, acceptor_id: int) -> None:
        """The volume is lost: the process dies and its files are gone."""
        self.nodes[acceptor_id].kill9()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db(acceptor_id)}{suffix}").unlink(missing_ok=True)

    def recover(self, acceptor_id: int, settle: float = 0.2) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "paxos_service",
                "acceptor",
                "recover",
                "--insecure",
                "--id",
                str(acceptor_id),
                "--db",
                str(self.db(acceptor_id)),
                "--acceptors",
                self.listed,
                "--settle",
                str(settle),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            check=False,
        )


def start_acceptors(cluster: Cluster, count: int = 3, *, wait: bool = True) -> Acceptors:
    """Start them all together, as a new cluster's acceptors start."""
    ports = [free_port() for _ in range(count)]
    acceptors = Acceptors(cluster, ports, [None] * count)  # type: ignore[list-item]
    for i in range(count):
        acceptors.start(i)
    cluster.acceptor_addresses = acceptors.addresses
    if wait:
        for node in acceptors.nodes:
            node.wait_healthy()
    return acceptors


@pytest.fixture
def acceptors(cluster: Cluster) -> Acceptors:
    return start_acceptors(cluster)


def alive_but_not_voting(node: Node) -> bool:
    assert node.alive(), node.log()
    return bool(
        health_status(node.address, "liveness") == SERVING
        and health_status(node.address, SERVICE) == NOT_SERVING
        and health_status(node.address, "") == NOT_SERVING
    )


def prepare(address: str, instance: int, round_: int = 2**32) -> pb.PrepareResponse:
    with grpc.insecure_channel(address) as channel:
        request = pb.PrepareRequest(
            prepare=pb.Prepare(instance=instance, ballot=pb.Ballot(round=round_, proposer_id=7))
        )
        response: pb.PrepareResponse = pb_grpc.AcceptorServiceStub(channel).Prepare(
            request, timeout=5
        )
        return response


def accept(address: str, instance: int, round_: int = 2**32) -> pb.AcceptResponse:
    with grpc.insecure_channel(address) as channel:
        ballot = pb.Ballot(round=round_, proposer_id=7)
        request = pb.AcceptRequest(accept=pb.Accept(instance=instance, ballot=ballot, value=b"x"))
        response: pb.AcceptResponse = pb_grpc.AcceptorServiceStub(channel).Accept(
            request, timeout=5
        )
        return response


def refusal(call: object) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE, error
    return error


def recovery_info(address: str, acceptor_id: int) -> pb.GetRecoveryInfoResponse:
    with grpc.insecure_channel(address) as channel:
        response: pb.GetRecoveryInfoResponse = pb_grpc.AcceptorServiceStub(channel).GetRecoveryInfo(
            pb.GetRecoveryInfoRequest(cluster_id="paxos", acceptor_id=acceptor_id), timeout=5
        )
        return response


def open_storage(path: Path, acceptor_id: int) -> SqliteAcceptorStorage:
    storage = SqliteAcceptorStorage(path, acceptor_id=acceptor_id, cluster_id="paxos")
    storage.open()
    return storage


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
        assert storage.status is Status.RETIRED
    finally:
        storage.close()
    # Restarted, it refuses at once.
    again = acceptors.start(2, db=old / "acceptor-2.db", port=free_port())
    wait_until(lambda: health_status(again.address, "liveness") == SERVING, 20, "it to start")
    assert alive_but_not_voting(again)


@dataclass
class FakePeer:
    """A peer acceptor that answers Introduce only once :attr:`gate` is set,
    with ``known`` as the incarnation it knows for the introduced id. (Its
    other methods are the servicer's: UNIMPLEMENTED.)"""

    acceptor_id: int
    known: str
    gate: threading.Event = field(default_factory=threading.Event)
    asked: threading.Event = field(default_factory=threading.Event)

    def Introduce(self, request: pb.IntroduceRequest, context: Any) -> pb.IntroduceResponse:
        self.asked.set()
        self.gate.wait(30)
        return pb.IntroduceResponse(
            acceptor_id=self.acceptor_id,
            cluster_id="paxos",
            incarnation=f"fake-{self.acceptor_id}",
            status=pb.ACCEPTOR_STATUS_VOTING,
            known_incarnation=self.known,
            has_state=True,
        )


ServePeer = Callable[..., str]


@pytest.fixture
def fake_peers() -> Iterator[ServePeer]:
    """``serve(peer, port=None)`` starts a fake peer in this process and
    returns its address; every one is stopped at the end."""
    started: list[tuple[FakePeer, grpc.Server]] = []

    def serve(peer: FakePeer, port: int | None = None) -> str:
        server = grpc.server(ThreadPoolExecutor(max_workers=8))
        servicer = type("Servicer", (pb_grpc.AcceptorServiceServicer,), {})()
        servicer.Introduce = peer.Introduce
        pb_grpc.add_AcceptorServiceServicer_to_server(servicer, server)
        bound = server.add_insecure_port(f"127.0.0.1:{port or 0}")
        server.start()
        started.append((peer, server))
        return f"127.0.0.1:{bound}"

    try:
        yield serve
    finally:
        for peer, server in started:
            peer.gate.set()
            server.stop(None)


def voting_file(path: Path, acceptor_id: int) -> str:
    """An existing acceptor database (status VOTING), as on a reattached volume."""
    storage = open_storage(path, acceptor_id)
    try:
        assert storage.set_status(Status.VOTING, expect_incarnation=storage.incarnation)
        return storage.incarnation
    finally:
        storage.close()


def test_a_stale_volume_never_votes_not_even_before_its_peers_answer(
    cluster: Cluster, tmp_path: Path, fake_peers: ServePeer
) -> None:
    """Issue 11, item 6: a reattached volume of acceptor 2 whose id was
    recovered elsewhere (both peers know another incarnation for it). Its
    peers are slow to answer: the very first Prepare, sent while no
    introduction has come back, must get UNAVAILABLE, and once the peers
    answer it retires.

    On the old code the VOTING file voted at once and checked in the
    background: that first Prepare got a promise (pytest.raises "DID NOT
    RAISE" in refusal()), deterministically, since the peers' answers are held
    back until the test releases them."""
    db = tmp_path / "stale" / "acceptor-2.db"
    db.parent.mkdir()
    incarnation = voting_file(db, 2)
    peers = [FakePeer(0, "recovered-elsewhere"), FakePeer(1, "recovered-elsewhere")]
    ghost_port = free_port()
    listed = [fake_peers(p) for p in peers] + [f"127.0.0.1:{ghost_port}"]
    ghost = cluster.node(
        "acceptor", 2, "--db", str(db), "--acceptors", ",".join(listed), port=ghost_port
    ).start()
    wait_until(lambda: health_status(ghost.address, "liveness") == SERVING, 20, "it to start")
    assert all(p.asked.is_set() for p in peers)  # it asked before serving
    error = refusal(lambda: prepare(ghost.address, 1))
    assert "acceptor 2 is confirming" in str(error.details())
    error = refusal(lambda: accept(ghost.address, 1))
    assert "acceptor 2 is confirming" in str(error.details())
    assert alive_but_not_voting(ghost)

    for peer in peers:
        peer.gate.set()
    wait_until(
        lambda: "two processes claim acceptor 2" in ghost.log(), 20, "the stale volume to retire"
    )
    assert "acceptor 2 is retired" in str(refusal(lambda: prepare(ghost.address, 1)).details())
    assert alive_but_not_voting(ghost)
    ghost.terminate()
    storage = open_storage(db, 2)
    try:
        assert storage.status is Status.RETIRED and storage.incarnation == incarnation
    finally:
        storage.close()


def test_with_no_peer_reachable_an_existing_volume_waits_then_votes_on_confirmation(
    cluster: Cluster, tmp_path: Path, fake_peers: ServePeer
) -> None:
    """The rule for when no peer answers (module docstring of
    paxos_service/identity.py): it does not vote, however long, and says why;
    it votes as soon as one peer confirms its incarnation.

    On the old code it voted at once, with both peers down."""
    db = tmp_path / "acceptor-0.db"
    incarnation = voting_file(db, 0)
    ports = [free_port() for _ in range(3)]
    listed = ",".join(f"127.0.0.1:{p}" for p in ports)
    node = cluster.node("acceptor", 0, "--db", str(db), "--acceptors", listed, port=ports[0])
    node.start()
    wait_until(lambda: health_status(node.address, "liveness") == SERVING, 20, "it to start")
    error = refusal(lambda: prepare(node.address, 1))
    assert "acceptor 0 is confirming" in str(error.details())
    assert "no peer has answered" in str(error.details())
    assert alive_but_not_voting(node)

    # One peer comes up, and knows it by this incarnation.
    peer = FakePeer(1, incarnation)
    peer.gate.set()
    fake_peers(peer, ports[1])
    node.wait_healthy()
    assert health_status(node.address, SERVICE) == SERVING
    assert prepare(node.address, 1).HasField("promise")
    assert "acceptor votes" in node.log()


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


# Storage ---------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SqliteAcceptorStorage]:
    s = open_storage(tmp_path / "a.db", 1)
    try:
        yield s
    finally:
        s.close()


def test_a_new_file_joins_and_records_peers_durably(
    storage: SqliteAcceptorStorage, tmp_path: Path
) -> None:
    assert storage.created and storage.status is Status.JOINING
    assert storage.record_member(0, "a") == ""
    assert storage.record_member(0, "b") == "a"  # no overwrite without replace
    assert storage.record_member(0, "c", replace=True) == "a"
    assert storage.set_status(Status.VOTING, expect_incarnation=storage.incarnation)
    assert not storage.set_status(Status.RETIRED, expect_incarnation="someone-else")
    storage.close()
    again = open_storage(tmp_path / "a.db", 1)
    try:
        assert not again.created
        assert again.load_members() == {0: "c"}
        assert again.status is Status.VOTING
    finally:
        again.close()


def test_recovery_replaces_the_state_in_one_go(
    storage: SqliteAcceptorStorage, tmp_path: Path
) -> None:
    from roles import AcceptorState, RangePromise

    storage.save(
        [(4, AcceptorState(Ballot(1, 1), Ballot(1, 1), b"x"))], RangePromise(2, Ballot(1, 1))
    )
    storage.apply_recovery("fresh", RecoveryPlan(Ballot(9, 2), 12), {0: "i0", 2: "i2"})
    storage.close()
    again = open_storage(tmp_path / "a.db", 1)
    try:
        assert again.incarnation == "fresh"
        assert again.status is Status.RECOVERING
        assert again.no_vote_through == 12
        assert again.load_all() == {}
        assert again.load_range_promise() == RangePromise(1, Ballot(9, 2))
        assert again.load_members() == {0: "i0", 2: "i2"}
    finally:
        again.close()


def test_a_file_from_before_identity_tracking_votes(tmp_path: Path) -> None:
    import sqlite3

    storage = open_storage(tmp_path / "a.db", 1)
    storage.close()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'status'")
        conn.execute("DROP TABLE members")
    again = open_storage(tmp_path / "a.db", 1)
    try:
        assert again.status is Status.VOTING and again.no_vote_through == 0
        assert again.load_members() == {}
    finally:
        again.close()
