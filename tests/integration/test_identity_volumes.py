"""Identity safety for existing database files: reattached volumes and the stored identity.

A volume that comes back with a database must not vote before its peers
confirm its incarnation (fake peers hold their answers back to prove it),
and the SQLite storage records status, incarnation and peers durably,
including for files made before identity was tracked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from paxos_service.storage.sqlite import SqliteAcceptorStorage
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import Ballot
from roles.recovery import AcceptorStatus, RecoveryPlan
from tests.integration.identity_support import (
    SERVICE,
    SERVING,
    accept,
    alive_but_not_voting,
    open_storage,
    prepare,
    refusal,
)
from tests.support.processes import Cluster, free_port, health_status, wait_until


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
        assert storage.set_status(AcceptorStatus.VOTING, expect_incarnation=storage.incarnation)
        return storage.incarnation
    finally:
        storage.close()


def test_a_stale_volume_never_votes_not_even_before_its_peers_answer(
    cluster: Cluster, tmp_path: Path, fake_peers: ServePeer
) -> None:
    """A reattached volume of acceptor 2 whose id was
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
        assert storage.status is AcceptorStatus.RETIRED and storage.incarnation == incarnation
    finally:
        storage.close()


def test_with_no_peer_reachable_an_existing_volume_waits_then_votes_on_confirmation(
    cluster: Cluster, tmp_path: Path, fake_peers: ServePeer
) -> None:
    """The rule for when no peer answers (module docstring of
    paxos_service/node/identity.py): it does not vote, however long, and says why;
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
    assert storage.created and storage.status is AcceptorStatus.JOINING
    assert storage.record_member(0, "a") == ""
    assert storage.record_member(0, "b") == "a"  # no overwrite without replace
    assert storage.record_member(0, "c", replace=True) == "a"
    assert storage.set_status(AcceptorStatus.VOTING, expect_incarnation=storage.incarnation)
    assert not storage.set_status(AcceptorStatus.RETIRED, expect_incarnation="someone-else")
    storage.close()
    again = open_storage(tmp_path / "a.db", 1)
    try:
        assert not again.created
        assert again.load_members() == {0: "c"}
        assert again.status is AcceptorStatus.VOTING
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
        assert again.status is AcceptorStatus.RECOVERING
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
        assert again.status is AcceptorStatus.VOTING and again.no_vote_through == 0
        assert again.load_members() == {}
    finally:
        again.close()
